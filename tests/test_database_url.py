"""One resolver of a flow run's database URL (tasks._db.run_database_url) for the campaign and
label flows: the parameter unless it carries a password, else db.settings.database_url."""

from __future__ import annotations

import inspect

import pytest

from tasks._db import run_database_url


def test_a_parameter_with_a_password_is_refused_without_showing_it():
    with pytest.raises(ValueError, match=r"lab:\*\*\*@db.example.org.*TANGENTLAB_DATABASE_URL") as error:
        run_database_url("postgresql+psycopg://lab:s3cr3t@db.example.org/tangentlab")
    assert "s3cr3t" not in str(error.value)


def test_the_parameter_wins_else_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TANGENTLAB_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert run_database_url(f"sqlite:///{tmp_path / 'param.db'}").endswith("param.db")
    assert run_database_url(None).endswith("env.db")


def test_both_flows_resolve_their_url_through_it():
    from flows import campaign, label

    for flow in (campaign.campaign, label.label):
        assert "run_database_url(database_url)" in inspect.getsource(flow.fn)
