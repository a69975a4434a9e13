"""What an exploration engine works on and reports: walkers, scored frames, trajectories.

The engines (`tangentlab.exploration.engines`, `tangentlab.exploration.neb`) share these types;
they live here so that no engine module imports another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from ase import Atoms


@dataclass
class Walker:
    """One trajectory to run.

    Attributes
    ----------
    index
        Its number in the round (stable across resumes: the walker list is seeded).
    atoms
        The starting structure (a copy; ``info`` holds charge and multiplicity).
    seed_structure_id
        The campaign structure it starts from (None for a seed file).
    temperature_K
        md: its temperature.
    endpoints
        neb: reactant and product.
    engine
        The engine that runs it (set by `tangentlab.exploration.plan_walkers`).
    """

    index: int
    atoms: Atoms
    seed_structure_id: int | None = None
    temperature_K: float | None = None
    endpoints: tuple[Atoms, Atoms] | None = None
    engine: str = ""


@dataclass
class Frame:
    """A scored frame: its step, structure, σ, and why it is unphysical or out of bounds
    (None: fine)."""

    step: int
    atoms: Atoms
    sigma: float
    reason: str | None = None


@dataclass
class Trajectory:
    """A finished walker: every scored frame, the steps run and why it stopped."""

    walker: Walker
    frames: list[Frame] = field(default_factory=list)
    steps_run: int = 0
    stop_reason: str = "steps"
    wall_s: float = 0.0


#: ``judge(frames, walkers)``: per frame its σ and a stop reason (None: go on).
Judge = Callable[[Sequence[Atoms], Sequence[Walker]], list[tuple[float, str | None]]]
OnEnd = Callable[[Trajectory], None]


class Engine(Protocol):
    name: str

    def walkers(self, settings: Any, seeds: Sequence[tuple[int | None, Atoms]],
                rng: np.random.Generator) -> list[Walker]:
        """The round's walkers from the seeds (deterministic for a given ``rng`` state)."""

    def run(self, walkers: Sequence[Walker], model: Any, settings: Any, judge: Judge, on_end: OnEnd,
            rng: np.random.Generator) -> None:
        """Run the walkers; call ``on_end`` once per walker as it finishes."""


def bare_frame(atoms: Atoms, like: Atoms) -> Atoms:
    """A bare copy of a frame (positions, cell, pbc) with the seed's charge, multiplicity and
    constraints (a candidate from a slab keeps its fixed bottom layers)."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell.copy(),
                  pbc=atoms.pbc)
    if like.constraints:
        frame.set_constraint([constraint.copy() for constraint in like.constraints])
    for key in ("charge", "multiplicity"):
        if key in like.info:
            frame.info[key] = like.info[key]
    return frame
