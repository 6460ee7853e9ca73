"""The mediator role in memory: requests from fresh DIDs straight into
:meth:`Mediator.handle`, with a clock the test moves, and what the sender and the log get
when a mediator-wide limit refuses them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from didsession.envelope import Envelope, new_message
from didsession.identity import Store
from mediator.config import MediatorConfig
from mediator.identity import load_or_create
from mediator.metrics import Metrics
from mediator.protocols.messages import MEDIATE_REQUEST
from mediator.service import REFUSAL_LOG_INTERVAL, Mediator
from mediator.store.sqlite import SqliteStore


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


def test_refusals_at_a_mediator_wide_limit_are_logged_once_a_minute_without_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can send requests a mediator-wide limit refuses, as fast as they like: the
    log gets one warning a minute per limit, counting the refusals since the last one, and
    the sender learns that the limit is reached, not what it is set to."""
    config = MediatorConfig(data_dir=tmp_path / "m", max_grants=7).validate()
    now = [1_000_000.0]

    async def main() -> list[dict[str, Any]]:
        identity = load_or_create(config.data_dir, config.endpoint, config.label)
        store = SqliteStore(config.sqlite_path)
        await store.open()
        mediator = Mediator(config, identity, store, Metrics(), clock=lambda: now[0])
        people = Store(tmp_path / "people")
        reports = []
        try:

            async def ask(name: str) -> dict[str, Any]:
                ident = people.create(name)
                env = Envelope()
                assert ident.ed25519_secret is not None and ident.x25519_secret is not None
                env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
                request = new_message(MEDIATE_REQUEST, {}, frm=ident.did, to=[mediator.did])
                packed = await env.pack(request, to=mediator.did, frm=ident.did, forward=False)
                reply = await mediator.handle(packed.data, None)
                assert reply is not None and reply.encrypted
                return (await env.unpack(reply.data)).message

            for i in range(7):
                assert (await ask(f"granted{i}"))["type"].endswith("/mediate-grant")
            for i, step in enumerate([0, 1, 1, 1, REFUSAL_LOG_INTERVAL - 3, 1, 1, 60, 59]):
                now[0] += step
                reports.append(await ask(f"refused{i}"))
        finally:
            await store.close()
        return reports

    with caplog.at_level(logging.INFO, logger="mediator"):
        reports = run(main())
    for report in reports:
        assert report["body"]["code"] == "e.p.me.res.storage"
        comment = report["body"]["comment"]
        assert "mediation grants" in comment and "7" not in comment, comment
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == ["request refused: mediator-wide limit reached"] * 3
    # refused at t = 0 (a line), 1, 2, 3, 60 (a line: four), 61, 62, 122 (a line: three), 181
    facts = [(r.__dict__["limit"], r.__dict__["maximum"], r.__dict__["refused"]) for r in warned]
    assert facts == [("max_grants", 7, 1), ("max_grants", 7, 4), ("max_grants", 7, 3)]
