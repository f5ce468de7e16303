#!/usr/bin/env python3
"""Profile bb's per-task overhead on a generated pipeline and append a report.

    python bench/profile.py --label "before" --code /tmp/bb-old --out bench/PROFILE.md

In one scratch folder: builds from scratch with `make -s` and `bb build -q`
(three each, interleaved; median wall, user and sys CPU of the process tree),
one more bb build in-process under yappi (CPU clock, all threads), and one
under `strace -f -c`. --code DIR profiles the buildsys package of another
checkout (put first on PYTHONPATH). See bench/README.md, "Profiling".
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen  # noqa: E402

BB = os.path.join(os.path.dirname(sys.executable), "bb")  # never a pyenv shim: it would add its own start-up


def yappi_child(out_json: str, bb_args: list[str]) -> None:
    """Run `bb <bb_args>` in this process under yappi; dump the function stats as JSON."""
    import yappi

    yappi.set_clock_type("cpu")  # the machine is shared: wall time would count other agents' work
    # builtins too, so that time in os.stat, sqlite, posix_spawn... shows as itself
    yappi.start(builtins=True, profile_threads=True)
    t0 = time.perf_counter()
    import buildsys  # imported under the profiler: start-up is part of bb's cost
    from buildsys.cli.main import main  # (not entry(): after a build it leaves through os._exit)

    sys.argv = ["bb", *bb_args]
    try:
        rc = main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    yappi.stop()
    wall = time.perf_counter() - t0
    stats = [(s.name, s.module, s.lineno, s.ncall, s.tsub, s.ttot) for s in yappi.get_func_stats()]
    with open(out_json, "w") as f:
        json.dump({"rc": rc, "wall": wall, "file": buildsys.__file__, "stats": stats}, f)


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fs_type(path: str) -> str:
    """The file system of the scratch folder: file creation costs differ a lot (ext4 vs tmpfs)."""
    best = ("", "?")
    with open("/proc/mounts") as f:
        for line in f:
            _, mnt, kind = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
                best = (mnt, kind)
    return best[1]


def git_desc(code: str) -> str:
    def git(*a):
        return subprocess.run(["git", "-C", code, *a], capture_output=True, text=True).stdout.rstrip()

    # HEAD may be a commit that left buildsys/ alone: name the one that last changed it too
    commit = f"HEAD {git('rev-parse', '--short', 'HEAD')}, buildsys/ last changed in {git('log', '-1', '--format=%h %s', '--', 'buildsys')[:90]}"
    dirty = git("status", "--porcelain", "--", "buildsys").splitlines()  # "XY path": the path from column 3
    return commit + (f" (plus uncommitted changes: {', '.join(line[3:] for line in dirty)})" if dirty else "")


def clean(folder: str) -> None:
    """From scratch: no outputs, no .bb (store, stat cache, graph cache)."""
    for sub in ("out", ".bb"):
        shutil.rmtree(os.path.join(folder, sub), ignore_errors=True)
    os.makedirs(os.path.join(folder, "out"))
    if os.path.exists(os.path.join(folder, "final.txt")):
        os.unlink(os.path.join(folder, "final.txt"))


def timed(cmd: list[str], cwd: str, env: dict, expect: str) -> tuple[float, float, float]:
    """Wall, user and sys seconds of cmd; wait4's rusage includes the recipes' processes it reaped."""
    log = os.path.join(os.path.dirname(cwd), "last.log")
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    check(os.waitstatus_to_exitcode(status), cmd, cwd, expect, log)
    return wall, ru.ru_utime, ru.ru_stime


def check(rc: int, cmd: list[str], cwd: str, expect: str, log: str) -> None:
    if rc != 0 or not os.path.exists(os.path.join(cwd, expect)):
        with open(log, errors="replace") as f:
            tail = f.read()[-2000:]
        sys.exit(f"{' '.join(cmd)} in {cwd} failed (rc {rc}, {expect} {'present' if os.path.exists(os.path.join(cwd, expect)) else 'missing'}):\n{tail}")


def short(module: str, code: str) -> str:
    """buildsys/run/schedule.py for the package, subprocess.py for the stdlib."""
    if module.startswith(code + "/"):
        return module[len(code) + 1:]
    for marker in ("/site-packages/", "/lib/python%d.%d/" % sys.version_info[:2]):
        if marker in module:
            return module.split(marker, 1)[1]
    return module


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def strace_rows(path: str) -> list[tuple[str, int, float]]:
    """(syscall, calls, seconds) from `strace -c` output."""
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
                rows.append((p[-1], int(p[3]), float(p[1])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--shape", choices=gen.SHAPES, default="chain")
    ap.add_argument("--jobs", type=int, help="-j of make and bb (default: 1 for chain, 2 for fanout)")
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"), help="a scratch folder is made (and removed) inside it")
    ap.add_argument("--code", default=os.path.dirname(HERE), help="checkout whose buildsys/ is profiled (default: this one)")
    ap.add_argument("--label", default="", help="a few words on what is profiled")
    ap.add_argument("--out", help="markdown file to append the section to (always printed)")
    a = ap.parse_args()
    jobs = a.jobs or (1 if a.shape == "chain" else 2)
    code = os.path.abspath(a.code)
    env = dict(os.environ, LC_ALL="C", PYTHONPATH=os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])))
    for name in ("PYTHONDONTWRITEBYTECODE", "BB_STORE", "BB_CACHE", "BB_CACHE_READ_ONLY"):
        env.pop(name, None)  # bytecode as installed; only the local store in the scratch folder
    # bb starts as an installed package does: byte-compiled
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(code, "buildsys")], check=True)

    os.makedirs(a.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bb-profile-", dir=a.workdir)
    try:
        report = run(a, jobs, code, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report)
    if a.out:
        with open(a.out, "a") as f:
            f.write(report + "\n")


def run(a, jobs: int, code: str, env: dict, work: str) -> str:
    n, expect = a.n, gen.final_output(a.shape, a.n)
    load0, started = load(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    make_cmd, bb_cmd = ["make", "-s", f"-j{jobs}"], [BB, "build", f"-j{jobs}", "-q"]
    mk, bb = os.path.join(work, "make"), os.path.join(work, "bb")
    for tool, folder in (("make", mk), ("bb", bb)):
        gen.generate(folder, tool, a.shape, n)

    # A 10-task warm-up of each, so that the first timed run does not pay for a cold page cache.
    warm = os.path.join(work, "warm")
    for tool, cmd in (("make", make_cmd), ("bb", bb_cmd)):
        gen.generate(warm, tool, a.shape, 10)
        timed(cmd, warm, env, gen.final_output(a.shape, 10))
        shutil.rmtree(warm)

    # Interleaved, so that a change in the machine's load hits both tools alike.
    times = {"make": [], "bb": []}
    for _ in range(3):
        for tool, cmd, folder in (("make", make_cmd, mk), ("bb", bb_cmd, bb)):
            clean(folder)
            times[tool].append(timed(cmd, folder, env, expect))
    med = {t: [statistics.median(r[i] for r in runs) for i in range(3)] for t, runs in times.items()}
    cpu = {t: m[1] + m[2] for t, m in med.items()}

    # One build under yappi, in a child process so that PYTHONPATH decides which buildsys it imports.
    clean(bb)
    prof = os.path.join(work, "yappi.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--yappi-child", prof, "build", f"-j{jobs}", "-q"], cwd=bb, env=env, check=True)
    with open(prof) as f:
        y = json.load(f)
    if y["rc"] != 0 or not os.path.exists(os.path.join(bb, expect)):
        sys.exit(f"the profiled bb build failed (rc {y['rc']})")

    strace = shutil.which("strace")
    sc = None
    if strace:
        clean(bb)
        out = os.path.join(work, "strace.txt")
        timed([strace, "-f", "-c", "-o", out, *bb_cmd], bb, env, expect)
        sc = strace_rows(out)
        clean(mk)  # make's count too: the recipes' own syscalls (sh, cat) are in both
        timed([strace, "-f", "-c", "-o", out, *make_cmd], mk, env, expect)
        make_calls = sum(r[1] for r in strace_rows(out))

    L = [f"## {a.label or 'profile'} ({started})", ""]
    L += [f"- code: `{code}` at {git_desc(code)}; buildsys imported from `{y['file']}`",
          f"- pipeline: {a.shape}, N={n}, -j{jobs}; scratch on {fs_type(work)}",
          f"- machine: {os.cpu_count()} cores, load average {load0} at start, {load()} at end; Python {platform.python_version()}", ""]
    L += ["Builds from scratch, median of 3 (CPU includes the recipes' processes):", ""]
    L += table(["tool", "wall s", "user s", "sys s", "CPU s"], [[t, *(f"{x:.2f}" for x in m), f"{cpu[t]:.2f}"] for t, m in med.items()])
    L += ["", f"**bb's own CPU per task: {(cpu['bb'] - cpu['make']) / n * 1000:.2f} ms** ((bb CPU - make CPU) / N); "
              f"wall per task beyond make: {(med['bb'][0] - med['make'][0]) / n * 1000:.2f} ms", ""]

    # builtins have no file: yappi reports them as line 0 of their module
    where = lambda mod, line: f"{short(mod, code)}:{line}" if line else mod
    stats = [(f"`{name}` {where(mod, line)}", calls, own, tot) for name, mod, line, calls, own, tot in y["stats"]]
    total_own = sum(s[2] for s in stats)
    L += [f"yappi (CPU clock, all threads, builtins): {total_own:.2f} s CPU in {y['wall']:.2f} s wall, profiler included. Top 25 by own time:", ""]
    top = sorted(stats, key=lambda s: -s[2])[:25]
    L += table(["function", "calls", "own ms", "µs/task"], [[s[0], s[1], f"{s[2] * 1000:.0f}", f"{s[2] * 1e6 / n:.0f}"] for s in top])
    L += ["", "Top 15 by total time (own + callees):", ""]
    top = sorted(stats, key=lambda s: -s[3])[:15]
    L += table(["function", "calls", "total ms", "µs/task"], [[s[0], s[1], f"{s[3] * 1000:.0f}", f"{s[3] * 1e6 / n:.0f}"] for s in top])

    if sc is None:
        L += ["", "strace not installed: no syscall counts."]
    else:
        calls = sum(r[1] for r in sc)
        L += ["", f"`strace -f -c` (bb and its recipes): {calls} syscalls, {calls / n:.0f} per task "
                  f"(make and its recipes: {make_calls}, {make_calls / n:.0f} per task). Top 12 by count, then by time:", ""]
        rows = lambda rs: [[f"`{s}`", c, f"{c / n:.1f}", f"{t * 1000:.0f}", f"{t * 1e6 / n:.0f}"] for s, c, t in rs]
        L += table(["syscall", "calls", "per task", "ms", "µs/task"], rows(sorted(sc, key=lambda r: -r[1])[:12]))
        L += [""]
        L += table(["syscall", "calls", "per task", "ms", "µs/task"], rows(sorted(sc, key=lambda r: -r[2])[:12]))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--yappi-child"]:
        yappi_child(sys.argv[2], sys.argv[3:])
    else:
        main()
