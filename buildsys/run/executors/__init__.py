"""Where recipes run. Each backend is one module implementing `Executor`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Job:
    target: str
    recipe: str
    shell: str
    cwd: str
    env: dict
    timeout: float  # seconds, 0 = none


@dataclass(frozen=True)
class Outcome:
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
