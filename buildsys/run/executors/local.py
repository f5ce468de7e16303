"""Run recipes as local processes, each in its own process group so that a
timeout, Ctrl-C or the end of its shell stops the whole tree it started.

A recipe's output is read through a pipe into memory (the last LOG_LIMIT
bytes): creating a log file per recipe costs more than a trivial recipe.
A recipe ends when its shell exits: what it left running in the background
is killed then, so it can neither hold the build nor touch an output after
the output was recorded."""
from __future__ import annotations

import os
import re
import select
import signal
import threading
import time

from buildsys.run.executors import Job, Outcome
from buildsys.run.executors.spawn import spawn
from buildsys.run.supervisor import MARK, Supervisor

GRACE_SECONDS = 5.0
LOG_LIMIT = 8 << 20
# Linux refuses any one argument longer than 128 KiB (MAX_ARG_STRLEN): a
# longer recipe (generated, say) runs from a temporary file, not `sh -c`.
LONGEST_ARGUMENT = (128 << 10) - 1


class LocalExecutor:
    """`journal`: where the ids of running builds are kept (.bb/running), so
    that recipes left by a bb that died are found and stopped."""

    def __init__(self, journal: str):
        self._running: dict[int, threading.Lock] = {}  # pid (= its group) -> held until it is reaped
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._journal = journal
        self._build_id = os.urandom(8).hex()
        self._supervisor: Supervisor | None = None

    def run(self, job: Job) -> Outcome:
        script = None
        if len(job.recipe.encode()) > LONGEST_ARGUMENT:
            try:
                script = _script_file(job.recipe)
            except OSError as err:
                return Outcome(127, time.time(), 0.0, output=f"bb: cannot write its recipe (too long for one argument) to a temporary file: {err}. Free space there, or point TMPDIR at another folder.\n".encode())
        try:
            return self._run(job, script)
        finally:
            if script is not None:
                os.unlink(script)

    def _run(self, job: Job, script: str | None) -> Outcome:
        started = time.time()
        if self._supervisor is None:
            with self._lock:  # started with the first recipe, once
                if self._supervisor is None:
                    _close_inherited_fds()
                    self._supervisor = Supervisor(self._build_id, self._journal)
        if self._cancelled.is_set():
            return Outcome(130, started, 0.0, interrupted=True)
        try:
            pid, out = _spawn(job, {**job.env, MARK: self._build_id}, script)
        except OSError as err:
            return Outcome(127, started, time.time() - started, output=f"bb: cannot start {job.shell}: {err}\n".encode())
        # Held until the shell is reaped; _stop waits on it. (A plain lock:
        # an Event per recipe costs more than this whole bookkeeping.)
        ended = threading.Lock()
        ended.acquire()
        with self._lock:
            self._running[pid] = ended
        if self._cancelled.is_set():  # cancelled while it was starting
            _signal_group(pid, signal.SIGKILL)
        timer = None
        expired = []
        if job.timeout:
            def expire():
                expired.append(True)
                _stop([(pid, ended)])

            timer = threading.Timer(job.timeout, expire)
            timer.daemon = True
            timer.start()
        status = None
        try:
            output = _read_until_exit(pid, out)
            # The shell has exited but is not reaped yet, so its pid, and with
            # it the group id, cannot be reused: the group is safe to kill.
            _signal_group(pid, signal.SIGKILL)
            status = _reap(pid)
        finally:
            if status is None:  # an error while reading: never leave it running
                _signal_group(pid, signal.SIGKILL)
                _reap(pid)
            ended.release()
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._running.pop(pid, None)
        return Outcome(
            status,
            started,
            time.time() - started,
            timed_out=bool(expired),
            interrupted=self._cancelled.is_set(),
            output=output,
        )

    def close(self) -> None:
        """Every recipe has ended: no supervision needed any more."""
        if self._supervisor is not None:
            self._supervisor.close()
            self._supervisor = None

    def cancel_all(self) -> None:
        """Stop every running recipe at once: SIGTERM to all, then SIGKILL to
        those still running after one shared grace period."""
        self._cancelled.set()
        with self._lock:
            running = list(self._running.items())
        _stop(running)


# Signals Python ignores for itself that a recipe must get with their default
# action (`yes | head` ends by SIGPIPE), as subprocess's restore_signals does.
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


def _script_file(recipe: str) -> str:
    """A recipe too long for `sh -c`, in a temporary file for `sh -e FILE`."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bb-recipe-", suffix=".sh")
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(recipe)
    return path


def _spawn(job: Job, env: dict, script: str | None = None) -> tuple[int, int]:
    """Start the recipe in a session of its own (so its group can be killed
    as one), stdin from /dev/null, stdout and stderr into one pipe; returns
    its pid and the pipe's read end. posix_spawn costs bb a fraction of
    subprocess.Popen's CPU; it cannot change folders, so a job elsewhere than
    bb's working folder (a sandbox) goes through Popen. `script`: the file
    holding a recipe too long to be passed as an argument."""
    argv = [job.shell, "-e", script] if script else [job.shell, "-e", "-c", job.recipe]
    if _here(job.cwd):
        plain = _plain_command(job, env) if script is None else None
        if plain is not None:
            try:
                return _posix_spawn(plain[0][0], plain[0], env, plain[1], search=True)
            except OSError:
                pass  # not found, not executable, a file that does not open: the shell runs it and says why
        return _posix_spawn(job.shell, argv, env, (), search="/" not in job.shell)
    import subprocess  # (not needed by the common case, above)

    proc = subprocess.Popen(argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    proc.returncode = 0  # reaped by _reap, not by Popen: keep it from trying
    return proc.pid, out


def _posix_spawn(path: str, argv: list[str], env: dict, redirections, search: bool) -> tuple[int, int]:
    read, write = os.pipe()  # both ends close-on-exec; dup2 clears it on 1 and 2
    try:
        pid = spawn(
            path, argv, env,
            [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, write, 2), *redirections],
            _DEFAULT_SIGNALS, search,
        )
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return pid, read


# A recipe that is one command of plain words, its input or output perhaps
# redirected to a file, starts without a shell, as make runs such lines: a
# shell's start costs as much as a small command's whole run. Only words the
# shell would pass on unchanged qualify (no quote, $, glob, ~, comment,
# operator or assignment), and never a word the shell answers itself.
_SHELLS = frozenset(("sh", "dash", "bash"))
_WORD = r"-A-Za-z0-9_./,:+=@%"  # the characters of a plain word, for a [class] (- first: itself)
_PLAIN = re.compile(f"[{_WORD}]+")
_PLAIN_LINE = re.compile(f"[{_WORD} \t<>]+")
_REDIRECT = re.compile(f"(<|>>|>)([{_WORD}]*)")
# Builtins and keywords: some exist as programs too (echo, test, kill), with
# other behaviour. (A builtin that is no program fails to start and then
# runs in the shell anyway.)
_SHELL_WORDS = frozenset(
    ". : alias bg break builtin case cd command continue declare do done echo elif else esac eval exec exit export "
    "false fc fg fi for function getopts hash if in jobs kill let local printf pwd read readonly return select set "
    "shift source test then time times trap true type typeset ulimit umask unalias unset until wait while".split()
)


def _plain_command(job: Job, env: dict) -> tuple[list[str], list] | None:
    """(argv, file actions) of a recipe that needs no shell, else None."""
    if os.path.basename(job.shell) not in _SHELLS or env.get("PATH") != os.environ.get("PATH"):
        return None  # (posix_spawnp searches bb's own PATH)
    text = job.recipe.strip(" \t\n")
    if not _PLAIN_LINE.fullmatch(text):
        return None
    words = text.split()
    argv, actions = [], []
    i = 0
    while i < len(words):
        word = words[i]
        redirect = _REDIRECT.fullmatch(word) if "<" in word or ">" in word else None
        if redirect is not None:
            op, name = redirect.groups()
            if not name:
                i += 1
                name = words[i] if i < len(words) and _PLAIN.fullmatch(words[i]) else ""
            if not name:
                return None
            if op == "<":
                actions.append((os.POSIX_SPAWN_OPEN, 0, name, os.O_RDONLY, 0))
            else:
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if op == ">>" else os.O_TRUNC)
                actions.append((os.POSIX_SPAWN_OPEN, 1, name, flags, 0o666))
        elif "<" not in word and ">" not in word:
            argv.append(word)  # (the line is of plain characters, blanks and < >)
        else:
            return None
        i += 1
    if not argv or argv[0] in _SHELL_WORDS or "=" in argv[0]:
        return None
    return argv, actions


def _here(cwd: str) -> bool:
    """Is `cwd` this process's working folder?"""
    try:
        here = os.getcwd()
        return cwd == here or os.path.samefile(cwd, here)
    except OSError:
        return False


def _close_inherited_fds() -> None:
    """Descriptors bb itself inherited (fds past 2 left open by whoever
    started it) must not reach recipes, as Popen's close_fds ensured: mark
    them close-on-exec. bb's own descriptors are close-on-exec already."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed by now


def _reap(pid: int) -> int:
    """Wait for the shell; its exit code, or minus the signal that killed it."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return -signal.SIGKILL  # reaped elsewhere: it is gone
        return os.waitstatus_to_exitcode(status)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(running) -> None:
    for pid, _ in running:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for pid, ended in running:
        if ended.acquire(timeout=max(0.0, deadline - time.monotonic())):
            ended.release()
        else:
            _signal_group(pid, signal.SIGKILL)


def _read_until_exit(pid: int, fd: int) -> bytes:
    """The recipe's output until it exits (not until every process holding
    the pipe has closed it, nor only until the pipe closes); closes the
    pipe. The recipe is left unreaped."""
    buf = bytearray()
    truncated = False
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = -1  # no pidfd (an old kernel): read to the end of the pipe
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    open_pipe, exited = True, False
    try:
        while open_pipe and not exited:
            for ready, _ in poller.poll():
                if ready == pidfd:
                    exited = True
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_pipe = False
                    break
                buf += chunk
                if len(buf) > 2 * LOG_LIMIT:
                    del buf[: len(buf) - LOG_LIMIT]
                    truncated = True
        if exited and open_pipe:
            # The recipe is gone; take what is already in the pipe and stop.
            os.set_blocking(fd, False)
            try:
                while chunk := os.read(fd, 1 << 16):
                    buf += chunk
            except BlockingIOError:
                pass
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        os.close(fd)
    if not exited:
        # The pipe closed first: the recipe sent its output elsewhere (exec
        # >log 2>&1), or a program closes stderr as it exits. Wait for its end.
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped elsewhere: it is gone
    if len(buf) > LOG_LIMIT:
        del buf[: len(buf) - LOG_LIMIT]
        truncated = True
    if truncated:
        return b"[bb: earlier output dropped]\n" + bytes(buf)
    return bytes(buf)
