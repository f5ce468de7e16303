"""The per-task fast paths keep their guarantees: outputs never go through a
symlinked folder leading out, recipes start the way subprocess started them
(own session, default SIGPIPE, no stray descriptors, the build's mark), and
cached keys and environments are the ones computed from scratch."""
from __future__ import annotations

import json
import os
import sys

import pytest

from buildsys.keys.action import Action
from buildsys.run.executors import Job
from buildsys.run.executors.local import LocalExecutor
from buildsys.run.materialize import UnsafePath, output_path
from buildsys.run.supervisor import MARK

# ---- output paths ----------------------------------------------------------------------


def test_output_path_refuses_a_symlinked_folder_leading_out(tmp_path):
    root, outside = tmp_path / "ws", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "a" / "link")
    with pytest.raises(UnsafePath):
        output_path(str(root), "a/link/x.txt")
    with pytest.raises(UnsafePath):
        output_path(str(root), "a/link/deeper/x.txt")
    with pytest.raises(UnsafePath):
        output_path(str(root), "../x.txt")


def test_output_path_allows_folders_inside_and_not_yet_made(tmp_path):
    root = tmp_path / "ws"
    (root / "real" / "sub").mkdir(parents=True)
    os.symlink(root / "real", root / "alias")  # a symlink that stays inside
    assert output_path(str(root), "alias/sub/x.txt") == str(root / "alias/sub/x.txt")
    assert output_path(str(root), "new/deep/x.txt") == str(root / "new/deep/x.txt")
    assert output_path(str(root), "real/sub/") == str(root / "real/sub")
    # the output itself may be a symlink: only the folders above it matter
    os.symlink("/", root / "top")
    assert output_path(str(root), "top") == str(root / "top")


def test_output_path_works_from_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "out").mkdir(parents=True)
    os.symlink(real, tmp_path / "ws")
    assert output_path(str(tmp_path / "ws"), "out/x.txt") == str(tmp_path / "ws/out/x.txt")


# ---- spawning recipes --------------------------------------------------------------------


@pytest.fixture(params=["libc", "os"])
def executor(tmp_path, request, monkeypatch):
    """Recipes start through libc's posix_spawn (the GIL released), or
    through os.posix_spawn where libc has none: the same guarantees."""
    from buildsys.run.executors import spawn

    if request.param == "os":
        monkeypatch.setattr(spawn, "_LIBC", None)
    else:
        assert spawn._LIBC is not None, "libc's posix_spawn was not found: recipes hold the GIL as they start"
    ex = LocalExecutor(str(tmp_path / ".bb" / "running"))
    yield ex
    ex.close()


def _job(recipe: str, cwd: str, shell: str = "/bin/sh", timeout: float = 0) -> Job:
    return Job("t", recipe, shell, cwd, {"PATH": os.environ.get("PATH", os.defpath)}, timeout)


@pytest.mark.parametrize("elsewhere", [False, True], ids=["in bb's folder", "in another folder"])
def test_a_recipe_runs_in_its_own_session_with_default_signals_and_no_stray_fds(executor, tmp_path, monkeypatch, elsewhere):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path if elsewhere else work)
    stray = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(stray, True)  # as if bb had inherited it
    try:
        out = executor.run(_job(
            "pwd; yes | head -1; ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; "
            "ps -o sid= -p $$; echo $$; echo \"$" + MARK + "\"",
            str(work),
        ))
    finally:
        os.close(stray)
    assert out.exit_code == 0, out.output
    lines = out.output.decode().splitlines()
    assert lines[0] == os.path.realpath(work)
    assert lines[1] == "y"  # SIGPIPE is not ignored: `yes` ended
    assert lines[2].split()[:3] == ["0", "1", "2"] and str(stray) not in lines[2].split()[3:]
    assert lines[3].strip() == lines[4]  # the shell leads a session of its own
    assert len(lines[5]) == 16


def test_exit_codes_signals_missing_shells_and_timeouts(executor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    assert executor.run(_job("exit 3", here)).exit_code == 3
    assert executor.run(_job("kill -9 $$", here)).exit_code == -9
    assert executor.run(_job("echo ok", here, shell="sh")).output == b"ok\n"
    missing = executor.run(_job("true", here, shell=str(tmp_path / "no-shell")))
    assert missing.exit_code == 127 and b"cannot start" in missing.output
    slow = executor.run(_job("sleep 30", here, timeout=0.2))
    assert slow.timed_out and slow.exit_code != 0
    # a recipe that sends its own output elsewhere runs to its end (and is
    # still stopped at its timeout)
    logged = executor.run(_job("exec >/dev/null 2>&1; sleep 0.3; touch done.txt", here))
    assert logged.exit_code == 0 and os.path.exists("done.txt")
    silent = executor.run(_job("exec >/dev/null 2>&1; sleep 30", here, timeout=0.2))
    assert silent.timed_out and silent.exit_code != 0


def test_a_background_process_is_killed_when_its_shell_ends(executor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = executor.run(_job("sleep 60 & echo $!", str(tmp_path)))
    pid = int(out.output)
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        import time

        time.sleep(0.02)
    else:
        pytest.fail("the background process outlived its recipe")


def _parent_script(folder) -> None:
    """./parent.py prints the name of the process that started it."""
    script = folder / "parent.py"
    script.write_text(f"#!{sys.executable}\nimport os\nprint(open(f'/proc/{{os.getppid()}}/comm').read().strip())\n")
    script.chmod(0o755)


def test_a_one_command_recipe_starts_without_a_shell_and_behaves_as_under_one(executor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    _parent_script(tmp_path)
    with open("/proc/self/comm") as f:
        me = f.read().strip()
    assert executor.run(_job("./parent.py > who.txt", here)).exit_code == 0
    assert (tmp_path / "who.txt").read_text().strip() == me  # started by bb itself
    assert executor.run(_job("./parent.py > who.txt; true", here)).exit_code == 0
    assert (tmp_path / "who.txt").read_text().strip() != me  # shell syntax: a shell started it

    # redirections as the shell makes them
    (tmp_path / "in.txt").write_text("hello\n")
    assert executor.run(_job("cat in.txt > out.txt", here)).exit_code == 0
    assert executor.run(_job("  cat < in.txt >>out.txt\n", here)).exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "hello\nhello\n"
    # what the shell would answer otherwise is still the shell's answer
    missing = executor.run(_job("no-such-program-bb in.txt > out.txt", here))
    assert missing.exit_code == 127 and b"not found" in missing.output
    unreadable = executor.run(_job("cat < no-such-file.txt", here))
    assert unreadable.exit_code != 0 and b"no-such-file.txt" in unreadable.output
    (tmp_path / "plain-script").write_text("echo run by the shell\n")
    (tmp_path / "plain-script").chmod(0o755)  # no #! line: the shell runs it as a script
    assert executor.run(_job("./plain-script > out.txt", here)).exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "run by the shell\n"
    # an assignment, a builtin, a quote, a glob: the shell
    assert b"BB_TEST_VAR=1" in executor.run(_job("BB_TEST_VAR=1 env", here)).output
    assert executor.run(_job("echo 'a  b'", here)).output == b"a  b\n"
    assert executor.run(_job("ls *.txt", here)).output.split() == [b"in.txt", b"out.txt", b"who.txt"]
    # a shell that is not a POSIX one runs everything itself
    assert executor.run(_job("cat in.txt", here, shell=str(tmp_path / "no-shell"))).exit_code == 127


def test_bb_runs_a_one_command_recipe_without_a_shell_and_any_recipe_to_its_end(project):
    _parent_script(project.root)
    project.batchfile("""
        who.txt: parent.py
            ./parent.py > $@

        fails.txt:
            no-such-program-bb > $@

        logged.txt:
            exec > logged.log 2>&1
            sleep 0.2
            echo done > $@
    """)
    assert project.build("who.txt", "logged.txt") == {"who.txt": "built", "logged.txt": "built"}
    assert project.read("logged.txt") == "done\n"
    assert project.read("who.txt").strip() in ("bb", "python3", "python3.11", "python")  # bb's own process
    proc = project.bb("build", "fails.txt", check=1)
    assert "exited with code 127" in proc.stderr and "not found" in proc.stderr


def test_a_recipe_longer_than_an_argument_may_be_runs_from_a_file(project, tmp_path):
    """Linux refuses one argument of more than 128 KiB: a generated recipe
    that long still runs, all of it, with `sh -e` semantics, and leaves no
    temporary file behind."""
    lines = [f"echo line {i} {'x' * 100} >> $@" for i in range(1500)]  # ~180 KB
    project.batchfile("out.txt:\n" + "".join(f"    {line}\n" for line in lines) + "\nfails.txt:\n" + "".join(f"    echo {'y' * 100} > /dev/null\n" for _ in range(1500)) + "    false\n    echo not reached > $@\n")
    assert project.build("out.txt", env={"TMPDIR": str(tmp_path)}) == {"out.txt": "built"}
    text = project.read("out.txt").splitlines()
    assert len(text) == 1500 and text[0].startswith("line 0 ") and text[-1].startswith("line 1499 ")
    proc = project.bb("build", "fails.txt", check=1, env={"TMPDIR": str(tmp_path)})
    assert "exited with code 1" in proc.stderr and not (project.root / "fails.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bb-recipe-")]


# ---- memos -----------------------------------------------------------------------------


def test_an_actions_key_is_computed_once_and_matches_its_encoding():
    action = Action("t", "echo", (("a", "0" * 64, False),), ("o",), (), (), ())
    from buildsys.digest import hash_bytes

    assert action.key() == hash_bytes(action.canonical())
    body = [action.schema, action.recipe, action.inputs, action.outputs, action.params, action.env, action.environment]
    assert action.canonical() == json.dumps(body, separators=(",", ":")).encode()  # the encoding keys were made with
    assert action.key() is action.key()
    assert action == Action("t", "echo", (("a", "0" * 64, False),), ("o",), (), (), ())
