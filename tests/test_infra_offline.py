"""infra/ checked offline: Nix parses and evaluates against stubs, Terraform agrees with the
module and the mediator on ports, shell scripts pass shellcheck, and infra/run-e3 works:
its pure parts unit by unit, then whole runs on local processes and on the lab.

Nothing here touches the network beyond loopback and the lab's own namespaces.  What needs
Nix with a store (building, the NixOS VM test) is `nix flake check ./infra` on a machine that
has it; infra/README.md says so.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
PROGRAMS = REPO / "tests" / "mpyc_programs"


def _load(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


check = _load("infra_check", INFRA / "checks" / "check.py")
e3 = _load("run_e3", INFRA / "run-e3")

needs_nix = pytest.mark.skipif(
    check.nix_instantiate() is None, reason="nix-instantiate missing (./run installs nix-bin)"
)
needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck missing (./run installs it)"
)


def _mediator_defaults() -> dict[str, Any]:
    from mediator.config import MediatorConfig

    cfg = MediatorConfig()
    return {"port": cfg.port, "stun_port": cfg.stun_port}


# -- Nix ---------------------------------------------------------------------------------


@needs_nix
@pytest.mark.parametrize("path", check.nix_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_nix_file_parses(path: Path) -> None:
    check.nix_parse(path)


def test_the_nix_files_the_issue_names_exist() -> None:
    for rel in (
        "flake.nix",
        "hive.nix",
        "nixos/mediator.nix",
        "nixos/tests/mediator.nix",
        "nix/overlay.nix",
        "nix/didsession.nix",
    ):
        assert (INFRA / rel).is_file(), rel


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    if check.nix_instantiate() is None:
        pytest.skip("nix-instantiate missing")
    return check.nix_eval()


def test_flake_outputs_evaluate_with_stub_inputs(facts: dict[str, Any]) -> None:
    flake = facts["flake"]
    for output in ("packages", "devShells", "nixosModules", "colmena", "colmenaHive", "checks"):
        assert output in flake["outputs"]
    for system in ("x86_64-linux", "aarch64-linux"):
        assert {"didsession", "didsession-mediator", "python", "run-e3", "default"} <= set(
            flake["packages"][system]
        )
        assert flake["devShells"][system] == ["default"]
        assert set(flake["checks"][system]) == {"didsession", "mediator"}
    assert "do-image" in flake["packages"]["x86_64-linux"]
    assert {"mediator", "default"} <= set(flake["nixosModules"])
    assert flake["moduleIsFunction"] is True
    assert flake["colmenaHiveType"] == "colmenaHive"
    assert flake["vmTestIsModule"] is True
    assert flake["vmTestNodes"] == ["client", "lowport", "mediator"]
    # the VM test's Python compiles (the driver provides start_all, subtest and the nodes)
    compile(flake["vmTestScript"], "testScript", "exec")
    for node in flake["vmTestNodes"]:
        assert f"{node}." in flake["vmTestScript"]


def test_package_is_built_from_pyproject(facts: dict[str, Any]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pkg = facts["packages"]["didsession"]
    assert pkg["pname"] == pyproject["name"]
    assert pkg["version"] == pyproject["version"]
    assert pkg["pyproject"] is True
    assert pkg["buildSystem"] == ["setuptools"]
    assert pkg["importsCheck"] == ["didsession", "mediator", "mpyc_adapter"]
    assert pkg["mainProgram"] == "didsession"
    assert facts["packages"]["mediatorMainProgram"] == "didsession-mediator"
    assert all(src["exists"] for src in pkg["src"]), pkg["src"]
    # Every runtime dependency of pyproject.toml is a dependency of the derivation.
    names = {
        _normalize(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in pyproject["dependencies"]
    }
    assert names <= {_normalize(d) for d in pkg["dependencies"]}, names
    assert facts["packages"]["pythonEnv"] == ["didsession"]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_pinned_wheels_match_the_tested_environment(facts: dict[str, Any]) -> None:
    """The Nix build uses exactly the versions the test suite runs against."""
    for wheel in facts["packages"]["wheels"]:
        assert wheel["format"] == "wheel"
        assert wheel["url"].startswith("https://files.pythonhosted.org/packages/")
        assert wheel["hash"].startswith("sha256-") and len(wheel["hash"]) == 51
        filename = wheel["url"].rsplit("/", 1)[1]
        assert filename.startswith(f"{wheel['pname'].replace('-', '_')}-{wheel['version']}-")
        assert importlib.metadata.version(wheel["pname"]) == wheel["version"], wheel["pname"]
    assert "aarch64.whl" in facts["packages"]["askarAarch64"]


def test_module_options(facts: dict[str, Any]) -> None:
    options = facts["module"]["options"]
    assert set(options) == {
        "enable",
        "package",
        "port",
        "stunPort",
        "openFirewall",
        "environmentFile",
        "settings",
    }
    assert options["port"] == {"type": "port", "default": 8080}
    assert options["stunPort"] == {"type": "port", "default": 3478}
    assert options["openFirewall"]["type"] == "bool"
    assert options["environmentFile"] == {"type": "nullOr", "default": None}
    settings = options["settings"]
    assert settings["type"] == "submodule" and settings["freeform"]
    assert settings["subOptions"] == {"host": "0.0.0.0", "data_dir": "/var/lib/didsession-mediator"}


def test_module_defaults_are_the_mediators(facts: dict[str, Any]) -> None:
    options = facts["module"]["options"]
    assert {"port": options["port"]["default"], "stun_port": options["stunPort"]["default"]} == (
        _mediator_defaults()
    )


def test_module_settings_are_mediator_settings(facts: dict[str, Any], tmp_path: Path) -> None:
    """Every name the module and the hive write into the TOML file is one the mediator
    accepts (it refuses unknown names)."""
    from mediator.config import load_config

    module = facts["module"]["defaults"]["settings"]
    sub = facts["module"]["options"]["settings"]["subOptions"]
    hive = next(f for f in facts["hive"]["facts"].values() if f["mediator"])["mediator"]["settings"]
    doc = {**sub, **module, **hive, "data_dir": str(tmp_path)}
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items()]
    (tmp_path / "m.toml").write_text("\n".join(lines) + "\n")
    cfg, _ = load_config(["--config", str(tmp_path / "m.toml")], environ={})
    assert (cfg.port, cfg.stun_port, cfg.host) == (8080, 3478, "0.0.0.0")
    assert cfg.public_url == hive["public_url"]


def test_module_unit_is_hardened_like_coturn(facts: dict[str, Any]) -> None:
    unit = facts["module"]["defaults"]
    sc = unit["serviceConfig"]
    assert unit["enabledWhen"] is True
    assert unit["wantedBy"] == ["multi-user.target"]
    assert unit["execStart"].endswith(
        "/bin/didsession-mediator --config /nix/store/stub-didsession-mediator.toml"
    )
    assert sc["DynamicUser"] is True
    assert sc["StateDirectory"] == "didsession-mediator"
    assert sc["StateDirectoryMode"] == "0700"
    assert "EnvironmentFile" not in sc
    # coturn's list, value by value
    coturn = {
        "DevicePolicy": "closed",
        "LockPersonality": True,
        "MemoryDenyWriteExecute": True,
        "NoNewPrivileges": True,
        "PrivateDevices": True,
        "PrivateTmp": True,
        "PrivateUsers": True,
        "ProcSubset": "pid",
        "ProtectClock": True,
        "ProtectControlGroups": True,
        "ProtectHome": True,
        "ProtectHostname": True,
        "ProtectKernelLogs": True,
        "ProtectKernelModules": True,
        "ProtectKernelTunables": True,
        "ProtectProc": "invisible",
        "ProtectSystem": "strict",
        "RemoveIPC": True,
        "RestrictNamespaces": True,
        "RestrictRealtime": True,
        "RestrictSUIDSGID": True,
        "SystemCallArchitectures": "native",
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "UMask": "0077",
        "AmbientCapabilities": [""],
        "CapabilityBoundingSet": [""],
    }
    assert {k: sc.get(k) for k in coturn} == coturn
    assert sc["RestrictAddressFamilies"] == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert unit["settings"] == {"port": 8080, "stun_port": 3478}
    assert unit["firewall"] == {"when": True, "tcp": [8080, 3478], "udp": [3478]}


def test_module_capability_only_below_1024(facts: dict[str, Any]) -> None:
    low = facts["module"]["lowPort"]
    assert low["serviceConfig"]["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert low["serviceConfig"]["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    # a capability in a private user namespace does not bind the host's low ports
    assert low["serviceConfig"]["PrivateUsers"] is False
    assert low["settings"]["port"] == 80
    assert low["firewall"]["tcp"] == [80, 3478]


def test_module_environment_file(facts: dict[str, Any]) -> None:
    sc = facts["module"]["withEnvironmentFile"]["serviceConfig"]
    assert sc["EnvironmentFile"] == "/run/keys/didsession-mediator-env"


def test_hive_nodes_come_from_terraform_output(facts: dict[str, Any]) -> None:
    example = json.loads((INFRA / "terraform" / "hosts.example.json").read_text())
    deployable = [h for h in example["hosts"] if h.get("deploy")]
    hive = facts["hive"]
    assert hive["nodes"] == sorted(h["name"] for h in deployable)
    assert hive["defaults"] == {"deployment": {"buildOnTarget": False}}
    for h in deployable:
        node = hive["facts"][h["name"]]
        assert node["targetHost"] == h["ipv4"]
        assert node["targetUser"] == "root"
        assert node["tags"] == [h["role"], h["region"]]
        assert node["hostName"] == h["name"]
        assert node["keys"] == {}
        assert node["imports"] == ["/stub/nixos/modules/virtualisation/digital-ocean-config.nix"]
        if h["role"] == "mediator":
            med = node["mediator"]
            assert node["roleImportsModule"] is True
            assert med["enable"] and med["openFirewall"]
            assert (med["port"], med["stunPort"]) == (
                example["mediator"]["port"],
                example["mediator"]["stun_port"],
            )
            assert med["settings"]["public_url"] == example["mediator"]["url"]
            assert med["environmentFile"] is None
        else:
            assert node["mediator"] is None
            assert node["partyTcpPorts"] == [example["party_port"]]
            assert "python3-env" in node["packages"]


def test_hive_keys_stay_out_of_the_store(tmp_path: Path) -> None:
    if check.nix_instantiate() is None:
        pytest.skip("nix-instantiate missing")
    (tmp_path / "didsession-mediator-env").write_text("DIDSESSION_MEDIATOR_LABEL=secret\n")
    (tmp_path / "didsession-passphrase").write_text("hunter2\n")
    hive = check.nix_eval(str(tmp_path))["hive"]["facts"]
    for name, node in hive.items():
        assert len(node["keys"]) == 1, name
        for key_name, key in node["keys"].items():
            # a string, not a Nix path: a path would be copied into the world-readable store
            assert key["keyFileType"] == "string"
            assert key["keyFile"] == str(tmp_path / key_name)
            assert (key["destDir"], key["permissions"]) == ("/run/keys", "0400")
        if node["mediator"]:
            assert set(node["keys"]) == {"didsession-mediator-env"}
            assert node["mediator"]["environmentFile"] == "/run/keys/didsession-mediator-env"
        else:
            assert set(node["keys"]) == {"didsession-passphrase"}
    nix_text = "".join(p.read_text() for p in check.nix_files())
    assert "hunter2" not in nix_text


# -- Terraform ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return check.terraform_docs()


def test_terraform_parses(tf: dict[str, Any]) -> None:
    assert set(tf) == {"main.tf", "outputs.tf", "variables.tf", "versions.tf"}


def test_terraform_ports_agree_with_module_and_mediator(
    tf: dict[str, Any], facts: dict[str, Any]
) -> None:
    v = check.terraform_variables(tf)
    mediator = _mediator_defaults()
    options = facts["module"]["options"]
    assert v["mediator_port"] == mediator["port"] == options["port"]["default"]
    assert v["stun_port"] == mediator["stun_port"] == options["stunPort"]["default"] == 3478
    inbound = check.firewall_inbound(tf, "mediator")
    # what openFirewall opens: port/tcp, stunPort/tcp, stunPort/udp (and SSH for Colmena)
    opened = {(p, port) for p, port in inbound if p in ("tcp", "udp") and port != "22"}
    assert opened == {("tcp", "8080"), ("tcp", "3478"), ("udp", "3478")}
    assert ("tcp", "22") in inbound
    assert check.firewall_inbound(tf, "party") >= {("tcp", str(v["party_port"])), ("tcp", "22")}
    example = json.loads((INFRA / "terraform" / "hosts.example.json").read_text())
    assert example["mediator"]["port"] == v["mediator_port"]
    assert example["mediator"]["stun_port"] == v["stun_port"]
    assert example["party_port"] == v["party_port"]


def _plain(block: dict[str, Any]) -> dict[str, Any]:
    """A python-hcl2 block without its markers, keys unquoted."""
    return {check._unquote(k): v for k, v in block.items() if not k.startswith("__")}


def test_terraform_providers_pinned_and_no_secrets(tf: dict[str, Any]) -> None:
    versions = tf["versions.tf"]["terraform"][0]
    providers = _plain(versions["required_providers"][0])
    assert set(providers) == {"digitalocean"}
    for name, spec in providers.items():
        assert re.fullmatch(r"= \d+\.\d+\.\d+", check._unquote(spec["version"])), name
    assert check._unquote(providers["digitalocean"]["source"]) == "digitalocean/digitalocean"
    # the token comes from DIGITALOCEAN_TOKEN: the provider block sets nothing
    provider = _plain(tf["versions.tf"]["provider"][0])
    assert _plain(provider["digitalocean"]) == {}
    for path in (INFRA / "terraform").iterdir():
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"dop_v1_[0-9a-f]{20,}|token\s*=", text), path.name
    ignored = (INFRA / "terraform" / ".gitignore").read_text().split()
    assert {"*.tfstate", "hosts.json", ".terraform/"} <= set(ignored)


def test_terraform_outputs_are_what_hive_and_runner_read(tf: dict[str, Any]) -> None:
    outputs = {}
    for block in tf["outputs.tf"]["output"]:
        outputs.update({check._unquote(k): v for k, v in block.items()})
    assert {"hosts_json", "pssh_hosts", "mediator_url"} <= set(outputs)
    # every key of a deployable host in the example is one outputs.tf writes
    example = json.loads((INFRA / "terraform" / "hosts.example.json").read_text())
    text = (INFRA / "terraform" / "outputs.tf").read_text()
    for host in example["hosts"]:
        if host.get("deploy"):
            for key in host:
                assert re.search(rf"\b{key}\s*=", text), key
    for key in ("type", "version", "mediator", "url", "port", "stun_port", "party_port", "hosts"):
        assert re.search(rf"\b{key}\s*=", text), key
    inv = e3.inventory_from_hosts_json(example)
    assert [p.name for p in inv.parties] == [
        "e3-party-ams3-0",
        "e3-party-nyc3-0",
        "e3-party-sgp1-0",
        "pi",
    ]


def test_terraform_fmt() -> None:
    check.terraform_fmt()  # skips itself without terraform/tofu


# -- shell -------------------------------------------------------------------------------


@needs_shellcheck
def test_shellcheck_infra_scripts() -> None:
    scripts = check.shell_scripts()
    check.shellcheck(scripts)


@needs_shellcheck
def test_shellcheck_run_scripts() -> None:
    check.shellcheck(list(check.REPO_SCRIPTS), severity="warning")


# -- the runner: pure parts ---------------------------------------------------------------


def _host(name: str = "h", **kw: Any) -> Any:
    return e3.Host(name=name, role="party", workdir=kw.pop("workdir", "/w"), **kw)


def test_inventory_from_hosts_json() -> None:
    doc = json.loads((INFRA / "terraform" / "hosts.example.json").read_text())
    inv = e3.inventory_from_hosts_json(doc, workdir="e3")
    assert inv.mediator is None and inv.mediator_url == "http://203.0.113.10:8080"
    first, pi = inv.parties[0], inv.parties[-1]
    assert (first.ssh, first.addr, first.python, first.didsession) == (
        "root@203.0.113.21",
        "203.0.113.21:11365",
        "python3",
        ("didsession",),
    )
    assert first.workdir == "e3" and first.home is None
    assert pi.ssh == "pi@raspberrypi.local" and pi.addr is None
    assert pi.python == "/home/pi/didsession/.venv/bin/python"
    with pytest.raises(e3.E3Error):
        e3.inventory_from_hosts_json({"hosts": [{"name": "m", "role": "mediator"}]})
    with pytest.raises(e3.E3Error):
        e3.inventory_from_hosts_json({"type": "other", "hosts": []})


def test_inventory_from_lab() -> None:
    described = {
        "hosts": [
            {"name": "internet", "role": "internet", "addresses": ["203.0.113.1"]},
            {"name": "mediator", "role": "mediator", "addresses": ["203.0.113.10", "203.0.113.11"]},
            {"name": "home1", "role": "router", "addresses": ["203.0.113.20", "10.1.0.1"]},
            {"name": "alice", "role": "party", "addresses": ["10.1.0.2"]},
            {"name": "erin", "role": "public", "addresses": ["203.0.113.30"]},
        ]
    }
    inv = e3.inventory_from_lab(
        described, base=Path("/run/x"), python="/py", didsession=["/py", "-m", "didsession.cli"]
    )
    assert [p.name for p in inv.parties] == ["alice", "erin"]
    assert inv.parties[0].addr is None  # behind NAT: relay
    assert inv.parties[1].addr == "203.0.113.30:11365"
    assert inv.parties[0].home == "/run/x/alice/home"
    assert inv.mediator is not None and inv.mediator.ip == "203.0.113.10"
    assert inv.mediator_url == "http://203.0.113.10:8080"
    assert (
        e3.inventory_from_lab(
            described, base=Path("/x"), python="p", didsession=["d"], with_mediator=False
        ).mediator_url
        is None
    )


def test_command_shell_line_quotes() -> None:
    cmd = e3.Command(
        ("python3", "prog.py", "it's", "a b"),
        cwd="~/e3 dir",
        env={"X": "1 2"},
        env_files={"DIDSESSION_PASSPHRASE": "/run/keys/p w"},
    )
    line = cmd.shell_line()
    assert line == (
        "cd ~/'e3 dir' && export X='1 2' && "
        "export DIDSESSION_PASSPHRASE=\"$(cat '/run/keys/p w')\" && "
        "exec python3 prog.py 'it'\"'\"'s' 'a b'"
    )
    out = subprocess.run(
        ["sh", "-c", e3.Command(("sh", "-c", 'printf %s "$X"'), env={"X": "a'b c"}).shell_line()],
        capture_output=True,
        text=True,
    )
    assert out.stdout == "a'b c"


def test_party_command() -> None:
    host = _host("p", python="/py", home="/h")
    cmd = e3.party_command(host, 2, "sums.py", args=["50"], mpyc_args=["--no-log"])
    assert cmd.argv == (
        "/py",
        "sums.py",
        "--didcomm",
        "roster.json",
        "-I",
        "2",
        "--didcomm-identity",
        "e3",
        "--didcomm-home",
        "/h",
        "--no-log",
        "50",
    )
    assert cmd.cwd == "/w"
    secret = e3.party_command(_host(), 0, "p.py", passphrase_file="/run/keys/didsession-passphrase")
    assert secret.env_files == {"DIDSESSION_PASSPHRASE": "/run/keys/didsession-passphrase"}
    assert "--didcomm-home" not in secret.argv


def test_ssh_wrap() -> None:
    ex = e3.SshExecutor(["-p", "2222"])
    argv = ex.wrap(_host(ssh="root@203.0.113.21"), "echo 'hi there'")
    assert (
        argv[0] == "ssh"
        and "BatchMode=yes" in argv
        and argv[-3:-1] == ["2222", "root@203.0.113.21"]
    )
    assert argv[-1] == "sh -c 'echo '\"'\"'hi there'\"'\"''"
    with pytest.raises(e3.E3Error):
        ex.wrap(_host(), "true")


def test_identity_script_creates_then_reuses(tmp_path: Path) -> None:
    """The identity script, run for real through the local executor."""
    host = _host(
        "alice",
        workdir=str(tmp_path / "w"),
        didsession=(sys.executable, "-m", "didsession.cli"),
        home=str(tmp_path / "home"),
    )
    ex = e3.Executor()
    script = e3.identity_script(
        host, identity="e3", mediator_url="http://127.0.0.1:1", label="alice"
    )
    first = e3.parse_identity_output(ex.run(host, script).stdout.decode())
    again = e3.parse_identity_output(ex.run(host, script).stdout.decode())
    assert (first.status, again.status) == ("created", "reused")
    assert first.did == again.did and first.did.startswith("did:peer:2.")
    assert first.mediator == "http://127.0.0.1:1"
    assert "_oob=" in first.invitation
    assert (tmp_path / "w").is_dir()


def test_parse_identity_output_refuses_garbage() -> None:
    good = 'created\n{"did": "did:peer:2.x", "mediator": null}\n---\nhttps://x/?_oob=abc\n'
    assert e3.parse_identity_output(good) == e3.IdentityInfo(
        "created", "did:peer:2.x", "https://x/?_oob=abc", None
    )
    for bad in (
        "",
        "created\n{}\n---\nhttps://x/?_oob=1",
        'maybe\n{"did": "d"}\n---\nu?_oob=1',
        'created\n{"did": "d"}\n---\n',
        "created\nnot json\n---\nu?_oob=1",
    ):
        with pytest.raises(e3.E3Error):
            e3.parse_identity_output(bad)


def _ident(did: str) -> Any:
    return e3.IdentityInfo("created", did, f"inv-{did}")


def test_plan_roster() -> None:
    hosts = [_host("a", addr="1.2.3.4:11365"), _host("b"), _host("c", addr="5.6.7.8:11365")]
    ids = {"a": _ident("did:a"), "b": _ident("did:b"), "c": _ident("did:c")}
    plan = e3.plan_roster(hosts, ids, mediator_url="http://m:8080")
    assert plan.invitations == ("inv-did:a", "inv-did:b", "inv-did:c")
    assert plan.addrs == ("1.2.3.4:11365", None, "5.6.7.8:11365")
    assert plan.labels == ("a", "b", "c")
    relay = e3.plan_roster(hosts, ids, mediator_url="http://m:8080", relay_only=True)
    assert relay.addrs == (None, None, None) and relay.relay_only
    with pytest.raises(e3.E3Error, match="cannot be reached directly"):
        e3.plan_roster(hosts, ids, mediator_url=None)
    with pytest.raises(e3.E3Error, match="needs a mediator"):
        e3.plan_roster(hosts[:1], ids, mediator_url=None, relay_only=True)
    with pytest.raises(e3.E3Error, match="same DID"):
        e3.plan_roster(hosts, {**ids, "c": _ident("did:a")}, mediator_url="http://m")
    with pytest.raises(e3.E3Error, match="no identity"):
        e3.plan_roster(hosts, {"a": ids["a"]}, mediator_url="http://m")


def test_roster_make_argv() -> None:
    plan = e3.RosterPlan(("i0", "i1"), ("h:1", None), ("a", "b"), "http://m", False)
    assert e3.roster_make_argv(["didsession"], plan, "r.json") == [
        "didsession", "roster", "make", "-o", "r.json", "i0", "i1", "--addr", "h:1",
        "--mediator", "http://m",
    ]  # fmt: skip
    gap = e3.RosterPlan(("i0", "i1"), (None, "h:1"), ("a", "b"), "http://m", True)
    with pytest.raises(e3.E3Error):
        e3.roster_make_argv(["didsession"], gap, "r.json")


def test_write_roster_with_a_gap_in_addresses(tmp_path: Path) -> None:
    from didsession.identity import Store
    from didsession.invitation import make_invitation
    from mpyc_adapter.roster import load_roster

    invs = []
    for name in ("a", "b", "c"):
        ident = Store(tmp_path / name).create(name)
        invs.append(make_invitation(ident.did, name).to_url("https://x/invite"))
    plan = e3.RosterPlan(
        tuple(invs), (None, "203.0.113.5:11365", None), ("a", "b", "c"), "http://m:8080", False
    )
    fingerprint = e3.write_roster(plan, tmp_path / "roster.json", ["didsession"])
    roster = load_roster(tmp_path / "roster.json")
    assert roster.fingerprint == fingerprint
    assert [p.addr for p in roster.parties] == [None, ("203.0.113.5", 11365), None]
    assert [p.label for p in roster.parties] == ["a", "b", "c"]
    assert roster.mediator == "http://m:8080" and not roster.relay_only


MPYC_STDOUT = """\
2026-11-21 06:43:04,241 Start MPyC runtime v0.11
2026-11-21 06:43:05,614 didsession: link with party 1 (p1): direct 127.0.0.1:51288 -> 127.0.0.1:55059, session 994a178e, X25519-AES256GCM-SHA256
2026-11-21 06:43:05,647 didsession: link with party 2 (p2): relay via http://m:8080, session d32a07f2
2026-11-21 06:43:05,647 All 3 parties connected.
parties 3 sum 30 max 17 acc 179 below 2
2026-11-21 06:43:05,796 Stop MPyC -- elapsed time: 0:01:02.148|bytes sent: 15704
2026-11-21 06:43:05,808 didsession: link with party 1 (p1): direct, 130 messages in 38 records (3.42/record), 8.18 bytes of session overhead per message
2026-11-21 06:43:05,808 didsession: link with party 2 (p2): direct, 120 messages in 30 records (4.0/record), 7.0 bytes of session overhead per message
"""


def test_parse_mpyc_output() -> None:
    parsed = e3.parse_mpyc_output(MPYC_STDOUT)
    assert parsed == {
        "output": ["parties 3 sum 30 max 17 acc 179 below 2"],
        "mpyc_elapsed_seconds": pytest.approx(62.148),
        "bytes_sent": 15704,
        "links": {"1": "direct", "2": "relay"},
        # the link with party 2 was set up on the relay and ended on a direct path
        "links_at_end": {"1": "direct", "2": "direct"},
    }
    assert e3.parse_mpyc_output("") == {
        "output": [],
        "mpyc_elapsed_seconds": None,
        "bytes_sent": None,
        "links": {},
        "links_at_end": {},
    }


def test_build_report() -> None:
    ids = {"a": _ident("did:a"), "b": _ident("did:b")}
    ok = [
        e3.PartyResult(1, "b", 0, 2.5, MPYC_STDOUT, ""),
        e3.PartyResult(0, "a", 0, 1.5, MPYC_STDOUT, "warning\n"),
    ]
    report = e3.build_report({"mode": "lab"}, ok, ids, {"run": 3.0})
    assert report["type"] == "didsession-e3-report" and report["version"] == 1
    assert report["mode"] == "lab" and report["ok"] is True
    assert [p["index"] for p in report["parties"]] == [0, 1]
    assert report["parties"][0]["did"] == "did:a"
    assert report["parties"][0]["stderr_tail"] == ["warning"]
    s = report["summary"]
    assert s["succeeded"] == 2 and s["outputs_agree"]
    assert s["result"] == ["parties 3 sum 30 max 17 acc 179 below 2"]
    assert s["wall_seconds"] == {"min": 1.5, "max": 2.5, "mean": 2.0}
    assert s["bytes_sent_total"] == 2 * 15704
    assert s["link_ends_by_path"] == {"direct": 2, "relay": 2}
    assert "2/2 parties succeeded" in e3.summary_text(report)

    differ = [ok[0], e3.PartyResult(0, "a", 0, 1.0, MPYC_STDOUT.replace("sum 30", "sum 31"), "")]
    assert e3.build_report({}, differ, ids, {})["ok"] is False
    failed = [ok[0], e3.PartyResult(0, "a", None, 9.0, "", "killed")]
    bad = e3.build_report({}, failed, ids, {})
    assert bad["ok"] is False and bad["summary"]["succeeded"] == 1
    assert "exit None" in e3.summary_text(bad)
    assert e3.build_report({}, [], {}, {})["ok"] is False


def test_tar_files(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text("print(1)\n")
    data = e3.tar_files({"prog.py": tmp_path / "p.py"})
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=data, check=True)
    assert (out / "prog.py").read_text() == "print(1)\n"


def test_cli_usage() -> None:
    proc = subprocess.run(
        [sys.executable, str(INFRA / "run-e3"), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--lab CONFIG" in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(INFRA / "run-e3"), "prog.py"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    proc = subprocess.run(
        [sys.executable, str(INFRA / "run-e3"), "--local", "2", "/nonexistent.py"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no program" in proc.stderr


# -- the runner, whole runs ---------------------------------------------------------------


def _run_e3(
    tmp_path: Path, *args: str, timeout: float = 400, env: dict[str, str] | None = None
) -> dict[str, Any]:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(INFRA / "run-e3"), "--run-dir", str(tmp_path / "run"),
         "--report", str(report), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert report.exists(), proc.stderr
    data = json.loads(report.read_text())
    assert proc.returncode == (0 if data["ok"] else 1), proc.stderr
    return data


EXPECTED_SUMS_3 = ["parties 3 sum 30 max 17 acc 393 below 8"]  # sums.py 20, 3 parties


def test_runner_local_end_to_end(tmp_path: Path) -> None:
    report = _run_e3(tmp_path, "--local", "3", str(PROGRAMS / "sums.py"), "20")
    assert report["ok"], json.dumps(report["parties"], indent=1)
    assert report["mode"] == "local"
    assert report["summary"]["result"] == EXPECTED_SUMS_3
    assert report["summary"]["link_ends_by_path"] == {"direct": 6}
    assert report["roster"]["parties"] == 3 and report["roster"]["direct_addresses"] == 3
    assert report["mediator"]["did"].startswith("did:peer:2.")
    assert list(report["phases"]) == [
        "hosts", "mediator", "sync", "identities", "roster", "run", "total",
    ]  # fmt: skip
    assert all(p["identity"] == "created" and p["bytes_sent"] > 0 for p in report["parties"])
    assert len({p["did"] for p in report["parties"]}) == 3


FAKE_SSH = """\
#!/bin/sh
# ssh stand-in: the last argument is the remote command line; run it here, stdin and all.
for last; do :; done
exec sh -c "$last"
"""


def test_runner_ssh_mode_end_to_end(tmp_path: Path) -> None:
    """--ssh with an ssh stand-in that runs the remote line locally: the E3 path (hosts
    JSON, tar over stdin, remote work directories, the mediator from the file) for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    ports = e3.free_ports(5)
    med_url = f"http://127.0.0.1:{ports[3]}"
    med = subprocess.Popen(
        [sys.executable, "-m", "mediator", "--port", str(ports[3]), "--stun-port", str(ports[4]),
         "--data-dir", str(tmp_path / "mediator"), "--log-format", "text"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        e3.wait_until(lambda: e3.health(med_url), 30, "mediator")
        ds = f"{sys.executable} -m didsession.cli"
        hosts = {
            "type": "didsession-e3-hosts",
            "version": 1,
            "mediator": {"url": med_url, "port": ports[3], "stun_port": ports[4]},
            "hosts": [
                {"name": "mediator", "role": "mediator", "ssh": "root@mediator"},
                *(
                    {
                        "name": f"h{i}",
                        "role": "party",
                        "ssh": f"root@h{i}",
                        "python": sys.executable,
                        "didsession": ds,
                        "workdir": str(tmp_path / f"remote{i}" / "e3"),
                        "home": str(tmp_path / f"remote{i}" / "home"),
                        # the last party is "behind NAT": its links go through the relay
                        **({"addr": f"127.0.0.1:{ports[i]}"} if i < 2 else {}),
                    }
                    for i in range(3)
                ),
            ],
        }
        (tmp_path / "hosts.json").write_text(json.dumps(hosts))
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
        argv = ["--ssh", str(tmp_path / "hosts.json"), str(PROGRAMS / "sums.py"), "20"]
        report = _run_e3(tmp_path, *argv, env=env)
        # a second run reuses every identity
        again = _run_e3(tmp_path / "remote0", *argv, env=env)
    finally:
        med.terminate()
        med.wait(timeout=20)
    assert report["ok"], json.dumps(report["parties"], indent=1)
    assert report["mode"] == "ssh"
    assert report["summary"]["result"] == EXPECTED_SUMS_3
    assert report["mediator"]["url"] == med_url and report["mediator"]["did"]
    links = {p["host"]: p["links"] for p in report["parties"]}
    assert links["h0"] == {"1": "direct", "2": "relay"}
    assert all(set(p["links_at_end"]) == set(p["links"]) for p in report["parties"])
    assert (tmp_path / "remote1" / "e3" / "sums.py").is_file()  # synced over "ssh"
    assert (tmp_path / "remote1" / "e3" / "roster.json").is_file()
    assert again["ok"] and {p["identity"] for p in again["parties"]} == {"reused"}
    assert [p["did"] for p in again["parties"]] == [p["did"] for p in report["parties"]]


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = "dsl-e3probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


LAB_CONFIG = """\
# run-e3's lab test: a party behind a cone NAT, one behind a symmetric NAT (both reach
# the others through the mediator's relay) and a public party (direct).
[mediator]
name = "mediator"

[[home]]
name = "home1"
nat = "cone"
parties = ["p1"]
delay = "10ms"

[[home]]
name = "home2"
nat = "symmetric"
parties = ["p2"]

[[home]]
name = "uni"
nat = "none"
parties = ["p3"]
"""


@pytest.mark.skipif(not (INFRA / "lab" / "netlab").is_dir(), reason="infra/lab not there")
def test_runner_lab_end_to_end(tmp_path: Path) -> None:
    """The same runner on the local lab: hosts are network namespaces behind NATs."""
    if not _can_make_namespaces():
        pytest.skip("needs root and network namespaces")
    config = tmp_path / "lab.toml"
    config.write_text(LAB_CONFIG)
    report = _run_e3(
        tmp_path, "--lab", str(config), "--lab-name", "e3test", str(PROGRAMS / "sums.py"), "20"
    )
    assert report["ok"], json.dumps(report["parties"], indent=1)
    assert report["mode"] == "lab"
    assert report["summary"]["result"] == EXPECTED_SUMS_3
    assert report["roster"]["direct_addresses"] == 1  # p3 has a public address
    assert report["mediator"]["url"].endswith(":8080")
    links = {p["host"]: p["links"] for p in report["parties"]}
    assert links["p1"] == {"1": "relay", "2": "direct"}
    assert links["p2"] == {"0": "relay", "2": "direct"}
    assert all(set(p["links_at_end"]) == set(p["links"]) for p in report["parties"])
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "dsl-e3test-" not in left  # torn down
