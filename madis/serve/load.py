"""A bounded load client for ``POST /generate`` (or ``/generate/stream``): a fixed number of
requests, at most ``concurrency`` in flight, every status and latency recorded (used by the
tests and ``benchmarks/bench_serve.py``).

    python -m madis.serve.load http://127.0.0.1:8000/ --total 200 --concurrency 32 --lang ase
    python -m madis.serve.load http://127.0.0.1:8000/ --stream --concurrency 8 --lang ase
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class LoadReport:
    """What a load run saw.

    Attributes:
        latencies_s: seconds per request (every request, in completion order).
        statuses: HTTP status -> count (0 = no response: connection error or timeout).
        errors: up to 20 messages of failed requests (status and body start).
        wall_s: seconds from the first request sent to the last answer.
        bodies: the parsed JSON bodies of the successful requests, in request order (when
            kept; None for failed ones).
        timings: the service's ``X-MaDiS-Timings`` of each successful request (queue,
            generate, decode and total milliseconds, batch size), in completion order.
        first_event_s: streams only: seconds from sending to the first ``event: stage``
            (the first motion), in completion order.
    """

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    bodies: list[Any] | None = None
    timings: list[dict] = field(default_factory=list)
    first_event_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        """Requests not answered 200."""
        return self.total - self.statuses.get(200, 0)

    @property
    def requests_per_s(self) -> float:
        return self.total / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the latencies, milliseconds."""
        return float(np.percentile(np.asarray(self.latencies_s) * 1e3, q)) if self.latencies_s else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"requests": self.total, "failed": self.failed,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "p50_ms": round(self.percentile_ms(50), 2), "p99_ms": round(self.percentile_ms(99), 2),
                "requests_per_s": round(self.requests_per_s, 2), "wall_s": round(self.wall_s, 3),
                **({"first_event_p50_ms": round(1e3 * float(np.median(self.first_event_s)), 2)}
                   if self.first_event_s else {}),
                "errors": self.errors[:5]}


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """``text/event-stream`` text -> ``[(event, JSON data), ...]`` (the service's events carry
    one JSON line of data each)."""
    import orjson

    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], orjson.loads(fields.get("data", "null"))))
    return events


async def _read_stream(res, t0: float) -> tuple[bytes, float | None, bool]:
    """The whole event stream, the time of its first ``event: stage`` and whether it ended
    with ``event: done``."""
    chunks, first, last_event = [], None, b""
    async for line in res.content:
        chunks.append(line)
        if line.startswith(b"event: "):
            last_event = line[7:].strip()
            if first is None and last_event == b"stage":
                first = time.perf_counter() - t0
    return b"".join(chunks), first, last_event == b"done"


async def _load(url: str, payloads: Sequence[dict], total: int, concurrency: int,
                timeout_s: float, keep_bodies: bool, stream: bool = False) -> LoadReport:
    import aiohttp
    import orjson

    report = LoadReport(bodies=[None] * total if keep_bodies else None)
    next_index = iter(range(total))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in next_index:  # a shared iterator: each index is taken by exactly one worker
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=payloads[i % len(payloads)]) as res:
                    status = res.status
                    timings = res.headers.get("X-MaDiS-Timings")
                    if stream and status == 200:
                        data, first, ok = await _read_stream(res, t0)
                        if first is not None:
                            report.first_event_s.append(first)
                        if not ok:  # an event: error in the stream
                            status = 599
                    else:
                        data = await res.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exn:
                status, data = 0, f"{type(exn).__name__}: {exn}".encode()
            report.latencies_s.append(time.perf_counter() - t0)
            report.statuses[status] += 1
            if status != 200:
                if len(report.errors) < 20:
                    report.errors.append(f"{status}: {data[:200]!r}")
            else:
                if timings:
                    report.timings.append(json.loads(timings))
                if keep_bodies:
                    report.bodies[i] = parse_sse(data.decode()) if stream else orjson.loads(data)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, total))))
        report.wall_s = time.perf_counter() - start
    return report


def run_load(url: str, payloads: Sequence[dict], total: int, concurrency: int, *,
             timeout_s: float = 300.0, keep_bodies: bool = False, stream: bool = False) -> LoadReport:
    """Send ``total`` POSTs of ``payloads`` (cycled) to ``url``, ``concurrency`` at a time.

    With ``stream``, ``url`` is ``.../generate/stream``: each answer is read as it arrives,
    the first ``event: stage`` is timed, a stream not ending in ``event: done`` counts as
    status 599, and kept bodies are the parsed events (:func:`parse_sse`).

    Raises:
        ValueError: no payloads, or ``total`` / ``concurrency`` below 1.
    """
    if not payloads or total < 1 or concurrency < 1:
        raise ValueError("need payloads, total >= 1 and concurrency >= 1")
    return asyncio.run(_load(url, payloads, total, concurrency, timeout_s, keep_bodies, stream))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base_url", help="the application's base URL, e.g. http://127.0.0.1:8000/")
    p.add_argument("--total", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--text", action="append", help="text(s) to send (default: HELLO)")
    p.add_argument("--lang", required=True)
    p.add_argument("--num-steps", type=int)
    p.add_argument("--stream", action="store_true", help="POST /generate/stream; time the first "
                                                         "motion too")
    args = p.parse_args(argv)
    payloads = [{"text": t, "lang": args.lang, **({"num_steps": args.num_steps} if args.num_steps else {})}
                for t in (args.text or ["HELLO"])]
    path = "/generate/stream" if args.stream else "/generate"
    report = run_load(args.base_url.rstrip("/") + path, payloads, args.total, args.concurrency,
                      stream=args.stream)
    print(json.dumps(report.summary(), indent=1))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
