"""``didsession demo``: the main job end to end, run for real on this machine.

Three parties (alice, bob, carol), each with its own home, create identities and
invitations with the real CLI; an embedded mediator starts on loopback; ``didsession roster
make`` turns the invitations into a roster; then an unmodified MPyC program
(:mod:`mpyc_adapter.santa`: sum and maximum of private inputs, a secret-santa draw) runs in
three processes with ``--didcomm``.  Alice and bob reach each other directly; carol has no
address in the roster, so her links start on the mediator's relay and move to a direct path
once the candidates in their handshakes lead to one.  The demo prints the
results, each link's path and the session overhead per MPyC message, then shows a party
with a different program being refused.  Everything lives in a temporary directory that is
removed at the end, also when the demo is interrupted (Ctrl-C, SIGTERM, SIGHUP): the
parties run in their own sessions, so only the demo hears the signal, and it stops them.
With ``--json`` the progress goes to stderr and stdout gets one JSON summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from didsession.errors import DidSessionError

NAMES = ("alice", "bob", "carol")
INPUTS = {"alice": 42, "bob": 17, "carol": 99}
RUN_TIMEOUT = 90.0


class _Runner:
    def __init__(self, root: Path, verbose: bool) -> None:
        self.root = root
        self.verbose = verbose
        self.exe = [sys.executable, "-m", "didsession.cli"]

    def env(self, who: str) -> dict[str, str]:
        return dict(os.environ, DIDSESSION_HOME=str(self.root / who))

    def run(
        self,
        who: str,
        args: list[str],
        *,
        stdin: bytes | None = None,
        ok: bool = True,
        show: int = 1500,
    ) -> subprocess.CompletedProcess[bytes]:
        shown = " ".join(
            shlex.quote(a) if len(a) < 60 else "'" + a[:40] + "…'" for a in args
        ).replace(str(self.root) + "/", "")
        print(f"\n[{who}]$ didsession {shown}", flush=True)
        child = subprocess.Popen(
            [*self.exe, *args],
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(who),
        )
        try:
            stdout, stderr = child.communicate(stdin, timeout=60)
        except BaseException as exc:
            # Interrupted, or stuck: the step must be gone before its home is removed.
            child.kill()
            child.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise DidSessionError(f"demo step timed out: didsession {args[0]}") from None
            raise
        proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
        out = stdout.decode(errors="replace").rstrip()
        err = stderr.decode(errors="replace").rstrip()
        if out and (self.verbose or len(out) <= show):
            print(_indent(out))
        elif out and show:
            print(_indent(out[:show].rstrip() + f"… ({len(out):,} characters)"))
        if err:
            print(_indent(err))
        if ok and proc.returncode != 0:
            raise DidSessionError(
                f"demo step failed: didsession {args[0]} exited {proc.returncode}"
            )
        return proc


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _stream(name: str, pipe: IO[bytes], sink: list[str], show: bool) -> None:
    """Print a party's output as it comes (progress), keep it for the summary."""
    for raw in pipe:
        line = raw.decode(errors="replace").rstrip()
        sink.append(line)
        text = line[24:] if line[:4].isdigit() else line  # drop MPyC's timestamp
        if show and (not line[:4].isdigit() or "didsession" in line or "connected" in line):
            print(f"    [{name}] {text}", flush=True)


def _run_parties(
    r: _Runner, roster: Path, program: Path, args: dict[str, list[str]], report: Path | None
) -> dict[str, tuple[int, list[str]]]:
    """Start the three parties, show their output, wait for all (bounded)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outputs: dict[str, list[str]] = {}
    threads = []
    for name in reversed(NAMES):
        env = r.env(name)
        if report is not None:
            env["DIDSESSION_MPYC_REPORT"] = str(report)
        cmd = [sys.executable, "-m", "mpyc_adapter", str(program), *args[name]]
        cmd += ["--didcomm", str(roster)]
        # Their own session: a Ctrl-C reaches the demo only, which stops them (finally).
        procs[name] = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=r.root,
            start_new_session=True,
        )
        outputs[name] = []
        assert procs[name].stdout is not None
        t = threading.Thread(
            target=_stream, args=(name, procs[name].stdout, outputs[name], True), daemon=True
        )
        t.start()
        threads.append(t)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for proc in procs.values():
            proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise DidSessionError(f"the MPyC parties did not finish in {RUN_TIMEOUT:.0f} s") from None
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for t in threads:
            t.join(5)
    return {name: (procs[name].returncode, outputs[name]) for name in NAMES}


def _link_rows(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]


def _totals(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    """MPyC messages, sealed records and session overhead in bytes, over all links."""
    return (
        sum(row["messages"] for row in rows),
        sum(row["records"] for row in rows),
        sum(row["wire_bytes"] - row["payload_bytes"] for row in rows),
    )


def _links_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"    {'link':16} {'path':15} {'messages':>9} {'records':>8} {'per record':>10} "
        f"{'overhead/message':>17}"
    ]
    for row in rows:
        a, b = NAMES[row["party"]], NAMES[row["peer"]]
        path = row["path"]
        if row.get("started") and row["started"] != path:
            path = f"{row['started']} -> {path}"
        lines.append(
            f"    {a + ' -> ' + b:16} {path:15} {row['messages']:9,} {row['records']:8,} "
            f"{row['messages_per_record']:10.1f} {row['overhead_per_message']:15.2f} B"
        )
    total_msgs, _, total_over = _totals(rows)
    if total_msgs:
        lines.append(
            f"    all links: {total_msgs:,} MPyC messages, {total_over / total_msgs:.2f} bytes "
            f"of session overhead per message (28 per record, shared by the messages of one "
            f"event-loop turn)"
        )
    return lines


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does: through the ``finally`` blocks that
    stop the parties and the mediator and remove the temporary directory."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_demo(keep: bool = False, verbose: bool = False, as_json: bool = False) -> int:
    """Run the demo; with ``as_json`` the progress goes to stderr and a JSON summary to
    stdout."""
    out = sys.stdout
    summary: dict[str, Any] = {}
    with _signals_interrupt():
        if as_json:
            with contextlib.redirect_stdout(sys.stderr):
                code = _demo(keep, verbose, summary)
            out.write(json.dumps(summary, indent=2) + "\n")
            out.flush()
            return code
        return _demo(keep, verbose, summary)


def _demo(keep: bool, verbose: bool, summary: dict[str, Any]) -> int:
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="didsession-demo-"))
    r = _Runner(root, verbose)
    mediator: Any = None
    try:
        from mpyc_adapter.embedded import mediator_available, start_embedded_mediator
        from mpyc_adapter.launcher import free_ports

        if mediator_available():  # it starts while the identities are made
            mediator = start_embedded_mediator(root / "mediator")

        print("== 1. Three parties create identities and show their invitations")
        urls = {}
        for name in NAMES:
            r.run(name, ["init", "--name", name], show=0)
        png = root / "alice-invitation.png"
        r.run("alice", ["invite", "--format", "png", "-o", str(png)])
        for name in NAMES:
            urls[name] = r.run(name, ["invite", "--format", "url"], show=72).stdout.decode().strip()
            (root / f"{name}.url").write_text(urls[name])
        if shutil.which("zbarimg"):
            scanned = subprocess.run(
                ["zbarimg", "-q", "--raw", str(png)], capture_output=True, timeout=30
            ).stdout.decode()
            same = "the same" if scanned.strip() == urls["alice"] else "NOT the same"
            print(f"\n$ zbarimg -q --raw alice-invitation.png\n    (decodes to {same} URL)")
            if scanned.strip() != urls["alice"]:
                raise DidSessionError("the QR code did not decode to the invitation URL")

        print("\n== 2. One DIDComm v2 message, the expensive way (authcrypt)")
        r.run("alice", ["accept", str(root / "bob.url"), "--alias", "bob"], show=0)
        packed = r.run("alice", ["pack", "--to", "bob"], stdin=b"Shall we compute?", show=72).stdout
        info = json.loads(r.run("bob", ["unpack", "--json"], stdin=packed, show=0).stdout)
        print(
            f"    -> {len(packed):,} bytes on the wire for 17 bytes of text, sender "
            f"authenticated: {info['authenticated']}.  Sessions replace this per message."
        )

        print("\n== 3. The roster: the parties' DIDs in party order")
        ports = free_ports(2)
        args = ["roster", "make", "-o", str(root / "roster.json")]
        args += [str(root / f"{name}.url") for name in NAMES]
        args += ["--addr", f"127.0.0.1:{ports[0]}", "--addr", f"127.0.0.1:{ports[1]}"]
        if mediator is not None:
            mediator.wait_ready()
            args += ["--mediator", mediator.url]
            print(
                f"\n    (embedded mediator on {mediator.url}; carol gets no address, so "
                "her links start on its relay, then go direct when they can)"
            )
        r.run("alice", args)
        r.run("alice", ["roster", "show", str(root / "roster.json")])

        print(
            "\n== 4. An unmodified MPyC program in three processes, every link a session"
            f"\n    private inputs: {', '.join(f'{n} {v}' for n, v in INPUTS.items())}"
        )
        import mpyc_adapter

        program = Path(mpyc_adapter.__file__).with_name("santa.py")
        report = root / "links.jsonl"
        run_args = {n: [str(INPUTS[n]), "--didcomm-private-args"] for n in NAMES}
        t_run = time.monotonic()
        results = _run_parties(r, root / "roster.json", program, run_args, report)
        failed = [n for n, (code, _) in results.items() if code != 0]
        if failed:
            raise DidSessionError(f"the MPyC computation failed at {', '.join(failed)}")
        computed = time.monotonic() - t_run
        print(f"\n    computed in {computed:.1f} s (three processes, start-up included)")
        santas = {}
        for name in NAMES:
            printed = [ln for ln in results[name][1] if ln and not ln[:4].isdigit()]
            santa = next((ln for ln in printed if ln.startswith("secret santa")), "")
            if name == NAMES[0]:
                shown = [ln for ln in printed if not ln.startswith("secret")]
                print("    " + "\n    ".join(shown))
                summary["printed"] = shown
            to = santa.rsplit(" ", 1)[-1]
            if to.isdigit():
                santas[name] = NAMES[int(to)]
                print(f"    {name} is the secret santa of {NAMES[int(to)]} (only {name} knows)")
        rows = _link_rows(report)
        print("\n    links (each party's view of what it sent; path: where it started -> ended):")
        print("\n".join(_links_table(rows)))
        messages, records, overhead = _totals(rows)
        per_record = messages / records if records else 0.0
        print(
            f"    (this program waits for most answers, so a record carries few messages: "
            f"{per_record:.1f} here;\n    in scalar-heavy programs many messages share a "
            "record: python bench/mpyc.py)"
        )
        summary.update(
            inputs=INPUTS,
            secret_santa=santas,
            computation_s=round(computed, 2),
            links=rows,
            messages=messages,
            records=records,
            overhead_per_message=round(overhead / messages, 2) if messages else None,
        )

        print("\n== 5. A party that runs another program is refused before anything is computed")
        run_args["carol"] = [str(INPUTS["carol"])]  # carol forgets --didcomm-private-args
        refused = _run_parties(r, root / "roster.json", program, run_args, None)
        if any(code == 0 for code, _ in refused.values()):
            raise DidSessionError("a program mismatch was not refused")
        print("    -> every party stopped with exit status 1; nothing was computed")
        summary["mismatch_refused"] = True

        total = time.monotonic() - t0
        print(f"\nDone in {total:.1f} s.")
        summary["total_s"] = round(total, 1)
        return 0
    finally:
        if mediator is not None:
            mediator.stop()
        if keep:
            print(f"\n(homes, roster and mediator data kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
