"""The Python environment local recipes run with, as a fingerprint.

A recipe that imports numpy computes something else after `pip install -U
numpy`, yet nothing in its action (recipe text, inputs, params, declared
environment) says so. This module describes the environment a local recipe
would see: the first `python3` (else `python`) on the recipe's PATH, its
implementation and version, and the name and version of every distribution
installed where it imports from. Its fingerprint can enter a key, its listing
can be stored so `bb why` names the package that changed, and its watch paths
let a no-op build skip even this.

Cost. Finding an interpreter's version and sys.path needs running it once
(~20-50 ms); that answer is cached in `<cache_dir>/python-env.json` and stays
valid while the stat (size, mtime_ns, inode) of the interpreter files, of the
venv's pyvenv.cfg and of every sys.path folder is unchanged, so a normal build
starts no process. The distributions are then read from the names of the
`*.dist-info` / `*.egg-info` entries of those folders (no importlib.metadata,
no file reads but for the rare bare `name.egg-info`): about a millisecond for
a few hundred packages.

What the probe sees. It runs `python3 -E -c ...` with the variables a recipe
gets (PATH, HOME, ...): `-E` because a recipe does not inherit PYTHONPATH,
PYTHONHOME, PYTHONUSERBASE or PYTHONNOUSERSITE from bb's caller (a target that
declares one of those has it in its key already); no `-s` (nor `-I`, which
implies it) because a recipe does get HOME, so it imports from the user
site-packages (~/.local/lib/pythonX.Y/site-packages) when it exists, and a
`pip install --user` must show. The user site is watched even while absent.

Not covered: the code of editable installs and a reinstall of the same
version with other bytes (the version string is all that is read); a pyenv
shim switched to another version by PYENV_VERSION or a `.python-version`
file, while the cached answer for that shim stands (the shim file and PATH
are unchanged); compiled extensions' system libraries.

Nothing here raises: an unreadable folder is skipped, a broken or hanging
interpreter gives None (remembered for a few minutes, then tried again), a
corrupt cache file is ignored and rewritten.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass

from buildsys.digest import hash_bytes
from buildsys.files import write_atomic

CACHE_FILE = "python-env.json"
CACHE_VERSION = 1
CACHE_ENTRIES = 32  # distinct (PATH, interpreter) pairs remembered
PROBE_TIMEOUT = 5.0  # seconds a `python3` on PATH may take to answer
FAILURE_TTL = 300.0  # a failed probe is retried after this many seconds
OWN_DISTRIBUTION = "buildsys"

# Variables the probe passes on, as a recipe would get them (see
# keys/plan.py PASSTHROUGH); PATH is the one given.
_PROBE_ENV = ("HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "CONDA_PREFIX", "SYSTEMROOT")

# Runs under any Python the user may have first on PATH, 2.7 included.
_PROBE = r"""
import json, os, platform, sys
try:
    import site
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
except Exception:
    user = None
impl = getattr(sys, "implementation", None)
info = {
    "implementation": impl.name if impl else platform.python_implementation().lower(),
    "implementation_version": "%d.%d.%d" % tuple(impl.version[:3]) if impl else "",
    "version": platform.python_version(),
    "abiflags": getattr(sys, "abiflags", ""),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "base_prefix": getattr(sys, "base_prefix", sys.prefix),
    "path": [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)],
    "user_site": user,
}
sys.stdout.write(json.dumps(info))
"""

_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """PEP 503: runs of -, _ and . become one -, lower case."""
    return _NORMALIZE.sub("-", name).lower()


@dataclass(frozen=True)
class PythonEnvironment:
    """The Python interpreter and packages the recipes run with, as keys see them."""

    interpreter: str  # implementation + version, e.g. "cpython-3.11.7"; never a path
    packages: tuple[str, ...]  # sorted "name==version", names PEP 503-normalized, without bb's own
    # Absolute paths whose stat changes when the answer may change: the
    # sys.path folders (site-packages above all), the interpreter files, a
    # venv's pyvenv.cfg, the user site-packages and the PATH folders searched
    # before the interpreter's. Some may not exist (the user site until the
    # first `pip install --user`): record "absent" as a state, its creation is
    # a change.
    watch: tuple[str, ...]

    def listing(self) -> bytes:
        """Canonical text: `python <interpreter>` then one `name==version` a line."""
        return "".join(f"{line}\n" for line in (f"python {self.interpreter}", *self.packages)).encode()

    def fingerprint(self) -> str:
        return hash_bytes(self.listing())


# -- finding the interpreter and its sys.path ------------------------------------


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _find_interpreter(path: str) -> str | None:
    for name in ("python3", "python"):
        try:
            found = shutil.which(name, path=path)
        except (OSError, ValueError):
            found = None
        if found:
            return os.path.abspath(found)
    return None


def _probe(interpreter: str, path: str) -> dict | None:
    """Run the interpreter once; its answer, or None if it fails, hangs or talks nonsense."""
    import subprocess  # (once per interpreter and PATH, then cached: not on every build's path)

    env = {k: v for k, v in os.environ.items() if k in _PROBE_ENV or k.startswith("LC_")}
    env["PATH"] = path
    try:
        proc = subprocess.Popen(
            [interpreter, "-E", "-c", _PROBE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # so a hung wrapper script's children are ended too
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    try:
        out, _ = proc.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        try:
            proc.communicate(timeout=1.0)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            pass
        return None
    except (OSError, ValueError):
        proc.kill()
        return None
    if proc.returncode != 0:
        return None
    try:
        info = json.loads(out)
    except ValueError:
        return None
    return info if _well_formed(info) else None


def _well_formed(info) -> bool:
    if not (isinstance(info, dict) and isinstance(info.get("implementation"), str) and isinstance(info.get("version"), str)):
        return False
    if not (isinstance(info.get("path"), list) and all(isinstance(p, str) and os.path.isabs(p) for p in info["path"])):
        return False
    return all(info.get(f) is None or isinstance(info[f], str) for f in ("executable", "prefix", "base_prefix", "user_site", "abiflags", "implementation_version"))


def _interpreter_name(info: dict) -> str:
    impl = re.sub(r"[^a-z0-9_.+-]", "", info["implementation"].lower()) or "python"
    name = f"{impl}-{info['version']}{info.get('abiflags') or ''}"
    if impl != "cpython" and info.get("implementation_version"):
        name += f"-{info['implementation_version']}"  # PyPy 7.3.x for Python 3.10
    return name


def _checked_paths(found: str, info: dict | None) -> list[str]:
    """Paths whose stat must be unchanged for a cached probe to stand."""
    paths = [found, os.path.realpath(found)]
    if info is not None:
        if info.get("executable"):
            paths.append(os.path.realpath(info["executable"]))
        if info.get("prefix") and info.get("prefix") != info.get("base_prefix"):
            paths.append(os.path.join(info["prefix"], "pyvenv.cfg"))
        paths.extend(info["path"])
        if info.get("user_site"):
            paths.append(info["user_site"])
    return list(dict.fromkeys(paths))


def _load_cache(cache_path: str) -> list:
    try:
        with open(cache_path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), list):
        return []
    return [e for e in data["entries"] if isinstance(e, dict)]


def _save_cache(cache_dir: str, cache_path: str, entries: list) -> None:
    try:
        write_atomic(cache_path, json.dumps({"version": CACHE_VERSION, "entries": entries[:CACHE_ENTRIES]}, separators=(",", ":")).encode())
    except (OSError, ValueError, TypeError):
        pass  # a cache that cannot be written only costs a probe next time


def _valid(entry: dict, path: str, found: str) -> bool:
    if entry.get("PATH") != path or entry.get("interpreter") != found:
        return False
    if entry.get("info") is not None and not _well_formed(entry["info"]):
        return False
    checks = entry.get("checks")
    if not isinstance(checks, list):
        return False
    try:
        if [c[0] for c in checks] != _checked_paths(found, entry.get("info")):
            return False
        if not all(_stat(p) == st for p, st in checks):
            return False
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return False
    if entry.get("info") is not None:
        return True
    failed_at = entry.get("failed_at")  # a failed probe: retried after a while
    return isinstance(failed_at, (int, float)) and time.time() - failed_at < FAILURE_TTL


def _interpreter_info(path: str, found: str, cache_dir: str | None) -> dict | None:
    cache_path = os.path.join(cache_dir, CACHE_FILE) if cache_dir else None
    entries = _load_cache(cache_path) if cache_path else []
    for entry in entries:
        if _valid(entry, path, found):
            return entry["info"]
    # Stat before the probe: a change while it runs then shows next time.
    before = {p: _stat(p) for p in _checked_paths(found, None)}
    info = _probe(found, path)
    if cache_path:
        checks = [[p, before[p] if p in before else _stat(p)] for p in _checked_paths(found, info)]
        entry = {"PATH": path, "interpreter": found, "checks": checks, "info": info}
        if info is None:
            entry["failed_at"] = time.time()
        rest = [e for e in entries if not (e.get("PATH") == path and e.get("interpreter") == found)]
        _save_cache(cache_dir, cache_path, [entry, *rest])
    return info


# -- listing the installed distributions ---------------------------------------


def _headers(path: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """The first value of each wanted header of a METADATA / PKG-INFO file."""
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return found
    for raw in head.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            break  # the body (description) starts
        key, sep, value = raw.partition(":")
        if sep and key.strip().lower() in wanted and key.strip().lower() not in found:
            found[key.strip().lower()] = value.strip()
    return found


def _metadata_file(path: str, name: str) -> str:
    # a distutils .egg-info is not a folder but the PKG-INFO file itself
    return os.path.join(path, name) if os.path.isdir(path) else path


def _distribution(folder: str, fname: str) -> tuple[str, str] | None:
    """(name, version) of a *.dist-info / *.egg-info entry, from its name if it can."""
    if fname.endswith(".dist-info"):
        stem, meta = fname[: -len(".dist-info")], "METADATA"
    elif fname.endswith(".egg-info"):
        stem, meta = fname[: -len(".egg-info")], "PKG-INFO"
    else:
        return None
    # {name}-{version}.dist-info; {name}-{version}[-pyX.Y[-platform]].egg-info;
    # names and versions are escaped so neither holds a '-'.
    name, sep, rest = stem.partition("-")
    version = rest.partition("-")[0] if sep else ""
    if not name:
        return None
    if not version:
        headers = _headers(_metadata_file(os.path.join(folder, fname), meta), ("name", "version"))
        version = headers.get("version") or "unknown"
    return name, version


_SUFFIXES = (".dist-info", ".egg-info")


def _egg(folder: str) -> tuple[str, str] | None:
    """A sys.path entry that is itself an egg: name-version-pyX.Y.egg."""
    base = os.path.basename(folder)
    if not base.endswith(".egg"):
        return None
    name, sep, rest = base[: -len(".egg")].partition("-")
    return (name, rest.partition("-")[0] or "unknown") if name and sep else None


def _packages(folders: list[str]) -> tuple[str, ...]:
    """Every distribution importable from these folders, in sys.path order: a
    name found in an earlier folder shadows the same name further on."""
    seen: dict[str, set[str]] = {}
    for folder in folders:
        here: dict[str, set[str]] = {}
        dists = []
        egg = _egg(folder)
        if egg:
            dists.append(egg)
        try:
            names = os.listdir(folder)  # names only: cheaper than scandir's entries
        except OSError:
            names = []
        for fname in names:
            if fname.endswith(_SUFFIXES):
                dist = _distribution(folder, fname)
                if dist:
                    dists.append(dist)
        for name, version in dists:
            key = normalize(name)
            if key != OWN_DISTRIBUTION and key not in seen:
                here.setdefault(key, set()).add(version)
        seen.update(here)
    return tuple(sorted(f"{name}=={v}" for name, versions in seen.items() for v in versions))


# -- the API ---------------------------------------------------------------------


def python_environment(path: str, cache_dir: str | None) -> PythonEnvironment | None:
    """The environment of the first python3 (else python) on `path` (the PATH
    recipes get); None when there is none or it does not run. With a
    cache_dir, starts no process unless the interpreter or its folders changed."""
    try:
        found = _find_interpreter(path)
        if found is None:
            return None
        info = _interpreter_info(path, found, cache_dir)
        if info is None:
            return None
        folders = list(dict.fromkeys(info["path"]))
        before_interpreter = []
        found_dir = os.path.dirname(found)
        for d in path.split(os.pathsep):
            d = os.path.abspath(d) if d else os.getcwd()
            if d == found_dir:
                break
            before_interpreter.append(d)
        watch = [*_checked_paths(found, info), *before_interpreter]
        return PythonEnvironment(
            interpreter=_interpreter_name(info),
            packages=_packages(folders),
            watch=tuple(dict.fromkeys(os.path.abspath(p) for p in watch)),
        )
    except Exception:  # never let the fingerprint break a build
        return None


def _parse(listing: bytes) -> tuple[str | None, dict[str, str]]:
    python = None
    packages: dict[str, list[str]] = {}
    for line in listing.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("python "):
            python = line[len("python ") :].strip()
        elif "==" in line:
            name, _, version = line.partition("==")
            packages.setdefault(name.strip(), []).append(version.strip())
    return python, {name: ", ".join(sorted(vs)) for name, vs in packages.items()}


def changes(old_listing: bytes, new_listing: bytes) -> list[str]:
    """What differs between two listings, in words: changed versions, then
    added and removed packages (each by name), then the interpreter."""
    try:
        old_py, old = _parse(old_listing)
        new_py, new = _parse(new_listing)
    except Exception:
        return []
    lines = [f"{name} {old[name]} -> {new[name]}" for name in sorted(old.keys() & new.keys()) if old[name] != new[name]]
    lines += [f"added: {name} {new[name]}" for name in sorted(new.keys() - old.keys())]
    lines += [f"removed: {name} {old[name]}" for name in sorted(old.keys() - new.keys())]
    if old_py != new_py:
        lines.append(f"python {old_py or 'none'} -> {new_py or 'none'}")
    return lines
