"""The signals registry: each signal maps structures to feature rows.

A signal is one `Signal` entry in `SIGNALS`: a builder ``(model, **options) -> featurize``
where ``featurize(atoms_list) -> (rows, counts)`` gives the raw rows of the structures,
structure after structure, and ``counts`` the rows per structure. Adding a signal is one
builder plus one entry. The options a signal accepts are listed in its entry, so a
campaign configuration can set them and a typo is refused with the option named.

=====================  ====================================================  ==============
signal                 rows per structure                                    module
=====================  ====================================================  ==============
``activation``         pooled invariant node features of every layer (1)     activations
``atom_activation``    the same, unpooled: one row per atom (N)              activations
``ntk``                ``S ∂E/∂θ`` (1)                                       ntk
``force_ntk``          ``S ∂F/∂θ`` (3N; k with ``force_probes=k``)           ntk, ntk_probes
``energy_force_ntk``   ``(w_E/N) S ∂E/∂θ`` and the force rows (1 + 3N)       ntk, ntk_probes
``random_mace``        activations of a randomly re-initialised copy (1)     activations
``fixed_descriptor``   SOAP power spectra (dscribe), sum and mean pooled (1) descriptors
=====================  ====================================================  ==============

``random`` (no features) and ``committee`` (disagreement of fine-tuned models) are the
two baselines without feature rows (see `tangentlab.config.Acquisition`), not signals; the
committee has a scorer like the signals' (`tangentlab.acquisition.committee.CommitteeScorer`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms

from tangentlab.acquisition.activations import activation_features, atom_features
from tangentlab.acquisition.descriptors import SoapDescriptor
from tangentlab.acquisition.ntk import NTKFeaturizer
from tangentlab.mace_model import model_elements

Rows = tuple[np.ndarray, np.ndarray]
Featurizer = Callable[[Sequence[Atoms]], Rows]

#: Old names still accepted (configurations stored before the rename).
ALIASES = {"descriptor": "random_mace"}


@dataclass(frozen=True)
class Signal:
    """
    One signal of the registry.

    Attributes
    ----------
    name
        Registry name.
    build
        ``build(model, **options) -> featurize``.
    options
        Option names ``build`` accepts (with their defaults).
    standardize
        Centre and scale each column on the reference rows (learned-representation and
        descriptor rows); NTK rows are only scaled as a whole.
    multi_row
        Several rows per structure (force rows).
    """

    name: str
    build: Callable[..., Featurizer]
    options: dict[str, object]
    standardize: bool
    multi_row: bool = False


def _one_row_each(rows: np.ndarray) -> Rows:
    return rows, np.ones(len(rows), dtype=np.int64)


def random_mace_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """
    A deep copy of a MACE model with every parameter re-drawn at random (a fixed descriptor).

    Each parameter tensor is replaced by ``N(0, 1)`` draws times the root mean square of
    the original tensor (1 where it is all zeros), in the model's parameter order from
    ``torch.Generator().manual_seed(seed)``: the same architecture, scales and buffers
    (E0s, scale/shift), no learned information.

    Parameters
    ----------
    model
        A MACE model.
    seed
        Seed of the re-initialisation.

    Returns
    -------
    torch.nn.Module
        The re-initialised copy (the original is untouched).
    """
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for parameter in clone.parameters():
            rms = float(parameter.detach().double().pow(2).mean().sqrt()) or 1.0
            draw = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((draw * rms).to(parameter))
    return clone


def _activation(model, *, forward_batch_size=32, pooling="sum+mean") -> Featurizer:
    return lambda atoms_list: _one_row_each(
        activation_features(model, atoms_list, forward_batch_size, pooling=pooling)
    )


def _atom_activation(model, *, forward_batch_size=32) -> Featurizer:
    def featurize(atoms_list):
        return (atom_features(model, atoms_list, forward_batch_size),
                np.asarray([len(atoms) for atoms in atoms_list], dtype=np.int64))
    return featurize


def _random_mace(model, *, forward_batch_size=32, pooling="sum+mean", descriptor_seed=0):
    return _activation(
        random_mace_copy(model, descriptor_seed),
        forward_batch_size=forward_batch_size,
        pooling=pooling,
    )


def _fixed_descriptor(model, *, elements=None) -> Featurizer:
    zs = tuple(model_elements(model) if elements is None else elements)
    descriptor = SoapDescriptor(zs, r_cut=float(model.r_max))
    return lambda atoms_list: _one_row_each(descriptor(atoms_list))


_NTK_OPTIONS = {
    "forward_batch_size": 32,
    "parameters": "all",
    "sketch": "gaussian",
    "sketch_seed": 0,
    "method": "per_sample",
    "direction_chunk": None,
}


#: Force probes per structure of the force signals (``force_probes``; None: the exact 3N
#: rows, d double-backward passes). k probes cost k + 1 energy-gradient passes (<= 10x
#: inference for k <= 2) but ranked σ² far from the exact rows (Spearman 0.1-0.4 against 0.99
#: between two exact sketches on acac; 0.85-0.92 with 4 probes on a 40-atom slab;
#: docs/benchmarks/force-ntk-cost.md), so the exact rows stay the default. Shared and
#: atom-block probes (``NTKFeaturizer(probe_design=...)``) did not rank acac better.
FORCE_PROBES = None


def _ntk_featurizer(model, options: dict, sketch_dim, force_probes=None) -> NTKFeaturizer:
    return NTKFeaturizer(
        model,
        parameters=options["parameters"],
        sketch_dim=sketch_dim,
        sketch=options["sketch"],
        seed=options["sketch_seed"],
        batch_size=options["forward_batch_size"],
        method=options["method"],
        direction_chunk=options["direction_chunk"],
        force_probes=force_probes,
    )


def _energy_ntk(model, *, sketch_dim=256, **options) -> Featurizer:
    featurizer = _ntk_featurizer(model, {**_NTK_OPTIONS, **options}, sketch_dim)
    return lambda atoms_list: _one_row_each(featurizer.energy_rows(atoms_list))


def _force_ntk(model, *, sketch_dim=64, force_probes=FORCE_PROBES, **options) -> Featurizer:
    return _ntk_featurizer(model, {**_NTK_OPTIONS, **options}, sketch_dim, force_probes).force_rows


def _energy_force_ntk(model, *, sketch_dim=64, energy_weight=1.0, force_weight=1.0,
                      force_probes=FORCE_PROBES, **options):
    featurizer = _ntk_featurizer(model, {**_NTK_OPTIONS, **options}, sketch_dim, force_probes)
    return lambda atoms_list: featurizer.energy_force_rows(atoms_list, energy_weight, force_weight)


SIGNALS: dict[str, Signal] = {
    signal.name: signal
    for signal in (
        Signal("activation", _activation, {"forward_batch_size": 32, "pooling": "sum+mean"}, True),
        Signal("atom_activation", _atom_activation, {"forward_batch_size": 32}, True, True),
        Signal("ntk", _energy_ntk, {**_NTK_OPTIONS, "sketch_dim": 256}, False),
        Signal(
            "force_ntk",
            _force_ntk,
            {**_NTK_OPTIONS, "sketch_dim": 64, "force_probes": FORCE_PROBES},
            False,
            True,
        ),
        Signal(
            "energy_force_ntk",
            _energy_force_ntk,
            {**_NTK_OPTIONS, "sketch_dim": 64, "energy_weight": 1.0, "force_weight": 1.0,
             "force_probes": FORCE_PROBES},
            False,
            True,
        ),
        Signal(
            "random_mace",
            _random_mace,
            {"forward_batch_size": 32, "pooling": "sum+mean", "descriptor_seed": 0},
            True,
        ),
        Signal("fixed_descriptor", _fixed_descriptor, {"elements": None}, True),
    )
}


def get_signal(name: str) -> Signal:
    """
    The registry entry of a signal (old names accepted, see `ALIASES`).

    Raises
    ------
    ValueError
        If no signal has that name; the message lists the known ones.
    """
    name = ALIASES.get(name, name)
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; choose from {sorted(SIGNALS)}")
    return SIGNALS[name]


def make_featurizer(model: torch.nn.Module, signal: str, **options) -> Featurizer:
    """
    The raw (unnormalised) feature map of a signal.

    Parameters
    ----------
    model
        A MACE model on the device the features are computed on.
    signal
        A `SIGNALS` name.
    **options
        The signal's options (see its entry); left out, an option takes its default.
        ``sketch_dim=None`` asks for exact NTK rows over ``parameters``.

    Returns
    -------
    Callable
        ``featurize(atoms_list) -> (rows, counts)``.

    Raises
    ------
    ValueError
        If the signal is unknown or an option is not one of the signal's.
    """
    entry = get_signal(signal)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(
            f"signal {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {sorted(entry.options)}"
        )
    return entry.build(model, **options)
