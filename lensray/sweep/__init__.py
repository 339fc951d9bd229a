"""The sweep: one Ray Tune trial per Candidate (`trial`), the stopping rule (`rule`, pure numpy),
its Tune scheduler adapter (`scheduler`), the side file that records it (`record`) and the run
on Ray (`run`).
"""
