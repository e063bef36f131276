"""Independent, reproducible random streams derived from one user seed.

Every random choice of the pipeline (paragraph shuffle, NSP partners, static masks, each epoch's
order, each dynamic-masking batch) draws from its own stream, keyed by a purpose and, where needed,
an epoch and a batch number. Changing one part (say the batch size) thus never shifts the random
numbers another part sees, and the same seed gives the same arrays run after run.
"""
import numpy as np

PARAGRAPH_SHUFFLE = 0
NSP_PARTNERS = 1
STATIC_MASKS = 2
EPOCH_ORDER = 3
DYNAMIC_MASKS = 4


def resolve_seed(seed):
    """Return ``seed`` as a non-negative int, drawing a fresh one from the OS when it is None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def stream(seed, *key):
    """A ``numpy.random.Generator`` for ``seed`` and the purpose ``key`` (a tuple of ints)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
