"""``didsession demo``: the best end-to-end path available, run for real.

Today: two parties with their own homes create identities, exchange invitations (Bob
reads Alice's from the QR code PNG when ``zbarimg`` is there), and exchange authcrypt
messages; a tampered message and a message for someone else are refused.  Every step is
the real CLI in a subprocess, printed as a person would type it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from didsession.errors import DidSessionError


class _Runner:
    def __init__(self, root: Path, verbose: bool) -> None:
        self.root = root
        self.verbose = verbose
        self.exe = [sys.executable, "-m", "didsession.cli"]

    def run(
        self, who: str, args: list[str], *, stdin: bytes | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, DIDSESSION_HOME=str(self.root / who))
        shown = " ".join(shlex.quote(a) if len(a) < 60 else "'" + a[:40] + "…'" for a in args)
        print(f"\n[{who}]$ didsession {shown}")
        proc = subprocess.run(
            [*self.exe, *args], input=stdin, capture_output=True, env=env, timeout=60
        )
        out = proc.stdout.decode(errors="replace").rstrip()
        err = proc.stderr.decode(errors="replace").rstrip()
        if out and (self.verbose or len(out) < 1200):
            print(_indent(out))
        elif out:
            print(_indent(out[:600] + f"\n… ({len(out)} characters)"))
        if err:
            print(_indent(err))
        if ok and proc.returncode != 0:
            raise DidSessionError(
                f"demo step failed: didsession {args[0]} exited {proc.returncode}"
            )
        return proc


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def run_demo(keep: bool = False, verbose: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="didsession-demo-"))
    r = _Runner(root, verbose)
    try:
        print("== 1. Two parties create their identities (each in its own home)")
        r.run("alice", ["init", "--name", "alice"])
        r.run("bob", ["init", "--name", "bob", "--method", "peer4"])

        print("\n== 2. Alice shows her invitation; Bob scans the QR code")
        png = root / "alice-invitation.png"
        r.run("alice", ["invite", "--format", "png", "-o", str(png)])
        url = r.run("alice", ["invite", "--format", "url"]).stdout.decode().strip()
        if shutil.which("zbarimg"):
            print(f"\n$ zbarimg -q --raw {png.name}")
            scanned = (
                subprocess.run(
                    ["zbarimg", "-q", "--raw", str(png)], capture_output=True, timeout=30
                )
                .stdout.decode()
                .strip()
            )
            print(_indent(scanned[:80] + "…"))
            same = "the same" if scanned == url else "NOT the same"
            print(f"    (the QR code decodes to {same} URL as 'invite --format url')")
            if scanned != url:
                raise DidSessionError("QR code did not decode to the invitation URL")
        else:
            scanned = url
            print("    (zbarimg not installed: using the URL instead of scanning)")
        r.run("bob", ["accept", scanned, "--alias", "alice"])
        bob_url = r.run("bob", ["invite", "--format", "url"]).stdout.decode().strip()
        r.run("alice", ["accept", bob_url, "--alias", "bob"])
        r.run("alice", ["contacts"])

        print("\n== 3. Alice sends Bob an authcrypt message; Bob decrypts it")
        packed = r.run(
            "alice", ["pack", "--to", "bob"], stdin=b"Hello Bob, shall we compute?"
        ).stdout
        size = len(packed)
        unpacked = r.run("bob", ["unpack", "--json"], stdin=packed).stdout
        info = json.loads(unpacked)
        print(
            f"    -> {size} bytes on the wire for a 28-byte text; sender authenticated: "
            f"{info['authenticated']} (contact {info['sender_contact']!r})"
        )

        print("\n== 4. Bob replies anonymously (anoncrypt): Alice cannot tell who sent it")
        packed = r.run("bob", ["pack", "--anon", "--to", "alice"], stdin=b"Yes.").stdout
        r.run("alice", ["unpack"], stdin=packed)

        print("\n== 5. Tampering and misdelivery are refused")
        doc = json.loads(packed)
        ct = doc["ciphertext"]
        doc["ciphertext"] = ("A" if ct[0] != "A" else "B") + ct[1:]
        bad = r.run("alice", ["unpack"], stdin=json.dumps(doc).encode(), ok=False)
        print(f"    -> exit status {bad.returncode} (tampered ciphertext)")
        wrong = r.run("bob", ["unpack"], stdin=packed, ok=False)
        print(f"    -> exit status {wrong.returncode} (Bob is not the recipient)")
        if bad.returncode == 0 or wrong.returncode == 0:
            raise DidSessionError("a tampered or misdelivered message was accepted")

        print(
            "\nDone.  Next in didsession: sessions (one AEAD per message after a DIDComm "
            "handshake), the mediator, and MPyC over sessions."
        )
        return 0
    finally:
        if keep:
            print(f"\n(homes kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
