"""Speed, memory and accuracy: hftl against the plain transformers/PEFT script, same model, data, seed and steps.

Set-ups (`--modes`):
- `full`, `lora` (r=8 on query/value), `frozen` (backbone frozen; hftl's default caches its features before
  training): all-MiniLM-L6-v2 (`zoo:minilm-l6`) on the 2,000 training tweets of `zoo:tweets-sentiment`, batch 32,
  max_seq_length 64, dynamic padding, 2 epochs (126 steps; frozen: 1 epoch, 63), accuracy on the 1,000 validation
  tweets. hftl's recipe sets `model.pooling: default` (BERT's pooler, as the plain script's model), so both train
  the same network;
- `image`: EfficientNet-Lite0 at 96 px (`zoo:efficientnet-lite0-96px`, a timm checkpoint) fully fine-tuned on
  `zoo:fashion-mnist` (1,000 training images, batch 32, 1 epoch: 32 steps), accuracy on the 1,000 test images; the
  plain script is the transformers image-classification guide's (AutoModelForImageClassification, the
  checkpoint's AutoImageProcessor in `with_transform`).
- `lm`: quality_lm.py's pair, SmolLM2-135M-Instruct with LoRA r=8 on q_proj/v_proj, 320 fortune prompt/completion
  rows, batch 8, 1 epoch (40 steps): hftl against the plain TRL script (`trl.SFTTrainer` + `peft_config`, TRL
  from --trl-path, not a dependency of hftl), each in a fresh process, alternating, once per seed slot (quality_lm
  fixes seed 0); tokens/s (non-padding training tokens / train_runtime), peak RSS of the process, and held-out
  loss on 200 validation rows scored by the same plain loop for both.
Each seed (`--seeds`, default 0,1,2) runs plain then hftl in one process (alternating, so both see the same
machine load); samples/s is over every step after the first. hftl runs with its defaults (training/speed.py:
length-sorted micro-batches for token inputs, channels_last for convolutional nets, bf16 autocast where the
hardware has it); the plan line that names them is printed with each run.

Peak memory: the process's resident set size (RSS, psutil), sampled every 10 ms by a thread from the start
to the end of training; reported as the growth over the RSS at the start of that run (torch's CPU allocator
keeps memory, so absolute peaks of later runs say little).

    .venv/bin/python benchmarks/speed.py                 # ~40 min on 2 cores
    .venv/bin/python benchmarks/speed.py --modes lora    # re-measure one set-up, keep the others (speed.json)
    .venv/bin/python benchmarks/speed.py --seeds 0 --steps 5   # smoke run, nothing written
    .venv/bin/python benchmarks/speed.py --profile full  # pyinstrument profile of one hftl run
    .venv/bin/python benchmarks/speed.py --modes lm --pairs 1   # SmolLM2 vs TRL: ~20 min a pair

Prints a markdown table and writes it to benchmarks/results/speed.md (default --steps/--seeds only; numbers in
speed.json). Not run in CI.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import current_rss_mb, load_rows, md_table, save_rows, write_result
from transformers import TrainerCallback

BATCH = 32
MAX_LEN = 64
LR = {"full": 5e-5, "frozen": 1e-3, "lora": 5e-4, "image": 1e-3}
MODES = {
    "full": "MiniLM full fine-tuning",
    "lora": "MiniLM LoRA r=8 (query, value)",
    "frozen": "MiniLM frozen backbone (hftl: features cached before training, outside the timing)",
    "image": "EfficientNet-Lite0 96 px, full fine-tuning",
    "lm": "SmolLM2-135M LoRA r=8 (q_proj, v_proj) on fortunes vs TRL's SFTTrainer",
}
# full and lora: two epochs, where one left both sides' accuracy to chance (LoRA at the majority class, full
# fine-tuning 0.82-0.92 over seeds); the others one
STEPS = {"full": 126, "lora": 126, "frozen": 63, "image": 32, "lm": 40}


# ---------------------------------------------------------------------------------------------- measuring


class Meter(TrainerCallback):
    """Times the end of every optimizer step and samples the RSS from train begin to train end."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.step_ends: list[float] = []  # wall clock at the end of each step
        self.cpu_ends: list[float] = []  # this process's CPU time (all threads) at the end of each step
        self.rss_start = self.rss_peak = 0.0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.wait(0.01):
            self.rss_peak = max(self.rss_peak, current_rss_mb())

    def on_train_begin(self, args, state, control, **kwargs):
        self.rss_start = self.rss_peak = current_rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def on_train_end(self, args, state, control, **kwargs):
        self._stop.set()
        self._thread.join()
        self.rss_peak = max(self.rss_peak, current_rss_mb())

    def samples_per_s(self) -> float:
        timed = self.step_ends[self.warmup - 1:]
        return (len(timed) - 1) * BATCH / (timed[-1] - timed[0])

    def best_step_samples_per_s(self) -> float:
        """BATCH / the fastest timed step: what the run does when nothing else competes for the cores."""
        timed = self.step_ends[self.warmup - 1:]
        return BATCH / min(b - a for a, b in zip(timed, timed[1:]))

    def samples_per_cpu_s(self) -> float:
        """Samples per CPU-second: on a shared machine this moves far less than wall-clock throughput."""
        timed = self.cpu_ends[self.warmup - 1:]
        return (len(timed) - 1) * BATCH / (timed[-1] - timed[0])


# ---------------------------------------------------------------------------------------------- plain way


def _accuracy(eval_pred):
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}


def plain_run(mode: str, steps: int, out: str, meter: Meter, seed: int) -> float:
    """The transformers docs' way (text / image classification guides) + PEFT's get_peft_model. Returns the
    accuracy on the validation split."""
    from transformers import Trainer, TrainingArguments

    model, train, validation, collator, processor = (plain_image if mode == "image" else plain_text)(mode)
    args = TrainingArguments(
        output_dir=out, learning_rate=LR[mode], per_device_train_batch_size=BATCH, per_device_eval_batch_size=128,
        max_steps=steps, eval_strategy="no", save_strategy="no", report_to="none", seed=seed, use_cpu=True,
        remove_unused_columns=mode != "image")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=processor,
                      data_collator=collator, callbacks=[meter], compute_metrics=_accuracy)
    trainer.train()
    return trainer.evaluate()["eval_accuracy"]


def plain_text(mode: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hftl import zoo

    checkpoint = zoo.resolve_model("zoo:minilm-l6")
    dataset = zoo.load_dataset("zoo:tweets-sentiment", "binary")  # the same rows hftl trains on
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def preprocess(examples):
        return tokenizer(examples["text"], truncation=True, max_length=MAX_LEN)

    tokenized = dataset.map(preprocess, batched=True)
    id2label = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, num_labels=2, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if mode == "frozen":
        for p in model.bert.parameters():  # the encoder (and its pooler); the classifier trains
            p.requires_grad = False
    elif mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                            target_modules=["query", "value"])
        model = get_peft_model(model, config)
    return model, tokenized["train"], tokenized["validation"], DataCollatorWithPadding(tokenizer=tokenizer), tokenizer


def plain_image(mode: str):
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hftl import zoo

    checkpoint = zoo.resolve_model("zoo:efficientnet-lite0-96px")
    dataset = zoo.load_dataset("zoo:fashion-mnist", "1k")
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    names = dataset["train"].features["label"].names
    model = AutoModelForImageClassification.from_pretrained(
        checkpoint, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True)

    def transform(batch):
        images = [im.convert("RGB") for im in batch["image"]]
        batch["pixel_values"] = processor(images, return_tensors="pt")["pixel_values"]
        return batch

    def collate(rows):
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                "labels": torch.tensor([r["label"] for r in rows])}

    return (model, dataset["train"].with_transform(transform), dataset["validation"].with_transform(transform),
            collate, processor)


# ---------------------------------------------------------------------------------------------- hftl way


def hftl_recipe(mode: str, steps: int, out: str, seed: int) -> dict:
    training = {"output_dir": out, "learning_rate": LR[mode], "per_device_train_batch_size": BATCH,
                "per_device_eval_batch_size": 128, "max_steps": steps, "eval_strategy": "no", "save_strategy": "no"}
    if mode == "image":
        return {"task": "image-classification", "model": {"model_name_or_path": "zoo:efficientnet-lite0-96px"},
                "data": {"dataset_name": "zoo:fashion-mnist", "augment": False}, "strategy": {"preset": "full"},
                "training": training, "seed": seed, "overwrite_output_dir": True}
    recipe = {
        "task": "text-classification",
        # pooling default: BERT's pooler, the plain script's network
        "model": {"model_name_or_path": "zoo:minilm-l6", "pooling": "default"},
        "data": {"dataset_name": "zoo:tweets-sentiment", "max_seq_length": MAX_LEN},
        "strategy": {"preset": "feature_extraction" if mode == "frozen" else "full"},
        "training": training,
        "seed": seed,
        "overwrite_output_dir": True,
    }
    if mode == "lora":
        recipe["peft"] = {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                          "target_modules": ["query", "value"]}
    return recipe


def hftl_run(mode: str, steps: int, out: str, meter: Meter, seed: int, speed: dict | None = None) -> float:
    """`speed`: a recipe `speed:` section in place of hftl's defaults (micro_batch.py)."""
    import hftl

    recipe = hftl_recipe(mode, steps, out, seed)
    if speed is not None:
        recipe["speed"] = speed
    print(next((line for line in hftl.plan(recipe).splitlines() if line.startswith("speed:")), "speed: -"), flush=True)
    return hftl.train(recipe, callbacks=[meter]).metrics["eval_accuracy"]


# ---------------------------------------------------------------------------------------------- main


def profile(mode: str, steps: int) -> None:
    from pyinstrument import Profiler

    work = tempfile.mkdtemp(prefix="hftl-speed-prof-")
    try:
        hftl_run(mode, 3, f"{work}/warm", Meter(1), 0)  # imports and first-call costs out of the way
        profiler = Profiler(interval=0.005)
        profiler.start()
        hftl_run(mode, steps, f"{work}/run", Meter(1), 0)
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=0, help="steps per run (0: as STEPS says)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; one plain/hftl pair each")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--profile", metavar="MODE", help="profile one hftl run of MODE with pyinstrument instead")
    ap.add_argument("--trl-path", default="/tmp/trl_pkgs", help="lm mode: folder holding the trl package")
    ap.add_argument("--pairs", type=int, default=2, help="lm mode: hftl / plain TRL pairs (each run ~8 min here)")
    args = ap.parse_args()
    if args.profile:
        return profile(args.profile, args.steps or STEPS[args.profile])

    work = Path(tempfile.mkdtemp(prefix="hftl-speed-"))
    modes = args.modes.split(",")
    seeds = [int(x) for x in args.seeds.split(",")]
    default_run = args.steps == 0 and (seeds == [0, 1, 2] or modes == ["lm"])
    # Each finished mode is stored at once in speed.json; the table shows every mode measured so far.
    results = load_rows("speed", default_run)
    try:
        # One untimed run of each kind first: imports, tokenizer caches and the allocator warm up.
        for name, fn in (("plain", plain_run), ("hftl", hftl_run)):
            if modes != ["lm"]:  # lm runs in fresh processes
                fn("full", 2, str(work / f"warm-{name}"), Meter(1), 0)
        for mode in modes:
            if mode == "lm":
                results[mode] = lm_runs(args.pairs, quick=args.steps > 0, trl_path=args.trl_path)
                save_rows("speed", results, default_run)
                continue
            steps = args.steps or STEPS[mode]
            results[mode] = {"plain": [], "hftl": [], "runs": f"{len(seeds)} seeds x {steps} steps"}
            for seed in seeds:
                for name, fn in (("plain", plain_run), ("hftl", hftl_run)):
                    meter = Meter(1)
                    accuracy = fn(mode, steps, str(work / f"{mode}-{name}-{seed}"), meter, seed)
                    r = {"seed": seed, "samples_s": meter.samples_per_s(), "accuracy": accuracy,
                         "samples_cpu_s": meter.samples_per_cpu_s(),
                         "rss_growth_mb": meter.rss_peak - meter.rss_start, "rss_peak_mb": meter.rss_peak}
                    results[mode][name].append(r)
                    print(f"{mode:6s} {name:6s} seed {seed}: {r['samples_s']:.1f} samples/s, "
                          f"{r['samples_cpu_s']:.1f} samples/CPU-s, accuracy {accuracy:.4f}, "
                          f"RSS +{r['rss_growth_mb']:.0f} MB (peak {r['rss_peak_mb']:.0f} MB)", flush=True)
            save_rows("speed", results, default_run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_table(results, default_run)


def lm_runs(pairs: int, quick: bool, trl_path: str) -> dict:
    """quality_lm.py's hftl / plain TRL pair, `pairs` times, alternating; each run a fresh process."""
    import quality_lm

    out = {"plain": [], "hftl": [], "runs": f"{pairs} pairs x {STEPS['lm']} steps"}
    for i in range(pairs):
        for name, key in (("plain", "plain_trl_lora_r8_attn"), ("hftl", "lora_r8_attn")):
            r = quality_lm.run_child(key, quick, trl_path, first=True)  # first: held-out loss by the plain loop
            row = {"tokens_s": r["tokens_s"], "eval_loss": r["batch_mean_loss"], "peak_rss_mb": r["peak_rss_mb"],
                   "train_s": r["train_s"], "steps": r["steps"]}
            out[name].append(row)
            print(f"lm     {name:6s} run {i}: {row['tokens_s']:.1f} tokens/s, held-out loss {row['eval_loss']:.4f}, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    return out


def lm_table(res: dict) -> str:
    def col(name, f, fmt):
        return " / ".join(fmt.format(r[f]) for r in res[name])

    ratio = statistics.median(r["tokens_s"] for r in res["hftl"]) / statistics.median(
        r["tokens_s"] for r in res["plain"])
    return md_table(["set-up", "runs", "plain (TRL) tokens/s, each run", "hftl tokens/s, each run",
                     "hftl/plain (median tokens/s)", "held-out loss plain / hftl", "peak RSS MB plain / hftl"],
                    [[MODES["lm"], res["runs"], col("plain", "tokens_s", "{:.1f}"), col("hftl", "tokens_s", "{:.1f}"),
                      f"**{ratio:.2f}**", f"{res['plain'][0]['eval_loss']:.4f} / {res['hftl'][0]['eval_loss']:.4f}",
                      f"{max(r['peak_rss_mb'] for r in res['plain']):.0f} / "
                      f"{max(r['peak_rss_mb'] for r in res['hftl']):.0f}"]])


def write_table(results: dict, save: bool) -> None:
    rows = []
    for mode in [m for m in MODES if m in results and m != "lm"]:
        res = results[mode]

        def values(name, f):
            return [r[f] for r in res[name] if f in r]

        def runs(name, f, fmt="{:.1f}"):
            return " / ".join(fmt.format(v) for v in values(name, f))

        def mean_sd(name):
            acc = values(name, "accuracy")
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            return f"{statistics.mean(acc):.4f} ± {sd:.4f}"

        median = statistics.median(values("hftl", "samples_s")) / statistics.median(values("plain", "samples_s"))
        cpu = statistics.median(values("hftl", "samples_cpu_s")) / statistics.median(values("plain", "samples_cpu_s"))
        rows.append([MODES[mode], res.get("runs", ""), runs("plain", "samples_s"), runs("hftl", "samples_s"),
                     f"**{median:.2f}**", f"{cpu:.2f}", mean_sd("plain"), mean_sd("hftl"),
                     f"{statistics.median(values('plain', 'rss_growth_mb')):.0f} / "
                     f"{statistics.median(values('hftl', 'rss_growth_mb')):.0f}"])
    table = md_table(["set-up", "runs", "plain samples/s, each seed", "hftl samples/s, each seed",
                      "hftl/plain (median samples/s)", "hftl/plain (median samples per CPU-s)",
                      "accuracy plain (mean ± sd)", "accuracy hftl (mean ± sd)", "RSS growth MB plain / hftl"], rows)
    lm = ""
    if "lm" in results:
        lm = ("\nSmolLM2 against TRL (benchmarks/quality_lm.py's pair; each run a fresh process, the held-out loss "
              "of the first run of each side, scored by the same plain loop):\n\n" + lm_table(results["lm"]) + "\n")
    body = f"""
Per seed, a plain run then an hftl run with the same model, data, batch size ({BATCH}), learning rate, seed and
steps (the `runs` column); samples/s over every step after the first; accuracy on the validation split after
those steps.
"plain" is the transformers docs' Trainer script (text / image classification guides, + `peft.get_peft_model`
for LoRA); "hftl" is `hftl.train` on a recipe dict with hftl's defaults, which choose for speed (each named in
the run's plan header, each a recipe key; training/speed.py): length-sorted micro-batches of 16 for the MiniLM
set-ups (`speed.micro_batch`: each batch of 32 as 2 micro-batches sorted by length, gradients summed: the same
update), channels_last for EfficientNet (`speed.channels_last`); bf16 autocast only where the CPU or GPU has bf16
matmuls (this CPU: AVX2, so not). Both sides use transformers 5's fused AdamW and SDPA attention. The text recipes
set `model.pooling: default` (BERT's pooler, the plain model); MiniLM's max_seq_length is {MAX_LEN}, dynamic
padding. RSS growth = peak RSS during training minus RSS when training started.

Goal: >= 1.3x plain on full fine-tuning and LoRA at equal accuracy, never below 1.0x, peak memory no higher.

{table}
{lm}
Notes:
- **Goal not met in this run: full fine-tuning 1.25x, LoRA 1.24x** (micro-batches of 16, two epochs); never below
  1.0x (images 1.07x); activation memory (RSS growth) lower on every row. The same set-up spreads by up to 40%
  between runs on this shared 2-core machine: the earlier one-epoch run with micro-batches of 8 (2026-12-07
  12:53, e8fcf3b) gave full fine-tuning 1.22x and LoRA **1.37x**. benchmarks/micro_batch.py (plain, 8, 16
  interleaved, one epoch, seeds 0 / 1) this evening: full fine-tuning plain 19.1 / 17.2, micro 16 24.1 / 23.9
  (1.26 / 1.39x), micro 8 21.8 / 27.0 (1.14 / 1.57x) samples/s; LoRA plain 26.2 / 22.5, micro 16 33.8 / 30.8
  (1.29 / 1.37x), micro 8 31.1 / 33.2 (1.19 / 1.47x): 8 and 16 ahead in turn, so 16 stays.
- Accuracy: micro-batches give the whole batch's gradients (tests, to 1e-6), so the hftl and plain runs differ
  only by noise (dropout masks; the head's init, drawn after other numbers from the seed). After two epochs full
  fine-tuning is equal within the seeds' spread: 0.925 / 0.934 / 0.927 plain, 0.925 / 0.928 / 0.927 hftl. LoRA
  at this learning rate stays at the majority class (0.821) on both sides and every seed: equal, but it says
  little (one epoch did the same).
- The ceiling of an exact update on this CPU. A random batch of 32 tweets holds 1.75x the tokens of its texts, 2
  sorted micro-batches of 16 1.38x, 4 of 8 1.18x: work that grows with tokens falls 1.27x (16) or 1.48x (8).
  benchmarks/step_levers.py times the training step alone, the ways interleaved batch by batch: micro-batches
  of 16 gave 1.24-1.30x plain in five runs (their ceiling: 1.27x), of 8 1.21-1.33x in four (median 1.30x):
  smaller matrix products and one dense word-embedding gradient (11.7M numbers zeroed and added) per micro-batch
  eat the rest. torch.profiler, one hftl step: matrix products 64%, dropout's `bernoulli_` 10.6% (torch's CPU
  random numbers: 3.5 ms for a 16 x 40 x 384 mask; one drawn by numpy 1.8 ms, ~3% of a step: not worth replacing
  torch's dropout), zeroing / adding gradients 3-9%, fused AdamW 1.4%.
- Tried, not kept: the word embeddings' gradient summed sparsely over micro-batches (dense once per batch; the
  same accuracy to 3 decimals): step_levers.py +9% in one run, -1% in another, and 0.86 / 0.96x (16), 1.06 /
  0.96x (8) the dense runs in micro_batch.py's interleaved seeds (tried in the library, since removed), so
  noise; eager attention instead of SDPA: 1.02x plain (SDPA, the transformers default, stays on both sides);
  `torch.compile(model, dynamic=True)` with micro-batches of 16: 253 s to compile cold (72 s from inductor's
  cache), then 0.87x and 1.00x eager micro-batches of 16 in two runs, so it stays opt-in
  (`training.torch_compile`); DataLoader workers: fetching and padding a batch of 32 takes 5.2 ms (0.5% of a
  step) and a worker would take one of the 2 cores, so `dataloader_num_workers` stays 0.
- What would pass 1.3x here changes what a batch holds: length-grouped *batches*
  (`training.train_sampling_strategy: group_by_length`, 1.03x the tokens) trained ~2x as fast as plain, but on
  these tweets (positive ones are shorter) one epoch of full fine-tuning stayed at the majority class (0.821,
  seeds 0 and 1) where the plain script reached 0.915 / 0.908: opt-in, not a default. The hardware levers hftl
  turns on by itself (bf16 autocast on AMX / AVX512-BF16 CPUs and GPUs, padding to 8 on GPUs) are not measured:
  this CPU has AVX2 only and no GPU was lent.
- When: the full fine-tuning and LoRA rows 2026-12-07 19:25-20:03 UTC at d910c7b, two epochs, micro-batches of
  16, nothing else running; frozen and EfficientNet rows 12:53 UTC at e8fcf3b (one epoch; micro-batches do not
  apply to them); the SmolLM2 row at 17:17 UTC, one pair, a CI test run beside it on the same 2 cores
  (quality_lm.md's two quieter pairs earlier: 1.31x). SmolLM2's batch of 8 takes no micro-batches; its held-out
  losses differ because TRL tokenizes the prompt/completion boundary differently (quality_lm.md).
- Frozen backbone: hftl computes the backbone features once before training (`strategy.cache_features: auto`),
  so its timed steps only train the head; that pass is not in the timing.
"""
    write_result("speed", "Speed: hftl vs the plain transformers Trainer script", body, save=save)


if __name__ == "__main__":
    main()
