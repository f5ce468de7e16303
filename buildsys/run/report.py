"""What a build says about each target."""
from __future__ import annotations

from dataclasses import dataclass, field

BUILT, CACHED, FAILED, SKIPPED = "built", "cached", "failed", "skipped"
WOULD_RUN = "would run"  # dry runs only


@dataclass
class TargetReport:
    """What a build did with one target, for the progress lines and --json."""

    name: str
    status: str
    key: str | None = None
    duration: float = 0.0
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    output: str = ""  # what the recipe printed
    log: str = ""  # where a failed recipe's output was saved
    waiting_on: str = ""  # dry runs: the upstream target whose output decides this one's key
    where: dict = field(default_factory=dict)  # remote runs: executor, job id, attempts

    def to_json(self) -> dict:
        out = {"target": self.name, "status": self.status, "key": self.key, "duration": round(self.duration, 6)}
        if self.error:
            out["error"] = self.error
        if self.reasons:
            out["reasons"] = self.reasons
        if self.where:
            out["where"] = self.where
        return out
