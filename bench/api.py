"""Image serving against the framework's trivial route, side by side, with one load tool (locust).

    python -m bench.api [--clients 64] [--seconds 10] [--rounds 2] [--workers 1] [--conditional]
                        [--json PATH]

Starts ``cimcal serve`` on a free 127.0.0.1 port with a fresh SQLite database (access log off, the
rate limiter on with a limit the load never reaches, so its cost is counted), registers a lot,
characterizes one die with a station key and fetches its image once (computed and stored). Then each
round runs ``locust`` headless (``bench/locustfile.py``, FastHttpUser, ``--clients`` users, no wait
between requests) against ``/healthz`` and against the cached ``GET /v1/chips/{ecid}/image``, the two
phases in alternating order from round to round. ``--conditional`` adds one phase of conditional GETs
(``If-None-Match``, 304) and one of ``HEAD``.

Client and server share this machine's cores, so the absolute figures are floors; the ratios within
one run are the portable figures. :func:`measure` returns them for ``cimcal bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ECID = "BENCH-W01-X+000Y+000"


@dataclass
class Phase:
    """One locust run against one route."""

    route: str
    requests: int
    failures: int
    duration_s: float
    histogram_ms: Counter[int] = field(repr=False)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return _percentile(self.histogram_ms, q)

    def summary(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "requests": self.requests,
            "failures": self.failures,
            "duration_s": round(self.duration_s, 2),
            "rps": round(self.rps, 1),
            "p50_ms": self.percentile_ms(50),
            "p99_ms": self.percentile_ms(99),
            # CPU per request over the whole locust run (start-up and ramp included): where the
            # time goes when the machine is shared.
            "server_cpu_us_per_req": round(self.server_cpu_s / max(1, self.requests) * 1e6),
            "client_cpu_us_per_req": round(self.client_cpu_s / max(1, self.requests) * 1e6),
        }


def _percentile(histogram: Counter[int], q: float) -> float:
    """The ``q``-th percentile of locust's histogram (response time in rounded ms -> count)."""
    total = sum(histogram.values())
    if total == 0:
        return float("nan")
    rank = q / 100 * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    base: str
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server's processes (its workers included)."""
        try:
            main = psutil.Process(self.pid)
            procs = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total


@contextmanager
def serve(
    workdir: Path, *, workers: int = 1, admin_key: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``cimcal serve`` on a free loopback port over a fresh database in ``workdir`` (``env`` over the
    bench's settings)."""
    port = _free_port()
    env = {
        **os.environ,
        "CIMCAL_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "CIMCAL_IMAGE_STORE_DIR": str(workdir / "images"),
        "CIMCAL_BOOTSTRAP_ADMIN_KEY": admin_key,
        "CIMCAL_RATE_LIMIT": "1000000/second;60000000/minute",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning"] + (["--workers", str(workers)] if workers != 1 else [])
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 (the server owns it for its lifetime)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the server did not start; see {workdir / 'server.log'}")
            time.sleep(0.3)
        yield Server(base, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def prepare(base: str, admin_key: str) -> tuple[str, str, str]:
    """A lot, one characterized die and its image computed once; returns (station key, image path, ETag)."""
    with httpx.Client(base_url=base, headers={"X-API-Key": admin_key}, timeout=600) as c:
        c.post(
            "/v1/lots",
            json={"lot_id": "BENCH", "product": "KWS", "wafers": [{"number": 1, "sites": [[0, 0]]}]},
        ).raise_for_status()
        r = c.post("/v1/keys", json={"role": "station", "name": "bench-station"})
        r.raise_for_status()
        station_key = r.json()["key"]
        first = c.get("/v1/models").json()["items"][0]
        ref = f"{first['name']}@{first['version']}"
    with httpx.Client(base_url=base, headers={"X-API-Key": station_key}, timeout=600) as c:
        c.post(f"/v1/dies/{ECID}/characterize", json={}).raise_for_status()
        path = f"/v1/chips/{ECID}/image?model={ref}"
        r = c.get(path)
        r.raise_for_status()
        return station_key, path, r.headers["etag"]


def run_locust(
    server: Server,
    path: str,
    *,
    clients: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    expect: int = 200,
) -> Phase:
    """One headless locust run of ``clients`` users against ``path``; statistics after all users started."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--json", "--skip-log"]
    cmd += ["--only-summary", "--reset-stats", "-u", str(clients), "-r", str(clients)]
    cmd += ["-t", f"{seconds:g}s", "--stop-timeout", "5", "--host", server.base]
    cmd += ["--path", path, "--method", method, "--expect", str(expect)]
    for name, value in (headers or {}).items():
        cmd += ["--header", f"{name}: {value}"]
    server_cpu0, client_cpu0 = server.cpu_s(), _children_cpu_s()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    server_cpu, client_cpu = server.cpu_s() - server_cpu0, _children_cpu_s() - client_cpu0
    try:
        stats = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"locust failed ({done.returncode}): {done.stderr[-2000:]}") from e
    entry = next(s for s in stats if s["name"] == path)
    histogram: Counter[int] = Counter({int(k): int(v) for k, v in entry["response_times"].items()})
    return Phase(
        route=f"{method} {path}" + (f" ({expect})" if expect != 200 else ""),
        requests=int(entry["num_requests"]),
        failures=int(entry["num_failures"]),
        duration_s=float(entry["last_request_timestamp"]) - float(entry["start_time"]),
        histogram_ms=histogram,
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
    )


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the locust runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pooled(phases: list[Phase]) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) over several phases of one route."""
    histogram: Counter[int] = Counter()
    for p in phases:
        histogram.update(p.histogram_ms)
    rps = sum(p.requests for p in phases) / sum(p.duration_s for p in phases)
    return rps, _percentile(histogram, 50), _percentile(histogram, 99)


def _cpu_per_req(phases: list[Phase], side: str) -> float:
    cpu = sum(p.server_cpu_s if side == "server" else p.client_cpu_s for p in phases)
    return cpu / max(1, sum(p.requests for p in phases)) * 1e6


def measure(
    clients: int = 64,
    seconds: float = 10.0,
    rounds: int = 2,
    workers: int = 1,
    conditional: bool = False,
    server_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Cached image GET vs ``/healthz`` on one fresh server, same load tool and clients, in one run.

    Returns ``image_rps``, ``healthz_rps``, ``rps_ratio`` (image / healthz), ``image_p99_ms``,
    ``healthz_p99_ms``, ``p99_ratio`` (image / healthz), the p50s, the CPU microseconds per request of
    the server and of the client for each route and ``server_capacity_ratio`` (healthz server CPU per
    request / image's), each round's own figures under ``rounds`` and, with ``conditional``, the 304
    and HEAD phases under ``extra``. The pooled figures are total requests over total time and
    percentiles over all requests of the route.
    """
    admin = "cimcal_bench_" + secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="cimcal-bench-api-"))
    with serve(workdir, workers=workers, admin_key=admin, env=server_env) as server:
        station_key, path, etag = prepare(server.base, admin)
        auth = {"X-API-Key": station_key}
        # Warm both routes (first-request imports, caches, keep-alive pools) outside the measurement.
        run_locust(server, "/healthz", clients=clients, seconds=2)
        run_locust(server, path, clients=clients, seconds=2, headers=auth)
        healthz: list[Phase] = []
        image: list[Phase] = []
        per_round: list[dict[str, Any]] = []
        for i in range(rounds):
            order = ("healthz", "image") if i % 2 == 0 else ("image", "healthz")
            got: dict[str, Phase] = {}
            for route in order:
                if route == "healthz":
                    got[route] = run_locust(server, "/healthz", clients=clients, seconds=seconds)
                else:
                    got[route] = run_locust(server, path, clients=clients, seconds=seconds, headers=auth)
            healthz.append(got["healthz"])
            image.append(got["image"])
            per_round.append(
                {
                    "order": list(order),
                    "healthz": got["healthz"].summary(),
                    "image": got["image"].summary(),
                    "rps_ratio": round(got["image"].rps / got["healthz"].rps, 3),
                    "p99_ratio": round(got["image"].percentile_ms(99) / got["healthz"].percentile_ms(99), 3),
                }
            )
        extra: list[dict[str, Any]] = []
        if conditional:
            not_modified = {**auth, "If-None-Match": etag}
            extra.append(
                run_locust(
                    server, path, clients=clients, seconds=seconds, headers=not_modified, expect=304
                ).summary()
            )
            extra.append(
                run_locust(
                    server, path, clients=clients, seconds=seconds, headers=auth, method="HEAD"
                ).summary()
            )
    h_rps, h_p50, h_p99 = _pooled(healthz)
    i_rps, i_p50, i_p99 = _pooled(image)
    result: dict[str, Any] = {
        "clients": clients,
        "seconds_per_phase": seconds,
        "server_workers": workers,
        "image_path": path,
        "image_rps": round(i_rps, 1),
        "healthz_rps": round(h_rps, 1),
        "rps_ratio": round(i_rps / h_rps, 3),
        "image_p50_ms": i_p50,
        "healthz_p50_ms": h_p50,
        "image_p99_ms": i_p99,
        "healthz_p99_ms": h_p99,
        "p99_ratio": round(i_p99 / h_p99, 3),
        # Server CPU per request (the client's excluded): what the server could do if the load
        # generator had cores of its own.
        "image_server_us_per_req": round(_cpu_per_req(image, "server")),
        "healthz_server_us_per_req": round(_cpu_per_req(healthz, "server")),
        "server_capacity_ratio": round(_cpu_per_req(healthz, "server") / _cpu_per_req(image, "server"), 3),
        "image_client_us_per_req": round(_cpu_per_req(image, "client")),
        "healthz_client_us_per_req": round(_cpu_per_req(healthz, "client")),
        "failures": sum(p.failures for p in healthz + image),
        "rounds": per_round,
    }
    if extra:
        result["extra"] = extra
    return result


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['clients']} clients, {r['server_workers']} server worker(s), {r['seconds_per_phase']:g} s per phase",
        f"{'round':<6}{'route':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server us/req':>15}{'client us/req':>15}",
    ]

    def row(label: str, route: str, s: dict[str, Any]) -> str:
        return (
            f"{label:<6}{route:<9}{s['rps']:>9.1f}{s['p50_ms']:>9.0f}{s['p99_ms']:>9.0f}"
            f"{s['server_cpu_us_per_req']:>15}{s['client_cpu_us_per_req']:>15}"
        )

    for i, rnd in enumerate(r["rounds"], 1):
        for route in rnd["order"]:
            lines.append(row(str(i), route, rnd[route]))
        lines.append(f"{i:<6}ratios   rps {rnd['rps_ratio']:.2f}  p99 {rnd['p99_ratio']:.2f}")
    for s in r.get("extra", []):
        lines.append(row("extra", "304" if s["route"].endswith("(304)") else s["route"].split()[0], s))
    lines.append(
        f"all: image {r['image_rps']:.1f} req/s, p99 {r['image_p99_ms']:.0f} ms; healthz "
        f"{r['healthz_rps']:.1f} req/s, p99 {r['healthz_p99_ms']:.0f} ms; "
        f"rps ratio {r['rps_ratio']:.2f} (target >= 0.9), p99 ratio {r['p99_ratio']:.2f} (target <= 2)"
    )
    lines.append(
        f"server CPU per request: image {r['image_server_us_per_req']} us, healthz "
        f"{r['healthz_server_us_per_req']} us (capacity ratio {r['server_capacity_ratio']:.2f}); client: "
        f"image {r['image_client_us_per_req']} us, healthz {r['healthz_client_us_per_req']} us"
    )
    if r["failures"]:
        lines.append(f"FAILED requests: {r['failures']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="server processes (cimcal serve --workers)")
    p.add_argument("--conditional", action="store_true", help="also measure 304s and HEAD")
    p.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a server setting, repeatable"
    )
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    env = dict(e.split("=", 1) for e in a.env)
    r = measure(a.clients, a.seconds, a.rounds, a.workers, a.conditional, env)
    print(_report(r))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
