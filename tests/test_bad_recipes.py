"""A corpus of broken recipes (tests/bad_recipes/*.yaml): every one must fail with one clear paragraph.

For each case both `hftl validate <recipe>` and `hftl train <recipe>` run as child processes (cwd: a fresh
tmp dir, HF_HUB_OFFLINE=1, HFTL_LOG_LEVEL=WARNING) and we check: the exit code, the message names the
offending key or file, no traceback, and no output dir left behind (the tmp dir is unchanged).

Each case file starts with a header of comments:

    # <what is wrong>                       (first line, free text)
    # fail: validate train                  (commands that must exit 1; a command not listed must exit 0)
    # expect: sub1 | sub2                   (substrings the error message must contain)
    # overrides: a.b=1 c=2                  (optional: extra dotted.key=value argv)
    # setup: out_file | out_nonempty        (optional: training.output_dir exists beforehand, and must stay unchanged)
    # absent: {TMP}/pwned                   (optional: a path that must not exist afterwards)
    # reject: sub1 | sub2                   (optional: substrings the message must not contain, e.g. a wrong hint)
    # xfail: <reason>                       (optional: a known gap, fixed outside this file; strict)

Recipes and headers use placeholders: {BERT} / {VIT} / {W2V} / {GPT2} / {GPT2_NOCHAT} / {T5} (tiny checkpoints), {DATA} (good and bad data files,
built once per session) and {TMP} (the case's working dir, where the output dir goes).

Speed: `python -m hftl.cli` spends ~10 s of CPU importing torch/transformers/peft before it reads the recipe,
so ~170 fresh interpreters would take far too long on a small machine. By default each command therefore runs
in a child forked from a "zygote" interpreter that imported those libraries once: a fresh process per command
that executes `hftl.cli` as `__main__` exactly like `python -m hftl.cli` (own cwd, own stdout/stderr, its own
exit code; anything uncaught prints a real traceback). `test_real_interpreter` runs two cases through plain
`python -m hftl.cli` to keep the two paths honest; HFTL_BAD_RECIPES_MODE=subprocess runs the whole corpus
that way (slow: minutes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, make_text_rows

CORPUS = Path(__file__).parent / "bad_recipes"
COMMANDS = ("validate", "train")
TIMEOUT_S = 300
MODE = os.environ.get("HFTL_BAD_RECIPES_MODE", "zygote")


# ----------------------------------------------------------------------------------------------- the corpus


@dataclass
class Case:
    name: str
    path: Path
    what: str
    fail: set[str]
    expect: list[str]
    overrides: list[str] = field(default_factory=list)
    setup: str | None = None
    absent: list[str] = field(default_factory=list)
    xfail: str | None = None
    reject: list[str] = field(default_factory=list)


_HEADER_KEYS = {"fail", "expect", "overrides", "setup", "absent", "xfail", "reject"}


def parse_case(path: Path) -> Case:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# ") and len(lines[0]) > 5, f"{path.name}: must open with '# <what is wrong>'"
    meta: dict[str, str] = {}
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        if sep and key in _HEADER_KEYS:
            meta[key] = value.strip()
    fail = set(meta.get("fail", "").split())
    assert fail and fail <= set(COMMANDS), f"{path.name}: '# fail:' must list validate and/or train"
    assert "train" in fail, f"{path.name}: train loads the recipe too, so whatever validate rejects, train must reject"
    expect, reject = ([s.strip() for s in meta.get(k, "").split(" | ") if s.strip()] for k in ("expect", "reject"))
    assert expect, f"{path.name}: '# expect:' must give at least one substring of the message"
    setup = meta.get("setup")
    assert setup in (None, "out_file", "out_nonempty"), f"{path.name}: unknown setup {setup!r}"
    return Case(path.stem, path, lines[0][2:], fail, expect, shlex.split(meta.get("overrides", "")), setup,
                meta.get("absent", "").split(), meta.get("xfail"), reject)


CASES = [parse_case(p) for p in sorted(CORPUS.glob("*.yaml"))]


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------------- assets


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="session")
def bad_assets(tmp_path_factory, bert_dir, vit_dir, w2v_dir, gpt2_lm_dir, gpt2_nochat_dir, t5_dir, text_csv, image_dirs,
               audio_dirs) -> dict[str, str]:
    """Good copies of the tiny data plus every broken file the corpus points at, under {DATA}."""
    d = tmp_path_factory.mktemp("bad_data")
    shutil.copy(text_csv[0], d / "train.csv")
    shutil.copy(text_csv[1], d / "validation.csv")
    shutil.copytree(image_dirs[0], d / "images" / "train")
    shutil.copytree(image_dirs[1], d / "images" / "validation")
    rows = make_text_rows(24, 2)

    (d / "empty.csv").write_text("")
    (d / "header_only.csv").write_text("text,label\n")
    shutil.copy(text_csv[0], d / "train.txt")
    (d / "broken.json").write_text('{"text": "good day", "label": \n[[[ not json')
    (d / "folder.csv").mkdir()  # a folder where a file is expected (chmod 000 means nothing to root)
    (d / "folder.csv" / "part.csv").write_text("text,label\ngood,pos\n")
    _write_csv(d / "single_class.csv", [{**r, "label": "pos"} for r in rows], ["text", "label"])
    _write_csv(d / "null_label.csv", [{**r, "label": "" if i == 5 else r["label"]} for i, r in enumerate(rows)],
               ["text", "label"])
    _write_csv(d / "null_text.csv", [{**r, "text": "" if i == 7 else r["text"]} for i, r in enumerate(rows)],
               ["text", "label"])
    _write_csv(d / "unseen_label.csv", [{**r, "label": "neutral" if i == 3 else r["label"]} for i, r in enumerate(rows)],
               ["text", "label"])
    _write_csv(d / "review.csv", [{"review": r["text"], "label": r["label"]} for r in rows], ["review", "label"])

    ner = [{"tokens": [name, verb, place], "ner_tags": ["B-PER", "O", "B-LOC"]}
           for name in ("alice", "bob") for verb in ("visited", "left") for place in ("paris", "rome")]
    _write_jsonl(d / "ner_train.jsonl", ner)
    _write_jsonl(d / "ner_mismatch.jsonl", [{**r, "ner_tags": r["ner_tags"][:2]} if i == 3 else r
                                            for i, r in enumerate(ner)])
    _write_jsonl(d / "ner_unseen_tag.jsonl", [{**r, "ner_tags": ["B-ORG", "O", "B-LOC"]} if i == 2 else r
                                              for i, r in enumerate(ner)])
    _write_jsonl(d / "ner_words.jsonl", [{"words": r["tokens"], "ner_tags": r["ner_tags"]} for r in ner])

    shutil.copytree(image_dirs[0], d / "images_corrupt" / "train")
    (d / "images_corrupt" / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (d / "images_empty").mkdir()
    for label in ("red", "blue"):
        (d / "images_no_images" / label).mkdir(parents=True)
        (d / "images_no_images" / label / "README.txt").write_text("no pictures here\n")
    shutil.copytree(image_dirs[0] / "red", d / "images_one_class" / "red")

    shutil.copytree(audio_dirs[0], d / "audio" / "train")
    shutil.copytree(audio_dirs[1], d / "audio" / "validation")
    shutil.copytree(audio_dirs[0], d / "audio_corrupt" / "train")
    (d / "audio_corrupt" / "train" / "low" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt not audio")
    shutil.copytree(audio_dirs[0], d / "audio_short" / "train")
    import numpy as np
    import soundfile as sf

    sf.write(d / "audio_short" / "train" / "high" / "click.wav", np.zeros(20, dtype=np.float32), 16000)  # 1.25 ms

    from lm_assets import chat_rows, copy_rows, qa_rows

    _write_jsonl(d / "lm_no_text.jsonl", [{"body": "the cat sat on the mat"}] * 8)
    _write_jsonl(d / "lm_prompt_only.jsonl", [{"prompt": r["prompt"]} for r in qa_rows(8)])
    _write_jsonl(d / "lm_empty_completion.jsonl", [{**r, "completion": "" if i == 2 else r["completion"]}
                                                   for i, r in enumerate(qa_rows(8))])
    _write_jsonl(d / "lm_qa.jsonl", qa_rows(8))
    _write_jsonl(d / "lm_chat.jsonl", chat_rows(8))
    _write_jsonl(d / "lm_unknown_role.jsonl", [{"messages": [{**m, "role": "robot"} if m["role"] == "system" else m
                                                             for m in r["messages"]]} for r in chat_rows(8)])
    _write_jsonl(d / "s2s_train.jsonl", copy_rows(16, 0))

    (d / "model_empty").mkdir()
    shutil.copytree(bert_dir, d / "model_bad_config")
    (d / "model_bad_config" / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    (d / "checkpoint-partial").mkdir()
    (d / "checkpoint-partial" / "config.json").write_text("{}")
    # run dirs as hftl writes them (recipe + labels; read before any weights): another task, other labels
    for name, task, model, data, labels in (
            ("run_image", "image-classification", vit_dir, {"train_dir": str(image_dirs[0])}, ["blue", "red"]),
            ("run_three_labels", "text-classification", bert_dir, {"train_file": str(d / "train.csv")}, ["a", "b", "c"])):
        (d / name).mkdir()
        (d / name / "recipe.yaml").write_text(json.dumps({"task": task, "model": {"model_name_or_path": str(model)},
                                                           "data": data, "training": {"output_dir": str(d / name)}}))
        (d / name / "labels.json").write_text(json.dumps(labels))
    return {"BERT": str(bert_dir), "VIT": str(vit_dir), "W2V": str(w2v_dir), "GPT2": str(gpt2_lm_dir),
            "GPT2_NOCHAT": str(gpt2_nochat_dir), "T5": str(t5_dir), "DATA": str(d)}


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


# ----------------------------------------------------------------------------------------------- running hftl

# Runs in a fresh interpreter. Imports the heavy libraries once, then forks one child per command; the
# child runs `hftl.cli` as __main__ the way `python -m hftl.cli` does and exits with its status.
ZYGOTE = r'''
import importlib, json, os, signal, sys, time, traceback

WARM = ["torch", "transformers", "datasets", "peft", "accelerate", "PIL.Image", "hftl", "hftl.api", "hftl.recipe",
        "hftl.data", "hftl.model", "hftl.strategy", "hftl.runs.outputs", "hftl.training.pipeline", "hftl.metrics"]
for name in WARM:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # the child imports it again and reports whatever goes wrong, as a real run would
try:
    import transformers
    transformers.TrainingArguments, transformers.Trainer  # resolve the lazy attributes once
except Exception:
    pass
assert "hftl.cli" not in sys.modules

def child(job):
    os.setsid()
    os.chdir(job["cwd"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        new = os.open(path, flags)
        os.dup2(new, fd)
        os.close(new)
    sys.path[0] = job["cwd"]  # what `python -m` puts first
    sys.argv = ["hftl"] + job["argv"]
    code = 1
    try:
        import runpy
        runpy.run_module("hftl.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    try:
        import logging
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

out = sys.stdout
out.write("ready\n")
out.flush()
for line in sys.stdin:
    job = json.loads(line)
    out.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(job)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > job["timeout"]:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    out.write(json.dumps({"rc": rc, "timed_out": timed_out, "seconds": time.monotonic() - start}) + "\n")
    out.flush()
'''


def _env(tmp_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HFTL_LOG_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_root / "datasets_cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


class Zygote:
    def __init__(self, tmp_root: Path):
        self.log = tmp_root / "zygote.log"
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "w"), env=_env(tmp_root), text=True, cwd=tmp_root)
        ready = self.proc.stdout.readline()
        assert ready == "ready\n", f"zygote did not start: {self.log.read_text()[-3000:]}"

    def run(self, argv: list[str], cwd: Path, io_dir: Path) -> Result:
        out, err = io_dir / "stdout.txt", io_dir / "stderr.txt"
        job = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err), "timeout": TIMEOUT_S}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"zygote died: {self.log.read_text()[-3000:]}"
        reply = json.loads(reply)
        assert not reply["timed_out"], f"hftl {' '.join(argv)} ran past {TIMEOUT_S}s"
        return Result(reply["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"), reply["seconds"])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_interpreter(argv: list[str], cwd: Path, tmp_root: Path) -> Result:
    """A plain `python -m hftl.cli ...`, as a user would run it."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hftl.cli", *argv], cwd=cwd, env=_env(tmp_root), capture_output=True,
                       text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - start)


@pytest.fixture(scope="session")
def hftl_cli(tmp_path_factory):
    """run(argv, cwd, io_dir) -> Result, by the zygote (default) or by fresh interpreters."""
    tmp_root = tmp_path_factory.mktemp("hftl_cli")
    if MODE == "subprocess":
        yield lambda argv, cwd, io_dir: run_interpreter(argv, cwd, tmp_root)
        return
    zygote = Zygote(tmp_root)
    yield zygote.run
    zygote.close()


# ----------------------------------------------------------------------------------------------- the checks


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, size and mtime: must be identical before and after a failed run."""
    state = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        state[str(p.relative_to(root))] = (p.is_dir(), st.st_size if p.is_file() else None, st.st_mtime_ns)
    return state


def prepare_case(case: Case, assets: dict[str, str], tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    work = tmp_path / "work"  # {TMP}: cwd of every command, and where the recipes put training.output_dir
    work.mkdir(parents=True)
    values = {**assets, "TMP": str(work)}
    recipe = tmp_path / "recipe" / case.path.name
    recipe.parent.mkdir()
    recipe.write_text(fill(case.path.read_text(encoding="utf-8"), values), encoding="utf-8")
    if case.setup == "out_file":
        (work / "out").write_text("a file, not a folder\n")
    elif case.setup == "out_nonempty":
        (work / "out").mkdir()
        (work / "out" / "keep.txt").write_text("earlier results\n")
    return work, recipe, values


def check(case: Case, command: str, result: Result, values: dict[str, str], work: Path, before: dict) -> None:
    shown = f"hftl {command} {case.name} (rc {result.rc}):\n{result.text[-4000:]}"
    if os.environ.get("HFTL_BAD_RECIPES_DUMP"):  # a file to collect every message in, to read them side by side
        with open(os.environ["HFTL_BAD_RECIPES_DUMP"], "a") as f:
            f.write(f"{case.name} {command} rc={result.rc} {result.seconds:.1f}s: {result.err.rpartition('hftl: error: ')[2]}\n")
    assert "Traceback" not in result.text, shown
    if command in case.fail:
        assert result.rc == 1, shown
        assert "hftl: error: " in result.err, shown
        message = result.err.split("hftl: error: ", 1)[1].strip()
        assert "\n" not in message, f"the error must be one paragraph: {shown}"
        for sub in case.expect:
            assert fill(sub, values) in message, f"{fill(sub, values)!r} missing from the message: {shown}"
        for sub in case.reject:
            assert fill(sub, values) not in message, f"{fill(sub, values)!r} must not be in the message: {shown}"
    else:
        assert result.rc == 0, f"{command} must accept this recipe (the problem shows only at train time): {shown}"
    for path in case.absent:
        assert not Path(fill(path, values)).exists(), f"{fill(path, values)} was created: {shown}"
    if case.setup is None:
        assert not (work / "out").exists(), f"training.output_dir was left behind: {shown}"
    assert snapshot(work) == before, f"the working dir changed: {shown}"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_recipe(case: Case, command: str, bad_assets, hftl_cli, tmp_path, request):
    if case.xfail and command in case.fail:
        request.applymarker(pytest.mark.xfail(reason=case.xfail, strict=True))
    work, recipe, values = prepare_case(case, bad_assets, tmp_path)
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    before = snapshot(work)
    argv = [command, str(recipe), *(fill(o, values) for o in case.overrides)]
    result = hftl_cli(argv, work, io_dir)
    check(case, command, result, values, work, before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yaml_python_tag", "data_text_null"])
def test_real_interpreter(name, bad_assets, tmp_path):
    """The same checks through plain `python -m hftl.cli` (both commands run side by side)."""
    case = next(c for c in CASES if c.name == name)
    runs = {}
    for command in COMMANDS:
        work, recipe, values = prepare_case(case, bad_assets, tmp_path / command)
        runs[command] = work, values, snapshot(work), subprocess.Popen(
            [sys.executable, "-m", "hftl.cli", command, str(recipe), *case.overrides], cwd=work, env=_env(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    for command, (work, values, before, proc) in runs.items():
        out, err = proc.communicate(timeout=TIMEOUT_S)
        check(case, command, Result(proc.returncode, out, err, 0.0), values, work, before)


# ----------------------------------------------------------------------------------------------- in-process


def test_every_problem_in_one_error():
    """Three unrelated mistakes: one RecipeError that names all three (no fix-one-rerun loop)."""
    import hftl

    recipe = {
        "task": "text-classification",
        "modle": {"model_name_or_path": "x"},
        "data": {"train_file": "train.csv", "max_train_samples": 0},
        "training": {"output_dir": "out", "learnin_rate": 1e-3},
    }
    with pytest.raises(hftl.RecipeError) as info:
        hftl.load_recipe(recipe)
    message = str(info.value)
    assert "'modle'" in message and "Did you mean 'model'" in message
    assert "'training.learnin_rate'" in message and "Did you mean 'learning_rate'" in message
    assert "'data.max_train_samples'" in message
