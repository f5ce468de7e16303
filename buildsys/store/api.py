"""The store: a CAS (digest -> blob) and an action cache (key -> result).

Names follow Bazel's Remote Execution API. Stores sit behind the small
`Store` protocol, so a new backend (S3) is one new module. The layout is the
same everywhere:

    <root>/cas/<d[:2]>/<digest>    blobs, immutable, written once
    <root>/ac/<k[:2]>/<key>        action results (JSON), written last
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutputEntry:
    path: str  # workspace-relative; a directory ends with "/"
    digest: str  # a file's digest, or the digest of a tree manifest
    size: int
    executable: bool = False


@dataclass(frozen=True)
class ActionResult:
    key: str
    outputs: tuple[OutputEntry, ...]
    exit_code: int
    log: str  # digest of the recipe's combined output
    started: float
    duration: float
    action: dict  # the Action, for `bb why`
    provenance: dict = field(default_factory=dict)  # who/where: never in a key

    def to_json(self) -> dict:
        # written out: dataclasses.asdict deep-copies, which shows per target
        return {
            "key": self.key,
            "outputs": [{"path": o.path, "digest": o.digest, "size": o.size, "executable": o.executable} for o in self.outputs],
            "exit_code": self.exit_code,
            "log": self.log,
            "started": self.started,
            "duration": self.duration,
            "action": self.action,
            "provenance": self.provenance,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: dict) -> "ActionResult":
        raw = dict(raw)
        raw["outputs"] = tuple(OutputEntry(o["path"], o["digest"], o["size"], o["executable"]) for o in raw["outputs"])
        return cls(**raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ActionResult":
        return cls.from_json(json.loads(data))

    @classmethod
    def parse(cls, data: bytes, key: str, where: str) -> "ActionResult":
        """A stored result, checked to be well-formed and to be the one for `key`."""
        try:
            result = cls.from_bytes(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise CorruptEntry(f"action result {key[:12]} in {where} is not valid") from None
        if result.key != key:
            raise CorruptEntry(f"action result {key[:12]} in {where} names another key")
        return result

    def output(self, path: str) -> OutputEntry | None:
        for o in self.outputs:
            if o.path == path or o.path == path + "/":
                return o
        return None


class Store(Protocol):
    def has_blob(self, digest: str) -> bool: ...
    def put_file(self, path: str, digest: str) -> None: ...
    def put_bytes(self, data: bytes, digest: str) -> None: ...
    def read_bytes(self, digest: str) -> bytes: ...
    def fetch(self, digest: str, dest: str) -> None: ...
    def fetch_many(self, digests) -> None: ...
    def discard(self, digest: str) -> None: ...
    def get_result(self, key: str) -> ActionResult | None: ...
    def put_result(self, result: ActionResult) -> None: ...


class CorruptEntry(Exception):
    """A stored blob or result does not match its name."""


