"""schedulerd: a standalone scheduler daemon for RQ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Scheduler", "Settings", "__version__"]

if TYPE_CHECKING:
    from schedulerd.config import Settings
    from schedulerd.daemon import Scheduler


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import schedulerd.producer` in an RQ producer does not
    # load the daemon and its dependencies.
    if name == "Scheduler":
        from schedulerd.daemon import Scheduler

        return Scheduler
    if name == "Settings":
        from schedulerd.config import Settings

        return Settings
    raise AttributeError(f"module 'schedulerd' has no attribute {name!r}")
