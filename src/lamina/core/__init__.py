"""Core layer: database directory, lock file, commit seq and commit blocker, catalog codec.

Nothing here imports an engine; engines and everything above import from here.
"""
