"""schedulerd: a standalone scheduler daemon for RQ."""

from schedulerd.config import Settings
from schedulerd.daemon import Scheduler

__version__ = "0.1.0"

__all__ = ["Scheduler", "Settings", "__version__"]
