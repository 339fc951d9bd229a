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
    queries    the finalists' per-query results (kept by task-metric probes) -> RouteData
    saved      the router trained on all the queries, on disk (JSON + arrays): what serving loads
    stage      the `route` post-sweep stage, `lensray route CONFIG`, report.md's Routing section
    serve      `lensray serve CONFIG`: the finalists behind the router on Ray Serve (HTTP)

Nothing here imports torch, transformers or Ray at module level; a hub encoder imports them
when it first embeds, a served finalist when it loads.
"""
