"""The acquisition engine: feature rows → posterior variance → chunked shortlist → batch.

A signal maps each structure to one or more feature rows (see ``docs/acquisition.md``):

=====================  ====================================================  ==========
signal                 rows per structure                                    module
=====================  ====================================================  ==========
``activation``         pooled invariant node features of every layer (1)     features
``ntk``                ``S ∂E/∂θ`` (1)                                       ntk
``force_ntk``          ``S ∂F/∂θ`` (3N)                                      ntk
``energy_force_ntk``   ``(w_E/N) S ∂E/∂θ`` and ``w_F S ∂F/∂θ`` (1 + 3N)      ntk
``descriptor``         activations of a randomly re-initialised copy (1)     features
``fixed_descriptor``   pooled atom-centred symmetry functions (1)            descriptors
``random``             none (`selection.random_selection`)                   selection
=====================  ====================================================  ==========

Rows are normalised on a reference set (the labelled structures plus the first
``reference_size`` pool structures) so that the mean squared row norm is 1 there
(activation and descriptor rows are first standardised column by column); the
regularisation λ is then a noise variance relative to the average prior variance, the
same for every signal. With the labelled rows Φ_L, ``A = Φ_Lᵀ Φ_L + λ I`` is factored
once; a structure's posterior variance is ``σ²(x) = λ · mean_r (Φ_x A⁻¹ Φ_xᵀ)_rr`` (the
mean over its rows; ``reduce="sum"`` for the sum).

`select_batch` streams the pool chunk by chunk, keeps the top ``shortlist_size``
structures (with their rows) in a bounded heap, and runs the batch rule on the
shortlist: memory is O(d² + chunk·rows·d + shortlist·rows·d), independent of the pool
size; time is linear in it.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from scipy.linalg import cholesky
from scipy.stats import spearmanr

from tangentlab.features import Standardizer, activation_features
from tangentlab.ntk import NTKFeaturizer
from tangentlab.selection import (
    greedy_grouped_posterior_variance,
    grouped_variance_from_cholesky,
    kmeans_pp_selection,
    random_selection,
)

SIGNALS = (
    "activation", "ntk", "force_ntk", "energy_force_ntk", "descriptor", "fixed_descriptor", "random"
)
RULES = ("greedy", "kmeans++", "top")
#: Signals with several rows per structure.
MULTI_ROW_SIGNALS = ("force_ntk", "energy_force_ntk")
#: Default sketch dimension per NTK signal (force rows cost one reverse pass per direction).
DEFAULT_SKETCH_DIM = {"ntk": 256, "force_ntk": 64, "energy_force_ntk": 64}

Rows = tuple[np.ndarray, np.ndarray]
Featurizer = Callable[[Sequence[Atoms]], Rows]
PoolSource = Sequence[Atoms] | Iterable[Atoms | Sequence[Atoms]] | Callable[[], Iterable]


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


def make_featurizer(
    model: torch.nn.Module,
    signal: str,
    *,
    forward_batch_size: int = 32,
    pooling: str = "sum+mean",
    descriptor_seed: int = 0,
    parameters: str | Sequence[str] = "all",
    sketch_dim: int | str | None = "default",
    sketch: str = "gaussian",
    sketch_seed: int = 0,
    method: str = "per_sample",
    direction_chunk: int | None = None,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
) -> Featurizer:
    """
    The raw (unnormalised) feature map of a signal.

    Parameters
    ----------
    model
        A MACE model on the device the features are computed on.
    signal
        One of ``activation``, ``ntk``, ``force_ntk``, ``energy_force_ntk``,
        ``descriptor``, ``fixed_descriptor`` (symmetry functions of
        `tangentlab.descriptors`, cutoff = the model's r_max; no model weights used).
    forward_batch_size
        Structures per forward pass.
    pooling
        Activation / descriptor pooling (see `tangentlab.features.activation_features`).
    descriptor_seed
        Seed of the random re-initialisation for ``descriptor``.
    parameters
        NTK parameter subset (see `tangentlab.ntk.select_parameters`).
    sketch_dim
        NTK sketch dimension; None for exact rows over ``parameters``; ``"default"``:
        256 for ``ntk``, 64 for the force signals.
    sketch
        ``"gaussian"`` or ``"rademacher"``.
    sketch_seed
        Seed of the sketch.
    method
        Energy-row method of `tangentlab.ntk.NTKFeaturizer`.
    direction_chunk
        Sketch directions per reverse pass (force rows); None: 1 on CPU, 16 on CUDA.
    energy_weight
        w_E of ``energy_force_ntk`` (weight of the per-atom energy row).
    force_weight
        w_F of ``energy_force_ntk`` (weight of each force row).

    Returns
    -------
    Callable
        ``featurize(atoms_list) -> (rows, counts)``.
    """
    if signal in ("activation", "descriptor"):
        source = model if signal == "activation" else random_mace_copy(model, descriptor_seed)

        def activation(atoms_list: Sequence[Atoms]) -> Rows:
            rows = activation_features(source, atoms_list, forward_batch_size, pooling=pooling)
            return rows, np.ones(len(rows), dtype=np.int64)

        return activation
    if signal == "fixed_descriptor":
        from tangentlab.descriptors import SymmetryFunctions
        from tangentlab.mace_model import model_elements

        functions = SymmetryFunctions(tuple(model_elements(model)), r_cut=float(model.r_max))

        def fixed(atoms_list: Sequence[Atoms]) -> Rows:
            rows = functions(atoms_list)
            return rows, np.ones(len(rows), dtype=np.int64)

        return fixed
    if signal in DEFAULT_SKETCH_DIM:
        featurizer = NTKFeaturizer(
            model,
            parameters=parameters,
            sketch_dim=DEFAULT_SKETCH_DIM[signal] if sketch_dim == "default" else sketch_dim,
            sketch=sketch,
            seed=sketch_seed,
            batch_size=forward_batch_size,
            method=method,
            direction_chunk=direction_chunk,
        )
        if signal == "ntk":

            def energy(atoms_list: Sequence[Atoms]) -> Rows:
                rows = featurizer.energy_rows(atoms_list)
                return rows, np.ones(len(rows), dtype=np.int64)

            return energy
        if signal == "force_ntk":
            return featurizer.force_rows

        def joint(atoms_list: Sequence[Atoms]) -> Rows:
            return featurizer.energy_force_rows(atoms_list, energy_weight, force_weight)

        return joint
    raise ValueError(f"signal must be one of {SIGNALS[:-1]} here, got {signal!r}")


@dataclass(frozen=True)
class RowScaling:
    """
    Affine normalisation of feature rows: ``(rows - mean) / scale``.

    Attributes
    ----------
    mean
        Column centre (zeros for NTK rows, which are not centred).
    scale
        Column divisor.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, standardize: bool) -> RowScaling:
        """
        Fit on reference rows so that their mean squared norm becomes 1.

        Parameters
        ----------
        rows
            Reference rows (n, d), n >= 1.
        standardize
            Centre and scale each column first (`tangentlab.features.Standardizer`).

        Returns
        -------
        RowScaling
            The fitted scaling.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if standardize:
            fitted = Standardizer.fit(rows)
            mean, scale = fitted.mean, fitted.std
        else:
            mean, scale = np.zeros(rows.shape[1]), np.ones(rows.shape[1])
        norm = float(np.sqrt(np.mean(np.sum(((rows - mean) / scale) ** 2, axis=1))))
        return cls(mean=mean, scale=scale * (norm if norm > 0 else 1.0))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """
        Normalise rows.

        Parameters
        ----------
        rows
            Raw rows (n, d).

        Returns
        -------
        np.ndarray
            Normalised rows.
        """
        return (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale


@dataclass
class PosteriorScorer:
    """
    A fitted feature map with the Cholesky factor of A: scores any structures.

    Build with `fit_scorer`. The same scorer gives the pool scores in `select_batch` and
    the sigma of validation structures for `calibrate_uncertainty`.

    Attributes
    ----------
    signal
        The signal's name.
    featurizer
        Raw feature map ``atoms_list -> (rows, counts)``.
    scaling
        Row normalisation.
    chol
        Lower Cholesky factor of ``A = Φ_Lᵀ Φ_L + λ I`` (normalised labelled rows).
    regularization
        λ.
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    n_labelled
        Number of labelled structures in A.
    """

    signal: str
    featurizer: Featurizer
    scaling: RowScaling
    chol: np.ndarray
    regularization: float
    reduce: str
    n_labelled: int

    @property
    def feature_dim(self) -> int:
        """Feature dimension d."""
        return int(self.chol.shape[0])

    def rows(self, atoms_list: Sequence[Atoms]) -> Rows:
        """
        Normalised feature rows of structures.

        Parameters
        ----------
        atoms_list
            Structures.

        Returns
        -------
        rows
            (R, d) normalised rows, structure after structure.
        counts
            Rows per structure.
        """
        rows, counts = self.featurizer(atoms_list)
        return self.scaling.apply(rows), counts

    def variance_of_rows(self, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """
        σ² of structures from their normalised rows.

        Parameters
        ----------
        rows
            Normalised rows (R, d).
        counts
            Rows per structure.

        Returns
        -------
        np.ndarray
            σ² per structure.
        """
        return grouped_variance_from_cholesky(
            self.chol, rows, counts, self.regularization, self.reduce
        )

    def variance(self, atoms_list: Sequence[Atoms], chunk_size: int = 256) -> np.ndarray:
        """
        Posterior variance σ² of structures given the labelled set.

        Parameters
        ----------
        atoms_list
            Structures.
        chunk_size
            Structures featurised at a time.

        Returns
        -------
        np.ndarray
            σ² per structure.
        """
        parts = [
            self.variance_of_rows(*self.rows(atoms_list[start : start + chunk_size]))
            for start in range(0, len(atoms_list), chunk_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)


def _featurize_in_chunks(
    featurizer: Featurizer, atoms_list: Sequence[Atoms], chunk_size: int
) -> Rows:
    rows, counts = [], []
    for start in range(0, len(atoms_list), chunk_size):
        chunk_rows, chunk_counts = featurizer(atoms_list[start : start + chunk_size])
        rows.append(chunk_rows)
        counts.append(chunk_counts)
    if not rows:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(counts)


def fit_scorer(
    model: torch.nn.Module,
    labelled_atoms: Sequence[Atoms],
    *,
    signal: str = "activation",
    reference_atoms: Sequence[Atoms] = (),
    regularization: float = 1e-2,
    reduce: str = "mean",
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    **signal_kwargs,
) -> PosteriorScorer:
    """
    Fit the row normalisation and factor A on the labelled structures.

    Parameters
    ----------
    model
        A MACE model.
    labelled_atoms
        Structures whose labels the model is (or will be) trained on.
    signal
        Signal name (not ``random``).
    reference_atoms
        Extra unlabelled structures for the row normalisation (e.g. a pool sample).
    regularization
        λ, relative to the mean prior variance of the reference rows.
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    chunk_size
        Structures featurised at a time.
    device
        Torch device for the features; the model's device when None (a copy of the
        model is moved when they differ).
    **signal_kwargs
        `make_featurizer` keywords.

    Returns
    -------
    PosteriorScorer
        The scorer.

    Raises
    ------
    ValueError
        If there is neither a labelled nor a reference structure to fit the
        normalisation on, or the signal is unknown.
    """
    if signal not in SIGNALS or signal == "random":
        raise ValueError(f"signal must be one of {SIGNALS[:-1]}, got {signal!r}")
    if regularization <= 0:
        raise ValueError(f"regularization must be positive, got {regularization}")
    if len(labelled_atoms) + len(reference_atoms) == 0:
        raise ValueError("need labelled or reference structures to normalise the feature rows")
    featurizer = make_featurizer(_on_device(model, device), signal, **signal_kwargs)
    labelled_rows, _ = _featurize_in_chunks(featurizer, labelled_atoms, chunk_size)
    reference_rows, _ = _featurize_in_chunks(featurizer, list(reference_atoms), chunk_size)
    return _fit_rows(
        signal,
        featurizer,
        labelled_rows,
        reference_rows,
        regularization,
        reduce,
        len(labelled_atoms),
    )


def _fit_rows(
    signal: str,
    featurizer: Featurizer,
    labelled_rows: np.ndarray,
    reference_rows: np.ndarray,
    regularization: float,
    reduce: str,
    n_labelled: int,
) -> PosteriorScorer:
    """Fit the scaling on labelled + reference raw rows and factor A on the labelled ones."""
    if labelled_rows.size + reference_rows.size == 0:
        raise ValueError("need labelled or reference structures to normalise the feature rows")
    reference = np.concatenate([r for r in (labelled_rows, reference_rows) if r.size])
    scaling = RowScaling.fit(reference, standardize=signal in ("activation", "descriptor", "fixed_descriptor"))
    d = reference.shape[1]
    normalised = scaling.apply(labelled_rows) if labelled_rows.size else np.zeros((0, d))
    precision = normalised.T @ normalised
    precision[np.diag_indices(d)] += regularization
    return PosteriorScorer(
        signal=signal,
        featurizer=featurizer,
        scaling=scaling,
        chol=cholesky(precision, lower=True),
        regularization=float(regularization),
        reduce=reduce,
        n_labelled=n_labelled,
    )


def _on_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    if device is None:
        return model
    current, wanted = next(model.parameters()).device, torch.device(device)
    if current.type == wanted.type and wanted.index in (None, current.index):
        return model
    return copy.deepcopy(model).to(wanted)


def iter_structure_files(paths: Iterable[str | Path]) -> Iterator[Atoms]:
    """
    Structures of ASE-readable files, one at a time (for a pool too big for memory).

    Parameters
    ----------
    paths
        Files, read in order with ``ase.io.iread``.

    Yields
    ------
    ase.Atoms
        One structure.
    """
    import ase.io

    for path in paths:
        yield from ase.io.iread(str(path), index=":")


def iter_pool_chunks(pool_atoms: PoolSource, chunk_size: int) -> Iterator[list[Atoms]]:
    """
    The pool as consecutive chunks of ``chunk_size`` structures (the last may be shorter).

    Parameters
    ----------
    pool_atoms
        A sequence of structures; an iterable yielding structures or sequences of
        structures (``ase.io.iread(...)``, a database query, a generator); or a callable
        returning such an iterable.
    chunk_size
        Structures per chunk.

    Yields
    ------
    list[ase.Atoms]
        One chunk; the chunks do not depend on how the source groups its structures.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    source = pool_atoms() if callable(pool_atoms) else pool_atoms
    chunk: list[Atoms] = []
    for item in source:
        for atoms in [item] if isinstance(item, Atoms) else item:
            chunk.append(atoms)
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _take_chunks(
    chunks: Iterator[list[Atoms]], size: int
) -> tuple[list[list[Atoms]], Iterator[list[Atoms]]]:
    """The first chunks of the stream that hold at least ``size`` structures, and the rest."""
    taken: list[list[Atoms]] = []
    count = 0
    while count < size:
        chunk = next(chunks, None)
        if chunk is None:
            break
        taken.append(chunk)
        count += len(chunk)
    return taken, chunks


def select_batch(
    model: torch.nn.Module,
    labelled_atoms: Sequence[Atoms],
    pool_atoms: PoolSource,
    *,
    signal: str = "activation",
    batch_size: int = 10,
    regularization: float = 1e-2,
    chunk_size: int = 256,
    shortlist_size: int | None = None,
    rule: str = "greedy",
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    reduce: str = "mean",
    reference_size: int = 256,
    exclude: Iterable[int] | None = None,
    scorer: PosteriorScorer | None = None,
    **signal_kwargs,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """
    Choose the next structures to label from a pool.

    Parameters
    ----------
    model
        The current MACE model.
    labelled_atoms
        Structures already labelled (the training set).
    pool_atoms
        Candidates: a sequence of structures, an iterable of structures or of chunks of
        structures (streamed once), or a callable returning one (see `iter_pool_chunks`).
    signal
        ``activation``, ``ntk``, ``force_ntk``, ``energy_force_ntk``, ``descriptor`` or
        ``random``.
    batch_size
        Number of structures to pick.
    regularization
        λ (see the module docstring).
    chunk_size
        Pool structures featurised and scored at a time.
    shortlist_size
        Highest-variance structures kept for the batch rule; None: max(10 * batch_size,
        1000).
    rule
        ``greedy`` (greedy posterior variance with rank-k updates), ``kmeans++``
        (D²-sampling in the whitened feature space) or ``top`` (the highest σ²).
    seed
        Seed of ``kmeans++`` and ``random``.
    device
        Torch device for the features (None: the model's).
    reduce
        ``"mean"`` or ``"sum"`` of the row variances of a structure.
    reference_size
        Pool structures (the first ones) that join the labelled set in fitting the row
        normalisation.
    exclude
        Pool indices never to pick.
    scorer
        A fitted `PosteriorScorer` to use instead of fitting one here.
    **signal_kwargs
        `make_featurizer` keywords (forward_batch_size, pooling, parameters, sketch_dim,
        sketch, sketch_seed, method, direction_chunk, energy_weight, force_weight,
        descriptor_seed).

    Returns
    -------
    indices
        Picked pool indices (int64), in the order picked.
    scores
        σ² of each pick given the labelled set alone (the current model's uncertainty,
        for a predicted error ``scale · √σ²``); NaN for ``random``.
    info
        JSON-serialisable: signal, rule, pool_size, feature_dim, n_labelled,
        shortlist_size, conditional_scores (σ² at pick time given the earlier picks,
        for ``greedy``), and timings (reference_s, features_s, scoring_s, selection_s,
        total_s).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    started = time.perf_counter()
    excluded = set() if exclude is None else {int(i) for i in exclude}
    chunks = iter_pool_chunks(pool_atoms, chunk_size)
    if signal == "random":
        pool_size = sum(len(chunk) for chunk in chunks)
        picks = random_selection(pool_size, batch_size, seed, exclude=sorted(excluded))
        timings = {"selection_s": time.perf_counter() - started}
        timings["total_s"] = timings["selection_s"]
        info = {"signal": signal, "rule": "random", "pool_size": pool_size, "timings": timings}
        return picks, np.full(len(picks), np.nan), info

    if shortlist_size is None:
        shortlist_size = max(10 * batch_size, 1000)
    shortlist_size = max(shortlist_size, batch_size)
    timings = {"reference_s": 0.0, "features_s": 0.0, "scoring_s": 0.0}
    # raw rows of the first chunks, computed once: they fit the scaling and are scored
    cached: list[Rows] = []
    if scorer is None:
        tick = time.perf_counter()
        featurizer = make_featurizer(_on_device(model, device), signal, **signal_kwargs)
        labelled_rows, _ = _featurize_in_chunks(featurizer, labelled_atoms, chunk_size)
        timings["reference_s"] += time.perf_counter() - tick
        taken, chunks = _take_chunks(chunks, reference_size)
        tick = time.perf_counter()
        cached = [featurizer(chunk) for chunk in taken]
        timings["features_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        reference_rows = (
            np.concatenate([rows for rows, _ in cached]) if cached else np.zeros((0, 0))
        )
        counts = np.concatenate([c for _, c in cached]) if cached else np.zeros(0, int)
        reference_rows = reference_rows[: int(counts[:reference_size].sum())]
        scorer = _fit_rows(
            signal,
            featurizer,
            labelled_rows,
            reference_rows,
            regularization,
            reduce,
            len(labelled_atoms),
        )
        timings["reference_s"] += time.perf_counter() - tick
        chunks = itertools.chain(taken, chunks)

    heap: list[tuple[float, int, np.ndarray]] = []
    pool_size = 0
    for number, chunk in enumerate(chunks):
        tick = time.perf_counter()
        if number < len(cached):
            raw, counts = cached[number]
            cached[number] = None  # drop it once scored
            rows = scorer.scaling.apply(raw)
        else:
            rows, counts = scorer.rows(chunk)
        tock = time.perf_counter()
        variances = scorer.variance_of_rows(rows, counts)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for offset, variance in enumerate(variances):
            index = pool_size + offset
            if index in excluded:
                continue
            entry = (float(variance), -index, rows[starts[offset] : starts[offset + 1]].copy())
            if len(heap) < shortlist_size:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
        pool_size += len(chunk)
        timings["features_s"] += tock - tick
        timings["scoring_s"] += time.perf_counter() - tock

    tick = time.perf_counter()
    shortlist = sorted(heap, key=lambda entry: -entry[1])  # by pool index
    pool_index = np.array([-entry[1] for entry in shortlist], dtype=np.int64)
    prior = np.array([entry[0] for entry in shortlist])
    counts = np.array([len(entry[2]) for entry in shortlist], dtype=np.int64)
    rows = (
        np.concatenate([entry[2] for entry in shortlist])
        if shortlist
        else np.zeros((0, scorer.feature_dim))
    )
    conditional = None
    if rule == "greedy":
        local, conditional = greedy_grouped_posterior_variance(
            scorer.chol, rows, counts, batch_size, scorer.regularization, scorer.reduce
        )
    elif rule == "kmeans++":
        embedding = "outer" if signal in MULTI_ROW_SIGNALS else "linear"
        local = kmeans_pp_selection(scorer.chol, rows, counts, batch_size, seed, embedding)
    else:
        order = np.lexsort((pool_index, -prior))
        local = order[:batch_size]
    timings["selection_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    info = {
        "signal": signal,
        "rule": rule,
        "pool_size": pool_size,
        "feature_dim": scorer.feature_dim,
        "n_labelled": scorer.n_labelled,
        "shortlist_size": len(shortlist),
        "regularization": scorer.regularization,
        "reduce": scorer.reduce,
        "timings": timings,
    }
    if conditional is not None:
        info["conditional_scores"] = conditional.tolist()
    return pool_index[local], prior[local], info


def calibrate_uncertainty(sigma_valid: np.ndarray, errors_valid: np.ndarray) -> float:
    """
    Scale that turns sigma into a predicted error: ``predicted = scale * sigma``.

    Maximum likelihood for errors ``e ~ N(0, (scale * sigma)**2)``:
    ``scale = sqrt(mean(e**2 / sigma**2))`` over validation structures with sigma > 0. Use the same
    kind of error the prediction should stand for (e.g. per-atom energy error in eV/atom,
    or a structure's force RMSE in eV/Å).

    Parameters
    ----------
    sigma_valid
        Posterior standard deviations sigma (square roots of `PosteriorScorer.variance`) of labelled
        validation structures.
    errors_valid
        The current model's errors on them (signed or absolute).

    Returns
    -------
    float
        The scale.

    Raises
    ------
    ValueError
        If the arrays differ in length or no sigma is positive.
    """
    sigma = np.asarray(sigma_valid, dtype=np.float64)
    errors = np.asarray(errors_valid, dtype=np.float64)
    if sigma.shape != errors.shape:
        raise ValueError(f"sigma has shape {sigma.shape}, errors {errors.shape}")
    usable = np.isfinite(sigma) & np.isfinite(errors) & (sigma > 0)
    if not usable.any():
        raise ValueError("need at least one validation structure with a positive, finite sigma")
    return float(np.sqrt(np.mean((errors[usable] / sigma[usable]) ** 2)))


def uncertainty_quality(
    sigma: np.ndarray, errors: np.ndarray, scale: float | None = None
) -> dict[str, float]:
    """
    How well sigma ranks and calibrates real errors.

    Parameters
    ----------
    sigma
        Posterior standard deviations.
    errors
        Real errors of the same structures.
    scale
        Calibration scale (fitted here with `calibrate_uncertainty` when None; then the
        numbers are in-sample).

    Returns
    -------
    dict
        ``spearman`` (rank correlation of sigma and |error|), ``scale``,
        ``coverage_1sigma`` (fraction with |error| <= scale * sigma; 0.683 when calibrated and
        Gaussian), ``rms_ratio`` (RMS error over RMS predicted error; 1 when calibrated).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    magnitude = np.abs(np.asarray(errors, dtype=np.float64))
    scale = calibrate_uncertainty(sigma, magnitude) if scale is None else float(scale)
    predicted = scale * sigma
    rank = spearmanr(sigma, magnitude).statistic if len(sigma) > 1 else float("nan")
    return {
        "spearman": float(rank),
        "scale": scale,
        "coverage_1sigma": float(np.mean(magnitude <= predicted)),
        "rms_ratio": float(np.sqrt(np.mean(magnitude**2)) / np.sqrt(np.mean(predicted**2))),
    }
