"""The oracle protocol and the registry of oracles by name.

An oracle is a level of theory that labels structures. Each kind is one module (like a
quacc recipe): a job function `atoms -> QMResult`, an `Oracle` subclass that records the
level of theory, checks a spec before any job runs and picks the retry strategy, and a
`BaseOracleSettings` model (the campaign configuration's `oracle` section for that kind). The
subclass joins `ORACLES` through `@register`; `make_oracle` and the configuration find it
there by its `name`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from tangentlab.oracles.isolation import run_with_timeout
from tangentlab.oracles.results import QMFailure, QMResult, describe_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from ase.atoms import Atoms


class BaseOracleSettings(BaseModel):
    """
    The `oracle` section of a campaign configuration, for one kind of oracle.

    Subclasses declare `name` (a Literal) and the keywords of the job function, with the
    same defaults. Unknown keys are errors. Only the keys given are stored (with `name`),
    so that a stored configuration reads as it was written and keeps comparing equal to it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {key: value for key, value in data.items() if key == "name" or key in self.model_fields_set}


@dataclass(frozen=True)
class Oracle(ABC):
    """
    A level of theory that labels structures.

    Attributes
    ----------
    settings
        Keywords for the job function (all but `results_dir`).
    name
        Class attribute: the name a spec or a configuration selects the oracle by.
    settings_model
        Class attribute: its `BaseOracleSettings` (the configuration section).
    job
        Class attribute: the job function, `job(atoms, *, results_dir, **settings) -> QMResult`;
        module-level, so that a child process can run it.
    isolated
        Class attribute: whether a job with a time limit runs in a child process
        (`run_with_timeout`); False for lookups that cannot hang.
    """

    name: ClassVar[str]
    settings_model: ClassVar[type[BaseOracleSettings]]
    job: ClassVar[Callable[..., QMResult]]
    isolated: ClassVar[bool] = True

    settings: dict[str, Any]

    @property
    @abstractmethod
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (it keys idempotency)."""

    @classmethod
    @abstractmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """
        Check settings before any job runs (their keywords are known to be the job's).

        Parameters
        ----------
        settings
            The spec without its name; may be normalised in place (e.g. resolved paths).

        Raises
        ------
        ValueError
            Naming the setting that cannot work.
        """

    @classmethod
    def keywords(cls) -> list[str]:
        """Keywords a spec may set: the job function's keyword-only parameters but `results_dir`."""
        return [
            p.name
            for p in inspect.signature(cls.job).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "results_dir"
        ]

    def retry_kwargs(self, attempt: int) -> dict[str, Any]:
        """
        Settings that change on a retry.

        Parameters
        ----------
        attempt
            1 for the first try, 2 for the first retry, ...

        Returns
        -------
        dict
            Keywords that override `settings`; none unless the oracle has a retry strategy.
        """
        return {}

    def __call__(
        self,
        atoms: Atoms,
        results_dir: str | Path | None = None,
        timeout_s: float | None = None,
        attempt: int = 1,
    ) -> QMResult:
        """
        Label one structure.

        Parameters
        ----------
        atoms
            The molecule.
        results_dir
            Where the job directory goes; None keeps quacc's RESULTS_DIR.
        timeout_s
            Wall-clock limit; with a limit the job runs in a child process
            (`run_with_timeout`) unless the oracle is not `isolated`, without one in this
            process.
        attempt
            Attempt number; from 2 on, `retry_kwargs(attempt)` changes the settings.

        Returns
        -------
        QMResult
            The label.

        Raises
        ------
        QMFailure
            For every failure, with its reason.
        """
        kwargs = self.settings | self.retry_kwargs(attempt)
        if timeout_s is not None and self.isolated:
            if results_dir is None:
                from quacc import get_settings

                results_dir = get_settings().RESULTS_DIR
            kwargs["results_dir"] = str(Path(results_dir).resolve())
            return run_with_timeout(type(self).job, atoms, timeout_s=timeout_s, **kwargs)
        try:
            return type(self).job(atoms, results_dir=results_dir, **kwargs)
        except QMFailure:
            raise
        except Exception as err:
            run_dir = None if results_dir is None else str(results_dir)
            raise QMFailure(describe_error(err), run_dir) from err


ORACLES: dict[str, type[Oracle]] = {}
"""Every oracle by name; an oracle module joins it with `@register`."""

OracleType = TypeVar("OracleType", bound=type[Oracle])


def register(oracle: OracleType) -> OracleType:
    """Add an `Oracle` subclass to `ORACLES` under its `name`."""
    ORACLES[oracle.name] = oracle
    return oracle


def make_oracle(spec: dict[str, Any]) -> Oracle:
    """
    Build an oracle from a spec, checking it before any job runs.

    Parameters
    ----------
    spec
        The name plus the keywords of its job function (all but `results_dir`):

        - `{"name": "xtb", "method": "GFN2-xTB"}` (`xtb.xtb_static`)
        - `{"name": "pyscf", "xc": "wb97x", "basis": "6-31g*", ...}` (`pyscf.pyscf_static`)
        - `{"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
          "kwargs": {"xc": "wb97x-d3bj", "basis": "def2-tzvp"},
          "level": {"method": "wB97X-D3BJ", "basis": "def2-TZVP"}}` (`recipe.recipe_static`)
        - `{"name": "replay", "files": ["pool.extxyz"], "reference_level": {...}}`
          (`replay.replay_static`)

    Returns
    -------
    Oracle
        The oracle.

    Raises
    ------
    ValueError
        For a missing or unknown name, an unknown keyword, an unknown xTB method, basis
        set, functional or dispersion correction, a recipe path that does not import, a
        keyword the recipe does not take, a charge or multiplicity among the recipe's
        keywords (they come from each structure), or replay files that do not exist.
    ImportError
        If the dispersion correction needs a library that is not installed.
    """
    settings = dict(spec)
    name = settings.pop("name", None)
    if name not in ORACLES:
        msg = f"unknown oracle name {name!r}; known: {sorted(ORACLES)}"
        raise ValueError(msg)
    oracle = ORACLES[name]
    allowed = oracle.keywords()
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        msg = f"unknown keyword(s) {unknown} for oracle {name!r}; allowed: {allowed}"
        raise ValueError(msg)
    oracle.check(settings)
    return oracle(settings=settings)
