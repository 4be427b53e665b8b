"""One training step, isolated: forward, backward and fused AdamW on the same tweet batches, each way in turn.

speed.py times whole Trainer runs, minutes apart, which the load of a shared machine moves by up to 40%. This
script times the step alone, batch by batch, with the ways interleaved (plain, then each hftl way, on the same
batch), so every way sees the same load: all-MiniLM-L6-v2 fully fine-tuned, 12 random batches of 32 of the 2,000
training tweets (max_seq_length 64, dynamic padding), each step timed twice per way after two warm-up rounds.

Ways (`--ways`): `plain` (the whole batch, as the Trainer runs it); `micro16` / `micro8` (hftl's length-sorted
micro-batches of 16 / 8, training/speed.py); `micro16-sparse` / `micro8-sparse` (the same with the word
embeddings' gradient summed sparsely over the micro-batches and made dense once for the optimizer, instead of
zeroed and added whole, 11.7M numbers, per micro-batch: a lever tried and not kept); `eager-attention` (plain
with transformers' eager attention instead of SDPA). `--compile` times
`torch.compile(model, dynamic=True)` with micro-batches of 16 on its own afterwards: its first steps (compiling),
then the same timed rounds.

    .venv/bin/python benchmarks/step_levers.py                    # ~4 min on 2 cores
    .venv/bin/python benchmarks/step_levers.py --ways plain,micro16,micro8 --rounds 3
    .venv/bin/python benchmarks/step_levers.py --compile          # + ~6 min

Prints samples/s per way and the ratio to plain. Not run in CI; results in results/speed.md's notes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from speed import BATCH, MAX_LEN

BATCHES = 12


def tweet_batches():
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hftl import zoo

    checkpoint = zoo.resolve_model("zoo:minilm-l6")
    train = zoo.load_dataset("zoo:tweets-sentiment", "binary")["train"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    encoded = tokenizer(list(train["text"]), truncation=True, max_length=MAX_LEN)
    collate = DataCollatorWithPadding(tokenizer)
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    rows = [{**{k: encoded[k][i] for k in encoded}, "labels": train[i]["label"]} for i in order[:BATCH * BATCHES]]
    return checkpoint, [collate(rows[k:k + BATCH]) for k in range(0, len(rows), BATCH)]


def make_step(model, micro: int | None, sparse: bool):
    from hftl.training.speed import sorted_chunks

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    emb = model.get_input_embeddings()

    def step(batch):
        chunks = sorted_chunks(dict(batch), micro) if micro else [(dict(batch), BATCH)]
        emb.sparse = sparse
        for chunk, n in chunks:  # each micro-batch's mean loss, weighted by its share of the batch
            (model(**chunk).loss * n / BATCH).backward()
        if sparse:  # fused AdamW takes dense gradients only
            emb.weight.grad = emb.weight.grad.to_dense()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ways", default="plain,micro16,micro8,micro16-sparse,micro8-sparse")
    ap.add_argument("--rounds", type=int, default=2, help="timed steps per batch and way")
    ap.add_argument("--compile", action="store_true", help="also torch.compile with micro-batches of 16")
    args = ap.parse_args()
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    checkpoint, batches = tweet_batches()

    def build(attention="sdpa"):
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2,
                                                                   attn_implementation=attention)
        return model.train()

    steps = {}
    for way in args.ways.split(","):
        micro = int(way.removeprefix("micro").removesuffix("-sparse")) if way.startswith("micro") else None
        model = build("eager" if way == "eager-attention" else "sdpa")
        steps[way] = make_step(model, micro, way.endswith("-sparse"))
    times = {way: [] for way in steps}
    for batch in batches[:2]:  # warm-up
        for step in steps.values():
            step(batch)
    for _ in range(args.rounds):
        for batch in batches:
            for way, step in steps.items():
                start = time.perf_counter()
                step(batch)
                times[way].append(time.perf_counter() - start)
    speed = {way: BATCH * len(t) / sum(t) for way, t in times.items()}
    base = speed.get("plain")
    for way, value in speed.items():
        ratio = f", {value / base:.2f}x plain" if base else ""
        print(f"{way:16s} {value:5.1f} samples/s (median step {statistics.median(times[way]):.3f} s){ratio}")
    if args.compile:
        model = torch.compile(build(), dynamic=True)
        step = make_step(model, 16, False)
        start = time.perf_counter()
        for batch in batches[:3]:
            step(batch)
        print(f"compiled micro16: first 3 steps {time.perf_counter() - start:.0f} s (compiling)", flush=True)
        timed = []
        for _ in range(args.rounds):
            for batch in batches:
                start = time.perf_counter()
                step(batch)
                timed.append(time.perf_counter() - start)
        value = BATCH * len(timed) / sum(timed)
        ratio = f", {value / base:.2f}x plain, {value / speed['micro16']:.2f}x micro16" if base and "micro16" in speed \
            else ""
        print(f"compiled micro16 {value:5.1f} samples/s after compiling{ratio} (not interleaved: after the others)")


if __name__ == "__main__":
    main()
