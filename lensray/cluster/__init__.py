"""Running on Ray clusters: job submission through the Jobs API (`jobs`) and where a sweep's files
live, a local folder or a storage URI (`storage`).
"""
