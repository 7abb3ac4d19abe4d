"""The system's libcrypto (OpenSSL 3 or 1.1.1) through ctypes: the few EVP calls sealed archives
use, typed once. ``load()`` is None where there is no such library.

Why not only `cryptography`: it holds the GIL for the whole of an AEAD call (see ``aead``), and
its module costs a backup about 7 MiB of memory while the system libcrypto is loaded anyway (by
``hashlib``). `cryptography` stays the fallback of ``aead`` and ``x25519`` and does Argon2id.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

_LIBRARIES = ("libcrypto.so.3", "libcrypto.so.1.1")
_EVP_NAMES = {
    "aes-256-gcm": ("AES-256-GCM", "EVP_aes_256_gcm"),
    "chacha20-poly1305": ("ChaCha20-Poly1305", "EVP_chacha20_poly1305"),
}
EVP_PKEY_X25519 = 1034  # NID_X25519
X25519_SIZE = 32


class Lib:
    """Typed EVP functions; ``cipher(label)`` is an EVP_CIPHER pointer or None when this
    libcrypto does not offer it (a FIPS provider without ChaCha20-Poly1305)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        ip, szp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t)
        self.lib = lib
        self.new = self._fn("EVP_CIPHER_CTX_new", p, [])
        self.free = self._fn("EVP_CIPHER_CTX_free", None, [p])
        self.ctrl = self._fn("EVP_CIPHER_CTX_ctrl", i, [p, i, i, p])
        self.enc_init = self._fn("EVP_EncryptInit_ex", i, [p, p, p, p, p])
        self.enc_update = self._fn("EVP_EncryptUpdate", i, [p, p, ip, p, i])
        self.enc_final = self._fn("EVP_EncryptFinal_ex", i, [p, p, ip])
        self.dec_init = self._fn("EVP_DecryptInit_ex", i, [p, p, p, p, p])
        self.dec_update = self._fn("EVP_DecryptUpdate", i, [p, p, ip, p, i])
        self.dec_final = self._fn("EVP_DecryptFinal_ex", i, [p, p, ip])
        self.clear_errors = self._fn("ERR_clear_error", None, [])
        self.pkey_private = self._fn("EVP_PKEY_new_raw_private_key", p, [i, p, p, sz])
        self.pkey_public = self._fn("EVP_PKEY_new_raw_public_key", p, [i, p, p, sz])
        self.pkey_raw_public = self._fn("EVP_PKEY_get_raw_public_key", i, [p, p, szp])
        self.pkey_free = self._fn("EVP_PKEY_free", None, [p])
        self.pctx_new = self._fn("EVP_PKEY_CTX_new", p, [p, p])
        self.pctx_free = self._fn("EVP_PKEY_CTX_free", None, [p])
        self.derive_init = self._fn("EVP_PKEY_derive_init", i, [p])
        self.derive_peer = self._fn("EVP_PKEY_derive_set_peer", i, [p, p])
        self.derive = self._fn("EVP_PKEY_derive", i, [p, p, szp])
        self._ciphers: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def _fn(self, name: str, restype: Any, argtypes: list[Any]) -> Callable[..., Any]:
        fn = getattr(self.lib, name)
        fn.restype, fn.argtypes = restype, argtypes
        return fn

    def cipher(self, label: str) -> int | None:
        with self._lock:
            if label not in self._ciphers:
                self._ciphers[label] = self._find(label)
            return self._ciphers[label]

    def _find(self, label: str) -> int | None:
        fetch_name, getter = _EVP_NAMES[label]
        fetch = getattr(self.lib, "EVP_CIPHER_fetch", None)
        if fetch is not None:  # OpenSSL 3: fetched once, kept for the process's life
            fetch.restype, fetch.argtypes = ctypes.c_void_p, [ctypes.c_void_p] * 3
            found = fetch(None, fetch_name.encode(), None)
            self.clear_errors()
            return int(found) if found else None
        legacy = getattr(self.lib, getter, None)
        if legacy is None:
            return None
        legacy.restype, legacy.argtypes = ctypes.c_void_p, []
        found = legacy()
        return int(found) if found else None

    def x25519_public(self, secret: bytes) -> bytes | None:
        """The public key of an X25519 secret key, or None if libcrypto refuses it."""
        key = self.pkey_private(EVP_PKEY_X25519, None, secret, len(secret))
        if not key:
            self.clear_errors()
            return None
        try:
            out = ctypes.create_string_buffer(X25519_SIZE)
            size = ctypes.c_size_t(X25519_SIZE)
            ok = self.pkey_raw_public(key, out, ctypes.byref(size)) == 1
            return out.raw[: size.value] if ok and size.value == X25519_SIZE else None
        finally:
            self.pkey_free(key)
            self.clear_errors()

    def x25519(self, secret: bytes, peer: bytes) -> bytes | None:
        """The X25519 shared secret, or None when libcrypto refuses (a low-order ``peer`` gives
        all zeros, which OpenSSL refuses)."""
        key = self.pkey_private(EVP_PKEY_X25519, None, secret, len(secret))
        other = self.pkey_public(EVP_PKEY_X25519, None, peer, len(peer))
        ctx = self.pctx_new(key, None) if key and other else None
        try:
            out = ctypes.create_string_buffer(X25519_SIZE)
            size = ctypes.c_size_t(X25519_SIZE)
            ok = (
                bool(ctx)
                and self.derive_init(ctx) == 1
                and self.derive_peer(ctx, other) == 1
                and self.derive(ctx, out, ctypes.byref(size)) == 1
                and size.value == X25519_SIZE
            )
            return out.raw if ok else None
        finally:
            for ptr, free in (
                (ctx, self.pctx_free),
                (other, self.pkey_free),
                (key, self.pkey_free),
            ):
                if ptr:
                    free(ptr)
            self.clear_errors()


_lib: Lib | None | bool = False  # False: not looked for yet
_lib_lock = threading.Lock()


def load() -> Lib | None:
    """The system libcrypto, loaded once; None where none is found (or it lacks a function)."""
    global _lib
    with _lib_lock:
        if _lib is False:
            _lib = None
            for name in _LIBRARIES:
                try:
                    _lib = Lib(ctypes.CDLL(name))
                    break
                except (OSError, AttributeError):
                    continue
        return _lib if isinstance(_lib, Lib) else None
