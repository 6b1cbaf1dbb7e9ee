"""GPU time scheduler figures.

- Decision: one `GpuScheduler.decide` on a free token with 16 clients of one GPU under full
  contention (the server's own timing of every decision while 16 reference clients hold and
  return tokens over unix sockets); the serving thread's CPU use over the run. Baseline side
  by side: the cheapest possible pick, `min()` over 16 ready-made keys.
- Hand-over: from a client's RELEASE to the next client's GRANT, seen by the clients; baseline
  side by side: a round trip over a unix socket pair between two threads.
- Shares: each client's time holding the token over every 2 s span, against its target
  (the max-min fair share between guarantee and cap); device busy (time any client held it).
- Quota change to the running container: `kubectl annotate`-like change of a pod's
  annotations on an in-process API server until the container's client reads the new QUOTA
  line (watch + sync + push), against the window.
"""

from __future__ import annotations

import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from nodemanager.gputime.client import GpuTimeClient
from nodemanager.gputime.scheduler import Quota, SchedulerConfig
from nodemanager.gputime.server import GpuTimeServer

from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod
from tests.nodemanager.fake_kubelet import FakeKubelet
from tests.nodemanager.gputime_sim import expected_shares
from tests.polling import wait_until

CLIENTS = 16
SECONDS = 6.0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _quotas() -> list[Quota]:
    rng = random.Random(7)
    weights = [rng.random() for _ in range(CLIENTS)]
    total = sum(weights)
    return [Quota(w / total * 0.8, min(1.0, w / total * 0.8 + 0.2)) for w in weights]


def bench_contention() -> None:
    root = Path(tempfile.mkdtemp(prefix="gt-bench-", dir="/tmp"))
    config = SchedulerConfig()
    server = GpuTimeServer(config).start()
    quotas = _quotas()
    paths = {}
    for index, quota in enumerate(quotas):
        (root / f"c{index}").mkdir()
        paths[index] = server.add_container(f"c{index}", "GPU-0", root / f"c{index}", quota)
    held: dict[int, list[tuple[float, float]]] = {index: [] for index in paths}
    handovers: list[float] = []
    last_release = [0.0]
    barrier = threading.Barrier(CLIENTS)

    def work(index: int) -> None:
        with GpuTimeClient(paths[index]).connect() as client:
            barrier.wait()
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                token = client.acquire()
                if last_release[0]:
                    handovers.append(token.granted_at - last_release[0])
                time.sleep(token.length_seconds)
                released = time.monotonic()
                last_release[0] = released
                client.release(token, released - token.granted_at)
                held[index].append((token.granted_at, released))

    cpu_before = server.cpu_seconds
    threads = [threading.Thread(target=work, args=(index,)) for index in paths]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    cpu = server.cpu_seconds - cpu_before
    decisions = list(server.decision_seconds)
    server.stop()
    shutil.rmtree(root, ignore_errors=True)

    keys = [(1, random.random(), f"c{index}", 0.0) for index in range(CLIENTS)]
    baseline = []
    for _ in range(len(decisions)):
        begin = time.perf_counter()
        min(keys)
        baseline.append(time.perf_counter() - begin)
    p50, p99 = percentiles(decisions)
    b50, b99 = percentiles(baseline)
    print(
        f"decision, {CLIENTS} clients on one GPU: p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us"
        f" ({len(decisions)} decisions; target p99 < 200 us)"
    )
    print(f"  baseline min() over {CLIENTS} keys: p50 {b50 * 1e6:.2f} us, p99 {b99 * 1e6:.2f} us")
    print(f"  serving thread CPU: {cpu / wall * 100:.1f} % of one core over {wall:.1f} s")

    first = min(a for spans in held.values() for a, _ in spans)
    last = max(b for spans in held.values() for _, b in spans)
    busy = sum(b - a for spans in held.values() for a, b in spans) / (last - first)
    targets = expected_shares(quotas, capacity=busy)
    worst = 0.0
    at = first + config.window_seconds
    while at + 2.0 <= last:
        for index, spans in held.items():
            share = sum(max(0.0, min(b, at + 2) - max(a, at)) for a, b in spans) / 2.0
            worst = max(worst, abs(share - targets[index]))
        at += 0.1
    print(
        f"shares over every 2 s span: worst {worst * 100:.2f} pp from target (target <= 3 pp);"
        f" device busy {busy * 100:.1f} % (target >= 95 %)"
    )

    h50, h99 = percentiles(handovers)
    left, right = socket.socketpair()

    def echo() -> None:
        while data := right.recv(64):
            right.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    trips = []
    for _ in range(2000):
        begin = time.perf_counter()
        left.sendall(b"x\n")
        left.recv(64)
        trips.append(time.perf_counter() - begin)
    left.close()
    thread.join(timeout=5)
    right.close()
    t50, t99 = percentiles(trips)
    print(f"hand-over RELEASE -> next GRANT: p50 {h50 * 1e6:.0f} us, p99 {h99 * 1e6:.0f} us")
    print(f"  baseline unix socket round trip: p50 {t50 * 1e6:.0f} us, p99 {t99 * 1e6:.0f} us")


def bench_decision_alone() -> None:
    """The same decision without sockets or threads: a virtual clock, 20,000 decisions."""
    from nodemanager.gputime.scheduler import GpuScheduler

    scheduler = GpuScheduler(SchedulerConfig())
    for index, quota in enumerate(_quotas()):
        scheduler.set_account(f"c{index}", quota)
        scheduler.open_session(index, f"c{index}")
    now = 0.0
    samples = []
    baseline = []
    keys = [(1, random.random(), f"c{index}", 0.0) for index in range(CLIENTS)]
    for _ in range(20_000):
        for index in range(CLIENTS):
            scheduler.request(index)
        begin = time.perf_counter()
        grant = scheduler.decide(now)
        samples.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        min(keys)
        baseline.append(time.perf_counter() - begin)
        assert grant is not None
        now += grant.length_seconds
        scheduler.release(grant.session, grant.sequence, grant.length_seconds, now)
        now += 0.0002
    p50, p99 = percentiles(samples)
    b50, b99 = percentiles(baseline)
    print(
        f"decision alone (virtual clock, {CLIENTS} clients): p50 {p50 * 1e6:.1f} us,"
        f" p99 {p99 * 1e6:.1f} us ({len(samples)} decisions; {p99 / b99:.0f}x the baseline p99)"
    )
    print(f"  baseline min() over {CLIENTS} keys: p50 {b50 * 1e6:.2f} us, p99 {b99 * 1e6:.2f} us")


def bench_quota_change() -> None:
    from tests.nodemanager.conftest import simulated_daemon

    root = Path(tempfile.mkdtemp(prefix="gt-bench-", dir="/tmp"))
    apiserver = FakeApiServer().start()
    kubelet = FakeKubelet(root / "dp", root / "pr.sock").start()
    daemon = simulated_daemon(root, apiserver)
    window = daemon.settings.gpu_time_window_seconds
    daemon.start()
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        pod = make_pod("train", [("main", 40, 4)], annotations={"gpushare.io/quota-limit": "0.5"})
        apiserver.add_pod(pod)
        granted = kubelet.admit(pod)["main"]
        state = next(host for inside, host, _ in granted.mounts if inside == "/var/run/gpushare")
        path = Path(state) / "gputime.sock"
        wait_until(path.exists, what="socket")
        latencies = []
        with GpuTimeClient(path).connect() as client:
            for round_ in range(60):
                limit = 0.5 + (round_ % 2) * 0.3
                changed = time.monotonic()
                apiserver.annotate_pod("train", {"gpushare.io/quota-limit": f"{limit:.1f}"})

                def arrived(expected: float = limit) -> bool:
                    client.poll()
                    return client.quota is not None and abs(client.quota.cap - expected) < 1e-9

                wait_until(arrived, timeout=10, what="QUOTA")
                assert client.quota is not None
                latencies.append(client.quota.received_at - changed)
    finally:
        daemon.stop()
        kubelet.stop()
        apiserver.stop()
        shutil.rmtree(root, ignore_errors=True)
    p50, p99 = percentiles(latencies)
    print(
        f"quota change -> running container: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms,"
        f" max {max(latencies) * 1e3:.1f} ms ({len(latencies)} changes; window"
        f" {window * 1e3:.0f} ms; target <= 1 window)"
    )


def main() -> None:
    bench_decision_alone()
    bench_contention()
    bench_quota_change()


if __name__ == "__main__":
    main()
