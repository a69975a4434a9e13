"""Exploration engines: run the current model from seed structures and report sampled frames.

An engine turns seed structures into walkers (:func:`Engine.walkers`) and runs them
(:func:`Engine.run`), calling ``judge`` on every ``sample_every``-th frame; ``judge`` gives each
frame its σ and, when the trajectory must stop there, a reason (`guards.STOP_REASONS`). A walker
ends when it is stopped or has run its steps; ``on_end`` then receives its trajectory at once,
so that it can be stored before the others finish.

The engines drive ASE's own integrator and optimisers (`ase.md.langevin.Langevin`,
`ase.mep.NEB`) with `ModelCalculator`; none is written here. The md engine batches walkers:
molecules are packed far apart (beyond the model's cutoff) into one structure (`_Packed`), so
that each time step is one model call for all walkers, with a per-atom temperature for the ladder
(docs/benchmarks/exploration-speed.md measures it against one walker at a time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
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
from tangentlab.mace_model import model_cutoff

__all__ = ["ENGINES", "Engine", "Frame", "Judge", "MolecularDynamics", "NudgedElasticBand", "OnEnd",
           "Rattle", "Trajectory", "Walker"]


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
        """Groups of ``walkers_per_call`` walkers (one when ``batch_walkers`` is off or a seed is
        periodic) run to their end one group after another; a group's walkers step together."""
        size = settings.walkers_per_call if settings.batch_walkers else 1
        if any(w.atoms.pbc.any() for w in walkers):
            size = 1
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

    Each molecule sits in its own cell of a cubic grid whose spacing is the largest extent plus
    twice the model's cutoff, so no atom sees another walker; a per-atom temperature array
    gives each walker its temperature, and the combined centre of mass is not fixed (the walkers
    stay independent). The combined structure and the integrator persist between segments, so
    the forces at a segment's end serve the next one's first step; the group is packed again
    only when a walker leaves it or one has moved too far from its cell (:meth:`fits`).
    """

    def __init__(self, group, temperatures_K, calculator, settings, rng, cutoff) -> None:
        self.group, self.cutoff = list(group), cutoff
        extents = [float(np.ptp(a.positions, axis=0).max()) if len(a) > 1 else 0.0 for a in group]
        self.spacing = max(extents) + 2 * cutoff + 1.0
        side = math.ceil(len(group) ** (1 / 3) - 1e-9)
        self.combined, self.offsets, self.slots = Atoms(), [], []
        for k, atoms in enumerate(group):
            slot = self.spacing * np.array([k % side, (k // side) % side, k // side**2], dtype=float)
            offset = slot - atoms.positions.mean(axis=0)
            part = Atoms(numbers=atoms.numbers, positions=atoms.positions + offset, cell=atoms.cell,
                         pbc=atoms.pbc, masses=atoms.get_masses())
            part.set_velocities(atoms.get_velocities())
            self.combined += part
            self.offsets.append(offset)
            self.slots.append(slot)
        if len(group) == 1:
            self.combined.cell, self.combined.pbc = group[0].cell, group[0].pbc
        self.combined.calc = calculator
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
        stay more than a cutoff apart."""
        if len(self.group) == 1:
            return True
        reach = max(float(np.abs(atoms.positions + offset - slot).max())
                    for atoms, offset, slot in zip(self.group, self.offsets, self.slots, strict=True))
        return 2 * reach + self.cutoff < self.spacing


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
