"""The AEAD primitive of sealed records, computed where other threads can run meanwhile.

`cryptography` holds the GIL for the whole of an AEAD call (measured with cryptography 48: a
spinning Python thread runs at 7 % of its idle rate while one 256 MiB `encrypt_into` lasts). A
backup seals each frame in a pool thread while the main thread reads and writes, so on a
two-core machine every frame sealed stopped the pipeline for its whole length. OpenSSL's EVP
interface called through ctypes releases the GIL for each call, so records are sealed and opened
there, with the system's libcrypto (``libcrypto``). A machine or cipher libcrypto cannot do (no
library, a FIPS provider without ChaCha20-Poly1305), and buffers that partly overlap, use
`cryptography`, imported only then; both give the same bytes (checked in the tests).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from volpack.crypto import libcrypto

TAG_SIZE = 16
# OpenSSL's EVP_CTRL_AEAD_* codes, the same for GCM and ChaCha20-Poly1305
_SET_IVLEN, _GET_TAG, _SET_TAG = 0x9, 0x10, 0x11

Buffer = bytes | bytearray | memoryview


class InvalidTag(ValueError):
    """The tag does not match: a wrong key, or bytes, nonce or associated data changed."""


def _address(buf: Buffer) -> int:
    """The address of a contiguous buffer's first byte, read-only buffers included (numpy gives
    it without a copy; the caller keeps ``buf`` alive across the call)."""
    return int(np.frombuffer(buf, np.uint8).ctypes.data)


class Aead:
    """One AEAD key: `encrypt`/`decrypt` return new bytes, `encrypt_into`/`decrypt_into` write
    into a buffer (in place when it is the input's own memory), with the signatures and results
    of `cryptography`'s AEAD classes. A failed tag raises this module's InvalidTag."""

    def __init__(self, label: str, key: bytes, evp: libcrypto.Lib | None | bool = True) -> None:
        if label not in ("aes-256-gcm", "chacha20-poly1305"):
            raise ValueError(f"unknown AEAD {label!r}")
        self.label = label
        self._key = bytes(key)
        if len(self._key) != 32:
            raise ValueError(f"an AEAD key is 32 bytes, not {len(self._key)}")
        self._fallback: Any = None
        lib = libcrypto.load() if evp is True else (evp or None)
        self._cipher = lib.cipher(label) if lib is not None else None
        self._lib = lib if self._cipher is not None else None

    @property
    def releases_gil(self) -> bool:
        """Whether records are sealed and opened by libcrypto with the GIL released."""
        return self._lib is not None

    def _slow(self) -> Any:
        """`cryptography`'s AEAD for this key, imported on first use only."""
        if self._fallback is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

            cls = AESGCM if self.label == "aes-256-gcm" else ChaCha20Poly1305
            self._fallback = cls(self._key)
        return self._fallback

    def _slow_call(self, name: str, *args: Any) -> Any:
        from cryptography.exceptions import InvalidTag as SlowInvalidTag

        try:
            return getattr(self._slow(), name)(*args)
        except SlowInvalidTag:
            raise InvalidTag() from None

    def encrypt(self, nonce: bytes, data: Buffer, ad: bytes | None) -> bytes:
        if self._lib is None:
            return bytes(self._slow_call("encrypt", nonce, data, ad))
        n = len(memoryview(data))
        out = bytearray(n + TAG_SIZE)
        self._run(True, nonce, data, n, ad or b"", memoryview(out))
        return bytes(out)

    def decrypt(self, nonce: bytes, data: Buffer, ad: bytes | None) -> bytes:
        n = len(memoryview(data)) - TAG_SIZE
        if self._lib is None or n < 0:
            return bytes(self._slow_call("decrypt", nonce, data, ad))
        out = bytearray(n)
        self._run(False, nonce, data, n, ad or b"", memoryview(out))
        return bytes(out)

    def encrypt_into(self, nonce: bytes, data: Buffer, ad: bytes, out: memoryview) -> int:
        n = len(memoryview(data))
        if self._lib is None or not self._fits(data, n, out, n + TAG_SIZE):
            return int(self._slow_call("encrypt_into", nonce, data, ad, out))
        self._run(True, nonce, data, n, ad, out)
        return n + TAG_SIZE

    def decrypt_into(self, nonce: bytes, data: Buffer, ad: bytes, out: memoryview) -> int:
        n = len(memoryview(data)) - TAG_SIZE
        if self._lib is None or n < 0 or not self._fits(data, n, out, n):
            return int(self._slow_call("decrypt_into", nonce, data, ad, out))
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
        if len(nonce) != 12:
            raise ValueError(f"a nonce is 12 bytes, not {len(nonce)}")
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
                and (n == 0 or update(ctx, dst, ctypes.byref(written), src, n) == 1)
                and (n == 0 or written.value == n)
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
