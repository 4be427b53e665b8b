"""Micro-batches of 8 vs 16 (`speed.micro_batch`) against the plain Trainer script, interleaved per seed.

speed.py's set-ups, full fine-tuning by default (MiniLM on 2,000 tweets, batch 32, one epoch = 63 steps): for
each seed, the plain script, hftl with micro-batches of 8, hftl with 16, one after the other in one process, so
all three see the same machine load. samples/s, samples per CPU-second and accuracy after the same steps.

    .venv/bin/python benchmarks/micro_batch.py [--mode full|lora] [--steps 63] [--seeds 0,1]   # ~10 min

Prints JSON. Not run in CI. Results of 2026-12-07: benchmarks/results/speed.md (notes).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from speed import Meter, hftl_run, plain_run


def hftl_micro(mode: str, steps: int, out: str, meter: Meter, seed: int, micro: int) -> float:
    return hftl_run(mode, steps, out, meter, seed, speed={"micro_batch": micro})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="full", choices=("full", "lora"))
    ap.add_argument("--steps", type=int, default=63)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hftl-micro-")
    plain_run(args.mode, 2, f"{work}/warm-plain", Meter(1), 0)  # imports and first calls out of the timing
    hftl_micro(args.mode, 2, f"{work}/warm-hftl", Meter(1), 0, 8)
    results: dict[str, list] = {}
    for seed in (int(x) for x in args.seeds.split(",")):
        runs = [("plain", lambda o, m: plain_run(args.mode, args.steps, o, m, seed))]
        runs += [(f"hftl-{k}", lambda o, m, k=k: hftl_micro(args.mode, args.steps, o, m, seed, k)) for k in (8, 16)]
        for name, run in runs:
            meter = Meter(1)
            accuracy = run(f"{work}/{name}-{seed}", meter)
            results.setdefault(name, []).append({"seed": seed, "samples_s": round(meter.samples_per_s(), 2),
                                                 "samples_cpu_s": round(meter.samples_per_cpu_s(), 2),
                                                 "accuracy": round(accuracy, 4)})
            print(name, results[name][-1], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
