"""What every configuration section shares: unknown keys refused, names checked against registries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def registered(value: str, registry: dict, what: str) -> str:
    """``value`` if the registry has it, else a ValueError naming the known ones."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose from {sorted(registry)}")
    return value


class Section(BaseModel):
    """A configuration section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
