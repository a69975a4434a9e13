"""Acquisition rounds and their state machine.

A round is created ``selected`` (its batch is chosen), or ``explored`` first in a campaign
that makes its own candidates, and then only moves forward, one step at a time:
``(explored ->) selected -> labelled -> trained -> evaluated``. :func:`advance_round` is the one
way to change a round's status; it refuses any other move, so a resumed campaign can trust
the stored status to say which step comes next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db._query import campaign_id_of
from db.leases import fence
from db.models import AcquisitionRound, Campaign, RoundStatus

NEXT_STATUS: dict[RoundStatus, RoundStatus] = {
    RoundStatus.EXPLORED: RoundStatus.SELECTED,  # its batch is chosen (campaigns with exploration)
    RoundStatus.SELECTED: RoundStatus.LABELLED,  # every selected structure has a final label
    RoundStatus.LABELLED: RoundStatus.TRAINED,  # the fine-tuned model is registered
    RoundStatus.TRAINED: RoundStatus.EVALUATED,  # its test errors are stored
}

_ADVANCE_FIELDS = {
    "model_version_id",
    "trained_model_id",
    "method",
    "parameters",
    "pool_size",
    "selected",
    "timings",
    "metrics",
}


class RoundTransitionError(ValueError):
    """A round asked to move to a status its current one does not lead to."""


def _selected_entry(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        structure_id, score, error = entry["structure_id"], entry["score"], entry["predicted_error"]
    else:
        structure_id, score, error = entry
    return {
        "structure_id": int(structure_id),
        "score": None if score is None else float(score),
        "predicted_error": None if error is None else float(error),
    }


def create_round(
    session: Session,
    campaign: Campaign | int,
    number: int,
    *,
    method: str,
    parameters: dict[str, Any] | None = None,
    model_version_id: int | None = None,
    pool_size: int = 0,
    selected: Iterable[Any] = (),
    timings: dict[str, Any] | None = None,
) -> AcquisitionRound:
    """
    Record an acquisition round (status ``selected``).

    ``selected`` holds ``(structure_id, score, predicted_error)`` tuples or dicts with
    those keys, stored as a JSON list of dicts. An ``explored`` round of that number moves to
    ``selected`` with these fields; its stored parameters (the exploration's) are kept.
    """
    fence(session, campaign_id_of(campaign))
    explored = get_round(session, campaign, number)
    if explored is not None and explored.status == RoundStatus.EXPLORED:
        return advance_round(
            session, explored, RoundStatus.SELECTED, method=method,
            parameters={**(explored.parameters or {}), **(parameters or {})},
            model_version_id=model_version_id, pool_size=pool_size, selected=list(selected),
            timings={**(explored.timings or {}), **(timings or {})},
        )
    round_ = AcquisitionRound(
        campaign_id=campaign_id_of(campaign),
        number=number,
        status=RoundStatus.SELECTED,
        method=method,
        parameters=dict(parameters or {}),
        model_version_id=model_version_id,
        pool_size=pool_size,
        selected=[_selected_entry(entry) for entry in selected],
        timings=dict(timings or {}),
        metrics={},
    )
    session.add(round_)
    session.flush()
    return round_


def create_explored_round(
    session: Session, campaign: Campaign | int, number: int, *, parameters: dict[str, Any],
    model_version_id: int | None = None, timings: dict[str, Any] | None = None,
) -> AcquisitionRound:
    """Record round ``number`` as ``explored``: its candidates are stored, none is selected yet."""
    fence(session, campaign_id_of(campaign))
    round_ = AcquisitionRound(
        campaign_id=campaign_id_of(campaign), number=number, status=RoundStatus.EXPLORED,
        method="exploration", parameters=dict(parameters), model_version_id=model_version_id,
        pool_size=0, selected=[], timings=dict(timings or {}), metrics={},
    )
    session.add(round_)
    session.flush()
    return round_


def get_round(session: Session, campaign: Campaign | int, number: int) -> AcquisitionRound | None:
    """Round ``number`` of a campaign, or ``None`` if it was not created."""
    return session.scalar(
        select(AcquisitionRound).where(
            AcquisitionRound.campaign_id == campaign_id_of(campaign),
            AcquisitionRound.number == number,
        )
    )


def campaign_rounds(session: Session, campaign: Campaign | int) -> list[AcquisitionRound]:
    """A campaign's rounds by number."""
    return list(
        session.scalars(
            select(AcquisitionRound)
            .where(AcquisitionRound.campaign_id == campaign_id_of(campaign))
            .order_by(AcquisitionRound.number)
        )
    )


def advance_round(
    session: Session, round_: AcquisitionRound, to_status: str, **fields: Any
) -> AcquisitionRound:
    """
    Move a round one step along ``selected -> labelled -> trained -> evaluated``.

    Parameters
    ----------
    session
        Open session.
    round_
        The round.
    to_status
        The status it moves to: the one after its current status.
    **fields
        Fields stored with the move (e.g. ``trained_model_id``, ``metrics``, ``timings``);
        JSON fields are replaced, not merged.

    Returns
    -------
    AcquisitionRound
        The round, flushed.

    Raises
    ------
    RoundTransitionError
        If ``to_status`` is not the next status of the round's current one; nothing changes.
    TypeError
        For a field that is not a round's (or is ``status`` or ``number``).
    """
    unknown = set(fields) - _ADVANCE_FIELDS
    if unknown:
        raise TypeError(f"cannot update round fields {sorted(unknown)}")
    current, target = RoundStatus(round_.status), RoundStatus(to_status)
    if NEXT_STATUS.get(current) != target:
        follows = (
            f"only {NEXT_STATUS[current]} follows {current}"
            if current in NEXT_STATUS
            else f"{current} is the last status"
        )
        raise RoundTransitionError(
            f"round {round_.number} of campaign {round_.campaign_id} is {current} and cannot "
            f"become {target}: {follows} ((explored ->) selected -> labelled -> trained -> evaluated)"
        )
    if "selected" in fields:
        fields["selected"] = [_selected_entry(entry) for entry in fields["selected"]]
    fence(session, round_.campaign_id)
    round_.status = target
    for name, value in fields.items():
        setattr(round_, name, value)
    session.flush()
    return round_
