"""Aggregation Fine-Tuning (Li et al., arXiv 2501.11877): propose, then aggregate. A model reads
K draft answers ("proposals") to a query and writes one better answer; at inference it samples K
proposals, aggregates them, and may aggregate the aggregations for further rounds. One job per
module::

    config     AggregateConfig: K, rounds, sampling settings, on- or off-policy proposals
    samples    aggregation samples: the query, the numbered proposals, the reference as the
               target (the loss covers the target only); which drafts a candidate reads
    propose    proposals sampled in batches from a transformers model, cached on disk per
               (model, query set, sampling settings); the rounds of propose-and-aggregate;
               drafts scored under the data's design (a draft that does not parse is wrong);
               what each generation cost
    stage      the `aggregate` post-sweep stage: the finalists propose, the selected model
               aggregates; aggregate.json and report.md's Aggregation section

Nothing here imports torch, transformers or Ray at module level.
"""
