import torch

from autolite.eval.bench import peak_memory_mb


def _many_small_tensors():
    # 1 MiB tensors: below glibc's mmap threshold once it has adapted, so they come from the heap
    tensors = [torch.ones(256 * 1024) for _ in range(64)]
    return sum(t[0] for t in tensors)


def test_peak_memory_counts_a_warmed_up_call():
    for _ in range(3):  # warm-up: the heap keeps the freed pages for reuse
        _many_small_tensors()
    assert peak_memory_mb(_many_small_tensors, torch.device("cpu")) > 32
