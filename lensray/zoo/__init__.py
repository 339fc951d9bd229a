"""The offline tiny model zoo: small causal LMs pretrained here and the tasks to rank them on
(`build`), so the demo and the tests need no download.
"""
