"""The Selection's ranking (`rank`) and its files for people and programs (`files`, `plot`).
"""
