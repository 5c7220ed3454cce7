"""Run by tests/test_no_cycles.py in a fresh interpreter: what a framework's requests leave to
the cyclic garbage collector, bare or with pyobs (argv: framework, config, out file, count)."""

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import overhead

framework, config, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if framework == "django-asgi":
    # Django's ASGI handler, with the benchmark's Django app and settings, through the
    # benchmark's ASGI driver (receive and send are methods of an object holding the scope).
    import asyncio

    import _overhead_apps
    from django.core.asgi import get_asgi_application

    _overhead_apps.build("django", config)
    driver = overhead._Drivers.asgi(get_asgi_application())
    loop = asyncio.new_event_loop()

    def one() -> int:
        return int(loop.run_until_complete(driver()))

else:
    bench = overhead.Bench(framework, config)

    def one() -> int:
        status = bench.loop.run_until_complete(bench.one()) if bench.is_async else bench.one()
        return int(status)


for _ in range(20):  # first-use work (caches, lazy imports) is not per request
    one()
gc.collect()
gc.disable()
gc.set_debug(gc.DEBUG_SAVEALL)
for _ in range(n):
    assert one() == 200
gc.collect()
kinds = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage})
with open(out, "w") as f:
    json.dump({"objects": len(gc.garbage), "pyobs": [k for k in kinds if k.startswith("pyobs")]}, f)
