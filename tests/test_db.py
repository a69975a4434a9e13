from __future__ import annotations

import hashlib
import os
import multiprocessing

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from ase import Atoms
from ase.build import molecule
from ase.io import read, write
from claim_worker import claim_until_empty
from sqlalchemy import func, inspect, select
from sqlalchemy.dialects import postgresql

from db import (
    Base,
    Label,
    LabelStatus,
    Structure,
    campaigns,
    init_db,
    labels,
    make_engine,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from db.models import utcnow
from db.rounds import RoundTransitionError
from tangentlab.structures import InvalidStructureError, charge_and_multiplicity, content_hash
from tasks.setup import import_structures

LEVEL = {"method": "GFN2-xTB", "basis": None, "code": "tblite", "code_version": "0.4.0"}
HCNO = ["H", "C", "N", "O"]


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def campaign_id(engine):
    with session_scope(engine) as session:
        return campaigns.create_campaign(session, "demo", {"seed": 1}).id


def _molecules(n: int, name: str = "H2O") -> list[Atoms]:
    base = molecule(name)
    result = []
    for i in range(n):
        atoms = base.copy()
        atoms.positions[0, 0] += 0.01 * i
        result.append(atoms)
    return result


def _checked(atoms_list: list[Atoms]) -> tuple[list[Atoms], list[str]]:
    """Structures as a caller hands them to the database: spin state in info, content hashes."""
    for atoms in atoms_list:
        atoms.info["charge"], atoms.info["multiplicity"] = charge_and_multiplicity(atoms)
    return atoms_list, [content_hash(atoms) for atoms in atoms_list]


def _count(engine, model) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def _labelled_campaign(engine, campaign_id, n: int) -> tuple[list[int], str]:
    with session_scope(engine) as session:
        atoms_list, hashes = _checked(_molecules(n))
        report = structures.import_atoms(session, campaign_id, atoms_list, hashes, origin="test")
        label_ids = labels.ensure_labels(session, report.structure_ids, LEVEL)
    return label_ids, labels.level_key(LEVEL)


def test_init_db_creates_schema_matching_models(engine):
    tables = set(inspect(engine).get_table_names())
    assert {"campaign", "structure", "label", "model_version", "acquisition_round"} <= tables
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    init_db(engine)  # idempotent


def test_campaign_lookup(engine, campaign_id):
    with session_scope(engine) as session:
        assert campaigns.get_campaign(session, "demo").id == campaign_id
        with pytest.raises(LookupError, match="nowhere"):
            campaigns.get_campaign(session, "nowhere")
        with pytest.raises(ValueError, match="already exists"):
            campaigns.create_campaign(session, "demo", {})


def test_import_same_file_twice_adds_nothing(engine, campaign_id, tmp_path):
    path = tmp_path / "pool.xyz"
    atoms_list = _molecules(5)
    write(path, [*atoms_list, atoms_list[0]], format="extxyz")
    with session_scope(engine) as session:
        first = import_structures(session, campaign_id, path, allowed_elements=HCNO)
    with session_scope(engine) as session:
        second = import_structures(session, campaign_id, path, allowed_elements=HCNO)
    assert (first.added, first.duplicates) == (5, 1)
    assert (second.added, second.duplicates) == (0, 6)
    assert second.structure_ids == first.structure_ids
    assert _count(engine, Structure) == 5

    with session_scope(engine) as session:
        stored = structures.campaign_structures(session, campaign_id, split="pool")
        atoms = structures.structure_atoms(stored[2])
    assert atoms.get_chemical_formula() == "H2O"
    np.testing.assert_allclose(atoms.positions, atoms_list[2].positions)
    assert atoms.info["structure_id"] == stored[2].id
    assert (atoms.info["charge"], atoms.info["multiplicity"]) == (0, 1)


BAD_SECOND_STRUCTURE = {
    "element": ("2\n\nH 0 0 0\nCl 2 0 0\n", "element Cl not in allowed"),
    "nan": ("2\n\nH 0 0 0\nH nan 0 0\n", "non-finite"),
    "overlap": ("2\n\nH 0 0 0\nH 0.1 0 0\n", "atoms 0 and 1 are 0.100 Å apart"),
}


@pytest.mark.parametrize("problem", sorted(BAD_SECOND_STRUCTURE))
def test_bad_structure_rejects_whole_file(engine, campaign_id, tmp_path, problem):
    bad, message = BAD_SECOND_STRUCTURE[problem]
    good = "3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    path = tmp_path / "pool.xyz"
    path.write_text(good + bad)
    with session_scope(engine) as session, pytest.raises(InvalidStructureError) as error:
        import_structures(session, campaign_id, path, allowed_elements=HCNO)
    assert "pool.xyz, structure 1" in str(error.value)
    assert message in str(error.value)
    assert _count(engine, Structure) == 0


def test_impossible_charge_and_multiplicity_rejected(engine, campaign_id, tmp_path):
    water, radical = molecule("H2O"), molecule("H2O")
    radical.info.update(charge=0, multiplicity=2)
    path = tmp_path / "charged.extxyz"
    write(path, [water, radical], format="extxyz")
    with session_scope(engine) as session, pytest.raises(InvalidStructureError) as error:
        import_structures(session, campaign_id, path)
    assert "charged.extxyz, structure 1: charge 0 and multiplicity 2 are impossible" in str(
        error.value
    )
    assert _count(engine, Structure) == 0


def test_unreadable_and_missing_files_named(engine, campaign_id, tmp_path):
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is\nnot a structure file\n")
    for path in (garbage, tmp_path / "missing.xyz"):
        with session_scope(engine) as session, pytest.raises(InvalidStructureError) as error:
            import_structures(session, campaign_id, path)
        assert path.name in str(error.value)
    assert _count(engine, Structure) == 0


def test_charge_and_multiplicity_survive_import(engine, campaign_id):
    cation = molecule("H2O")
    cation.info.update(charge=1, multiplicity=2)
    with session_scope(engine) as session:
        checked = _checked([cation, molecule("H2O")])
        report = structures.import_atoms(session, campaign_id, *checked, origin="x")
        assert report.added == 2  # same geometry, different charge: different structures
        atoms = structures.structure_atoms(session.get(Structure, report.structure_ids[0]))
    assert (atoms.info["charge"], atoms.info["multiplicity"]) == (1, 2)


def test_label_lifecycle_with_retries(engine, campaign_id):
    label_ids, key = _labelled_campaign(engine, campaign_id, 3)
    with session_scope(engine) as session:
        structure_ids = [s.id for s in structures.campaign_structures(session, campaign_id)]
        assert labels.ensure_labels(session, structure_ids, LEVEL) == label_ids  # no duplicates
        assert reports.label_counts(session, campaign_id)["pending"] == 3
        claimed = labels.claim_labels(session, campaign_id, key, 2, "w1")
    assert claimed == label_ids[:2]

    forces = np.arange(9.0).reshape(3, 3)
    with session_scope(engine) as session:
        bad_results = [(np.nan, forces), (1.0, forces[:2]), (1.0, np.full((3, 3), np.inf))]
        for bad_energy, bad_forces in bad_results:
            with pytest.raises(ValueError):
                labels.complete_label(session, claimed[0], bad_energy, bad_forces)
        label = labels.complete_label(session, claimed[0], -5.5, forces, 1.2, "/runs/a")
        assert label.status == LabelStatus.DONE
        assert labels.fail_label(session, claimed[1], "SCF", "/runs/b", 2).status == "pending"

    with session_scope(engine) as session:
        again = labels.claim_labels(session, campaign_id, key, 5, "w2")
        assert again == [label_ids[1], label_ids[2]]
        label = labels.fail_label(session, label_ids[1], "SCF again", "/runs/c", 2)
        assert (label.status, label.attempts, label.failure_reason) == ("failed", 2, "SCF again")
        assert labels.failed_structure_ids(session, campaign_id) == {label.structure_id}
        assert labels.reset_stale_running(session, campaign_id, stale_after_s=0) == 1  # 'w2': no heartbeat
        counts = reports.label_counts(session, campaign_id)
    assert counts == {"pending": 1, "running": 0, "done": 1, "failed": 1}

    with session_scope(engine) as session:
        pairs = labels.labelled(session, campaign_id, "pool")
        assert [label.id for _, label in pairs] == [label_ids[0]]
        np.testing.assert_array_equal(labels.label_forces(pairs[0][1], 3), forces)


def test_only_claims_of_gone_workers_are_reset(engine, campaign_id):
    """A running label returns to pending when its worker's process on this host is gone or
    its heartbeat is older than the timeout; a live worker's claim (of this host, or of another
    host with a fresh heartbeat) is left to it, so that its QM job never runs twice."""
    import socket
    import subprocess
    import sys
    from datetime import timedelta

    from sqlalchemy import update

    label_ids, key = _labelled_campaign(engine, campaign_id, 4)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    workers = [f"{here}:{gone.pid}:0", f"{here}:{os.getpid()}:0", "elsewhere:1:0", "elsewhere:2:0"]
    with session_scope(engine) as session:
        for worker in workers:
            labels.claim_labels(session, campaign_id, key, 1, worker)
        session.execute(update(Label).where(Label.id == label_ids[3])
                        .values(updated_at=utcnow() - timedelta(hours=1)))
        assert labels.heartbeat_label(session, label_ids[1], workers[1])
        assert not labels.heartbeat_label(session, label_ids[1], workers[2])  # not its claim
    with session_scope(engine) as session:
        structure_of = {label.id: label.structure_id for label in session.scalars(select(Label))}
        # Only the structures named: the gone worker's label is among them, the stale one not.
        assert labels.reset_stale_running(session, campaign_id, 60, [structure_of[label_ids[0]]]) == 1
        assert labels.reset_stale_running(session, campaign_id, 60) == 1  # the stale heartbeat
        status = {label.id: (label.status, label.worker) for label in session.scalars(select(Label))}
    assert status == {label_ids[0]: ("pending", None), label_ids[1]: ("running", workers[1]),
                      label_ids[2]: ("running", workers[2]), label_ids[3]: ("pending", None)}
    assert labels.worker_process(workers[2]) == ("elsewhere", 1)
    assert labels.worker_process("w1") is None


def test_two_processes_claim_each_label_once(engine, database_url, campaign_id):
    label_ids, key = _labelled_campaign(engine, campaign_id, 40)
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    processes = [
        context.Process(
            target=claim_until_empty, args=(database_url, campaign_id, key, name, barrier, queue)
        )
        for name in ("w1", "w2")
    ]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    claimed = results["w1"] + results["w2"]
    assert sorted(claimed) == sorted(label_ids)
    with session_scope(engine) as session:
        workers = dict(session.execute(select(Label.id, Label.worker)).all())
        assert all(session.get(Label, i).status == "running" for i in label_ids)
    assert all(workers[i] == name for name, ids in results.items() for i in ids)


def test_postgres_claim_uses_skip_locked():
    query = labels._pending_ids(1, "k", 5).with_for_update(skip_locked=True, of=Label)
    sql = str(query.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE OF label SKIP LOCKED" in sql


def test_register_model_hashes_file(engine, campaign_id, tmp_path):
    path = tmp_path / "model.model"
    path.write_bytes(b"not really a model" * 1000)
    with session_scope(engine) as session:
        assert registry.latest_model(session, campaign_id) is None
        first = registry.register_model(
            session, campaign_id, path, label_ids=[1, 2], round_number=0
        )
        second = registry.register_model(
            session, campaign_id, path, parent_id=first.id, metrics={"energy_mae": 1.0}
        )
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with session_scope(engine) as session:
        latest = registry.latest_model(session, campaign_id)
    assert (latest.id, latest.parent_id) == (second.id, first.id)
    assert latest.metrics == {"energy_mae": 1.0}


def test_changed_model_file_is_refused(engine, campaign_id, tmp_path):
    path = tmp_path / "model.model"
    path.write_bytes(b"weights" * 100)
    with session_scope(engine) as session:
        version = registry.register_model(session, campaign_id, path)
        assert registry.verified_model_path(session, version.id) == str(path)
    path.write_bytes(b"tampered" * 100)
    with session_scope(engine) as session, pytest.raises(ValueError, match="changed since it was registered"):
        registry.verified_model_path(session, version.id)
    path.unlink()
    with session_scope(engine) as session, pytest.raises(FileNotFoundError, match="is missing"):
        registry.verified_model_path(session, version.id)


def test_rounds_record_selection_and_updates(engine, campaign_id):
    with session_scope(engine) as session:
        rounds.create_round(
            session,
            campaign_id,
            0,
            method="activation_kernel",
            parameters={"batch_size": 2},
            pool_size=10,
            selected=[(3, 0.9, 0.05), {"structure_id": 4, "score": 0.5, "predicted_error": None}],
            timings={"features": 1.5},
        )
    with session_scope(engine) as session:
        round_ = rounds.get_round(session, campaign_id, 0)
        rounds.advance_round(session, round_, "labelled")
        rounds.advance_round(session, round_, "trained", trained_model_id=None)
        rounds.advance_round(session, round_, "evaluated", metrics={"energy_mae": 2.0})
        with pytest.raises(TypeError):
            rounds.advance_round(session, round_, "evaluated", number=5)
    with session_scope(engine) as session:
        (round_,) = rounds.campaign_rounds(session, campaign_id)
        assert rounds.get_round(session, campaign_id, 1) is None
    assert round_.status == "evaluated"
    assert round_.metrics == {"energy_mae": 2.0}
    assert round_.selected[0] == {"structure_id": 3, "score": 0.9, "predicted_error": 0.05}


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), "trained"),
        (("labelled",), "selected"),
        (("labelled", "trained", "evaluated"), "evaluated"),
    ],
)
def test_round_refuses_a_move_out_of_order(engine, campaign_id, path, refused):
    with session_scope(engine) as session:
        round_ = rounds.create_round(session, campaign_id, 0, method="random")
        for status in path:
            rounds.advance_round(session, round_, status)
        before = round_.status
        refusal = f"round 0 of campaign .* cannot become {refused}"
        with pytest.raises(RoundTransitionError, match=refusal):
            rounds.advance_round(session, round_, refused, metrics={"x": 1})
        assert (round_.status, round_.metrics) == (before, {})


def test_structures_without_spin_state_are_not_stored(engine, campaign_id):
    water = molecule("H2O")
    with session_scope(engine) as session, pytest.raises(ValueError, match="charge"):
        structures.import_atoms(session, campaign_id, [water], [content_hash(water)], origin="x")
    assert _count(engine, Structure) == 0


def test_export_extxyz_round_trips_energies_and_forces(engine, campaign_id, tmp_path):
    _, key = _labelled_campaign(engine, campaign_id, 4)
    rng = np.random.default_rng(0)
    expected = {}
    with session_scope(engine) as session:
        structure_ids = [s.id for s in structures.campaign_structures(session, campaign_id)]
        structures.set_split(session, structure_ids[:1], "test")
        for label_id in labels.claim_labels(session, campaign_id, key, 4, "w"):
            energy, forces = float(rng.normal(-100, 10)), rng.normal(size=(3, 3))
            labels.complete_label(session, label_id, energy, forces)
            expected[label_id] = (energy, forces)
    with session_scope(engine) as session:
        written = reports.export_extxyz(session, campaign_id, tmp_path / "train.xyz", split="pool")
        in_memory = labels.labelled_atoms(session, campaign_id, ["pool", "test"], key)
    assert written == 3
    assert len(in_memory) == 4
    for atoms in read(tmp_path / "train.xyz", ":"):
        energy, forces = expected[atoms.info["label_id"]]
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
        assert atoms.info["config_type"] == "pool"
    for atoms in in_memory:
        energy, forces = expected[atoms.info["label_id"]]
        assert atoms.info["energy"] == energy
        np.testing.assert_array_equal(atoms.arrays["forces"], forces)
