"""Between the workspace and the store: record a recipe's outputs into the
CAS, and make stored outputs appear in the workspace.

Workspace files are always copies (or reflinks), never hard links to blobs,
so editing a file in the workspace can never corrupt the store. Nothing is
written or deleted through a symlink that leads out of the workspace.
"""
from __future__ import annotations

import os
import shutil
import stat as statmod
import time

from buildsys.digest import EMPTY_DIR, FileDigest, StatCache, hash_bytes, hash_file, safe_relpath, tree_manifest
from buildsys.errors import BBError
from buildsys.store.api import CorruptEntry, OutputEntry, Store, read_manifest


class UnsafePath(BBError):
    """An output path that would land outside the workspace."""


def output_path(root: str, rel: str) -> str:
    """The workspace path of an output, refusing any that would land outside
    the workspace: absolute, '..', or through a symlinked folder."""
    if not safe_relpath(rel):
        raise UnsafePath(
            f"a stored result names the path '{rel}', which is outside the workspace; it was not written.",
            hint="The store holds a corrupt or forged entry: run 'bb cache verify --delete', and check who writes to the store.",
        )
    bare = rel.rstrip("/")
    here = root if root.endswith("/") else root + "/"
    full = here + bare  # (os.path.join: bare is relative, checked above)
    # Only the folders below the root can lead out (the root is where bb was
    # asked to work), so each is lstat'ed rather than resolving the whole
    # path from '/'. Nothing is remembered between calls: a recipe may swap a
    # folder for a symlink at any time.
    for part in bare.split("/")[:-1]:
        here += part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            break  # nothing below exists yet: nothing to write through
        if statmod.S_ISLNK(mode):
            _refuse_leaving(root, rel, full)  # rare: resolve it the slow way
            break
        if not statmod.S_ISDIR(mode):
            break  # writing below a file fails by itself
        here += "/"
    return full


def _refuse_leaving(root: str, rel: str, full: str) -> None:
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(full))
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise UnsafePath(
            f"the output '{rel}' would be written outside the workspace, to '{parent}', because a folder on its path is a symlink.",
            hint="bb does not write or delete through symlinks that leave the workspace: replace the symlink with a real folder, or declare the output elsewhere.",
        )


class OutputMissing(Exception):
    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _capture_file(store: Store, stats: StatCache, full: str) -> FileDigest:
    try:
        digest, st = store.put_file(full)
    except (FileNotFoundError, IsADirectoryError):
        raise OutputMissing(full) from None
    stats.remember(full, st, digest)
    return FileDigest(digest, st.st_size, bool(st.st_mode & statmod.S_IXUSR))


def capture_tree(store: Store, stats: StatCache, top: str) -> tuple[str, dict[str, FileDigest]]:
    """Put every file of a folder into the CAS, then its manifest (empty
    folders included); returns the manifest's digest and the listing."""
    files: dict[str, FileDigest] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, top).replace(os.sep, "/")
        if not dirnames and not filenames and dirpath != top:
            files[rel_dir + "/"] = EMPTY_DIR
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            files[rel] = _capture_file(store, stats, os.path.join(dirpath, name))
    return store.put_bytes(tree_manifest(files)), files


def capture(store: Store, stats: StatCache, root: str, outputs: tuple[str, ...]) -> tuple[OutputEntry, ...]:
    """Put each declared output (file or directory) into the CAS. The bytes
    are hashed as they are copied; a file that changes meanwhile raises
    buildsys.store.local.FileChanged."""
    entries = []
    for out in outputs:
        full = output_path(root, out)
        if out.endswith("/"):
            if not os.path.isdir(full) or os.path.islink(full):
                raise OutputMissing(out)
            digest, files = capture_tree(store, stats, full)
            entries.append(OutputEntry(out, digest, sum(f.size for f in files.values())))
        else:
            try:
                fd = _capture_file(store, stats, full)
            except OutputMissing:
                raise OutputMissing(out) from None
            entries.append(OutputEntry(out, fd.digest, fd.size, fd.executable))
    return tuple(entries)


class CorruptBlob(BBError, CorruptEntry):
    def __init__(self, digest: str, path: str):
        super().__init__(f"stored blob {digest[:12]} for '{os.path.relpath(path)}' does not match its digest; removed it from the store")


def _place(store: Store, stats: StatCache, digest: str, dest: str, executable: bool) -> None:
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
        stats.remember(dest, os.stat(dest), digest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def workspace_digest(stats: StatCache, full: str, is_dir: bool) -> str | None:
    """The digest of what the workspace holds at an output's path (a tree's
    for a folder), or None if nothing of that kind is there."""
    try:
        st = os.lstat(full)
    except OSError:
        return None
    if is_dir:
        if not statmod.S_ISDIR(st.st_mode):
            return None
        return hash_bytes(tree_manifest(stats.tree(full)))
    if not statmod.S_ISREG(st.st_mode):
        return None
    return stats.file(full, st).digest


def materialize(store: Store, stats: StatCache, root: str, entries: tuple[OutputEntry, ...], set_aside=None) -> list[str]:
    """Make the workspace hold these outputs; returns the paths it changed.
    `set_aside(path)` is asked first about each path that holds something
    else, so that nothing bb did not write is lost."""
    changed = []
    for entry in entries:
        full = output_path(root, entry.path)
        is_dir = entry.path.endswith("/")
        if workspace_digest(stats, full, is_dir) == entry.digest:
            continue
        if set_aside is not None and os.path.lexists(full):
            set_aside(entry.path)
        if is_dir:
            files = read_manifest(store, entry.digest)
            if os.path.lexists(full) and (os.path.islink(full) or not os.path.isdir(full)):
                os.unlink(full)
            os.makedirs(full, exist_ok=True)
            present = stats.tree(full)
            for rel in present.keys() - files.keys():
                path = os.path.join(full, rel)
                if not rel.endswith("/"):
                    os.unlink(path)
            store.fetch_many(fd.digest for rel, fd in files.items() if fd.digest and (present.get(rel) is None or present[rel].digest != fd.digest))
            for rel, fd in files.items():
                dest = output_path(full, rel)
                if not fd.digest:
                    os.makedirs(dest, exist_ok=True)
                    continue
                have = present.get(rel)
                if have is None or have.digest != fd.digest or have.executable != fd.executable:
                    _place(store, stats, fd.digest, dest, fd.executable)
            _prune_empty_dirs(full, keep={rel.rstrip("/") for rel in files if rel.endswith("/")})
        else:
            _place(store, stats, entry.digest, full, entry.executable)
        changed.append(entry.path)
    return changed


def _prune_empty_dirs(top: str, keep=frozenset()) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
        if dirpath != top and rel not in keep and not os.listdir(dirpath):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def remove_outputs(root: str, outputs: tuple[str, ...], prune_to: str | None = None) -> list[str]:
    """Delete declared outputs (before a run, after a failed one, and for
    `bb clean`); never through a symlink leaving the workspace. `prune_to`:
    also remove the folders this leaves empty, up to that folder. Returns the
    outputs that were there."""
    removed = []
    for out in outputs:
        full = output_path(root, out)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed.append(out)
        except FileNotFoundError:
            continue
        if prune_to is not None:
            parent = os.path.dirname(full)
            while parent != prune_to and parent.startswith(prune_to + os.sep):
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)
    return removed
