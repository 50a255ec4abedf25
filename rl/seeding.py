"""Seeds for the run's independent streams of randomness, all derived from `run.seed` one way.

`derive_seed(run.seed, "rollout", worker, key)` and `derive_seed(run.seed, "problems", key)` name the
stream they seed, so two streams never share a seed by arithmetic accident (as `seed * 1000 + rank`
and `seed * 1_000_003 + key` could), and the same names give the same seed on every machine and
Python version (no `hash()`, which is salted per process). It does not seed torch or Python globally.
"""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, *keys: int | str) -> int:
    """A 63-bit seed (fits torch.Generator and random.Random) for the stream named by keys."""
    digest = hashlib.blake2b(repr((run_seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
