"""The selection job's configuration: the typed schema (`schema`), loading YAML with overrides and
validation (`load`), and the generated reference of every field (`reference`).
"""
