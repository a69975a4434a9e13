"""Labels from any quacc recipe (or job function with a quacc-style result) by import path."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.results import (
    QMFailure,
    QMResult,
    run_quacc_job,
)
from tangentlab.structures import spin_state

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ase.atoms import Atoms


class RecipeSettings(BaseOracleSettings):
    """Any quacc recipe by import path (`recipe_static`, docs/oracles.md)."""

    name: Literal["quacc"] = Field(description="The quacc-recipe oracle.")
    recipe: str = Field(description="Import path of the job, e.g. 'quacc.recipes.orca.core.static_job'.")
    kwargs: dict[str, Any] | None = Field(
        None, description="Keywords for the recipe (checked against its signature when it names them all).")
    level: dict[str, Any] | None = Field(
        None, description="Declared level of theory: 'method' and/or 'basis', recorded with the labels.")


# Keywords through which quacc recipes that pass **calc_kwargs to their calculator take the
# charge and multiplicity (recipes with named `charge`/`spin_multiplicity` need no entry).
RECIPE_SPIN_KEYWORDS: dict[str, tuple[str, str]] = {
    "quacc.recipes.tblite.core.static_job": ("charge", "multiplicity"),
}
_SPIN_KEYWORD_NAMES = (("charge",), ("spin_multiplicity", "multiplicity"))


def import_recipe(path: str) -> Callable[..., Any]:
    """
    The quacc recipe (or any job function) at a dotted import path, without its decorator.

    Parameters
    ----------
    path
        "package.module.function", e.g. "quacc.recipes.orca.core.static_job".

    Returns
    -------
    Callable
        The undecorated function (`quacc.strip_decorator`), so that it runs here, inside
        our own child process, whatever quacc's workflow engine is.

    Raises
    ------
    ValueError
        If the path has no module part, the module cannot be imported, or it has no
        callable of that name.
    """
    from importlib import import_module

    from quacc import strip_decorator

    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        msg = f"recipe {path!r} is not a dotted import path like 'quacc.recipes.tblite.core.static_job'"
        raise ValueError(msg)
    try:
        module = import_module(module_name)
    except ImportError as err:
        msg = f"recipe {path!r}: cannot import module {module_name!r} ({err})"
        raise ValueError(msg) from err
    function = getattr(module, attribute, None)
    if not callable(function):
        msg = f"recipe {path!r}: module {module_name!r} has no job function {attribute!r}"
        raise ValueError(msg)
    return strip_decorator(function)


def recipe_spin_keywords(path: str) -> tuple[str | None, str | None]:
    """
    The keywords through which a recipe takes the charge and the spin multiplicity.

    Named parameters `charge` and `spin_multiplicity` (or `multiplicity`) are used when the
    recipe has them, else `RECIPE_SPIN_KEYWORDS`; None where the recipe takes neither.

    Parameters
    ----------
    path
        Import path of the recipe.

    Returns
    -------
    tuple
        (charge keyword or None, multiplicity keyword or None).
    """
    if path in RECIPE_SPIN_KEYWORDS:
        return RECIPE_SPIN_KEYWORDS[path]
    parameters = inspect.signature(import_recipe(path)).parameters
    found = [next((n for n in names if n in parameters), None) for names in _SPIN_KEYWORD_NAMES]
    return found[0], found[1]


def recipe_level(
    recipe: str, recipe_kwargs: dict[str, Any] | None = None, level: dict[str, Any] | None = None
) -> dict[str, Any]:
    """
    Level-of-theory dict of a quacc-recipe oracle.

    Parameters
    ----------
    recipe
        Import path of the recipe.
    recipe_kwargs
        Its keywords (recorded: they are part of the level, e.g. functional and basis).
    level
        What the user declares: method, basis (recorded as given).

    Returns
    -------
    dict
        method, basis, code (the recipe's quacc code module, e.g. "orca"), recipe, kwargs.
    """
    level = level or {}
    parts = recipe.split(".")
    code = parts[2] if len(parts) > 3 and parts[:2] == ["quacc", "recipes"] else parts[0]
    return {
        "method": level.get("method"),
        "basis": level.get("basis"),
        "code": code,
        "recipe": recipe,
        "kwargs": dict(sorted((recipe_kwargs or {}).items())),
    }


def recipe_static(
    atoms: Atoms,
    *,
    recipe: str,
    kwargs: dict[str, Any] | None = None,
    level: dict[str, Any] | None = None,
    results_dir: str | Path | None = None,
) -> QMResult:
    """
    Single point with any quacc recipe (or job function with a quacc-style result).

    Parameters
    ----------
    atoms
        The molecule; its charge and multiplicity are passed through the recipe's own
        keywords (`recipe_spin_keywords`).
    recipe
        Import path, e.g. "quacc.recipes.orca.core.static_job".
    kwargs
        Keywords for the recipe.
    level
        Declared level of theory (method, basis), recorded with the result.
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        Energy and forces from the recipe's `results`, and its `dir_name`.

    Raises
    ------
    QMFailure
        If the recipe fails, returns no energy or forces, or cannot take a charged or
        open-shell structure.
    """
    function = import_recipe(recipe)
    recipe_kwargs = dict(kwargs or {})
    charge, multiplicity = spin_state(atoms)
    charge_key, multiplicity_key = recipe_spin_keywords(recipe)
    default_multiplicity = 1 if (int(atoms.numbers.sum()) - charge) % 2 == 0 else 2
    for key, value, default in ((charge_key, charge, 0), (multiplicity_key, multiplicity, default_multiplicity)):
        if key is not None:
            recipe_kwargs[key] = value
        elif value != default:
            msg = (f"recipe {recipe} takes no charge/multiplicity keyword, so it cannot label "
                   f"{atoms.get_chemical_formula()} with charge {charge}, multiplicity {multiplicity}")
            raise QMFailure(msg)

    def job() -> dict[str, Any]:
        result = function(atoms, **recipe_kwargs)
        results = result.get("results", {}) if isinstance(result, dict) else {}
        missing = [key for key in ("energy", "forces") if results.get(key) is None]
        if missing:
            msg = f"recipe {recipe} returned no {' or '.join(missing)} in its results"
            raise QMFailure(msg, str(result.get("dir_name")) if isinstance(result, dict) else None)
        return result

    return run_quacc_job(job, recipe_level(recipe, kwargs, level), results_dir)


@register
class RecipeOracle(Oracle):
    """Labels from a quacc recipe (`recipe_static`); retried unchanged (its settings are the user's)."""

    name = "quacc"
    settings_model = RecipeSettings
    job = staticmethod(recipe_static)

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`recipe_level`)."""
        s = self.settings
        return recipe_level(s["recipe"], s.get("kwargs"), s.get("level"))

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Reject a recipe path that does not import, keywords the recipe does not take, a
        charge or multiplicity among its keywords, or a malformed declared level (ValueError)."""
        recipe = settings.get("recipe")
        if not isinstance(recipe, str):
            msg = "oracle 'quacc' needs 'recipe', the import path of a quacc job, e.g. 'quacc.recipes.tblite.core.static_job'"
            raise ValueError(msg)
        function = import_recipe(recipe)
        kwargs = settings.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            msg = f"oracle 'quacc': 'kwargs' must be a mapping of keywords for {recipe}, got {type(kwargs).__name__}"
            raise ValueError(msg)
        spin_keys = {k for k in recipe_spin_keywords(recipe) if k is not None}
        reserved = sorted(set(kwargs) & (spin_keys | {"atoms", "charge", "multiplicity", "spin_multiplicity"}))
        if reserved:
            msg = (f"oracle 'quacc': {reserved} must not be set in kwargs: the atoms, charge and "
                   "multiplicity come from each structure")
            raise ValueError(msg)
        parameters = inspect.signature(function).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown and not takes_any:
            allowed = [n for n in parameters if n != "atoms"]
            msg = f"unknown keyword(s) {unknown} for recipe {recipe}; allowed: {allowed}"
            raise ValueError(msg)
        level = settings.get("level") or {}
        if not isinstance(level, dict) or set(level) - {"method", "basis"}:
            msg = "oracle 'quacc': 'level' must be a mapping with 'method' and/or 'basis'"
            raise ValueError(msg)
