"""What an operator watches: Prometheus metrics and health, on their own listen address.

`/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz` (it
serves: started, its ledger answers, not shedding load) are served on
`gateway_metrics_host:gateway_metrics_port` (default 127.0.0.1:9464, never the public
/v1 address) by a small threaded server beside the event loop; `/healthz` and `/readyz`
also on the /v1 address, for load balancers. Labels are only model, status and lot —
never a key, an account or anything from a prompt — and a model outside the catalog is
counted as "other", so no client can grow the label set.

Metrics (all prefixed `promptex_gateway_`): `requests_total{model,status}`,
`added_latency_seconds` (time in the gateway less the upstream's: a whole answer's,
or a stream's up to its first byte), `upstream_errors_total{lot,status}`, `ledger_wait_seconds` (a
ledger call waiting for its thread), `holds_open`, `requests_in_flight`, `shed_total`
(refused for overload), `in_flight_refused_total` (a key's or address's share reached),
`connections_refused_total` (per address), `timeouts_total` (headers or body too slow),
`lot_open{lot}` (the circuit breaker: 1 while a lot is skipped), and
`ledger_group_commits_total` / `ledger_grouped_writes_total` (group commits of more than
one ledger write, and the writes in them: writes ÷ commits is the mean group),
`ledger_inline_writes_total` (writes run on the event loop while the ledger was idle).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from promptex.gateway.guard import ConnectionGuard
    from promptex.gateway.service import Gateway

log = logging.getLogger("promptex.gateway")
OTHER = "other"
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GatewayMetrics:
    """The gateway's own metrics, in a registry of its own (one per app)."""

    def __init__(self, models: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = frozenset(models)
        r = self.registry
        self.requests = Counter(
            "promptex_gateway_requests", "Answered /v1 requests by model and status.", ["model", "status"], registry=r
        )
        self.added = Histogram(
            "promptex_gateway_added_latency_seconds",
            "Time a request spent in the gateway less the upstream's (a stream: up to its first byte).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "promptex_gateway_upstream_errors",
            "Failed upstream calls by lot and status.",
            ["lot", "status"],
            registry=r,
        )
        self._answered: dict[tuple[str, int], Counter] = {}  # (model, status) → its counter
        self.ledger_wait = Histogram(
            "promptex_gateway_ledger_wait_seconds",
            "Time a ledger call waited for a ledger thread.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def answered(self, model: object, status: int) -> None:
        """One answered request (`model`: whatever the body named, maybe not even a string)."""
        known = model if isinstance(model, str) and model in self.models else OTHER
        counter = self._answered.get((known, status))
        if counter is None:  # `labels` looks the child up under a lock: a quarter of this call's CPU
            counter = self._answered[(known, status)] = self.requests.labels(known, str(status))
        counter.inc()

    def watch(self, gateway: Callable[[], Gateway | None], guard: ConnectionGuard | None) -> None:
        """Also report the gateway's state (read when scraped)."""
        self.registry.register(_State(gateway, guard))


class _State(Collector):
    def __init__(self, gateway: Callable[[], Gateway | None], guard: ConnectionGuard | None) -> None:
        self._gateway = gateway
        self._guard = guard

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read when scraped only

    def collect(self) -> Iterator[Metric]:
        gw = self._gateway()
        if gw is None:
            return
        yield GaugeMetricFamily("promptex_gateway_holds_open", "Holds of requests in flight.", value=len(gw.holding))
        yield GaugeMetricFamily("promptex_gateway_requests_in_flight", "Requests holding a slot.", value=gw.inflight)
        yield CounterMetricFamily("promptex_gateway_shed", "Requests refused for overload.", value=gw.shed)
        yield CounterMetricFamily(
            "promptex_gateway_in_flight_refused",
            "Requests refused: their key's or address's share was in flight.",
            value=gw.admission.refused,
        )
        timeouts = gw.timed_out + (self._guard.timed_out if self._guard else 0)
        yield CounterMetricFamily("promptex_gateway_timeouts", "Headers or bodies too slow.", value=timeouts)
        if self._guard is not None:
            yield CounterMetricFamily(
                "promptex_gateway_connections_refused",
                "Connections refused: their address had its share open.",
                value=self._guard.refused,
            )
        yield CounterMetricFamily(
            "promptex_gateway_ledger_group_commits",
            "Group commits of more than one ledger write.",
            value=gw.threads.groups,
        )
        yield CounterMetricFamily(
            "promptex_gateway_ledger_grouped_writes", "Ledger writes committed in a group.", value=gw.threads.grouped
        )
        yield CounterMetricFamily(
            "promptex_gateway_ledger_inline_writes",
            "Ledger writes run on the event loop while the ledger was idle.",
            value=gw.threads.inlined,
        )
        lots = GaugeMetricFamily("promptex_gateway_lot_open", "1 while a lot's circuit is open.", labels=["lot"])
        for lot, is_open in gw.health.circuits():
            lots.add_metric([str(lot)], 1 if is_open else 0)
        yield lots


# ─── The operator's listen address ───────────────────────────────────────────


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


class _Threaded(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True)
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def operator_app(metrics: GatewayMetrics, ready: Callable[[], str | None]) -> Callable[..., Iterable[bytes]]:
    """The WSGI app of the operator's address: /metrics, /healthz, /readyz (`ready`: None
    when ready, else why not)."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("content-type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            why = ready()
            status = "200 OK" if why is None else "503 Service Unavailable"
            start_response(status, [("content-type", "text/plain")])
            return [(why or "ready").encode() + b"\n"]
        if path == "/metrics":
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("content-type", "text/plain")])
        return [b"/metrics, /healthz or /readyz\n"]

    return app


def serve_operator(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> WSGIServer | None:
    """Serve `app` on host:port in a daemon thread; None (logged) if the address is taken:
    the gateway serves /v1 all the same."""
    try:
        server = make_server(host, port, app, _Threaded, handler_class=_Quiet)
    except OSError as exc:
        log.error("metrics and health not served on %s:%d: %s", host, port, exc.strerror or exc)
        return None
    threading.Thread(target=server.serve_forever, name="operator", daemon=True).start()
    return server
