"""A small traffic generator for the example services: mixed routes, 404s, 500s, slow, streams.

``python -m pyobs._traffic http://127.0.0.1:8000 [URL ...] [--rate 10] [--duration 60]``
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

# (weight, method, path template, body); {n} is a random item id, {r} a random token.
MIX: tuple[tuple[int, str, str, bytes | None], ...] = (
    (40, "GET", "/items/{n}", None),
    (10, "POST", "/items", b'{"name": "widget"}'),
    (8, "GET", "/no/such/page/{r}", None),
    (2, "GET", "/boom", None),  # under 5%: the stack's error-rate alert stays quiet
    (5, "GET", "/slow", None),
    (5, "GET", "/stream", None),
    (2, "GET", "/health", None),
)


def one_request(base: str, rng: random.Random, timeout: float = 5.0) -> int:
    """Send one request from the mix; return its status (0 when the service is unreachable)."""
    _, method, template, body = rng.choices(MIX, weights=[m[0] for m in MIX])[0]
    path = template.format(n=rng.randint(1, 14), r=secrets.token_hex(4))
    request = urllib.request.Request(base.rstrip("/") + path, data=body, method=method)
    request.add_header("User-Agent", "pyobs-traffic/1")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if rng.random() < 0.2:
        # Some requests arrive inside an upstream trace, to show continuation.
        trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
        request.add_header("traceparent", f"00-{trace_id}-{span_id}-01")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def run(
    targets: Sequence[str],
    rate: float = 10.0,
    duration: float | None = None,
    stop: threading.Event | None = None,
    seed: int | None = None,
    per_target: dict[str, Counter[int]] | None = None,
) -> Counter[int]:
    """Send about ``rate`` requests/s to each target until ``duration`` or ``stop``.

    Returns the count per status (0: no answer); ``per_target`` gets the same per target URL.
    """
    stop = stop or threading.Event()
    rng = random.Random(seed)
    counts: Counter[int] = Counter()
    by_target = per_target if per_target is not None else {}
    for base in targets:
        by_target.setdefault(base, Counter())
    lock = threading.Lock()
    deadline = None if duration is None else time.monotonic() + duration
    interval = 1.0 / max(rate * len(targets), 0.001)

    def send(base: str, local_seed: int) -> None:
        status = one_request(base, random.Random(local_seed))
        with lock:
            counts[status] += 1
            by_target[base][status] += 1

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="pyobs-traffic") as pool:
        next_at = time.monotonic()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for base in targets:
                pool.submit(send, base, rng.getrandbits(32))
            next_at += interval * len(targets)
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="+", help="base URLs, e.g. http://example-flask:8000")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s per target")
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    args = parser.parse_args(argv)
    try:
        counts = run(args.targets, rate=args.rate, duration=args.duration)
    except KeyboardInterrupt:
        return 0
    print(json.dumps({"message": "traffic done", "statuses": dict(counts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
