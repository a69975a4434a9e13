"""Benchmark method names and the campaign acquisition section each one stands for.

A method is written ``default`` (the product's default acquisition, whatever it is), a
baseline without feature rows (``random``, ``committee``), a signal alone (greedy maximum
variance, the rule every signal used before the batch rules existed, so older results keep
their meaning), or ``signal:rule`` with optional outlier guards ``:q<σ² quantile>`` and
``:f<largest predicted force, eV/Å>``, for the force signals an optional ``:p<k>`` (k random
force probes per structure, ``signal_options: {force_probes: k}``, instead of the exact force
rows), for the NTK signals an optional ``:r<d>`` (rows over the readout parameters only,
sketched to d: ``signal_options: {parameters: readouts, sketch_dim: d}``) and, for the
transductive rule, an optional target ``:pool`` (when none is given) or ``:test``, e.g.
``activation:transductive``, ``ntk:transductive:test``, ``ntk:greedy:q0.9``,
``force_ntk:transductive:test:p4`` or ``force_ntk:transductive:test:r12``.
"""

from __future__ import annotations

from typing import Any

from tangentlab.config import FEATURELESS_METHODS, TARGET_KEYWORDS, Acquisition

#: The default comparison, in report order.
METHODS = (
    "random",
    "default",
    "committee",
    "fixed_descriptor",
    "random_mace",
    "activation",
    "ntk",
    "force_ntk",
    "energy_force_ntk",
)

SIGNAL_LABELS = {
    "committee": "committee (force std)",
    "fixed_descriptor": "fixed descriptor (ACSF)",
    "descriptor": "random-init MACE activations",
    "random_mace": "random-init MACE activations",
    "activation": "activation kernel",
    "ntk": "energy NTK",
    "force_ntk": "force NTK",
    "energy_force_ntk": "joint energy-force NTK",
}


#: Guard parts of a method name: their letter and the acquisition key the number sets.
GUARDS = {"q": "sigma_quantile", "f": "max_force"}
#: Letter of the force-probe part (``p<k>``: ``signal_options.force_probes = k``).
PROBES = "p"
#: Letter of the readout-rows part (``r<d>``: the NTK rows over the readout parameters only,
#: sketched to d, ``signal_options: {parameters: readouts, sketch_dim: d}``).
READOUTS = "r"


def method_acquisition(method: str) -> dict[str, Any]:
    """
    The ``acquisition`` keys a benchmark method sets (batch size etc. come from the spec).

    Raises
    ------
    ValueError
        If the name does not parse or names an unknown signal or rule.
    """
    if method == "default":
        return {}
    parts = method.split(":")
    section: dict[str, Any] = {"signal": parts[0]}
    if parts[0] not in FEATURELESS_METHODS:
        section["rule"] = parts[1] if len(parts) > 1 else "greedy"
        if section["rule"] == "transductive":
            # a name keeps the meaning it had when its results were stored: no target part means
            # the pool (the only target before `test` existed), whatever the product default is now
            section["target"] = "pool"
    elif len(parts) > 1:
        raise ValueError(f"method {method!r}: {parts[0]!r} takes no rule")
    for extra in parts[2:]:
        if extra in TARGET_KEYWORDS:
            section["target"] = extra
            continue
        if extra[:1] == READOUTS:
            if not extra[1:].isdigit() or int(extra[1:]) < 1:
                raise ValueError(
                    f"method {method!r}: {extra!r} is not {READOUTS}<sketch dimension>"
                )
            section.setdefault("signal_options", {}).update(
                parameters="readouts", sketch_dim=int(extra[1:])
            )
            continue
        if extra[:1] == PROBES:
            if not extra[1:].isdigit() or int(extra[1:]) < 1:
                raise ValueError(f"method {method!r}: {extra!r} is not {PROBES}<number of probes>")
            section.setdefault("signal_options", {})["force_probes"] = int(extra[1:])
            continue
        key = GUARDS.get(extra[:1])
        if key is None:
            raise ValueError(f"method {method!r}: unknown part {extra!r} (a guard is "
                             f"q<σ² quantile> or f<max force, eV/Å>, force probes p<k>, a target "
                             f"one of {list(TARGET_KEYWORDS)})")
        try:
            section[key] = float(extra[1:])
        except ValueError:
            raise ValueError(f"method {method!r}: {extra!r} is not {extra[:1]}<number>") from None
    Acquisition(**section)  # raises with the key named
    return section


def method_label(method: str) -> str:
    """A person's name for a method (tables and plots)."""
    if method in ("default", "random"):
        return method if method == "random" else f"default ({describe(Acquisition())})"
    section = method_acquisition(method)
    return describe(Acquisition(**section))


def describe(acquisition: Acquisition) -> str:
    """``signal label + rule (guard)``."""
    label = SIGNAL_LABELS.get(acquisition.signal, acquisition.signal)
    if acquisition.signal in FEATURELESS_METHODS:
        return label
    probes = acquisition.signal_options.get("force_probes")
    if probes is not None:
        label = f"{label} ({probes} force probes)"
    if acquisition.signal_options.get("parameters") == "readouts":
        label = f"{label} (readouts, d = {acquisition.signal_options.get('sketch_dim')})"
    return f"{label}, {acquisition.rule_description()}"


def method_slug(method: str) -> str:
    """The method as it appears in campaign names and file names (``[A-Za-z0-9_.-]`` only)."""
    return method.replace(":", ".").replace("+", "p")
