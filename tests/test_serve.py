"""`hftl serve`: the web app gives what `hftl predict` gives, for every task family, through its `/predict` API
and in a real browser (headless Chromium driven by selenium); it binds to loopback and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hftl
from conftest import child_env
from test_causal_lm import lm_recipe  # noqa: F401 (fixtures)
from test_seq2seq import s2s_recipe  # noqa: F401
from test_token_classification import ner_bert_dir, ner_files, ner_recipe  # noqa: F401
from test_image_text_to_text import colours, vlm_recipe, vlms  # noqa: F401
from test_zero_shot import dual_encoders, zs_recipe  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# like the zoo's sources: skipped where the Debian packages are missing, except in CI (HFTL_REQUIRE_ZOO=1)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and shutil.which("chromedriver")) and os.environ.get("HFTL_REQUIRE_ZOO") != "1",
    reason="needs headless Chromium: apt-get install chromium chromium-driver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """hftl.serve(block=False) on a free port, with a gradio_client Client; closed at exit."""

    def __init__(self, run_dirs):
        from gradio_client import Client

        self.app, self.url = hftl.serve(run_dirs, port=free_port(), block=False)
        self.client = Client(self.url, verbose=False)

    def predict(self, *args):
        return self.client.predict(*args, api_name="/predict")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.app.close()


def _label(shown: dict) -> tuple[str, dict]:
    """gr.Label's value through the API: (top label, {label: confidence})."""
    return shown["label"], {c["label"]: c["confidence"] for c in shown["confidences"]}


def _same_as_predict(shown: dict, row: dict) -> None:
    top, scores = _label(shown)
    assert top == row["label"]
    assert scores == pytest.approx(row["scores"], abs=1e-6)


# ----------------------------------------------------------------------------------------------- the API


def test_text_image_and_ensemble_api_give_hftl_predict(text_recipe, image_recipe, image_dirs, tmp_path):
    from gradio_client import handle_file

    a = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "a")}))
    b = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "b")}, seed=1))
    text = "the movie was good and happy"
    with Served(a.output_dir) as s:
        _same_as_predict(s.predict(text), hftl.predict(a.output_dir, [text])[0])
        assert s.url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
    with Served([a.output_dir, b.output_dir]) as s:  # several run dirs: their ensemble
        _same_as_predict(s.predict(text), hftl.predict([a.output_dir, b.output_dir], [text])[0])
    img = hftl.train(image_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "img")}))
    png = str(sorted(Path(image_dirs[1]).rglob("*.png"))[0])
    with Served(img.output_dir) as s:
        _same_as_predict(s.predict(handle_file(png)), hftl.predict(img.output_dir, [png])[0])


def test_adapter_ner_and_audio_api(text_recipe, ner_recipe, w2v_dir, audio_dirs, tmp_path):  # noqa: F811
    from gradio_client import handle_file

    from test_audio import audio_recipe

    lora = hftl.train(text_recipe(peft={"method": "lora", "r": 4}, training={"num_train_epochs": 1}))
    with Served(lora.output_dir) as s:
        _same_as_predict(s.predict("so sad and awful"), hftl.predict(lora.output_dir, ["so sad and awful"])[0])
    ner = hftl.train(ner_recipe(training={"num_train_epochs": 2, "output_dir": str(tmp_path / "ner")}))
    text = "alice jones visited berlin today"
    [row] = hftl.predict(ner.output_dir, [text])
    with Served(ner.output_dir) as s:
        shown = s.predict(text)
    # HighlightedText: each word with its entity type (BIO prefix dropped), None for O
    tokens = [(d["token"].strip(), d["class_or_confidence"]) for d in shown]
    assert [t for t, _ in tokens] == text.split()
    assert [c for _, c in tokens] == [None if t == "O" else t.split("-", 1)[1] for t in row["tags"]]
    audio = hftl.train(audio_recipe(w2v_dir, audio_dirs, tmp_path, training={"num_train_epochs": 1,
                                                                            "output_dir": str(tmp_path / "audio")}))
    wav = str(sorted(Path(audio_dirs[1]).rglob("*.wav"))[0])
    with Served(audio.output_dir) as s:
        _same_as_predict(s.predict(handle_file(wav)), hftl.predict(audio.output_dir, [wav], batch_size=1)[0])


def test_zero_shot_labels_box(dual_encoders, image_dirs, tmp_path):  # noqa: F811
    from gradio_client import handle_file

    r = hftl.train(zs_recipe(dual_encoders["clip"], image_dirs, tmp_path / "out", training={"num_train_epochs": 0}))
    png = str(sorted(Path(image_dirs[1]).rglob("*.png"))[0])
    with Served(r.output_dir) as s:
        shown = s.predict(handle_file(png), "red, green, blue")
    _same_as_predict(shown, hftl.predict(r.output_dir, [png], labels=["red", "green", "blue"])[0])


def test_chat_and_seq2seq_api_generate_what_predict_generates(lm_recipe, s2s_recipe, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    from hftl.runs.predict import Predictor
    from hftl.runs.serve import chat_prompt

    r = hftl.train(lm_recipe(train="chat", data={"max_seq_length": 128}, training={"num_train_epochs": 1},
                             generation={"max_new_tokens": 5, "temperature": 0}))
    tok = AutoTokenizer.from_pretrained(r.output_dir)
    assert tok.chat_template  # the chat renders the conversation with it
    with Served(r.output_dir) as s:
        reply = s.predict("what colour is the sky ?")
    # the conversation in the tokenizer's chat template, the assistant's turn to speak
    prompt, shown = chat_prompt(Predictor(r.output_dir), "what colour is the sky ?", [])
    assert shown == "what colour is the sky ?"
    assert prompt == tok.apply_chat_template([{"role": "user", "content": shown}], tokenize=False,
                                             add_generation_prompt=True)
    assert reply == hftl.predict(r.output_dir, [prompt])[0]["generated_text"]
    t5 = hftl.train(s2s_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "t5")},
                               generation={"max_new_tokens": 5, "temperature": 0}))
    with Served(t5.output_dir) as s:
        assert s.predict("the cat") == hftl.predict(t5.output_dir, ["the cat"])[0]["generated_text"]


def test_vision_language_chat_takes_the_image(vlms, colours, tmp_path):  # noqa: F811
    from gradio_client import handle_file

    from lm_assets import write_jsonl

    r = hftl.train(vlm_recipe(vlms["llava"], colours, tmp_path / "vlm", training={"num_train_epochs": 2}))
    row = json.loads(colours["validation"].read_text().splitlines()[0])
    image = str((colours["validation"].parent / row["images"][0]).resolve())
    question = "what colour is this ?"
    with Served(r.output_dir) as s:
        reply = s.predict({"text": question, "files": [handle_file(image)]})
    # the same turn as `hftl predict` takes it from a file: the image part, then the text
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": question}]}], "images": [image]}])
    assert reply == hftl.predict(r.output_dir, [str(prompts)])[0]["generated_text"]


# ----------------------------------------------------------------------------------------------- the browser


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = shutil.which("chromedriver")
    assert CHROMIUM and driver, "headless Chromium is needed: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def _find(browser, css: str, timeout: float = 60):
    """The element, once the page's JavaScript has drawn it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _shown_label(browser, timeout: float = 60) -> str:
    """The top label the page's gr.Label shows, once the prediction is in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def top(b):
        heads = b.find_elements(By.CSS_SELECTOR, "#hftl-output h2, #hftl-output .output-class")
        text = heads[0].text.strip() if heads else ""
        return text or False

    return WebDriverWait(browser, timeout).until(top)


def _start_cli(run_dir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hftl.cli", "serve", str(run_dir), "--port", str(port)],
                            env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("hftl serve: http"):
            return proc
        if not line and proc.poll() is not None:
            raise AssertionError(f"hftl serve exited with {proc.returncode}")
    proc.kill()
    raise AssertionError("hftl serve did not start in 180 s")


@pytest.mark.slow
@needs_chromium
def test_a_person_in_a_browser_gets_hftl_predicts_label(text_recipe, image_recipe, image_dirs, tmp_path):
    from selenium.webdriver.common.by import By

    text_run = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "text")}))
    image_run = hftl.train(image_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "image")}))
    png = str(sorted(Path(image_dirs[1]).rglob("*.png"))[0])
    port = free_port()
    proc = _start_cli(image_run.output_dir, port)  # the CLI, as a user starts it
    browser = _browser()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        _find(browser, "#hftl-input input[type=file]").send_keys(png)
        _find(browser, "#hftl-input img")  # the upload is in before the click
        browser.find_element(By.CSS_SELECTOR, "#hftl-predict").click()
        assert _shown_label(browser) == hftl.predict(image_run.output_dir, [png])[0]["label"]
        browser.save_screenshot(str(tmp_path / "image.png"))
        with Served(text_run.output_dir) as s:
            text = "awful sad day"
            browser.get(s.url)
            _find(browser, "#hftl-input textarea").send_keys(text)
            browser.find_element(By.CSS_SELECTOR, "#hftl-predict").click()
            assert _shown_label(browser) == hftl.predict(text_run.output_dir, [text])[0]["label"]
            browser.save_screenshot(str(tmp_path / "text.png"))
    finally:
        browser.quit()
        proc.send_signal(signal.SIGTERM)  # stops cleanly
        try:
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
    assert code == 0
    assert (tmp_path / "image.png").stat().st_size > 10_000 and (tmp_path / "text.png").stat().st_size > 10_000


def test_serve_needs_a_run_dir_and_a_free_port(tmp_path):
    from hftl.errors import HftlError

    with pytest.raises(HftlError, match="not an hftl output dir"):
        hftl.serve(tmp_path, block=False, port=free_port())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HftlError, match=f"cannot listen on 127.0.0.1:{port}.*--port") as err:
            hftl.serve(tmp_path, block=False, port=port)
    assert "\n" not in str(err.value)
