"""Polling for a condition with a deadline, for tests that wait on other processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition stayed false until the deadline."""


def wait_for(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.02, description: str = ""
) -> T:
    """Call `predicate` until it returns a truthy value and return that value.

    The predicate runs once more at the deadline, so a condition met during the last sleep still
    passes. Raise WaitTimeout, which pytest reports as a failed assertion, with `description`
    and the last value.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            what = description or "the condition"
            raise WaitTimeout(f"timed out after {timeout_s} s waiting for {what}, last value {value!r}")
        time.sleep(min(interval_s, remaining_s))
