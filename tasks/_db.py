"""One engine per database URL and process, shared by the tasks of a flow run."""

from __future__ import annotations

from functools import cache

from sqlalchemy.engine import Engine

from db import make_engine


@cache
def engine_for(url: str) -> Engine:
    """The engine for ``url`` in this process (created on first use)."""
    return make_engine(url)
