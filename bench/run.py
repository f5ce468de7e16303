#!/usr/bin/env python3
"""Benchmark bb against GNU make and doit.

    python bench/run.py                 # the full suite (~15 min on 2 cores)
    python bench/run.py --quick         # N <= 1000, 400 MB of hashing (< 2 min)
    python bench/run.py --workdir bench/work --workdir /dev/shm/bb-bench

Prints a table per section and writes bench/RESULTS.md (and the raw numbers
to <first workdir>/results.json). See bench/README.md for what is measured.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gen  # noqa: E402

BIN = os.path.dirname(sys.executable)  # where bb and doit are run from: the bench's venv (install()), unless --in-place
TOOLS = ("make", "doit", "bb", "bb-for")  # bb-for: the fan-out written with @for (the chain has one style)


# ---- running a command -----------------------------------------------------------


class Run:
    """One timed command: wall seconds, peak RSS of the process tree (KiB), exit code, output."""

    def __init__(self, seconds, maxrss_kb, rc, output, timed_out=False):
        self.seconds, self.maxrss_kb, self.rc, self.output, self.timed_out = seconds, maxrss_kb, rc, output, timed_out


def bench_env() -> dict:
    """The environment every measured command sees: bytecode may be written
    (PYTHONDONTWRITEBYTECODE would make bb recompile itself on every start)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("BB_STORE", None)
    env["LC_ALL"] = "C"  # the same glob order and messages for every tool
    return env


ENV = bench_env()


TIME = "/usr/bin/time"  # GNU time: the peak RSS of the tool's own process tree
WRAPPER_OVERHEAD = [0.0]
# One file, rewritten by every run (on tmpfs when there is one), so that the
# wrapper's cost is the same for every run and for calibrate().
RSS_FILE = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(), f"bb-bench-rss.{os.getpid()}")


@atexit.register
def _remove_rss_file() -> None:
    try:
        os.unlink(RSS_FILE)
    except OSError:
        pass  # seconds /usr/bin/time adds to a run, measured once and subtracted


def run(cmd: list[str], cwd: str, log: str, timeout: float | None = None) -> Run:
    """time.perf_counter around the process, run under `/usr/bin/time -f %M`.

    Peak RSS needs the wrapper: a child forked from this Python process
    inherits its ~20 MiB high-water mark at exec, so wait4/RUSAGE_CHILDREN
    would never report less. The wrapper's own cost (about a millisecond,
    measured by calibrate()) is subtracted from the time."""
    rss_file = RSS_FILE
    wrapped = [TIME, "-f", "%M", "-o", rss_file, *cmd] if os.path.exists(TIME) else cmd
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        fired, reaped = threading.Event(), threading.Event()
        timer = None
        if timeout:
            def stop():
                fired.set()
                _signal_group(proc.pid, signal.SIGINT)  # bb and doit save their state on ^C
                if not reaped.wait(20):
                    _signal_group(proc.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, stop)
            timer.daemon = True
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0 - WRAPPER_OVERHEAD[0]
        reaped.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timer is not None:
            timer.cancel()
    with open(log, "rb") as f:
        output = f.read().decode("utf-8", "replace")
    maxrss = usage.ru_maxrss
    if wrapped is not cmd:
        try:
            with open(rss_file) as f:
                text = f.read().split()
            maxrss = int(text[-1])  # GNU time puts "Command exited with non-zero status N" first
        except (OSError, ValueError, IndexError):
            pass
    return Run(max(seconds, 0.0), maxrss, proc.returncode, output, fired.is_set())


def calibrate(folder: str) -> None:
    """Measure what the /usr/bin/time wrapper adds to a run (median of 30 pairs)."""
    if not os.path.exists(TIME):
        return
    log = RSS_FILE
    direct, wrapped = [], []
    for _ in range(30):
        t0 = time.perf_counter()
        subprocess.run(["true"], env=ENV)
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([TIME, "-f", "%M", "-o", log, "true"], env=ENV)
        wrapped.append(time.perf_counter() - t0)
    WRAPPER_OVERHEAD[0] = max(0.0, statistics.median(wrapped) - statistics.median(direct))


def _load() -> float:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return -1.0


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)  # the group of the one process this script started
    except (ProcessLookupError, PermissionError):
        pass


def tool_cmd(tool: str, jobs: int, extra=()) -> list[str]:
    if tool == "make":
        return ["make", f"-j{jobs}", *extra]
    if tool == "doit":
        cmd = [os.path.join(BIN, "doit")]
        if ARGS.doit_backend:
            cmd.append(f"--backend={ARGS.doit_backend}")
        return cmd + (["-n", str(jobs)] if jobs > 1 else []) + list(extra)
    return [os.path.join(BIN, "bb"), "build", "-j", str(jobs), *extra]


def tasks_ran(tool: str, output: str) -> int | None:
    """How many recipes ran, read from the tool's own output."""
    if tool == "make":
        return sum(1 for line in output.splitlines() if line.startswith("cat "))
    if tool == "doit":
        return sum(1 for line in output.splitlines() if line.startswith(". "))
    m = re.search(r"(\d+) built", output)
    if m:
        return int(m.group(1))
    return 0 if re.search(r"bb: .*(cached|nothing to do)", output) else None


def clean(folder: str, tool: str) -> None:
    for sub in ("out",):
        path = os.path.join(folder, sub)
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
    for name in ("final.txt",):
        if os.path.exists(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))
    if tool.startswith("bb"):
        shutil.rmtree(os.path.join(folder, ".bb"), ignore_errors=True)
    if tool == "doit":
        for name in os.listdir(folder):
            if name.startswith(".doit.db"):
                os.unlink(os.path.join(folder, name))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return "<missing>"


# ---- pipelines ---------------------------------------------------------------------


class Pipeline:
    """One shape and size, one folder per tool, and what its final output must hold."""

    def __init__(self, root: str, shape: str, n: int, tools: list[str]):
        self.shape, self.n = shape, n
        self.root = os.path.join(root, f"{shape}-{n}")
        self.tools = [t for t in tools if not (t == "bb-for" and (shape == "chain" or n > ARGS.for_max_n))]
        self.src = "v0"
        self.leaf = "v0"  # tail.txt (chain) or in/LEAF.txt (fan-out)
        self.leaf_index = max(1, n // 2)
        self.jobs = 1 if shape == "chain" else ARGS.jobs

    def folder(self, tool: str) -> str:
        return os.path.join(self.root, tool)

    def generate(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for tool in self.tools:
            style = "for" if tool == "bb-for" else "plain"
            gen.generate(self.folder(tool), "bb" if tool.startswith("bb") else tool, self.shape, self.n, style)
        os.makedirs(os.path.join(self.root, "logs"), exist_ok=True)

    def expected(self) -> str:
        src = f"source {self.src}\n"
        if self.shape == "chain":
            return src + f"tail {self.leaf}\n"
        lines = []
        for i in sorted(range(1, self.n + 1), key=lambda i: f"out/t{i}.txt"):
            v = self.leaf if i == self.leaf_index else "v0"
            lines.append(src + f"leaf {i} {v}\n")
        return "".join(lines)

    def check(self, tool: str) -> bool:
        return _read(os.path.join(self.folder(tool), gen.final_output(self.shape, self.n))) == self.expected()

    def set_src(self, tool: str, version: str) -> None:
        _write(os.path.join(self.folder(tool), "src.txt"), f"source {version}\n")

    def set_leaf(self, tool: str, version: str) -> None:
        if self.shape == "chain":
            _write(os.path.join(self.folder(tool), "tail.txt"), f"tail {version}\n")
        else:
            _write(os.path.join(self.folder(tool), "in", f"{self.leaf_index}.txt"), f"leaf {self.leaf_index} {version}\n")

    def touch_src(self, tool: str) -> None:
        os.utime(os.path.join(self.folder(tool), "src.txt"))


def recover_bb(p: Pipeline, tool: str) -> None:
    """After a timed-out bb build, reach the built state without the slow path:
    build the targets in batches of a few hundred (untimed), then the rest."""
    folder = p.folder(tool)
    log = os.path.join(p.root, "logs", f"{tool}-recover.log")
    names = [f"out/t{i}.txt" for i in range(1, p.n + 1)]
    for i in range(0, len(names), 250):
        run(tool_cmd(tool, p.jobs, ["-q", *names[i : i + 250]]), folder, log)
    run(tool_cmd(tool, p.jobs, ["-q"]), folder, log)


def measure_pipeline(p: Pipeline, results: list, where: str) -> None:
    p.generate()
    # A Batchfile read within a timestamp tick of being written is trusted by
    # no cache (bb's graph cache, its no-op stamp): a user does not build
    # within a second of saving it, so the first build must not either.
    time.sleep(2.5)
    state = {t: "ok" for t in p.tools}  # "ok" or why later scenarios are skipped
    big = p.n > ARGS.extras_max_n

    def one(scenario: str, *, prepare=None, expect_ran=None, repeat: int = 1, heavy=False):
        """The scenario for every tool, its samples taken in rounds (make,
        doit, bb, make, doit, bb...): the machine's speed drifts over
        minutes, and a drift then moves every tool's median alike instead of
        the ratios."""
        rows, samples, rss = {}, {}, {}
        for tool in p.tools:
            rows[tool] = {"where": where, "section": "pipeline", "shape": p.shape, "n": p.n, "scenario": scenario, "tool": tool, "jobs": p.jobs}
            samples[tool], rss[tool] = [], []
            if heavy and state[tool] != "ok":
                rows[tool].update(skipped=state[tool], load=_load())
        going = [t for t in p.tools if "skipped" not in rows[t]]
        for k in range(repeat):
            for tool in list(going):
                row = rows[tool]
                if k == 0:
                    row["load"] = _load()  # just before the tool's first sample
                if prepare:
                    prepare(tool)
                r = run(tool_cmd(tool, p.jobs), p.folder(tool), os.path.join(p.root, "logs", f"{tool}-{scenario.replace(' ', '_')}-{k}.log"), ARGS.timeout)
                samples[tool].append(r.seconds)
                rss[tool].append(r.maxrss_kb)
                if "ran" not in row:
                    row["ran"] = tasks_ran(tool.split("-")[0], r.output)
                if r.timed_out:
                    row["timed_out"] = True
                    going.remove(tool)
                elif r.rc != 0 or not p.check(tool):
                    row["error"] = f"exit {r.rc}; final output {'ok' if p.check(tool) else 'WRONG'}; " + " | ".join(r.output.strip().splitlines()[-3:])[:300]
                    going.remove(tool)
        for tool in p.tools:
            row = rows[tool]
            results.append(row)
            if "skipped" in row:
                print(f"  {scenario:<22} {tool:<7} skipped: {state[tool]}", flush=True)
                continue
            timed_out, ok = row.pop("timed_out", False), "error" not in row
            row.update(seconds=statistics.median(samples[tool]), samples=[round(x, 4) for x in samples[tool]], maxrss_kb=max(rss[tool]), ok=ok and not timed_out)
            if expect_ran is not None:
                row["expected_ran"] = expect_ran
            if timed_out:
                row.update(timed_out=True, seconds=None)
                state[tool] = f"'{scenario}' did not finish in {ARGS.timeout:g}s"
                if tool.startswith("bb"):
                    recover_bb(p, tool)
                    row["note"] = "timed out; state recovered by building in batches of 250 (untimed)"
                else:
                    run(tool_cmd(tool, p.jobs), p.folder(tool), os.path.join(p.root, "logs", f"{tool}-recover.log"))
            shown = "TIMEOUT" if timed_out else f"{row['seconds']:.3f}s"
            print(f"  {scenario:<22} {tool:<7} {shown:>10}  ran {row['ran']!s:>6}  {max(rss[tool]) / 1024:6.1f} MiB" + ("" if ok or timed_out else f"  ERROR {row.get('error')}"), flush=True)

    n_all = p.n + (1 if p.shape == "fanout" else 0)
    n_leaf = 1 if p.shape == "chain" else 2
    print(f"\n{p.shape} N={p.n} (-j{p.jobs}) in {p.root}", flush=True)
    for tool in p.tools:
        clean(p.folder(tool), tool)
    # A full build is one sample per run above --full-repeat-max-n (minutes at
    # 10,000 tasks); below, the median of --full-repeat, each from nothing.
    full_repeat = ARGS.full_repeat if p.n <= ARGS.full_repeat_max_n else 1
    one("full build", expect_ran=n_all, heavy=True, repeat=full_repeat, prepare=(lambda t: clean(p.folder(t), t)) if full_repeat > 1 else None)
    one("no-op (1st)", expect_ran=0)
    one("no-op", expect_ran=0, repeat=ARGS.repeat)
    # Each sample edits the leaf anew (v1, v2, v1...): a one-input change is
    # as short as a no-op is, and as noisy, so it is a median too.
    edits: dict[str, int] = {}

    def edit_leaf(tool: str) -> None:
        edits[tool] = edits.get(tool, 0) + 1
        p.leaf = f"v{2 - edits[tool] % 2}"
        p.set_leaf(tool, p.leaf)

    one("leaf change", prepare=edit_leaf, expect_ran=n_leaf, repeat=ARGS.repeat)
    if not big:
        one("touch source", prepare=p.touch_src, expect_ran=None)
    p.src = "v1"
    one("source change", prepare=lambda t: p.set_src(t, "v1"), expect_ran=n_all, heavy=True)
    if not big:
        p.src = "v0"
        one("revert source", prepare=lambda t: p.set_src(t, "v0"), expect_ran=None)


# ---- planning a big graph ------------------------------------------------------------


def measure_plan(root: str, results: list, where: str) -> None:
    n = ARGS.plan_n
    forms = ["for"] + (["plain"] if ARGS.plan_plain else [])
    print(f"\nplan: fan-out of {n} targets + a join ({', '.join(forms)})", flush=True)
    for form in forms:
        folder = os.path.join(root, "plan", form)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, "out"))
        _write(os.path.join(folder, "src.txt"), "source v0\n")
        _write(os.path.join(folder, "Batchfile"), gen.batchfile("fanout", n, form, leaf_inputs=False))
        size = os.path.getsize(os.path.join(folder, "Batchfile"))
        for attempt in ("fresh (no parse cache)", "second run"):
            if attempt.startswith("fresh"):
                shutil.rmtree(os.path.join(folder, ".bb"), ignore_errors=True)
            r = run([os.path.join(BIN, "bb"), "plan"], folder, os.path.join(root, "plan", f"{form}-{attempt.split()[0]}.log"), ARGS.plan_timeout)
            m = re.search(r"bb: (\d+) to run", r.output)
            row = {"where": where, "section": "plan", "form": form, "n": n, "batchfile_bytes": size, "scenario": attempt,
                   "seconds": None if r.timed_out else r.seconds, "maxrss_kb": r.maxrss_kb, "ok": r.rc == 0 and not r.timed_out,
                   "to_run": int(m.group(1)) if m else None}
            if r.rc != 0:
                row["error"] = " | ".join(r.output.strip().splitlines()[-3:])[:300]
            results.append(row)
            shown = "TIMEOUT" if r.timed_out else f"{r.seconds:.2f}s"
            print(f"  {form:<6} {attempt:<24} {shown:>9}  {r.maxrss_kb / 1024:7.1f} MiB  to run: {row['to_run']}", flush=True)
        if not ARGS.keep:
            shutil.rmtree(folder, ignore_errors=True)


# ---- hashing big inputs ------------------------------------------------------------------


def measure_hash(root: str, results: list, where: str) -> None:
    total = int(ARGS.hash_gb * (1 << 30))
    files = ARGS.hash_files
    each = total // files
    folder = os.path.join(root, "hash")
    data = os.path.join(folder, "data")
    names = [f"data/f{i}.bin" for i in range(1, files + 1)]
    print(f"\nhashing: {files} files of {each / (1 << 20):.0f} MiB in {folder}", flush=True)
    os.makedirs(data, exist_ok=True)
    fresh = False
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path) and os.path.getsize(path) == each:
            continue
        fresh = True
        chunk = 1 << 24
        with open(path, "wb") as f:
            left = each
            while left:
                f.write(os.urandom(min(chunk, left)))
                left -= min(chunk, left)
    for name in os.listdir(data):
        if f"data/{name}" not in names:
            os.unlink(os.path.join(data, name))
    if fresh:
        time.sleep(2.5)  # bb's stat cache does not trust files modified in the last 2 s
    _write(os.path.join(folder, "Batchfile"), "# generated by bench/run.py\ndigest.txt: " + " ".join(names) + "\n    ls -l $^ > $@\n")
    logs = os.path.join(folder, "logs")
    os.makedirs(logs, exist_ok=True)

    def row(scenario, tool, r: Run, samples=None, ok=True, reads_all=True):
        rec = {"where": where, "section": "hash", "scenario": scenario, "tool": tool, "bytes": each * files, "reads_all": reads_all,
               "seconds": r.seconds if samples is None else statistics.median(samples), "maxrss_kb": r.maxrss_kb, "ok": ok and r.rc == 0}
        if samples:
            rec["samples"] = [round(s, 4) for s in samples]
        if r.rc != 0:
            rec["error"] = " | ".join(r.output.strip().splitlines()[-3:])[:300]
        results.append(rec)
        gbs = f"{each * files / rec['seconds'] / 1e9:6.2f} GB/s" if reads_all else " " * 11
        print(f"  {scenario:<38} {tool:<20} {rec['seconds']:8.3f}s  {gbs}  {r.maxrss_kb / 1024:7.1f} MiB", flush=True)

    paths = [os.path.join(folder, n) for n in names]
    row("read every byte (warms page cache)", "cat > /dev/null", run(["sh", "-c", 'cat "$@" > /dev/null', "sh", *paths], folder, os.path.join(logs, "cat.log")))
    bb = [os.path.join(BIN, "bb"), "build", "-j", "1"]
    shutil.rmtree(os.path.join(folder, ".bb"), ignore_errors=True)
    if os.path.exists(os.path.join(folder, "digest.txt")):
        os.unlink(os.path.join(folder, "digest.txt"))
    r = run(bb, folder, os.path.join(logs, "bb-first.log"))
    row("bb build, first run (hash all)", "bb", r, ok=tasks_ran("bb", r.output) == 1)
    samples, last = [], None
    for k in range(ARGS.repeat):
        last = run(bb, folder, os.path.join(logs, f"bb-noop-{k}.log"))
        samples.append(last.seconds)
    row(f"bb no-op (median of {ARGS.repeat})", "bb", last, samples, ok=tasks_ran("bb", last.output) == 0, reads_all=False)
    os.utime(paths[0])
    time.sleep(0.01)
    r = run(bb, folder, os.path.join(logs, "bb-touch.log"))
    row("bb after touching 1 input (same bytes)", "bb", r, ok=tasks_ran("bb", r.output) == 0, reads_all=False)
    py = [sys.executable, "-c", HASH_SNIPPET]
    row("blake3, 1 thread, mmap (as bb)", "python blake3", run(py + ["1", *paths], folder, os.path.join(logs, "b3-1.log")))
    row("blake3, all cores, mmap", "python blake3 AUTO", run(py + ["auto", *paths], folder, os.path.join(logs, "b3-auto.log")))
    row("blake3, 1 thread, 4 MiB reads", "python blake3 read()", run(py + ["read", *paths], folder, os.path.join(logs, "b3-read.log")))
    row("sha256sum (reference)", "sha256sum", run(["sha256sum", *paths], folder, os.path.join(logs, "sha256sum.log")))
    if not ARGS.keep:
        shutil.rmtree(data, ignore_errors=True)


HASH_SNIPPET = r"""
import sys
from blake3 import blake3
mode, paths = sys.argv[1], sys.argv[2:]
for p in paths:
    if mode == "read":
        h = blake3()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    else:
        h = blake3(max_threads=blake3.AUTO if mode == "auto" else 1)
        h.update_mmap(p)
    print(h.hexdigest(), p)
"""


# ---- start-up floor ---------------------------------------------------------------------


def measure_startup(results: list) -> None:
    """What starting each program costs here, before it does any work."""
    py = os.path.join(BIN, "python")
    cases = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -S -c pass (no site-packages)", [py, "-S", "-c", "pass"]),
        ("bb --version", [os.path.join(BIN, "bb"), "--version"]),
        ("doit --version", [os.path.join(BIN, "doit"), "--version"]),
        ("make --version", ["make", "--version"]),
    ]
    folder = ARGS.workdirs[0]
    log = os.path.join(folder, "startup.log")
    print("\nstart-up (median of 10)", flush=True)
    for label, cmd in cases:
        samples, rss = [], 0
        for _ in range(10):
            r = run(cmd, folder, log)
            samples.append(r.seconds)
            rss = max(rss, r.maxrss_kb)
        results.append({"where": "", "section": "startup", "what": label, "seconds": statistics.median(samples), "maxrss_kb": rss, "ok": r.rc == 0})
        print(f"  {label:<38} {statistics.median(samples) * 1000:7.1f} ms  {rss / 1024:6.1f} MiB", flush=True)
    # what site-packages' .pth files import at every Python start
    out = subprocess.run([py, "-X", "importtime", "-c", "pass"], env=ENV, capture_output=True, text=True).stderr
    heavy = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ((?:  )?)(\S.*)$", line)  # top level, or one level down
        if m and int(m.group(1)) > 3000:
            heavy.append(f"{'  in it: ' if m.group(2) else ''}{m.group(3)} {int(m.group(1)) / 1000:.0f} ms")
    results.append({"where": "", "section": "startup-imports", "imports": heavy})
    os.unlink(log)


def _nest(imports: list[str]) -> list[str]:
    """["  in it: a 14 ms", "site 36 ms"] -> ["site 36 ms (of which a 14 ms)"]: -X importtime lists children first."""
    out, children = [], []
    for item in imports:
        if item.startswith("  in it: "):
            children.append(item[len("  in it: "):])
        else:
            out.append(item + (f" (of which {', '.join(children)})" if children else ""))
            children = []
    return out


def startup_table(rows) -> list[str]:
    rows_ = [r for r in rows if r["section"] == "startup"]
    if not rows_:
        return []
    out = ["| command | time (median of 10) | peak RSS |", "|---|---:|---:|"]
    out += [f"| `{r['what']}` | {r['seconds'] * 1000:.1f} ms | {r['maxrss_kb'] / 1024:.1f} MiB |" for r in rows_]
    imports = next((r["imports"] for r in rows if r["section"] == "startup-imports"), [])
    if imports:
        out += ["", "What a bare `python -c pass` imports here (cumulative, from `-X importtime`; `site` runs the `.pth` files in "
                "site-packages): "
                + "; ".join(_nest(imports)) + "."]
    return out


# ---- the machine ---------------------------------------------------------------------------


def _out(cmd, cwd=None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def code_state() -> str:
    """git HEAD, and a digest of buildsys/ as it is on disk (others may be editing it)."""
    h = hashlib.sha256()
    pkg = os.path.join(REPO, "buildsys")
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".lark")):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(name.encode() + f.read())
    head = _out(["git", "rev-parse", "--short", "HEAD"], REPO)
    dirty = _out(["git", "status", "--porcelain", "--", "buildsys", "grammar"], REPO)
    return f"{head}{' + uncommitted changes' if dirty else ''} (buildsys sha256 {h.hexdigest()[:12]})"


def machine(workdirs: list[str]) -> dict:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, StopIteration):
        pass
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    disks = {}
    for w in workdirs:
        line = _out(["df", "-hT", w]).splitlines()[-1:]
        disks[w] = line[0] if line else "?"
    try:
        doit_db = "dbm: " + next(m for m in ("dbm.gnu", "dbm.ndbm", "dbm.dumb") if _importable(m))
    except StopIteration:
        doit_db = "?"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory": mem,
        "disks": disks,
        "python": platform.python_version(),
        "bin": BIN,
        "bb": _out([os.path.join(BIN, "bb"), "--version"]),
        "bb_code": code_state(),
        "make": _out(["make", "--version"]).splitlines()[0] if shutil.which("make") else "missing",
        "doit": _out([os.path.join(BIN, "doit"), "--version"]).splitlines()[0] if os.path.exists(os.path.join(BIN, "doit")) else "missing",
        "doit_backend": ARGS.doit_backend or doit_db,
        "sha256sum": _out(["sha256sum", "--version"]).splitlines()[0],
        "loadavg_start": " ".join(_read("/proc/loadavg").split()[:3]),
    }


def _importable(mod: str) -> bool:
    import importlib

    try:
        importlib.import_module(mod)
        return True
    except ImportError:
        return False


def install() -> None:
    """bb (from this checkout) and doit in a virtual environment of their
    own, installed as a user installs them: not editable (an editable
    install's import hook costs every start), and without whatever .pth
    files this machine's own site-packages carries. BIN points into it."""
    global BIN
    venv = os.path.join(ARGS.workdirs[0], "venv")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", venv], env=ENV, check=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # --force-reinstall of bb only: the checkout's code as it is now, whatever its version says
    subprocess.run(pip + ["doit"], env=ENV, check=True)
    subprocess.run(pip + ["--force-reinstall", "--no-deps", REPO], env=ENV, check=True)
    subprocess.run(pip + [REPO], env=ENV, check=True)  # its dependencies
    BIN = os.path.join(venv, "bin")


def prepare() -> None:
    """Compile bb's modules once (as pip does for an installed package), and run
    each tool once on a tiny pipeline so no first-import costs land in a measurement."""
    python = os.path.join(BIN, "python")
    pkg = _out([python, "-c", "import buildsys, os; print(os.path.dirname(buildsys.__file__))"])
    subprocess.run([python, "-m", "compileall", "-q", pkg], env=ENV, check=False)
    warm = os.path.join(ARGS.workdirs[0], "warmup")
    for tool in ("make", "doit", "bb", "bb-for"):
        folder = os.path.join(warm, tool)
        shutil.rmtree(folder, ignore_errors=True)
        gen.generate(folder, "bb" if tool.startswith("bb") else tool, "fanout", 10, "for" if tool == "bb-for" else "plain")
        for _ in range(2):
            r = run(tool_cmd(tool, 2), folder, os.path.join(warm, f"{tool}.log"))
            if r.rc != 0:
                sys.exit(f"run.py: {tool} fails on a 10-task pipeline:\n{r.output}")
    shutil.rmtree(warm, ignore_errors=True)


# ---- the report -----------------------------------------------------------------------------------


def _fmt_s(x) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "—"
    return f"{a / b:.2f}x" if a / b < 100 else f"{a / b:.0f}x"


def _cell(row) -> str:
    if row is None:
        return "—"
    if row.get("skipped"):
        return "skipped"
    if row.get("timed_out"):
        return f"> {ARGS_TIMEOUT[0]:g} s (timeout)"
    text = _fmt_s(row["seconds"])
    if not row.get("ok", True):
        text += " FAILED"
    return text


ARGS_TIMEOUT = [0.0]


def pipeline_table(rows: list, where: str) -> list[str]:
    rows = [r for r in rows if r["section"] == "pipeline" and r["where"] == where]
    out = [
        "| shape | N | -j | scenario | make | doit | bb | bb @for | bb/make | bb/doit | @for/make | @for/doit | recipes run make/doit/bb/@for | peak RSS MiB make/doit/bb/@for | load before make/doit/bb/@for |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["shape"], r["n"], r["scenario"]) for r in rows))
    for shape, n, scenario in keys:
        by = {r["tool"]: r for r in rows if (r["shape"], r["n"], r["scenario"]) == (shape, n, scenario)}

        def sec(t):
            r = by.get(t)
            return None if r is None or r.get("skipped") or r.get("timed_out") or not r.get("ok", True) else r["seconds"]

        ran = "/".join("—" if by.get(t) is None or by[t].get("ran") is None else str(by[t]["ran"]) for t in TOOLS)
        rss = "/".join("—" if by.get(t) is None or "maxrss_kb" not in by[t] else f"{by[t]['maxrss_kb'] / 1024:.0f}" for t in TOOLS)
        load = "/".join("—" if by.get(t) is None or by[t].get("load") is None else f"{by[t]['load']:.1f}" for t in TOOLS)
        jobs = next(iter(by.values()))["jobs"]
        samples = len(by["bb"].get("samples", [])) if "bb" in by else 0
        label = scenario + (f" (median of {samples})" if scenario in ("no-op", "full build", "leaf change") and samples > 1 else "")
        out.append(
            f"| {shape} | {n} | {jobs} | {label} | {_cell(by.get('make'))} | {_cell(by.get('doit'))} | {_cell(by.get('bb'))} | {_cell(by.get('bb-for'))} "
            f"| {_ratio(sec('bb'), sec('make'))} | {_ratio(sec('bb'), sec('doit'))} | {_ratio(sec('bb-for'), sec('make'))} | {_ratio(sec('bb-for'), sec('doit'))} | {ran} | {rss} | {load} |"
        )
    return out


def per_task_table(rows: list, where: str) -> list[str]:
    rows = [r for r in rows if r["section"] == "pipeline" and r["where"] == where]
    out = ["| shape | N | tool | full build / N | (full build − no-op) / N | vs make |", "|---|---:|---|---:|---:|---:|"]
    for shape, n in dict.fromkeys((r["shape"], r["n"]) for r in rows):
        per = {}
        for tool in TOOLS:
            full = next((r for r in rows if (r["shape"], r["n"], r["scenario"], r["tool"]) == (shape, n, "full build", tool)), None)
            noop = next((r for r in rows if (r["shape"], r["n"], r["scenario"], r["tool"]) == (shape, n, "no-op", tool)), None)
            if full is None:
                continue
            if full.get("timed_out") or full.get("skipped") or not full.get("ok"):
                out.append(f"| {shape} | {n} | {tool} | {_cell(full)} | — | — |")
                continue
            tasks = n + (1 if shape == "fanout" else 0)
            per[tool] = full["seconds"] / tasks
            net = (full["seconds"] - (noop["seconds"] if noop and noop.get("ok") else 0)) / tasks
            out.append(f"| {shape} | {n} | {tool} | {per[tool] * 1000:.2f} ms | {net * 1000:.2f} ms | {_ratio(per[tool], per.get('make'))} |")
    return out


def targets_section(rows: list, where: str) -> list[str]:
    def get(**kw):
        return next((r for r in rows if r["where"] == where and all(r.get(k) == v for k, v in kw.items())), None)

    out = []
    bb, mk, dt = (get(section="pipeline", shape="chain", n=1000, scenario="no-op", tool=t) for t in ("bb", "make", "doit"))
    if bb and mk and dt and bb.get("ok") and mk.get("ok") and dt.get("ok"):
        r1, r2 = bb["seconds"] / mk["seconds"], bb["seconds"] / dt["seconds"]
        out.append(f"| no-op, 1000-task chain: bb within 12x make | bb {_fmt_s(bb['seconds'])}, make {_fmt_s(mk['seconds'])}: **{r1:.1f}x** | {'reached' if r1 <= 12 else 'NOT reached'} |")
        out.append(f"| no-op, 1000-task chain: bb under half of doit | bb {_fmt_s(bb['seconds'])}, doit {_fmt_s(dt['seconds'])}: **{r2:.2f}x** | {'reached' if r2 < 0.5 else 'NOT reached'} |")
        first = get(section="pipeline", shape="chain", n=1000, scenario="no-op (1st)", tool="bb")
        if first and first.get("ok"):
            out.append(f"| (the same, first no-op right after the build) | bb {_fmt_s(first['seconds'])}: {first['seconds'] / mk['seconds']:.1f}x make, {first['seconds'] / dt['seconds']:.2f}x doit | (informative) |")
    for shape, n in (("chain", 1000), ("chain", 10000), ("fanout", 1000), ("fanout", 10000)):
        fb, fm, fd = (get(section="pipeline", shape=shape, n=n, scenario="full build", tool=t) for t in ("bb", "make", "doit"))
        if fb and fm and fm.get("ok"):
            if fb.get("ok"):
                r = fb["seconds"] / fm["seconds"]
                verdict = "reached" if r <= 1.3 else "NOT reached"
                out.append(f"| full build, per task, {shape} N={n} (-j{fb['jobs']}): bb within 1.3x make | bb {fb['seconds'] / n * 1000:.2f} ms, make {fm['seconds'] / n * 1000:.2f} ms per task: **{r:.2f}x** | {verdict} |")
                if fd and fd.get("ok"):
                    r = fb["seconds"] / fd["seconds"]
                    out.append(f"| full build, {shape} N={n}: bb faster than doit | bb {_fmt_s(fb['seconds'])}, doit {_fmt_s(fd['seconds'])}: **{r:.2f}x** | {'reached' if r < 1 else 'NOT reached'} |")
            else:
                out.append(f"| full build, per task, {shape} N={n} (-j{fb['jobs']}): bb within 1.3x make | bb {_cell(fb)}, make {_fmt_s(fm['seconds'])} | NOT reached |")
    for shape in ("chain", "fanout"):
        lb, lm = (get(section="pipeline", shape=shape, n=10000, scenario="leaf change", tool=t) for t in ("bb", "make"))
        if lb and lb.get("ok"):
            beside = f" (make {_fmt_s(lm['seconds'])})" if lm and lm.get("ok") else ""
            out.append(f"| one changed input, {shape} N=10000: bb under 0.3 s | bb **{_fmt_s(lb['seconds'])}**{beside} | {'reached' if lb['seconds'] < 0.3 else 'NOT reached'} |")
    for r in rows:
        if r["where"] == where and r["section"] == "plan":
            if r.get("seconds") is None:
                out.append(f"| plan {r['n']} targets ({r['form']}, {r['scenario']}): under 10 s and 1 GiB | timeout | NOT reached |")
                continue
            ok = r["seconds"] < 10 and r["maxrss_kb"] < (1 << 20) and r.get("ok")
            verdict = ("reached" if ok else "NOT reached") if r["n"] >= 100_000 else "n/a: the target is for 100k targets (run without --quick)"
            out.append(f"| plan {r['n']} targets ({'@for' if r['form'] == 'for' else 'one rule each'}, {r['scenario']}): under 10 s and 1 GiB | {r['seconds']:.2f} s, {r['maxrss_kb'] / 1024:.0f} MiB | {verdict} |")
    if not out:
        return []
    return ["| target | measured | verdict |", "|---|---|---|", *out]


def plan_table(rows, where):
    rows = [r for r in rows if r["section"] == "plan" and r["where"] == where]
    out = ["| form | targets | Batchfile size | run | time | peak RSS | targets to run |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        form = "`@for i in 1..N`" if r["form"] == "for" else "one rule per target"
        t = "timeout" if r.get("seconds") is None else f"{r['seconds']:.2f} s"
        out.append(f"| {form} | {r['n']} | {r['batchfile_bytes'] / 1e6:.2f} MB | {r['scenario']} | {t}{'' if r.get('ok') else ' FAILED'} | {r['maxrss_kb'] / 1024:.0f} MiB | {r.get('to_run')} |")
    return out


def hash_table(rows, where):
    rows = [r for r in rows if r["section"] == "hash" and r["where"] == where]
    if not rows:
        return []
    out = [f"{rows[0]['bytes'] / (1 << 30):.2f} GiB in {ARGS.hash_files} files.", "",
           "| what | tool | time | throughput | peak RSS |", "|---|---|---:|---:|---:|"]
    for r in rows:
        gbs = f"{r['bytes'] / r['seconds'] / 1e9:.2f} GB/s" if r.get("reads_all", True) else "—"
        out.append(f"| {r['scenario']} | {r['tool']} | {_fmt_s(r['seconds'])}{'' if r.get('ok') else ' FAILED'} | {gbs} | {r['maxrss_kb'] / 1024:.0f} MiB |")
    return out


NOTES = """\
- **Bytecode.** The environment here sets `PYTHONDONTWRITEBYTECODE=1`, with
  which every bb start would recompile bb's modules. The benchmark unsets it
  for every command it measures and runs `python -m compileall -q` over
  `buildsys/` first, so bb (and doit) start as an installed package does.
  Every tool also runs once on a 10-task pipeline before anything is timed.
- **Installed as users install them.** `bb` and `doit` run from a virtual
  environment the benchmark makes (`{bin}`), where both are installed by
  `pip install` from PyPI and from this checkout, not editable: an editable
  install's import hook costs bb ~17 ms per start here, and this machine's
  own site-packages carries `.pth` files (one imports `certifi`, ~14 ms) that
  no user's environment has. They are run from its `bin/` folder directly,
  not through pyenv shims, which add ~90 ms per start.
- **Timing and peak RSS.** Wall-clock is `time.perf_counter()` around the
  tool's process. Every tool runs under `/usr/bin/time -f %M` for its peak
  RSS (the maximum over the tool and the recipes it waited for): a process
  spawned straight from the Python driver inherits the driver's ~20 MiB
  high-water mark at exec, so `wait4`/`RUSAGE_CHILDREN` cannot report less.
  The wrapper's own cost, {overhead} ms (median of 30 wrapped minus 30 direct
  runs of `true`), is subtracted from every time.
- **make without built-in rules.** The Makefiles set `MAKEFLAGS += -r`, as a
  careful make user does: without it, make tries its ~170 built-in pattern
  rules on every source file that has no rule (the fan-out's `in/*.txt`), and
  its no-op on the 1000-task fan-out took ~0.2 s instead of ~10 ms.
- **How each tool starts a recipe.** Every recipe here is one command with
  its output redirected (`cat ... > out`). make hands such a line to
  `/bin/sh -c` (it runs a line itself only when it holds no shell syntax, and
  `>` is), and doit runs a string action through the shell too; bb starts a
  one-command recipe of plain words with `<`, `>` or `>>` itself, without a
  shell (anything else goes to `sh -e -c`). So each task costs make and doit
  two program starts (the shell, then `cat`), bb one: about 1 ms of each
  task on these machines, which bb does not pay.
- **doit's database.** doit's default backend is Python's `dbm`; this Python
  has no gdbm/ndbm, so doit uses `{doit_db}` (slower than gdbm on big graphs).
  doit is run with its defaults otherwise: `doit` (-j1) or `doit -n 2`
  (multiprocessing), md5 `file_dep` checks.
- **bb's fast no-op path and the racy-clean window.** bb trusts a file's stat
  only once its mtime is older than one timestamp tick (git's racy-clean rule:
  50 ms on filesystems with sub-second mtimes, 2 s otherwise), both in its
  stat cache and in the no-op stamp it writes after a build. A no-op that
  follows a build within that window takes bb's full path (parse cache, keys,
  lookups); later ones answer from `stat()` calls alone, before parsing. Both
  are reported: "no-op (1st)" right after the build, and the median of the
  next runs. make and doit have no such effect.
- **What reruns.** "leaf change" reruns 1 recipe in the chain (the last task
  reads `tail.txt`) and 2 in the fan-out (task k and the join). "touch source"
  changes src.txt's mtime, not its bytes: make reruns everything, doit (md5)
  and bb (content digests) rerun nothing. "revert source" puts src.txt's
  first bytes back after a change: make and doit rerun everything, bb finds
  every result in its store (it restores only the requested output to the
  workspace; intermediate files stay as the last run left them, as documented).
  The "recipes run" column is read from each tool's own output.
- **Timeouts.** A build that takes longer than {timeout:g} s is stopped (SIGINT,
  then SIGKILL), reported as a timeout, and its folder is brought to the built
  state untimed (bb: in batches of 250 targets) so the later scenarios can run;
  scenarios that rerun every task are then skipped for that tool.
- **Page cache.** Hashing reads files that are in the page cache (they were
  just written, and `cat` reads them once first): the figures are CPU-bound
  hashing, not disk throughput. bb hashes big files with blake3's
  `update_mmap`, so its peak RSS while hashing counts the mapped file's pages
  (clean page cache, given back under memory pressure), not heap.
- **Shared machine.** The load average was {loads}. Other work on the
  machine (test suites, other benchmarks) adds noise to every figure, most to
  the sub-100 ms ones; on a 2-core machine a load above 2 means the tools
  waited for a core. The pipeline tables give the load before each run.
- **bb under development.** bb is installed from this checkout as it was on
  disk when the run began: {codes}.
"""


def _load_range(rows) -> str:
    loads = sorted(r["load"] for r in rows if r.get("load", -1) >= 0)
    if not loads:
        return ""
    return f"; the 1-minute load average before each pipeline scenario ranged from {loads[0]:.1f} to {loads[-1]:.1f} (median {statistics.median(loads):.1f})"


def summary_table(runs: list[dict]) -> list[str]:
    """The project's targets, one row per run and work folder."""
    out = ["| run | work folder | load (median) | no-op, chain 1000: bb/make (target ≤ 12x) | no-op, chain 1000: bb/doit (target < 0.5x) "
           "| full build, bb/make (target ≤ 1.3x): chain 1000 | chain 10000 | fan-out 1000 | fan-out 10000 "
           "| plan 100k `@for`, fresh / second (target < 10 s, 1 GiB) | plan 100k one rule each, fresh / second |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for k, run in enumerate(runs, 1):
        rows = run["rows"]
        for where in run["machine"]["disks"]:
            def get(**kw):
                return next((r for r in rows if r.get("where") == where and all(r.get(a) == b for a, b in kw.items())), None)

            def ratio(scenario, shape, n, other):
                a, b = get(section="pipeline", shape=shape, n=n, scenario=scenario, tool="bb"), get(section="pipeline", shape=shape, n=n, scenario=scenario, tool=other)
                if not a or not b:
                    return "—"
                if not a.get("ok") or not b.get("ok") or a.get("seconds") is None or b.get("seconds") is None:
                    return "failed/timeout"
                return f"{a['seconds'] / b['seconds']:.2f}x"

            def plan(form):
                got = [get(section="plan", form=form, scenario=s) for s in ("fresh (no parse cache)", "second run")]
                if not all(got):
                    return "—"
                size = "" if got[0]["n"] == 100_000 else f"(only {got[0]['n']} targets) "
                return size + " / ".join("timeout" if g.get("seconds") is None else f"{g['seconds']:.1f} s, {g['maxrss_kb'] / 1024:.0f} MiB" for g in got)

            loads = [r["load"] for r in rows if r.get("where") == where and r.get("load", -1) >= 0]
            load = f"{statistics.median(loads):.1f}" if loads else "?"
            out.append(f"| {k} | `{where}` | {load} | {ratio('no-op', 'chain', 1000, 'make')} | {ratio('no-op', 'chain', 1000, 'doit')} "
                       f"| {ratio('full build', 'chain', 1000, 'make')} | {ratio('full build', 'chain', 10000, 'make')} "
                       f"| {ratio('full build', 'fanout', 1000, 'make')} | {ratio('full build', 'fanout', 10000, 'make')} | {plan('for')} | {plan('plain')} |")
    return out


def _use_args(saved: dict) -> None:
    """Render a saved run with the options it ran with."""
    ARGS.full_repeat, ARGS.full_repeat_max_n = 1, 0  # (runs before these options had one sample)
    for k, v in saved.items():
        if k not in ("results", "report_only", "label"):
            setattr(ARGS, k, v)
    ARGS_TIMEOUT[0] = ARGS.timeout or 0


def _run_sections(run: dict, level: str) -> list[str]:
    meta, rows = run["machine"], run["rows"]
    _use_args(run["args"])
    lines = []
    several = len(meta["disks"]) > 1
    for where in meta["disks"]:
        h = level + ("#" if several else "")
        if several:
            lines += [f"{level} Work folder `{where}`", ""]
        t = targets_section(rows, where)
        if t:
            lines += [f"{h} Targets", "", *t, ""]
        if any(r["section"] == "pipeline" and r["where"] == where for r in rows):
            lines += [f"{h} Pipelines", "", "Times are wall-clock (the median of the samples the scenario names); ratios are bb's time over the other tool's (below 1: bb is faster). "
                      "`bb` is the Batchfile with one rule per task; `bb @for` is the fan-out written with `@for i in 1..N` (the chain has one form).", "",
                      *pipeline_table(rows, where), "", f"{h}# Full build, per task", "", *per_task_table(rows, where), ""]
        if any(r["section"] == "plan" and r["where"] == where for r in rows):
            lines += [f"{h} Planning a {ARGS.plan_n}-target graph (`bb plan`)", "", *plan_table(rows, where), ""]
        if any(r["section"] == "hash" and r["where"] == where for r in rows):
            lines += [f"{h} Hashing big inputs", "", *hash_table(rows, where), ""]
    return lines


def write_report(runs: list[dict], path: str) -> str:
    """runs: what main() saves to results.json, one per invocation; several
    runs (--report-only a.json b.json) each get their own section."""
    meta = runs[0]["machine"]
    lines = ["# bb benchmark results", ""]
    if len(runs) == 1:
        lines += [f"Generated by `{runs[0]['command']}` on {meta['date']}" + (f" ({runs[0]['label']})." if runs[0].get("label") else ".")]
    else:
        lines += ["Generated by these runs, each reported in its own section below:", ""]
        lines += [f"{k}. `{run['command']}` on {run['machine']['date']}" + (f": {run['label']}" if run.get("label") else "") for k, run in enumerate(runs, 1)]
    lines += ["", "See `bench/README.md` for what each scenario does; `bench/PROFILE.md` (from `bench/profile.py`) holds the profile of bb's per-task overhead, before and after the speed work of issue 9.", "", "## Machine", ""]
    disks = {}
    for run in runs:
        disks.update(run["machine"]["disks"])
    _use_args(runs[0]["args"])
    lines += [
        f"- CPU: {meta['cpu']}, nproc = {meta['nproc']}; memory {meta['memory']}; kernel {meta['kernel']}",
        *[f"- work folder `{w}`: `{d}`" for w, d in disks.items()],
        f"- Python {meta['python']}; {meta['bb']}",
        f"- {meta['make']}; doit {meta['doit']} (backend {meta['doit_backend']}); {meta['sha256sum']}",
        f"- pipelines: chain at -j1 for every tool, fan-out at -j{ARGS.jobs} for every tool; no-op median of {ARGS.repeat}"
        + (f"; full build median of {ARGS.full_repeat} up to N={ARGS.full_repeat_max_n}" if ARGS.full_repeat > 1 else ""),
        "",
    ]
    lines += ["## Summary", "", "The project's targets in every run below (details, every measurement and the verdicts are in each run's section; "
              "a load above 2 on this 2-core machine means the tools waited for a core, see the notes).", "", *summary_table(runs), ""]
    startup = next((run["rows"] for run in runs if any(r["section"] == "startup" for r in run["rows"])), [])
    st = startup_table(startup)
    if st:
        lines += ["## Start-up floor", "", "Every bb or doit run pays at least a Python start; make pays almost nothing.", "", *st, ""]
    for k, run in enumerate(runs, 1):
        if len(runs) > 1:
            lines += [f"## Run {k}: `{run['command']}`" + (f" ({run['label']})" if run.get("label") else ""), ""]
        lines += _run_sections(run, "##" if len(runs) == 1 else "###")
    _use_args(runs[0]["args"])
    loads = [f"{'run ' + str(k) + ': ' if len(runs) > 1 else ''}{run['machine']['loadavg_start']} at the start and {run['machine'].get('loadavg_end', '?')} at the end{_load_range(run['rows'])}"
             for k, run in enumerate(runs, 1)]
    codes = [f"{'run ' + str(k) + ': ' if len(runs) > 1 else ''}{run['machine']['bb_code']} at the start, {run['machine'].get('bb_code_end', '?')} at the end"
             for k, run in enumerate(runs, 1)]
    lines += ["## Notes", "", NOTES.format(loads="; ".join(loads), codes="; ".join(codes), overhead=meta.get("wrapper_overhead_ms", "?"), bin=meta.get("bin", BIN),
                                           doit_db=meta["doit_backend"], timeout=ARGS.timeout or 0)]
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    return text


# ---- main -------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Benchmark bb against GNU make and doit; writes bench/RESULTS.md.")
    p.add_argument("--quick", action="store_true", help="N up to 1000, 0.4 GiB of hashing, a 20k-target @for plan (under 2 minutes)")
    p.add_argument("--workdir", dest="workdirs", action="append", metavar="DIR",
                   help="scratch folder (repeat to run the suite in several, e.g. bench/work and /dev/shm/bb-bench); default bench/work")
    p.add_argument("--sizes", help="comma-separated N (default 100,1000,10000; --quick 100,1000)")
    p.add_argument("--shapes", default="chain,fanout", help="comma-separated: chain, fanout")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("-j", "--jobs", type=int, default=2, help="-j for the fan-out, for every tool (the chain runs at -j1)")
    p.add_argument("--repeat", type=int, default=5, help="no-op and leaf-change repetitions (median)")
    p.add_argument("--full-repeat", type=int, default=3, help="full builds per tool, each from nothing (median), up to --full-repeat-max-n")
    p.add_argument("--full-repeat-max-n", type=int, default=10000, help="largest N whose full build is repeated (default 10000)")
    p.add_argument("--timeout", type=float, help="seconds before a pipeline build is stopped (default 90; --quick 300)")
    p.add_argument("--extras-max-n", type=int, help="run 'touch source' and 'revert source' up to this N (default 1000; --quick 100)")
    p.add_argument("--for-max-n", type=int, help="measure the @for form of the fan-out up to this N (default: all; --quick 100)")
    p.add_argument("--plan-n", type=int, help="targets in the planning benchmark (default 100000; --quick 20000)")
    p.add_argument("--no-plan-plain", dest="plan_plain", action="store_false", help="skip the one-rule-per-target form of the plan benchmark")
    p.add_argument("--plan-timeout", type=float, default=600)
    p.add_argument("--hash-gb", type=float, help="GiB of input for the hashing benchmark (default 4; --quick 0.4)")
    p.add_argument("--hash-files", type=int, default=4)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: pipelines, plan, hash")
    p.add_argument("--doit-backend", help="doit --backend (default: doit's own default, dbm)")
    p.add_argument("--keep", action="store_true", help="keep the big plan and hashing folders afterwards")
    p.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="where to write the report")
    p.add_argument("--report-only", metavar="JSON", nargs="+", help="rewrite the report from the results.json of earlier runs (one section per run)")
    p.add_argument("--label", default="", help="a few words on why this run was made, shown in the report")
    p.add_argument("--in-place", action="store_true", help="run the bb and doit installed beside this Python (an editable bb, say) instead of a venv of their own")
    a = p.parse_args(argv)
    a.workdirs = [os.path.abspath(w) for w in (a.workdirs or [os.path.join(HERE, "work")])]
    a.sizes = [int(s) for s in (a.sizes or ("100,1000" if a.quick else "100,1000,10000")).split(",")]
    a.shapes = [s for s in a.shapes.split(",") if s]
    a.tools = [t for t in TOOLS if t in a.tools.split(",")]
    a.timeout = a.timeout if a.timeout is not None else (300 if a.quick else 90)
    a.extras_max_n = a.extras_max_n if a.extras_max_n is not None else (100 if a.quick else 1000)
    a.for_max_n = a.for_max_n if a.for_max_n is not None else (100 if a.quick else 10**9)
    a.plan_n = a.plan_n if a.plan_n is not None else (20_000 if a.quick else 100_000)
    a.hash_gb = a.hash_gb if a.hash_gb is not None else (0.4 if a.quick else 4)
    if a.quick:
        a.plan_plain = False
    a.skip = {s for s in a.skip.split(",") if s}
    return a


ARGS = parse_args([])


def main(argv=None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    command = shlex.join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    if ARGS.report_only:
        results = ARGS.results
        runs = []
        for name in ARGS.report_only:
            with open(name) as f:
                runs.append(json.load(f))
        print(write_report(runs, results))
        return 0
    for w in ARGS.workdirs:
        os.makedirs(w, exist_ok=True)
    if not ARGS.in_place:
        install()
    meta = machine(ARGS.workdirs)
    print(f"bench: {meta['bb']} ({meta['bb_code']}), {meta['make']}, doit {meta['doit']}, Python {meta['python']}, nproc {meta['nproc']}", flush=True)
    prepare()
    calibrate(ARGS.workdirs[0])
    meta["wrapper_overhead_ms"] = round(WRAPPER_OVERHEAD[0] * 1000, 3)
    print(f"bench: /usr/bin/time adds {WRAPPER_OVERHEAD[0] * 1000:.2f} ms per run; subtracted from every time", flush=True)
    rows: list = []
    started = time.time()
    json_path = os.path.join(ARGS.workdirs[0], "results.json")

    def save():
        meta["loadavg_end"] = " ".join(_read("/proc/loadavg").split()[:3])
        meta["bb_code_end"] = code_state()
        meta["elapsed_s"] = round(time.time() - started, 1)
        with open(json_path, "w") as f:
            json.dump({"command": command, "label": ARGS.label, "machine": meta, "args": {k: v for k, v in vars(ARGS).items() if k != "skip"}, "rows": rows}, f, indent=1)

    measure_startup(rows)
    for where in ARGS.workdirs:
        print(f"\n=== work folder {where} ===", flush=True)
        if "pipelines" not in ARGS.skip:
            for n in ARGS.sizes:
                for shape in ARGS.shapes:
                    measure_pipeline(Pipeline(where, shape, n, ARGS.tools), rows, where)
                    save()
        if "plan" not in ARGS.skip and "bb" in ARGS.tools:
            measure_plan(where, rows, where)
            save()
        if "hash" not in ARGS.skip and "bb" in ARGS.tools:
            measure_hash(where, rows, where)
            save()
    save()
    with open(json_path) as f:
        text = write_report([json.load(f)], ARGS.results)
    print("\n" + text)
    print(f"\nbench: done in {time.time() - started:.0f} s; wrote {ARGS.results} and {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
