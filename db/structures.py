"""Structures of a campaign: store checked atoms once per content hash, read them back, move splits.

The database stores and never judges: callers check structures (``tangentlab.structures``
validates them and computes their content hashes) before handing them here. A structure goes
in and comes out as :class:`ase.Atoms` with ``info["charge"]`` and ``info["multiplicity"]``,
its cell, pbc and constraints (``FixAtoms`` on a slab's bottom layers, ...; stored as
``provenance["constraints"]``, ASE's ``todict`` form).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.constraints import dict2constraint
from ase.io.jsonio import decode, encode
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db._query import campaign_id_of, chunks, rows_by_id, split_values
from db.models import Campaign, Split, Structure


@dataclass(frozen=True)
class ImportReport:
    """Outcome of an import: rows added, duplicates skipped, ids in input order."""

    added: int
    duplicates: int
    structure_ids: list[int] = field(default_factory=list)


def _spin(atoms: Atoms, index: int) -> tuple[int, int]:
    try:
        return int(atoms.info["charge"]), int(atoms.info["multiplicity"])
    except KeyError as missing:
        raise ValueError(
            f"structure {index} has no info[{missing}]: check structures with "
            "tangentlab.structures before storing them"
        ) from None


def _constraints_to_json(atoms: Atoms) -> list[dict] | None:
    """A structure's ASE constraints as JSON-ready dicts (ASE's ``todict`` form, NumPy arrays
    encoded as ASE's JSON does), or None without constraints."""
    if not atoms.constraints:
        return None
    return [json.loads(encode(constraint.todict())) for constraint in atoms.constraints]


def _constraints_from_json(data: list[dict] | None) -> list:
    """The ASE constraints of :func:`_constraints_to_json`'s dicts (none for None)."""
    return [dict2constraint(decode(json.dumps(item))) for item in data or []]


def _structure_row(
    atoms: Atoms, index: int, campaign_id: int, hash_: str, origin: str, split: Split
) -> Structure:
    charge, multiplicity = _spin(atoms, index)
    constraints = _constraints_to_json(atoms)
    return Structure(
        campaign_id=campaign_id,
        numbers=np.asarray(atoms.numbers, dtype="<i8").tobytes(),
        positions=np.asarray(atoms.positions, dtype="<f8").tobytes(),
        cell=np.asarray(atoms.cell.array, dtype="<f8").tobytes(),
        pbc=[bool(p) for p in atoms.pbc],
        charge=charge,
        multiplicity=multiplicity,
        formula=atoms.get_chemical_formula(),
        natoms=len(atoms),
        content_hash=hash_,
        origin=origin,
        provenance=None if constraints is None else {"constraints": constraints},
        split=split,
    )


def import_atoms(
    session: Session,
    campaign: Campaign | int,
    atoms_list: Sequence[Atoms],
    content_hashes: Sequence[str],
    *,
    origin: str,
    split: str = "pool",
) -> ImportReport:
    """
    Add checked structures to a campaign, once per content hash.

    Parameters
    ----------
    session
        Open session.
    campaign
        Campaign or its id.
    atoms_list
        Structures already checked by the caller, each with integer ``info["charge"]`` and
        ``info["multiplicity"]``.
    content_hashes
        Their content hashes, in the same order; equal hashes are the same structure.
    origin
        Where they came from (file, exploration run, ...), stored with each.
    split
        ``"pool"``, ``"train"``, ``"valid"`` or ``"test"``.

    Returns
    -------
    ImportReport
        Structures already in the campaign, or repeated in ``atoms_list``, count as
        duplicates and are not added again.

    Raises
    ------
    ValueError
        If the lists differ in length or a structure lacks its charge or multiplicity;
        nothing is added then.
    """
    if len(atoms_list) != len(content_hashes):
        raise ValueError(f"{len(atoms_list)} structures but {len(content_hashes)} content hashes")
    split_value = Split(split)
    campaign_id = campaign_id_of(campaign)
    known: dict[str, int] = {}
    for chunk in chunks(sorted(set(content_hashes))):
        rows = session.execute(
            select(Structure.content_hash, Structure.id).where(
                Structure.campaign_id == campaign_id, Structure.content_hash.in_(chunk)
            )
        )
        known.update({h: i for h, i in rows})

    new_rows: dict[str, Structure] = {}
    for index, (atoms, hash_) in enumerate(zip(atoms_list, content_hashes, strict=True)):
        if hash_ not in known and hash_ not in new_rows:
            new_rows[hash_] = _structure_row(atoms, index, campaign_id, hash_, origin, split_value)
    session.add_all(new_rows.values())
    session.flush()
    known.update({h: row.id for h, row in new_rows.items()})
    return ImportReport(
        added=len(new_rows),
        duplicates=len(content_hashes) - len(new_rows),
        structure_ids=[known[h] for h in content_hashes],
    )


def structure_atoms(structure: Structure) -> Atoms:
    """The structure as :class:`ase.Atoms` (cell, pbc, constraints) with ``info`` structure_id,
    charge, multiplicity."""
    n = structure.natoms
    atoms = Atoms(
        numbers=np.frombuffer(structure.numbers, dtype="<i8").copy(),
        positions=np.frombuffer(structure.positions, dtype="<f8").reshape(n, 3).copy(),
        cell=np.frombuffer(structure.cell, dtype="<f8").reshape(3, 3).copy(),
        pbc=list(structure.pbc),
        constraint=_constraints_from_json((structure.provenance or {}).get("constraints")),
    )
    atoms.info.update(
        structure_id=structure.id, charge=structure.charge, multiplicity=structure.multiplicity
    )
    return atoms


def campaign_structures(
    session: Session, campaign: Campaign | int, split: str | Iterable[str] | None = None
) -> list[Structure]:
    """Structures of a campaign (optionally of one split or several), ordered by id."""
    query = select(Structure).where(Structure.campaign_id == campaign_id_of(campaign))
    splits = split_values(split)
    if splits is not None:
        query = query.where(Structure.split.in_(splits))
    return list(session.scalars(query.order_by(Structure.id)))


def structures_by_id(session: Session, structure_ids: Sequence[int]) -> list[Structure]:
    """Structures in the order of ``structure_ids``; raises ``LookupError`` for a missing id."""
    return rows_by_id(session, Structure, structure_ids)


def set_split(session: Session, structure_ids: Iterable[int], split: str) -> int:
    """Move structures to a split; returns the number of rows changed."""
    ids = list(structure_ids)
    changed = 0
    for chunk in chunks(ids):
        result = session.execute(
            update(Structure).where(Structure.id.in_(chunk)).values(split=Split(split))
        )
        changed += result.rowcount
    return changed
