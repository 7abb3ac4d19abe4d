"""Wires the stages for each verb, one module per verb; returns typed results.

backup:  Source → used map → AddressTable → [Staging] → ArchiveWriter → Medium
restore: Medium → ArchiveStream → tables → scatter frames → Target
verify:  Medium → ArchiveStream → frames checked (and compared with a volume)
map:     Source → used map and physical map
info:    Medium → footer, trailer, tables (or the head of a stream) → summary
Library code: no printing; progress and notices go through callbacks.

Nothing is imported here, so a verb loads only its own stages (``volpack restore`` starts
without the backup path). The functions are ``volpack.backup()`` … or ``volpack.pipeline.VERB``'s
own: ``volpack.pipeline.backup`` is the module.
"""

from __future__ import annotations
