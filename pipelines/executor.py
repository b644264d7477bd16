"""The executor of every run of this code location: Dagster's multiprocess executor, one process
per step, bounded, with dead runs recovered before a run's steps start.

Why these settings (``pipelines/definitions.py`` reads the variables):

- ``max_concurrent`` (``SYNC_MAX_CONCURRENT_STEPS``, default 2: this runs on 2 cores): each step
  is a process with its own staging DuckDB (up to ``WAREHOUSE_MEMORY_LIMIT``), so the bound is
  the memory bound too.
- at most ``SYNC_CPU_STEPS`` (default 1) steps tagged ``affwh/load: cpu`` at once: the feeds that
  keep DuckDB busy run one after another, while the rate-limited Metapic feeds (tagged ``wait``,
  and started first by their priority) run beside them. That is the "two lanes" of earlier
  versions, now Dagster's own scheduling of steps.
- ``forkserver`` with the definitions preloaded: a step starts by forking a process that already
  imported Dagster, DuckDB and the definitions (a fraction of a second) instead of a fresh
  interpreter importing them (seconds per step); :mod:`pipelines.step_preload` adds what a step
  imports after the fork (the instance's storage, the HTTP client's transport).
- each run holds a lock file while its steps run, and first recovers runs whose process died
  (:mod:`pipelines.run_recovery`): whichever way a run was launched, a killed one never blocks
  the next.
"""

import multiprocessing
from collections.abc import Iterator
from multiprocessing import forkserver

import dagster as dg
from dagster._core.definitions.executor_definition import (
    MULTI_PROC_CONFIG,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)
from dagster._core.executor.multiprocess import MultiprocessExecutor

from pipelines.run_recovery import lock_folder, recover_killed_runs, run_lock

# What the fork server imports before it forks any step (Dagster puts its executor module first).
PRELOAD_MODULES = ["pipelines.definitions", "pipelines.step_preload"]


class RecoveringMultiprocessExecutor(MultiprocessExecutor):
    """:class:`MultiprocessExecutor` that recovers dead runs first and marks its own run alive."""

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        instance = plan_context.instance
        for run_id in recover_killed_runs(instance):
            plan_context.log.warning(f"run {run_id} was killed before it finished: marked failed, its pool slots freed")
        folder = lock_folder(instance)
        if folder is None:
            yield from super().execute(plan_context, execution_plan)
            return
        with run_lock(folder, plan_context.run_id):
            yield from super().execute(plan_context, execution_plan)


@dg.executor(
    name="multiprocess",
    config_schema=MULTI_PROC_CONFIG,
    requirements=multiple_process_executor_requirements(),
)
def recovering_multiprocess_executor(init_context: dg.InitExecutorContext) -> RecoveringMultiprocessExecutor:
    base = _core_multiprocess_executor_creation(init_context.executor_config)
    executor = RecoveringMultiprocessExecutor.__new__(RecoveringMultiprocessExecutor)
    executor.__dict__.update(base.__dict__)  # same settings, this class's execute()
    return executor


def sync_executor(max_concurrent: int, cpu_steps: int, load_tag: str = "affwh/load") -> dg.ExecutorDefinition:
    """The executor with this project's defaults (run config may still override them)."""
    return recovering_multiprocess_executor.configured(
        {
            "max_concurrent": max_concurrent,
            "tag_concurrency_limits": [{"key": load_tag, "value": "cpu", "limit": cpu_steps}],
            "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
        },
        name="multiprocess",
    )


def start_fork_server() -> None:
    """Start the executor's fork server now, so that it imports Dagster and the definitions (~3 s
    on 2 cores) while the caller does its own start-up, instead of when the first step is due.

    There is one fork server per process: the executor started later in this process finds it
    running and forks its steps from it. Call it only once the environment is final (sources,
    progress switch): the steps inherit the fork server's environment, not the caller's.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dagster._core.executor.multiprocess", *PRELOAD_MODULES])
    forkserver.ensure_running()
