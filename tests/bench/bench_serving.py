"""How gunicorn worker classes bear slow clients: the choice behind `gpushare.serving`.

The same no-op Flask app (`/healthz`, `POST /echo` of a 1 KiB body) is served by one
gunicorn worker of each class, side by side in one run, plain HTTP on loopback:

- `gthread`: gunicorn's threaded worker, 8 threads (what the servers used before);
- `gevent`: gunicorn's gevent worker, 1,000 connections (one greenlet per connection);
- `asyncio`: `gpushare.serving.AsyncioWorker` (hypercorn on an event loop, 8 app threads).

For each: throughput over keep-alive connections (4 client processes), `/healthz` latency on
a fresh connection, then the same latency while 1,000 slow clients are connected (half idle,
half stuck in a request head), how many of those the worker has closed 12 s later (the
request-head deadline is 5 s), and the worker's resident memory with them.

    python -m tests.bench serving
"""

from __future__ import annotations

import http.client
import importlib.util
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENT_PROCESSES = 4
REQUESTS_PER_CLIENT = 400
ROUNDS = 3
SLOW_CLIENTS = 1000
LATENCY_SAMPLES = 20
LATENCY_TIMEOUT_SECONDS = 5.0
BODY = b"x" * 1024
KINDS = ("gthread", "gevent", "asyncio")


def _app() -> Any:
    from flask import Flask, Response, jsonify, request

    app = Flask("bench")

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.post("/echo")
    def echo() -> Any:
        return Response(request.get_data(), mimetype="application/octet-stream")

    return app


def _serve(kind: str, fd: str) -> None:
    """Entry point of a server subprocess."""
    from gunicorn.app.base import BaseApplication

    from gpushare.serving import WORKER_CLASS

    classes = {"gthread": "gthread", "gevent": "gevent", "asyncio": WORKER_CLASS}

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": [f"fd://{fd}"],
                "workers": 1,
                "threads": int(os.environ.get("BENCH_THREADS", "8")),
                "worker_connections": SLOW_CLIENTS,
                "worker_class": classes[kind],
                "keepalive": 5,
                "timeout": 30,
                "graceful_timeout": 5,
                "control_socket_disable": True,
                "loglevel": "warning",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return _app()

    Server().run()


def _start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_serving", "serve", kind, str(listener.fileno())],
        pass_fds=[listener.fileno()],
        start_new_session=True,
    )
    listener.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _healthz(port)
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{kind} server did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(5)


def _healthz(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=LATENCY_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
    finally:
        connection.close()


def _latencies(port: int) -> list[float]:
    seconds = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        try:
            _healthz(port)
            seconds.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException):
            seconds.append(float("inf"))
    return seconds


def _client(args: tuple[int, int]) -> int:
    port, count = args
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ok = 0
    for _ in range(count):
        connection.request("POST", "/echo", body=BODY, headers={"Content-Type": "text/plain"})
        response = connection.getresponse()
        ok += len(response.read()) == len(BODY)
    connection.close()
    return ok


def _throughput(port: int) -> float:
    work = [(port, REQUESTS_PER_CLIENT)] * CLIENT_PROCESSES
    with multiprocessing.get_context("fork").Pool(CLIENT_PROCESSES) as pool:
        started = time.perf_counter()
        ok = sum(pool.map(_client, work))
        elapsed = time.perf_counter() - started
    if ok != CLIENT_PROCESSES * REQUESTS_PER_CLIENT:
        raise RuntimeError(f"{CLIENT_PROCESSES * REQUESTS_PER_CLIENT - ok} requests failed")
    return ok / elapsed


def _worker_rss_mib(master: int) -> float:
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == master:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def _open_slow(port: int) -> list[socket.socket]:
    sockets = []
    for index in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if index % 2:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: slow\r\nContent-Length: 10\r\nX-Slow: ")
        sockets.append(sock)
    return sockets


def _closed(sockets: list[socket.socket]) -> int:
    closed = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            data = sock.recv(1024)
        except BlockingIOError:
            continue
        except OSError:
            closed += 1
            continue
        closed += data == b"" or data.startswith(b"HTTP/")
    return closed


def _show(values: list[float]) -> str:
    failed = sum(value == float("inf") for value in values)
    done = sorted(value for value in values if value != float("inf"))
    if not done:
        return f"all {failed} failed (> {LATENCY_TIMEOUT_SECONDS:g} s)"
    p50 = statistics.median(done) * 1000
    worst = done[-1] * 1000
    return f"p50 {p50:.1f} ms, max {worst:.1f} ms" + (f", {failed} failed" if failed else "")


def main() -> None:
    kinds = [kind for kind in KINDS if kind != "gevent" or importlib.util.find_spec("gevent")]
    if "gevent" not in kinds:
        print("gevent is not installed: its worker is left out")
    servers = {kind: _start(kind) for kind in kinds}
    try:
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(ROUNDS):  # alternating rounds: load from elsewhere hits all alike
            for kind in kinds:
                rates[kind].append(_throughput(servers[kind][1]))
        baseline = statistics.median(rates["gthread"])
        print(
            f"throughput, {CLIENT_PROCESSES} clients x {REQUESTS_PER_CLIENT} POSTs of 1 KiB, "
            f"keep-alive, median of {ROUNDS} rounds (ratio to gthread):"
        )
        for kind in kinds:
            rate = statistics.median(rates[kind])
            print(f"  {kind:8} {rate:7.0f} req/s = {rate / baseline:.0%}")
        print(
            f"/healthz on a fresh connection, {LATENCY_SAMPLES} requests, then with "
            f"{SLOW_CLIENTS} slow clients (half idle, half in a request head):"
        )
        for kind in kinds:
            process, port = servers[kind]
            quiet = _latencies(port)
            rss_quiet = _worker_rss_mib(process.pid)
            slow = _open_slow(port)
            try:
                loaded = _latencies(port)
                rss_loaded = _worker_rss_mib(process.pid)
                time.sleep(12)  # the request-head deadline is 5 s: let it pass twice
                closed = _closed(slow)
            finally:
                for sock in slow:
                    sock.close()
            print(
                f"  {kind:8} alone: {_show(quiet)}; with slow clients: {_show(loaded)}; "
                f"closed by the server after 12 s: {closed}/{SLOW_CLIENTS}; "
                f"worker memory {rss_quiet:.0f} -> {rss_loaded:.0f} MiB"
            )
    finally:
        for process, _ in servers.values():
            _stop(process)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], sys.argv[3])
    else:
        main()
