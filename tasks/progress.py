"""Progress bars for long steps, shown as Prefect artifacts, and the artifact keys they use."""

from __future__ import annotations

import logging
import re


def artifact_key(*parts: object) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower())).strip("-")


class Progress:
    """A Prefect progress artifact (0-100 %) with a description, updated in place.

    Monitoring never stops the work it watches: if the Prefect API cannot store the artifact,
    a warning is logged and the updates are skipped.
    """

    def __init__(self, key: str, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.key = key
        self.last = 0.0
        try:
            self.id = create_progress_artifact(0.0, key=key, description=description)
        except Exception as exc:
            self.id = None
            logging.getLogger(__name__).warning("progress artifact %s not created: %s", key, exc)

    def update(self, percent: float, description: str | None = None) -> None:
        """Set the progress (clipped to 0-100) and, optionally, a new description."""
        from prefect.artifacts import update_progress_artifact

        self.last = min(100.0, max(0.0, float(percent)))
        if self.id is None:
            return
        try:
            update_progress_artifact(self.id, self.last, description=description)
        except Exception as exc:
            logging.getLogger(__name__).warning("progress artifact %s not updated: %s", self.key, exc)
