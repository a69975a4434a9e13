"""Concurrent label workers: real processes, real xTB jobs through quacc, real databases.

Several processes run the campaign's `label_worker` task on the same pending labels at the
same moment (they wait for a start signal after importing everything). Every label must be
computed exactly once: one finished QM job per label in `qm_jobs.jsonl`, no label claimed by
two workers. On PostgreSQL (when `.ci/start-postgres` gave a server) three processes compete
through `SELECT ... FOR UPDATE SKIP LOCKED`; on SQLite through the compare-and-swap claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import xtb_campaign_config
from sqlalchemy import select

from db import Label, LabelStatus, campaigns, init_db, labels, make_engine, session_scope
from tangentlab.config import config_json, make_config, shipped_file
from tasks.label import oracle_for
from tasks.setup import import_structures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

WORKER_SCRIPT = """
import json, sys, time
from pathlib import Path
from tangentlab.config import make_config
from tasks.label import label_worker

url, campaign_id, config_file, worker, go = sys.argv[1:]
config = make_config(json.loads(Path(config_file).read_text()))
Path(go + f".ready-{worker}").touch()
while not Path(go).exists():
    time.sleep(0.005)
print(json.dumps(label_worker(url, int(campaign_id), config, worker=int(worker))))
"""


@pytest.mark.parametrize("workers", [3])
def test_concurrent_workers_label_each_structure_exactly_once(prefect_server, tmp_path, database_url, workers):
    name = f"workers-{uuid.uuid4().hex[:8]}"
    config = make_config(xtb_campaign_config(tmp_path, name, 16, seed=3,
                                             qm={"timeout_s": 60, "max_attempts": 1}))
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(session, name, config_json(config))
        report = import_structures(session, campaign, config.pool[0])
        label_ids = sorted(set(labels.ensure_labels(session, report.structure_ids, oracle_for(config).level)))
        campaign_id = campaign.id
    assert len(label_ids) >= 12

    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config_json(config)))
    go = tmp_path / "go"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, database_url, str(campaign_id), str(config_file),
                          str(w), str(go)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for w in range(workers)
    ]
    deadline = time.monotonic() + 240
    while sum(1 for w in range(workers) if Path(f"{go}.ready-{w}").exists()) < workers:
        assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes]
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    go.touch()  # all workers start claiming at the same moment
    outputs = []
    for p in processes:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    jobs = [json.loads(line)["label_id"] for line in (tmp_path / "runs" / name / "qm_jobs.jsonl").read_text().splitlines()]
    with session_scope(engine) as session:
        stored = session.scalars(select(Label).where(Label.id.in_(label_ids))).all()
        assert all(label.status == LabelStatus.DONE for label in stored)
        assert all(label.attempts == 0 for label in stored)  # no failed attempt either
        claimed_by = Counter(label.worker for label in stored)
    engine.dispose()
    assert Counter(jobs) == Counter(label_ids)  # one finished QM job per label, none repeated
    assert sum(o["done"] for o in outputs) == len(label_ids)
    assert sum(o["failed"] for o in outputs) == 0
    assert len(claimed_by) >= 2, f"only one worker got labels: {claimed_by}"
    print(f"{database_url.split(':')[0]}: {workers} workers, {len(label_ids)} labels, per worker {sorted(claimed_by.values())}")


def test_failing_hanging_and_killed_jobs_fail_alone(prefect_server, tmp_path):
    """Injected faults through a recipe oracle: each ends as a failed label with its reason and
    run directory after its retries, and every other label of the batch is done."""
    from ase.build import molecule

    from tasks.label import label_worker

    good = [molecule(n) for n in ("H2O", "NH3", "CH4", "CO", "HCN")]
    for i, atoms in enumerate(good):
        atoms.rattle(0.02, seed=i)
    bad = [molecule("H2"), molecule("O2"), molecule("N2")]
    bad[1].info["multiplicity"] = 3
    pool = tmp_path / "pool.extxyz"
    import ase.io

    ase.io.write(pool, [bad[0], *good[:2], bad[1], *good[2:4], bad[2], good[4]], format="extxyz")
    config = make_config({
        "name": "faults",
        "pool": [str(pool)],
        "model": shipped_file("tangentlab-hcno-xtb.model"),
        "work_dir": str(tmp_path / "runs"),
        "oracle": {"name": "quacc", "recipe": "faulty_jobs.static_job"},
        "qm": {"timeout_s": 5, "max_attempts": 2},
    })
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(session, "faults", config_json(config))
        report = import_structures(session, campaign, pool)
        labels.ensure_labels(session, report.structure_ids, oracle_for(config).level)
        campaign_id = campaign.id

    counts = label_worker(url, campaign_id, config)

    assert counts == {"done": 5, "failed": 3}
    with session_scope(engine) as session:
        by_formula = {label.structure.formula: label for label in session.scalars(select(Label)).all()}
        reasons = {formula: (label.status, label.attempts, label.failure_reason) for formula, label in by_formula.items()}
        run_dirs = {formula: label.run_dir for formula, label in by_formula.items()}
        failed = labels.failed_structure_ids(session, campaign_id)
    assert reasons["H2"] == (LabelStatus.FAILED, 2, "RuntimeError: injected failure")
    assert reasons["O2"] == (LabelStatus.FAILED, 2, "timeout after 5 s")
    assert reasons["N2"] == (LabelStatus.FAILED, 2, "QM process killed by signal 9 (SIGKILL)")
    assert all(reasons[a.get_chemical_formula()][0] == LabelStatus.DONE for a in good)
    assert all(Path(run_dirs[f]).is_dir() for f in ("H2", "O2", "N2"))  # kept for inspection
    assert len(failed) == 3  # never offered to acquisition again
    jobs = (tmp_path / "runs" / "faults" / "qm_jobs.jsonl").read_text().splitlines()
    assert len(jobs) == 5


FOREIGN_WORKER = """
import json, sys
from pathlib import Path
from tangentlab.config import make_config
from tasks.label import label_worker

url, campaign_id, config_file = sys.argv[1:]
config = make_config(json.loads(Path(config_file).read_text()))
print(json.dumps(label_worker(url, int(campaign_id), config, worker=7)))
"""


@pytest.mark.parametrize("killed", [False, True], ids=["alive", "killed"])
def test_labelling_waits_for_another_runs_live_worker_and_takes_over_a_dead_ones(
        prefect_server, tmp_path, database_url, monkeypatch, killed):
    """A label worker of another run (a killed campaign's labelling on a work pool, say) holds
    the slow CO2 job when a new labelling of the same structures starts. While that worker's
    heartbeats go on, its label is left to it (the new run waits, and the job runs once); when
    its process dies, the label is taken over and run by the new labelling."""
    import ase.io
    from ase.build import molecule

    from flows.label import label
    from tasks.label import claim_timeout_s

    monkeypatch.setenv("TANGENTLAB_LEASE_HEARTBEAT_S", "0.5")  # a claim is dead after 1.5 s
    # The foreign worker's CO2 job is the slow one; the CO2 job this process runs after taking
    # it over is not slowed (when this process's QM fork server starts here: it keeps the
    # environment it started with).
    monkeypatch.setenv("TANGENTLAB_TEST_SLOW_JOB_S", "0")
    assert claim_timeout_s() == 1.5
    frames = [molecule(n) for n in ("CO2", "H2O", "NH3", "CH4", "HCN")]
    ase.io.write(tmp_path / "pool.extxyz", frames, format="extxyz")
    name = f"foreign-{'killed' if killed else 'alive'}"
    config = make_config({"name": name, "pool": [str(tmp_path / "pool.extxyz")],
                          "model": shipped_file("tangentlab-hcno-xtb.model"),
                          "work_dir": str(tmp_path / "runs"), "qm": {"timeout_s": 120, "max_attempts": 1},
                          "oracle": {"name": "quacc", "recipe": "faulty_jobs.static_job"}})
    engine = make_engine(database_url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(session, name, config_json(config))
        report = import_structures(session, campaign, tmp_path / "pool.extxyz")
        labels.ensure_labels(session, report.structure_ids, oracle_for(config).level)
        campaign_id, structure_ids = campaign.id, report.structure_ids
    (tmp_path / "config.json").write_text(json.dumps(config_json(config)))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "TANGENTLAB_TEST_SLOW_JOB_S": "60" if killed else "8"}
    foreign = subprocess.Popen([sys.executable, "-c", FOREIGN_WORKER, database_url, str(campaign_id),
                                str(tmp_path / "config.json")], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def co2_label():
        with session_scope(engine) as session:
            row = next(row for row in session.scalars(select(Label)) if row.structure.formula == "CO2")
            return row.status, row.worker

    deadline = time.monotonic() + 240
    while co2_label()[0] != LabelStatus.RUNNING:  # the foreign worker is in its slow job
        assert foreign.poll() is None, foreign.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the foreign worker did not claim the CO2 label"
        time.sleep(0.05)
    foreign_name = co2_label()[1]
    assert foreign_name.split(":")[1] == str(foreign.pid)
    if killed:
        killer = threading.Timer(4.0, foreign.kill)  # while the new labelling waits for it
        killer.start()
    try:
        counts = label(name=name, structure_ids=structure_ids, database_url=database_url)
    finally:
        if killed:
            killer.cancel()
        foreign.wait(timeout=120)

    assert counts["done"] == 5 and counts["running"] == counts["pending"] == 0
    jobs = [json.loads(line)["label_id"] for line in
            (tmp_path / "runs" / name / "qm_jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == len(set(jobs)) == 5, jobs  # every job once, none lost
    status, worker = co2_label()
    assert status == LabelStatus.DONE
    assert (worker == foreign_name) is not killed  # the live worker kept its job
