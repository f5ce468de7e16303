"""Scheduling through `bb`: parallelism, -k, Ctrl-C and resuming."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import BB_CMD, statuses


def timed(stem: str, seconds: float) -> str:
    """A rule's recipe lines that write when they start and end, to
    STEM.start and STEM.end, and take `seconds` in between."""
    return f"    date +%s.%N > {stem}.start\n    sleep {seconds}\n    date +%s.%N > {stem}.end\n    echo > $@\n"


def test_independent_recipes_run_in_parallel(project):
    # Each recipe records when it started and ended; with -j2 the two
    # intervals overlap. Each waits until the other has started (bounded),
    # so the test shows overlap without relying on timing thresholds.
    project.batchfile("""
        @for n in [a, b]
        $(n).txt:
            date +%s.%N > $(n).tmp && mv $(n).tmp $(n).start
            for i in $$(seq 600); do [ -e a.start ] && [ -e b.start ] && break; sleep 0.05; done
            date +%s.%N > $(n).end
            echo $(n) > $@

        @default
        all: a.txt b.txt
    """)
    # (.start appears whole, by a rename: the other recipe never sees it
    # before its time is in it)
    project.build("-j2")
    a0, a1 = float(project.read("a.start")), float(project.read("a.end"))
    b0, b1 = float(project.read("b.start")), float(project.read("b.end"))
    assert a0 < b1 and b0 < a1, "with -j2 the two recipes' run times overlap"


def test_j1_runs_one_at_a_time(project):
    project.batchfile("""
        @for n in [a, b, c]
        $(n).txt:
            date +%s.%N > $(n).start
            sleep 0.1
            date +%s.%N > $(n).end
            echo > $@

        @default
        all: a.txt b.txt c.txt
    """)
    project.build("-j1")
    spans = sorted((float(project.read(f"{n}.start")), float(project.read(f"{n}.end"))) for n in "abc")
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 <= s1


def test_cpus_attribute_takes_job_slots(project):
    # With -j2, a @cpus 2 target never runs beside another one.
    project.batchfile(f"@cpus 2\nbig.txt:\n{timed('big', 0.3)}\nsmall.txt:\n{timed('small', 0.3)}\n@default\nall: big.txt small.txt\n")
    project.build("-j2")
    big = float(project.read("big.start")), float(project.read("big.end"))
    small = float(project.read("small.start")), float(project.read("small.end"))
    assert big[1] <= small[0] or small[1] <= big[0]


def test_j2_never_holds_more_than_two_slots_when_recipes_hand_their_slot_on(project):
    # Workers start the next recipe in line in the slot a recipe frees,
    # without a round trip through the main loop: at no moment do the
    # recipes running hold more than -j slots (a @cpus 2 one holds two).
    project.batchfile(
        f"@for n in 1..16\nt$(n).txt:\n{timed('t$(n)', 0.03)}\n@cpus 2\nbig.txt:\n{timed('big', 0.1)}\n@default\nall: t*.txt big.txt\n"
    )
    assert set(project.build("-j2").values()) == {"built"}
    spans = [(float(project.read(f"t{n}.start")), float(project.read(f"t{n}.end")), 1) for n in range(1, 17)]
    spans.append((float(project.read("big.start")), float(project.read("big.end")), 2))
    events = sorted([(s, w) for s, _, w in spans] + [(e, -w) for _, e, w in spans], key=lambda e: (e[0], e[1]))
    held = peak = 0
    for _, w in events:
        held += w
        peak = max(peak, held)
    assert peak == 2, f"{peak} slots held at once with -j2"


FAILING = """
    bad.txt:
        echo starting
        echo partial > $@
        exit 3

    good.txt:
        sleep 0.3
        echo good > $@

    after-bad.txt: bad.txt
        cat $< > $@

    @default
    all: after-bad.txt good.txt
"""


def test_failure_stops_new_work_and_reports(project):
    project.batchfile(FAILING)
    report = project.build("-j1", check=1)
    assert report["bad.txt"] == "failed"
    assert report["after-bad.txt"] == "skipped"
    assert not project.exists("bad.txt"), "a failed recipe leaves no half-written output"
    err = project.last_proc.stderr
    assert "bad.txt" in err and "exited with code 3" in err and "starting" in err


def test_keep_going_builds_everything_else(project):
    project.batchfile(FAILING)
    report = project.build("-k", "-j1", check=1)
    assert report["bad.txt"] == "failed"
    assert report["good.txt"] == "built"
    assert report["after-bad.txt"] == "skipped"
    # the finished work is kept: fixing the failure runs only what is left
    project.batchfile(FAILING.replace("exit 3", "true"))
    again = project.build()
    assert again["good.txt"] == "cached"
    assert statuses(again, "built") == {"bad.txt", "after-bad.txt"}


def test_interrupt_leaves_a_consistent_store_and_the_rerun_finishes(project):
    project.batchfile("""
        first.txt:
            echo first > $@

        slow.txt: first.txt
            echo started > slow.started
            echo partial > $@
            sleep 30
            echo done >> $@

        @default
        all: slow.txt
    """)
    proc = subprocess.Popen(BB_CMD + ["build", "--json"], cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 30
    while not project.exists("slow.started") and time.time() < deadline:
        time.sleep(0.05)
    assert project.exists("slow.started")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err.lower()
    assert "Traceback" not in err
    assert not project.exists("slow.txt"), "the interrupted target's output is removed"
    # the store holds no temp files and no result for the interrupted target
    leftovers = [p for p in (project.root / ".bb").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    project.batchfile("""
        first.txt:
            echo first > $@

        slow.txt: first.txt
            echo done > $@

        @default
        all: slow.txt
    """)
    report = project.build()
    assert report == {"first.txt": "cached", "slow.txt": "built"}


def test_kill_9_then_rerun_resumes(project):
    # first.txt takes longer than the store's write-behind period, so its
    # result is written as soon as it is made (see LocalStore.batched)
    project.batchfile("""
        first.txt:
            sleep 0.3; echo first > $@

        slow.txt: first.txt
            echo started > slow.started
            sleep 30
            echo done > $@
    """)
    proc = subprocess.Popen(BB_CMD + ["build", "slow.txt"], cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not project.exists("slow.started") and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    project.batchfile("""
        first.txt:
            sleep 0.3; echo first > $@

        slow.txt: first.txt
            echo done > $@
    """)
    report = project.build("slow.txt")
    assert report == {"first.txt": "cached", "slow.txt": "built"}
    assert project.read("slow.txt") == "done\n"


def test_when_slots_are_short_the_work_that_finishes_a_chain_goes_first(project):
    # Six models, each with a report: with one slot, each report runs as soon
    # as its model is ready, not after every model.
    project.batchfile("""
        MODELS = [a, b, c, d, e, f]
        @for m in MODELS
        model-$(m).txt:
            echo model-$(m) >> order.log; echo $(m) > $@
        @for m in MODELS
        report-$(m).txt: model-$(m).txt
            echo report-$(m) >> order.log; cat $< > $@
        @default
        all: report-$(MODELS).txt
    """)
    project.build("-j1")
    order = project.read("order.log").split()
    assert order.index("report-a") < order.index("model-b"), order


def test_a_recipe_gets_as_many_math_threads_as_the_cores_it_holds(project):
    project.batchfile("""
        @cpus 2
        two.txt:
            echo "$$BB_CPUS $$OMP_NUM_THREADS $$OPENBLAS_NUM_THREADS $$MKL_NUM_THREADS" > $@
        one.txt:
            echo "$$BB_CPUS $$OMP_NUM_THREADS" > $@
    """)
    project.build("-j4", "two.txt", "one.txt")
    assert project.read("two.txt") == "2 2 2 2\n"
    assert project.read("one.txt") == "1 1\n"
    project.bb("build", "-B", "-j1", "two.txt", check=0)  # it holds at most the slots there are
    assert project.read("two.txt") == "1 1 1 1\n"
