"""Kopf's start-up gate: its own ToggleSet against ckpt_operator's counting one, side by side.

Replays what Kopf does for every object it lists at start-up: a toggle per object in one
``ToggleSet(all)``, then the object's worker drops its toggle and waits until the whole set is
on. Prints seconds per size for both and their ratio; the last line is JSON. Usage::

    .venv/bin/python benchmarks/kopf_gate.py [--objects 1000 2000 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from kopf._cogs.aiokits import aiotoggles

from ckpt_operator.kube.kopf_gate import CountingToggleSet


async def start_up(gate: Any, objects: int) -> float:
    started = time.perf_counter()
    blocker = await gate.make_toggle(name="listing")  # Kopf's "orchestration blocker"

    async def worker(toggle: Any) -> None:
        await gate.drop_toggle(toggle)  # this object is indexed
        await gate.wait_for(True)  # every other object too

    workers = []
    for i in range(objects):
        toggle = await gate.make_toggle(name=f"object {i}")
        workers.append(asyncio.create_task(worker(toggle)))
        await asyncio.sleep(0)  # the watch stream yields between events
    await gate.drop_toggle(blocker)
    await asyncio.gather(*workers)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[1000, 2000, 4000])
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    for n in args.objects:
        kopf_s = asyncio.run(start_up(aiotoggles.ToggleSet(all), n))
        ours_s = asyncio.run(start_up(CountingToggleSet(all), n))
        figures[str(n)] = {
            "kopf_s": round(kopf_s, 3),
            "counting_s": round(ours_s, 4),
            "ratio": round(kopf_s / ours_s, 1),
        }
        print(f"{n} objects: kopf {kopf_s:.3f} s, counting {ours_s:.4f} s", flush=True)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
