"""The store: a CAS (digest -> blob) and an action cache (key -> result).

Names follow Bazel's Remote Execution API. Stores sit behind the small
`Store` protocol, so a new backend (S3) is one new module. The layout is the
same everywhere:

    <root>/cas/<d[:2]>/<digest>    blobs, immutable, written once
    <root>/ac/<k[:2]>/<key>        action results (JSON), written last
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Protocol

from buildsys.digest import FileDigest, compact_json, hash_bytes, is_digest, parse_manifest


@dataclass(frozen=True)
class OutputEntry:
    """One output of a result: its path and the digest of its bytes (or tree)."""

    path: str  # workspace-relative; a directory ends with "/"
    digest: str  # a file's digest, or the digest of a tree manifest
    size: int
    executable: bool = False


@dataclass(frozen=True)
class ActionResult:
    """What running an action produced, stored under its key."""

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
        return compact_json(self.to_json()).encode()

    @classmethod
    def from_json(cls, raw) -> "ActionResult":
        """A result as stored, every field checked to be what bb writes:
        anything else (a digest that is not one, a null, a number where a
        digest belongs) raises CorruptEntry and is never used as a path."""
        try:
            outputs = tuple(
                OutputEntry(o["path"], o["digest"], o["size"], o["executable"]) for o in raw["outputs"]
            )
            return cls.checked(
                raw["key"], outputs, raw["exit_code"], raw["log"], raw["started"], raw["duration"],
                raw.get("action", {}), raw.get("provenance", {}),
            )
        except (TypeError, KeyError, AttributeError, ValueError):
            raise CorruptEntry("malformed") from None

    @classmethod
    def checked(cls, key, outputs: tuple, exit_code, log, started, duration, action, provenance) -> "ActionResult":
        """A result from fields read from outside (a store, the index), each
        checked as from_json checks them; CorruptEntry if one is not."""
        ok = (
            is_digest(key)
            and (log == "" or is_digest(log))
            and type(exit_code) is int
            and type(started) in (int, float)
            and type(duration) in (int, float)
            and type(action) is dict
            and type(provenance) is dict
            and all(
                type(o.path) is str and is_digest(o.digest) and type(o.size) is int and o.size >= 0 and type(o.executable) is bool
                for o in outputs
            )
        )
        if not ok:
            raise CorruptEntry("malformed")
        return cls(key, outputs, exit_code, log, started, duration, action, provenance)

    @classmethod
    def of_checked(cls, key, outputs: tuple, exit_code, log, started, duration) -> "ActionResult":
        """A result from fields already checked as `checked` checks them,
        with no action or provenance: made without the frozen dataclass's
        per-field __setattr__ (an incremental build makes thousands)."""
        result = object.__new__(cls)
        result.__dict__.update(
            key=key, outputs=outputs, exit_code=exit_code, log=log, started=started, duration=duration, action={}, provenance={}
        )
        return result

    @classmethod
    def from_bytes(cls, data: bytes) -> "ActionResult":
        try:
            raw = json.loads(data)
        except ValueError:
            raise CorruptEntry("not JSON") from None
        return cls.from_json(raw)

    @classmethod
    def parse(cls, data: bytes, key: str, where: str) -> "ActionResult":
        """A stored result, checked to be well-formed and to be the one for `key`."""
        try:
            result = cls.from_bytes(data)
        except CorruptEntry:
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
    def put_file(self, path: str) -> tuple[str, os.stat_result]: ...
    def put_bytes(self, data: bytes, digest: str) -> None: ...
    def read_bytes(self, digest: str) -> bytes: ...
    def fetch(self, digest: str, dest: str) -> None: ...
    def fetch_many(self, digests) -> None: ...
    def discard(self, digest: str) -> None: ...
    def get_result(self, key: str) -> ActionResult | None: ...
    def put_result(self, result: ActionResult) -> None: ...


class CorruptEntry(Exception):
    """A stored blob, result or manifest does not match its name or is not
    what bb writes: a miss, never something to act on."""


def read_manifest(store: Store, digest: str) -> dict[str, FileDigest]:
    """A tree manifest from a store, verified against its digest and checked
    entry by entry (no path leaves the tree, every digest is one)."""
    data = store.read_bytes(digest)
    if hash_bytes(data) != digest:
        raise CorruptEntry(f"tree manifest {digest[:12]} does not match its digest")
    try:
        return parse_manifest(data)
    except ValueError as err:
        raise CorruptEntry(f"tree manifest {digest[:12]} is not valid ({err})") from None


