"""Between the workspace and the store: record a recipe's outputs into the
CAS, and make stored outputs appear in the workspace.

Workspace files are always copies (or reflinks), never hard links to blobs,
so editing a file in the workspace can never corrupt the store.
"""
from __future__ import annotations

import json
import os
import shutil
import stat as statmod
import time

from buildsys.errors import BBError
from buildsys.digest import FileDigest, StatCache, hash_bytes, hash_file, tree_manifest
from buildsys.store.api import CorruptEntry, OutputEntry, Store


class UnsafePath(BBError):
    """A stored result names a path outside the workspace."""

    def __init__(self, path: str):
        super().__init__(
            f"a stored result names the path '{path}', which is outside the workspace; it was not written.",
            hint="The store holds a corrupt or forged entry: run 'bb cache gc' or remove it, and check who writes to the store.",
        )


def safe_destination(root: str, rel: str) -> str:
    """The workspace path for a stored output path, refusing any that would
    land outside the workspace (absolute, '..', or through a symlink)."""
    rel = rel.rstrip("/")
    parts = rel.split("/")
    if not rel or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(rel)
    full = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(full))
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise UnsafePath(rel)
    return full


class OutputMissing(Exception):
    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _file_digest(stats: StatCache, path: str) -> FileDigest:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise OutputMissing(path) from None
    if statmod.S_ISDIR(st.st_mode):
        raise OutputMissing(path)
    return stats.file(path, st)


def capture(store: Store, stats: StatCache, root: str, outputs: tuple[str, ...]) -> tuple[OutputEntry, ...]:
    """Put each declared output (file or directory) into the CAS."""
    entries = []
    for out in outputs:
        full = os.path.join(root, out.rstrip("/"))
        if out.endswith("/"):
            if not os.path.isdir(full):
                raise OutputMissing(out)
            files = stats.tree(full)
            for rel, fd in files.items():
                store.put_file(os.path.join(full, rel), fd.digest)
            manifest = tree_manifest(files)
            digest = hash_bytes(manifest)
            store.put_bytes(manifest, digest)
            entries.append(OutputEntry(out, digest, sum(f.size for f in files.values())))
        else:
            try:
                fd = _file_digest(stats, full)
            except OutputMissing:
                raise OutputMissing(out) from None
            store.put_file(full, fd.digest)
            entries.append(OutputEntry(out, fd.digest, fd.size, fd.executable))
    return tuple(entries)


def read_manifest(store: Store, digest: str) -> dict[str, FileDigest]:
    return {rel: FileDigest(d, size, bool(x)) for rel, d, size, x in json.loads(store.read_bytes(digest))}


class CorruptBlob(BBError, CorruptEntry):
    def __init__(self, digest: str, path: str):
        super().__init__(f"stored blob {digest[:12]} for '{os.path.relpath(path)}' does not match its digest; removed it from the store")


def _place(store: Store, digest: str, dest: str, executable: bool) -> None:
    """Copy a blob into the workspace, verifying its bytes on the way."""
    parent = os.path.dirname(dest) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".bb-tmp.{os.getpid()}.{time.monotonic_ns()}")
    try:
        store.fetch(digest, tmp)
        if hash_file(tmp) != digest:
            store.discard(digest)
            raise CorruptBlob(digest, dest)
        os.chmod(tmp, 0o755 if executable else 0o644)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def in_workspace(stats: StatCache, full: str, entry: OutputEntry) -> bool:
    """Does the workspace already hold exactly this output?"""
    try:
        if entry.path.endswith("/"):
            return os.path.isdir(full) and hash_bytes(tree_manifest(stats.tree(full))) == entry.digest
        st = os.stat(full)
        if not statmod.S_ISREG(st.st_mode):
            return False
        return stats.file(full, st).digest == entry.digest
    except OSError:
        return False


def materialize(store: Store, stats: StatCache, root: str, entries: tuple[OutputEntry, ...]) -> list[str]:
    """Make the workspace hold these outputs; returns the paths it changed."""
    changed = []
    for entry in entries:
        full = safe_destination(root, entry.path)
        if in_workspace(stats, full, entry):
            continue
        if entry.path.endswith("/"):
            files = read_manifest(store, entry.digest)
            if os.path.exists(full) and not os.path.isdir(full):
                os.unlink(full)
            os.makedirs(full, exist_ok=True)
            present = stats.tree(full)
            for rel in present.keys() - files.keys():
                os.unlink(os.path.join(full, rel))
            store.fetch_many(fd.digest for rel, fd in files.items() if present.get(rel) is None or present[rel].digest != fd.digest)
            for rel, fd in files.items():
                safe_destination(full, rel)
                have = present.get(rel)
                if have is None or have.digest != fd.digest or have.executable != fd.executable:
                    _place(store, fd.digest, os.path.join(full, rel), fd.executable)
            _prune_empty_dirs(full)
        else:
            _place(store, entry.digest, full, entry.executable)
        changed.append(entry.path)
    return changed


def _prune_empty_dirs(top: str) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        if dirpath != top and not dirnames and not filenames:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_outputs(root: str, outputs: tuple[str, ...]) -> None:
    """Delete declared outputs (before a run, and after a failed one)."""
    for out in outputs:
        full = os.path.join(root, out.rstrip("/"))
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except FileNotFoundError:
            pass
