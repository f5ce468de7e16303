"""The workspace: the project folder and bb's state inside it (.bb/):
the stat cache, the parse cache, each target's last action result (for
`bb why`, and so a no-op build reads one file instead of one per target) and
the logs of the last runs."""
from __future__ import annotations

import json
import os
import re

from buildsys import STATE_DIR
from buildsys.digest import StatCache
from buildsys.store.api import ActionResult



class Workspace:
    def __init__(self, root: str):
        self.root = root
        self.state = os.path.join(root, STATE_DIR)
        self.stats = StatCache(os.path.join(self.state, "stat-cache.json"))
        self._last_path = os.path.join(self.state, "last-builds.json")
        self._last: dict[str, str] | None = None
        self._last_dirty = False
        self._dirs: set[str] = set()  # folders known to exist

    @property
    def last(self) -> dict[str, str]:
        """target -> key of its last successful build."""
        return {name: entry["key"] for name, entry in self._entries().items()}

    def _entries(self) -> dict[str, dict]:
        if self._last is None:
            try:
                with open(self._last_path) as f:
                    self._last = json.load(f)
            except (OSError, ValueError):
                self._last = {}
        return self._last

    def last_result(self, target: str, key: str) -> ActionResult | None:
        """The target's last result, if it was for this key."""
        entry = self._entries().get(target)
        if entry is None or entry["key"] != key:
            return None
        try:
            return ActionResult.from_json({**entry, "action": {}})
        except (KeyError, TypeError):
            return None

    def record(self, target: str, result: ActionResult) -> None:
        entries = self._entries()
        if entries.get(target, {}).get("key") != result.key:
            entry = result.to_json()
            del entry["action"]  # the store has it; keep this index small
            entries[target] = entry
            self._last_dirty = True

    def ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            if not os.path.isdir(path):
                os.makedirs(path, exist_ok=True)
            self._dirs.add(path)

    def last_result_any(self, target: str) -> ActionResult | None:
        """The target's last successful result, whatever its key."""
        entry = self._entries().get(target)
        return self.last_result(target, entry["key"]) if entry else None

    def failed_log_path(self, target: str) -> str:
        return os.path.join(self.state, "logs", re.sub(r"[^A-Za-z0-9._-]+", "_", target) + ".log")

    def write_log(self, target: str, output: bytes) -> str:
        """Save a failed recipe's output where the user can read it."""
        path = self.failed_log_path(target)
        self.ensure_dir(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(output)
        return os.path.relpath(path)

    def save(self) -> None:
        self.stats.save()
        if self._last_dirty:
            os.makedirs(self.state, exist_ok=True)
            tmp = f"{self._last_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(self._last, separators=(",", ":")))
            os.replace(tmp, self._last_path)
            self._last_dirty = False
