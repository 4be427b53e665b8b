"""GGUF export (issue 33): SmolLM2-135M + LoRA on fortunes, written by `hftl export --gguf` and run in llama.cpp.

1. `recipes/smollm2_lora.yaml` as shipped is trained (or `--run DIR` reuses a finished run of it).
2. `hftl.export(run, gguf=True, quant=q)` for f16 and q8_0. With llama-cpp-python installed, the export itself
   runs the file in llama.cpp and compares greedy tokens with transformers on the recipe's 3 prompts (export.json).
   Here the same check is also run on the first 20 prompts of the validation split (zoo:fortunes
   prompt-completion), 32 new tokens each: the file in llama.cpp vs the merged model in transformers (float32),
   both fed the run's token ids; and whether llama.cpp's own tokenizer splits each prompt as the run's does.
3. The plain way, where `--converter` gives llama.cpp's convert_hf_to_gguf.py (it is in the llama-cpp-python
   sdist: vendor/llama.cpp/): `hftl export --merge`, then the converter with the same --outtype. Its file gets
   the same check, and the two files are compared key by key and tensor by tensor.

    pip download --no-deps --no-binary :all: llama-cpp-python    # the sdist: builds llama.cpp (~30 min on 2 cores)
    pip install llama-cpp-python-*.tar.gz
    nice -n 10 .venv/bin/python benchmarks/gguf_export.py [--run DIR] \
        [--converter .../vendor/llama.cpp/convert_hf_to_gguf.py]

Prints markdown and writes benchmarks/results/gguf_export.md (numbers: gguf_export.json). Not run in CI
(llama-cpp-python builds from source).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, md_table, write_result

NAME = "gguf_export"
TITLE = "GGUF export: SmolLM2-135M + LoRA (fortunes) in llama.cpp"
N_PROMPTS, N_TOKENS = 20, 32


def validation_prompts(n: int) -> list[str]:
    from hftl import zoo

    ds = zoo.load_dataset("zoo:fortunes", "prompt-completion")
    return list(ds["validation"]["prompt"][:n])


def check(path: Path, model, tok, prompts: list[str]) -> dict:
    from hftl.runs.gguf import greedy_check

    start = time.perf_counter()
    out = greedy_check(model, tok, path, prompts, N_TOKENS)
    out["check_s"] = time.perf_counter() - start
    return out


def compare_files(ours: Path, theirs: Path) -> dict:
    """Keys and tensors of two GGUF files: which differ, and by how much (de-quantized)."""
    import gguf
    import numpy as np

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    skip = ("GGUF.", "general.")
    keys_a = {k for k in a.fields if not k.startswith(skip)}
    keys_b = {k for k in b.fields if not k.startswith(skip)}
    differ = sorted(k for k in keys_a & keys_b if a.fields[k].contents() != b.fields[k].contents())
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    worst, types_differ = 0.0, []
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type:
            types_differ.append(f"{name}: {x.tensor_type.name} vs {y.tensor_type.name}")
        dx = gguf.dequantize(x.data, x.tensor_type).astype(np.float32).reshape(-1)
        dy = gguf.dequantize(y.data, y.tensor_type).astype(np.float32).reshape(-1)
        worst = max(worst, float(np.abs(dx - dy).max()))
    return {"only_hftl_keys": sorted(keys_a - keys_b), "only_converter_keys": sorted(keys_b - keys_a),
            "keys_differ": differ, "only_hftl_tensors": sorted(set(ta) - set(tb)),
            "only_converter_tensors": sorted(set(tb) - set(ta)), "tensor_types_differ": types_differ,
            "max_abs_tensor_diff": worst, "tensors": len(ta)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run of recipes/smollm2_lora.yaml (default: train one)")
    ap.add_argument("--converter", type=Path, help="llama.cpp's convert_hf_to_gguf.py: also run the plain way")
    ap.add_argument("--work", type=Path, help="folder for the run and the files (default: a temporary one)")
    ap.add_argument("--report", action="store_true", help="run nothing: rewrite the .md from the .json")
    args = ap.parse_args()
    stored = Path(__file__).parent / "results" / f"{NAME}.json"
    if args.report:
        return write_result(NAME, TITLE, report(json.loads(stored.read_text())))

    import llama_cpp  # noqa: F401  # the point of the benchmark: fail early without it

    import hftl
    from hftl.runs.export import merged_copy
    from hftl.runs.load import load_processor, read_run

    work = args.work or Path(tempfile.mkdtemp(prefix="hftl-gguf-"))
    run_dir = args.run
    result = {"recipe": "recipes/smollm2_lora.yaml"}
    if run_dir is None:
        start = time.perf_counter()
        run_dir = hftl.train(str(ROOT / "recipes/smollm2_lora.yaml"), [f"training.output_dir={work / 'run'}",
                                                                      "overwrite_output_dir=true"]).output_dir
        result["train_s"] = time.perf_counter() - start
    run = read_run(run_dir)
    model = merged_copy(hftl.load_model(run_dir)).float().eval()
    tok = load_processor(run)
    prompts = validation_prompts(N_PROMPTS)
    result["prompts"] = prompts
    for quant in ("f16", "q8_0"):
        start = time.perf_counter()
        target = hftl.export(run_dir, gguf=True, quant=quant, to=work / f"hftl-{quant}")
        numbers = json.loads((target / "export.json").read_text())
        row = {"export_s": time.perf_counter() - start, "size_mb": numbers["size_bytes"] / 2**20,
               "export_check": {k: numbers[k] for k in ("reader", "same_tokens", "same_split", "prompts")},
               "tensor_types": numbers["tensor_types"], "pre_tokenizer": numbers["pre_tokenizer"],
               "validation": check(target / numbers["file"], model, tok, prompts)}
        if args.converter:
            merged = work / "merged"
            if not merged.is_dir():
                hftl.export(run_dir, merge=True, to=merged)
            out = work / f"converter-{quant}.gguf"
            start = time.perf_counter()
            subprocess.run([sys.executable, str(args.converter), str(merged), "--outtype", quant, "--outfile",
                            str(out)], check=True, capture_output=True, text=True)
            row["converter"] = {"convert_s": time.perf_counter() - start, "size_mb": out.stat().st_size / 2**20,
                                "validation": check(out, model, tok, prompts),
                                "vs_hftl": compare_files(target / numbers["file"], out)}
        result[quant] = row
        print(json.dumps({quant: {k: v for k, v in row.items() if k != "validation"}}, default=str)[:2000], flush=True)
    stored.write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_result(NAME, TITLE, report(result))


def report(r: dict) -> str:
    rows = []
    for quant in ("f16", "q8_0"):
        q = r[quant]
        v = q["validation"]
        rows.append([f"hftl export --gguf --quant {quant}", f"{q['size_mb']:.1f}", f"{q['export_s']:.0f}",
                     f"{q['export_check']['same_tokens']}/{q['export_check']['prompts']}",
                     f"{v['same_tokens']}/{v['prompts']}", f"{v['same_split']}/{v['prompts']}"])
        if "converter" in q:
            c = q["converter"]
            cv = c["validation"]
            rows.append([f"merge + convert_hf_to_gguf.py --outtype {quant}", f"{c['size_mb']:.1f}",
                         f"{c['convert_s']:.0f} (+ merge)", "-", f"{cv['same_tokens']}/{cv['prompts']}",
                         f"{cv['same_split']}/{cv['prompts']}"])
    reader = r["f16"]["validation"]["reader"]
    lines = [f"`{r['recipe']}` as shipped (LoRA r16 on q_proj/v_proj of SmolLM2-135M-Instruct, 480 fortunes, 1 "
             "epoch)" + (f", trained in {r['train_s']:.0f} s" if "train_s" in r else "") + f"; checked with {reader}.",
             "", "Greedy completions (up to 32 new tokens, or the eos) of the first 20 prompts of the validation "
             "split: the GGUF file in llama.cpp against the merged model in transformers (float32), both fed the "
             "run's token ids. \"same split\": llama.cpp's own tokenizer (from the file) gives the run's ids.", "",
             md_table(["file", "MB", "seconds (hftl: writing + its check)",
                       "identical (export's own check, recipe prompts)",
                       "identical (20 validation prompts)", "same split"], rows), ""]
    for quant in ("f16", "q8_0"):
        q = r[quant]
        v = q["validation"]
        diverged = [f"{x['agree_prefix']}" for x in v["rows"] if not x["same"]]
        lines.append(f"- {quant}: tensors {', '.join(f'{n} {t}' for t, n in sorted(q['tensor_types'].items()))}; "
                     f"pre-tokenizer `{q['pre_tokenizer']}`" + (f"; where the completions differ, they agree on the "
                     f"first {', '.join(diverged)} token(s); the converter's file, with the same weights, gives the "
                     "same tokens: Q8_0 rounding, not the export" if diverged else "") + ".")
        if "converter" in q:
            c = q["converter"]["vs_hftl"]
            types = "yes" if not c["tensor_types_differ"] else "; ".join(c["tensor_types_differ"])
            lines.append(f"  - against llama.cpp's converter: {c['tensors']} tensors, the same names "
                         f"({'yes' if not c['only_hftl_tensors'] and not c['only_converter_tensors'] else 'no'}), "
                         f"the same types ({types}), "
                         f"largest difference of a de-quantized weight {c['max_abs_tensor_diff']:.3g}; keys only in "
                         f"hftl's file: {', '.join(c['only_hftl_keys']) or 'none'}; only in the converter's: "
                         f"{', '.join(c['only_converter_keys']) or 'none'}; keys with other values: "
                         f"{', '.join(c['keys_differ']) or 'none'}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
