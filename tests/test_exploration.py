"""Exploration in a campaign: settings refused with the key named, candidates stored once, and a
campaign stopped dead during exploration, then resumed: no duplicate candidate, no walker run
twice once stored, and no lost or repeated QM job."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import molecule
from conftest import xtb_campaign_config
from sqlalchemy import select
from test_resume import (
    FlowLog,
    Killed,
    _check_no_loss,
    _latest_artifact,
    _state,
    run_in_process,
)

from db import (
    ExplorationTrajectory,
    Structure,
    campaigns,
    exploration,
    init_db,
    make_engine,
    rounds,
    session_scope,
)
from tangentlab.config import ConfigError, load_config, make_config
from tangentlab.structures import content_hash


@pytest.mark.parametrize(("section", "named"), [
    ({"engine": "langevin"}, "exploration.engine: unknown engine 'langevin'"),
    ({"walkers": 0}, "exploration.walkers"),
    ({"temperatures_K": []}, "exploration.temperatures_K: give at least one temperature"),
    ({"temperatures_K": [300, -5]}, "exploration.temperatures_K: temperatures must be positive"),
    ({"steps": 0}, "exploration.steps"),
    ({"timestep_fs": 50}, "exploration.timestep_fs"),
    ({"sigma_lower": {"value": 1.0, "quantile": 0.5}}, "exploration.sigma_lower: give exactly one of value or quantile"),
    ({"sigma_upper": {"quantile": 1.5}}, "exploration.sigma_upper.quantile"),
    ({"sigma_lower": {"value": 2.0}, "sigma_upper": {"value": 1.0}}, "sigma_lower 2 must be below sigma_upper 1"),
    ({"engine": "neb"}, "engine 'neb' needs neb_endpoints"),
    ({"neb_endpoints": ["a.xyz"]}, "neb_endpoints are for engine 'neb'"),
    ({"max_candidates": -1}, "exploration.max_candidates"),
    ({"walkrs": 3}, "unknown key 'exploration.walkrs'"),
])
def test_bad_exploration_settings_are_refused_naming_the_key(section, named):
    with pytest.raises(ConfigError, match="exploration") as error:
        make_config({"exploration": section})
    assert named in str(error.value)


def test_explored_target_needs_exploration():
    with pytest.raises(ConfigError, match="acquisition.target 'explored' needs an exploration section"):
        make_config({"acquisition": {"target": "explored"}})
    assert make_config({"acquisition": {"target": "explored"}, "exploration": {}}).acquisition.target == "explored"


def test_exploration_files_are_relative_to_the_config_and_checked_before_storing(tmp_path):
    from tasks.setup import check_inputs

    (tmp_path / "pool.xyz").write_text("")
    ase.io.write(tmp_path / "pool.xyz", [molecule("H2O"), molecule("CH4")])
    ase.io.write(tmp_path / "one.xyz", [molecule("H2O")])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "pool": ["pool.xyz"], "test_size": 1, "initial_size": 1, "oracle": {"name": "xtb"},
        "exploration": {"engine": "neb", "neb_endpoints": ["one.xyz"], "seeds": "pool.xyz"}}))
    config = load_config(tmp_path / "c.yaml")
    assert config.exploration.seeds == str(tmp_path / "pool.xyz")
    assert config.exploration.neb_endpoints == [str(tmp_path / "one.xyz")]
    with pytest.raises(ConfigError, match=r"exploration.neb_endpoints: .*one.xyz holds 1 structures, not 2"):
        check_inputs(config)


def test_stored_candidates_are_unique_and_a_repeated_walker_adds_none(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    frames = [molecule("H2O"), molecule("H2O")]
    frames[1].positions[0, 0] += 0.1
    for frame in frames:
        frame.info.update(charge=0, multiplicity=1)
    hashes = [content_hash(f) for f in frames]

    def store(session, walker):
        return exploration.store_trajectory(
            session, campaign_id, 1, walker=walker, engine="md", candidates=frames + frames[:1],
            content_hashes=hashes + hashes[:1], provenance=[{"round": 1, "step": k} for k in (10, 20, 30)],
            seed_structure_id=None, temperature_k=300.0, steps_run=30, frames_scored=3, stop_reason="steps",
            sigma=[0.1, 0.2, 0.1], wall_s=1.0)

    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "c", {}).id
        first = store(session, 0)
        assert (first.frames_kept, first.candidates_added) == (3, 2)
        second = store(session, 1)  # the same frames again (a resumed walker): nothing new
        assert second.candidates_added == 0
        stored = exploration.explored_structures(session, campaign_id, 1, split="pool")
        assert [s.provenance["step"] for s in stored] == [10, 20]  # the first occurrence's provenance
        summary = exploration.exploration_summary(exploration.round_trajectories(session, campaign_id, 1))
        assert summary["candidates_added"] == 2 and summary["stops"] == {"steps": 2}


NAME = "explored"


def _exploring_config(tmp_path: Path) -> dict:
    return xtb_campaign_config(
        tmp_path, NAME, 20, seed=3,
        acquisition={"batch_size": 3},
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        exploration={"walkers": 3, "batch_walkers": False, "steps": 150, "sample_every": 10,
                     "temperatures_K": [500.0], "sigma_lower": {"quantile": 0.0},
                     "sigma_upper": {"quantile": 1.0, "factor": 100.0}, "max_candidates": 30},
    )


@pytest.mark.slow
def test_kill_during_exploration_then_resume_adds_no_candidate_twice(prefect_server, tmp_path,
                                                                   monkeypatch, capsys):
    """The campaign dies (:class:`test_resume.Killed`) right after round 1's first walker is
    stored; `status` shows the exploration under way, and a resume runs the other two walkers
    only."""
    import tasks.explore
    from cli import main

    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    real_explore = tasks.explore.explore

    def dies_after_the_first_walker(*args, on_trajectory, **kwargs):
        def store(trajectory, frames):
            on_trajectory(trajectory, frames)
            raise Killed

        return real_explore(*args, on_trajectory=store, **kwargs)

    monkeypatch.setattr(tasks.explore, "explore", dies_after_the_first_walker)
    with pytest.raises(Killed):
        run_in_process(url, config=_exploring_config(tmp_path))
    monkeypatch.undo()
    killed = _state(url, NAME)
    assert killed["rounds"] == {0: "evaluated"}
    with session_scope(engine) as session:
        kept = {(t.walker, t.id, t.candidates_added)
                for t in session.scalars(select(ExplorationTrajectory))}
        candidates_before = {s.content_hash for s in session.scalars(select(Structure).where(
            Structure.provenance.is_not(None)))}
    assert len(kept) == 1 and all(added > 0 for _, _, added in kept)
    capsys.readouterr()
    assert main(["--db", url, "status", NAME]) == 0
    status = capsys.readouterr().out
    assert "round 1 exploring now: 1 trajectories" in status, status
    assert "not finished: the other walkers are running, or run on resume" in status

    with FlowLog() as log:
        result = run_in_process(url, name=NAME)
    assert result["status"] == "budget_exhausted", result
    assert ("round 1: resuming exploration: 1 of 3 walkers are stored and do not run again"
            in log.lines), log.lines
    final = _state(url, NAME)
    _check_no_loss(tmp_path, killed, final, NAME)  # no QM job lost or run twice
    assert len(final["done"]) == len(killed["done"]) + 3  # the round's picks, nothing else
    assert final["rounds"] == {0: "evaluated", 1: "evaluated"}
    with session_scope(engine) as session:
        rows = list(session.scalars(select(ExplorationTrajectory).order_by(ExplorationTrajectory.walker)))
        assert [r.walker for r in rows] == [0, 1, 2]  # every walker once
        assert kept <= {(r.walker, r.id, r.candidates_added) for r in rows}  # the stored ones untouched
        explored = list(session.scalars(select(Structure).where(Structure.provenance.is_not(None))))
        assert len({s.content_hash for s in explored}) == len(explored)
        assert candidates_before <= {s.content_hash for s in explored}
        assert sum(r.candidates_added for r in rows) == len(explored)
        assert all(s.provenance["round"] == 1 and s.provenance["engine"] == "md"
                   and s.provenance["temperature_K"] == 500.0 and s.provenance["step"] % 10 == 0
                   and np.isfinite(s.provenance["sigma"]) for s in explored)
        round_1 = rounds.get_round(session, campaigns.get_campaign(session, NAME), 1)
        picked = {e["structure_id"] for e in round_1.selected}
        assert len(picked) == 3
        summary = round_1.parameters["exploration"]
        assert summary["trajectories"] == 3 and summary["candidates_added"] == len(explored)
        assert round_1.pool_size >= len(explored)  # the candidates were in the pool it picked from

    assert main(["--db", url, "status", NAME]) == 0
    assert "round 1 exploration: 3 trajectories" in capsys.readouterr().out
    assert main(["--db", url, "status", NAME, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    detail = report["selected_structures"]["exploration"]["trajectories_detail"]
    assert [d["walker"] for d in detail] == [0, 1, 2] and all(d["stop_reason"] for d in detail)

    # The Prefect UI shows it too: the round's selection artifact has the exploration section.
    selection = _latest_artifact(f"campaign-{NAME}-round-1-selection")["data"]
    section = selection.split("### Exploration\n")[1].split("###")[0]
    assert "**md** with the model of the previous round: 3 trajectories" in section
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2"]


def test_an_explored_round_becomes_selected_keeping_its_exploration(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "c", {}).id
        rounds.create_explored_round(session, campaign_id, 1, parameters={"exploration": {"trajectories": 2}},
                                     model_version_id=None, timings={"explore_s": 3.0})
        assert rounds.get_round(session, campaign_id, 1).status == "explored"
        with pytest.raises(rounds.RoundTransitionError, match="only selected follows explored"):
            rounds.advance_round(session, rounds.get_round(session, campaign_id, 1), "labelled")
        selected = rounds.create_round(session, campaign_id, 1, method="activation", parameters={"rule": "greedy"},
                                       selected=[(5, 0.1, None)], timings={"acquire_s": 1.0})
        assert selected.status == "selected" and selected.method == "activation"
        assert selected.parameters == {"exploration": {"trajectories": 2}, "rule": "greedy"}
        assert selected.timings == {"explore_s": 3.0, "acquire_s": 1.0}
        assert [e["structure_id"] for e in selected.selected] == [5]


def test_the_explored_target_is_the_rounds_candidates_or_the_pool_without_them():
    from tasks.acquire import target_atoms

    config = make_config({"acquisition": {"target": "explored"}, "exploration": {}})
    frames = [molecule("H2O"), molecule("CH4")]
    assert target_atoms(config, [], frames) == frames
    assert target_atoms(config, [], []) is None  # no candidates this round: the pool
    greedy = make_config({"acquisition": {"rule": "greedy"}, "exploration": {}})
    assert target_atoms(greedy, [], frames) is None  # only the transductive rule has a target
