"""The Lua scripts, one per file, and a pipelined EVALSHA runner for them.

redis-py's Script objects check SCRIPT EXISTS before every pipeline, which costs one extra
round trip per pass; this runner sends EVALSHA straight away and loads a script only when the
server replies NOSCRIPT (after a restart or SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

KeysAndArgs = tuple[Sequence[str | bytes], Sequence[str | bytes | int | float]]


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    @classmethod
    def from_package(cls, name: str) -> LuaScript:
        source = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
        return cls(name=name, source=source)


ACQUIRE_LEASES = LuaScript.from_package("acquire_leases")
PROMOTE_DUE = LuaScript.from_package("promote_due")
RENEW_LEASES = LuaScript.from_package("renew_leases")
RELEASE_LEASES = LuaScript.from_package("release_leases")


def run_script(client: Redis, script: LuaScript, calls: Sequence[KeysAndArgs]) -> list[Any]:
    """Run ``script`` once per (keys, args) in one pipelined round trip.

    Replies come back in ``calls`` order; a call the server rejected comes back as its
    ResponseError instead of raising, so one bad queue cannot hide the others' results.
    Connection errors raise.
    """
    replies = _evalsha_pipelined(client, script, calls)

    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        client.script_load(script.source)
        retried = _evalsha_pipelined(client, script, [calls[i] for i in missing])
        for i, reply in zip(missing, retried):
            replies[i] = reply
    return replies


def _evalsha_pipelined(client: Redis, script: LuaScript, calls: Sequence[KeysAndArgs]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies


def raise_if_error(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply
