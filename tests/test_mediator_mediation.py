"""The real ``didsession-mediator`` process: invitation, mediation, pickup, live delivery,
and that only the DID that registered a key reads or deletes what is queued for it."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
import urllib.request
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import did_peer_2
import pytest
from aries_askar import Key, KeyAlg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from didcomm_messaging.crypto.backend.askar import AskarSecretKey
from mediator_proc import MediatorProcess, mediator_process

from didsession.did import PeerResolver, ServiceSpec, multikey
from didsession.envelope import Envelope, new_message
from didsession.errors import MediationError
from didsession.identity import Identity, Store
from didsession.invitation import parse_invitation
from didsession.mediation import (
    MediatorClient,
    MediatorInfo,
    mediator_info,
    request_mediation,
    send_packed,
)

BASIC = "https://didcomm.org/basicmessage/2.0/message"


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def mediator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediatorProcess]:
    proc = mediator_process(tmp_path_factory.mktemp("mediator") / "data").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def info(mediator: MediatorProcess) -> MediatorInfo:
    result: MediatorInfo = run(mediator_info(mediator.url))
    return result


def party(tmp_path: Path, name: str, info: MediatorInfo | None = None) -> Identity:
    """A fresh identity; routed through the mediator when ``info`` is given."""
    return Store(tmp_path / f"home-{name}").create(name, mediator=info.did if info else None)


def envelope_of(*identities: Identity) -> Envelope:
    env = Envelope()
    for ident in identities:
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    return env


async def send(sender: Identity, env: Envelope, to: str, text: str) -> None:
    """A basic message from ``sender`` to ``to``, forwarded through ``to``'s mediator."""
    packed = await env.pack(
        new_message(BASIC, {"content": text}, frm=sender.did, to=[to]), to=to, frm=sender.did
    )
    assert packed.forwarded
    await send_packed(packed)


def test_invitation_healthz_and_identity_on_disk(
    mediator: MediatorProcess, info: MediatorInfo, cli_factory: Any
) -> None:
    health = mediator.healthz()
    assert health["did"] == info.did and health["store"] == "sqlite"
    assert health["stun"]["udp"] == [["127.0.0.1", mediator.stun_port]]
    assert info.endpoint == f"{mediator.url}/didcomm" and info.ws_url.endswith("/ws")
    with urllib.request.urlopen(f"{mediator.url}/invitation", timeout=5) as resp:
        invitation = parse_invitation(resp.read())
    assert invitation.did == info.did and invitation.goal_code == "didsession.mediate"
    with urllib.request.urlopen(f"{mediator.url}/invitation.url", timeout=5) as resp:
        url = resp.read().decode().strip()
    assert parse_invitation(url).did == info.did
    secret = mediator.data_dir / "identities" / "mediator" / "secret.json"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    zbarimg = shutil.which("zbarimg")
    for kind in ("png", "svg"):
        with urllib.request.urlopen(f"{mediator.url}/invitation.{kind}", timeout=5) as resp:
            image = resp.read()
            assert (
                resp.headers.get_content_type() == f"image/{'png' if kind == 'png' else 'svg+xml'}"
            )
        if zbarimg:
            path = mediator.data_dir.parent / f"inv.{kind}"
            path.write_bytes(image)
            out = subprocess.run(
                [zbarimg, "--raw", "-q", str(path)], capture_output=True, timeout=30, check=True
            )
            assert out.stdout.decode().strip() == url
    # a person scans the QR code and accepts it with the CLI
    accepted = cli_factory("person")("accept", url, "--json")
    assert json.loads(accepted.stdout)["did"] == info.did
    assert run(mediator_info(url)).did == info.did  # the invitation URL works as mediator URL


def test_mediation_grant_and_keylist_update(tmp_path: Path, info: MediatorInfo) -> None:
    bob = party(tmp_path, "bob", info)
    grant = run(request_mediation(bob, info))
    assert grant.routing_did == info.did and grant.recipient_dids == (bob.did,)
    again = run(request_mediation(bob, info))  # idempotent: no_change on the keylist
    assert again.routing_did == info.did

    async def more() -> None:
        async with MediatorClient(info, bob) as client:
            assert await client.keylist() == [bob.did]
            stranger = party(tmp_path, "stranger")  # not bob's keys: bob cannot route it
            results = await client.keylist_update(add=[stranger.did])
            assert results == {stranger.did: "client_error"}
            assert await client.keylist_update(remove=[bob.did]) == {bob.did: "success"}
            assert await client.keylist() == []
            assert await client.keylist_update(add=[bob.did]) == {bob.did: "success"}
            await client.ping()
            features = await client.features("https://didcomm.org/*")
            assert "https://didcomm.org/coordinate-mediation/2.0" in features
            assert "https://didcomm.org/messagepickup/3.0" in features

    run(more())
    # a DID without a grant cannot put anything on a keylist
    carol = party(tmp_path, "carol", info)

    async def no_grant() -> None:
        async with MediatorClient(info, carol) as client:
            with pytest.raises(MediationError) as err:
                await client.keylist_update(add=[carol.did])
            assert err.value.code == "e.p.req.not-granted"

    run(no_grant())
    # a DID that does not route through the mediator is told so
    direct = party(tmp_path, "direct")
    with pytest.raises(MediationError) as err:
        run(request_mediation(direct, info))
    assert err.value.code == "e.p.req.routing"


def test_a_did_cannot_claim_a_key_it_did_not_prove(tmp_path: Path, info: MediatorInfo) -> None:
    """authcrypt proves the one key a message was encrypted with, not every key a DID
    lists: a DID that also lists the victim's public key must not route the victim."""
    victim = party(tmp_path, "victim", info)
    own = party(tmp_path, "attacker")
    assert own.ed25519_secret is not None and own.x25519_secret is not None
    ed_public = Ed25519PrivateKey.from_private_bytes(own.ed25519_secret).public_key()
    x_public = X25519PrivateKey.from_private_bytes(own.x25519_secret).public_key()
    service = ServiceSpec(uri=info.did)
    # a DID listing the attacker's own keyAgreement key, then the victim's public one
    attacker = str(
        did_peer_2.generate(
            [
                did_peer_2.KeySpec.verification(
                    multikey("ed25519-pub", ed_public.public_bytes_raw())
                ),
                did_peer_2.KeySpec.key_agreement(
                    multikey("x25519-pub", x_public.public_bytes_raw())
                ),
                did_peer_2.KeySpec.key_agreement(
                    multikey("x25519-pub", PeerResolver().x25519_public(victim.did))
                ),
            ],
            [service.to_json()],
        )
    )
    env = Envelope()
    kid = f"{attacker}#key-2"  # only the attacker's own key: it has no other secret
    secret = Key.from_secret_bytes(KeyAlg.X25519, own.x25519_secret)
    env.secrets.secrets[kid] = AskarSecretKey(secret, kid)
    env.dids.add(attacker)

    async def claim() -> None:
        async with MediatorClient(info, attacker, env) as client:
            await client.mediate()
            assert await client.keylist_update(add=[victim.did]) == {victim.did: "client_error"}
        # the victim's own grant puts it on its keylist
        grant = await request_mediation(victim, info)
        assert grant.recipient_dids == (victim.did,)

    run(claim())


def test_forwarded_while_offline_is_picked_up_later(tmp_path: Path, info: MediatorInfo) -> None:
    bob = party(tmp_path, "bob", info)
    alice = party(tmp_path, "alice")
    run(request_mediation(bob, info))

    async def main() -> None:
        env = envelope_of(alice)
        for i in range(12):
            await send(alice, env, bob.did, f"hello {i}")  # bob is offline: nothing is open
        # a forward for a DID no keylist holds is refused, with the spec's code
        nobody = party(tmp_path, "nobody", info)
        with pytest.raises(MediationError) as err:
            await send(alice, env, nobody.did, "lost")
        assert err.value.code == "e.p.xfer.cant-use-endpoint"
        async with MediatorClient(info, bob) as client:
            status = await client.status()
            assert status.message_count == 12 and status.total_bytes and not status.live_delivery
            assert (await client.status(recipient_did=bob.did)).message_count == 12
            first = await client.pickup(limit=5)
            rest = await client.pickup_all()
            got = first + rest
            assert [r.message.message["body"]["content"] for r in got] == [
                f"hello {i}" for i in range(12)
            ]
            assert all(r.message.sender_did == alice.did and r.message.authenticated for r in got)
            assert (await client.status()).message_count == 0
            assert await client.pickup() == []

    run(main())


def test_live_delivery_over_the_websocket(tmp_path: Path, info: MediatorInfo) -> None:
    bob = party(tmp_path, "bob", info)
    alice = party(tmp_path, "alice")
    run(request_mediation(bob, info))

    async def main() -> None:
        env = envelope_of(alice)
        await send(alice, env, bob.did, "queued before")
        async with MediatorClient(info, bob, transport="ws") as client:
            received: list[str] = []

            async def listen() -> None:
                async for item in client.live():
                    received.append(item.message.message["body"]["content"])
                    if len(received) == 4:
                        return

            listener = asyncio.create_task(listen())
            while not received:  # the backlog arrives first, then live mode is on
                await asyncio.sleep(0.01)
            for i in range(3):
                await send(alice, env, bob.did, f"live {i}")
            await asyncio.wait_for(listener, 10)
            assert received == ["queued before", "live 0", "live 1", "live 2"]
            await asyncio.sleep(0.2)
            assert (await client.status()).message_count == 0  # all acknowledged
        # live mode needs a persistent transport
        async with MediatorClient(info, bob) as http:
            with pytest.raises(MediationError) as err:
                await http.set_live(True)
            assert err.value.code == "e.m.live-mode-not-supported"

    run(main())


def test_only_the_registering_did_reads_or_deletes(tmp_path: Path, info: MediatorInfo) -> None:
    bob = party(tmp_path, "bob", info)
    alice = party(tmp_path, "alice")
    mallory = party(tmp_path, "mallory", info)
    run(request_mediation(bob, info))
    run(request_mediation(mallory, info))

    async def main() -> None:
        env = envelope_of(alice)
        for i in range(3):
            await send(alice, env, bob.did, f"for bob {i}")
        async with MediatorClient(info, bob) as client:
            delivered = await client.fetch(10)  # fetched, not acknowledged
        ids = [d.id for d in delivered]
        assert len(ids) == 3
        async with MediatorClient(info, mallory) as client:
            # mallory authenticates as herself and sees only her own (empty) queue
            assert (await client.status()).message_count == 0
            assert (await client.status(recipient_did=bob.did)).message_count == 0
            assert await client.fetch(10) == []
            assert (await client.ack(ids)).message_count == 0  # deletes nothing of bob's
            # nor can she take over bob's DID on her keylist
            assert await client.keylist_update(add=[bob.did]) == {bob.did: "client_error"}
            assert await client.keylist_update(remove=[bob.did]) == {bob.did: "client_error"}
        # anoncrypt (no DID proven) gets nothing either
        anon = Envelope()
        packed = await anon.pack(
            new_message("https://didcomm.org/messagepickup/3.0/status-request", {}),
            to=info.did,
            forward=False,
        )
        from mediator_proc import post

        status, body, ctype = await asyncio.to_thread(post, info.endpoint, packed.data)
        assert status == 400 and ctype == "application/didcomm-plain+json"
        assert json.loads(body)["body"]["code"] == "e.p.trust"
        async with MediatorClient(info, bob) as client:
            got = await client.pickup_all()
            assert sorted(r.message.message["body"]["content"] for r in got) == [
                f"for bob {i}" for i in range(3)
            ]

    run(main())


def test_mediation_denied_when_closed(tmp_path: Path) -> None:
    proc = mediator_process(tmp_path / "closed", extra=["--no-open-mediation"])
    proc.start()
    try:
        info = run(mediator_info(proc.url))
        bob = party(tmp_path, "bob", info)
        with pytest.raises(MediationError) as err:
            run(request_mediation(bob, info))
        assert err.value.code == "e.p.req.denied"
    finally:
        assert proc.stop() == 0  # graceful shutdown exits cleanly
    events = [e["event"] for e in proc.log_events()]
    assert events[-3:] == ["shutting down", "store closed", "stopped"]


def test_logs_hold_no_secrets(mediator: MediatorProcess) -> None:
    """Every log line is JSON; the mediator's private keys never appear in it."""
    lines = mediator.log_path.read_text().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines)
    keys = json.loads((mediator.data_dir / "identities" / "mediator" / "secret.json").read_text())
    text = "\n".join(lines)
    for secret in keys["keys"].values():
        assert secret not in text
    assert "ciphertext" not in text and "protected" not in text
