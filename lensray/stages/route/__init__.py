"""SelectLLM routing over the finalists (Maurya, Srivatsa, Kochmar, arXiv 2408.08545): a router
predicts, per query, each finalist's chance of answering it right; a policy sends the query to
a few finalists by that confidence and combines their answers by (weighted) majority vote. One
job per module::

    config     RouteConfig: finalists, encoder, policy, k, threshold, folds, seed, ...
    policies   MaxConf, top-k, LabelledMaxConf, WeightedMaxConf, threshold; the vote; ties
               to the cheaper finalist (pure numpy)
    router     encoders (hashed n-grams, trained here; or a hub encoder) and the multi-label
               logistic router trained with binary cross-entropy
    evaluate   cross-validation over the held-out queries: every policy against the single
               finalists, the all-finalist majority vote and the oracle, in accuracy and cost
               per query (FLOPs, latency); the upper-left hull and AIQ; route.json and its plot

Nothing here imports torch, transformers or Ray at module level; a hub encoder imports them
when it first embeds.
"""
