"""Prefect tasks: each reads what it needs from the database, calls the science core in
``tangentlab``, and writes its result back before returning (so a killed run loses nothing
that a task finished)."""
