"""The workspace: the project folder and bb's state inside it (.bb/):
the stat cache, the parse cache, the key each target had when last built
(for `bb why`) and the logs of the last runs."""
from __future__ import annotations

import json
import os
import re

from .digest import StatCache

STATE_DIR = ".bb"


class Workspace:
    def __init__(self, root: str):
        self.root = root
        self.state = os.path.join(root, STATE_DIR)
        self.stats = StatCache(os.path.join(self.state, "stat-cache.json"))
        self._last_path = os.path.join(self.state, "last-builds.json")
        self._last: dict[str, str] | None = None
        self._last_dirty = False

    @property
    def last(self) -> dict[str, str]:
        """target -> key of its last successful build."""
        if self._last is None:
            try:
                with open(self._last_path) as f:
                    self._last = json.load(f)
            except (OSError, ValueError):
                self._last = {}
        return self._last

    def record(self, target: str, key: str) -> None:
        if self.last.get(target) != key:
            self.last[target] = key
            self._last_dirty = True

    def log_path(self, target: str) -> str:
        folder = os.path.join(self.state, "logs")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]+", "_", target) + ".log")

    def save(self) -> None:
        self.stats.save()
        if self._last_dirty:
            os.makedirs(self.state, exist_ok=True)
            tmp = f"{self._last_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self._last, f, separators=(",", ":"))
            os.replace(tmp, self._last_path)
            self._last_dirty = False
