"""Configuration of ``didsession-mediator``: defaults < TOML file < environment < flags.

Every setting has one name, used in all three places:

- TOML: ``port = 8080`` at the top level, or in a table named after its prefix
  (``[stun]`` ``port = 3478`` is ``stun_port``);
- environment: ``DIDSESSION_MEDIATOR_`` + the name in capitals (``DIDSESSION_MEDIATOR_STUN_PORT``);
  booleans are ``1/0``, ``true/false``, ``yes/no``, ``on/off``;
- flags: ``--`` + the name with dashes (``--stun-port``; booleans ``--x`` / ``--no-x``).

The file is ``--config FILE`` or ``$DIDSESSION_MEDIATOR_CONFIG``.  Unknown names and
unparsable values are a :class:`~didsession.errors.ConfigError`, never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from didsession._dataclass import dataclass
from didsession.envelope import MAX_ENVELOPE_BYTES
from didsession.errors import ConfigError

__all__ = ["ENV_PREFIX", "MediatorConfig", "build_parser", "default_data_dir", "load_config"]

ENV_PREFIX = "DIDSESSION_MEDIATOR_"
_SECTIONS = ("store", "stun", "relay", "queue", "ws", "keylist")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/didsession-mediator`` (``~/.local/share/didsession-mediator``)."""
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "didsession-mediator"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class MediatorConfig:
    """All settings, with their defaults.  See the module docstring for where they come from."""

    # -- HTTP / WebSocket server
    host: str = field(default="127.0.0.1", metadata=_doc("address to listen on"))
    port: int = field(default=8080, metadata=_doc("HTTP and WebSocket port"))
    public_url: str | None = field(
        default=None,
        metadata=_doc(
            "URL others reach this mediator at (its DID's service endpoint is PUBLIC_URL/didcomm)"
            "; default http://HOST:PORT"
        ),
    )
    data_dir: Path = field(
        default_factory=default_data_dir,
        metadata=_doc("keys (mode 0600) and the SQLite store live here"),
    )
    label: str = field(default="didsession mediator", metadata=_doc("label in the invitation"))
    log_level: str = field(default="info", metadata=_doc("debug, info, warning, error"))
    log_format: str = field(default="json", metadata=_doc("json (one object per line) or text"))
    max_request_bytes: int = field(
        default=MAX_ENVELOPE_BYTES, metadata=_doc("largest HTTP body accepted")
    )
    max_ws_frame_bytes: int = field(
        default=MAX_ENVELOPE_BYTES, metadata=_doc("largest WebSocket message on /ws")
    )
    max_connections_per_source: int = field(
        default=64, metadata=_doc("open TCP connections per client IP address")
    )
    request_timeout: float = field(
        default=30.0, metadata=_doc("seconds to receive a request body or an idle request")
    )
    ws_send_timeout: float = field(
        default=10.0, metadata=_doc("a WebSocket client that does not read this long is dropped")
    )
    ws_heartbeat: float = field(
        default=60.0,
        metadata=_doc(
            "WebSocket ping interval in seconds (0: off); a DIDComm WebSocket that does not "
            "answer within half of it is dropped, a relay connection only once its machine "
            "has answered nothing for twice it (a party computing may not answer pings)"
        ),
    )
    open_mediation: bool = field(
        default=True, metadata=_doc("grant mediation to every DID that asks")
    )
    keylist_key_proof: bool = field(
        default=True,
        metadata=_doc(
            "a DID may route only itself and DIDs using the key its request was authcrypted from"
        ),
    )
    keylist_max: int = field(default=1000, metadata=_doc("keylist entries per DID"))
    max_grants: int = field(
        default=100_000,
        metadata=_doc("DIDs granted mediation, in all; beyond it new DIDs get e.p.me.res.storage"),
    )
    keylist_max_total: int = field(
        default=100_000,
        metadata=_doc("keylist entries of all DIDs; an add beyond it gets e.p.me.res.storage"),
    )
    # -- storage
    store_backend: str = field(default="sqlite", metadata=_doc("sqlite or redis"))
    store_path: Path | None = field(
        default=None, metadata=_doc("SQLite database (default DATA_DIR/mediator.sqlite3)")
    )
    store_synchronous: str = field(
        default="FULL", metadata=_doc("SQLite synchronous pragma: FULL is durable on power loss")
    )
    store_redis_url: str = field(
        default="redis://127.0.0.1:6379/0", metadata=_doc("Redis URL for the redis backend")
    )
    store_redis_prefix: str = field(default="didsession:", metadata=_doc("Redis key prefix"))
    queue_ttl: float = field(default=7 * 86400.0, metadata=_doc("seconds a queued message is kept"))
    queue_max_messages: int = field(default=10_000, metadata=_doc("queued messages per DID"))
    queue_max_bytes: int = field(default=64 << 20, metadata=_doc("queued bytes per DID"))
    queue_max_total_messages: int = field(
        default=1_000_000,
        metadata=_doc("queued messages of all DIDs; a forward beyond it gets e.p.me.res.storage"),
    )
    queue_max_total_bytes: int = field(
        default=1 << 30,
        metadata=_doc("queued bytes of all DIDs; a forward beyond it gets e.p.me.res.storage"),
    )
    queue_max_message_bytes: int = field(
        default=512 << 10,
        metadata=_doc("largest forwarded message kept (a delivery of it must fit 1 MiB)"),
    )
    queue_expire_interval: float = field(
        default=60.0, metadata=_doc("seconds between sweeps of expired messages")
    )
    # -- STUN
    stun_enabled: bool = field(default=True, metadata=_doc("serve STUN (UDP and TCP)"))
    stun_host: str | None = field(default=None, metadata=_doc("STUN address (default HOST)"))
    stun_port: int = field(default=3478, metadata=_doc("STUN port, UDP and TCP"))
    stun_alternate: str | None = field(
        default=None, metadata=_doc("second IP:PORT for RFC 5780 (OTHER-ADDRESS)")
    )
    stun_rate: float = field(
        default=20.0, metadata=_doc("STUN requests per second per source IP (0: unlimited)")
    )
    stun_burst: float = field(default=40.0, metadata=_doc("STUN burst per source IP"))
    stun_queue: int = field(default=1024, metadata=_doc("UDP datagrams queued before dropping"))
    # -- relay
    relay_enabled: bool = field(default=True, metadata=_doc("serve the session relay on /relay"))
    relay_max_frame_bytes: int = field(default=64 << 10, metadata=_doc("largest relayed frame"))
    relay_quota_bytes: int = field(
        default=1 << 30, metadata=_doc("bytes one relay client may send (0: unlimited)")
    )
    relay_quota_frames: int = field(
        default=10_000_000, metadata=_doc("frames one relay client may send (0: unlimited)")
    )
    relay_wait_timeout: float = field(
        default=60.0, metadata=_doc("seconds a relay slot waits for its peer")
    )

    @property
    def base_url(self) -> str:
        """The public base URL, without a trailing slash."""
        url = self.public_url or f"http://{_host_for_url(self.host)}:{self.port}"
        return url.rstrip("/")

    @property
    def endpoint(self) -> str:
        """The DIDComm endpoint URL in the mediator's DID document."""
        return f"{self.base_url}/didcomm"

    @property
    def sqlite_path(self) -> Path:
        return self.store_path or self.data_dir / "mediator.sqlite3"

    def validate(self) -> MediatorConfig:
        """Return self, or raise ConfigError naming the first bad setting."""
        if not 0 <= self.port <= 65535 or not 0 <= self.stun_port <= 65535:
            raise ConfigError("port and stun_port must be 0..65535")
        if self.store_backend not in ("sqlite", "redis"):
            raise ConfigError(f"store_backend must be sqlite or redis, not {self.store_backend!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format must be json or text, not {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")
        positive = (
            "max_request_bytes",
            "max_ws_frame_bytes",
            "max_connections_per_source",
            "request_timeout",
            "ws_send_timeout",
            "keylist_max",
            "max_grants",
            "keylist_max_total",
            "queue_ttl",
            "queue_max_messages",
            "queue_max_bytes",
            "queue_max_total_messages",
            "queue_max_total_bytes",
            "queue_max_message_bytes",
            "queue_expire_interval",
            "stun_queue",
            "relay_max_frame_bytes",
            "relay_wait_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("ws_heartbeat", "stun_rate", "relay_quota_bytes", "relay_quota_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("public_url must be an http:// or https:// URL")
        if self.stun_alternate is not None:
            parse_host_port(self.stun_alternate, "stun_alternate")
        return self


def parse_host_port(value: str, name: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT``; ConfigError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{name} must be IP:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_FIELDS = {f.name: f for f in dataclasses.fields(MediatorConfig)}


def _kind(name: str) -> str:
    annotation = str(_FIELDS[name].type)
    for kind in ("bool", "int", "float", "Path", "str"):
        if annotation.startswith(kind):
            return kind
    raise AssertionError(annotation)  # pragma: no cover - every field has one of these


def _optional(name: str) -> bool:
    return "None" in str(_FIELDS[name].type)


def _convert(name: str, value: Any, source: str) -> Any:
    kind = _kind(name)
    if value is None or (isinstance(value, str) and value == "" and _optional(name)):
        if _optional(name):
            return None
        raise ConfigError(f"{name} ({source}) must have a value")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} ({source}): {value!r} is not a valid {kind}") from None


def _flatten_toml(doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key in _SECTIONS:
            for sub, subvalue in value.items():
                out[f"{key}_{sub}"] = subvalue
        else:
            out[key] = value
    for key in out:
        if key not in _FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``didsession-mediator`` argument parser (one flag per setting)."""
    parser = argparse.ArgumentParser(
        prog="didsession-mediator",
        description="DIDComm v2 mediator (Coordinate Mediation 2.0, Routing 2.0, Message "
        "Pickup 3.0 with live delivery), STUN server and session relay.",
        epilog="Every flag can also be set in the TOML file (--config) or as "
        f"{ENV_PREFIX}NAME; flags win over the environment, which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    for name, f in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        helptext = f.metadata.get("doc", "")
        if _kind(name) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        else:
            parser.add_argument(flag, metavar=name.upper().split("_")[-1], help=helptext)
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[MediatorConfig, argparse.Namespace]:
    """The effective configuration (and the parsed flags, for the non-setting ones).

    Raises:
        ConfigError: unreadable file, unknown setting, bad value.
    """
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in _flatten_toml(doc, path).items():
            values[key] = _convert(key, value, str(path))
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise ConfigError(f"unknown environment setting {key}")
        values[name] = _convert(name, value, key)
    for name in _FIELDS:
        if hasattr(args, name):
            values[name] = _convert(name, getattr(args, name), "--" + name.replace("_", "-"))
    return MediatorConfig(**values).validate(), args


def config_as_dict(config: MediatorConfig) -> dict[str, Any]:
    """The settings as JSON-friendly values (secrets: there are none; the Redis password is
    masked, see :func:`redact_url`)."""
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(config, name)
        if isinstance(value, Path):
            value = str(value)
        if name == "store_redis_url":
            value = redact_url(str(value))
        out[name] = value
    return out


def redact_url(url: str) -> str:
    """``url`` with its credentials masked, for output and logs.

    redis-py takes a password both as ``user:password@host`` and as ``?password=``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: show nothing that might be a secret
        return url.partition("://")[0] + "://***"
    out = f"{parts.scheme}://" if "://" in url else (f"{parts.scheme}:" if parts.scheme else "")
    host = parts.netloc.rpartition("@")[2]
    out += f"***@{host}" if "@" in parts.netloc else host
    out += parts.path
    if parts.query:
        out += "?" + "&".join(_redact_param(item) for item in parts.query.split("&"))
    if parts.fragment:
        out += "#" + parts.fragment
    return out


def _redact_param(item: str) -> str:
    name, sep, _ = item.partition("=")
    return f"{name}=***" if sep and unquote_plus(name).strip().lower() == "password" else item
