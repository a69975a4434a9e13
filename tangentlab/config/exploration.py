"""The ``exploration`` section: candidates the campaign makes by running the current model."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from tangentlab.config.base import Section, refuse_if_set, registered


class SigmaBound(Section):
    """A bound on an exploration frame's σ: an absolute ``value``, or ``factor`` × the
    ``quantile`` of σ over the campaign's labelled structures (computed each round)."""

    value: float | None = Field(None, gt=0, description="Absolute σ (the acquisition scorer's units).")
    quantile: float | None = Field(None, ge=0, le=1, description="Quantile of σ on the labelled set.")
    factor: float = Field(1.0, gt=0, description="Multiplies the quantile (not used with value).")

    @model_validator(mode="after")
    def _value_or_quantile(self) -> SigmaBound:
        if (self.value is None) == (self.quantile is None):
            raise ValueError("give exactly one of value or quantile")
        if self.value is not None and self.factor != 1.0:
            raise ValueError("factor applies to a quantile, not to an absolute value")
        return self

    def describe(self) -> str:
        """``σ 0.2`` or ``4 × q1 of the labelled σ``."""
        if self.value is not None:
            return f"σ {self.value:g}"
        factor = "" if self.factor == 1.0 else f"{self.factor:g} × "
        return f"{factor}q{self.quantile:g} of the labelled σ"


class Exploration(Section):
    """The campaign makes its own candidates by running the current model (docs/exploration.md).

    Each round, before acquisition, ``walkers`` trajectories start from the seed structures
    and run the current fine-tuned model with an engine of
    `tangentlab.exploration.engines.ENGINES`. Every sampled frame gets σ from the acquisition
    scorer; a trajectory stops when σ passes ``sigma_upper`` or the geometry becomes unphysical
    (atoms closer than ``min_distance``, or the structure falls apart into more fragments than
    its seed, at ``fragment_cutoff``; for a periodic seed, the substrate breaks or a piece of
    more than ``desorbing_atoms`` atoms leaves). Frames with ``sigma_lower`` ≤ σ ≤ ``sigma_upper`` become
    pool candidates (deduplicated, at most ``max_candidates`` per round).
    """

    engine: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = Field(
        default_factory=lambda: ["md"], description="Engine, or a list of engines run one after another each "
        "round: md (Langevin over a temperature ladder), neb (between neb_endpoints) or rattle.")
    seeds: str = Field("labelled", description="Where trajectories start: 'labelled' (the labelled "
                       "structures of the campaign) or a structure file.")
    walkers: int = Field(8, gt=0, description="Trajectories per round (seeds and temperatures are cycled).")
    temperatures_K: list[float] = Field(default_factory=lambda: [300.0, 600.0, 900.0],
                                        description="Temperature ladder of the md engine (K).")
    steps: int = Field(400, gt=0, description="Steps per trajectory (md: time steps; neb: optimiser steps; "
                       "rattle: frames × sample_every).")
    timestep_fs: float = Field(0.5, gt=0, le=5, description="md time step (fs).")
    friction_per_fs: float = Field(0.02, gt=0, description="md Langevin friction (1/fs).")
    sample_every: int = Field(10, gt=0, description="Steps between scored frames.")
    batch_walkers: bool = Field(True, description="md: integrate walkers together, one model call per step "
                                "for a group of walkers_per_call (molecules only; periodic seeds run one at a time).")
    walkers_per_call: int = Field(16, gt=0, description="md: walkers per group when batched; groups run one "
                                  "after another, and each walker is stored when it ends.")
    sigma_lower: SigmaBound = Field(default_factory=lambda: SigmaBound(quantile=1.0),
                                    description="Frames below this σ are known ground, not candidates.")
    sigma_upper: SigmaBound = Field(default_factory=lambda: SigmaBound(quantile=1.0, factor=4.0),
                                    description="A frame above this σ stops its trajectory and is not kept.")
    min_distance: float = Field(0.6, gt=0, description="Two atoms closer than this (Å) stop a trajectory.")
    fragment_cutoff: float | None = Field(None, gt=0, description="Atoms within this distance (Å) are "
                                          "connected; None: the model's cutoff.")
    desorbing_atoms: int = Field(4, ge=0, description="Periodic seeds: a finite fragment of at most this many "
                                 "atoms may leave the structure (a desorbing adsorbate) without stopping the "
                                 "trajectory; the slab itself must stay whole (docs/exploration.md).")
    max_candidates: int = Field(100, gt=0, description="Candidates stored per round at most.")
    rattle_stdev: float = Field(0.1, gt=0, description="rattle engine: displacement standard deviation (Å).")
    neb_endpoints: list[str] = Field(default_factory=list, description="neb engine: files of two "
                                     "structures each (reactant, product).")
    neb_images: int = Field(7, ge=3, description="neb engine: images including the endpoints.")
    fmax: float = Field(0.05, gt=0, description="neb engine: converged below this largest force (eV/Å).")

    @field_validator("engine")
    @classmethod
    def _known_engines(cls, value: list[str]) -> list[str]:
        from tangentlab.exploration.engines import ENGINES

        if not value:
            raise ValueError("give at least one engine")
        if len(set(value)) < len(value):
            raise ValueError(f"an engine is named twice: {value}")
        return [registered(name, ENGINES, "engine") for name in value]

    @field_validator("temperatures_K")
    @classmethod
    def _positive_temperatures(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one temperature")
        if any(not t > 0 for t in value):
            raise ValueError(f"temperatures must be positive (K), got {value}")
        return value

    @model_validator(mode="after")
    def _engine_inputs(self) -> Exploration:
        if "neb" in self.engine and not self.neb_endpoints:
            raise ValueError("engine 'neb' needs neb_endpoints (files of a reactant and a product)")
        if "neb" not in self.engine and self.neb_endpoints:
            raise ValueError(f"neb_endpoints are for engine 'neb', not {' + '.join(self.engine)}")
        lower, upper = self.sigma_lower, self.sigma_upper
        if lower.value is not None and upper.value is not None and lower.value >= upper.value:
            raise ValueError(f"sigma_lower {lower.value:g} must be below sigma_upper {upper.value:g}")
        if lower.quantile is not None and upper.quantile is not None and lower.quantile == upper.quantile \
                and lower.factor >= upper.factor:
            raise ValueError("sigma_lower must be below sigma_upper (same quantile: give sigma_upper the larger factor)")
        return self

    @model_validator(mode="after")
    def _settings_the_engines_use(self) -> Exploration:
        # An engine's own keys have no effect without that engine: another value than the
        # default is refused by name (neb_endpoints is checked with the neb engine's inputs).
        for engine, keys in (("md", ["temperatures_K", "timestep_fs", "friction_per_fs", "batch_walkers",
                                     "walkers_per_call"]),
                             ("rattle", ["rattle_stdev"]),
                             ("neb", ["neb_images", "fmax"])):
            if engine not in self.engine:
                refuse_if_set(self, keys, f"they are the {engine} engine's, and the engines are "
                              f"{self.engines()}")
        return self

    def engines(self) -> str:
        """The engines in words: ``md`` or ``md + neb``."""
        return " + ".join(self.engine)
