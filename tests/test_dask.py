"""QM fan-out through prefect-dask: a real LocalCluster of two worker processes, real xTB jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import xtb_campaign_config
from sqlalchemy import select

from db import Label, make_engine, session_scope, structures
from tangentlab.config import make_config

pytestmark = pytest.mark.slow


def test_labels_fan_out_over_a_dask_cluster_each_exactly_once(prefect_server, tmp_path):
    from flows.label import label
    from tasks.setup import setup_campaign

    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = make_config(xtb_campaign_config(tmp_path, "dask", 20, seed=4, qm={"task_runner": "dask", "max_parallel": 2, "timeout_s": 120}))
    campaign_id = setup_campaign(url, config)
    with session_scope(make_engine(url)) as session:
        ids = [s.id for s in structures.campaign_structures(session, campaign_id, split=["test", "train", "valid"])]
    assert len(ids) == 12

    result = label(name="dask", structure_ids=ids, database_url=url)

    assert result["done"] + result["failed"] == 12 and result["pending"] == result["running"] == 0
    log = Path(config.work_dir) / "dask" / "qm_jobs.jsonl"
    jobs = [json.loads(line)["label_id"] for line in log.read_text().splitlines()]
    with session_scope(make_engine(url)) as session:
        labels = list(session.scalars(select(Label)))
    done = {lab.id for lab in labels if lab.status == "done"}
    assert len(labels) == 12 and {lab.structure_id for lab in labels} == set(ids)
    assert len(jobs) == len(set(jobs)) == len(done), "a QM job ran twice or was not recorded"
    assert set(jobs) == done
    # The jobs ran in the Dask worker processes, not in this one.
    pids = {int(lab.worker.split(":")[1]) for lab in labels}
    assert os.getpid() not in pids

    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["campaign-dask-labelling"]}}, "sort": "CREATED_DESC", "limit": 1})
    (progress,) = response.json()
    assert progress["type"] == "progress" and progress["data"] == 100.0
    assert progress["description"].startswith(f"{result['done']}/12 QM jobs finished")

    again = label(name="dask", structure_ids=ids, database_url=url)  # nothing left to do
    assert again["done"] == result["done"]
    assert len(log.read_text().splitlines()) == len(jobs)


@pytest.mark.parametrize(
    ("qm", "message"),
    [
        ({"task_runner": "slurm"}, "qm.task_runner: Input should be 'threads' or 'dask'"),
        ({"dask_address": "tcp://h:8786"}, "dask_address set but task_runner is 'threads'"),
        ({"task_runner": "dask", "dask_address": "tcp://h:8786", "dask_cluster_kwargs": {"n_workers": 2}},
         "dask_address connects to a running cluster"),
        ({"task_runner": "dask", "dask_workers": 2}, "unknown key 'qm.dask_workers'"),
    ],
)
def test_inconsistent_dask_settings_are_rejected_by_name(qm, message):
    from tangentlab.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_config({"qm": qm})


def test_task_runner_follows_the_qm_settings():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.label import qm_task_runner

    threads = qm_task_runner(make_config({"qm": {"max_parallel": 3}}).qm)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = qm_task_runner(make_config({"qm": {"task_runner": "dask", "max_parallel": 3}}).qm)
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
    slurm = make_config({"qm": {"task_runner": "dask", "dask_cluster_class": "dask_jobqueue.SLURMCluster",
                                "dask_cluster_kwargs": {"cores": 1}, "dask_adapt_kwargs": {"maximum": 8}}}).qm
    try:
        import dask_jobqueue  # noqa: F401  (the optional "hpc" extra)
    except ImportError:
        with pytest.raises(ImportError, match=r"dask_jobqueue.SLURMCluster.*pip install -e '\.\[hpc\]'"):
            qm_task_runner(slurm)
    else:
        runner = qm_task_runner(slurm)
        assert runner.cluster_kwargs == {"cores": 1} and runner.adapt_kwargs == {"maximum": 8}
    missing = make_config({"qm": {"task_runner": "dask", "dask_cluster_class": "no_such_module.Cluster"}}).qm
    with pytest.raises(ImportError, match=r"no_such_module\.Cluster"):
        qm_task_runner(missing)
    remote = qm_task_runner(make_config({"qm": {"task_runner": "dask", "dask_address": "tcp://h:8786"}}).qm)
    assert remote.address == "tcp://h:8786"
