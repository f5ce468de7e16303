"""The Python environment fingerprint: real venvs, real interpreters, real
folders; a distribution is 'installed' by creating its .dist-info folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildsys.keys import environment
from buildsys.keys.environment import PythonEnvironment, changes, python_environment


@pytest.fixture(scope="module")
def venv_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    return root


@pytest.fixture
def venv(tmp_path) -> Path:
    # A fresh venv per test: `--without-pip` takes ~50 ms.
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    return root


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python*/site-packages")
    return found


def install(site: Path, name: str, version: str) -> Path:
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")
    return dist


def bin_path(venv: Path) -> str:
    return str(venv / "bin")


def names(env: PythonEnvironment) -> dict[str, str]:
    return dict(p.split("==", 1) for p in env.packages)


def same(a: str, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def logging_wrapper(folder: Path, target: str, log: Path, *, body: str = "") -> Path:
    """A `python3` that logs each run before running `target`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python3"
    script.write_text(f'#!/bin/sh\necho run >> "{log}"\n{body}exec "{target}" "$@"\n')
    script.chmod(0o755)
    return script


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_upgrade_changes_the_fingerprint_and_says_which_package(venv, tmp_path):
    site = site_packages(venv)
    dist = install(site, "foo", "1.0")
    cache = str(tmp_path / "cache")

    before = python_environment(bin_path(venv), cache)
    assert before is not None
    assert before.interpreter == f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}{sys.abiflags}"
    assert "/" not in before.interpreter
    assert before.packages == ("foo==1.0",)
    assert any(same(w, site) for w in before.watch)
    assert any(same(w, venv / "bin" / "python3") for w in before.watch)
    assert any(same(w, venv / "pyvenv.cfg") for w in before.watch)
    assert all(os.path.isabs(w) for w in before.watch)
    assert len(before.fingerprint()) == 64
    assert before.listing() == f"python {before.interpreter}\nfoo==1.0\n".encode()

    dist.rename(site / "foo-2.0.dist-info")
    after = python_environment(bin_path(venv), cache)
    assert after.packages == ("foo==2.0",)
    assert after.fingerprint() != before.fingerprint()
    assert changes(before.listing(), after.listing()) == ["foo 1.0 -> 2.0"]
    assert changes(after.listing(), after.listing()) == []

    # Back to 1.0: the same fingerprint as before, whatever the cache holds.
    (site / "foo-2.0.dist-info").rename(dist)
    assert python_environment(bin_path(venv), cache).fingerprint() == before.fingerprint()


def test_the_fingerprint_does_not_depend_on_the_cache_or_where_the_venv_is(venv, venv_template, tmp_path):
    install(site_packages(venv), "foo", "1.0")
    install(site_packages(venv_template), "foo", "1.0")
    try:
        a = python_environment(bin_path(venv), str(tmp_path / "cache"))
        b = python_environment(bin_path(venv), None)
        c = python_environment(bin_path(venv_template), None)
        assert a.fingerprint() == b.fingerprint() == c.fingerprint()
        assert a.watch != c.watch
    finally:
        import shutil

        shutil.rmtree(site_packages(venv_template) / "foo-1.0.dist-info")


def test_a_warm_cache_starts_no_process(venv, tmp_path):
    install(site_packages(venv), "foo", "1.0")
    log = tmp_path / "runs.log"
    wrapper = logging_wrapper(tmp_path / "wrap", str(venv / "bin" / "python3"), log)
    path = str(wrapper.parent)
    cache = str(tmp_path / "cache")

    first = python_environment(path, cache)
    assert runs(log) == 1
    assert first.packages == ("foo==1.0",)
    assert any(same(w, wrapper) for w in first.watch)
    for _ in range(5):
        assert python_environment(path, cache) == first
    assert runs(log) == 1

    # Installing something is a change of site-packages: one new probe, then quiet again.
    install(site_packages(venv), "bar", "0.1")
    assert names(python_environment(path, cache)) == {"foo": "1.0", "bar": "0.1"}
    python_environment(path, cache)
    assert runs(log) == 2

    # Another PATH is another entry; the first one stays cached.
    other = str(tmp_path / "elsewhere")
    python_environment(f"{path}{os.pathsep}{other}", cache)
    assert runs(log) == 3
    python_environment(path, cache)
    python_environment(f"{path}{os.pathsep}{other}", cache)
    assert runs(log) == 3

    # Without a cache folder, every call asks the interpreter.
    python_environment(path, None)
    python_environment(path, None)
    assert runs(log) == 5


def test_a_changed_interpreter_is_asked_again(venv, tmp_path):
    log = tmp_path / "runs.log"
    wrapper = logging_wrapper(tmp_path / "wrap", str(venv / "bin" / "python3"), log)
    cache = str(tmp_path / "cache")
    python_environment(str(wrapper.parent), cache)
    # Rewritten in place (as a reinstall does): other size, mtime.
    logging_wrapper(tmp_path / "wrap", str(venv / "bin" / "python3"), log, body=": changed\n")
    python_environment(str(wrapper.parent), cache)
    assert runs(log) == 2


def test_buildsys_and_unrelated_files_do_not_count(venv, tmp_path):
    site = site_packages(venv)
    install(site, "foo", "1.0")
    cache = str(tmp_path / "cache")
    before = python_environment(bin_path(venv), cache)

    install(site, "buildsys", "0.1.0")
    (site / "buildsys.egg-link").write_text("/somewhere\n")
    (site / "foo.py").write_text("x = 1\n")
    (site / "README.txt").write_text("hello\n")
    (site / "__pycache__").mkdir()
    (site / "foo").mkdir()
    (site / "foo" / "__init__.py").write_text("")
    (site / "notes.dist-info.bak").mkdir()
    after = python_environment(bin_path(venv), cache)
    assert after.packages == ("foo==1.0",)
    assert after.fingerprint() == before.fingerprint()


def test_egg_info_forms_and_name_normalization(venv, tmp_path):
    site = site_packages(venv)
    install(site, "Foo_Bar.baz", "1.0")  # an old pip's unescaped name
    install(site, "zope.interface", "6.1")
    (site / "legacy-2.0-py3.11.egg-info").mkdir()  # setup.py install
    (site / "distutils_one-0.3-py3.11.egg-info").write_text("Metadata-Version: 1.0\nName: distutils-one\nVersion: 0.3\n")
    bare = site / "Bare.egg-info"  # setup.py develop / egg_info without a version in the name
    bare.mkdir()
    (bare / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: Bare\nVersion: 0.5.dev0\n\nVersion: not this one\n")
    (site / "unreadable.egg-info").mkdir()  # no PKG-INFO at all
    env = python_environment(bin_path(venv), str(tmp_path / "cache"))
    assert names(env) == {
        "foo-bar-baz": "1.0",
        "zope-interface": "6.1",
        "legacy": "2.0",
        "distutils-one": "0.3",
        "bare": "0.5.dev0",
        "unreadable": "unknown",
    }
    assert list(env.packages) == sorted(env.packages)


def test_pth_folders_count_and_a_vanished_folder_is_skipped(venv, tmp_path):
    site = site_packages(venv)
    project = tmp_path / "project"
    (project / "mylib.egg-info").mkdir(parents=True)
    (project / "mylib.egg-info" / "PKG-INFO").write_text("Name: mylib\nVersion: 0.1\n\n")
    cache = str(tmp_path / "cache")
    assert python_environment(bin_path(venv), cache).packages == ()

    (site / "easy-install.pth").write_text(f"{project}\n")  # a `setup.py develop` install
    env = python_environment(bin_path(venv), cache)
    assert env.packages == ("mylib==0.1",)
    assert any(same(w, project) for w in env.watch)

    (project / "mylib.egg-info" / "PKG-INFO").unlink()
    (project / "mylib.egg-info").rmdir()
    project.rmdir()
    assert python_environment(bin_path(venv), cache).packages == ()


def test_the_probe_ignores_the_callers_pythonpath(venv, tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.mkdir()
    install(extra, "leaked", "1.0")
    monkeypatch.setenv("PYTHONPATH", str(extra))
    env = python_environment(bin_path(venv), None)
    assert env.packages == ()


def test_the_user_site_counts_even_when_created_later(tmp_path, monkeypatch):
    """A recipe gets HOME, so it imports from ~/.local/...; `pip install --user` must show."""
    interpreter = os.path.realpath(sys.executable)
    probe = subprocess.run([interpreter, "-c", "import site, sys; print(site.ENABLE_USER_SITE and sys.prefix == sys.base_prefix)"], capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        pytest.skip("this interpreter has no user site-packages")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PYTHONUSERBASE", raising=False)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(interpreter)
    cache = str(tmp_path / "cache")

    before = python_environment(str(bindir), cache)
    assert before is not None
    user_site = home / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert str(user_site) in before.watch  # watched while absent
    user_site.mkdir(parents=True)
    install(user_site, "mine", "3.0")
    after = python_environment(str(bindir), cache)
    assert "mine==3.0" in after.packages
    assert changes(before.listing(), after.listing()) == ["added: mine 3.0"]


def test_the_system_interpreter(tmp_path):
    env = python_environment(os.environ.get("PATH", os.defpath), str(tmp_path / "cache"))
    assert env is not None
    assert env.packages
    assert "/" not in env.interpreter and "-" in env.interpreter
    assert not any(p.startswith("buildsys==") for p in env.packages)
    assert all(p == p.lower() and "==" in p and "_" not in p.split("==")[0] for p in env.packages)
    # Warm: well under 5 ms.
    start = time.perf_counter()
    for _ in range(20):
        python_environment(os.environ.get("PATH", os.defpath), str(tmp_path / "cache"))
    assert (time.perf_counter() - start) / 20 < 0.05  # generous: CI machines are slow


def test_no_python_on_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "python3").write_text("not executable")  # which() wants an executable
    assert python_environment(str(empty), str(tmp_path / "cache")) is None
    assert python_environment(str(tmp_path / "missing"), None) is None
    assert python_environment("", None) is None


def test_python_is_used_when_there_is_no_python3(venv, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(venv / "bin" / "python3")
    env = python_environment(str(bindir), None)
    assert env is not None and env.interpreter.startswith(sys.implementation.name)


def test_a_broken_interpreter_gives_none_and_is_not_asked_every_time(tmp_path):
    log = tmp_path / "runs.log"
    wrapper = logging_wrapper(tmp_path / "wrap", "/bin/false", log)
    cache = str(tmp_path / "cache")
    assert python_environment(str(wrapper.parent), cache) is None
    assert python_environment(str(wrapper.parent), cache) is None
    assert runs(log) == 1

    # Talking nonsense is as broken as failing.
    logging_wrapper(tmp_path / "wrap", "/bin/echo", log)
    assert python_environment(str(wrapper.parent), cache) is None


def test_a_hanging_interpreter_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "PROBE_TIMEOUT", 0.5)
    log = tmp_path / "runs.log"
    folder = tmp_path / "wrap"
    folder.mkdir()
    script = folder / "python3"
    script.write_text(f'#!/bin/sh\necho run >> "{log}"\nsleep 60\n')
    script.chmod(0o755)
    start = time.monotonic()
    assert python_environment(str(folder), str(tmp_path / "cache")) is None
    assert time.monotonic() - start < 5
    # The failure is remembered for a while...
    assert python_environment(str(folder), str(tmp_path / "cache")) is None
    assert runs(log) == 1
    # ...and then tried again.
    monkeypatch.setattr(environment, "FAILURE_TTL", 0.0)
    python_environment(str(folder), str(tmp_path / "cache"))
    assert runs(log) == 2


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\xff garbage",
        b"[1, 2, 3]",
        b'{"version": 1, "entries": "nope"}',
        b'{"version": 1, "entries": [1, {"PATH": null}]}',
        b'{"version": 99, "entries": []}',
    ],
)
def test_a_corrupt_cache_is_recomputed(venv, tmp_path, content):
    install(site_packages(venv), "foo", "1.0")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "python-env.json").write_bytes(content)
    env = python_environment(bin_path(venv), str(cache))
    assert env is not None and env.packages == ("foo==1.0",)
    assert json.loads((cache / "python-env.json").read_text())["version"] == environment.CACHE_VERSION


def test_a_cache_entry_with_a_bad_answer_is_recomputed(venv, tmp_path):
    install(site_packages(venv), "foo", "1.0")
    cache = tmp_path / "cache"
    good = python_environment(bin_path(venv), str(cache))
    data = json.loads((cache / "python-env.json").read_text())
    data["entries"][0]["info"]["path"] = 42
    (cache / "python-env.json").write_text(json.dumps(data))
    assert python_environment(bin_path(venv), str(cache)) == good


def test_an_unwritable_cache_folder_only_costs_a_probe(venv, tmp_path):
    install(site_packages(venv), "foo", "1.0")
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = python_environment(bin_path(venv), str(blocker / "cache"))  # cannot be created
    assert env is not None and env.packages == ("foo==1.0",)


def test_changes_in_words():
    old = b"python cpython-3.11.7\nnumpy==1.26.4\nsix==1.16.0\nzlib-ng==1\n"
    new = b"python cpython-3.12.1\nnumpy==2.0.0\nrich==13.7.1\nzlib-ng==1\n"
    assert changes(old, new) == [
        "numpy 1.26.4 -> 2.0.0",
        "added: rich 13.7.1",
        "removed: six 1.16.0",
        "python cpython-3.11.7 -> cpython-3.12.1",
    ]
    assert changes(b"", new)[-1] == "python none -> cpython-3.12.1"
    assert changes(b"\xff\xfe junk", b"") == []


def test_a_new_workspace_reuses_the_probe_of_another(tmp_path):
    """The interpreter's answer is cached per user, not per workspace: a fresh
    checkout starts no python3 to key its first build, and still notices a
    changed interpreter."""
    from conftest import Project

    log = tmp_path / "runs.log"
    wrapper = logging_wrapper(tmp_path / "wrap", sys.executable, log)
    env = {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for name in ("a", "b"):
        ws = Project(tmp_path / name)
        ws.write("Batchfile", "out.txt:\n    echo hi > $@\n")
        ws.bb("build", check=0, env=env)
        assert ws.read("out.txt") == "hi\n"
        assert runs(log) == 1, f"workspace {name}"
    assert (tmp_path / "cache" / "bb" / environment.CACHE_FILE).exists()
    assert not (tmp_path / "a" / ".bb" / environment.CACHE_FILE).exists()

    logging_wrapper(tmp_path / "wrap", sys.executable, log, body=": reinstalled\n")
    ws = Project(tmp_path / "c")
    ws.write("Batchfile", "out.txt:\n    echo hi > $@\n")
    ws.bb("build", check=0, env=env)
    assert runs(log) == 2
