"""Warm-start fine-tuning of a MACE model on a campaign's labels.

One round of a campaign fine-tunes the previous model version (the pretrained model at round
zero) on every done training label:

1. refit the atomic reference energies (E0s) per element by least squares on the labelled set,
   because a pretrained model's E0s rarely match the oracle's convention (xTB totals versus DFT
   totals or atomisation energies differ by eV per atom);
2. minimise a weighted loss of per-atom energy and force errors (and, with ``stress_weight``
   > 0, stress errors of the labels that carry a stress) with Adam, keeping an exponential
   moving average (EMA) of the weights;
3. evaluate the EMA weights on the validation split after every epoch, refit the E0s every few
   epochs, stop early when the validation loss stops improving, and keep the best weights;
4. write a standard MACE ``.model`` file (a pickled module that ``MACECalculator`` loads) and,
   beside it, the weights-only ``.pt`` file that tangentlab registers and loads.

Training runs in float64 inside :func:`tangentlab.mace_model.default_dtype`, so MACE's global
dtype change does not leak into the caller.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mace import data as mace_data
from mace.tools import torch_geometric

from tangentlab.config import FineTune
from tangentlab.mace_model import atoms_to_graphs, default_dtype, load_model, model_elements
from tangentlab.model_files import write_model

_LABEL_KEYS = mace_data.KeySpecification(
    info_keys={"energy": "energy", "stress": "REF_stress"}, arrays_keys={"forces": "forces"})


def labelled_batches(model, atoms_list, batch_size, device, *, shuffle=False, generator=None):
    """A MACE DataLoader whose batches carry the reference ``energy``, ``forces`` and, where a
    label has one (``info["REF_stress"]``), ``stress`` (``stress_weight`` 0 where it has none)."""
    graphs = [graph.to(device) for graph in atoms_to_graphs(model, atoms_list, _LABEL_KEYS)]
    return torch_geometric.dataloader.DataLoader(
        graphs, batch_size=batch_size, shuffle=shuffle, drop_last=False, generator=generator
    )


#: A campaign's fine-tuning settings are the one source of the defaults, so that a direct call
#: of `finetune` trains like a campaign round.
_CAMPAIGN = FineTune()


@dataclass
class FineTuneHyperparameters:
    """Optimiser and stopping settings for one fine-tuning run.

    The defaults are those of a campaign's ``finetune`` section (`tangentlab.config.FineTune`);
    ``weight_decay`` and ``seed`` are set only here (a campaign passes its own seed).
    """

    max_epochs: int = _CAMPAIGN.max_epochs
    patience: int = _CAMPAIGN.patience
    lr: float = _CAMPAIGN.lr
    batch_size: int = _CAMPAIGN.batch_size
    energy_weight: float = _CAMPAIGN.energy_weight  # per-atom energy MSE (eV²)
    forces_weight: float = _CAMPAIGN.forces_weight
    stress_weight: float = _CAMPAIGN.stress_weight  # stress MSE ((eV/Å³)²); 0: not used
    ema_decay: float = _CAMPAIGN.ema_decay
    e0_refit_interval: int = _CAMPAIGN.e0_refit_interval
    min_steps_per_epoch: int = _CAMPAIGN.min_steps_per_epoch
    min_valid: int = _CAMPAIGN.min_valid
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class FineTuneResult:
    """What a fine-tuning run produced."""

    path: Path
    epochs: int
    best_epoch: int
    best_valid_loss: float
    e0s: dict[int, float]
    seconds: float
    history: list[dict] = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)


def _atomic_energies(model: torch.nn.Module) -> torch.Tensor:
    return model.atomic_energies_fn.atomic_energies


def _composition(model: torch.nn.Module, atoms_list: list[Atoms]) -> np.ndarray:
    """Element counts per structure, columns in the model's element order."""
    zs = model_elements(model)
    index = {z: i for i, z in enumerate(zs)}
    counts = np.zeros((len(atoms_list), len(zs)))
    for row, atoms in enumerate(atoms_list):
        for z in atoms.numbers:
            counts[row, index[int(z)]] += 1
    return counts


def refit_e0s(
    counts: np.ndarray,
    residual_energies: np.ndarray,
    prior: np.ndarray,
    ridge: float = 1e-8,
) -> np.ndarray:
    """Least-squares E0s per element: ``counts @ e0 ≈ residual_energies``.

    A small ridge pulls elements that the labelled set cannot separate (always present in the
    same ratio, or absent) towards ``prior`` shifted by the mean per-atom offset, so the fit
    is always defined.

    Parameters
    ----------
    counts
        (n_structures, n_elements) element counts.
    residual_energies
        Reference energy minus the model's interaction energy, per structure (eV).
    prior
        Current E0s (eV), used where the data say nothing.
    ridge
        Strength of the pull towards the shifted prior, relative to the data term.
    """
    natoms = counts.sum(1)
    shift = float(np.mean((residual_energies - counts @ prior) / natoms))
    target = prior + shift
    alpha = ridge * max(len(counts), 1)
    lhs = counts.T @ counts + alpha * np.eye(len(prior))
    rhs = counts.T @ residual_energies + alpha * target
    return np.linalg.solve(lhs, rhs)


def _interaction_energies(model, batches) -> np.ndarray:
    out = []
    for batch in batches:
        result = model(batch.to_dict(), training=False, compute_force=False)
        out.append(result["interaction_energy"].detach().cpu().numpy())
    return np.concatenate(out)


def _set_e0s(model: torch.nn.Module, e0s: np.ndarray) -> None:
    buffer = _atomic_energies(model)
    buffer.copy_(torch.as_tensor(e0s, dtype=buffer.dtype).reshape(buffer.shape))


def _refit(model, atoms_list, batches) -> np.ndarray:
    energies = np.array([a.info["energy"] for a in atoms_list])
    counts = _composition(model, atoms_list)
    prior = _atomic_energies(model).detach().cpu().numpy().reshape(-1)
    e0s = refit_e0s(counts, energies - _interaction_energies(model, batches), prior)
    _set_e0s(model, e0s)
    return e0s


def _loss(model, batch, hyper: FineTuneHyperparameters, training: bool) -> torch.Tensor:
    """Weighted per-atom energy MSE + force MSE, plus, with ``stress_weight`` > 0, the stress MSE
    over the batch's structures that carry a reference stress."""
    has_stress = batch.stress_weight > 0
    use_stress = hyper.stress_weight > 0 and bool(has_stress.any())
    out = model(batch.to_dict(), training=training, compute_force=True, compute_stress=use_stress)
    natoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
    energy_term = torch.mean(((out["energy"] - batch.energy) / natoms) ** 2)
    force_term = torch.mean((out["forces"] - batch.forces) ** 2)
    loss = hyper.energy_weight * energy_term + hyper.forces_weight * force_term
    if use_stress:
        stress_term = torch.mean((out["stress"][has_stress] - batch.stress[has_stress]) ** 2)
        loss = loss + hyper.stress_weight * stress_term
    return loss


def _cycle(loader, min_steps: int):
    """One pass over ``loader``, repeated until at least ``min_steps`` batches were given.

    Early rounds train on a handful of structures: without this, an epoch would be one or
    two optimiser steps and fine-tuning would stop before it started.
    """
    steps = 0
    while True:
        for batch in loader:
            yield batch
            steps += 1
        if steps >= min_steps:
            return


def _mean_loss(model, batches, hyper) -> float:
    total, count = 0.0, 0
    for batch in batches:
        total += float(_loss(model, batch, hyper, training=False).detach()) * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def finetune(
    parent_model: str | Path,
    train: list[Atoms],
    valid: list[Atoms],
    out_path: str | Path,
    *,
    hyper: FineTuneHyperparameters | None = None,
    device: str = "cpu",
    progress=None,
) -> FineTuneResult:
    """Fine-tune ``parent_model`` on labelled structures and write the best model to ``out_path``.

    Parameters
    ----------
    parent_model
        The MACE ``.model`` to start from (warm start).
    train, valid
        Labelled structures: ``info["energy"]`` (eV) and ``arrays["forces"]`` (eV/Å). ``valid``
        may be empty; the training loss then drives early stopping.
    out_path
        Where the fine-tuned model is written: ``<stem>.model`` for users and ``<stem>.pt``
        (weights-only, ``FineTuneResult.path``), each atomically (see
        `tangentlab.model_files.write_model`).
    hyper
        Optimiser and stopping settings.
    device
        ``cpu`` or ``cuda``.
    progress
        Optional callable ``progress(epoch, max_epochs, record)`` called after every epoch.
    """
    hyper = hyper or FineTuneHyperparameters()
    if not train:
        raise ValueError("fine-tuning needs at least one labelled training structure")
    out_path = Path(out_path)
    start = time.perf_counter()
    with default_dtype(torch.float64):
        torch.manual_seed(hyper.seed)
        generator = torch.Generator().manual_seed(hyper.seed)
        model = load_model(parent_model, device=device, script=True)  # written as a .model
        for p in model.parameters():
            p.requires_grad_(True)
        train_batches = labelled_batches(model, train, hyper.batch_size, device, shuffle=True, generator=generator)
        train_eval = labelled_batches(model, train, 64, device)
        # A handful of validation structures makes early stopping follow noise (measured: a
        # round with 2 kept its untrained parent), so below `min_valid` the training loss decides.
        valid_eval = labelled_batches(model, valid, 64, device) if len(valid) >= hyper.min_valid else train_eval

        model.eval()
        e0s = _refit(model, train, train_eval)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=hyper.lr, amsgrad=True, weight_decay=hyper.weight_decay
        )
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # The parent is never kept: new labels always get trained on, the best epoch >= 1 wins.
        best_loss, best_state, best_epoch = float("inf"), None, 0
        history = [{"epoch": 0, "valid_loss": _mean_loss(model, valid_eval, hyper)}]
        epoch = 0
        for epoch in range(1, hyper.max_epochs + 1):
            model.train()
            for batch in _cycle(train_batches, hyper.min_steps_per_epoch):
                optimizer.zero_grad()
                loss = _loss(model, batch, hyper, training=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k].mul_(hyper.ema_decay).add_(v, alpha=1 - hyper.ema_decay)
            model.eval()
            live = copy.deepcopy(model.state_dict())
            model.load_state_dict(ema)
            if epoch % hyper.e0_refit_interval == 0:
                e0s = _refit(model, train, train_eval)
                ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
                live["atomic_energies_fn.atomic_energies"] = ema["atomic_energies_fn.atomic_energies"].clone()
            valid_loss = _mean_loss(model, valid_eval, hyper)
            record = {"epoch": epoch, "valid_loss": valid_loss}
            history.append(record)
            if valid_loss < best_loss:
                best_loss, best_epoch = valid_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(live)
            if progress is not None:
                progress(epoch, hyper.max_epochs, record)
            if epoch - best_epoch >= hyper.patience:
                break

        if best_state is None:
            raise RuntimeError(f"fine-tuning of {parent_model} diverged: the loss was never finite")
        model.load_state_dict(best_state)
        model.eval()
        e0s = _refit(model, train, train_eval)
        for p in model.parameters():
            p.requires_grad_(False)
        out_path = write_model(model.cpu(), out_path)
    zs = model_elements(model)
    return FineTuneResult(
        path=out_path,
        epochs=epoch,
        best_epoch=best_epoch,
        best_valid_loss=best_loss,
        e0s={int(z): float(e) for z, e in zip(zs, e0s)},
        seconds=time.perf_counter() - start,
        history=history,
        hyperparameters=asdict(hyper),
    )
