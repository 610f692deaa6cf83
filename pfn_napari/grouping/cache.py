"""The small caches of the interactive front ends' Grouper and ImageNet step: entries keyed by
a digest of arrays, the oldest forgotten beyond a limit."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

#: Entries a cache keeps (per class and cell mask, per region...) before the oldest go.
MAX_CACHED = 64


def cache_key(*arrays: np.ndarray) -> str:
    """A digest of the arrays' bytes and shapes."""
    digest = hashlib.blake2b(digest_size=16)
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
        digest.update(str(a.shape).encode())
    return digest.hexdigest()


def remember(store: dict, key: Any, value: Any, limit: int = MAX_CACHED) -> Any:
    """``store[key] = value`` (returned), forgetting the oldest entry beyond ``limit``."""
    if len(store) >= limit:
        store.pop(next(iter(store)))
    store[key] = value
    return value
