"""The QEMU guest agent of a running libvirt domain, reached through ``virsh``: freezes and thaws
the guest's filesystems so a backup job starts from a quiesced disk (``--fsfreeze``).

Only asks the agent; knows nothing of backup jobs or checkpoints. A guest it froze and could not
thaw is an error naming the command that thaws it; nothing here prints.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Protocol

from volpack.errors import SourceError

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 60  # s for one agent call (libvirt may wait on the agent without a limit)
THAW_ATTEMPTS = 3  # a thaw is retried: a guest left frozen cannot write

# What libvirt says when no agent can be asked (so nothing in the guest can have been frozen).
_NO_AGENT = re.compile(r"agent is not (configured|connected|responding|available)")


class Virsh(Protocol):
    def __call__(
        self, *args: str, subject: str, quiet: bool = True, timeout: float = 300
    ) -> str: ...


class GuestAgent:
    """The agent of ``domain``; errors name ``subject`` (the source being backed up)."""

    def __init__(self, domain: str, subject: str, virsh: Virsh) -> None:
        self.domain, self.subject, self._virsh = domain, subject, virsh

    def _run(self, *args: str, quiet: bool = True) -> str:
        return self._virsh(
            *args, self.domain, subject=self.subject, quiet=quiet, timeout=AGENT_TIMEOUT
        )

    def _problem(self, exc: SourceError) -> str:
        return str(exc).removeprefix(f"{self.subject}: ")

    def _refusal(self, exc: SourceError, left: str = "") -> SourceError:
        return SourceError(
            f"{self.subject}: --fsfreeze: the guest agent did not freeze the guest's filesystems "
            f"({self._problem(exc)}); nothing was backed up. Run qemu-guest-agent in the guest "
            "with a virtio channel named org.qemu.guest_agent.0 in the domain, or back up "
            f"without --fsfreeze (crash-consistent){left and '; ' + left}"
        )

    def check(self) -> None:
        """Refuse when the agent is absent or silent, before the caller changes anything (it is
        asked for the guest's time: every agent answers that, and it changes nothing)."""
        try:
            self._run("domtime")
        except SourceError as exc:
            if _NO_AGENT.search(str(exc)):
                raise self._refusal(exc) from None
            # anything else (an agent that does not know the command): the freeze decides

    def freeze(self) -> int:
        """Freeze the guest's filesystems; the number the agent froze. A freeze that fails is
        a refusal (the user asked for more than a crash-consistent archive), after a thaw in
        case the agent froze something before it gave up (a timeout, an interrupt)."""
        try:
            said = self._run("domfsfreeze", quiet=False)
        except BaseException as exc:
            left = self._thaw_after_failed_freeze()
            if not isinstance(exc, SourceError):
                if left:
                    log.error("%s: %s", self.subject, left)
                raise
            raise self._refusal(exc, left) from None
        found = re.search(r"(\d+)", said)  # "Froze 2 filesystem(s)"
        count = int(found.group(1)) if found else 0
        if count == 0:
            log.warning(
                "%s: --fsfreeze: the guest agent froze no filesystem (none it can freeze is "
                "mounted); the archive is crash-consistent",
                self.subject,
            )
        return count

    def _thaw_after_failed_freeze(self) -> str:
        """ "" when the guest is surely not frozen, else what to run."""
        try:
            self._run("domfsthaw")
            return ""
        except SourceError as exc:
            if _NO_AGENT.search(str(exc)):
                return ""  # no agent: nothing was frozen
            return (
                f"the guest's filesystems may be frozen ({self._problem(exc)}): run "
                f"'virsh domfsthaw {self.domain}'"
            )

    def thaw(self, after: BaseException | None = None) -> None:
        """Thaw the guest's filesystems (retried); a guest left frozen is a SourceError naming
        the command that thaws it, chained to ``after`` (the failure that ended the freeze)."""
        problem = ""
        for attempt in range(THAW_ATTEMPTS):
            try:
                self._run("domfsthaw")
                return
            except SourceError as exc:
                problem = self._problem(exc)
                if attempt + 1 < THAW_ATTEMPTS:
                    time.sleep(1)
        raise SourceError(
            f"{self.subject}: the guest's filesystems are still FROZEN, so the guest cannot "
            f"write: virsh domfsthaw failed {THAW_ATTEMPTS} times ({problem}); run 'virsh "
            f"domfsthaw {self.domain}' now"
        ) from after
