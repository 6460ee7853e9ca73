"""netlab: a small internet in Linux network namespaces, for testing NAT traversal for real.

A public segment with a mediator (two addresses), home networks behind cone or symmetric NAT
routers, and impairable access links (delay, jitter, loss, rate).  Build one from a TOML file or
a dict, run processes inside its hosts, change impairments at run time, tear it down::

    import sys; sys.path.insert(0, "infra/lab")
    from netlab import Lab

    with Lab.up("infra/lab/example.toml", name="demo") as lab:
        lab.exec("alice", ["ping", "-c1", lab.host("mediator").address])
        lab.impair("home1", delay="40ms", loss=0.05)

See ``infra/lab/README.md`` for the topology, the address plan and the command line.
"""

from __future__ import annotations

from netlab.config import HomeSpec, Impairment, LabConfig, MediatorSpec, NatMode
from netlab.errors import CommandError, ConfigError, LabError, NotRunningError
from netlab.lab import DELAYER, PROBE, Lab, list_labs, teardown
from netlab.topology import Host, Link, Role, Topology, lab_prefix

__all__ = [
    "DELAYER",
    "PROBE",
    "CommandError",
    "ConfigError",
    "HomeSpec",
    "Host",
    "Impairment",
    "Lab",
    "LabConfig",
    "LabError",
    "Link",
    "MediatorSpec",
    "NatMode",
    "NotRunningError",
    "Role",
    "Topology",
    "lab_prefix",
    "list_labs",
    "teardown",
]
