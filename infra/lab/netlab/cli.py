"""``infra/lab/lab``: the lab's command line (see ``infra/lab/README.md``).

Every command takes ``--lab NAME`` (or ``$DSL_LAB``) to pick a lab other than the default one,
so several labs can be up side by side.  Exit status: 0 done, 1 the lab could not do it, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from netlab.commands import setup_commands
from netlab.config import IMPAIRMENT_KEYS, Impairment, LabConfig
from netlab.errors import LabError
from netlab.lab import Lab, list_labs, list_namespaces, teardown
from netlab.topology import Topology, lab_prefix

__all__ = ["main"]


def _impair_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--delay", help=f"one-way delay each direction{what}, e.g. 40ms")
    parser.add_argument("--jitter", help="delay varies uniformly by +- this, e.g. 5ms")
    parser.add_argument("--loss", help="drop probability per packet per direction, e.g. 0.05")
    parser.add_argument("--rate", help="rate limit each direction, e.g. 10mbit (0: none)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--lab",
        default=argparse.SUPPRESS,
        help="lab name: namespaces dsl-NAME-*; default $DSL_LAB, else the default lab dsl-*",
    )
    parser = argparse.ArgumentParser(
        prog="lab",
        parents=[common],
        description="A small internet of network namespaces: a mediator, homes behind NATs.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="build the lab (removing leftovers first)")
    up.add_argument("config", nargs="?", help="TOML file (infra/lab/*.toml)")
    up.add_argument(
        "--home",
        action="append",
        default=[],
        metavar="MODE[:N]",
        help="without a file: a home with NAT MODE (cone, symmetric, none) and N parties",
    )
    _impair_flags(up, " on every home link (with --home)")
    up.add_argument("--json", action="store_true", help="print the hosts as JSON")
    up.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")

    down = sub.add_parser("down", parents=[common], help="remove the lab (idempotent)")
    down.add_argument("--all", action="store_true", help="remove every dsl- lab on the machine")

    ex = sub.add_parser("exec", parents=[common], help="run a command in a host's namespace")
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    hosts = sub.add_parser("hosts", parents=[common], help="list hosts and links")
    hosts.add_argument("--json", action="store_true")

    imp = sub.add_parser("impair", parents=[common], help="change a link's impairments")
    imp.add_argument("link", help="a home (its router's WAN link), the mediator or a public host")
    _impair_flags(imp, "")
    imp.add_argument("--clear", action="store_true", help="remove every impairment first")
    imp.add_argument("--json", action="store_true")

    status = sub.add_parser("status", parents=[common], help="is everything there and alive")
    status.add_argument("--json", action="store_true")

    sub.add_parser("list", parents=[common], help="labs with namespaces on this machine")
    return parser


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _print_hosts(info: dict[str, Any]) -> None:
    rows = [["HOST", "ROLE", "NAMESPACE", "ADDRESSES", "NAT", "PUBLIC", "LINK"]]
    for h in info["hosts"]:
        rows.append(
            [
                h["name"],
                h["role"],
                h["namespace"],
                " ".join(h["addresses"]),
                h["nat"] or "-",
                h["public_address"] or "-",
                h["link"] or "-",
            ]
        )
    print(_table(rows))
    impaired = [
        f"  {link['name']}: {Impairment().updated(link['impairment']).describe()}"
        for link in info["links"]
        if not Impairment().updated(link["impairment"]).is_none
    ]
    if impaired:
        print("impairments:")
        print("\n".join(impaired))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name: str | None = getattr(args, "lab", None) or os.environ.get("DSL_LAB") or None
    try:
        return _dispatch(args, name)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, name: str | None) -> int:
    if args.cmd == "up":
        impair = {k: getattr(args, k) for k in IMPAIRMENT_KEYS}
        if args.config:
            if args.home or any(v is not None for v in impair.values()):
                print("lab: give either a config file or --home flags", file=sys.stderr)
                return 2
            config = LabConfig.from_toml(args.config)
        else:
            config = LabConfig.from_flags(args.home, impair)
        if args.dry_run:
            topo = Topology.plan(config, lab_prefix(name))
            for cmd in setup_commands(topo):
                print(cmd)
            return 0
        lab = Lab.up(config, name=name, log=sys.stderr)
        info = lab.describe()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_hosts(info)
        return 0
    if args.cmd == "down":
        removed = teardown(name, every_lab=args.all)
        print(f"lab: removed {len(removed)} namespaces", file=sys.stderr)
        return 0
    if args.cmd == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            print("lab: usage: lab exec HOST -- CMD ...", file=sys.stderr)
            return 2
        namespace = lab_prefix(name) + args.host
        if namespace not in list_namespaces():
            raise LabError(f"no namespace {namespace}: is the lab up, and is {args.host} a host?")
        os.execvp("ip", ["ip", "netns", "exec", namespace, *argv])
    if args.cmd == "hosts":
        info = Lab.attach(name).describe()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_hosts(info)
        return 0
    if args.cmd == "impair":
        lab = Lab.attach(name)
        base = Impairment() if args.clear else lab.impairment(args.link)
        changes = {k: getattr(args, k) for k in IMPAIRMENT_KEYS}
        new = lab.impair(args.link, base.updated(changes))
        if args.json:
            print(json.dumps({"link": args.link, "impairment": new.as_dict()}))
        else:
            print(f"{args.link}: {new.describe()}")
        return 0
    if args.cmd == "status":
        report = Lab.attach(name).status()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_status(report)
        return 0 if report["healthy"] else 1
    if args.cmd == "list":
        for lab_name, namespaces in sorted(list_labs().items(), key=lambda kv: kv[0] or ""):
            print(f"{lab_name or '(default)'}: {len(namespaces)} namespaces")
        return 0
    raise AssertionError(args.cmd)


def _print_status(report: dict[str, Any]) -> None:
    label = report["lab"] or "(default)"
    print(f"lab {label}: {'healthy' if report['healthy'] else 'BROKEN'}")
    if report["missing_namespaces"]:
        print(f"  missing namespaces: {' '.join(report['missing_namespaces'])}")
    for link, info in report["links"].items():
        imp = Impairment().updated(info["impairment"]).describe()
        delayer = info["delayer"]
        alive = "" if delayer is None else f" (delayer {delayer['pid']}"
        if delayer is not None:
            alive += " alive)" if delayer["alive"] else " DEAD)"
        print(f"  link {link}: {imp}{alive}")
    for router, info in report["routers"].items():
        print(
            f"  router {router}: {info['nat']} NAT, {info['conntrack_entries']} conntrack entries"
        )
