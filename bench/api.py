"""Service benchmark against a running server on this machine (loopback only).

    python -m bench.api [--clients 64] [--requests 4000] [--characterize-s 20] [--json PATH]

Starts ``cimcal serve`` on a free 127.0.0.1 port with a fresh SQLite database, registers a lot,
characterizes one die and fetches its image once (computed), then measures:

* cached image GET (200, full body) throughput and p50/p99 latency at ``--clients`` concurrent clients;
* the same with ``If-None-Match`` (304, no body);
* characterize requests per second with ``--sites`` concurrent station clients (distinct dies).

Client and server share the machine's cores, so throughput is a floor; the ratios between the
rows are the portable figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _load(
    url: str, headers: dict[str, str], clients: int, requests: int, expect: int
) -> dict[str, float]:
    latencies: list[float] = []
    reconnects = [0]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            for attempt in range(4):
                try:
                    r = await client.get(url, headers=headers)
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # The server closed a keep-alive connection under the client: count it and retry.
                    reconnects[0] += 1
                    if attempt == 3:
                        raise
            latencies.append(time.perf_counter() - t0)
            if r.status_code != expect:
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "requests": requests,
        "clients": clients,
        "requests_per_s": requests / wall,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3,
        "reconnects": reconnects[0],
    }


def run_api_bench(
    clients: int = 64,
    requests: int = 4000,
    characterize_s: float = 20.0,
    sites: int = 2,
    model: Path | None = None,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cimcal-bench-"))
    port = _free_port()
    admin = "cimcal_bench_" + secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "CIMCAL_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "CIMCAL_IMAGE_STORE_DIR": str(tmp / "images"),
        "CIMCAL_BOOTSTRAP_ADMIN_KEY": admin,
        "CIMCAL_TEST_SITES": str(sites),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "wb"),  # noqa: SIM115 (the server owns it for its lifetime)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        h = {"X-API-Key": admin}
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.3)
        with httpx.Client(base_url=base, headers=h, timeout=600) as c:
            n_dies = 64
            sites_xy = [[x, y] for y in range(8) for x in range(8)][:n_dies]
            c.post(
                "/v1/lots",
                json={"lot_id": "BENCH", "product": "KWS", "wafers": [{"number": 1, "sites": sites_xy}]},
            ).raise_for_status()
            if model is not None:
                c.post(
                    "/v1/models",
                    files={"file": (model.name, model.read_bytes())},
                    data={"name": "bench-model", "version": "1"},
                ).raise_for_status()
                ref = "bench-model@1"
            else:
                first = c.get("/v1/models").json()["items"][0]
                ref = f"{first['name']}@{first['version']}"
            ecid = "BENCH-W01-X+000Y+000"
            t0 = time.perf_counter()
            c.post(f"/v1/dies/{ecid}/characterize", json={}).raise_for_status()
            first_char_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = c.get(f"/v1/chips/{ecid}/image", params={"model": ref})
            r.raise_for_status()
            first_image_s = time.perf_counter() - t0
            etag = r.headers["etag"]
        url = f"{base}/v1/chips/{ecid}/image?model={ref}"
        cached = asyncio.run(_load(url, h, clients, requests, 200))
        not_modified = asyncio.run(_load(url, {**h, "If-None-Match": etag}, clients, requests, 304))

        async def characterize_load() -> dict[str, float]:
            done: list[float] = []
            stop = time.perf_counter() + characterize_s
            counter = iter(range(1, n_dies))

            async def station(client: httpx.AsyncClient) -> None:
                while time.perf_counter() < stop:
                    i = next(counter, None)
                    if i is None:
                        return
                    x, y = sites_xy[i]
                    t0 = time.perf_counter()
                    r = await client.post(f"/v1/dies/BENCH-W01-X{x:+04d}Y{y:+04d}/characterize", json={})
                    r.raise_for_status()
                    done.append(time.perf_counter() - t0)

            async with httpx.AsyncClient(base_url=base, headers=h, timeout=600) as client:
                t0 = time.perf_counter()
                await asyncio.gather(*(station(client) for _ in range(sites)))
                wall = time.perf_counter() - t0
            return {
                "requests": len(done),
                "clients": sites,
                "requests_per_s": len(done) / wall,
                "p50_ms": _percentile(done, 50) * 1e3,
                "p99_ms": _percentile(done, 99) * 1e3,
            }

        char = asyncio.run(characterize_load())
        return {
            "model": ref,
            "first_characterize_s": first_char_s,
            "first_image_s (compensation + model statistics on first use)": first_image_s,
            "cached_image_get": cached,
            "cached_image_304": not_modified,
            "characterize": char,
        }
    except Exception:
        print(f"server log: {tmp / 'server.log'}", file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--characterize-s", type=float, default=20.0)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--model", type=Path, help="model file to upload (default: the reference model)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    r = run_api_bench(a.clients, a.requests, a.characterize_s, a.sites, a.model)
    print(json.dumps(r, indent=2))
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
