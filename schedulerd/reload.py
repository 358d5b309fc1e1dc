"""SIGHUP handling: reopen the log file and reload the settings on a thread of its own.

The signal handler only calls ``request()``, which sets an event. Python runs a handler on
the main thread between two bytecodes of the scheduler loop, so a reload there would stall
the loop and could deadlock on a lock that the interrupted code holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from schedulerd.config import SETTINGS, Settings
from schedulerd.errors import ConfigError
from schedulerd.logs import LogOutput
from schedulerd.notify import Notifier

if TYPE_CHECKING:
    from schedulerd.daemon import Scheduler

log = structlog.get_logger("schedulerd")

# Settings a running scheduler takes over on reload; a change to any other one is logged as
# reload_ignored and needs a restart.
RUNTIME_SETTINGS = ("queues", "log_format", "log_level", "log_file")
LOG_SETTINGS = ("log_format", "log_level", "log_file")


class Reloader:
    """A thread that applies a new configuration to a running scheduler after each ``request()``."""

    def __init__(
        self,
        scheduler: Scheduler,
        settings: Settings,
        load: Callable[[], Settings],
        log_output: LogOutput,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        """The settings in force: the last loaded ones, except those a reload ignored."""
        self._scheduler = scheduler
        self._load = load
        self._log_output = log_output
        self._notifier = notifier
        self._requested = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="schedulerd-reload", daemon=True)

    def request(self) -> None:
        """Ask for a reload; safe from a signal handler."""
        self._requested.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _serve(self) -> None:
        while True:
            self._requested.wait()
            if self._stopping:
                return
            self._requested.clear()
            self.reload()

    def reload(self) -> bool:
        """Reopen the log file, then load and apply the settings; return False when they were rejected."""
        if self._notifier is not None:
            self._notifier.reloading()
        try:
            self._reopen_log()
            return self._apply(self._load_new())
        finally:
            if self._notifier is not None:
                self._notifier.send("READY=1")

    def _reopen_log(self) -> None:
        try:
            path = self._log_output.reopen()
        except OSError as error:
            log.error("log_reopen_failed", path=self._log_output.log_file_path, error=str(error))
            return
        if path is not None:
            log.info("log_reopened", path=path)

    def _load_new(self) -> Settings | None:
        try:
            return self._load()
        except ConfigError as error:
            log.error("reload_failed", error=str(error), detail="the running configuration stays in force")
            return None
        except Exception as error:  # noqa: BLE001 - the reload thread must survive any bad file
            log.error("reload_failed", error=repr(error), detail="the running configuration stays in force")
            return None

    def _apply(self, new: Settings | None) -> bool:
        if new is None:
            return False
        old = self.settings
        changed = [setting.name for setting in SETTINGS if getattr(new, setting.name) != getattr(old, setting.name)]
        applied = [name for name in changed if name in RUNTIME_SETTINGS]
        ignored = [name for name in changed if name not in RUNTIME_SETTINGS]

        if any(name in LOG_SETTINGS for name in applied):
            try:
                self._log_output.apply(new.log_format, new.log_level, new.log_file)
            except OSError as error:
                log.error(
                    "reload_failed",
                    error=f"cannot open log file {new.log_file}: {error.strerror}",
                    detail="the running configuration stays in force",
                )
                return False
        if "queues" in applied:
            self._scheduler.set_queues(new.queues)

        if ignored:
            log.warning(
                "reload_ignored",
                settings=ignored,
                detail="these settings take effect only at start; restart schedulerd to apply them",
            )
        self.settings = replace(new, **{name: getattr(old, name) for name in ignored})
        log.info("reload_finished", changed=applied)
        return True
