"""PhyloLM for the pool (Yax, Oudeyer, Palminteri, ICLR 2025): fingerprint every candidate by
what it says after short prompts, measure a genetic distance between them, and use it before
the sweep. One job per module::

    genes         G prompts (genes): starts of the user's texts cut at 20-100 characters
    alleles       an allele is a continuation's first 4 characters; P_m(allele | gene)
    fingerprint   PhyloConfig; N sampled continuations per gene and model, one Ray task per
                  model, cached on disk; the tokens and seconds each model cost
    similarity    Nei's identity S(i, j) and the distance d = -ln S; the matrix as Parquet
    tree          neighbour joining (Biopython), Newick, a dendrogram PNG, clades, neighbours
    duplicates    groups of near-duplicates, the cheapest kept, the others' drop reasons
    prior         a candidate's expected loss at T from its measured relatives, with an interval
    score         PhyloLM's score prediction (FastICA + a sigmoid layer), leave-one-family-out r

Nothing here imports torch, transformers or Ray at module level; `fingerprint` imports them in
the functions that run models.
"""
