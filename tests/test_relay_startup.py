"""What starting a relayed link costs: the light relay client (didsession.relay_client).

An MPyC party with a ``relay_only`` roster opens every link through the mediator's relay.
It must not import the DIDComm libraries for that (pydid, didcomm-messaging, askar, the
envelope): the relay's ``open`` is packed by the party's HandshakeCodec, the mediator's
DID and relay URL are read from its invitation and DID without a DID library, once per
process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from didsession import relay_client
from didsession.envelope import Envelope
from didsession.envelope import new_message as envelope_new_message
from didsession.errors import DIDError, InvitationError, MediationError
from didsession.identity import Identity, Store
from didsession.invitation import make_invitation, parse_invitation
from didsession.mediation import _service_uri, mediator_info
from didsession.peer import HandshakeCodec
from didsession.relay_client import (
    MediatorInfo,
    forget_relay_info,
    new_message,
    relay_info,
    relay_link,
    service_uri,
)
from mpyc_adapter.embedded import EmbeddedMediator, mediator_available, start_embedded_mediator
from mpyc_adapter.launcher import free_ports
from mpyc_adapter.paths import open_relay_path
from mpyc_adapter.roster import Party, Roster

PY = sys.executable
HEAVY = (
    "pydid",
    "didcomm_messaging",
    "aries_askar",
    "didsession.envelope",
    "didsession.did",
    "didsession.invitation",
    "segno",
)


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMediator]:
    if not mediator_available():
        pytest.skip("this installation has no mediator")
    med = start_embedded_mediator(tmp_path_factory.mktemp("mediator") / "data")
    try:
        med.wait_ready()
        yield med
    finally:
        med.stop()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    forget_relay_info()
    yield
    forget_relay_info()


# -- the mediator's DID and endpoint, without a DID library -----------------------------


def _full_uri(did: str) -> str | None:
    return _service_uri(Envelope(), did)


@pytest.mark.parametrize(
    ("method", "mediator_uri"),
    [
        ("peer2", "http://127.0.0.1:8765/didcomm"),
        ("peer2", "did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc.Vz6Mk"),
        ("peer4", "https://mediator.example/didcomm"),
        ("peer2", None),
        ("peer4", None),
    ],
)
def test_the_service_uri_is_the_resolved_documents(
    tmp_path: Path, method: str, mediator_uri: str | None
) -> None:
    ident = Store(tmp_path).create("m", method=method, mediator=mediator_uri)  # type: ignore[arg-type]
    assert service_uri(ident.did) == _full_uri(ident.did) == mediator_uri


def test_the_service_uri_of_a_legacy_flat_service(tmp_path: Path) -> None:
    """peerdid <= 0.5 wrote ``{"t": "dm", "s": "<uri>"}``; the full resolver normalizes it."""
    ident = Store(tmp_path).create("m")
    keys = ".".join(el for el in ident.did.split(".") if not el.startswith("S"))
    flat = {"t": "dm", "s": "http://old.example/didcomm", "r": [], "a": ["didcomm/v2"]}
    encoded = base64.urlsafe_b64encode(json.dumps(flat).encode()).rstrip(b"=").decode()
    did = f"{keys}.S{encoded}"
    assert service_uri(did) == _full_uri(did) == "http://old.example/didcomm"


def test_a_malformed_did_is_a_did_error() -> None:
    with pytest.raises(DIDError):
        service_uri("did:web:mediator.example")
    with pytest.raises(DIDError):
        service_uri("did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc.S!!")
    with pytest.raises(DIDError, match="service"):
        service_uri("did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc.SAAAA")


def test_the_light_invitation_parser_agrees(tmp_path: Path) -> None:
    ident = Store(tmp_path).create("m", mediator="http://127.0.0.1:9/didcomm")
    inv = make_invitation(ident.did, "mediator")
    for source in (inv.to_json(), inv.to_url("http://127.0.0.1:9/invitation")):
        assert relay_client._invitation_did(source) == parse_invitation(source).did == ident.did
    bad = [
        "[]",
        "{not json",
        json.dumps(dict(inv.message, type="https://didcomm.org/out-of-band/1.1/invitation")),
        json.dumps({k: v for k, v in inv.message.items() if k != "from"}),
        json.dumps(dict(inv.message, **{"from": "did:peer:2.Vz6Mk"})),
        json.dumps(dict(inv.message, body={"accept": ["didcomm/aip2;env=rfc19"]})),
        "https://mediator.example/?x=1",
        "x" * (17 * 1024),
    ]
    for source in bad:
        with pytest.raises(InvitationError):
            parse_invitation(source)
        with pytest.raises(InvitationError):
            relay_client._invitation_did(source)


def test_new_message_is_the_envelopes() -> None:
    args: dict[str, Any] = {"frm": "did:a", "to": ["did:b"], "msg_id": "m-1", "created_time": 7}
    assert new_message("t", {"x": 1}, **args) == envelope_new_message("t", {"x": 1}, **args)
    assert new_message("t", {}, thid="th", msg_id="m", created_time=1) == envelope_new_message(
        "t", {}, thid="th", msg_id="m", created_time=1
    )


def test_relay_info_is_mediator_info_and_looked_up_once(
    mediator: EmbeddedMediator, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[str] = []
    fetch = relay_client.http_get

    async def counting(url: str, timeout: float) -> bytes:
        fetches.append(url)
        return await fetch(url, timeout)

    monkeypatch.setattr(relay_client, "http_get", counting)

    async def main() -> tuple[list[MediatorInfo], MediatorInfo]:
        first = await asyncio.gather(*(relay_info(mediator.url) for _ in range(3)))
        again = await relay_info(mediator.url)
        return [*first, again], await mediator_info(mediator.url)

    found, full = run(main())
    assert fetches == [mediator.url.rstrip("/") + "/invitation"]
    assert all(info is found[0] for info in found)
    assert (found[0].did, found[0].endpoint, found[0].relay_url) == (
        full.did,
        full.endpoint,
        full.relay_url,
    )
    # The DID itself, or its invitation, needs no request at all.
    assert run(relay_info(full.did)).relay_url == full.relay_url
    assert full.invitation is not None
    assert run(relay_info(full.invitation.to_json())).relay_url == full.relay_url
    assert len(fetches) == 1


def test_relay_info_errors() -> None:
    port = free_ports(1)[0]  # nothing listens there
    with pytest.raises(MediationError) as err:
        run(relay_info(f"http://127.0.0.1:{port}"))
    assert err.value.code == "e.p.xfer" and "cannot reach" in err.value.message
    with pytest.raises(InvitationError, match="not a mediator URL"):
        run(relay_info("mediator.example"))
    with pytest.raises(DIDError, match="no HTTP"):
        run(relay_info("did:peer:2.Ez6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc"))
    # A failed look-up is not kept: the next call tries again.
    assert not relay_client._known and not relay_client._finding


# -- the relay with a HandshakeCodec -------------------------------------------------------


def test_relay_link_with_the_light_codec(tmp_path: Path, mediator: EmbeddedMediator) -> None:
    alice = Store(tmp_path / "a").create("alice")
    bob = Store(tmp_path / "b").create("bob")
    ca, cb = HandshakeCodec(alice), HandshakeCodec(bob)

    async def side(me: Identity, codec: HandshakeCodec, peer: Identity) -> bytes:
        async with relay_link(mediator.url, me.did, "sid-1", peer.did, codec.pack) as link:
            await link.send(me.name.encode())
            return await link.recv()

    async def main() -> list[bytes]:
        return list(await asyncio.gather(side(alice, ca, bob), side(bob, cb, alice)))

    assert run(main()) == [b"bob", b"alice"]
    assert ca.fallbacks == cb.fallbacks == 0  # no envelope was needed


def test_a_refused_open_is_a_mediation_error(tmp_path: Path, mediator: EmbeddedMediator) -> None:
    alice = Store(tmp_path / "a").create("alice")
    mallory = Store(tmp_path / "m").create("mallory")
    codec = HandshakeCodec(mallory)  # packs from mallory's DID, claims to be alice

    async def main() -> None:
        async with relay_link(mediator.url, alice.did, "sid-2", mallory.did, codec.pack):
            pass

    with pytest.raises(MediationError) as err:
        run(main())
    assert err.value.code.startswith("e.p.")
    assert mediator.url not in relay_client._known  # looked up again next time


def test_the_relay_path_needs_a_way_to_pack() -> None:
    with pytest.raises(TypeError, match="pack or envelope"):
        run(
            open_relay_path(
                asyncio.Protocol,
                mediator="http://127.0.0.1:9",
                local_did="did:x",
                session_id="s",
                peer_did="did:y",
                wait=1.0,
            )
        )


_RELAY_CODE = """
import asyncio, sys
from didsession.identity import Store
from didsession.peer import HandshakeCodec
from didsession.relay_client import relay_link

async def main(url, home, name, peer):
    me = Store(home).load(name)
    codec = HandshakeCodec(me)
    async with relay_link(url, me.did, "sid-3", peer, codec.pack) as link:
        await link.send(b"x")
        assert await link.recv() == b"x"

asyncio.run(main(*sys.argv[1:5]))
print(",".join(m for m in sys.argv[5].split(",") if m in sys.modules))
"""


def test_a_relay_link_imports_no_didcomm_library(
    tmp_path: Path, mediator: EmbeddedMediator
) -> None:
    alice = Store(tmp_path / "a").create("alice")
    bob = Store(tmp_path / "b").create("bob")
    heavy = ",".join(HEAVY)
    procs = [
        subprocess.Popen(
            [PY, "-c", _RELAY_CODE, mediator.url, str(tmp_path / h), me.name, peer.did, heavy],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h, me, peer in (("a", alice, bob), ("b", bob, alice))
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == ""


# -- a real MPyC computation over the relay --------------------------------------------------

_PROGRAM = """
import sys
from mpyc.runtime import mpc

HEAVY = {heavy!r}


async def main():
    await mpc.start()
    secint = mpc.SecInt(32)
    xs = mpc.input(secint(10 * mpc.pid + 1))
    print("sum", await mpc.output(mpc.sum(xs)))
    print("product", await mpc.output(mpc.prod(xs)))
    await mpc.shutdown()
    print("heavy modules:", ",".join(m for m in HEAVY if m in sys.modules) or "none")


mpc.run(main())
"""


def _run_parties(cmds: list[list[str]], tmp: Path, homes: list[Path] | None = None) -> list[str]:
    """Run the parties (highest first, as MPyC does); their stdout, or fail with stderr."""
    procs = []
    files = []
    try:
        for i in reversed(range(len(cmds))):
            fo, fe = (tmp / f"p{i}.out").open("wb"), (tmp / f"p{i}.err").open("wb")
            files += [fo, fe]
            env = dict(os.environ)
            if homes is not None:
                env["DIDSESSION_HOME"] = str(homes[i])
            procs.append(
                subprocess.Popen(
                    cmds[i], stdout=fo, stderr=fe, env=env, cwd=tmp, start_new_session=True
                )
            )
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for f in files:
            f.close()
    outs = []
    for i, p in enumerate(reversed(procs)):
        err = (tmp / f"p{i}.err").read_text(errors="replace")
        assert p.returncode == 0, f"party {i} exited {p.returncode}:\n{err[-3000:]}"
        outs.append((tmp / f"p{i}.out").read_text(errors="replace"))
    return outs


def _printed(out: str) -> list[str]:
    """What the program printed (not MPyC's timestamped log lines)."""
    return [ln for ln in out.splitlines() if ln and not ln[:4].isdigit()]


@pytest.mark.slow
def test_a_relayed_mpyc_party_imports_no_didcomm_library(
    tmp_path: Path, mediator: EmbeddedMediator
) -> None:
    program = tmp_path / "program.py"
    program.write_text(_PROGRAM.format(heavy=HEAVY))
    n = 3
    addrs = [a for p in free_ports(n) for a in ("-P", f"127.0.0.1:{p}")]
    (tmp_path / "tcp").mkdir()
    plain = _run_parties(
        [[PY, str(program), *addrs, "-I", str(i)] for i in range(n)], tmp_path / "tcp"
    )

    homes = [tmp_path / f"home{i}" for i in range(n)]
    idents = [Store(h).create(f"p{i}") for i, h in enumerate(homes)]
    roster = Roster(
        tuple(Party(ident.did, f"p{i}") for i, ident in enumerate(idents)),
        mediator=mediator.url,
        relay_only=True,
    )
    roster.save(tmp_path / "roster.json")
    (tmp_path / "relay").mkdir()
    relayed = _run_parties(
        [[PY, str(program), "--didcomm", str(tmp_path / "roster.json")] for _ in range(n)],
        tmp_path / "relay",
        homes,
    )

    for i in range(n):
        assert "heavy modules: none" in _printed(plain[i])
        assert _printed(relayed[i]) == _printed(plain[i])
        # every link of this party went through the relay
        links = [ln for ln in relayed[i].splitlines() if "didsession: link with party" in ln]
        assert all(": relay," in ln for ln in links), links
        peers = {ln.split("link with party ")[1].split()[0] for ln in links}
        assert peers == {str(j) for j in range(n) if j != i}
