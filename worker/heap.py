"""Keeping Python's cycle collector off the latency path.

A full collection walks every object the collector tracks. After torch, transformers and
a model are loaded a process holds about 460,000 of them, nearly all for good, and a full
collection took 260-280 ms here; it runs whenever enough new objects have survived, in the
middle of a batch, and every post in that batch and the next waits for it (seen as the
slowest posts of a paced run). Freezing what exists once startup is over moves it out of
the collector's sight: a full collection then walks only what came after (measured: under
0.01 ms right after the freeze). Cycles among frozen objects are never freed, which is the
point: they live as long as the process.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then exempt every surviving object from later collections.

    Call when loading is done and before serving. Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def release_free_memory() -> bool:
    """Hand the memory the C allocator holds free back to the system (glibc's ``malloc_trim``).

    Loading a model frees a good deal on its way (the fp32 weights int8 replaces, the call-cost
    measurement's buffers); glibc keeps it mapped. Trimming once after loading gave back about
    47 MiB of the model process's 637 here, at no cost per batch (trimming after every batch
    gave back more but cost speed: bench/README.md). False where there is no glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
