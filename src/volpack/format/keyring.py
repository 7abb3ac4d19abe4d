"""The keys a reader opens sealed archives with: asked for once, only when an encrypted archive is
met (no prompt or key file read for a plain archive), and each archive's data key kept so that
reading one archive twice (restore's check, then its stream) opens its slots once. Imports
volpack.crypto only when a key is used; never prints, and shows no secret in its repr.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from volpack.crypto import DataKey, DecryptKeys, KeySlot


class Keyring:
    """``provide`` gives the keys (it may read files or ask on a terminal); it is called once.
    ``expect_sealed``: the user gave keys, so an archive that is not encrypted is refused — an
    unsealed archive where a sealed one was expected may be a forgery that dropped the sealing."""

    def __init__(self, provide: Callable[[], DecryptKeys], *, expect_sealed: bool = False) -> None:
        self._provide = provide
        self.expect_sealed = expect_sealed
        self._keys: DecryptKeys | None = None
        self._opened: dict[tuple[str, bytes], DataKey] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, keys: DecryptKeys, *, expect_sealed: bool = False) -> Keyring:
        return cls(lambda: keys, expect_sealed=expect_sealed)

    def __repr__(self) -> str:
        return f"Keyring({len(self._opened)} archive(s) opened)"

    def data_key(
        self, uuid: str, slot_list: bytes, slots: tuple[KeySlot, ...], subject: str
    ) -> DataKey:
        """The data key one of ``slots`` (the archive's, as ``slot_list`` encodes them) opens."""
        from volpack.crypto import open_slots

        with self._lock:
            found = self._opened.get((uuid, slot_list))
            if found is not None:
                return found
            if self._keys is None:
                self._keys = self._provide()
            key = open_slots(slots, self._keys, subject)
            self._opened[(uuid, slot_list)] = key
            return key
