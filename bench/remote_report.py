"""bench/RESULTS_REMOTE.md from the raw results of bench/remote_bench.py."""
from __future__ import annotations

ORDER = ["DescribeJobQueues", "ListJobs", "DescribeJobDefinitions", "RegisterJobDefinition", "SubmitJob", "DescribeJobs", "TerminateJob"]


def _s(x) -> str:
    if x is None:
        return "–"
    return f"{x * 1000:.0f} ms" if abs(x) < 1 else f"{x:.2f} s" if abs(x) < 100 else f"{x:.0f} s"


def _calls(c: dict | None) -> str:
    if not c:
        return "none"
    items = sorted(c.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else 99, kv[0]))
    return ", ".join(f"{v} {k}" for k, v in items)


def _total(c: dict | None) -> int:
    return sum(c.values()) if c else 0


def _kinds(k: dict | None) -> str:
    return ", ".join(f"{v} {name}" for name, v in sorted((k or {}).items(), key=lambda kv: -kv[1])) or "none"


def _statuses(st: dict | None) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted((st or {}).items())) or "–"


def _exit(r: dict) -> str:
    return "" if r.get("rc") == 0 else f" (exit {r.get('rc')})"


def _mib(kb) -> str:
    return f"{kb / 1024:.0f} MiB" if kb else "–"


def _ratio(a, b) -> str:
    if not a or not b:
        return "–"
    r = a / b
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def _run_line(section: dict) -> str:
    r = section.get("run") or {}
    if not r:
        return ""
    line = (f"_From `{r['command']}` started {r['date']} ({r['minutes']:.1f} min for this section; load average "
            f"{' '.join(r['loadavg_start'])} at its start, {' '.join(r['loadavg_end'])} at its end; bb sources {r.get('code', '?')})._")
    if r.get("checkout_edited"):
        line += " _(The checkout's buildsys/ was edited meanwhile; bb ran from its snapshot, unaffected.)_"
    return line


def _image_text(img: dict | None) -> str:
    if not img:
        return "–"
    if img.get("building") or img.get("built_s") is not None:
        parts = [f"built in {_s(img.get('built_s'))}"]
        if img.get("wheelhouse"):
            w = img["wheelhouse"]
            parts.append(f"of which wheelhouse {_s(w['seconds'])} ({w['wheels']} wheels, {w['mb']:.1f} MB)")
        if img.get("pushed_s") is not None:
            parts.append(f"pushed in {_s(img['pushed_s'])} ({img.get('layers_sent')} layers sent)")
        return "; ".join(parts)
    if img.get("up_to_date"):
        return "up to date (no build, no push)"
    return "–"


def _image_seconds(img: dict | None) -> float:
    if not img:
        return 0.0
    return (img.get("built_s") or 0.0) + (img.get("pushed_s") or 0.0)


# ---- sections ---------------------------------------------------------------------------------


def _rounds(run: dict) -> dict:
    """Where a --remote build's wall time went: moto's own job time and bb's around it."""
    tl = run.get("timeline") or {}
    jobs = {j["job"]: j for j in run.get("jobs", [])}
    rounds = []
    for sub in tl.get("jobs", []):
        times = jobs.get(sub["job"], {})
        kids = times.get("children") or []
        stopped = max((c.get("stoppedAt") for c in kids if c.get("stoppedAt") is not None), default=times.get("stoppedAt"))
        created = min((c.get("createdAt") for c in kids if c.get("createdAt") is not None), default=times.get("createdAt"))
        running = [c["stoppedAt"] - c["startedAt"] for c in kids if c.get("startedAt") is not None and c.get("stoppedAt") is not None]
        if not kids and times.get("startedAt") is not None and times.get("stoppedAt") is not None:
            running = [times["stoppedAt"] - times["startedAt"]]
        rounds.append({
            "size": sub.get("size") or 1, "submitted": sub["submitted"], "created": created, "stopped": stopped,
            "seen": sub.get("seen_done"), "running": running,
        })
    image = _image_seconds(run.get("image"))
    first = tl.get("first_call")
    out = {"rounds": rounds, "image": image, "first_call": first, "wall": run["seconds"], "t_end": run.get("t_end", run["seconds"])}
    if rounds and all(r["stopped"] is not None and r["seen"] is not None for r in rounds):
        moto = sum(r["stopped"] - r["submitted"] for r in rounds)
        out["moto"] = moto
        out["detect"] = [r["seen"] - r["stopped"] for r in rounds]
        out["gaps"] = [rounds[i + 1]["submitted"] - rounds[i]["seen"] for i in range(len(rounds) - 1)]
        out["before"] = rounds[0]["submitted"] - image
        out["tail"] = out["t_end"] - rounds[-1]["seen"]
        out["overhead"] = run["seconds"] - image - moto
        out["jobs"] = sum(r["size"] for r in rounds)
    return out


def render_docker(d: dict) -> list[str]:
    lines = ["## 3. Real containers: a 6-way fan-out with moto's Docker-mode Batch", "", _run_line(d), ""]
    runs = {r["step"]: r for r in d.get("runs", [])}
    lines += [
        "`@for i in 1..6` makes `parts/$(i).txt` with `sh scripts/part.sh $(i) > $@` (inputs `data.txt` and the script); "
        "`total.txt` joins the six. The settings name the base image, the loopback registry, the queue, the cache "
        "(`s3://bb-bench/team` in moto) and a `requirements.txt` holding only a comment with the run's id, so that the "
        "environment image's tag is new to this machine: the first `--remote` really builds and pushes it (the base "
        "image is local; the layers bb's Dockerfile adds after the tag's label, the wheelhouse and the venv, are built anew). Every Batch job is a container "
        "of that image started by moto on the local Docker Engine; the worker in it reads its inputs from moto's S3 "
        "and writes the result there. bb polls every `BB_BATCH_POLL` = 5 s (its default).",
        "",
        "| run | wall | environment image (bb's own output) | Batch calls | S3 requests | registry requests | result |",
        "|---|---:|---|---|---:|---|---|",
    ]
    labels = {"first": "first `bb build --remote`", "edit": "after a code-only edit (`scripts/part.sh`), `bb build --remote`",
              "edit, poll 1 s": "after another such edit, with `BB_BATCH_POLL=1`"}
    for step in ("first", "edit", "edit, poll 1 s"):
        r = runs.get(step)
        if not r:
            continue
        lines.append(f"| {labels[step]} | {_s(r['seconds'])} | {_image_text(r['image'])} | {_total(r['batch'])}: {_calls(r['batch'])} | "
                     f"{_total(r['s3'])} | {_kinds(r['registry'])} | {_statuses(r['statuses'])}{_exit(r)} |")
    loc = d.get("local")
    if loc:
        lines.append(f"| peer: `bb build --no-cache` (local processes, the same Batchfile) | {_s(loc['seconds'])} | – | – | – | – | {_statuses(loc['statuses'])} |")
    peer = d.get("docker_backend")
    if peer:
        lines.append(f"| peer: `bb build --remote docker` (the same image and worker on the local Docker Engine, no Batch; a fresh cache prefix) | "
                     f"{_s(peer['seconds'])} | {_image_text(peer['image'])} | {_total(peer['batch'])} | – | – | {_statuses(peer['statuses'])} |")
    lines.append("")

    lines += ["**Where the time went** (from the proxy's timestamps of bb's Batch calls and moto's own job timestamps; "
              "\"moto\" is from SubmitJob to the last `stoppedAt` of the round, which includes starting the containers):", ""]
    lines += ["| run | before the first SubmitJob (image excluded) | round 1: 6-way array | seen done after | to the next SubmitJob | round 2: the join | seen done after | to bb's exit | moto in all | bb beyond moto and the image | per job |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for step in ("first", "edit", "edit, poll 1 s"):
        r = runs.get(step)
        if not r:
            continue
        w = _rounds(r)
        if "moto" not in w or len(w["rounds"]) != 2:
            lines.append(f"| {step} | – | – | – | – | – | – | – | – | – | – |")
            continue
        r1, r2 = w["rounds"]
        lines.append(
            f"| {step} | {_s(w['before'])} | {_s(r1['stopped'] - r1['submitted'])} | {_s(w['detect'][0])} | {_s(w['gaps'][0])} | "
            f"{_s(r2['stopped'] - r2['submitted'])} | {_s(w['detect'][1])} | {_s(w['tail'])} | {_s(w['moto'])} | {_s(w['overhead'])} | {_s(w['overhead'] / w['jobs'])} |")
        run1 = r1["running"]
        if run1:
            notes.append(f"{step}: the six containers ran {min(run1):.1f}-{max(run1):.1f} s each (moto's startedAt to stoppedAt, all at once on 2 cores), the join's {r2['running'][0]:.1f} s." if r2["running"] else "")
    lines.append("")
    first, edit = runs.get("first"), runs.get("edit")
    bullets = []
    if first:
        w = _rounds(first)
        img = first["image"]
        if img.get("built_s") is not None:
            bullets.append(
                f"The first `--remote` took {_s(first['seconds'])}, of which the environment image {_s(_image_seconds(img))} "
                f"({_s(img.get('built_s'))} to build, {_s(img.get('pushed_s'))} to push {img.get('layers_sent')} layers to the empty loopback registry, "
                f"as bb reports them); the jobs' part took {_s(first['seconds'] - _image_seconds(img))}.")
        if "overhead" in w:
            bullets.append(
                f"Beyond the image and moto's own job time ({_s(w['moto'])} for the two rounds), bb spent {_s(w['overhead'])}: "
                f"{_s(w['before'])} before its first SubmitJob (start-up, planning, the image's tag check, staging the actions and sources in S3), "
                f"{_s(sum(w['detect']))} between jobs ending and a DescribeJobs showing it (the 5 s poll), "
                f"{_s(sum(w['gaps']))} from seeing the array done to submitting the join (fetching 6 results, planning the join, staging it) "
                f"and {_s(w['tail'])} at the end (bringing `total.txt` home, sharing the plan bundle). "
                f"That is {_s(w['overhead'] / w['jobs'])} per job over {w['jobs']} jobs, most of it the poll interval: "
                f"the detection lag alone is {_s(sum(w['detect']))} of it.")
    fast = runs.get("edit, poll 1 s")
    if fast and edit:
        wf, we = _rounds(fast), _rounds(edit)
        if "overhead" in wf and "overhead" in we:
            bullets.append(
                f"With `BB_BATCH_POLL=1` the same kind of run took {_s(fast['seconds'])} against {_s(edit['seconds'])} at the default 5 s: "
                f"bb beyond moto {_s(wf['overhead'])} ({_s(wf['overhead'] / wf['jobs'])} per job; detection lag {_s(sum(wf['detect']))}) "
                f"against {_s(we['overhead'])} ({_s(we['overhead'] / we['jobs'])} per job), for {_total(fast['batch'])} Batch calls "
                f"({fast['batch'].get('DescribeJobs', 0)} DescribeJobs) against {_total(edit['batch'])} ({edit['batch'].get('DescribeJobs', 0)}). "
                "What is left at 1 s is bb's own work: start-up, planning, staging, collecting results, and the half-poll it waits on average.")
    if edit:
        img = edit["image"]
        reg = edit.get("registry") or {}
        pushes = sum(v for k, v in reg.items() if k.split()[0] in ("PUT", "POST", "PATCH"))
        bullets.append(
            f"After the code-only edit: {_s(edit['seconds'])}, bb said \"{'up to date' if img.get('up_to_date') else 'NOT up to date'}\" for the image, "
            f"{'built nothing' if not img.get('building') else 'BUILT the image'} and {'pushed nothing' if not img.get('pushing') else 'PUSHED'}; "
            f"the registry saw {_total(reg)} request(s) during the run ({_kinds(reg)}), {pushes} of them writes. "
            f"The edit reached the jobs as an input (the script's blob in S3), and all 7 targets were rebuilt because all read the script or its outputs.")
    if peer and first:
        jobs_part = first["seconds"] - _image_seconds(first["image"])
        bullets.append(
            f"The same 7 jobs with `--remote docker` (bb starts the containers itself, no Batch API) took {_s(peer['seconds'])}"
            f"{' (image up to date)' if peer['image'].get('up_to_date') else ''}, against {_s(jobs_part)} for the first Batch run without its image step "
            f"(Batch / Docker = {_ratio(jobs_part, peer['seconds'])}) and {_s(edit['seconds']) if edit else '–'} for the run after the edit"
            + (f", {_s(fast['seconds'])} with a 1 s poll" if fast else "") + "; "
            f"a local `bb build` of the same Batchfile takes {_s(loc['seconds']) if loc else '–'}.")
    bullets += [n for n in notes if n]
    lines += [f"- {b}" for b in bullets]
    lines.append("")
    lines.append(f"- moto_server's peak RSS in this section: {d.get('moto_peak_rss_mib', 0):.0f} MiB.")
    lines.append("")
    return lines


def render_fanout(f: dict) -> list[str]:
    n = f["n"]
    lines = [f"## 1. A {n}-way fan-out on moto's no-Docker Batch: API calls and time", "", _run_line(f), ""]
    lines += [
        f"`@for i in 1..{n}` makes `out/$(i).txt` with `echo $(i) > $@`; the default target `all.txt` joins them (`cat $^ > $@`, "
        "inputs `out/*.txt`). Same settings as section 3 (the environment image is the one section 3 built, \"up to date\" here, "
        "unless this section ran alone). moto's no-Docker mode marks a job SUCCEEDED inside SubmitJob and runs nothing.",
        "",
        "- **(a) as it is**: every job \"succeeds\" but no worker ran, so no result is in the cache: bb reports each of the "
        f"{n} targets failed (\"the remote job ended well but left no usable result in the store\", with `-k`), which is "
        "expected here, and never submits the join. The calls to submit and watch the fan-out, and the time, are real.",
        "- **(b) with host workers**: `bench/remote_proxy.py` stands in for the compute environment. Each job SubmitJob accepts "
        "is run on this machine by bb's worker code (`buildsys.worker.run`, what `python -m buildsys.worker` does in a container; "
        f"{(f.get('workers') or {}).get('threads', 2)} threads, one array child after another, against the same S3), and until its worker has finished, "
        "DescribeJobs and ListJobs show the job RUNNING (the array parent with a statusSummary counting its finished children). "
        "So jobs take time as on Batch, the build completes, and the join is submitted. The workers share this 2-core machine "
        "with bb and moto (the workers share one LocalExecutor, so a job does not pay for starting a recipe supervisor process).",
        "- **peers**: plain boto3 doing the same with 1 RegisterJobDefinition and then either "
        f"{n} SubmitJob calls or one array job of {n}, then DescribeJobs 100 ids a call until all ended.",
        "",
        "Batch calls are counted in moto_server's request log.",
        "",
        "| run | wall | bb's build (its --json) | Batch calls | by operation | S3 requests (bb's own) | result |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    a, b, peers = f.get("plain"), f.get("workers"), f.get("boto3") or {}

    def own(r):
        return (((r.get("summary") or {}).get("cache") or {}).get("requests"))

    if a:
        lines.append(f"| (a) `bb build --remote -k` | {_s(a['seconds'])} | {_s((a.get('summary') or {}).get('seconds'))} | {_total(a['batch'])} | {_calls(a['batch'])} | "
                     f"{_total(a['s3'])} ({own(a)}) | {_statuses(a['statuses'])} (expected: no worker ran) |")
    if b:
        lines.append(f"| (b) `bb build --remote`, host workers | {_s(b['seconds'])} | {_s((b.get('summary') or {}).get('seconds'))} | {_total(b['batch'])} | {_calls(b['batch'])} | "
                     f"{_total(b['s3'])} ({own(b)}; the rest are the workers') | {_statuses(b['statuses'])}; `all.txt` {'verified' if b.get('verified') else 'NOT verified'} |")
    for kind, label in (("separate", f"boto3: {n} separate jobs"), ("array", f"boto3: one array job of {n}")):
        p = peers.get(kind)
        if p:
            lines.append(f"| peer: {label} | {_s(p['seconds'])} | – | {_total(p['batch'])} | {_calls(p['batch'])} | – | (submit {_s(p['submit_seconds'])}) |")
    lines.append("")
    bullets = []
    if a:
        tl = a.get("timeline") or {}
        img = _image_seconds(a.get("image"))
        sub = (tl.get("submits") or [{}])[0]
        job = (tl.get("jobs") or [{}])[0]
        s3 = a.get("s3") or {}
        bullets.append(
            f"(a): bb made {_total(a['batch'])} Batch calls for {n} jobs: {a['batch'].get('SubmitJob', 0)} SubmitJob (one array job of {sub.get('size', '?')}) "
            f"and {a['batch'].get('DescribeJobs', 0)} DescribeJobs; the rest is set-up made once per run (the queue, the adoption scan of jobs in flight: "
            f"{a['batch'].get('ListJobs', 0)} ListJobs, one per active status; the job definition). "
            f"Its first Batch call came {_s(tl.get('first_call'))} after start"
            + (f", of which {_s(img)} building and pushing the environment image" if img else
               (" (the environment image was up to date: one HEAD to the registry)" if (a.get("image") or {}).get("up_to_date") else ""))
            + f"; the rest before it is planning with {s3.get('GET ac', 0) // 2 if s3.get('GET ac') else 0} result lookups in S3 and staging the {n} actions "
            f"({s3.get('HEAD cas', 0)} HEAD + {s3.get('PUT cas', 0)} PUT of blobs). SubmitJob at {_s(sub.get('t'))}, seen done at {_s(job.get('seen_done'))}, "
            f"bb exited at {_s(a.get('t_end'))} (the {n} failures: one fresh result lookup each, {s3.get('GET ac', 0)} GET ac in all).")
    if a and peers.get("separate"):
        p = peers["separate"]
        bullets.append(
            f"Against boto3 submitting {n} separate jobs ({_total(p['batch'])} calls, {_s(p['seconds'])}), bb's array needs "
            f"1/{_total(p['batch']) / max(1, _total(a['batch'])):.0f} of the calls ({a['batch'].get('SubmitJob', 0)} vs {p['batch'].get('SubmitJob', 0)} SubmitJob) "
            f"and {_s(((a.get('timeline') or {}).get('jobs') or [{}])[0].get('seen_done', 0) - ((a.get('timeline') or {}).get('submits') or [{}])[0].get('t', 0))} from SubmitJob to seeing all {n} done; "
            f"a boto3 array job is {_total(peers.get('array', {}).get('batch'))} calls in {_s(peers.get('array', {}).get('seconds'))}: "
            f"bb's {_total(a['batch'])} are that plus its once-per-run set-up.")
    if b:
        tl = b.get("timeline") or {}
        jobs = tl.get("jobs") or []
        polls = b.get("polls") or []
        lists = b.get("listjobs") or []
        s3 = b.get("s3") or {}
        if len(jobs) >= 2:
            arr, join = jobs[0], jobs[1]
            busy = (arr.get("worker_last_end") or 0) - (arr.get("worker_first_start") or 0)
            in_flight = (jobs[-1].get("seen_done") or 0) - (jobs[0].get("submitted") or 0)
            bullets.append(
                f"(b): {b['batch'].get('SubmitJob', 0)} SubmitJob (the array of {arr.get('size')} and the join) and {b['batch'].get('DescribeJobs', 0)} DescribeJobs "
                f"while jobs were in flight for {_s(in_flight)}: one DescribeJobs per poll (5 s), each covering every job in flight "
                f"(an array is one id), i.e. {len(polls) / in_flight * 60:.0f} a minute. While the array's children finished, each poll that "
                f"saw its statusSummary move also listed the children ({len(lists)} ListJobs with arrayJobId, one page each here; "
                f"AWS pages ListJobs at up to 1000 results without maxResults), so a long array costs about "
                f"two calls per poll, not one.")
            bullets.append(
                f"(b) timeline: first SubmitJob at {_s(arr.get('submitted'))} (planning with {n} result lookups and staging {n} actions in S3 before it); "
                f"the workers ran the {arr.get('size')} children from {_s(arr.get('worker_first_start'))} to {_s(arr.get('worker_last_end'))} "
                f"({_s(busy)}, {b.get('worker_seconds', 0) / max(1, b.get('worker_jobs', 1)) * 1000:.0f} ms of worker time per job on {b.get('threads')} threads); "
                f"bb saw the last done {_s((arr.get('seen_done') or 0) - (arr.get('worker_last_end') or 0))} later; "
                f"it submitted the join {_s((join.get('submitted') or 0) - (arr.get('seen_done') or 0))} after that "
                f"(reading the {arr.get('size')} new results from S3 and staging the join: its {n} inputs are checked against the bucket again, "
                f"{s3.get('GET list', 0)} LIST requests); the join's worker ran {_s((join.get('worker_last_end') or 0) - (join.get('worker_first_start') or 0))} "
                f"(fetching its {n} inputs), and bb exited {_s((b.get('t_end') or 0) - (join.get('seen_done') or 0))} after seeing it done.")
    lines += [f"- {x}" for x in bullets]
    lines += ["", f"- moto_server's peak RSS in this section: {f.get('moto_peak_rss_mib', 0):.0f} MiB.", ""]
    return lines


def render_cached(c: dict) -> list[str]:
    n = c["n"]
    lines = [f"## 2. {n:,} targets already in the shared cache: `bb build --remote` against `bb build`", "", _run_line(c), ""]
    lines += [
        f"The section 1 Batchfile with `@for i in 1..{n}` ({n + 1} targets), cache `s3://bb-bench/team` in moto (no-Docker Batch mode, so a "
        "job submitted by mistake would start no container). A remote result is keyed by the environment image's name, a local one by "
        "the local environment, so a local `bb build --cache` does **not** make a `--remote` build cached (README, \"Keys\"); "
        "the set-up therefore puts both kinds of results and both plan bundles in the bucket, from checkout A:",
        "",
        "| set-up step (checkout A) | wall | Batch calls | S3 requests | by kind | result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in c.get("setup", []):
        lines.append(f"| {s['step'][3:] if s['step'].startswith('A: ') else s['step']} | {_s(s['seconds'])} | {_total(s['batch'])} | {_total(s['s3'])} | {_kinds(s['s3'])} | {_statuses(s['statuses'])}{_exit(s)} |")
    lines += [
        "",
        f"The second step runs bb's own command line in-process with the remote executor replaced by one that runs each job here with "
        "bb's worker code against the local store (`bench/remote_hostexec.py`): the store gets exactly the results a remote run records, "
        f"without {n:,} containers. Before each set-up step the benchmark deletes `.bb/noop` (see the bug below). "
        f"After the set-up the bucket holds {c.get('results', '?')} results and {c.get('bundles', '?')} plan bundles.",
        "",
        "Then fresh checkouts B, C and D (the same two files, no `.bb`, no outputs):",
        "",
        "| step | wall | Batch calls | S3 requests | by kind | result | peak RSS |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for s in c.get("steps", []):
        lines.append(f"| {s['step']} | {_s(s['seconds'])} | {_total(s['batch'])} | {_total(s['s3'])} | {_kinds(s['s3'])} | "
                     f"{_statuses(s['statuses'])}{_exit(s)} | {_mib(s.get('maxrss_kb'))} |")
    lines.append("")

    def find(prefix):
        return next((s for s in c.get("steps", []) if s["step"].startswith(prefix)), None)

    b, cc, dd, b2, c2 = find("B (fresh"), find("C (fresh"), find("D (fresh"), find("B again"), find("C again")
    if b and cc:
        lines.append(
            f"- `bb build --remote` in a fresh checkout: **{_total(b['batch'])} Batch calls** (moto's log; the proxy saw {b.get('proxy_calls', 0)}), "
            f"{_total(b['s3'])} S3 requests ({_kinds(b['s3'])}: the plan bundle, then `all.txt`), {_s(b['seconds'])}. "
            f"The same work without `--remote` (`bb build --no-intermediates`: only the requested output comes home, as `--remote` does by default): "
            f"{_total(cc['s3'])} S3 requests, {_s(cc['seconds'])}: `--remote` / local = {_ratio(b['seconds'], cc['seconds'])}. "
            "What it adds: computing the environment image's tag (hashing bb's own source tree and the requirements), asking the registry "
            f"for that tag ({_kinds(b.get('registry'))} in the registry's log), and creating a Batch client that is never used: the executor "
            "starts with the first submission.")
    if dd and b:
        lines.append(
            f"- `bb build` with bb's defaults (a local build brings home every target's outputs): {_total(dd['s3'])} S3 requests, {_s(dd['seconds'])} "
            f"({_ratio(dd['seconds'], b['seconds'])} the `--remote` build's time), nearly all of it downloading the {n:,} intermediate outputs one GET each.")
    if b2 and c2:
        lines.append(f"- Run again in the same checkouts (the no-op path): `--remote` {_s(b2['seconds'])} and {_total(b2['batch'])} Batch calls, "
                     f"without `--remote` {_s(c2['seconds'])} ({_ratio(b2['seconds'], c2['seconds'])}).")
    probe = c.get("noop_probe")
    if probe:
        if probe["rc"] == 0 and probe.get("same_keys_as_local"):
            lines.append(
                f"- **Bug (bb's no-op stamp ignores `--remote`)**: right after a successful local `bb build`, `bb build --remote --no-cache` "
                f"exited 0 in {_s(probe['seconds'])} reporting {_statuses(probe['statuses'])} under the *local* keys: it took the no-op path "
                "(`buildsys/cli/main.py`, `_stamp`: the stamp's identity is the Batchfile, targets, overrides and store, not the executor nor the "
                "shared cache), so it neither checked the remote settings (without a shared cache that is a usage error, exit 2) nor built "
                "anything remotely, although every remote key differs. In the same way, `bb build` with the shared cache after `bb build --no-cache` "
                "shares nothing. The set-up above deletes `.bb/noop` before each step to get real builds.")
        else:
            lines.append(f"- The no-op stamp probe (`bb build --remote --no-cache` right after a local build) exited {probe['rc']} "
                         f"({_statuses(probe['statuses'])}): the stamp does not hide the change of executor.")
    lines += ["", f"- moto_server's peak RSS in this section: {c.get('moto_peak_rss_mib', 0):.0f} MiB.", ""]
    return lines


def render_goals(res: dict) -> list[str]:
    rows = []
    f = res.get("fanout")
    if f:
        a, b = f.get("plain") or {}, f.get("workers") or {}
        n = f["n"]
        for label, r in (("(a) no worker", a), ("(b) host workers", b)):
            if not r:
                continue
            sj, dj = r["batch"].get("SubmitJob", 0), r["batch"].get("DescribeJobs", 0)
            rows.append(f"| {n}-way fan-out + join, {label}: SubmitJob <= 10 | {sj} | {'yes' if sj <= 10 else 'no'} |")
            note = ""
            if label.startswith("(b)"):
                tl = r.get("timeline") or {}
                jobs = tl.get("jobs") or []
                if jobs and jobs[-1].get("seen_done"):
                    note = f" (jobs in flight {_s(jobs[-1]['seen_done'] - jobs[0]['submitted'])}: one per 5 s poll)"
            met = "yes" if dj <= 20 else "no"
            if label.startswith("(b)"):
                met += " (DescribeJobs grow by one per poll while jobs run: 20 calls are ~100 s of jobs at 5 s)"
            rows.append(f"| {n}-way fan-out + join, {label}: DescribeJobs <= 20 | {dj}{note} | {met} |")
    c = res.get("cached")
    if c:
        b = next((s for s in c.get("steps", []) if s["step"].startswith("B (fresh")), None)
        if b:
            rows.append(f"| {c['n']:,} cached targets: `bb build --remote` makes 0 Batch calls | {_total(b['batch'])} | {'yes' if _total(b['batch']) == 0 and b['rc'] == 0 else 'no'} |")
    d = res.get("docker")
    if d:
        edit = next((r for r in d.get("runs", []) if r["step"] == "edit"), None)
        if edit:
            ok = not edit["image"].get("building") and not edit["image"].get("pushing")
            rows.append(f"| code-only edit: no image build, no push | {'none' if ok else 'built/pushed'} | {'yes' if ok else 'no'} |")
    if not rows:
        return []
    return ["## Goals", "", "| goal | measured | met |", "|---|---|---|"] + rows + [""]


def render_issues(res: dict) -> list[str]:
    """What in these numbers looks like a problem in bb (each bullet only when the data shows it)."""
    out = []
    c = res.get("cached") or {}
    probe = c.get("noop_probe")
    if probe and probe["rc"] == 0 and probe.get("same_keys_as_local"):
        out.append("The no-op stamp ignores `--remote` (and the shared cache): `bb build --remote` right after a local build reports the "
                   "local results as cached and runs nothing remotely (section 2). `buildsys/cli/main.py`, `_stamp`: its identity "
                   "should include the executor (`args.remote` resolved with the `executor` setting) and the shared cache URL and mode.")
    f = res.get("fanout") or {}
    a, b = f.get("plain") or {}, f.get("workers") or {}
    n = f.get("n")
    if a and a.get("s3", {}).get("HEAD cas", 0) >= (n or 0) > 0:
        out.append(f"Staging a fan-out of {n} costs {a['s3'].get('HEAD cas', 0)} HEAD + {a['s3'].get('PUT cas', 0)} PUT requests before its "
                   "single SubmitJob (`Scheduler._submit_remote` then `TieredStore.push_blobs`: each new action blob is asked for, then "
                   "sent; an action is a few hundred bytes, so the HEAD saves nothing). On S3 that is a few seconds at 16 requests in "
                   "flight; sending without asking would halve it.")
    if b and b.get("s3", {}).get("GET list", 0) > 1:
        tl = b.get("timeline") or {}
        jobs = tl.get("jobs") or []
        gap = (jobs[1]["submitted"] - jobs[0]["seen_done"]) if len(jobs) >= 2 and jobs[0].get("seen_done") else None
        out.append(f"Run (b) of section 1 made {b['s3']['GET list']} LIST requests, (a) {a.get('s3', {}).get('GET list', 0)}: before submitting "
                   f"the join, `_submit_remote` pushes every input of its action, and the join's {n} inputs are outputs that remote jobs "
                   "have just written to the shared cache. Above 1,000 blobs `TieredStore.push_blobs` asks `S3Store.missing_blobs`, which "
                   "lists each two-hex-digit shard of the digests (up to 256) one after another on one thread (buildsys/store/s3.py); "
                   "below 1,000 it sends a HEAD per blob. "
                   + (f"bb took {_s(gap)} from seeing the array done to submitting the join. " if gap is not None else "")
                   + "On S3, 256 sequential LISTs are 5-10 s per join. Inputs known to come from the shared cache need no check, "
                   "and the shards could be listed in parallel.")
    if not out:
        return []
    return ["## Issues these numbers show", ""] + [f"- {x}" for x in out] + [""]


def render(res: dict) -> str:
    m = res["machine"]
    parts = []
    for name, title in (("fanout", "fan-out"), ("cached", "cached"), ("docker", "docker")):
        if name in res and (res[name].get("run") or {}).get("minutes") is not None:
            parts.append(f"{title} {res[name]['run']['minutes']:.1f} min")
    lines = [
        "# bb remote execution (AWS Batch, emulated by moto): benchmark results",
        "",
        f"Generated by `{res.get('command', 'python bench/remote_bench.py')}` on {m['date']}, in {res['total_seconds'] / 60:.1f} min. "
        "`bench/remote_bench.py` is the reference for what is run and how; each run rewrites this file "
        "(with `--only`, keeping the sections it did not run, each of which names its run).",
        "",
        "Time per section: " + "; ".join(parts) + "." + (f" Why this run: {res['label']}." if res.get("label") else ""),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, nproc = {m['nproc']}; memory {m['mem_gib']:.1f} GiB; kernel {m['kernel']}",
        f"- Python {m['python']}; {m['bb']} at commit {m['commit']} ({'the working tree' if 'working' in m.get('source', '') else 'git archive of that commit'}, run through PYTHONPATH; sources digest {m['code']})",
        f"- boto3 {m['boto3']}, botocore {m['botocore']}; moto {m['moto']} (moto_server on 127.0.0.1, started by tests/infra/moto.py); docker SDK {m['docker_sdk']}",
        f"- Docker Engine {m['docker']}; docker-registry {m['registry']} on 127.0.0.1 (tests/infra/registry.py); base image {res.get('base_image', '?')} (tests/infra/base_image.py)",
        f"- work folder: `{m['fs']}`",
        f"- load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(res['loadavg_end'])}: the machine was shared with other jobs (each section names its own)",
        "",
        "**moto is not AWS Batch.** Its API answers in a few milliseconds of Python, with no rate limit; in Docker mode it starts every "
        "job's container at once (no scheduling, no instance to wait for, no resource limits), and in no-Docker mode a job is SUCCEEDED "
        "inside SubmitJob. So the **call counts** carry over to AWS (where Batch allows ~50 calls a second per account, and every call has "
        "10-100 ms of latency), while the **times** measure bb's own overhead on a loaded 2-core machine, not what a job waits for on AWS "
        "(an instance to start, an image to pull: tens of seconds to minutes). S3 is moto's too: ~100-200 requests a second in all here, "
        "so steps that make thousands of S3 requests are slower here than on S3, where bb runs 16 at a time against 10-50 ms of latency.",
        "",
    ]
    lines += render_goals(res)
    if "fanout" in res:
        lines += render_fanout(res["fanout"])
    if "cached" in res:
        lines += render_cached(res["cached"])
    if "docker" in res:
        lines += render_docker(res["docker"])
    lines += render_issues(res)
    lines += NOTES
    return "\n".join(lines) + "\n"


NOTES = [
    "## How",
    "",
    "- Single runs, not medians: the docker section alone is 2-3 minutes, most of it the image build. Other jobs shared the "
    "machine (see the load averages); repeat runs here moved times by up to ~40%.",
    "- Batch calls: moto_server's request log (werkzeug, one line per HTTP request: `POST /v1/submitjob`...), between the start and the "
    "end of each command, so retries and every caller's calls count; the benchmark's own boto3 calls are outside those marks. S3 "
    "requests: the same log, by method and key prefix (`ac/` results, `cas/` blobs, `bundles/`, `list` = ListObjectsV2).",
    "- Times: wall clock around each `bb` process. Batch traffic goes through `bench/remote_proxy.py` (bb gets "
    "`AWS_ENDPOINT_URL_BATCH`; S3 and the job containers use moto directly through `AWS_ENDPOINT_URL`), which records when each "
    "call was made and what its answer said, so the timelines (first SubmitJob, when a job was first seen done) come from there; "
    "the proxy adds about a millisecond per Batch call. Job times are moto's `createdAt`/`startedAt`/`stoppedAt` (`startedAt` is set "
    "when the job goes RUNNING, before its container exists).",
    "- bb runs from a snapshot of its sources taken at the start (`git archive` of HEAD or of `--commit REV`, or the working tree with `--working-tree`) "
    "through PYTHONPATH: the environment image's tag covers bb's source, so an edit made in the checkout during the run would "
    "otherwise build a new image mid-run. Everything the benchmark starts (moto_server, the registry, the proxies) is stopped by its "
    "pid, moto is reset first (its job containers are removed), and the environment images bb built are removed by reference.",
    "",
]
