"""The load of ``bench.api``: every simulated client GETs (or HEADs) one path in a closed loop.

Run by ``bench.api`` as ``locust -f bench/locustfile.py --headless ...`` in its own process (locust
monkey-patches the process for gevent), once per route, with the same users and the same client:

    locust -f bench/locustfile.py --headless -u 64 -r 64 -t 10s --host http://127.0.0.1:8000 \\
        --path /healthz --expect 200

``--header 'Name: value'`` (repeatable) adds request headers; ``--method HEAD`` sends HEAD requests.
A response with another status than ``--expect`` counts as a failure.
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument("--path", default="/healthz", help="the path (and query) every request asks for")
    parser.add_argument("--method", default="GET", choices=["GET", "HEAD"])
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--expect", type=int, default=200, help="the status code of a success")


class RouteClient(FastHttpUser):
    """One client: a keep-alive connection, the next request as soon as the last one is answered."""

    @task
    def fetch(self) -> None:
        opts: Any = self.environment.parsed_options
        headers = dict(h.split(": ", 1) for h in opts.header)
        with self.client.request(
            opts.method, opts.path, headers=headers, name=opts.path, catch_response=True
        ) as response:
            if response.status_code != opts.expect:
                response.failure(f"status {response.status_code}, expected {opts.expect}")
