"""Hermetic runs: a recipe in a scratch folder that holds exactly the inputs
its key covers, fetched from the store by digest.

The same steps serve `bb build --sandbox` on this machine and the worker in a
container (`python -m buildsys.worker`): lay out the inputs, run the recipe,
capture the declared outputs, record the result last. A recipe that reads a
file it did not declare fails here, as it would remotely, and the error says
which file and what to do."""
from __future__ import annotations

import os
import re
import shutil

from buildsys.digest import safe_relpath
from buildsys.errors import BBError
from buildsys.keys.action import Action
from buildsys.run.materialize import capture_tree, materialize, output_path
from buildsys.store.api import OutputEntry, Store


class NotHermetic(BBError):
    """An action that cannot run away from the workspace."""


def stage_sources(action: Action, root: str, sources, store: Store, notebooks=frozenset()) -> str | None:
    """Copy the action's source inputs (files and folders the user provides)
    from the workspace into the store, so that a sandbox or a remote worker
    can fetch them by digest. Returns the first input whose bytes no longer
    match the key (changed since it was hashed), or None."""
    from buildsys.digest import StatCache

    for path, digest, _ in action.inputs:
        if path.rstrip("/") not in sources:
            continue
        full = os.path.join(root, path.rstrip("/"))
        if path.endswith("/"):
            stored, _ = capture_tree(store, StatCache(None), full)
        elif path in notebooks:  # stored as it is keyed: its cells
            from buildsys.recipes.notebook import canonical

            stored = store.put_bytes(canonical(full))
        elif store.has_blob(digest):
            continue
        else:
            stored, _ = store.put_file(full)
        if stored != digest:
            return path
    return None


def lay_out(action: Action, store: Store, scratch: str) -> None:
    """Fill a scratch folder with exactly the action's inputs, verified, and
    the folders its outputs go in."""
    from buildsys.digest import StatCache

    stats = StatCache(None)
    for path, digest, executable in action.inputs:
        if not safe_relpath(path):
            raise NotHermetic(
                f"the input '{path}' of '{action.target}' lies outside the project, so it cannot be sent to a sandbox or a remote worker.",
                hint="Move or copy it into the project folder (or make it the output of a target), then declare it by its relative path.",
            )
        materialize(store, stats, scratch, (OutputEntry(path, digest, 0, executable),))
    for out in action.outputs:
        os.makedirs(os.path.dirname(output_path(scratch, out)), exist_ok=True)


# How "file not found" reads in Python ("... No such file or directory: 'x'")
# and in shell tools ("cat: x: No such file or directory").
_MISSING = (
    re.compile(r"No such file or directory:\s*'([^'\n]+)'"),
    re.compile(r"""(?:^|[\s'"])([^\s:'"]+)'?:\s*No such file or directory""", re.M),
)


_NO_MODULE = re.compile(r"No module named '([A-Za-z_][\w.]*)'")


def undeclared_reads(output: str, action: Action, root: str) -> list[str]:
    """Files a failed sandboxed recipe looked for that exist in the workspace
    but are not among its inputs: the likely cause of its failure."""
    declared = {p.rstrip("/") for p, _, _ in action.inputs}
    found = []
    candidates = [m.group(1).strip() for pattern in _MISSING for m in pattern.finditer(output)]
    # A Python module it imports but did not declare: look beside the
    # declared inputs, where helper modules usually sit.
    folders = dict.fromkeys(os.path.dirname(d) for d in declared)
    for m in _NO_MODULE.finditer(output):
        module = m.group(1).replace(".", "/")
        candidates += [os.path.join(f, module + ".py") for f in folders] + [os.path.join(f, module) + "/" for f in folders]
    for name in candidates:
        rel = os.path.normpath(name) + ("/" if name.endswith("/") else "")
        bare = rel.rstrip("/")
        if safe_relpath(rel) and bare not in declared and not any(bare.startswith(d + "/") for d in declared) and os.path.exists(os.path.join(root, bare)):
            if rel not in found:
                found.append(rel)
    return found


def scratch_folder(state: str, key: str) -> str:
    import tempfile

    base = os.path.join(state, "sandbox")
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=key[:12] + ".", dir=base)


def remove(scratch: str) -> None:
    def writable(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), 0o755)
            os.chmod(path, 0o755)
            func(path)
        except OSError:
            pass

    shutil.rmtree(scratch, onerror=writable)


