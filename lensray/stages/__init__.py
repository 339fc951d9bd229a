"""Pre-sweep stages (Pool -> Pool) and post-sweep stages (Selection -> Selection + files), looked
up by name from the config's `stages` (`base`).
"""
