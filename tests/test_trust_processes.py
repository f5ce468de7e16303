"""What bb guarantees about processes, through the real `bb` command with real
signals: recipes never outlive the bb that started them (kill -9, SIGTERM,
SIGHUP, Ctrl-C), a build killed at any moment resumes to the same bytes as a
clean build, one builder per workspace (the others wait, or refuse with
--no-wait), nothing is recorded unless its inputs were unchanged while it ran,
and a recipe's background process can neither hold a build nor survive it.

Recipes write their shell's pid ($$, written $$$$ in a Batchfile) and the pids
of the children they start ($!, written $$!) into files under pids/; the
tests poll for up to ORPHAN_GRACE seconds that every one of them is gone (a
supervisor kills them shortly after bb dies). Each test kills, at its end,
whatever it recorded that is still alive: by pid, and only processes whose
working folder is inside the test's own tmp folder."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import localstore
from conftest import BB_CMD, Project

ORPHAN_GRACE = 10.0  # seconds a supervisor may take to kill recipes after bb died


# ---- processes ---------------------------------------------------------------------------


def _state(pid: int) -> str | None:
    """The process state letter from /proc/<pid>/stat, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _state(pid) not in (None, "Z", "X")


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def ours(pid: int, root: Path) -> bool:
    """Alive and working inside `root` (a recycled pid belongs to someone else)."""
    if not alive(pid):
        return False
    cwd = _cwd(pid)
    return cwd is not None and (cwd + "/").startswith(os.path.realpath(root) + "/")


def read_pids(folder: Path) -> list[int]:
    """Every pid written in the files under `folder`."""
    pids = []
    if folder.is_dir():
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                pids.extend(int(w) for w in f.read_text().split() if w.isdigit())
    return pids


def survivors(pids, root: Path, timeout: float = ORPHAN_GRACE) -> list[str]:
    """Poll until none of `pids` is alive (one of ours); what is still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if ours(p, root)]
        if not left or time.monotonic() > deadline:
            return [f"{p} ({_cmdline(p)})" for p in left]
        time.sleep(0.05)


class Running:
    """A `bb` started with Popen, as a shell starts a job: its own process
    group, output to files (nothing a stray process holds can block a read)."""

    def __init__(self, project: Project, args, name: str, logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        env = dict(os.environ)
        env.pop("BB_STORE", None)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                BB_CMD + self.args, cwd=project.root, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, process_group=0,
            )
        self.started = time.monotonic()
        self.ended: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"bb {' '.join(self.args)} did not exit within {timeout:g}s\nstderr:\n{self.stderr}")
        self.ended = time.monotonic()
        return rc

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"bb {' '.join(self.args)} exited {self.proc.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Reaper:
    """Starts bb processes and, at the end of the test, kills whatever is left
    of them and of the recipes' recorded pids."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path
        self.runs: list[Running] = []
        self.count = 0

    def start(self, project: Project, *args, name: str | None = None) -> Running:
        self.count += 1
        run = Running(project, args, name or f"bb{self.count}", self.root / "logs")
        self.runs.append(run)
        return run

    def cleanup(self) -> None:
        for run in self.runs:
            if run.running():
                run.proc.kill()
                run.proc.wait()
        for folder in self.root.rglob("pids"):
            if folder.is_dir():
                for pid in read_pids(folder):
                    if ours(pid, self.root):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass


@pytest.fixture
def reaper(tmp_path):
    r = Reaper(tmp_path)
    yield r
    r.cleanup()


def wait_until(cond, what: str, run: Running | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if run is not None and not run.running():
            pytest.fail(f"bb exited before {what}\n{run.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}" + (f"\nstderr so far:\n{run.stderr}" if run else ""))
        time.sleep(0.02)


def run_bb(project: Project, *args, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """project.bb with a timeout that fails the test (a hang) instead of erroring."""
    try:
        return project.bb(*args, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bb {' '.join(args)} did not finish within {timeout:g}s (blocked?)")


def plan_statuses(project: Project) -> dict[str, str]:
    proc = run_bb(project, "plan", "--json")
    assert proc.returncode == 0, proc.stderr
    return {t["target"]: t["status"] for t in json.loads(proc.stdout)["targets"]}


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def store_leftovers(project: Project) -> list[str]:
    return [str(p) for p in (project.root / ".bb").rglob("*") if ".tmp" in p.name]


# ---- 1. no orphans --------------------------------------------------------------------------

# Two recipes, each a tree: the shell, a background sleep, and an inner shell
# that execs a sleep. Each writes a partial output first, then waits.
TREES = """
    @for n in [a, b]
    $(n).txt:
        echo $$$$ >> pids/$@
        echo partial > $@
        sleep 30 &
        echo $$! >> pids/$@
        sh -c 'echo $$$$ >> pids/$@; exec sleep 30' &
        wait
        echo done >> $@

    @default
    all: a.txt b.txt
"""


def _start_trees(project, reaper) -> tuple[Running, list[int]]:
    project.batchfile(TREES)
    (project.root / "pids").mkdir()
    run = reaper.start(project, "build", "-j2")
    pid_files = [project.root / "pids" / f"{n}.txt" for n in "ab"]
    wait_until(lambda: all(lines(f) >= 3 for f in pid_files), "both recipes to start their children", run)
    pids = read_pids(project.root / "pids")
    assert len(pids) == 6
    assert all(alive(p) for p in pids)
    return run, pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_recipes_die_with_bb(project, reaper, sig):
    """A signal to bb's pid alone (not its group): every recipe process is gone
    shortly after; a catchable signal is a clean stop, like Ctrl-C."""
    run, pids = _start_trees(project, reaper)
    os.kill(run.pid, sig)
    rc = run.wait(timeout=30)
    left = survivors(pids, project.root)
    assert left == [], f"recipe processes outlived bb after {signal.Signals(sig).name}: {left}"
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc in (130, 128 + sig), f"expected exit 130 (or {128 + sig}) after {signal.Signals(sig).name}\n{run.describe()}"
        err = run.stderr
        assert "interrupted" in err.lower(), run.describe()
        assert "Traceback" not in err
        assert not project.exists("a.txt") and not project.exists("b.txt"), "interrupted targets leave no output"
        assert store_leftovers(project) == []
    # nothing unfinished was recorded, and the workspace is free for the next build
    assert plan_statuses(project) == {"a.txt": "would run", "b.txt": "would run"}


# ---- 2. kill at random points, rerun at once ------------------------------------------------

CHAIN, FAN = 8, 10
# Each recipe writes its output in steps, and leaves a quiet background
# process (output redirected: it holds nothing of bb's) that would live 30 s
# if bb did not stop it: a killed build's recipes must not survive it.
RECIPE = """\
    echo $$$$ >> pids/now/$@
    sleep 30 > /dev/null 2>&1 &
    echo $$! >> pids/now/$@
    echo start $@ > $@
    sleep 0.1
    cat $^ >> $@
    sleep 0.05
    echo end $@ >> $@
"""


def pipeline() -> tuple[str, dict[str, list[str]]]:
    """A chain c01..c08 from src.txt, a fan-out f01..f10 from c04 (running
    beside the chain's second half), and all.txt reading the chain's end and
    every fan. Returns the Batchfile and each target's inputs in order."""
    inputs: dict[str, list[str]] = {}
    prev = "src.txt"
    for i in range(1, CHAIN + 1):
        inputs[f"c{i:02d}.txt"] = [prev]
        prev = f"c{i:02d}.txt"
    for j in range(1, FAN + 1):
        inputs[f"f{j:02d}.txt"] = ["c04.txt"]
    inputs["all.txt"] = [prev] + [f"f{j:02d}.txt" for j in range(1, FAN + 1)]
    text = "".join(f"{name}: {' '.join(ins)}\n{RECIPE}\n" for name, ins in inputs.items())
    return text + "@default\neverything: all.txt\n", inputs


def check_recorded_results(project: Project, inputs: dict[str, list[str]], sources: list[bytes]) -> int:
    """Every action result in the store names blobs that are there, and each
    output is exactly what the recipe makes from the inputs that result
    records: nothing half-written or mismatched was ever recorded. (Reads the
    store as its layout says: tests/localstore.py.)"""
    from blake3 import blake3

    store = project.root / ".bb"
    blobs = localstore.blobs(store)
    for digest, data in blobs.items():
        assert blake3(data).hexdigest() == digest, f"corrupt blob {digest}"
    for data in sources:
        blobs[blake3(data).hexdigest()] = data
    checked = 0
    for result in localstore.results(store).values():
        action = result["action"]
        name = action["target"]
        digests = {entry[0]: entry[1] for entry in action["inputs"]}  # [path, digest, ...]
        for out in result["outputs"]:
            assert out["digest"] in blobs, f"result of {name} names a blob the store lacks"
            expected = f"start {name}\n".encode() + b"".join(blobs[digests[i]] for i in inputs[name]) + f"end {name}\n".encode()
            assert blobs[out["digest"]] == expected, f"the store holds a wrong result for {name}:\n{blobs[out['digest']]!r}"
        checked += 1
    return checked


def test_kill_at_random_points_then_rerun(tmp_path, project, reaper):
    """kill -9, SIGTERM and SIGHUP at random moments of a -j4 build, each
    followed at once by the next build; the last one runs to the end."""
    text, inputs = pipeline()
    outputs = list(inputs)
    project.batchfile(text)
    pids = project.root / "pids"
    (pids / "now").mkdir(parents=True)
    source = b"source v0\n"
    sources = [source]
    (project.root / "src.txt").write_bytes(source)

    seed = int(os.environ.get("BB_TRIAL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP] * 4
    rng.shuffle(signals)
    t0 = time.monotonic()
    log = []
    for trial, sig in enumerate(signals):
        delay = rng.uniform(0, 1.5)
        run = reaper.start(project, "build", "-j4", name=f"trial{trial}")
        time.sleep(delay)
        sent = run.running()
        if sent:
            os.kill(run.pid, sig)
        rc = run.wait(timeout=30)
        (pids / "now").rename(pids / f"trial{trial:02d}")  # the pids of this trial's recipes
        (pids / "now").mkdir()
        log.append(f"trial {trial}: {signal.Signals(sig).name if sent else 'no signal'} after {delay:.2f}s -> exit {rc}")
        err = run.stderr
        assert "Traceback" not in err and "internal error" not in err, f"seed {seed}, {log[-1]}\n{run.describe()}"
        last = err.strip().splitlines()[-1] if err.strip() else ""
        finished = rc == 0 or bool(re.fullmatch(r"bb: .* in [0-9.]+s", last))  # the closing summary
        if rc == -sig and sig != signal.SIGKILL:
            # Dying of the signal's default action is acceptable only while bb
            # is still starting (it handles nothing yet), or once it is done
            # and exiting (interpreter finalization restores default
            # handlers): never in between.
            assert finished or "building" not in err, f"seed {seed}, {log[-1]}: bb died of {signal.Signals(sig).name} mid-build instead of stopping like Ctrl-C\n{run.describe()}"
        elif rc != 0:
            expected = {-signal.SIGKILL} if sig == signal.SIGKILL else {130, 128 + sig}
            assert sent and rc in expected, f"seed {seed}, {log[-1]}\n{run.describe()}"
        if finished:
            if rc != 0:
                log[-1] += " (after the build had finished)"
            # new source bytes, so that the next trials have work to interrupt
            source = f"source v{trial + 1}\n".encode()
            sources.append(source)
            (project.root / "src.txt").write_bytes(source)
    print(f"seed {seed}\n" + "\n".join(log))

    project.build("-j4")
    print(f"{len(signals)} trials and the final rerun: {time.monotonic() - t0:.1f}s")

    clean = Project(tmp_path / "clean")
    clean.root.mkdir()
    clean.batchfile(text)
    (clean.root / "pids" / "now").mkdir(parents=True)
    (clean.root / "src.txt").write_bytes(source)
    clean.build("-j4")
    for name in outputs:
        assert (project.root / name).read_bytes() == (clean.root / name).read_bytes(), f"seed {seed}: {name} differs from a clean build"

    run_bb(project, "cache", "verify").check_returncode()
    checked = check_recorded_results(project, inputs, sources)
    assert checked >= len(outputs)
    assert plan_statuses(project) == {n: "cached" for n in outputs}
    by_trial = {f.name: read_pids(f) for f in sorted(pids.iterdir()) if f.name != "now"}
    left = survivors([p for ps in by_trial.values() for p in ps], tmp_path)
    if left:
        where = {name: [p for p in ps if ours(p, tmp_path)] for name, ps in by_trial.items()}
        pytest.fail(
            f"seed {seed}: {len(left)} recipe processes of earlier builds are still alive, e.g. {left[0]}\n"
            + "\n".join(f"{name} ({log[int(name[5:])]}): {len(ps)} alive" for name, ps in where.items() if ps)
        )


# ---- 3. one builder per workspace -------------------------------------------------------------

SHARED = """
    @for n in [a, b, c]
    $(n).txt: src.txt
        echo x >> runs/$@.count
        echo $$$$ >> pids/$@
        sleep 0.3
        echo $(n) > $@
        cat $< >> $@

    d.txt: a.txt b.txt c.txt
        echo x >> runs/$@.count
        echo $$$$ >> pids/$@
        sleep 0.3
        cat $^ > $@

    @default
    all: d.txt
"""
SHARED_OUTPUTS = ["a.txt", "b.txt", "c.txt", "d.txt"]


def _shared_project(root: Path) -> Project:
    p = Project(root)
    root.mkdir(exist_ok=True)
    p.batchfile(SHARED)
    p.write("src.txt", "shared source\n")
    (root / "runs").mkdir()
    (root / "pids").mkdir()
    return p


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_builds_in_one_checkout_run_each_recipe_once(tmp_path, reaper, n):
    project = _shared_project(tmp_path / "proj")
    runs = [reaper.start(project, "build", "-j2", name=f"b{i}") for i in range(n)]
    codes = [r.wait(timeout=90) for r in runs]
    for r, rc in zip(runs, codes):
        assert rc == 0, r.describe()
    counts = {name: lines(project.root / "runs" / f"{name}.count") for name in SHARED_OUTPUTS}
    assert counts == {name: 1 for name in SHARED_OUTPUTS}, f"each recipe runs exactly once: {counts}"
    waited = [r for r in runs if "waiting" in r.stderr.lower()]
    assert len(waited) >= n - 1, "the later builds say they wait for another bb:\n" + "\n".join(r.describe() for r in runs)

    clean = _shared_project(tmp_path / "clean")
    clean.build("-j2")
    for name in SHARED_OUTPUTS:
        assert (project.root / name).read_bytes() == (clean.root / name).read_bytes(), name
    run_bb(project, "cache", "verify").check_returncode()
    assert store_leftovers(project) == []
    assert survivors(read_pids(project.root / "pids"), tmp_path) == []


HOLD = """
    quick.txt:
        echo quick > $@

    slow.txt: quick.txt
        echo x >> runs/$@.count
        echo $$$$ >> pids/$@
        echo started > started
        i=0; while [ ! -e release ] && [ $$i -lt 600 ]; do sleep 0.05; i=$$((i+1)); done
        cat $< > $@
        echo slow >> $@

    @default
    all: slow.txt
"""


def test_no_wait_refuses_and_read_only_commands_work_while_a_build_runs(project, reaper):
    project.batchfile(HOLD)
    (project.root / "runs").mkdir()
    (project.root / "pids").mkdir()
    project.build("quick.txt")
    holder = reaper.start(project, "build", "-j2")
    wait_until(lambda: project.exists("started"), "the holding build's recipe to start", holder)
    try:
        t0 = time.monotonic()
        refused = run_bb(project, "build", "--no-wait", timeout=15)
        print(f"bb build --no-wait answered in {time.monotonic() - t0:.2f}s")
        assert refused.returncode == 1, f"exit {refused.returncode}\nstdout:\n{refused.stdout}\nstderr:\n{refused.stderr}"
        assert "another" in refused.stderr.lower() and "bb" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert lines(project.root / "runs" / "slow.txt.count") == 1, "the refused build ran nothing"
        assert holder.running(), "the refused build did not disturb the running one"

        for args in (("plan",), ("list",), ("why", "slow.txt"), ("why", "quick.txt"), ("log", "quick.txt")):
            proc = run_bb(project, *args, timeout=15)
            assert proc.returncode == 0, f"bb {' '.join(args)} while a build runs: exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert holder.running()
    finally:
        (project.root / "release").write_text("")
    assert holder.wait(timeout=30) == 0, holder.describe()
    assert project.read("slow.txt") == "quick\nslow\n"
    assert lines(project.root / "runs" / "slow.txt.count") == 1


# ---- 4. inputs that change while a build runs -----------------------------------------------

ORIGINAL = "original input\n"
EDITED = "EDITED while the recipe ran, a different length\n"


def test_input_edited_while_its_recipe_runs_is_not_recorded(project, reaper):
    project.batchfile("""
        out.txt: in.txt
            echo started > started
            sleep 1
            cat in.txt > out.txt
    """)
    project.write("in.txt", ORIGINAL)
    run = reaper.start(project, "build")
    wait_until(lambda: project.exists("started"), "the recipe to start", run)
    project.write("in.txt", EDITED)
    rc = run.wait(timeout=30)
    err = run.stderr
    print(f"build with in.txt edited during its recipe: exit {rc}\n{err}")
    assert "Traceback" not in err
    if rc != 0:
        assert rc == 1, run.describe()
        assert "changed" in err.lower() and "in.txt" in err, "the failure says the input changed while the recipe ran\n" + run.describe()
        assert not project.exists("out.txt"), "a failed target leaves no output"
    # whatever the recipe read, no result was recorded for it
    assert plan_statuses(project) == {"out.txt": "would run"}, "a result was recorded although in.txt changed while the recipe ran"

    project.write("in.txt", ORIGINAL)
    why = run_bb(project, "why", "out.txt")
    assert why.returncode == 0, why.stderr
    assert "up to date" not in why.stdout, f"bb why claims out.txt is up to date although it never ran on these bytes:\n{why.stdout}"
    report = project.build()
    assert report == {"out.txt": "built"}
    assert project.read("out.txt") == ORIGINAL
    why = run_bb(project, "why", "out.txt")
    assert "up to date" in why.stdout, why.stdout
    assert project.build() == {"out.txt": "cached"}
    assert project.read("out.txt") == ORIGINAL


def test_input_edited_after_its_reader_ran_is_rebuilt_next_time(project, reaper):
    project.batchfile("""
        a.txt: a.in
            cat $< > $@

        b.txt: a.txt
            echo started > b.started
            sleep 1.5
            cat $< > $@

        @default
        all: b.txt
    """)
    project.write("a.in", "one\n")
    run = reaper.start(project, "build", "-j2")
    wait_until(lambda: project.exists("b.started"), "b.txt's recipe to start", run)
    assert project.read("a.txt") == "one\n"
    project.write("a.in", "two, edited during the build\n")
    rc = run.wait(timeout=30)
    print(f"build with a.in edited after a.txt was made: exit {rc}")
    assert rc in (0, 1), run.describe()
    assert "Traceback" not in run.stderr

    why = run_bb(project, "why", "a.txt")
    assert why.returncode == 0, why.stderr
    assert "up to date" not in why.stdout, f"bb why claims a.txt is up to date although a.in changed:\n{why.stdout}"
    report = project.build()
    assert report.get("a.txt") == "built", report
    assert project.read("a.txt") == "two, edited during the build\n"
    assert project.read("b.txt") == "two, edited during the build\n"


# ---- 5. a background process holding the recipe's output ------------------------------------


def test_background_process_holding_stdout_does_not_hold_the_build(project, reaper):
    project.batchfile("""
        bg.txt:
            echo $$$$ >> pids/$@
            sleep 30 &
            echo $$! >> pids/$@
            echo done > $@

        after.txt: bg.txt
            cat $< > $@
    """)
    (project.root / "pids").mkdir()
    t0 = time.monotonic()
    proc = run_bb(project, "build", "after.txt", timeout=20)
    print(f"build with a background process holding stdout: {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr
    assert project.read("after.txt") == "done\n"
    pids = read_pids(project.root / "pids")
    assert len(pids) == 2
    assert survivors(pids, project.root) == [], "the recipe's background process outlived the build"


# ---- 6. Ctrl-C with recipes that ignore SIGTERM --------------------------------------------


def test_ctrl_c_stops_recipes_that_ignore_sigterm(project, reaper):
    project.batchfile("""
        @for n in [a, b, c, d]
        $(n).txt:
            trap '' TERM
            echo $$$$ >> pids/$@
            sleep 60 &
            echo $$! >> pids/$@
            wait
            echo $(n) > $@

        @default
        all: a.txt b.txt c.txt d.txt
    """)
    (project.root / "pids").mkdir()
    run = reaper.start(project, "build", "-j4")
    pid_files = [project.root / "pids" / f"{n}.txt" for n in "abcd"]
    wait_until(lambda: all(lines(f) >= 2 for f in pid_files), "the four recipes to start", run)
    pids = read_pids(project.root / "pids")
    assert len(pids) == 8
    t0 = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C sends: the terminal's foreground group
    rc = run.wait(timeout=40)
    took = time.monotonic() - t0
    print(f"Ctrl-C with 4 recipes ignoring SIGTERM: bb exited {rc} after {took:.1f}s")
    left = survivors(pids, project.root)
    assert left == [], f"recipes ignoring SIGTERM survived Ctrl-C: {left}"
    assert rc == 130, run.describe()
    assert "interrupted" in run.stderr.lower()
    assert took < 15, f"stopping the recipes took {took:.1f}s: they should be killed in parallel after one grace period"
    assert not any(project.exists(f"{n}.txt") for n in "abcd")
    assert plan_statuses(project) == {f"{n}.txt": "would run" for n in "abcd"}
