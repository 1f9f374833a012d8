"""dialogue_rl.memory: freed heap pages go back to the OS; resident-size readings."""

from __future__ import annotations

import sys

import pytest
import torch

from dialogue_rl.memory import peak_rss_mb, release_freed_memory, rss_mb


def test_rss_readings_are_consistent():
    now, peak = rss_mb(), peak_rss_mb()
    assert 10 < now <= peak + 1  # both in MiB; a Python process with torch holds far more than 10 MiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and malloc_trim are Linux/glibc")
def test_release_freed_memory_returns_fragmented_heap_pages():
    if not release_freed_memory():
        pytest.skip("this C library has no malloc_trim")
    # 256 MiB in 64 KiB tensors (below glibc's mmap threshold: they come from the heap), then a
    # small tensor above them that stays alive, so freeing them cannot shrink the heap from its top
    chunks = [torch.ones(16384) for _ in range(4096)]
    pin = torch.ones(16)
    del chunks
    held = rss_mb()
    assert release_freed_memory()
    released = held - rss_mb()
    assert released > 128, f"malloc_trim returned only {released:.0f} MiB of 256 MiB freed"
    assert float(pin.sum()) == 16.0
