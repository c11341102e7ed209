"""Every random draw gets a generator of its own, seeded from a key (never the global RNGs)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*key: object) -> int:
    """A 63-bit seed from a key such as (seed, "order", epoch); stable across runs and platforms."""
    text = "/".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*key))


def global_rng_kept():
    """A block after which torch's global CPU generator is as it was: torch's layers draw their default init
    from it (ours then overwrites it from a keyed generator), and it belongs to the user's program."""
    return torch.random.fork_rng(devices=[])
