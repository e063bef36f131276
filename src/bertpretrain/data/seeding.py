"""Independent, reproducible random streams derived from one user seed.

Every random choice of the pipeline (paragraph shuffle, NSP partners, each epoch's order, the masks
of each example) draws from its own stream, keyed by a purpose and, where needed, an epoch and an
example id. Changing one part (say the batch size) thus never shifts the random numbers another
part sees, and the same seed gives the same arrays run after run.
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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x):
    """SplitMix64's finaliser on a uint64 array: a fast, well-mixed hash (wrap-around arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class KeyedRandom:
    """Random numbers for a set of examples, each row a function of (seed, key, example id, column) alone.

    A drop-in for the ``random`` / ``integers`` calls of ``numpy.random.Generator`` whose first axis
    is the examples: example ``i`` gets the same numbers whichever batch it is drawn in and whatever
    else is in that batch. This is what lets the pipeline draw an example's masks when its batch is
    made, instead of storing them for the whole corpus, and still give the same masks every epoch.

    Args:
        seed: the user's seed.
        key: a tuple of ints naming the purpose (and epoch, for dynamic masking).
        rows: (n,) integer ids of the examples, one per row of every array drawn.
    """

    def __init__(self, seed, key, rows):
        state = np.random.SeedSequence(seed, spawn_key=tuple(key)).generate_state(1, dtype=np.uint64)[0]
        self._rows = _splitmix64(np.asarray(rows, dtype=np.uint64) ^ np.uint64(state))
        self._calls = 0

    def _bits(self, size):
        size = (size,) if np.isscalar(size) else tuple(size)
        if size[0] != len(self._rows):
            raise ValueError(f"KeyedRandom has {len(self._rows)} rows but {size[0]} were asked for")
        self._calls += 1
        columns = int(np.prod(size[1:], dtype=np.int64))
        counter = np.arange(columns, dtype=np.uint64) + np.uint64(self._calls << 40)
        return _splitmix64(self._rows[:, None] + counter * _GOLDEN).reshape(size)

    def random(self, size):
        """Floats uniform in [0, 1), shape ``size``."""
        return (self._bits(size) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def integers(self, low, high, size, dtype=np.int64):
        """Integers uniform in [low, high), shape ``size`` (modulo bias below 2**-40 for spans under 2**24)."""
        span = np.uint64(high - low)
        return ((self._bits(size) % span).astype(np.int64) + low).astype(dtype)
