"""Which structures a campaign holds out: validation by content hash, reproducible draws."""

from __future__ import annotations

import numpy as np


def is_validation(content_hash: str, valid_fraction: float) -> bool:
    """Whether a labelled structure is held out for early stopping.

    The choice hashes the structure's content, so it is the same on every run and resume,
    and about ``valid_fraction`` of labelled structures end up in the validation split.
    """
    return int(content_hash[:8], 16) / 16**8 < valid_fraction


def split_labelled(content_hashes: list[str], valid_fraction: float) -> list[str]:
    """``"valid"`` or ``"train"`` for each newly selected structure.

    At least one structure of a batch of two or more goes to training, and when
    ``valid_fraction > 0`` and nothing was chosen for validation, the last one goes there, so
    early stopping always has data.
    """
    splits = ["valid" if is_validation(h, valid_fraction) else "train" for h in content_hashes]
    if len(splits) >= 2 and all(s == "valid" for s in splits):
        splits[0] = "train"
    if len(splits) >= 2 and valid_fraction > 0 and "valid" not in splits:
        splits[-1] = "valid"
    return splits


def draw(ids: list[int], size: int, seed: int, salt: int) -> list[int]:
    """A reproducible random subset of ``ids`` (sorted input, so database order never matters)."""
    ordered = sorted(ids)
    rng = np.random.default_rng([seed, salt])
    picked = rng.choice(len(ordered), size=min(size, len(ordered)), replace=False)
    return [ordered[i] for i in sorted(picked)]
