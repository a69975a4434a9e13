"""Imported first by the QM fork server: move it into a session of its own.

:func:`tangentlab.oracles.isolation.run_with_timeout` starts the fork server with SIGINT and
SIGTERM blocked and names this module first in its preload list. Importing it there makes the
fork server the leader of a new session, so neither a terminal's Ctrl-C (SIGINT to the whole
foreground process group) nor a SIGTERM sent to the campaign's group reaches the fork server or
the QM jobs it forks; the campaign process alone decides when they stop. Signals that arrived
while they were blocked are discarded, then the default handlers are restored and the signals
unblocked, so the QM jobs start with ordinary signal handling. Imported anywhere else (SIGINT
not blocked, no fork server running in this process) it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _leave_the_terminals_session() -> None:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if "multiprocessing.forkserver" not in sys.modules or signal.SIGINT not in blocked:
        return
    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()
    for signum in _SIGNALS:  # setting SIG_IGN discards a pending, blocked signal
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


_leave_the_terminals_session()
