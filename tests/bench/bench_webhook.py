"""Admission webhook figures, each against a baseline measured side by side in this run.

1. `/mutate` throughput through gunicorn + TLS, against a no-op Flask handler served by the
   same gunicorn configuration (1 worker, 8 threads, same TLS certificate), as a ratio. Both
   servers run at once and are measured in alternating rounds, so that load from other
   processes on the machine hits both alike; the median of the per-round ratios is the
   figure.
2. Latency of `/mutate` at a paced 200 requests/s (p50, p99).
3. The same with the timekeeper down, against the configured timeout + 5 ms: after states
   were cached (the usual outage), and from a cold start (a black hole that accepts and never
   answers, and a refused port).

Loopback only; bounded request counts. `python -m tests.bench webhook` runs it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

THROUGHPUT_CLIENTS = 4
THROUGHPUT_REQUESTS_PER_CLIENT = 150
THROUGHPUT_ROUNDS = 15
PACED_RATE_PER_SECOND = 200
PACED_REQUESTS = 1000
PACED_THREADS = 4
DOWN_TIMEOUT_SECONDS = 0.1


def _review(namespace: str) -> bytes:
    from tests.webhook.builders import container, gpu, pod, review

    subject = pod(
        container("train", limits=gpu(50, 8), env=[{"name": "EPOCHS", "value": "10"}]),
        init=[container("fetch", limits={"cpu": "1"})],
        annotations={"team": "vision", "owner": "alice"},
        namespace=namespace,
        priority=0,
    )
    return json.dumps(review(subject, namespace=namespace)).encode()


def _noop_app() -> Any:
    from flask import Flask, jsonify

    app = Flask("noop")
    answer = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "0", "allowed": True},
    }

    @app.post("/mutate")
    def mutate() -> Any:
        return jsonify(answer)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app


def _serve_noop(fd: str, cert: str, key: str) -> None:
    from webhook.server import ServerOptions, serve

    serve(_noop_app, ServerOptions(bind=f"fd://{fd}", cert_file=cert, key_file=key))


@contextmanager
def _server(
    kind: str, certs: Path, timekeeper_url: str, *extra: str, env: dict[str, str] | None = None
) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    port = listener.getsockname()[1]
    fd = str(listener.fileno())
    cert, key = str(certs / "tls.crt"), str(certs / "tls.key")
    if kind == "noop":
        command = [sys.executable, "-m", "tests.bench.bench_webhook", "serve-noop", fd, cert, key]
    else:
        command = [sys.executable, "-m", "gpushare", "webhook", "--bind-fd", fd]
        command += ["--cert", cert, "--key", key, "--timekeeper-url", timekeeper_url]
        command += ["--log-level", "error", *extra]
    process = subprocess.Popen(
        command,
        pass_fds=[listener.fileno()],
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    listener.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = _connect(port, certs)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.05)
        _SERVER_PIDS[port] = process.pid
        yield port
    finally:
        process.terminate()
        process.wait(20)


_SERVER_PIDS: dict[int, int] = {}


def _cpu_seconds(port: int) -> float:
    """CPU time (user + system) of the server on `port`: gunicorn's master and workers."""
    master = _SERVER_PIDS[port]
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if master in (pid, parent):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _connect(port: int, certs: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)


def _post(connection: http.client.HTTPSConnection, body: bytes) -> None:
    connection.request("POST", "/mutate", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200 or b'"allowed":true' not in data.replace(b" ", b""):
        raise RuntimeError(f"unexpected answer {response.status}: {data[:200]!r}")


def _closed_loop_client(port: int, certs: str, count: int) -> float:
    connection = _connect(port, Path(certs))
    body = _review("team-a")
    _post(connection, body)  # handshake and warm-up outside the timing
    started = time.perf_counter()
    for _ in range(count):
        _post(connection, body)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def _throughput(port: int, certs: Path, pool: ProcessPoolExecutor) -> float:
    """Requests per second; also adds the server's CPU seconds per request to _CPU_COST."""
    cpu_before = _cpu_seconds(port)
    started = time.perf_counter()
    futures = [
        pool.submit(_closed_loop_client, port, str(certs), THROUGHPUT_REQUESTS_PER_CLIENT)
        for _ in range(THROUGHPUT_CLIENTS)
    ]
    for future in futures:
        future.result()
    elapsed = time.perf_counter() - started
    count = THROUGHPUT_CLIENTS * THROUGHPUT_REQUESTS_PER_CLIENT
    _CPU_COST.setdefault(port, []).append((_cpu_seconds(port) - cpu_before) / count)
    return count / elapsed


_CPU_COST: dict[int, list[float]] = {}


def _paced(
    port: int, certs: Path, namespaces: int = 1, requests: int = PACED_REQUESTS
) -> list[float]:
    """Open-loop at PACED_RATE_PER_SECOND; latency measured from each scheduled send time."""
    bodies = [_review(f"team-{i}") for i in range(namespaces)]
    latencies: list[float] = []
    lock = threading.Lock()
    interval = 1.0 / PACED_RATE_PER_SECOND
    start_at = time.perf_counter() + 0.5

    def run(offset: int) -> None:
        connection = _connect(port, certs)
        connection.connect()
        mine: list[float] = []
        for index in range(offset, requests, PACED_THREADS):
            scheduled = start_at + index * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            _post(connection, bodies[index % len(bodies)])
            mine.append(time.perf_counter() - scheduled)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(PACED_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


def _fake_timekeeper() -> Any:
    from tests.webhook.builders import fake_timekeeper, wire_status

    context = fake_timekeeper()
    server = context.__enter__()
    server.statuses.update({f"team-{i}": wire_status("in-budget") for i in range(50)})
    server.statuses["team-a"] = wire_status("warning")
    return context, server


def main() -> None:
    from tests.webhook.serving import generate_certs

    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(THROUGHPUT_CLIENTS) as pool:
        certs = Path(scratch) / "certs"
        generate_certs(certs)
        context, timekeeper = _fake_timekeeper()
        try:
            with (
                _server("noop", certs, timekeeper.url) as noop_port,
                _server("webhook", certs, timekeeper.url) as mutate_port,
            ):
                _throughput(noop_port, certs, pool)  # warm-up
                _throughput(mutate_port, certs, pool)
                noop_rates, mutate_rates = [], []
                for round_index in range(THROUGHPUT_ROUNDS):
                    # Interleaved, order alternating: both see the same outside noise.
                    if round_index % 2:
                        mutate_rates.append(_throughput(mutate_port, certs, pool))
                        noop_rates.append(_throughput(noop_port, certs, pool))
                    else:
                        noop_rates.append(_throughput(noop_port, certs, pool))
                        mutate_rates.append(_throughput(mutate_port, certs, pool))
                paced_noop = _paced(noop_port, certs)
                paced = _paced(mutate_port, certs)
            ratios = sorted(m / n for m, n in zip(mutate_rates, noop_rates, strict=True))
            noop_cpu = statistics.median(_CPU_COST[noop_port][1:])
            mutate_cpu = statistics.median(_CPU_COST[mutate_port][1:])
            print(
                f"throughput /mutate vs no-op Flask, median of {THROUGHPUT_ROUNDS} paired rounds:"
                f" {statistics.median(ratios):.0%} (target >= 70%); /mutate median"
                f" {statistics.median(mutate_rates):.0f} req/s, no-op median"
                f" {statistics.median(noop_rates):.0f} req/s; per-round ratios"
                f" {', '.join(f'{r:.0%}' for r in ratios)}"
            )
            print(
                f"server CPU per request (steadier on a shared machine): /mutate"
                f" {mutate_cpu * 1e6:.0f} us, no-op {noop_cpu * 1e6:.0f} us; capacity ratio"
                f" {noop_cpu / mutate_cpu:.0%}"
            )
            print(
                f"paced {PACED_RATE_PER_SECOND} req/s x {PACED_REQUESTS}: p50"
                f" {_percentile(paced, 0.5) * 1e3:.2f} ms, p99 {_percentile(paced, 0.99) * 1e3:.2f}"
                f" ms, max {paced[-1] * 1e3:.2f} ms (target p99 < 10 ms); no-op Flask, same"
                f" pacing: p50 {_percentile(paced_noop, 0.5) * 1e3:.2f} ms, p99"
                f" {_percentile(paced_noop, 0.99) * 1e3:.2f} ms"
            )
        finally:
            context.__exit__(None, None, None)

        budget_ms = DOWN_TIMEOUT_SECONDS * 1e3 + 5
        timeout = ("--timekeeper-timeout", str(DOWN_TIMEOUT_SECONDS))

        def report(name: str, latencies: list[float]) -> None:
            print(
                f"timekeeper down ({name}), {PACED_RATE_PER_SECOND} req/s over 50 namespaces:"
                f" p50 {_percentile(latencies, 0.5) * 1e3:.2f} ms, p99"
                f" {_percentile(latencies, 0.99) * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms"
                f" (target p99 < timeout {DOWN_TIMEOUT_SECONDS * 1e3:.0f} ms + 5 ms ="
                f" {budget_ms:.0f} ms)"
            )

        # The usual outage: states were cached, then the timekeeper stops answering
        # (accepts connections, never replies). A 1 s TTL makes every state stale mid-run.
        context, timekeeper = _fake_timekeeper()
        try:
            ttl = {"GPUSHARE_WEBHOOK_BUDGET_CACHE_TTL_SECONDS": "1"}
            with _server("webhook", certs, timekeeper.url, *timeout, env=ttl) as port:
                _paced(port, certs, namespaces=50, requests=100)  # fills the cache
                timekeeper.hang = threading.Event()
                report("cached states, then it hangs", _paced(port, certs, namespaces=50))
        finally:
            context.__exit__(None, None, None)

        # The worst case: the webhook starts while the timekeeper is already gone.
        black_hole = socket.socket()
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(4096)  # accepts connections, never answers
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        for name, sink in (
            ("cold start, black hole", black_hole),
            ("cold start, refused", refused),
        ):
            url = f"http://127.0.0.1:{sink.getsockname()[1]}"
            with _server("webhook", certs, url, *timeout) as port:
                report(name, _paced(port, certs, namespaces=50))
        black_hole.close()
        refused.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-noop"]:
        _serve_noop(*sys.argv[2:5])
    else:
        main()
