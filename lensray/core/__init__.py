"""The pipeline's types (Candidate, Pool, Observation, CurveFit, Decision, Status, Selection), its
errors, the curves table and the compute accounting. Nothing here imports Ray, torch or transformers.
"""
