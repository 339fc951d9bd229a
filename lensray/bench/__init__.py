"""Benchmarks that print figures: predictors on recorded curves (`curves`), replay sweeps
(`select`), scale (`scale`), probe throughput (`probe`); synthetic pools (`synth`).
"""
