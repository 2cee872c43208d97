"""`tripwire` under cProfile: `python -m bench.profiled OUT.prof serve --config FILE`.

The stats are written when the server stops on SIGTERM, which `tripwire serve` handles by
returning normally.
"""

from __future__ import annotations

import cProfile
import gc
import json
import sys
import time
from typing import Any

from proxy.cli import main as tripwire_main


class GcWatch:
    """Pauses of the garbage collector by generation: a full collection stops the event loop
    for as long as it takes to walk every tracked object."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._started) * 1e3)

    def summary(self) -> dict[str, Any]:
        out = {}
        for generation, pauses in self.pauses.items():
            ordered = sorted(pauses)
            out[str(generation)] = {
                "count": len(ordered),
                "total_ms": sum(ordered),
                "max_ms": ordered[-1] if ordered else 0.0,
            }
        return out


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    watch = GcWatch()
    gc.callbacks.append(watch)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return tripwire_main(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(out)
        with open(out + ".gc.json", "w") as handle:
            json.dump(watch.summary(), handle)


if __name__ == "__main__":
    raise SystemExit(main())
