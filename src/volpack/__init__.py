"""volpack: block-level backup of virtual and thin-provisioned volumes.

Public API (lazy, so that ``import volpack`` stays fast): backup(), restore(), verify(),
map_volume() (from volpack.pipeline, one module per verb), merge() and apply() for incremental
chains, rewrap() (new key slots for a sealed archive), open_archive() and open_volume() (an archive, or an incremental's whole chain, for
random reads). Results are typed dataclasses; errors are volpack.errors.VolpackError.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backup",
    "restore",
    "verify",
    "open_archive",
    "open_volume",
    "map_volume",
    "merge",
    "apply",
    "rewrap",
]


def __getattr__(name: str):
    if name in ("backup", "restore", "verify", "map_volume"):
        from importlib import import_module

        # Each verb's own module: importing volpack.pipeline loads no verb.
        home = "map" if name == "map_volume" else name
        return getattr(import_module(f"volpack.pipeline.{home}"), name)
    if name == "open_archive":
        from volpack.format.random_access import open_archive

        return open_archive
    if name == "open_volume":
        from volpack.pipeline.chain import open_chain

        return open_chain
    if name == "merge":
        from volpack.pipeline.merge import merge

        return merge
    if name == "rewrap":
        from volpack.pipeline.rewrap import rewrap

        return rewrap
    if name == "apply":
        from volpack.pipeline.apply import apply

        return apply
    raise AttributeError(f"module 'volpack' has no attribute {name!r}")
