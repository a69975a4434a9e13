"""What the Prefect UI shows of a campaign, read back through the Prefect API.

A campaign is written into a SQLite database with the db functions (no QM, no fine-tuning:
a test set with one failed QM job, a random initial round and a scored round with the
stored selection diagnostics), the monitoring functions publish it from a real flow on the
session's Prefect test server, and the tests read the artifacts back through the REST API.
A real campaign's final state and label subflow names are checked in tests/test_campaign.py.
"""

from __future__ import annotations

import json
import re
import struct
from types import SimpleNamespace

import ase.io
import httpx
import numpy as np
import pytest
from conftest import write_pool
from prefect import flow

from db import campaigns, init_db, labels, make_engine, registry, rounds, session_scope, structures
from flows.curve import learning_curve_png, wants_log_axis
from flows.label import run_name
from flows.monitoring import overview_key, publish_overview, publish_selection, selection_key
from flows.rendering import (
    BUDGET_EXHAUSTED,
    BUDGET_STATE_NAMES,
    LABEL_BUDGET,
    OUT_OF_REACH,
    POOL_EXHAUSTED,
    ROUND_BUDGET,
    TARGETS_MET,
    TIME_BUDGET,
    decision_name,
    outcome_name,
    overview_markdown,
)
from flows.selection_rendering import selection_markdown
from tangentlab.stopping import BUDGETS, StopDecision, stop_decision
from tangentlab.structures import content_hash

LEVEL = {"method": "GFN2-xTB", "basis": None, "code": "tblite", "code_version": "test"}
DIAGNOSTICS = {
    "picked": {"count": 3, "energy_per_atom_eV": {"mean": -40.0, "q10": -41.0, "q50": -40.0, "q90": -39.0},
               "max_force_eV_per_A": {"mean": 2.5, "q10": 1.5, "q50": 2.25, "q90": 4.0}},
    "pool": {"count": 12, "energy_per_atom_eV": {"mean": -40.5, "q10": -42.0, "q50": -40.5, "q90": -39.5},
             "max_force_eV_per_A": {"mean": 1.2, "q10": 0.5, "q50": 1.125, "q90": 2.0}},
}


def _config(tmp_path, name):
    return SimpleNamespace(
        name=name, work_dir=str(tmp_path / "runs"),
        targets=SimpleNamespace(energy_mae_mev_per_atom=20.0, force_mae_mev_per_a=150.0),
        budgets=SimpleNamespace(max_labels=30, max_rounds=4, max_wall_time_s=3600.0))


def _label(session, structure_id, *, energy=None, failure=None):
    (label_id,) = labels.ensure_labels(session, [structure_id], LEVEL)
    (structure,) = structures.structures_by_id(session, [structure_id])
    campaign_id, natoms = structure.campaign_id, structure.natoms
    claimed = labels.claim_labels(session, campaign_id, labels.level_key(LEVEL), 1, "test")
    assert claimed == [label_id]
    if failure is not None:
        labels.fail_label(session, label_id, failure, "/runs/failed | here", max_attempts=1)
    else:
        labels.complete_label(session, label_id, energy, np.zeros((natoms, 3)), 1.25, "/runs/ok")


@pytest.fixture
def lab(tmp_path):
    """A campaign with 4 test structures (1 failed QM), round 0 (3 random, labelled) and round 1
    (3 scored picks, not labelled yet, no uncertainty scale); returns (url, campaign id, ids)."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    model_file = tmp_path / "model.weights"  # the registry only hashes the file
    model_file.write_bytes(b"weights")
    engine = make_engine(url)
    init_db(engine)
    pool = [a for a in ase.io.read(write_pool(tmp_path / "pool.extxyz", 16, seed=4, max_atoms=4), ":")]
    for atoms in pool:
        atoms.info.update(charge=0, multiplicity=1 if sum(atoms.numbers) % 2 == 0 else 2)
    with session_scope(engine) as session:
        camp = campaigns.create_campaign(session, "uicheck", {})
        ids = structures.import_atoms(session, camp, pool, [content_hash(a) for a in pool],
                                      origin="pool").structure_ids
        ids = list(dict.fromkeys(ids))  # a generated pool can hold one structure twice
        assert len(ids) >= 10
        test, initial, picks = ids[:4], ids[4:7], ids[7:10]
        structures.set_split(session, test, "test")
        structures.set_split(session, initial[:2] + picks, "train")
        structures.set_split(session, initial[2:], "valid")
        for i, sid in enumerate(test):
            _label(session, sid, **({"failure": "SCF did not converge"} if i == 1 else {"energy": -10.0 - i}))
        start = registry.register_model(session, camp, model_file, hyperparameters={"source": "test"},
                                        metrics={"test": {"energy_mae_mev_per_atom": 812.5,
                                                          "force_mae_mev_per_a": 2400.0}})
        round0 = rounds.create_round(session, camp, 0, method="initial-random", parameters={"seed": 7},
                                     pool_size=12, selected=[(i, None, None) for i in initial])
        for sid in initial:
            _label(session, sid, energy=-20.0)
        rounds.advance_round(session, round0, "labelled")
        trained = registry.register_model(session, camp, model_file, parent_id=start.id, round_number=0,
                                          label_ids=[1, 2, 3], metrics={"test": {
                                              "energy_mae_mev_per_atom": 45.25, "force_mae_mev_per_a": 610.0}})
        rounds.advance_round(session, round0, "trained", trained_model_id=trained.id)
        rounds.advance_round(session, round0, "evaluated", metrics={"test": trained.metrics["test"]},
                             timings={"round_wall_s": 30.0, "finetune_s": 20.0})
        # Pick order is not score order: the score is taken given the earlier picks.
        rounds.create_round(session, camp, 1, method="ntk", parameters={
            "rule": "transductive", "uncertainty_scale": None, "diagnostics": DIAGNOSTICS},
            model_version_id=trained.id, pool_size=9,
            selected=[(picks[0], 0.5, None), (picks[1], 0.25, None), (picks[2], 0.3, None)],
            timings={"acquire_s": 1.5})
        campaign_id = camp.id
    return url, campaign_id, {"test": test, "initial": initial, "picks": picks}


def _latest(key: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    response.raise_for_status()
    found = response.json()
    assert found, f"no artifact {key!r}"
    return found[0]


def _tables(markdown: str) -> list[list[dict[str, str]]]:
    """The markdown tables of an artifact as lists of {header: cell} rows."""
    tables, block = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif block:
            header, _, *rows = block
            tables.append([dict(zip(header, row)) for row in rows])
            block = []
    return tables


def test_selection_artifacts_are_titled_and_show_the_labels_once_they_finish(prefect_server, lab, tmp_path):
    url, campaign_id, ids = lab
    engine = make_engine(url)

    @flow
    def publish(numbers):
        from prefect.runtime import flow_run

        for number in numbers:
            publish_selection(url, campaign_id, "uicheck", number)
        return flow_run.id

    publish([0, 1])
    assert selection_key("uicheck", 1) == "campaign-uicheck-round-1-selection"
    initial = _latest("campaign-uicheck-round-0-selection")
    assert initial["type"] == "markdown" and "round 0" in initial["description"]
    assert initial["data"].startswith("## Campaign uicheck · round 0 · initial set")
    assert "drawn at random from 12 pool structures (seed 7)" in initial["data"]
    (rows,) = _tables(initial["data"])
    assert "Score at pick" not in rows[0] and "Pick" not in rows[0]  # nothing was ranked
    assert [int(r["Structure"]) for r in rows] == ids["initial"]
    assert {r["Label"] for r in rows} == {"done"} and {r["Energy (eV)"] for r in rows} == {"-20.0000"}

    before = _latest(selection_key("uicheck", 1))["data"]
    assert before.startswith("## Campaign uicheck · round 1 · selection")
    assert "picked by **ntk (transductive)** from 9 pool structures with model version" in before
    assert "3 still to run" in before
    # round 0 had one validation structure: too few to fit the error scale, and it says so
    assert "No predicted force error this round:" in before and "this round had 1." in before
    diagnostics, picks = _tables(before)
    assert [r["Set"] for r in diagnostics] == ["picked", "pool (sample)"]
    assert diagnostics[0]["Structures"] == "3" and diagnostics[0]["q50"] == "2.25"  # max force median
    assert diagnostics[1]["Energy/atom q10 (eV)"] == "-42.000"
    assert [r["Pick"] for r in picks] == ["1", "2", "3"]
    assert [r["Score at pick"] for r in picks] == ["0.5", "0.25", "0.3"]
    assert {r["Label"] for r in picks} == {"not queued"}

    with session_scope(engine) as session:  # the round's labelling: two done, one failed
        picks_ids = ids["picks"]
        _label(session, picks_ids[0], energy=-30.5)
        _label(session, picks_ids[1], failure="SCF | diverged\nafter 50 cycles")
        _label(session, picks_ids[2], energy=-31.0)
    run_id = publish([1, 1])  # published twice in one run: one artifact, updated in place
    from prefect.settings import PREFECT_API_URL

    mine = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30, json={"artifacts": {
        "key": {"any_": [selection_key("uicheck", 1)]}, "flow_run_id": {"any_": [run_id]}}}).json()
    assert len(mine) == 1
    after = _latest(selection_key("uicheck", 1))["data"]
    assert mine[0]["data"] == after
    assert "**Labels:** 2 done, 1 failed QM." in after
    *_, picks = _tables(after)
    assert [r["Label"] for r in picks] == ["done", "failed (1 attempts)", "done"]
    assert [r["Energy (eV)"] for r in picks] == ["-30.5000", "", "-31.0000"]
    assert picks[1]["Failure"] == "SCF \\| diverged after 50 cycles"  # one cell, one line
    assert [r["QM time (s)"] for r in picks] == ["1.2", "", "1.2"]


def test_overview_shows_outcome_targets_test_failures_and_the_starting_model(prefect_server, lab, tmp_path):
    url, campaign_id, ids = lab
    engine = make_engine(url)
    config = _config(tmp_path, "uicheck")

    @flow
    def publish(decision=None):
        return publish_overview(url, campaign_id, config, decision=decision)

    path = publish()
    assert path.read_bytes()[:4] == b"\x89PNG"
    artifact = _latest(overview_key("uicheck"))
    assert artifact["key"] == "campaign-uicheck-overview" and artifact["type"] == "markdown"
    text = artifact["data"]
    assert text.startswith("## Campaign uicheck: Running")
    assert "energy MAE ≤ 20 meV/atom and force MAE ≤ 150 meV/Å" in text
    assert "- **Budgets used:** 3 of 30 labels, 0 of 4 rounds, 30 s of 60.0 min" in text
    assert "- **Test set:** 4 structures, errors measured on the 3 labelled, **1 failed QM**" in text
    assert "](data:image/png;base64,iVBORw0KGgo" in text
    rounds_table, times, failed = _tables(text)
    assert list(rounds_table[0]) == ["Round", "Selected by", "Picked", "Training labels", "Energy MAE (meV/atom)",
                                     "Force MAE (meV/Å)", "Model version"]
    assert [(r["Round"], r["Selected by"], r["Training labels"], r["Force MAE (meV/Å)"]) for r in rounds_table] == [
        ("start", "starting model", "0", "2400.0"), ("0", "initial random set", "3", "610.0"),
        ("1", "ntk", "", "")]
    assert times == [{"Round": "0", "Acquire (s)": "", "Fine-tune (s)": "20", "Whole round (s)": "30"},
                     {"Round": "1", "Acquire (s)": "1.5", "Fine-tune (s)": "", "Whole round (s)": ""}]
    assert [(int(r["Structure"]), r["Split"], r["Reason"]) for r in failed] == [
        (ids["test"][1], "test", "SCF did not converge")]

    with session_scope(engine) as session:
        campaigns.set_campaign_status(session, campaign_id, "budget_exhausted",
                                      "round budget used (4/4); energy MAE 45.2 meV/atom (target 20)")
    publish()
    text = _latest(overview_key("uicheck"))["data"]
    assert text.startswith("## Campaign uicheck: Round budget exhausted\n\n**Round budget exhausted:** round budget "
                           "used (4/4)")
    # the campaign flow passes the decision it stored: its budget names the headline
    publish(StopDecision("budget_exhausted", "wall-time budget used (700/600 s); energy MAE 45.2", "wall_time"))
    text = _latest(overview_key("uicheck"))["data"]
    assert text.startswith(f"## Campaign uicheck: {TIME_BUDGET}\n\n**{TIME_BUDGET}:** wall-time budget used")


def _decision(**spent):
    targets = SimpleNamespace(energy_mae_mev_per_atom=10.0, force_mae_mev_per_a=100.0)
    budgets = SimpleNamespace(max_labels=50, max_rounds=5, max_wall_time_s=600.0)
    kwargs = {"energy_mae": 20.0, "force_mae": 200.0, "labels_used": 10, "rounds_done": 1, "wall_time_s": 10.0,
              "pool_remaining": 5, **spent}
    return stop_decision(targets=targets, budgets=budgets, **kwargs)


@pytest.mark.parametrize(("spent", "budget", "name"), [
    ({"energy_mae": 5.0, "force_mae": 50.0}, None, TARGETS_MET),
    ({"labels_used": 50}, "labels", LABEL_BUDGET),
    ({"rounds_done": 5}, "rounds", ROUND_BUDGET),
    ({"wall_time_s": 601.0}, "wall_time", TIME_BUDGET),
    ({"pool_remaining": 0}, "pool", POOL_EXHAUSTED),
])
def test_every_stop_decision_has_its_own_state_name(spent, budget, name):
    decision = _decision(**spent)
    assert decision.budget == budget
    assert decision_name(decision) == name


def test_state_name_comes_from_the_budget_not_the_wording_of_the_reason():
    # every budget has a state name of its own, and the reason's text plays no part in it
    assert set(BUDGET_STATE_NAMES) == set(BUDGETS)
    assert len(set(BUDGET_STATE_NAMES.values())) == len(BUDGETS)
    names = {budget: decision_name(StopDecision("budget_exhausted", "targets met; label budget used", budget))
             for budget in BUDGETS}
    assert names == {"labels": LABEL_BUDGET, "rounds": ROUND_BUDGET, "wall_time": TIME_BUDGET,
                     "pool": POOL_EXHAUSTED, "unreachable": OUT_OF_REACH}
    assert decision_name(StopDecision("targets_met", "round budget used (5/5)")) == TARGETS_MET
    # a status stored without a known budget (a reason from before budgets were named)
    assert outcome_name("budget_exhausted") == BUDGET_EXHAUSTED
    with pytest.raises(ValueError, match="unknown budget 'money'"):
        outcome_name("budget_exhausted", "money")


def test_outcome_name_refuses_a_campaign_that_has_not_ended():
    with pytest.raises(ValueError, match="campaign status 'running' is not an outcome"):
        outcome_name("running", None)
    assert outcome_name("failed") == "Failed"


def test_final_state_name_and_message_reach_the_prefect_api(prefect_server):
    from prefect.client.orchestration import get_client

    from flows.monitoring import final_state

    @flow
    def ends(status, reason, budget):
        return final_state(StopDecision(status, reason, budget), data={"status": status})

    # the reason's words name another budget: the state name follows the budget field
    reason = "round budget used (2/2); nothing left to pick"
    assert ends("budget_exhausted", reason, "pool") == {"status": "budget_exhausted"}
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort="EXPECTED_START_TIME_DESC", limit=1)
    assert (run.state.type.value, run.state.name) == ("COMPLETED", POOL_EXHAUSTED)
    assert run.state.message == reason


def _png_size_and_alpha(png: bytes) -> tuple[int, int, int]:
    width, height, _, colour_type = struct.unpack(">IIBB", png[16:26])
    return width, height, colour_type


def test_learning_curve_is_large_transparent_and_linear_unless_errors_span_decades():
    import matplotlib.image

    targets = SimpleNamespace(energy_mae_mev_per_atom=20.0, force_mae_mev_per_a=150.0)
    points = [("start", 0, 60.0, 400.0), ("R0", 6, 40.0, 300.0), ("R1", 10, 25.0, 200.0)]
    png = learning_curve_png(points, targets)
    width, height, colour_type = _png_size_and_alpha(png)
    assert (width, height) == (1000, 390) and colour_type == 6  # RGBA
    pixels = matplotlib.image.imread(__import__("io").BytesIO(png))
    assert pixels[0, 0, 3] == 0.0  # transparent background: reads on the light and dark theme
    assert len(png) < 100_000
    # energies that start 4 decades above their end (xTB model, HF labels) get a log axis
    assert not wants_log_axis([60.0, 40.0, 25.0, 20.0]) and wants_log_axis([1.0e6, 450.0, 20.0])
    wide = learning_curve_png([("start", 0, 1.0e6, 2000.0), ("R0", 6, 450.0, 1300.0)], targets)
    assert wide != png and _png_size_and_alpha(wide)[:2] == (1000, 390)


def test_label_runs_are_named_by_purpose():
    assert run_name("uicheck", [1, 2, 3], "test set") == "label uicheck: test set (3 structures)"
    assert run_name("uicheck", [4], "round 2") == "label uicheck: round 2 (1 structure)"
    assert run_name("uicheck", None, None) == "label uicheck (all pending)"


def test_status_prints_words_and_flags_failed_test_structures(lab, capsys):
    from cli import main

    url, _, _ = lab
    assert main(["--db", url, "status", "uicheck"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out  # no Python dicts
    assert "  labels: 6 done, 1 failed\n" in out
    assert "  test set: 4 structures, test errors on the 3 labelled; 1 FAILED QM (not in the test errors)\n" in out
    assert "train, 1 valid, 4 test\n" in out
    # the latest round's picks against the pool, from the diagnostics the acquisition stored
    assert ("  round 1 picks, predicted means: largest force 2.50 eV/Å (pool 1.20); "
            "energy -40.00 eV/atom (pool -40.50)\n") in out
    assert main(["--db", url, "status", "uicheck", "--round", "0"]) == 0
    assert "picks, predicted means" not in capsys.readouterr().out  # the random initial set has none
    assert main(["--db", url, "status", "uicheck", "--json"]) == 0
    (report,) = __import__("json").loads(capsys.readouterr().out)
    assert report["test_set"] == {"structures": 4, "pending": 0, "running": 0, "done": 3, "failed": 1}


def test_overview_and_selection_render_from_the_status_report_without_a_server(lab, tmp_path):
    # the artifacts and `tangentlab status` render one report (tasks.report): no Prefect server here
    from tasks.report import campaign_view

    url, campaign_id, ids = lab
    with session_scope(make_engine(url)) as session:
        view = campaign_view(session, campaigns.campaign_by_id(session, campaign_id))
    text = overview_markdown(view, _config(tmp_path, "uicheck"))
    assert text.splitlines()[0] == "## Campaign uicheck: Running"
    assert "**Running**, round 1 selected." in text
    assert "### Learning curve" not in text  # no PNG given: no image
    rounds_table, _, failed = _tables(text)
    assert rounds_table[-1]["Model version"] == "" and failed[0]["Split"] == "test"
    selection = selection_markdown(view["selected_structures"], "uicheck")
    assert selection.startswith("## Campaign uicheck · round 1 · selection")
    assert [int(r["Structure"]) for r in _tables(selection)[-1]] == ids["picks"]
    assert view["labels_used"] == 3 and view["selected_structures"]["validation_labels_before"] == 1


def test_errors_are_shown_with_their_intervals(lab, tmp_path, capsys):
    from cli import main
    from flows.status_text import status_lines
    from tasks.report import campaign_view

    url, campaign_id, _ = lab
    metrics = {"energy_mae_mev_per_atom": 45.25, "force_mae_mev_per_a": 610.0, "n_structures": 3,
               "energy_mae_interval_mev_per_atom": [40.0, 51.5],
               "force_mae_interval_mev_per_a": [550.0, 702.3], "interval_level": 0.9}
    with session_scope(make_engine(url)) as session:
        round0 = rounds.get_round(session, campaign_id, 0)
        round0.metrics = {"test": metrics}
        registry.set_model_metrics(session, round0.trained_model_id, "test", metrics)
        round0_model = round0.trained_model_id
        round1 = rounds.get_round(session, campaign_id, 1)
        round1.parameters = {**round1.parameters, "predicted_force_mae": {
            "mae": 580.0, "interval": [500.0, 690.0], "scale": 2.0, "n_valid": 6, "n_target": 9, "level": 0.9}}
        view = campaign_view(session, campaigns.campaign_by_id(session, campaign_id))
    config = _config(tmp_path, "uicheck")
    config.targets.confidence = 0.9
    text = overview_markdown(view, config)
    assert "| 45.2 [40.0, 51.5] | 610.0 [550.0, 702.3] |" in text
    assert "90% intervals over the test structures in brackets" in text
    assert "on the test set, at 90% confidence (the upper ends of the intervals decide)" in text
    shown = "\n".join(status_lines(view))
    assert "force MAE 610.0 [550.0, 702.3] meV/Å (90% intervals)" in shown
    # the error the calibration predicts for the pool, beside the measured one, for the model
    # round 1 acquired with (round 0's)
    assert (f"round 1 acquired with model {round0_model}: predicted force MAE over the pool 580.0 [500.0, 690.0] "
            "meV/Å (from σ and 6 validation labels, 90% interval); measured on the test set 610.0 [550.0, 702.3]"
            ) in shown
    (row_line,) = [line for line in shown.splitlines() if " evaluated " in line]
    assert "45.2" in row_line and "[40.0, 51.5]" in row_line and "[550.0, 702.3]" in row_line
    # --json: [low, high] beside each MAE, in keys that say "interval"
    assert main(["--db", url, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    row = report["round_table"][0]
    assert (row["force_mae_meV_A"], row["force_mae_interval_meV_A"]) == (610.0, [550.0, 702.3])
    assert row["energy_mae_interval_meV_atom"] == [40.0, 51.5] and row["interval_level"] == 0.9
    assert report["current_model"]["test"]["force_mae_interval_mev_per_a"] == [550.0, 702.3]
