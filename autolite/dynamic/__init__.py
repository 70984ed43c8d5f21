"""Dynamic inference: compute that adapts to each input (token dropping, early exit, routing, head selection).

Importing this package registers its passes.
"""
from autolite.dynamic.token_drop import TokenDrop  # noqa: F401
from autolite.dynamic.early_exit import EarlyExit  # noqa: F401
from autolite.dynamic.head_select import HeadSelect  # noqa: F401
from autolite.dynamic.router import Route  # noqa: F401
