"""Pruning that physically shrinks the model: heads, FFN neurons, layers; N:M and unstructured sparsity.

    from autolite.prune import PruneHeads, PruneFFN
    small = autolite.compress(model, [PruneHeads(ratio=0.4), PruneFFN(ratio=0.5)], calib=texts, tokenizer=tok)
"""
from autolite.prune.ffn import PruneFFN
from autolite.prune.heads import PruneHeads
from autolite.prune.importance import IMPORTANCE, register_importance
from autolite.prune.layers import PruneLayers
from autolite.prune.sparse import Sparsify

__all__ = ["IMPORTANCE", "PruneFFN", "PruneHeads", "PruneLayers", "Sparsify", "register_importance"]
