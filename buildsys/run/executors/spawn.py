"""Start a process with libc's posix_spawn, the GIL released meanwhile.

os.posix_spawn holds the GIL for the whole call, and the call lasts until
the child has exec'ed (glibc's child shares the parent's memory until
then): about 0.2 ms per recipe on which every other thread of bb waits,
the one that would start the next recipe or record the last. Through
ctypes (a CDLL call releases the GIL) the other threads go on. Where libc
has no posix_spawn, os.posix_spawn does it."""
from __future__ import annotations

import ctypes
import os

# glibc's and musl's values (spawn.h): the flags os.posix_spawn sets for
# setsid=True and setsigdef=...
_SETSIGDEF = 0x04
_SETSID = 0x80
_OPAQUE = 1024  # bytes for posix_spawn_file_actions_t, posix_spawnattr_t, sigset_t (glibc: 80, 336, 128)


def _libc():
    try:
        libc = ctypes.CDLL(None)  # (errors come back as return values, not errno)
        for name in ("posix_spawn", "posix_spawnp", "posix_spawn_file_actions_init", "posix_spawn_file_actions_addopen", "posix_spawn_file_actions_adddup2",
                     "posix_spawn_file_actions_destroy", "posix_spawnattr_init", "posix_spawnattr_setflags", "posix_spawnattr_setsigdefault",
                     "sigemptyset", "sigaddset"):
            getattr(libc, name)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if os.uname().sysname == "Linux" else None


_attrs: dict[tuple, ctypes.Array] = {}  # setsigdef -> its posix_spawnattr_t, made once: it is only read


def _attr(setsigdef: tuple) -> ctypes.Array:
    attr = _attrs.get(setsigdef)
    if attr is None:
        libc = _LIBC
        attr, sigset = ctypes.create_string_buffer(_OPAQUE), ctypes.create_string_buffer(_OPAQUE)
        libc.posix_spawnattr_init(attr)
        libc.sigemptyset(sigset)
        for sig in setsigdef:
            libc.sigaddset(sigset, sig)
        libc.posix_spawnattr_setsigdefault(attr, sigset)
        libc.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSID | _SETSIGDEF))
        attr = _attrs.setdefault(setsigdef, attr)
    return attr


_environs: dict[tuple, ctypes.Array] = {}  # the recipes' environments, encoded: all but a few are the same


def _environ(env: dict) -> ctypes.Array:
    items = tuple(env.items())
    envp = _environs.get(items)
    if envp is None:
        if len(_environs) > 64:
            _environs.clear()
        envp = _environs[items] = (ctypes.c_char_p * (len(items) + 1))(*[os.fsencode(k) + b"=" + os.fsencode(v) for k, v in items], None)
    return envp


def spawn(path: str, argv: list[str], env: dict, file_actions: list, setsigdef: tuple, search: bool) -> int:
    """os.posix_spawn(path, argv, env, file_actions=..., setsid=True,
    setsigdef=...), or with `search` os.posix_spawnp, with the GIL released
    while the child starts; its pid."""
    libc = _LIBC
    if libc is None:
        call = os.posix_spawnp if search else os.posix_spawn
        return call(path, argv, env, file_actions=file_actions, setsid=True, setsigdef=setsigdef)
    attr = _attr(setsigdef)
    actions = ctypes.create_string_buffer(_OPAQUE)
    libc.posix_spawn_file_actions_init(actions)
    try:
        for action in file_actions:
            if action[0] == os.POSIX_SPAWN_OPEN:
                _, fd, name, flags, mode = action
                err = libc.posix_spawn_file_actions_addopen(actions, fd, os.fsencode(name), flags, mode)  # (glibc copies the path)
            else:  # POSIX_SPAWN_DUP2
                err = libc.posix_spawn_file_actions_adddup2(actions, action[1], action[2])
            if err:
                raise OSError(err, os.strerror(err))
        args = (ctypes.c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
        envp = _environ(env)
        pid = ctypes.c_int()
        call = libc.posix_spawnp if search else libc.posix_spawn
        err = call(ctypes.byref(pid), os.fsencode(path), actions, attr, args, envp)
        if err:
            raise OSError(err, os.strerror(err), path)
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
