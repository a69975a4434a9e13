"""What every configuration section shares: unknown keys refused, names checked against registries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pydantic import BaseModel, ConfigDict

# True while a configuration the database stored is read back (see `stored_configuration`).
_STORED: ContextVar[bool] = ContextVar("stored_configuration", default=False)


@contextmanager
def stored_configuration() -> Iterator[None]:
    """Inside the block `refuse_if_set` refuses nothing: a configuration stored by an earlier
    version, which did not yet refuse a key without effect, still loads (the key keeps having no
    effect); new configurations are checked in full."""
    token = _STORED.set(True)
    try:
        yield
    finally:
        _STORED.reset(token)


def registered(value: str, registry: dict, what: str) -> str:
    """``value`` if the registry has it, else a ValueError naming the known ones."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose from {sorted(registry)}")
    return value


def refuse_if_set(section: BaseModel, names: list[str], why: str, prefix: str = "") -> None:
    """Raise a ValueError naming each of ``names`` that ``section`` sets to another value than
    its default: the keys have no effect in this configuration (``why`` says why; ``prefix``
    names the section when a rule between sections checks it)."""
    if _STORED.get():
        return
    fields = type(section).model_fields
    changed = [name for name in names if getattr(section, name) != fields[name].get_default(call_default_factory=True)]
    if changed:
        verb = "has" if len(changed) == 1 else "have"
        raise ValueError(f"{', '.join(prefix + name for name in changed)} {verb} no effect here ({why}): remove "
                         f"{'it' if len(changed) == 1 else 'them'}")


class Section(BaseModel):
    """A configuration section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
