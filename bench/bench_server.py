"""Job service under load (issue 6 targets).

Starts ``nasvit serve`` (real uvicorn, loopback) on a throwaway home, then:

(a) status polling: ``--clients`` concurrent HTTP clients (one connection each) poll
    ``GET /api/v1/searches/{id}`` for ``--seconds``, each waiting ``--interval`` seconds between
    requests (0: back to back), while a simulated worker claims that job and writes its progress
    and lease every 0.5 s (so reads compete with writes as in service). Prints request count,
    errors (transport errors and non-200 answers) and latency percentiles. Target: p99 <= 50 ms,
    0 errors.
(b) concurrent submission: ``--submissions`` ``POST /api/v1/searches`` sent at once (one
    connection each); then checks every job is stored, listed once and queued, and drains the
    queue with ``--claimers`` processes that claim and finish jobs through the same
    ``JobStore.claim``/``finish`` calls a worker makes, recording what each claimed. Target: all
    persisted, none lost, none claimed (run) twice.

SQLite under a temporary NASVIT_HOME by default; ``--database-url`` for PostgreSQL, e.g.

    python bench/bench_server.py
    python bench/bench_server.py --database-url postgresql+psycopg2://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from nasvit.server.db import Database
from nasvit.server.jobs import JobStore, TokenStore

NASVIT = shutil.which("nasvit", path=str(Path(sys.executable).parent)) or "nasvit"
SEARCH = {"space": "efficientformer", "budget": "2ms", "evaluations": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], port: int, processes: int = 1) -> subprocess.Popen:
    server = subprocess.Popen(
        [NASVIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        + ["--workers", str(processes)],
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("nasvit serve did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def simulate_worker(url: str, job_id: str, stop: threading.Event) -> None:
    """Claim the polled job and write progress + lease every 0.5 s, as a worker does."""
    database = Database(url)
    jobs = JobStore(database)
    claim = jobs.claim("bench-writer", lease_seconds=60)
    assert claim is not None and claim.job.id == job_id
    done = 0
    while not stop.wait(0.5):
        done += 1
        jobs.set_progress(claim, "evaluating candidates", done, 10**6)
        jobs.heartbeat(claim, 60)
    jobs.finish(claim, "succeeded")
    database.close()


async def poll(
    base: str, job_id: str, clients: int, seconds: float, interval: float, stagger: bool = True
) -> None:
    phases = random.Random(0)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connected = 0
    everyone_connected = asyncio.Event()
    end = 0.0

    async def client() -> None:
        nonlocal connected, end
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as http:
            # Untimed first request: opens the client's connection (a dashboard keeps one), so
            # the figures are steady-state polling, not 50 simultaneous TCP handshakes.
            await http.get(f"/api/v1/searches/{job_id}")
            connected += 1
            if connected == clients:
                end = time.monotonic() + seconds
                everyone_connected.set()
            await everyone_connected.wait()
            if interval and stagger:
                # Independent pollers (browsers) do not tick in lockstep: each starts at its own
                # phase of the interval. Without this, all 50 requests arrive in one burst.
                await asyncio.sleep(phases.uniform(0.0, interval))
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    response = await http.get(f"/api/v1/searches/{job_id}")
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200 or response.json()["id"] != job_id:
                        key = f"HTTP {response.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                    else:
                        latencies.append(elapsed)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                if interval:
                    await asyncio.sleep(interval)

    await asyncio.gather(*(client() for _ in range(clients)))
    ms = [1000 * x for x in latencies]
    timing = (" (staggered)" if stagger else " (lockstep)") if interval else ""
    print(
        f"(a) {clients} clients polling GET /searches/{{id}} for {seconds:.0f} s, interval "
        f"{interval * 1000:.0f} ms{timing}: {len(ms)} ok requests ({len(ms) / seconds:.0f}/s), "
        f"errors {sum(errors.values())} {errors or ''}\n"
        f"    latency p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, "
        f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms, "
        f"mean {statistics.fmean(ms):.1f} ms",
        flush=True,
    )


async def submit_all(base: str, token: str, count: int) -> list[httpx.Response | Exception]:
    headers = {"Authorization": f"Bearer {token}"}
    start = asyncio.Event()

    async def one() -> httpx.Response | Exception:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            await start.wait()  # every connection fires together
            try:
                return await http.post("/api/v1/searches", json=SEARCH, headers=headers)
            except httpx.HTTPError as exc:
                return exc

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0.5)
    start.set()
    return list(await asyncio.gather(*tasks))


def drain(url: str, name: str, results: multiprocessing.Queue) -> None:
    """One claimer process: claim and finish jobs until none is left."""
    database = Database(url)
    jobs = JobStore(database)
    claimed = []
    while (claim := jobs.claim(name, lease_seconds=300)) is not None:
        claimed.append(claim.job.id)
        jobs.finish(claim, "succeeded")
    database.close()
    results.put((name, claimed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--interval", type=float, nargs="+", default=[0.5, 0.0], help="poll intervals to run"
    )
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--claimers", type=int, default=8)
    parser.add_argument("--server-processes", type=int, default=1, help="nasvit serve --workers")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="nasvit-bench-server-"))
    url = args.database_url or f"sqlite:///{home / 'nasvit.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASVIT_")}
    env.update(NASVIT_HOME=str(home), NASVIT_DATABASE_URL=url)
    database = Database.open(url)
    token = TokenStore(database).create(f"bench-{os.getpid()}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    backend = url.split(":", 1)[0]
    print(
        f"server on {base} ({args.server_processes} process(es)), database {backend}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    server = start_server(env, port, args.server_processes)
    try:
        # (a) polling a job that a (simulated) worker is updating
        response = httpx.post(
            f"{base}/api/v1/searches",
            json=SEARCH,
            headers={"Authorization": f"Bearer {token}"},
        )
        job_id = response.json()["id"]
        stop = threading.Event()
        writer = threading.Thread(target=simulate_worker, args=(url, job_id, stop))
        writer.start()
        for interval in args.interval:
            asyncio.run(poll(base, job_id, args.clients, args.seconds, interval))
            if interval:  # the worst case too: every client polling at the same instant
                asyncio.run(poll(base, job_id, args.clients, args.seconds, interval, False))
        stop.set()
        writer.join()

        if args.submissions:
            submit_and_drain(base, token, url, database, args.submissions, args.claimers)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        database.close()
        shutil.rmtree(home, ignore_errors=True)


def submit_and_drain(
    base: str, token: str, url: str, database: Database, submissions: int, claimers: int
) -> None:
    """(b) concurrent submissions, then exactly-once claiming."""
    started = time.perf_counter()
    answers = asyncio.run(submit_all(base, token, submissions))
    took = time.perf_counter() - started
    ok = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 202]
    accepted = [a.json()["id"] for a in ok]
    jobs = JobStore(database)
    listed: list[str] = []
    offset = 0
    while True:
        page = httpx.get(
            f"{base}/api/v1/searches",
            params={"status": "queued", "offset": offset, "limit": 500},
        ).json()
        listed += [item["id"] for item in page["items"]]
        offset += 500
        if offset >= page["total"]:
            break
    stored = {job_id for job_id in accepted if jobs.get(job_id).status == "queued"}
    print(
        f"(b) {submissions} concurrent POST /searches in {took:.1f} s: "
        f"{len(accepted)} accepted (202), {len(answers) - len(ok)} failed; "
        f"{len(set(accepted))} distinct ids; {len(stored)} stored as queued; listed "
        f"{len(listed)} queued ({len(set(listed) & set(accepted))} of the accepted, "
        f"{len(listed) - len(set(listed))} listed twice)",
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=drain, args=(url, f"claimer-{i}", queue)) for i in range(claimers)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    claimed = dict(queue.get(timeout=600) for _ in processes)
    for process in processes:
        process.join()
    took = time.perf_counter() - started
    everything = [job for ids in claimed.values() for job in ids]
    twice = len(everything) - len(set(everything))
    lost = set(accepted) - set(everything)
    records = [jobs.get(job_id) for job_id in accepted]
    once = sum(r.status == "succeeded" and r.attempt == 1 for r in records)
    print(
        f"    drained by {claimers} claimer processes in {took:.1f} s: {len(everything)} "
        f"claims, {twice} claimed twice, {len(lost)} never claimed; per claimer "
        f"{sorted(len(ids) for ids in claimed.values())}; {once} finished with exactly one "
        "attempt",
        flush=True,
    )


if __name__ == "__main__":
    main()
