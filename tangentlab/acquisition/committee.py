"""Committee disagreement: the ensemble baseline of active learning for MLIPs.

K models are fine-tuned from the same parent on bootstrap resamples of the training labels
with different seeds; a candidate's score is the committee's disagreement on it. This costs K
fine-tunes per round (the kernel signals cost one forward or backward pass per candidate),
which is the point of comparing against it.

`fit_committee` trains the members and returns a `CommitteeScorer`, a scorer like the feature
signals' `tangentlab.acquisition.scorer.PosteriorScorer` (the `Scorer` protocol): its
``variance`` is the squared force disagreement, so that its root plays the part of σ (the
calibrated predicted error, the stored score), and its ``select`` picks the largest
disagreements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from ase import Atoms

from tangentlab.finetune import FineTuneHyperparameters, finetune
from tangentlab.mace_model import load_model, predict


def train_committee(
    parent_model: str | Path,
    train: Sequence[Atoms],
    valid: Sequence[Atoms],
    out_dir: str | Path,
    *,
    size: int = 3,
    hyper: FineTuneHyperparameters | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int, int, dict], None] | None = None,
) -> list[Path]:
    """Fine-tune ``size`` members on bootstrap resamples of ``train``; return their paths.

    ``progress(member, epoch, max_epochs, record)`` is called after every epoch of every member.
    """
    if size < 2:
        raise ValueError(f"a committee needs at least 2 members, got {size}")
    hyper = hyper or FineTuneHyperparameters()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    paths = []
    for member in range(size):
        sample = [train[i] for i in rng.integers(0, len(train), size=len(train))]
        member_hyper = FineTuneHyperparameters(**{**hyper.__dict__, "seed": seed * 100 + member})
        result = finetune(parent_model, sample, list(valid), out_dir / f"member-{member}.model",
                          hyper=member_hyper, device=device,
                          progress=None if progress is None else partial(progress, member))
        paths.append(result.path)
    return paths


def committee_disagreement(model_paths: Sequence[str | Path], atoms_list: Sequence[Atoms],
                           device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Energy std per atom (eV/atom) and the largest per-atom force std (eV/Å) per structure.

    The force std of an atom is the root of the summed variances of its three components
    across the committee.
    """
    energies, forces = [], []
    for path in model_paths:
        preds = predict(load_model(path, device=device), list(atoms_list))
        energies.append([e for e, _ in preds])
        forces.append([f for _, f in preds])
    energies = np.asarray(energies)  # (K, n)
    natoms = np.array([len(a) for a in atoms_list])
    energy_std = energies.std(axis=0) / natoms
    force_std = np.array([
        np.sqrt(np.stack([f[i] for f in forces]).var(axis=0).sum(axis=1)).max() for i in range(len(atoms_list))
    ])
    return energy_std, force_std


def committee_selection(force_std: np.ndarray, batch_size: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """The ``batch_size`` structures with the largest force disagreement (ties: lowest index)."""
    scores = np.asarray(force_std, dtype=float).copy()
    scores[list(exclude)] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[: min(batch_size, int(np.isfinite(scores).sum()))]


@dataclass
class CommitteeScorer:
    """
    A trained committee as a scorer (see `tangentlab.acquisition.scorer.Scorer`).

    Attributes
    ----------
    members
        The members' weights-only model files.
    device
        Torch device of the members' predictions.
    signal
        ``"committee"``.
    """

    members: list[Path]
    device: str = "cpu"
    signal: str = "committee"

    @classmethod
    def from_dir(cls, out_dir: str | Path, device: str = "cpu") -> CommitteeScorer:
        """The committee `fit_committee` wrote to ``out_dir`` (its weights-only member files)."""
        members = sorted(Path(out_dir).glob("member-*.pt"))
        if len(members) < 2:
            raise ValueError(
                f"{out_dir} holds {len(members)} committee member files, not at least 2"
            )
        return cls(members=members, device=device)

    def disagreement(self, atoms_list: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Energy std per atom (eV/atom) and the largest per-atom force std (eV/Å) per structure
        (`committee_disagreement`)."""
        return committee_disagreement(self.members, atoms_list, device=self.device)

    def variance(self, atoms_list: Sequence[Atoms], chunk_size: int = 256) -> np.ndarray:
        """
        The squared force disagreement per structure ((eV/Å)²); its root is the committee's σ.

        Parameters
        ----------
        atoms_list
            Structures.
        chunk_size
            Not used: every member predicts all structures in turn (kept for the interface).
        """
        return self.disagreement(atoms_list)[1] ** 2

    def select(self, atoms_list: Sequence[Atoms], batch_size: int,
               exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """
        The ``batch_size`` structures with the largest force disagreement and their scores.

        Returns
        -------
        picked
            Indices into ``atoms_list`` (ties: lowest index first).
        scores
            Their `variance`.
        """
        force_std = self.disagreement(atoms_list)[1]
        picked = committee_selection(force_std, batch_size, list(exclude))
        return picked, force_std[picked] ** 2


def fit_committee(
    parent_model: str | Path,
    train: Sequence[Atoms],
    valid: Sequence[Atoms],
    out_dir: str | Path,
    *,
    size: int = 3,
    hyper: FineTuneHyperparameters | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int, int, dict], None] | None = None,
) -> CommitteeScorer:
    """
    Train a committee (`train_committee`) and return it as a scorer.

    Parameters are those of `train_committee`; ``device`` also serves the predictions.
    """
    members = train_committee(parent_model, train, valid, out_dir, size=size, hyper=hyper,
                              seed=seed, device=device, progress=progress)
    return CommitteeScorer(members=list(members), device=device)
