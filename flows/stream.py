"""Asynchronous rounds (``schedule: async``): QM workers label a queue while the model trains.

The campaign flow (:mod:`flows.campaign`) runs these steps instead of its synchronous ones
once the test set is labelled and the starting model evaluated. The label workers run in the
background on the campaign's task runner (threads or Dask) for the whole loop and pull from
the database's claim queue, or as a run of the labelling deployment ``qm.deployment`` on a
work pool; they claim only while the campaign's stream is open in the database
(:func:`db.queue.stream_open`). The loop itself, in the flow's thread, keeps the queue topped up
(:func:`tasks.stream.top_up`), starts a round when enough labels arrived, fine-tunes and
evaluates it with the synchronous tasks, re-ranks the queue with the new model and decides
whether to stop after every evaluation. All state is in the database (:mod:`tasks.stream`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from prefect import get_run_logger

from flows.label import qm_task_runner, start_stream_deployment, stream_run_state
from tasks.label import (
    close_stream,
    label_worker,
    open_stream,
    queue_labels,
    running_labels,
)
from tasks.steps import RoundStatus, Where, current_round, mark_labelled
from tasks.stream import (
    cancel_queue,
    initial_finished,
    needs_picks,
    rerank_queue,
    start_round,
    stream_state,
    top_up,
    train_due,
)

POLL_S = 0.5  # how often the loop looks at the queue while it waits for labels
CHECK_S = 2.0  # how often it asks the Prefect server about a labelling deployment's run
END_S = 30.0  # how long a stopping campaign waits for that run to end once no job is in flight


class Workers:
    """The campaign's streaming label workers on its task runner (threads of this process or
    Dask workers); ended ones are restarted."""

    def __init__(self, runner, run, stream: str) -> None:
        self.runner, self.run, self.stream, self.futures = runner, run, stream, {}

    def fill(self) -> None:
        for number in range(self.run.cfg.qm.max_parallel):
            future = self.futures.get(number)
            if future is not None and not future.wrapped_future.done():
                continue
            if future is not None:
                future.result()  # a worker that failed stops the campaign with its error
            self.futures[number] = self.runner.submit(
                label_worker.with_options(task_run_name=f"streaming label worker {number}"),
                parameters={
                    "url": self.run.url,
                    "campaign_id": self.run.campaign_id,
                    "config": self.run.cfg,
                    "worker": number,
                    "stream": self.stream,
                },
            )

    def wait(self) -> None:
        for future in self.futures.values():
            future.wait()


class DeploymentWorkers:
    """The streaming label workers as a run of the labelling deployment ``qm.deployment`` (on
    a work pool, on other machines), which claims from the same queue; a run that ended while
    the stream is open is started again, one that failed stops the campaign."""

    def __init__(self, run, stream: str) -> None:
        self.run, self.stream = run, stream
        self.flow_run_id, self.checked = None, 0.0

    def fill(self) -> None:
        if self.flow_run_id is not None:
            if time.monotonic() - self.checked < CHECK_S:
                return
            self.checked = time.monotonic()
            state = stream_run_state(self.flow_run_id)
            if not state.is_final():
                return
            if not state.is_completed():
                raise RuntimeError(
                    f"labelling deployment {self.run.cfg.qm.deployment!r}: flow run "
                    f"{self.flow_run_id} ended {state.name}: {state.message}"
                )
        self.flow_run_id = start_stream_deployment(self.run.url, self.run.cfg, self.stream)
        self.checked = time.monotonic()

    def wait(self) -> None:
        """Until the deployment's run has ended (a run no worker has started yet finds the
        stream closed and ends without a job), or, if its end is not reported, for
        ``END_S`` once none of the campaign's jobs is in flight (the database says so)."""
        idle_since = None
        while self.flow_run_id is not None:
            state = stream_run_state(self.flow_run_id)
            if state.is_final() or not state.is_running():
                return
            if running_labels(self.run.url, self.run.campaign_id, self.run.cfg):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > END_S:
                get_run_logger().warning(
                    "labelling flow run %s is still Running with no job in flight", self.flow_run_id
                )
                return
            time.sleep(POLL_S)


@contextmanager
def streaming_workers(run) -> Iterator[Workers | DeploymentWorkers]:
    """Run the label workers while the block runs; on leaving it (stop, Ctrl-C, an error) the
    stream closes in the database, and the workers finish the job they hold and end."""
    stream = open_stream(run.url, run.campaign_id)
    with ExitStack() as stack:  # on leaving: close the stream, wait for the workers, end the runner
        stack.callback(close_stream, run.url, run.campaign_id, stream)
        if run.cfg.qm.deployment is None:
            workers = Workers(stack.enter_context(qm_task_runner(run.cfg.qm)), run, stream)
        else:
            workers = DeploymentWorkers(run, stream)
        stack.callback(workers.wait)
        stack.callback(close_stream, run.url, run.campaign_id, stream)
        workers.fill()
        yield workers


def run_stream(run, steps: dict[RoundStatus, Callable]):
    """The asynchronous loop: the step each status of the latest round names, until one
    returns the campaign's outcome."""
    where = current_round(run.url, run.campaign_id)
    if (where.number, where.status) == (0, RoundStatus.SELECTED):
        queue_labels(run.url, run.cfg, where.selected)
    with streaming_workers(run) as workers:
        while True:
            run.checkpoint()
            workers.fill()
            where = current_round(run.url, run.campaign_id)
            outcome = steps[where.status](run, where)
            if outcome is not None:
                return outcome


def await_initial(run, where: Where) -> None:
    """``selected`` (round 0): the initial set is labelled while the starting model's picks
    fill the queue; then ``labelled``."""
    _top_up(run)
    if initial_finished(run.url, run.campaign_id, run.cfg, where.selected):
        mark_labelled.with_options(task_run_name="round 0 labelled")(run.url, run.campaign_id, 0)
    else:
        time.sleep(POLL_S)


def rerank(run, where: Where) -> None:
    """Before a new model's evaluation: order the queued picks by it."""
    rerank_queue.with_options(task_run_name=f"re-rank the queue (model {where.trained_model_id})")(
        run.url, run.campaign_id, run.cfg, where.trained_model_id
    )


def keep_labelling(run, where: Where) -> None:
    """``evaluated`` and going on: top the queue up; open round ``n + 1`` once enough labels
    arrived that the newest model has not seen."""
    _top_up(run)
    if not train_due(stream_state(run.url, run.campaign_id, run.cfg), run.cfg):
        time.sleep(POLL_S)
        return
    number = where.number + 1
    count = start_round.with_options(task_run_name=f"start round {number}")(
        run.url, run.campaign_id, run.cfg, number
    )
    get_run_logger().info(
        "round %d: fine-tuning on %d new labels while labelling goes on", number, count
    )
    run.round_start = time.perf_counter()


def stop_labelling(run) -> None:
    """The campaign stops: picks no worker started return to the pool."""
    cancelled = cancel_queue.with_options(task_run_name="cancel the label queue")(
        run.url, run.campaign_id, run.cfg
    )
    if cancelled:
        get_run_logger().info("%d queued picks returned to the pool unlabelled", cancelled)


def _top_up(run) -> None:
    state = stream_state(run.url, run.campaign_id, run.cfg)
    if not needs_picks(state, run.cfg):
        return
    top_up.with_options(task_run_name=f"queue picks of model {state.model_id}")(
        run.url, run.campaign_id, run.cfg, state.model_id
    )
