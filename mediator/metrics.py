"""Prometheus metrics of the mediator, in the text exposition format (version 0.0.4).

Counters are plain integer attributes, incremented on the hot paths (a relayed frame costs
two additions); :meth:`Metrics.render` turns them, and the gauges sampled at scrape time
(live connections, STUN counters, queue totals), into the ``/metrics`` page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["Metrics", "render_samples"]

_PREFIX = "didsession_mediator_"


class Metrics:
    """The mediator's counters.  Single event loop: no locking needed."""

    __slots__ = (
        "acked",
        "connections_rejected",
        "delivered_live",
        "delivered_pickup",
        "errors",
        "expired",
        "forwards_refused",
        "queued",
        "relay_bytes",
        "relay_frames",
        "relay_sessions_opened",
        "requests",
    )

    def __init__(self) -> None:
        self.queued = 0  # forwarded messages stored
        self.forwards_refused = 0
        self.delivered_pickup = 0  # messages sent in delivery replies
        self.delivered_live = 0  # messages pushed live
        self.acked = 0  # messages deleted by messages-received
        self.expired = 0
        self.relay_frames = 0
        self.relay_bytes = 0
        self.relay_sessions_opened = 0
        self.connections_rejected = 0  # over the per-source limit
        self.requests: Counter[str] = Counter()  # by transport: http, ws
        self.errors: Counter[str] = Counter()  # by kind (problem code or local reason)

    def error(self, kind: str) -> None:
        self.errors[kind[:64]] += 1

    def render(self, gauges: Mapping[str, float], stun: Mapping[str, int] | None) -> str:
        """The exposition text; ``gauges`` maps metric name (without prefix) to value."""
        samples: list[tuple[str, str, str, Iterable[tuple[dict[str, str], float]]]] = [
            ("messages_queued_total", "counter", "forwarded messages stored", [({}, self.queued)]),
            (
                "forwards_refused_total",
                "counter",
                "forward messages refused (unknown recipient, full queue, malformed)",
                [({}, self.forwards_refused)],
            ),
            (
                "messages_delivered_total",
                "counter",
                "queued messages sent to their recipient",
                [
                    ({"mode": "pickup"}, self.delivered_pickup),
                    ({"mode": "live"}, self.delivered_live),
                ],
            ),
            (
                "messages_acknowledged_total",
                "counter",
                "messages deleted by messages-received",
                [({}, self.acked)],
            ),
            ("messages_expired_total", "counter", "messages dropped at TTL", [({}, self.expired)]),
            ("relay_frames_total", "counter", "frames relayed", [({}, self.relay_frames)]),
            ("relay_bytes_total", "counter", "payload bytes relayed", [({}, self.relay_bytes)]),
            (
                "relay_sessions_total",
                "counter",
                "relay sessions that found their peer",
                [({}, self.relay_sessions_opened)],
            ),
            (
                "connections_rejected_total",
                "counter",
                "connections closed at once: over the per-source limit",
                [({}, self.connections_rejected)],
            ),
            (
                "requests_total",
                "counter",
                "DIDComm messages received, by transport",
                [({"transport": k}, v) for k, v in sorted(self.requests.items())],
            ),
            (
                "errors_total",
                "counter",
                "errors by kind (problem-report code or local reason)",
                [({"kind": k}, v) for k, v in sorted(self.errors.items())],
            ),
        ]
        for name, value in sorted(gauges.items()):
            samples.append((name, "gauge", name.replace("_", " "), [({}, value)]))
        if stun is not None:
            samples.append(
                (
                    "stun_responses_total",
                    "counter",
                    "STUN success responses",
                    [({}, stun.get("responses", 0))],
                )
            )
            samples.append(
                (
                    "stun_events_total",
                    "counter",
                    "STUN inputs by outcome",
                    [({"outcome": k}, v) for k, v in sorted(stun.items()) if k != "responses"],
                )
            )
        return render_samples(samples)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_samples(
    samples: Iterable[tuple[str, str, str, Iterable[tuple[dict[str, str], float]]]],
) -> str:
    """Prometheus text format: ``# HELP``, ``# TYPE`` and one line per labelled value."""
    lines = []
    for name, kind, helptext, values in samples:
        full = _PREFIX + name
        lines.append(f"# HELP {full} {helptext}")
        lines.append(f"# TYPE {full} {kind}")
        for labels, value in values:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            number = int(value) if float(value).is_integer() else value
            lines.append(f"{full}{{{label_text}}} {number}" if label_text else f"{full} {number}")
    return "\n".join(lines) + "\n"
