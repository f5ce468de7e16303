"""Start a recipe's process with posix_spawn, in a session of its own, with
the default action for the signals Python ignores (`yes | head` ends by
SIGPIPE, as subprocess's restore_signals ensures), without holding the GIL.

os.posix_spawn keeps the interpreter lock while the kernel starts the child
(the parent waits for the exec: a few hundred microseconds), so with -j2 and
more every other thread of bb, the one planning and those recording finished
recipes, stops for each start. libc's posix_spawn called through ctypes lets
them run meanwhile. Where libc lacks what this needs (a new session,
POSIX_SPAWN_SETSID, is glibc 2.26 and later), os.posix_spawn does the work.
"""
from __future__ import annotations

import os
import signal
import threading

_SETSIGDEF = 0x04  # <spawn.h>
_SETSID = 0x80
_OPAQUE = 1024  # bytes for libc's opaque types: glibc's largest, posix_spawnattr_t, takes 336

DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))

_lock = threading.Lock()
_loaded = False
_libc = None
_attr = None  # libc's spawn attributes: a new session, DEFAULT_SIGNALS


def _load() -> None:
    """libc and the spawn attributes, once."""
    global _loaded, _libc, _attr
    with _lock:
        if _loaded:
            return
        _loaded = True
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            attr = ctypes.create_string_buffer(_OPAQUE)
            signals = ctypes.create_string_buffer(_OPAQUE)  # a sigset_t
            if libc.posix_spawnattr_init(attr) or libc.sigemptyset(signals):
                return
            if any(libc.sigaddset(signals, sig) for sig in DEFAULT_SIGNALS):
                return
            if libc.posix_spawnattr_setsigdefault(attr, signals) or libc.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSIGDEF | _SETSID)):
                return
            _libc, _attr = libc, attr
        except (ImportError, OSError, AttributeError):
            pass


def spawn(path: str, argv: list[str], env: dict, file_actions: list, search: bool) -> int:
    """os.posix_spawn(p)(path, argv, env, file_actions=..., setsid=True,
    setsigdef=DEFAULT_SIGNALS), the GIL released while the child starts;
    returns its pid. Raises OSError as os.posix_spawn does."""
    if not _loaded:
        _load()
    if _libc is None:
        start = os.posix_spawnp if search else os.posix_spawn
        return start(path, argv, env, file_actions=file_actions, setsid=True, setsigdef=DEFAULT_SIGNALS)
    import ctypes

    libc = _libc
    actions = ctypes.create_string_buffer(_OPAQUE)
    if libc.posix_spawn_file_actions_init(actions):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    try:
        for action in file_actions:
            if action[0] == os.POSIX_SPAWN_OPEN:
                _, fd, name, flags, mode = action
                err = libc.posix_spawn_file_actions_addopen(actions, fd, os.fsencode(name), flags, mode)
            else:  # os.POSIX_SPAWN_DUP2
                _, fd, new = action
                err = libc.posix_spawn_file_actions_adddup2(actions, fd, new)
            if err:
                raise OSError(err, os.strerror(err))
        args = (ctypes.c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
        variables = (ctypes.c_char_p * (len(env) + 1))(*(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()), None)
        pid = ctypes.c_int()
        err = (libc.posix_spawnp if search else libc.posix_spawn)(ctypes.byref(pid), os.fsencode(path), actions, _attr, args, variables)
        if err:
            raise OSError(err, os.strerror(err), path)
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
