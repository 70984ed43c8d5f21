"""Dynamic inference: compute that adapts to each input (token dropping, early exit, routing, head selection).

Importing this package registers its passes.
"""
from autolite.dynamic.token_drop import TokenDrop  # noqa: F401
