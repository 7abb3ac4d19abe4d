"""volpack: block-level backup of virtual and thin-provisioned volumes.

Public API (lazy, so that ``import volpack`` stays fast): backup(), restore(), verify(),
map_volume() (from volpack.pipeline, one module per verb) and open_archive(). Results are typed
dataclasses; errors are volpack.errors.VolpackError.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "backup", "restore", "verify", "open_archive", "map_volume"]


def __getattr__(name: str):
    if name in ("backup", "restore", "verify", "map_volume"):
        from volpack import pipeline

        return getattr(pipeline, name)
    if name == "open_archive":
        from volpack.format.random_access import open_archive

        return open_archive
    raise AttributeError(f"module 'volpack' has no attribute {name!r}")
