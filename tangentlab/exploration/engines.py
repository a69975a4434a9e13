"""Exploration engines: run the current model from seed structures and report sampled frames.

An engine turns seed structures into walkers (:func:`Engine.walkers`) and runs them
(:func:`Engine.run`), calling ``judge`` on every ``sample_every``-th frame; ``judge`` gives each
frame its σ and, when the trajectory must stop there, a reason (`guards.STOP_REASONS`). A walker
ends when it is stopped or has run its steps; ``on_end`` then receives its trajectory at once,
so that it can be stored before the others finish.

The engines drive ASE's own integrator and optimisers (`ase.md.langevin.Langevin`,
`ase.mep.NEB`) with `ModelCalculator`; none is written here. The md engine batches walkers:
molecules are packed far apart (beyond the model's cutoff) into one structure (`_Packed`), and
periodic walkers are handed to the model as one batch of structures, so that each time step is
one model call for all walkers, with a per-atom temperature for the ladder and each walker's
constraints kept (docs/benchmarks/exploration-speed.md measures it against one walker at a time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from tangentlab.exploration.calculator import ModelCalculator
from tangentlab.exploration.neb import NudgedElasticBand
from tangentlab.exploration.trajectory import (
    Engine,
    Frame,
    Judge,
    OnEnd,
    Trajectory,
    Walker,
    bare_frame,
)
from tangentlab.mace_model import model_cutoff, predict

__all__ = ["ENGINES", "Engine", "Frame", "Judge", "MolecularDynamics", "NudgedElasticBand", "OnEnd",
           "Rattle", "SplitCalculator", "Trajectory", "Walker"]


def _ladder(settings: Any, seeds: Sequence[tuple[int | None, Atoms]], rng: np.random.Generator,
            temperatures: Sequence[float | None]) -> list[Walker]:
    """``settings.walkers`` walkers: seeds in a shuffled order, cycled; temperatures cycled."""
    if not seeds:
        raise ValueError("exploration has no seed structures")
    order = rng.permutation(len(seeds))
    walkers = []
    for index in range(settings.walkers):
        structure_id, atoms = seeds[int(order[index % len(seeds)])]
        walkers.append(Walker(index=index, atoms=atoms.copy(), seed_structure_id=structure_id,
                              temperature_K=temperatures[index % len(temperatures)]))
    return walkers


class MolecularDynamics:
    """Langevin MD of the current model over a temperature ladder, walkers batched."""

    name = "md"

    def walkers(self, settings, seeds, rng):
        return _ladder(settings, seeds, rng, list(settings.temperatures_K))

    def run(self, walkers, model, settings, judge, on_end, rng):
        """Groups of ``walkers_per_call`` walkers (one when ``batch_walkers`` is off) run to their
        end one group after another; a group's walkers step together, periodic ones too."""
        size = settings.walkers_per_call if settings.batch_walkers else 1
        calculator = ModelCalculator(model)
        for first in range(0, len(walkers), size):
            self._group(walkers[first:first + size], calculator, model_cutoff(model), settings, judge, on_end, rng)

    @staticmethod
    def _group(walkers, calculator, cutoff, settings, judge, on_end, rng) -> None:
        states, positions = [], []
        for walker in walkers:
            atoms = walker.atoms.copy()
            thermalize_momenta(atoms, temperature_K=walker.temperature_K, rng=rng)
            Stationary(atoms)
            atoms.set_momenta(atoms.get_momenta(), apply_constraint=True)  # fixed atoms at rest
            states.append(Trajectory(walker=walker))
            positions.append(atoms)
        active = list(zip(states, positions))
        start = time.perf_counter()
        step, packed = 0, None
        while active and step < settings.steps:
            n = min(settings.sample_every, settings.steps - step)
            group = [a for _, a in active]
            if packed is None or packed.group != group or not packed.fits():
                packed = _Packed(group, [s.walker.temperature_K for s, _ in active], calculator, settings, rng, cutoff)
            packed.run(n)
            step += n
            frames = [bare_frame(a, s.walker.atoms) for s, a in active]
            verdicts = judge(frames, [s.walker for s, _ in active])
            still = []
            for (state, atoms), frame, (sigma, reason) in zip(active, frames, verdicts, strict=True):
                state.frames.append(Frame(step, frame, sigma, reason))
                state.steps_run = step
                if reason is None and step < settings.steps:
                    still.append((state, atoms))
                    continue
                state.stop_reason = reason or "steps"
                state.wall_s = time.perf_counter() - start
                on_end(state)
            active = still


class _Packed:
    """The walkers of a group in one combined structure, integrated by one ASE ``Langevin``.

    Molecules: each sits in its own cell of a cubic grid whose spacing is the largest extent
    plus twice the model's cutoff, so no atom sees another walker, and the combined structure is
    one graph of the model. Periodic walkers (each with its own cell) are concatenated as they
    are and a `SplitCalculator` hands the model one structure per walker, in one call. A
    per-atom temperature array gives each walker its temperature, each walker's constraints
    (``FixAtoms`` on a slab's bottom layers) hold its atoms in the combined structure, and the
    combined centre of mass is not fixed (the walkers stay independent). The combined structure
    and the integrator persist between segments, so the forces at a segment's end serve the next
    one's first step; the group is packed again only when a walker leaves it or a molecule has
    moved too far from its cell (:meth:`fits`).
    """

    def __init__(self, group, temperatures_K, calculator, settings, rng, cutoff) -> None:
        self.group, self.cutoff = list(group), cutoff
        periodic = any(a.pbc.any() for a in group)
        self.split = periodic and len(group) > 1
        extents = [float(np.ptp(a.positions, axis=0).max()) if len(a) > 1 else 0.0 for a in group]
        self.spacing = max(extents) + 2 * cutoff + 1.0
        side = math.ceil(len(group) ** (1 / 3) - 1e-9)
        self.combined, self.offsets, self.slots, constraints = Atoms(), [], [], []
        for k, atoms in enumerate(group):
            slot = self.spacing * np.array([k % side, (k // side) % side, k // side**2], dtype=float)
            offset = np.zeros(3) if periodic else slot - atoms.positions.mean(axis=0)
            part = Atoms(numbers=atoms.numbers, positions=atoms.positions + offset, cell=atoms.cell,
                         pbc=atoms.pbc, masses=atoms.get_masses())
            part.set_velocities(atoms.get_velocities())
            constraints += [_shifted(c, len(self.combined)) for c in atoms.constraints]
            self.combined += part
            self.offsets.append(offset)
            self.slots.append(slot)
        if len(group) == 1:
            self.combined.cell, self.combined.pbc = group[0].cell, group[0].pbc
        self.combined.set_constraint(constraints)
        self.combined.calc = SplitCalculator(calculator.model, group) if self.split else calculator
        temperature = np.concatenate([np.full(len(a), float(t)) for a, t in zip(group, temperatures_K, strict=True)])
        self.dynamics = Langevin(self.combined, settings.timestep_fs * units.fs, temperature_K=temperature[:, None],
                                 friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)

    def run(self, steps: int) -> None:
        """Integrate ``steps`` steps and write positions and velocities back to the walkers."""
        self.dynamics.run(steps)
        positions, velocities = self.combined.positions, self.combined.get_velocities()
        start = 0
        for atoms, offset in zip(self.group, self.offsets, strict=True):
            stop = start + len(atoms)
            atoms.positions = positions[start:stop] - offset
            atoms.set_velocities(velocities[start:stop])
            start = stop

    def fits(self) -> bool:
        """Whether every walker still lies within reach of its cell: two neighbours' atoms then
        stay more than a cutoff apart (always, for periodic walkers the model sees apart)."""
        if len(self.group) == 1 or self.split:
            return True
        reach = max(float(np.abs(atoms.positions + offset - slot).max())
                    for atoms, offset, slot in zip(self.group, self.offsets, self.slots, strict=True))
        return 2 * reach + self.cutoff < self.spacing


def _shifted(constraint, start: int):
    """A copy of a ``FixAtoms`` or ``FixCartesian`` constraint for atoms numbered from ``start``.

    Raises
    ------
    ValueError
        For any other constraint: the md engine cannot carry it into a batch of walkers.
    """
    from ase.constraints import FixAtoms, FixCartesian

    if isinstance(constraint, FixAtoms):
        return FixAtoms(indices=np.asarray(constraint.index) + start)
    if isinstance(constraint, FixCartesian):
        return FixCartesian(np.asarray(constraint.index) + start, mask=constraint.mask)
    raise ValueError(f"the md engine keeps FixAtoms and FixCartesian constraints only, not "
                     f"{type(constraint).__name__}")


class SplitCalculator(Calculator):
    """Energy and forces of a concatenation of walkers, each computed as its own structure (its
    cell, pbc, charge) in one model call (`tangentlab.mace_model.predict` batches them)."""

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, model, group) -> None:
        super().__init__()
        self.model = model
        self.parts = [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc,
                            info={k: v for k, v in a.info.items() if k in ("charge", "multiplicity")})
                      for a in group]
        self.bounds = np.cumsum([0] + [len(atoms) for atoms in group])
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        for part, start, stop in zip(self.parts, self.bounds[:-1], self.bounds[1:], strict=True):
            part.positions = self.atoms.positions[start:stop]
        results = predict(self.model, self.parts)
        self.calls += 1
        energy = float(sum(energy for energy, _ in results))
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": np.concatenate([forces for _, forces in results])}


class Rattle:
    """Random displacements of the seeds (no dynamics): ``steps // sample_every`` frames per walker."""

    name = "rattle"

    def walkers(self, settings, seeds, rng):
        return _ladder(settings, seeds, rng, [None])

    def run(self, walkers, model, settings, judge, on_end, rng):
        for walker in walkers:
            start = time.perf_counter()
            trajectory = Trajectory(walker=walker)
            frames = []
            for _ in range(max(1, settings.steps // settings.sample_every)):
                frame = bare_frame(walker.atoms, walker.atoms)
                frame.positions += rng.normal(scale=settings.rattle_stdev, size=frame.positions.shape)
                frames.append(frame)
            for k, (frame, (sigma, reason)) in enumerate(zip(frames, judge(frames, [walker] * len(frames)), strict=True)):
                trajectory.frames.append(Frame((k + 1) * settings.sample_every, frame, sigma, reason))
            trajectory.steps_run = len(frames) * settings.sample_every
            trajectory.wall_s = time.perf_counter() - start
            on_end(trajectory)

#: Engines by the names ``exploration.engine`` gives.
ENGINES: dict[str, Engine] = {engine.name: engine
                              for engine in (MolecularDynamics(), Rattle(), NudgedElasticBand())}
