#!/usr/bin/env python3
"""Offline checks of infra/: no network, no Nix store, no cloud.

    python infra/checks/check.py          run every check, one line each, exit 1 on failure

tests/test_infra_offline.py runs the same functions (with finer assertions) in ./run test.

* ``nix_parse``: every ``.nix`` file parses (``nix-instantiate --store dummy:// --parse``;
  Debian's nix-bin, no daemon and no /nix needed).
* ``nix_eval``: ``infra/checks/eval.nix`` evaluates flake.nix's outputs, the overlay, the
  NixOS module and the hive against the stubs in ``stubs/`` and returns facts as JSON.
* ``terraform``: every ``.tf`` file parses with python-hcl2; the ports in variables and
  firewall rules are the module's and the mediator's defaults.
* ``shellcheck``: every shell script in infra/ (found by its ``#!``), and ./run, .ci/run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent.parent
REPO = INFRA.parent
# Files that are not ours but that the issue asks to lint: at shellcheck's warning level
# (./run has one style finding, SC2002, that its owner fixes).
REPO_SCRIPTS = (REPO / "run", REPO / ".ci" / "run")
SKIP_DIRS = {".terraform", "__pycache__", ".git"}


class CheckError(Exception):
    """A check failed; the message says what and where."""


def nix_instantiate() -> str | None:
    return shutil.which("nix-instantiate")


def _nix(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    exe = nix_instantiate()
    if exe is None:
        raise CheckError("nix-instantiate is not installed (Debian: apt-get install nix-bin)")
    # --store dummy://: nothing is read from or written to a store; no daemon, no /nix.
    # build-users-group: Debian's nix.conf names the nixbld group, which need not exist.
    return subprocess.run(
        [exe, "--store", "dummy://", "--option", "build-users-group", "", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if any(part in SKIP_DIRS for part in path.relative_to(root).parts):
            continue
        if path.is_file():
            yield path


def nix_files() -> list[Path]:
    return [p for p in _walk(INFRA) if p.suffix == ".nix"]


def nix_parse(path: Path) -> None:
    """Raise CheckError if ``path`` does not parse as Nix."""
    proc = _nix(["--parse", str(path)])
    if proc.returncode != 0:
        raise CheckError(f"{path.relative_to(REPO)} does not parse:\n{proc.stderr.strip()}")


def nix_eval(secrets_dir: str | None = None) -> dict[str, Any]:
    """The facts of infra/checks/eval.nix (see there)."""
    arg = (
        ["--argstr", "secretsDir", secrets_dir] if secrets_dir else ["--arg", "secretsDir", "null"]
    )
    proc = _nix(["--eval", "--strict", "--json", str(INFRA / "checks" / "eval.nix"), *arg])
    if proc.returncode != 0:
        raise CheckError(f"infra/checks/eval.nix failed:\n{proc.stderr.strip()}")
    return dict(json.loads(proc.stdout))


def terraform_files() -> list[Path]:
    return [p for p in _walk(INFRA / "terraform") if p.suffix == ".tf"]


def terraform_docs() -> dict[str, dict[str, Any]]:
    """Every .tf file parsed by python-hcl2: {file name: document}."""
    import hcl2

    docs = {}
    for path in terraform_files():
        with path.open() as f:
            try:
                docs[path.name] = hcl2.load(f)
            except Exception as exc:
                raise CheckError(f"{path.relative_to(REPO)} does not parse: {exc}") from exc
    return docs


def _unquote(value: Any) -> Any:
    """python-hcl2 >= 7 keeps string literals' quotes ("\\"tcp\\""); older versions do not."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def terraform_variables(docs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """{variable name: default} over all files."""
    out: dict[str, Any] = {}
    for doc in docs.values():
        for block in doc.get("variable", []):
            for name, body in block.items():
                out[_unquote(name)] = _unquote(body.get("default"))
    return out


def terraform_resources(docs: Mapping[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """{resource name: body} of one resource type."""
    out: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                if _unquote(rtype) != kind:
                    continue
                for name, body in named.items():
                    out[_unquote(name)] = body
    return out


def resolve(value: Any, variables: Mapping[str, Any]) -> Any:
    """A literal, or ``${var.NAME}`` resolved to the variable's default."""
    value = _unquote(value)
    if isinstance(value, str) and value.startswith("${var.") and value.endswith("}"):
        name = value[len("${var.") : -1]
        if name in variables:
            return variables[name]
    return value


def firewall_inbound(docs: Mapping[str, dict[str, Any]], name: str) -> set[tuple[str, str]]:
    """{(protocol, port_range)} of one firewall's inbound rules, variables resolved."""
    variables = terraform_variables(docs)
    firewalls = terraform_resources(docs, "digitalocean_firewall")
    if name not in firewalls:
        raise CheckError(f"no digitalocean_firewall {name!r}")
    rules = set()
    for rule in firewalls[name].get("inbound_rule", []):
        proto = str(resolve(rule.get("protocol"), variables))
        port = resolve(rule.get("port_range", ""), variables)
        rules.add((proto, str(port)))
    return rules


def terraform_fmt() -> str | None:
    """``terraform fmt -check`` output when terraform (or tofu) is installed, else None."""
    exe = shutil.which("terraform") or shutil.which("tofu")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, "fmt", "-check", "-diff", "-recursive", str(INFRA / "terraform")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "TF_CLI_CONFIG_FILE": "/dev/null"},
    )
    if proc.returncode != 0:
        raise CheckError(f"terraform fmt -check:\n{proc.stdout}{proc.stderr}")
    return exe


def shell_scripts() -> list[Path]:
    """Shell scripts in infra/, by their #! line."""
    out = []
    for path in _walk(INFRA):
        if path.suffix in (".nix", ".tf", ".py", ".json", ".md", ".toml"):
            continue
        try:
            first = path.open("rb").readline()
        except OSError:
            continue
        if first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1] or b"bash" in first):
            if b"python" not in first:
                out.append(path)
    return out


def shellcheck(paths: list[Path], severity: str = "style") -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        raise CheckError("shellcheck is not installed (Debian: apt-get install shellcheck)")
    proc = subprocess.run(
        [exe, f"--severity={severity}", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise CheckError(f"shellcheck:\n{proc.stdout}{proc.stderr}")


def main() -> int:
    failed = 0

    def step(name: str, fn: Any) -> None:
        nonlocal failed
        try:
            detail = fn()
            print(f"ok    {name}{': ' + detail if detail else ''}")
        except CheckError as exc:
            failed += 1
            print(f"FAIL  {name}\n{exc}")

    def parse_all() -> str:
        for path in nix_files():
            nix_parse(path)
        return f"{len(nix_files())} files"

    def lint_infra() -> str:
        shellcheck(shell_scripts())
        return f"{len(shell_scripts())} scripts"

    def lint_repo() -> str:
        shellcheck(list(REPO_SCRIPTS), "warning")
        return "at --severity=warning"

    step("nix parse", parse_all)
    step("nix eval (stub inputs)", lambda: ", ".join(nix_eval()["flake"]["outputs"]))
    step("terraform parse", lambda: f"{len(terraform_docs())} files")

    def ports() -> str:
        docs = terraform_docs()
        v = terraform_variables(docs)
        want = {
            ("tcp", str(v["mediator_port"])),
            ("tcp", str(v["stun_port"])),
            ("udp", str(v["stun_port"])),
        }
        missing = want - firewall_inbound(docs, "mediator")
        if missing:
            raise CheckError(f"mediator firewall lacks {sorted(missing)}")
        return f"http {v['mediator_port']}/tcp, stun {v['stun_port']}/tcp+udp"

    step("terraform ports", ports)
    step("terraform fmt", lambda: terraform_fmt() or "terraform not installed, skipped")
    step("shellcheck infra/", lint_infra)
    step("shellcheck run, .ci/run", lint_repo)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
