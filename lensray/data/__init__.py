"""The fine-tuning data: loading and tokenising a user's data set into nested subsets (`dataset`),
and sample designs, how a record is written as a training sample and parsed back (`design`).
"""
