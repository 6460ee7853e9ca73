"""X25519 key constructors that skip cryptography's OpenSSL backend module.

``X25519PrivateKey.from_private_bytes`` and ``X25519PublicKey.from_public_bytes`` import
``cryptography.hazmat.backends.openssl`` on first use (rsa, ec, padding, random: ~5 ms of
every MPyC party's start-up) only to ask whether OpenSSL has X25519, then call the Rust
functions below.  We call those directly; if a later cryptography moves them, the public
constructors are used, so this can cost speed but never correctness.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = ["private_key", "public_key"]

private_key: Callable[[bytes], X25519PrivateKey]
public_key: Callable[[bytes], X25519PublicKey]
try:
    from cryptography.hazmat.bindings._rust import openssl as _rust

    private_key = _rust.x25519.from_private_bytes
    public_key = _rust.x25519.from_public_bytes
except (ImportError, AttributeError):  # pragma: no cover - depends on cryptography's layout
    private_key = X25519PrivateKey.from_private_bytes
    public_key = X25519PublicKey.from_public_bytes
