"""``autolite.optimize``: search pruning x dynamic inference x precision/backend under an accuracy budget on the
user's labeled data, measured on this machine (see :mod:`autolite.search.optimize`)."""
from autolite.search.optimize import OBJECTIVES, optimize

__all__ = ["OBJECTIVES", "optimize"]
