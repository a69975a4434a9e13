"""The neb engine: a climbing-image nudged elastic band of the current model per endpoint pair.

Each file of ``exploration.neb_endpoints`` holds a reactant and a product; its walker builds
``neb_images`` images between them (IDPP interpolation, `ase.mep.NEB` with a climbing image,
one `ModelCalculator` per image over the shared model) and optimises the band with
`ase.optimize.FIRE`. Every ``sample_every`` optimiser steps, and at the last one, the interior
images are scored; the band stops when a frame is out of bounds or unphysical, when it
converges (``fmax``) or after ``steps`` steps.

`tangentlab.exploration.engines` registers it; both take their walker and trajectory types
from `tangentlab.exploration.trajectory`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.mep import NEB
from ase.optimize import FIRE

from tangentlab.exploration.calculator import ModelCalculator
from tangentlab.exploration.trajectory import Frame, Judge, OnEnd, Trajectory, Walker, bare_frame


def read_endpoints(path: str | Path) -> tuple[Atoms, Atoms]:
    """
    The reactant and product of an endpoints file.

    Parameters
    ----------
    path
        An ASE-readable file of exactly two structures with the same atoms in the same order.

    Returns
    -------
    tuple[Atoms, Atoms]
        Reactant and product.

    Raises
    ------
    ValueError
        The file does not hold exactly two structures, or their atoms differ.
    """
    structures = ase.io.read(path, ":")
    if len(structures) != 2:
        raise ValueError(f"neb endpoints file {path} holds {len(structures)} structures; "
                         f"it needs exactly two (reactant, product)")
    reactant, product = structures
    if len(reactant) != len(product) or (reactant.numbers != product.numbers).any():
        raise ValueError(f"neb endpoints file {path}: reactant {reactant.get_chemical_formula()} "
                         f"and product {product.get_chemical_formula()} must have the same atoms "
                         f"in the same order")
    return reactant, product


class NudgedElasticBand:
    """Climbing-image NEB of the current model between given endpoints, one walker per pair."""

    name = "neb"

    def walkers(self, settings: Any, seeds: Sequence[tuple[int | None, Atoms]],
                rng: np.random.Generator) -> list[Walker]:
        """
        One walker per file of ``settings.neb_endpoints`` (``seeds`` and ``rng`` are not used:
        the endpoints are the inputs of a path).

        Raises
        ------
        ValueError
            An endpoints file is malformed (:func:`read_endpoints`), or there is none.
        """
        if not settings.neb_endpoints:
            raise ValueError("engine 'neb' needs neb_endpoints (files of a reactant and a product)")
        walkers = []
        for index, path in enumerate(settings.neb_endpoints):
            reactant, product = read_endpoints(path)
            walkers.append(Walker(index=index, atoms=reactant, endpoints=(reactant, product)))
        return walkers

    def run(self, walkers: Sequence[Walker], model: Any, settings: Any, judge: Judge, on_end: OnEnd,
            rng: np.random.Generator) -> None:
        """Optimise each walker's band in turn; ``on_end`` gets its trajectory when it stops."""
        for walker in walkers:
            start = time.perf_counter()
            reactant, product = walker.endpoints
            images = [reactant.copy() for _ in range(settings.neb_images - 1)] + [product.copy()]
            for image in images:
                image.calc = ModelCalculator(model)
            band = NEB(images, climb=True, method="improvedtangent")
            band.interpolate("idpp")
            optimizer = FIRE(band, logfile=None)
            trajectory = Trajectory(walker=walker)
            for converged in optimizer.irun(fmax=settings.fmax, steps=settings.steps):
                step = optimizer.nsteps
                last = converged or step >= settings.steps
                if not last and (step == 0 or step % settings.sample_every):
                    continue
                frames = [bare_frame(image, walker.atoms) for image in images[1:-1]]
                verdicts = judge(frames, [walker] * len(frames))
                trajectory.frames += [Frame(step, frame, sigma, reason) for frame, (sigma, reason)
                                      in zip(frames, verdicts, strict=True)]
                trajectory.steps_run = step
                reason = next((reason for _, reason in verdicts if reason is not None), None)
                if reason is not None or last:
                    trajectory.stop_reason = reason or ("converged" if converged else "steps")
                    break
            trajectory.wall_s = time.perf_counter() - start
            on_end(trajectory)
