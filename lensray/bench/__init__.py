"""Benchmarks that print figures: predictors on recorded curves (`curves`) and on the predictor
suite's real, recorded and synthetic pools (`suite`), replay sweeps (`select`), scale (`scale`),
probe throughput (`probe`); synthetic pools (`synth`).
"""
