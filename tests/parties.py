"""Local parties for in-process tests: envelopes holding some identities' keys."""

from __future__ import annotations

from didsession.envelope import Envelope
from didsession.identity import Identity


def envelope_for(*identities: Identity) -> Envelope:
    env = Envelope()
    for ident in identities:
        assert ident.ed25519_secret is not None and ident.x25519_secret is not None
        env.add_identity(ident.did, ident.ed25519_secret, ident.x25519_secret)
    return env
