"""Process-wide malloc tuning for `volpack serve`, a long-running server with a thread per client.

glibc gives threads their own malloc arenas (up to eight per core), and memory freed in one arena
serves only the threads using it: frames decoded by many client threads leave every arena holding
freed frames, and resident memory grows far past what is live. One arena lets every thread reuse
what another freed. Only the serve process calls this, before its first thread; elsewhere (other C
libraries) it does nothing.
"""

from __future__ import annotations

import ctypes

_M_ARENA_MAX = -8  # glibc malloc.h


def use_one_malloc_arena() -> bool:
    """Limit glibc malloc to one arena; True when it took effect."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it, and mallopt's M_ARENA_MAX
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, 1))
