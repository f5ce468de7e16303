"""What the user sees while a build runs: a rich progress display on a
terminal, plain lines otherwise (CI logs, pipes). rich is imported only when
there is a terminal and work to show."""
from __future__ import annotations

import sys
import time

TAIL_LINES = 20


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


class PlainUI:
    """One line per event on stderr."""

    def __init__(self, *, verbose=False, quiet=False, stream=None):
        self.verbose = verbose
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.total = 0
        self.done = 0
        self.t0 = time.time()

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def begin(self, total: int) -> None:
        self.total = self.done + total

    def start(self, name: str) -> None:
        if not self.quiet:
            self.say(f"bb: building {name}")

    def note(self, text: str) -> None:
        self.say(f"bb: {text}")

    def stage(self, name: str, stage: str) -> None:
        """A remote job's state changed (queued, running)."""
        if self.verbose:
            self.say(f"bb: {name}: {stage}")

    def finish(self, report) -> None:
        self.done += 1
        if report.status == "failed":
            self.say(failure_text(report))
            return
        if self.quiet:
            return
        if report.status == "built" or (self.verbose and report.status != "cached"):
            self.say(f"[{self.done}/{self.total}] {report.status} {report.name} ({report.duration:.2f}s)")
            if self.verbose and report.output.strip():
                self.say(_indent(report.output.rstrip()))
        elif self.verbose:
            self.say(f"[{self.done}/{self.total}] {report.status} {report.name}")
        if report.reasons and (self.verbose or report.status == "would run"):
            for r in report.reasons:
                self.say(f"    because {r}" if not r.startswith("    ") else r)

    def end(self) -> None:
        pass


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


def failure_text(report) -> str:
    text = f"bb: error: target '{report.name}' failed: {report.error}."
    out = tail(report.output).rstrip()
    if out:
        text += f" Last lines of its output:\n{_indent(out)}"
    if report.log:
        text += f"\n    full log: {report.log}"
    return text


class RichUI(PlainUI):
    """A progress bar and the targets in flight; finished targets scroll above."""

    def __init__(self, **kw):
        super().__init__(**kw)
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress = None
        self.task = None
        self.active: list[str] = []
        self.stages: dict[str, str] = {}  # remote targets in flight -> queued / running

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def _bar(self):
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]bb"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=self.console, transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("", total=self.total, completed=self.done)
        return self.progress

    def start(self, name: str) -> None:
        self.active.append(name)
        self._bar().update(self.task, description=self._describe())

    def stage(self, name: str, stage: str) -> None:
        self.stages[name] = stage
        self._bar().update(self.task, description=self._describe())

    def _describe(self) -> str:
        text = ", ".join(self.active[-3:])
        if self.stages:
            counts: dict[str, int] = {}
            for s in self.stages.values():
                counts[s] = counts.get(s, 0) + 1
            text = " ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ": " + text
        return text

    def finish(self, report) -> None:
        if report.name in self.active:
            self.active.remove(report.name)
        self.stages.pop(report.name, None)
        super().finish(report)
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, description=self._describe())

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_ui(*, verbose=False, quiet=False):
    if sys.stderr.isatty() and not quiet:
        return RichUI(verbose=verbose, quiet=quiet)
    return PlainUI(verbose=verbose, quiet=quiet)
