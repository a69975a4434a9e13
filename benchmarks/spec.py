"""The replay benchmark's specification, and the presets in ``benchmarks/presets/``.

Preset files name their data as ``${TANGENTLAB_DATA}/h2combustion/...``: the folder holding
``h2combustion/`` and ``acac/`` is given by ``--data-root`` or the ``TANGENTLAB_DATA``
environment variable (this repository's tests use ``../shared/data``). No machine path is
written into the product.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from benchmarks.methods import METHODS, method_acquisition
from tangentlab.config import SHIPPED_MODEL, FineTune, shipped_file
from tangentlab.inputs import InputFileError, load_yaml, yaml_problem

PRESETS = Path(__file__).resolve().parent / "presets"
DATA_VARIABLE = "TANGENTLAB_DATA"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Section):
    """Where the pool and the test set come from and how they are subsampled."""

    pool_files: list[str] = Field(
        min_length=1, description="Labelled files replayed as the candidate pool."
    )
    test_files: list[str] = Field(
        min_length=1, description="Labelled files the test set is drawn from."
    )
    pool_size: int = Field(
        800, gt=0, description="Pool structures, drawn evenly from the pool files."
    )
    test_size: int = Field(
        200, gt=0, description="Test structures, drawn evenly from the test files."
    )
    pool_filter: Literal["none", "low_energy"] = Field(
        "none",
        description="'low_energy': keep only frames below the file's energy quantile (pool shift).",
    )
    low_energy_quantile: float = Field(0.3, gt=0, le=1)
    ts_fraction: float = Field(
        0.34,
        gt=0,
        le=1,
        description=(
            "Test frames in the top fraction of their file's energy range are flagged "
            "ts_region (report only)."
        ),
    )
    data_seed: int = Field(
        0, description="Seed of the subsampling (the same files for every method and seed)."
    )
    path_file: str | None = Field(
        None, description="Energies-only path (e.g. a NEB) predicted by each final model."
    )


class BenchmarkSpec(_Section):
    """One benchmark configuration: data, methods, seeds, budget and fine-tune settings."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSpec
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS),
        description="Benchmark methods (benchmarks.methods): random, default, committee, a signal, "
        "or signal:rule[:q<quantile>].",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    model: str = Field(
        default_factory=lambda: shipped_file(SHIPPED_MODEL),
        description="Starting MACE .model: a path, or the file name of a model shipped in "
        "tangentlab/data (e.g. tangentlab-cuoh-emt.model).",
    )
    initial_size: int = Field(20, gt=0)
    batch_size: int = Field(15, gt=0)
    rounds: int = Field(3, gt=0, description="Acquisition rounds after the initial set.")
    device: str = "cpu"
    work_dir: str = os.path.join(tempfile.gettempdir(), "tangentlab-benchmark")
    committee_size: int = Field(3, ge=2)
    regularization: float | None = Field(None, gt=0, description="λ; None: the product default.")
    valid_fraction: float = Field(0.15, ge=0, lt=1)
    finetune: dict[str, Any] = Field(default_factory=lambda: {"max_epochs": 15, "patience": 5})

    @field_validator("model")
    @classmethod
    def _shipped_model_by_name(cls, value: str) -> str:
        bare = Path(value).name == value and not Path(value).exists()
        if bare and Path(shipped_file(value)).is_file():
            return shipped_file(value)
        return value

    @field_validator("finetune")
    @classmethod
    def _finetune_is_a_campaigns_finetune_section(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here, before any data is prepared or campaign stored: a typo in a key would
        # otherwise surface only when the first campaign starts.
        try:
            FineTune.model_validate(value)
        except ValidationError as exc:
            raise ValueError("; ".join(_problems(exc))) from None
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        problems = []
        for method in value:
            try:
                method_acquisition(method)
            except (ValueError, ValidationError) as exc:
                problems.append(f"{method!r} ({str(exc).splitlines()[0]})")
        if problems:
            raise ValueError(f"unknown methods {', '.join(problems)}")
        if "random" not in value:
            raise ValueError("methods must include 'random' (the reference of labels-to-reach)")
        if len(set(value)) != len(value):
            raise ValueError("methods are listed twice")
        return value

    @property
    def budget(self) -> int:
        """Training + validation labels at the end: the initial set plus every batch."""
        return self.initial_size + self.rounds * self.batch_size


class BenchmarkError(ValueError):
    """A benchmark specification or data set that cannot be used; the message says why."""


def _problems(exc: ValidationError) -> list[str]:
    """``where: what`` for each error; our own validators' words without pydantic's "Value error, "."""
    return [
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
        f"{e['ctx']['error'] if e['type'] == 'value_error' else e['msg']}"
        for e in exc.errors()
    ]


def make_spec(data: dict[str, Any]) -> BenchmarkSpec:
    """Validate a specification mapping; raise :class:`BenchmarkError` naming each problem."""
    try:
        return BenchmarkSpec.model_validate(data)
    except ValidationError as exc:
        raise BenchmarkError("invalid benchmark specification: " + "; ".join(_problems(exc))) from None


def _expand(value: Any, data_root: str | None) -> Any:
    """Replace ``${TANGENTLAB_DATA}`` in every string of a preset."""
    if isinstance(value, dict):
        return {k: _expand(v, data_root) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, data_root) for v in value]
    if isinstance(value, str) and f"${{{DATA_VARIABLE}}}" in value:
        if not data_root:
            raise BenchmarkError(
                f"this benchmark reads reference data from ${{{DATA_VARIABLE}}}: set the "
                f"{DATA_VARIABLE} environment variable or --data-root to the folder holding "
                "h2combustion/ and acac/"
            )
        return value.replace(f"${{{DATA_VARIABLE}}}", str(Path(data_root).resolve()))
    return value


def preset_names() -> list[str]:
    """Names of the presets in ``benchmarks/presets/``."""
    return sorted(path.stem for path in PRESETS.glob("*.yaml"))


def load_spec_data(path: str | Path, data_root: str | None = None) -> dict[str, Any]:
    """
    A specification mapping from a YAML/JSON file, with ``${TANGENTLAB_DATA}`` expanded.

    Parameters
    ----------
    path
        The file.
    data_root
        Folder of the reference data; None: the ``TANGENTLAB_DATA`` environment variable.

    Raises
    ------
    BenchmarkError
        The file is missing, not a regular file, too large, holds YAML aliases or is not a
        mapping, or it needs a data root that was not given.
    """
    path = Path(path)
    try:
        data = load_yaml(path, "benchmark configuration") or {}
    except InputFileError as exc:
        raise BenchmarkError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise BenchmarkError(f"benchmark configuration {path} is not valid YAML: "
                             f"{yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"benchmark configuration {path} must hold a mapping")
    return _expand(data, data_root or os.environ.get(DATA_VARIABLE))


def preset(name: str, data_root: str | None = None) -> dict[str, Any]:
    """
    The specification mapping of a preset.

    Raises
    ------
    BenchmarkError
        If there is no such preset (the message lists them).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not (PRESETS / f"{name}.yaml").is_file():
        raise BenchmarkError(f"unknown preset {name!r}; choose from {preset_names()}")
    return load_spec_data(PRESETS / f"{name}.yaml", data_root)
