"""Where work runs. Each backend is one module.

Two contracts, after redun's and Snakemake's executor split:

- `Executor` runs a shell recipe in the workspace and returns when it ends
  (local processes; called from the scheduler's worker threads).
- `RemoteExecutor` runs hermetic actions elsewhere (a Docker container, AWS
  Batch; next SLURM or Kubernetes). It never blocks: `submit` hands jobs
  over, and the executor reports back through the scheduler's `Sink` from
  its own monitor thread. A job carries only the action's digest: the
  action and its inputs are in the store, and the worker there records the
  result in the store before the job ends. Thousands of jobs can be in
  flight without a thread each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Job:
    """One recipe to run here: its text, shell, folder and environment."""

    target: str
    recipe: str
    shell: str
    cwd: str
    env: dict
    timeout: float  # seconds, 0 = none


@dataclass(frozen=True)
class Outcome:
    """How a Job ended, and what it printed."""

    exit_code: int
    started: float
    duration: float
    timed_out: bool = False
    interrupted: bool = False
    output: bytes = b""  # stdout and stderr, interleaved


class Executor(Protocol):
    def run(self, job: Job) -> Outcome:
        """Run one job to its end; called from worker threads."""

    def cancel_all(self) -> None:
        """Stop every running job (Ctrl-C); their `run` calls return interrupted."""

    def close(self) -> None:
        """The build is over and every `run` call has returned."""


# ---- hermetic actions, run elsewhere ---------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What a remote job asks of its backend."""

    cpus: int = 1
    memory: int = 0  # bytes; 0 = the backend's default
    gpus: int = 0
    timeout: float = 0  # seconds; 0 = none


@dataclass(frozen=True)
class ActionJob:
    """A hermetic action to run elsewhere: its inputs and recipe are in the store under `action`."""

    key: str  # the action key: the worker's result is recorded under it
    action: str  # digest of the action's JSON in the store
    target: str  # for display only
    resources: Resources = Resources()


QUEUED, RUNNING = "queued", "running"  # stages a job goes through before it completes


@dataclass(frozen=True)
class Completion:
    """How a remote job ended, as its backend tells it."""

    key: str
    exit_code: int  # the recipe's (0: its result is in the store); -1: it never ran
    handle: str = ""  # where it ran: a container id, a Batch job id
    message: str = ""  # why it failed, in the backend's words (statusReason, container reason)
    log: str = ""  # the tail of what the job printed
    attempts: int = 1
    cancelled: bool = False
    details: dict = field(default_factory=dict)  # backend facts for --json (job id, queue...)


class Sink(Protocol):
    """The scheduler's side; any thread may call it."""

    def stage(self, key: str, stage: str) -> None: ...
    def finished(self, completion: Completion) -> None: ...


class RemoteExecutor(Protocol):
    name: str

    def start(self, sink: Sink) -> None:
        """Begin reporting; adopt jobs of an earlier run still in flight."""

    def submit(self, jobs: list[ActionJob]) -> None:
        """Hand jobs over; never blocks on them. Each gets exactly one `finished`."""

    def cancel(self) -> None:
        """Stop what this run submitted (Ctrl-C), best effort."""

    def stop(self) -> None:
        """The build is over."""
