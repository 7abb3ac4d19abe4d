"""The AEAD primitive of sealed records, computed where other threads can run meanwhile.

`cryptography` holds the GIL for the whole of an AEAD call (measured with cryptography 48: a
spinning Python thread runs at 7 % of its idle rate while one 256 MiB `encrypt_into` lasts). A
backup seals each frame in a pool thread while the main thread reads and writes, so on a
two-core machine every frame sealed stopped the pipeline for its whole length. OpenSSL's EVP
interface called through ctypes releases the GIL for each call, so frames of ``EVP_MIN`` bytes
or more are sealed and opened there, with the system's libcrypto (OpenSSL 3 or 1.1). Smaller
records, and any cipher or machine where libcrypto cannot do it (no library, a FIPS provider
without ChaCha20-Poly1305), use `cryptography`; both give the same bytes (checked in the tests).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

TAG_SIZE = 16
# below this a record is sealed by `cryptography`: the ctypes calls cost some microseconds
EVP_MIN = 64 << 10
# OpenSSL's EVP_CTRL_AEAD_* codes, the same for GCM and ChaCha20-Poly1305
_SET_IVLEN, _GET_TAG, _SET_TAG = 0x9, 0x10, 0x11
_LIBRARIES = ("libcrypto.so.3", "libcrypto.so.1.1")
_EVP_NAMES = {
    "aes-256-gcm": ("AES-256-GCM", "EVP_aes_256_gcm"),
    "chacha20-poly1305": ("ChaCha20-Poly1305", "EVP_chacha20_poly1305"),
}

Buffer = bytes | bytearray | memoryview


class _Evp:
    """The few EVP functions used, typed once; ``cipher(name)`` is an EVP_CIPHER pointer or
    None when this libcrypto does not offer it."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i = ctypes.c_void_p, ctypes.c_int
        ip = ctypes.POINTER(ctypes.c_int)
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


_evp: _Evp | None | bool = False  # False: not looked for yet
_evp_lock = threading.Lock()


def _libcrypto() -> _Evp | None:
    global _evp
    with _evp_lock:
        if _evp is False:
            _evp = None
            for name in _LIBRARIES:
                try:
                    _evp = _Evp(ctypes.CDLL(name))
                    break
                except (OSError, AttributeError):
                    continue
        return _evp if isinstance(_evp, _Evp) else None


def _address(buf: Buffer) -> int:
    """The address of a contiguous buffer's first byte, read-only buffers included (numpy gives
    it without a copy; the caller keeps ``buf`` alive across the call)."""
    return int(np.frombuffer(buf, np.uint8).ctypes.data)


class Aead:
    """One AEAD key: `encrypt`/`decrypt` return new bytes, `encrypt_into`/`decrypt_into` write
    into a buffer (in place when it is the input's own memory), with the signatures and results
    of `cryptography`'s AEAD classes. A failed tag raises `cryptography`'s InvalidTag."""

    def __init__(self, label: str, key: bytes, evp: _Evp | None | bool = True) -> None:
        if label not in _EVP_NAMES:
            raise ValueError(f"unknown AEAD {label!r}")
        self.label = label
        self._key = bytes(key)
        self._slow = (AESGCM if label == "aes-256-gcm" else ChaCha20Poly1305)(self._key)
        lib = _libcrypto() if evp is True else (evp or None)
        self._cipher = lib.cipher(label) if lib is not None else None
        self._lib = lib if self._cipher is not None else None

    @property
    def releases_gil(self) -> bool:
        """Whether large records are sealed and opened by libcrypto with the GIL released."""
        return self._lib is not None

    def encrypt(self, nonce: bytes, data: Buffer, ad: bytes) -> bytes:
        return self._slow.encrypt(nonce, data, ad)

    def decrypt(self, nonce: bytes, data: Buffer, ad: bytes) -> bytes:
        return self._slow.decrypt(nonce, data, ad)

    def encrypt_into(self, nonce: bytes, data: Buffer, ad: bytes, out: memoryview) -> int:
        n = len(memoryview(data))
        if self._lib is None or n < EVP_MIN or not self._fits(data, n, out, n + TAG_SIZE):
            return int(self._slow.encrypt_into(nonce, data, ad, out))
        self._run(True, nonce, data, n, ad, out)
        return n + TAG_SIZE

    def decrypt_into(self, nonce: bytes, data: Buffer, ad: bytes, out: memoryview) -> int:
        n = len(memoryview(data)) - TAG_SIZE
        if self._lib is None or n < EVP_MIN or not self._fits(data, n, out, n):
            return int(self._slow.decrypt_into(nonce, data, ad, out))
        self._run(False, nonce, data, n, ad, out)
        return n

    @staticmethod
    def _fits(data: Buffer, n: int, out: memoryview, need: int) -> bool:
        """``out`` is exactly ``need`` writable contiguous bytes that either start where the
        input does (in place) or do not overlap it: libcrypto refuses partial overlaps, so
        those go to `cryptography`."""
        if out.readonly or not out.c_contiguous or len(out) != need or n > 0x7FFFFFFF:
            return False
        src, dst, size = _address(data), _address(out), len(memoryview(data))
        return src == dst or src + size <= dst or dst + need <= src

    def _run(
        self, encrypt: bool, nonce: bytes, data: Buffer, n: int, ad: bytes, out: memoryview
    ) -> None:
        lib = self._lib
        assert lib is not None
        init, update, final = (
            (lib.enc_init, lib.enc_update, lib.enc_final)
            if encrypt
            else (lib.dec_init, lib.dec_update, lib.dec_final)
        )
        src, dst = _address(data), _address(out)
        # the tag follows the ciphertext in a sealed input; taken before an in-place open
        tag = b"" if encrypt else bytes(memoryview(data)[n : n + TAG_SIZE])
        written = ctypes.c_int()
        ctx = lib.new()
        if not ctx:
            raise MemoryError("libcrypto could not allocate a cipher context")
        try:
            ok = (
                init(ctx, self._cipher, None, None, None) == 1
                and lib.ctrl(ctx, _SET_IVLEN, len(nonce), None) == 1
                and init(ctx, None, None, self._key, nonce) == 1
                and (not ad or update(ctx, None, ctypes.byref(written), ad, len(ad)) == 1)
                and update(ctx, dst, ctypes.byref(written), src, n) == 1
                and written.value == n
            )
            if ok and not encrypt:
                ok = lib.ctrl(ctx, _SET_TAG, TAG_SIZE, tag) == 1
            if ok:
                ok = final(ctx, dst + n, ctypes.byref(written)) == 1
            if ok and encrypt:
                ok = lib.ctrl(ctx, _GET_TAG, TAG_SIZE, dst + n) == 1
        finally:
            lib.free(ctx)
            lib.clear_errors()
        if not ok:
            if encrypt:
                raise RuntimeError(f"libcrypto failed to seal {n} bytes with {self.label}")
            raise InvalidTag()
