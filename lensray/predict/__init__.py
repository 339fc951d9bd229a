"""Predictors: scaling laws (`laws`), fits of partial curves (`grid`, `local`), the registry of
selection methods the sweep, report, bench and verify share (`methods`), and the metrics
(`metrics`). Pure numpy and scipy.
"""
