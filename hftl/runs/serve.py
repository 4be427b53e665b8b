"""`hftl serve RUN_DIR [RUN_DIR ...]`: a finished run (or an ensemble) as a Gradio web app and HTTP API.

The page fits the run's task: a text box, an image or audio upload (or the microphone), a labels box for
zero-shot runs, words highlighted with their entities for NER, a chat for causal-LM and vision-language runs;
class probabilities as a label chart; the run's card beside it. Every request goes through `Predictor`, the code
`hftl predict` runs, so the page and the CLI give the same numbers; models load once, at start. Every task's API
endpoint is `/predict`: `gradio_client.Client(url).predict(..., api_name="/predict")` returns what the page shows.
Binds to 127.0.0.1 unless told otherwise; Ctrl-C or SIGTERM stops it cleanly. `serve_app` builds the same app
without launching it: the app.py of a Space that `hftl push --space` writes launches it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
from pathlib import Path

from hftl.errors import HftlError
from hftl.runs.predict import Predictor

logger = logging.getLogger("hftl")
CHAT = ("causal-lm", "image-text-to-text")


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise HftlError("hftl serve needs Gradio: pip install 'hftl[serve]' (or pip install gradio).") from None
    return gr


def card_summary(run_dir: Path) -> str:
    """The run's model card (README.md) without its YAML header, for the page's side column."""
    path = run_dir / "README.md"
    if not path.is_file():
        return f"**{run_dir.name}** (no model card)"
    text = path.read_text(encoding="utf-8")
    return re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S).strip()


def label_output(row: dict) -> dict[str, float]:
    """A classification row as gr.Label shows it: {label: probability}, most likely first."""
    return dict(sorted(row["scores"].items(), key=lambda kv: -kv[1]))


def entities(words: list[str], row: dict) -> list[tuple[str, str | None]]:
    """NER tags as gr.HighlightedText takes them: (word, entity type or None for O), BIO prefixes dropped."""
    out = []
    for word, tag in zip(words, row["tags"]):
        kind = None if tag == "O" else re.sub(r"^[BIES]-", "", tag)
        out.append((word + " ", kind))
    return out


def _text(content) -> str:
    """A chat message's text: Gradio gives a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return " ".join(_text(c) for c in content if not (isinstance(c, dict) and "path" in c))
    return ""


def chat_prompt(predictor: Predictor, message, history: list) -> tuple[object, str]:
    """(the value the task generates from, what it shows) for a chat turn. Vision-language runs take TRL's
    messages + images; causal-LM runs a prompt text (the conversation in the tokenizer's chat template where it
    has one, else the last message, as `hftl predict` takes it)."""
    text = _text(message.get("text", "") if isinstance(message, dict) else message)
    files = list(message.get("files") or []) if isinstance(message, dict) else []
    files = [f["path"] if isinstance(f, dict) else f for f in files]
    if predictor.task.name == "image-text-to-text":
        messages, images = [], []
        for turn in history or []:
            content = turn.get("content")
            paths = [c["path"] for c in content if isinstance(c, dict) and "path" in c] \
                if isinstance(content, (list, tuple)) else []
            if isinstance(content, dict) and "path" in content:
                paths = [content["path"]]
            if paths and turn.get("role") == "user":
                images += paths
                messages.append({"role": "user", "content": [{"type": "image"} for _ in paths]})
            elif _text(content):
                messages.append({"role": turn["role"], "content": [{"type": "text", "text": _text(content)}]})
        images += files
        messages.append({"role": "user", "content": [{"type": "image"} for _ in files] + [{"type": "text",
                                                                                            "text": text}]})
        return {"messages": _merge_turns(messages), "images": images}, text
    _, processor = predictor.load()[0]
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": t["role"], "content": _text(t.get("content"))} for t in history or []
                 if _text(t.get("content"))]
        turns.append({"role": "user", "content": text})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), text
    return text, text


def _merge_turns(messages: list[dict]) -> list[dict]:
    """Consecutive messages of one role as one (an image sent before its question is one user turn)."""
    out = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + m["content"]}
        else:
            out.append(m)
    return out


def build_app(predictor: Predictor, top_k: int | None = None):
    """The gr.Blocks app for the predictor's task (not launched)."""
    gr = _gradio()
    task = predictor.task
    runs = predictor.runs
    names = ", ".join(r.path.name for r in runs)
    title = f"hftl: {names}" + (f" (ensemble of {len(runs)})" if len(runs) > 1 else "")
    k = top_k or 5  # gr.Label's bars (the API returns the same ones)
    kind = task.folder_files if task.folder_files in ("image", "audio") else None  # else texts (Task.literal)

    def classify(value, labels_text=None):
        if value is None or value == "":
            raise gr.Error("Give an input first.")
        labels = [x.strip() for x in labels_text.split(",") if x.strip()] if labels_text else None
        try:
            shown = str(value)
            literal = task.literal(value) if kind is None else value
            row = predictor([literal], [shown], labels=labels)[0]
        except HftlError as e:
            raise gr.Error(str(e)) from None
        if task.name == "token-classification":
            return entities(literal, row)
        if task.generates:
            return row["generated_text"]
        return label_output(row)

    def chat(message, history):
        value, shown = chat_prompt(predictor, message, history)
        if not shown and not (isinstance(value, dict) and value["images"]):
            raise gr.Error("Type a message first.")
        try:
            return predictor([value], [shown])[0]["generated_text"]
        except HftlError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\n`{task.name}`" + (f" · labels: {', '.join(predictor.label_names)}"
                                                  if predictor.label_names and not task.open_labels else ""))
        with gr.Row():
            with gr.Column(scale=3):
                if task.name in CHAT:
                    gr.ChatInterface(chat, multimodal=task.name == "image-text-to-text", api_name="predict",
                                     fill_height=False)
                else:
                    inputs = []
                    if kind == "image":
                        inputs.append(gr.Image(type="filepath", label="Image", elem_id="hftl-input"))
                    elif kind == "audio":
                        inputs.append(gr.Audio(type="filepath", sources=["upload", "microphone"], label="Audio",
                                               elem_id="hftl-input"))
                    else:
                        inputs.append(gr.Textbox(label="Text", lines=3, elem_id="hftl-input"))
                    if task.open_labels:
                        inputs.append(gr.Textbox(label="Labels (comma-separated)", elem_id="hftl-labels",
                                                 value=", ".join(predictor.label_names)))
                    button = gr.Button("Predict", variant="primary", elem_id="hftl-predict")
                    if task.name == "token-classification":
                        output = gr.HighlightedText(label="Entities", elem_id="hftl-output")
                    elif task.generates:
                        output = gr.Textbox(label="Generated text", elem_id="hftl-output")
                    else:
                        output = gr.Label(num_top_classes=k, label="Prediction", elem_id="hftl-output")
                    button.click(classify, inputs=inputs, outputs=output, api_name="predict")
                    if kind is None:
                        inputs[0].submit(classify, inputs=inputs, outputs=output, api_visibility="private")
            with gr.Column(scale=2):
                for r in runs:
                    with gr.Accordion(f"Model card: {r.path.name}", open=len(runs) == 1):
                        gr.Markdown(card_summary(r.path))
    return app


def serve_app(run_dirs, top_k: int | None = None):
    """Load the run(s) once and build the app, queued but not launched (a Space's app.py launches it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    predictor = Predictor(run_dirs)
    predictor.load()
    app = build_app(predictor, top_k)
    app.queue(default_concurrency_limit=1)  # one model, one request at a time
    return app


def serve(run_dirs, host: str = "127.0.0.1", port: int = 7860, top_k: int | None = None, block: bool = True):
    """Load the run(s) once and serve the app; returns (app, url). `block=False` returns while it serves (tests)."""
    _check_port(host, port)  # before minutes of model loading
    app = serve_app(run_dirs, top_k)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                           ssr_mode=False, show_error=True, footer_links=["api"])
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    logger.warning("hftl serve: %s at %s (API: /predict; Ctrl-C stops it)", ", ".join(str(Path(d)) for d in dirs), url)
    print(f"hftl serve: {url}", flush=True)
    if block:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            app.block_thread()
        finally:
            signal.signal(signal.SIGTERM, previous)
            app.close()
    return app, url


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise HftlError(f"hftl serve cannot listen on {host}:{port} ({e.strerror or e}): another program holds the "
                        "port or the address is not this machine's; choose another with --port (or --host).") from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # gr.Blocks.block_thread closes the server on it
