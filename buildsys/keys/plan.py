"""Plan: turn targets into actions, compute their keys, and look them up.

A target's inputs that other targets make enter its key through the digests
of those outputs (from their action results), not through their keys: a
rebuilt target that produces the same bytes does not rebuild its dependents.
"""
from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass

from buildsys.keys.action import SCHEMA, Action, diff
from buildsys.errors import BatchfileError, BBError
from buildsys.lang.graph import Graph, Target
from buildsys.store.api import ActionResult, CorruptEntry, Store, read_manifest
from buildsys.keys.workspace import Workspace
from buildsys.digest import hash_bytes, signature, tree_manifest

# What a recipe sees besides the variables it declares. None of these enter a
# key: they say where a recipe runs, not what it computes.
PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "CONDA_PREFIX")

_path = operator.attrgetter("path")


# Names that look like credentials: declared with @env, their values would be
# stored in clear in every key (and so in the shared cache): bb warns.
SECRET = re.compile(r"SECRET|TOKEN|PASSW|PASS$|CREDENTIAL|PRIVATE|_KEY|_PAT$|WEBHOOK|AUTH|COOKIE|SESSION", re.I)


def _sig(path: str) -> list | None:
    try:
        return signature(os.stat(path))
    except OSError:
        return None


def notebook_cells(full: str, path: str) -> bytes:
    try:
        from buildsys.recipes.notebook import canonical
    except ImportError:
        raise BBError(
            f"'{path}' is a @notebook, and running notebooks needs jupytext, nbclient, nbconvert and ipykernel.",
            hint="Install them: pip install 'buildsys[notebook]'.",
        ) from None
    try:
        return canonical(full)
    except ImportError as err:
        raise BBError(f"'{path}' is a @notebook, and running notebooks needs {err.name}.", hint="Install them: pip install 'buildsys[notebook]'.") from None
    except FileNotFoundError:
        raise
    except Exception as err:  # jupytext and nbformat raise many kinds
        raise BBError(f"cannot read the notebook '{path}': {type(err).__name__}: {err}.", hint="Open it in Jupyter or check its jupytext header.") from None


def _input(path: str, digest: str, executable: bool, folder: bool) -> tuple[str, str, bool]:
    # A folder's path ends with '/' in the action, so whoever runs it knows
    # the digest names a tree manifest.
    return (path.rstrip("/") + "/" if folder else path, digest, executable)


# Variables that size the thread pools of numpy, scikit-learn, PyTorch...:
# without them, two recipes at -j2 each use every core and both crawl.
THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def thread_env(cpus: int) -> dict:
    """BB_CPUS and the thread-count variables for a recipe given `cpus` cores
    (outside every key: they say how fast, not what)."""
    return {"BB_CPUS": str(cpus), **{name: str(cpus) for name in THREADS}}


class Unknown(Exception):
    """An input's digest is not known yet (an upstream target must run first)."""

    def __init__(self, path: str, maker: str):
        super().__init__(path)
        self.path, self.maker = path, maker


class InputMissing(BBError):
    pass


class UnusableInput(Exception):
    """A cached upstream target's stored bytes are gone or wrong: it is a
    miss after all, and must run before its dependents."""

    def __init__(self, dep: str, reason: str):
        super().__init__(dep)
        self.dep, self.reason = dep, reason


@dataclass
class Planner:
    """Keys, lookups and recorded results of one build's targets."""

    graph: Graph
    store: Store
    workspace: Workspace

    def __post_init__(self):
        self.results: dict[str, ActionResult] = {}  # target -> the result its outputs came from
        # Incremental builds: outputs of targets known current (reported
        # cached and never run again in this build) whose results were not
        # read, path as an input names it -> its entry, as the verified
        # earlier action of a target that reads it holds it.
        self.carried: dict[str, tuple[str, bool, bool]] = {}
        self.warnings: list[str] = []
        self._manifests: dict[str, dict] = {}
        self._sources: dict[str, tuple[str, bool, bool]] = {}  # source input -> (digest, executable, folder), this run
        self._tree_files: dict[str, set[str]] = {}  # source folder -> the files hashed in it
        self._environment: dict[str, tuple] = {}
        self.remote_image = ""  # with --remote: "repository:tag" of the environment image
        self._code: dict[str, list[str]] = {}  # target -> Python files it runs that it does not declare
        self._imports = None  # keys.imports.ImportCache, made when first needed
        self._notebooks: set[str] | None = None
        self._recipe_env: dict[int, dict] = {}  # job slots -> what every recipe sees
        self._declared: dict[str, list[str]] = {}  # target -> declared_paths, where long

    # -- digests ----------------------------------------------------------------

    def input_digest(self, path: str) -> str:
        return self.input_entry(path)[0]

    def input_entry(self, path: str) -> tuple[str, bool, bool]:
        """An input's digest (a tree manifest's for a folder), its executable
        bit, and whether it is a folder."""
        known = self.carried.get(path)
        if known is not None:
            return known
        maker = self.graph.producer_of(path.rstrip("/"))
        if maker is not None and not self.graph.targets[maker].phony:
            result = self.results.get(maker)
            if result is None:
                raise Unknown(path, maker)
            entry = result.output(path.rstrip("/"))
            if entry is not None:
                return entry.digest, entry.executable, entry.path.endswith("/")
            # a file inside a directory output
            for out in result.outputs:
                prefix = out.path
                if out.path.endswith("/") and path.startswith(prefix):
                    try:
                        files = self._manifest(out.digest)
                    except CorruptEntry as err:
                        raise UnusableInput(maker, str(err)) from None
                    fd = files.get(path[len(prefix) :])
                    if fd is None or not fd.digest:
                        raise InputMissing(
                            f"'{path}' is not among the files '{maker}' made in '{prefix}'.",
                            where=self.graph.targets[maker].location,
                        )
                    return fd.digest, fd.executable, False
            raise Unknown(path, maker)
        known = self._sources.get(path)
        if known is not None:
            return known
        full = path if os.path.isabs(path) else os.path.join(self.workspace.root, path)
        try:
            if path in self.notebooks():
                # a notebook keys by its cells, not its file's bytes or format
                self.workspace.stats.file(full)  # seen: checked after the run like any input
                entry = (hash_bytes(notebook_cells(full, path)), False, False)
            elif os.path.isdir(full):
                files = self.workspace.stats.tree(full)
                self._tree_files[full] = {os.path.join(full, rel) for rel, fd in files.items() if fd.digest}
                entry = (hash_bytes(tree_manifest(files)), False, True)
            else:
                fd = self.workspace.stats.file(full)
                entry = (fd.digest, fd.executable, False)
        except FileNotFoundError:
            raise InputMissing(
                f"input '{path}' does not exist.",
                hint="It was there when the build started; restore it, or fix the Batchfile.",
            ) from None
        except OSError as err:
            raise InputMissing(f"cannot read the input '{path}': {err.strerror}.", hint="Check its permissions.") from None
        # Source files are read once per run: recipes must not change them
        # (checked after each recipe from the stats seen here).
        self._sources[path] = entry
        return entry

    def notebooks(self) -> set[str]:
        """The notebooks @notebook targets run (they key by their cells)."""
        if self._notebooks is None:
            self._notebooks = {t.attrs.notebook[0] for t in self.graph.targets.values() if t.attrs.notebook}
        return self._notebooks

    def code_inputs(self, target: Target) -> list[str]:
        """The project's Python files a target's recipe runs and the local
        modules they import, transitively (keys.imports): inputs nobody
        declares, whose edits must rebuild the target and which a sandbox or
        a remote worker must receive."""
        found = self._code.get(target.name)
        if found is None:
            from buildsys.keys.imports import ImportCache, local_imports, scan_recipe

            if self._imports is None:
                self._imports = ImportCache(self.workspace.state)
            root = self.workspace.root
            scan = scan_recipe(target.recipe or "", root, self._imports) if target.recipe else None
            scripts = scan.scripts if scan else []
            entries = scripts + [p for p in target.inputs if p.endswith(".py")]
            modules = local_imports(entries, root, self._imports, path=scan.path if scan else ()) if entries else []
            declared = set(target.inputs)
            found = self._code[target.name] = [p for p in dict.fromkeys(scripts + modules) if p not in declared and self.graph.is_source(p)]
        return found

    def code_watch(self) -> tuple[list[str], list[str]]:
        """For the no-op stamp: the Python files recipes run without
        declaring them, plus the paths whose absence and the folders whose
        listing decided which modules those are."""
        files = [p for found in self._code.values() for p in found]
        if self._imports is None:
            return files, []
        return files + sorted(self._imports.missing), sorted(self._imports.listed)

    def save(self) -> None:
        if self._imports is not None:
            self._imports.save()

    def changed_inputs(self, target: Target) -> str | None:
        """An input of the target that changed since its digest was taken
        (so while the recipe ran), or None. Compared by stat signature, as
        seen when the digest was taken."""
        seen, root = self.workspace.stats.seen, os.path.join(self.workspace.root, "")
        for path in list(target.inputs) + self._code.get(target.name, []):
            full = path if path.startswith("/") else root + path.rstrip("/")  # os.path.join, for thousands of inputs
            files = self._tree_files.get(full)
            if files is not None:
                now = set()
                for dirpath, _, filenames in os.walk(full):
                    for name in filenames:
                        p = os.path.join(dirpath, name)
                        now.add(p)
                        if p not in files or _sig(p) != seen[p][0]:
                            return path
                if now != files:
                    return path
                continue
            before = seen.get(full)
            if before is not None and before[1] and _sig(full) != before[0]:
                return path
        return None

    def _manifest(self, digest: str) -> dict:
        if digest not in self._manifests:
            self._manifests[digest] = read_manifest(self.store, digest)
        return self._manifests[digest]

    def environment(self, target: Target) -> tuple:
        # Remote targets run in the environment image: its name (repository
        # and content tag, never the registry's address) keys them.
        image = self.remote_image if self.remote_image and not target.attrs.local else target.attrs.image or self.graph.settings.image
        if image not in self._environment:
            fields = [("image", image), ("shell", self.graph.settings.shell)]
            req = self.graph.settings.requirements
            if req:
                try:
                    fields.append(("requirements", self.input_digest(req)))
                except InputMissing:
                    raise BatchfileError(
                        f"the requirements file '{req}' named in the settings does not exist.",
                        hint="Create it, or fix or remove the 'requirements' setting.",
                    ) from None
            # Without a declared requirements (lock) file, local recipes are
            # keyed by the Python environment actually installed; with one,
            # by the declaration, which teammates share.
            if not image and not req:  # (a remote image is keyed by its tag, which covers its packages)
                python = self.python()
                if python is not None:
                    fields.append(("python", python.fingerprint()))
            self._environment[image] = tuple(fields)
        return self._environment[image]

    def python(self):
        """The Python environment local recipes run with (interpreter and
        installed distributions), or None without a python3 on PATH. Its
        listing is stored under its fingerprint, so `bb why` can name the
        package that changed."""
        if not hasattr(self, "_python"):
            from buildsys.files import user_cache_dir
            from buildsys.keys.environment import python_environment

            # The probe's answer holds for every project using this
            # interpreter: a fresh checkout or workspace need not pay it again.
            self._python = python_environment(os.environ.get("PATH", os.defpath), user_cache_dir() or self.workspace.state)
            if self._python is not None:
                try:
                    self.store.put_bytes(self._python.listing())
                except OSError:
                    pass  # only an explanation is lost
        return self._python

    # -- actions ------------------------------------------------------------------

    def declared_paths(self, target: Target) -> list[str]:
        """The paths the target's inputs name, an alias standing for its
        targets' outputs (they enter the key). Not to be changed: a join's
        thousands are remembered (an incremental build asks twice)."""
        paths = self._declared.get(target.name)
        if paths is not None:
            return paths
        paths = []
        for path in target.inputs:
            other = self.graph.targets.get(path)
            if other is None or not other.phony:
                paths.append(path)
            elif other.recipe is None:
                for name in self.graph.behind_aliases([path]):
                    t = self.graph.targets[name]
                    if not t.phony:
                        paths.extend(t.outputs)
        if len(paths) >= 64:
            self._declared[target.name] = paths
        return paths

    def action(self, target: Target) -> Action:
        """The target's action; raises Unknown while an upstream result is missing."""
        paths = self.declared_paths(target) + self.code_inputs(target)
        # Sorted: the order of the header is not a result's cause (where the
        # recipe depends on it, through $< or $^, the recipe text says so).
        inputs = tuple(_input(path, *self.input_entry(path)) for path in sorted(set(paths)))
        env = tuple((name, os.environ.get(name)) for name in target.attrs.env)
        return Action(target.name, target.recipe or "", inputs, target.outputs, target.params, env, self.environment(target), variables=target.variables)

    def lookup(self, target: Target, key: str) -> ActionResult | None:
        """An action result whose blobs are all present, or None."""
        # The workspace's index answers most no-op lookups without a store read.
        result = self.workspace.last_result(target.name, key)
        if result is not None and all(self.store.has_blob(o.digest) for o in result.outputs) and self.declares(target, result):
            return result
        try:
            result = self.store.get_result(key)
        except CorruptEntry as err:
            self.warnings.append(f"ignored a corrupt store entry for '{target.name}' ({err}); rebuilding it")
            return None
        finally:
            if key in getattr(self.store, "corrupt_in_bundle", ()):
                self.warnings.append(f"ignored a corrupt entry for '{target.name}' in the shared cache's plan bundle")
        if result is None:
            return None
        if not self.declares(target, result):
            self.warnings.append(f"ignored the stored result for '{target.name}': it names other outputs than the Batchfile declares")
            return None
        if not all(self.store.has_blob(o.digest) for o in result.outputs):
            return None
        return result

    def usable(self, target: Target, result: ActionResult) -> bool:
        """A result found for the target's key names its outputs and has their blobs."""
        return self.declares(target, result) and all(self.store.has_blob(o.digest) for o in result.outputs)

    @staticmethod
    def declares(target: Target, result: ActionResult) -> bool:
        # The key covers the output paths, so a true result names exactly the
        # declared outputs; anything else (a path outside the workspace, say) is corrupt.
        return tuple(map(_path, result.outputs)) == target.outputs

    def recipe_env(self, target: Target, cpus: int = 0) -> dict:
        """What a recipe sees: the passthrough variables (never keyed), the
        declared ones, its secrets (never keyed, never stored), and as many
        math-library threads as the job slots it holds (`cpus`)."""
        cpus = cpus or target.attrs.cpus
        base = self._recipe_env.get(cpus)
        if base is None:
            # once per build and slot count: copying os.environ costs more
            # than a trivial recipe's own work
            base = {k: v for k, v in os.environ.items() if k in PASSTHROUGH or k.startswith("LC_")}
            base.update(thread_env(cpus))
            self._recipe_env[cpus] = base
        env = dict(base)
        for name in target.attrs.env + target.attrs.secrets:
            value = os.environ.get(name)
            if value is not None:
                env[name] = value
        return env

    def check_declared_env(self, order) -> None:
        """Warn once per @env name that looks like a credential."""
        names = {n for name in order for n in self.graph.targets[name].attrs.env if SECRET.search(n)}
        for n in sorted(names):
            self.warnings.append(
                f"the variable {n} is declared with @env, so its value enters keys and the store in clear; "
                f"if it is a secret, declare it with @secret instead (it then reaches the recipe but no key)"
            )

    def bundle_name(self) -> str:
        """The project's bundle in the shared cache, named by the set of its
        target names: the same for every selection, source version and
        recipe edit, so one bundle (results of recent builds, a few per
        target) answers most plans with one request."""
        return hash_bytes(json.dumps([SCHEMA, "project", sorted(self.graph.targets)], separators=(",", ":")).encode())

    # -- explanations -----------------------------------------------------------------

    def why(self, target: Target, action: Action) -> list[str]:
        """Why this action is not in the store: what differs from the target's last build."""
        last_key = self.workspace.last_key(target.name)
        if last_key is None:
            return ["never built here before"]
        if last_key == action.key():
            return ["built before, but its result is no longer in the store"]
        try:
            # a shared store may know a result by its name only: the action is in the full one
            old = getattr(self.store, "full_result", self.store.get_result)(last_key)
        except CorruptEntry:
            old = None
        try:
            previous = Action.from_json(old.action) if old else None
        except (KeyError, TypeError):
            previous = None
        if previous is None:
            return ["its inputs or recipe changed (the last build's record is gone from the store)"]
        return self._explain_python(diff(previous, action), previous, action) or ["the key changed"]

    def _explain_python(self, lines: list[str], old: Action, new: Action) -> list[str]:
        """'environment python: <digest> -> <digest>' becomes the packages that changed."""
        from buildsys.keys.environment import changes

        before, after = dict(old.environment).get("python"), dict(new.environment).get("python")
        if before == after or not before or not after:
            return lines
        try:
            detail = changes(self.store.read_bytes(before), self.store.read_bytes(after))
        except (OSError, CorruptEntry):
            return lines
        return [line for line in lines if not line.startswith("environment python:")] + [
            f"the Python environment changed: {', '.join(detail) or 'same packages, other bytes'}"
        ]
