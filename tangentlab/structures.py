"""Structure validation, charge/multiplicity conventions and content hashes.

A structure is an :class:`ase.Atoms`. Its total charge is ``atoms.info["charge"]`` (default 0)
and its spin multiplicity ``atoms.info["multiplicity"]`` (or ``atoms.info["spin"]``, read as a
multiplicity); without one the lowest multiplicity consistent with the electron count is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.io import read
from ase.neighborlist import neighbor_list

from tangentlab.inputs import InputFileError, check_input_file

_HASH_DECIMALS = 6  # positions and cell are hashed on a 1e-6 Å grid
#: Largest coordinate, extent and periodic cell length accepted (Å). Far beyond any molecule or
#: cell a QM oracle can label, and a neighbour list over a box this size would not fit in memory.
MAX_COORDINATE = 1e4


class InvalidStructureError(ValueError):
    """A structure that must not enter the database; the message names the problem and where."""


def _prefix(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _as_integer(value: object, name: str) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidStructureError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(number) or number != round(number):
        raise InvalidStructureError(f"{name} must be an integer, got {value!r}")
    return round(number)


def charge_and_multiplicity(atoms: Atoms) -> tuple[int, int]:
    """
    Total charge and spin multiplicity of a structure.

    Parameters
    ----------
    atoms
        The structure; ``info["charge"]`` and ``info["multiplicity"]`` (or ``info["spin"]``,
        taken as a multiplicity) are read when present.

    Returns
    -------
    tuple
        ``(charge, multiplicity)``; the default charge is 0 and the default multiplicity is 1
        for an even and 2 for an odd number of electrons.

    Raises
    ------
    InvalidStructureError
        If the charge or multiplicity is not an integer.
    """
    charge = _as_integer(atoms.info.get("charge", 0), "charge")
    multiplicity = atoms.info.get("multiplicity", atoms.info.get("spin"))
    if multiplicity is None:
        electrons = int(atoms.numbers.sum()) - charge
        return charge, 1 if electrons % 2 == 0 else 2
    return charge, _as_integer(multiplicity, "multiplicity")


def _allowed_numbers(allowed_elements: Iterable[str | int]) -> set[int]:
    return {
        int(element) if not isinstance(element, str) else atomic_numbers[element]
        for element in allowed_elements
    }


def _closest_pair(atoms: Atoms, min_distance: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (or an atom and its periodic image) under ``min_distance``."""
    i, j, d = neighbor_list("ijd", atoms, min_distance)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    first, second = sorted((int(i[k]), int(j[k])))
    return first, second, float(d[k])


def validate_atoms(
    atoms: Atoms,
    *,
    allowed_elements: Iterable[str | int] | None = None,
    min_distance: float = 0.4,
    where: str = "",
) -> None:
    """
    Check that a structure can be labelled and learned from.

    Parameters
    ----------
    atoms
        The structure.
    allowed_elements
        Symbols or atomic numbers the model knows; ``None`` accepts any real element.
    min_distance
        Two atoms (or an atom and a periodic image) closer than this (Å) are rejected.
    where
        Prefix for error messages, e.g. ``"pool.xyz, structure 3"``.

    Raises
    ------
    InvalidStructureError
        Naming the first problem found: no atoms, non-finite positions or cell, a periodic
        direction whose cell vector is zero or that spans no volume with the other periodic
        ones (:func:`_check_periodic_cell`), coordinates,
        extent or periodic cell lengths over :data:`MAX_COORDINATE`, an unknown or disallowed
        element, overlapping atoms, or a charge/multiplicity impossible for the
        electron count.
    """
    if len(atoms) == 0:
        raise InvalidStructureError(_prefix(where, "no atoms"))
    bad_rows = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
    if bad_rows.size:
        raise InvalidStructureError(
            _prefix(where, f"non-finite (NaN or inf) positions for atom {int(bad_rows[0])}")
        )
    if not np.isfinite(atoms.cell.array).all():
        raise InvalidStructureError(_prefix(where, "non-finite cell"))
    _check_periodic_cell(atoms, where)
    _check_extent(atoms, where)

    numbers = atoms.numbers
    unknown = [int(z) for z in numbers if not 0 < z < len(chemical_symbols)]
    if unknown:
        raise InvalidStructureError(_prefix(where, f"unknown atomic number {unknown[0]}"))
    if allowed_elements is not None:
        allowed = _allowed_numbers(allowed_elements)
        disallowed = sorted({chemical_symbols[z] for z in numbers if z not in allowed})
        if disallowed:
            names = ", ".join(chemical_symbols[z] for z in sorted(allowed))
            raise InvalidStructureError(
                _prefix(where, f"element {', '.join(disallowed)} not in allowed elements ({names})")
            )

    pair = _closest_pair(atoms, min_distance)
    if pair is not None:
        first, second, distance = pair
        pair_name = (
            f"atom {first} and its periodic image"
            if first == second
            else f"atoms {first} and {second}"
        )
        raise InvalidStructureError(
            _prefix(where, f"{pair_name} are {distance:.3f} Å apart (closer than {min_distance} Å)")
        )

    try:
        spin_state(atoms)
    except InvalidStructureError as error:
        raise InvalidStructureError(_prefix(where, str(error))) from None


#: Shortest periodic cell vector accepted (Å); a shorter one is taken for a cell left unset.
MIN_CELL_LENGTH = 1e-3
#: Smallest volume (area, for two periodic directions) of the periodic cell vectors accepted,
#: relative to the product of their lengths (1 for orthogonal vectors, 0 for dependent ones).
MIN_CELL_SHAPE = 1e-3


def _check_periodic_cell(atoms: Atoms, where: str) -> None:
    """Refuse pbc along a zero cell vector, or along cell vectors that are linearly dependent.

    Non-periodic directions may have any cell vector (a slab's or a molecule's may be zero):
    neighbour lists ignore them. A periodic one must be a real lattice vector, or the
    neighbour lists (MACE's, the oracle's) would silently use another cell or fail.
    """
    periodic = np.flatnonzero(atoms.pbc)
    if periodic.size == 0:
        return
    vectors = atoms.cell.array[periodic]
    lengths = np.linalg.norm(vectors, axis=1)
    names = ["xyz"[int(k)] for k in periodic]
    short = [name for name, length in zip(names, lengths, strict=True) if length < MIN_CELL_LENGTH]
    if short:
        raise InvalidStructureError(_prefix(
            where, f"pbc is set along {', '.join(short)} but the cell vector there is zero "
            f"(cell lengths {np.round(atoms.cell.lengths(), 6).tolist()} Å): give the lattice "
            "vectors or set pbc to False"))
    volume = float(np.sqrt(max(np.linalg.det(vectors @ vectors.T), 0.0)))
    if volume / float(np.prod(lengths)) < MIN_CELL_SHAPE:
        raise InvalidStructureError(_prefix(
            where, f"degenerate cell: the periodic cell vectors ({', '.join(names)}) are "
            f"linearly dependent (cell {np.round(atoms.cell.array, 6).tolist()} Å)"))


def _check_extent(atoms: Atoms, where: str) -> None:
    largest = float(np.abs(atoms.positions).max())
    span = float(np.ptp(atoms.positions, axis=0).max())
    lengths = atoms.cell.lengths()[atoms.pbc]
    if largest > MAX_COORDINATE or span > MAX_COORDINATE:
        raise InvalidStructureError(_prefix(
            where, f"coordinates out of bounds (largest |x| {largest:.3g} Å, extent {span:.3g} Å; "
            f"at most {MAX_COORDINATE:g} Å)"))
    if lengths.size and float(lengths.max()) > MAX_COORDINATE:
        raise InvalidStructureError(_prefix(
            where, f"periodic cell length {float(lengths.max()):.3g} Å is over {MAX_COORDINATE:g} Å"))


def spin_state(atoms: Atoms) -> tuple[int, int]:
    """
    Charge and multiplicity of a structure, checked against its electron count.

    Parameters
    ----------
    atoms
        The structure (see :func:`charge_and_multiplicity` for the conventions).

    Returns
    -------
    tuple
        ``(charge, multiplicity)``.

    Raises
    ------
    InvalidStructureError
        If either is not an integer, or the multiplicity is impossible for the number of
        electrons (negative electron count, multiplicity < 1, more unpaired electrons than
        electrons, or the wrong parity).
    """
    charge, multiplicity = charge_and_multiplicity(atoms)
    electrons = int(atoms.numbers.sum()) - charge
    unpaired = multiplicity - 1
    if electrons < 0 or multiplicity < 1 or unpaired > electrons or (electrons - unpaired) % 2:
        msg = (
            f"charge {charge} and multiplicity {multiplicity} are impossible "
            f"with {electrons} electrons ({atoms.get_chemical_formula()})"
        )
        raise InvalidStructureError(msg)
    return charge, multiplicity


def read_structures(
    path: str | Path,
    *,
    allowed_elements: Iterable[str | int] | None = None,
    min_distance: float = 0.4,
) -> list[Atoms]:
    """
    Every structure of an ASE-readable file (``ase.io.read(path, ":")``), checked.

    Parameters
    ----------
    path
        The file.
    allowed_elements
        Elements the model knows (symbols or atomic numbers); ``None`` accepts any.
    min_distance
        Minimum interatomic distance (Å) passed to :func:`validate_atoms`.

    Returns
    -------
    list
        The structures, each with its checked integer ``info["charge"]`` and
        ``info["multiplicity"]`` (as the database stores them).

    Raises
    ------
    InvalidStructureError
        Naming the file when it is missing, not a regular file (a FIFO, a device), larger
        than the input limit (`tangentlab.inputs.check_input_file`), unreadable or empty, or
        naming the file and structure index (``"<name>, structure <i>"``, i from 0) of the
        first invalid one.
    """
    try:
        path = check_input_file(path, "structure file")
    except InputFileError as exc:
        raise InvalidStructureError(str(exc)) from None
    try:
        atoms_list = read(path, ":")
    except Exception as error:
        raise InvalidStructureError(f"{path}: cannot read structures ({error})") from error
    if not atoms_list:
        raise InvalidStructureError(f"{path}: no structures")
    elements = None if allowed_elements is None else list(allowed_elements)
    for index, atoms in enumerate(atoms_list):
        where = f"{path.name}, structure {index}"
        validate_atoms(atoms, allowed_elements=elements, min_distance=min_distance, where=where)
        atoms.info["charge"], atoms.info["multiplicity"] = charge_and_multiplicity(atoms)
    return atoms_list


def free_components(atoms: Atoms) -> np.ndarray:
    """
    Which force components of a structure are free: not held by ``FixAtoms`` or ``FixCartesian``.

    Parameters
    ----------
    atoms
        The structure.

    Returns
    -------
    np.ndarray
        Boolean mask, shape (natoms, 3); all True without such constraints. Other constraints
        (fixed bond lengths, ...) leave the atoms free.
    """
    from ase.constraints import FixAtoms, FixCartesian

    free = np.ones((len(atoms), 3), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = False
        elif isinstance(constraint, FixCartesian):
            free[constraint.index] &= ~np.asarray(constraint.mask, dtype=bool)
    return free


def _grid(values: np.ndarray) -> bytes:
    return np.rint(np.asarray(values, dtype=float) * 10**_HASH_DECIMALS).astype("<i8").tobytes()


def content_hash(atoms: Atoms) -> str:
    """
    Hex sha256 identifying a structure's content.

    Parameters
    ----------
    atoms
        The structure.

    Returns
    -------
    str
        Hash of atomic numbers, positions and cell on a 1e-6 Å grid, pbc, charge and
        multiplicity; equal for structures that differ by less than the grid.
    """
    charge, multiplicity = charge_and_multiplicity(atoms)
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype="<i8").tobytes())
    digest.update(_grid(atoms.positions))
    digest.update(_grid(atoms.cell.array))
    digest.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    digest.update(f"{charge},{multiplicity}".encode())
    return digest.hexdigest()
