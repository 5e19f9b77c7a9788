"""The web playground at `/` in a real headless Chromium (Debian's
`chromium`, driven by Playwright's Python package; no browser download)
against a real `llmlab serve`: a streamed chat, stopping a long answer,
switching models, the embeddings similarity table, the models panel, the
API key dialog, a phone-sized screen, and, when their fixtures exist, image
generation and an image attached for a vision model.

The page's own Content-Security-Policy forbids eval, so waits poll from
Python or use Playwright's locators (which run outside the page's policy)
instead of `wait_for_function`. Screenshots go to $LLMLAB_ARTIFACTS_DIR, else
tests/e2e/artifacts/.
"""
import base64
import json
import os
import pathlib
import struct
import tempfile
import time
import urllib.request
import zlib

import pytest

from conftest import ROOT, Server

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHAT = "qwen2.5-coder-0.5b"
OTHER_CHAT = "gemma-3-270m"
EMBEDDING = "all-minilm-l6-v2"
IMAGE_MODEL, IMAGE_FIXTURE = "sd-tiny", "test-sd15-tiny"
PROJECTOR = "test-mmproj-mlp-896.gguf"
KEY = "playground-key"
# A 0.5B model on a small CPU: generous, as loads and prompts share the machine.
ANSWER_TIMEOUT_MS = 120_000


def models_dir() -> pathlib.Path:
    if os.environ.get("LLMLAB_MODELS_DIR"):
        return pathlib.Path(os.environ["LLMLAB_MODELS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return pathlib.Path(cache) / "llmlab" / "models"


def artifacts() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("LLMLAB_ARTIFACTS_DIR") or ROOT / "tests" / "e2e" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing(what: str):
    """A fixture or tool this test needs is absent: CI fails, a laptop skips."""
    if os.environ.get("LLMLAB_REQUIRE_ALL") == "1":
        pytest.fail(what)
    pytest.skip(what)


def png(width, height) -> bytes:
    """A small RGB gradient PNG, written by hand (no imaging library needed)."""
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 8 % 256, y * 8 % 256, 90))
                    for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def poll(condition, timeout=30.0, every=0.05, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} missing: apt-get install chromium (scripts/setup.sh does)")
    with playwright_api.sync_playwright() as p:
        running = p.chromium.launch(executable_path=CHROMIUM)
        yield running
        running.close()


class Watched:
    """A page whose script errors and CSP violations fail the test."""

    def __init__(self, browser, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.problems = []
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", self._console)

    def _console(self, message):
        # The browser logs every error status; the tests that cause one
        # (401 where the key is asked for, 400 for a model without a chat
        # template) check what the page shows instead.
        if message.type == "error" and not any(f"status of {s}" in message.text for s in (400, 401)):
            self.problems.append(f"console: {message.text}")

    def close(self):
        self.context.close()
        assert not self.problems, self.problems


def open_page(browser, base, **context):
    watched = Watched(browser, **context)
    watched.page.goto(base + "/")
    watched.page.wait_for_selector(f"#chat-model option[value='{CHAT}']", state="attached")
    return watched


@pytest.fixture
def page(browser, server):
    watched = open_page(browser, server, viewport={"width": 1280, "height": 900})
    yield watched.page
    watched.close()


def open_settings(page):
    if page.get_attribute("#chat-settings", "open") is None:
        page.click("#chat-settings summary")


def answer(page, n):
    return page.locator("article.assistant").nth(n)


def answer_text(page, n):
    return answer(page, n).locator(".content").text_content()


def send(page, text, max_tokens, temperature="0"):
    open_settings(page)
    page.fill("#chat-max-tokens", str(max_tokens))
    page.fill("#chat-temperature", temperature)
    page.fill("#chat-input", text)
    page.click("#chat-send")


def expect_ready(page):
    expect(page.locator("#chat-send")).to_be_visible()
    expect(page.locator("#chat-send")).to_be_enabled()
    expect(page.locator("#chat-stop")).to_be_hidden()


def model_status(base, model, key=None):
    request = urllib.request.Request(base + f"/v1/models/{model}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def test_chat_streams_a_growing_answer(page):
    assert page.locator("#chat-model").input_value() == CHAT
    send(page, "Count from 1 to 20, separated by commas.", 80)
    lengths = []

    def finished():
        lengths.append(len(answer_text(page, 0)))
        return answer(page, 0).get_attribute("data-state") in ("done", "error")

    poll(finished, timeout=ANSWER_TIMEOUT_MS / 1000, every=0.02, what="the answer")
    assert answer(page, 0).get_attribute("data-state") == "done", answer(page, 0).text_content()
    text = answer_text(page, 0)
    assert "1" in text and "10" in text, text
    grown = sorted(set(n for n in lengths if n > 0))
    assert len(grown) >= 3, f"the text should appear piece by piece: {lengths}"
    assert lengths == sorted(lengths), "the text only grows"
    meta = answer(page, 0).locator(".meta").text_content()
    assert CHAT in meta and "tokens" in meta, meta
    expect_ready(page)
    page.screenshot(path=str(artifacts() / "playground-chat.png"))


def test_stop_ends_a_long_answer_and_the_server_cancels_it(page, server):
    send(page, "Write a very long story about the sea, at least 3000 words.", 3000, temperature="0.7")
    expect(page.locator("#chat-stop")).to_be_visible()
    poll(lambda: len(answer_text(page, 0)) > 40, timeout=ANSWER_TIMEOUT_MS / 1000, what="streaming to start")
    page.click("#chat-stop")
    expect(answer(page, 0)).to_have_attribute("data-state", "stopped")
    expect_ready(page)
    stopped_at = len(answer_text(page, 0))
    time.sleep(1.5)
    assert len(answer_text(page, 0)) == stopped_at, "the text kept growing after stop"
    # The server let the generation go with its client.
    # (It notices at its next write; a loaded 2-core machine can be slow.)
    poll(lambda: model_status(server, CHAT)["active_requests"] == 0, timeout=30, every=0.25,
         what="the server to end the stopped request")
    # The conversation goes on: the partial answer stays in it.
    send(page, "Now say only: OK", 8)
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert answer_text(page, 1).strip()


def test_switching_models_answers_with_the_other_one(page):
    page.select_option("#chat-model", OTHER_CHAT)
    # gemma-3-270m is a base model without a chat template: the page says
    # so, and its plain-completion switch gets an answer from it.
    send(page, "Say hello.", 8)
    expect(answer(page, 0)).to_have_attribute("data-state", "error", timeout=ANSWER_TIMEOUT_MS)
    assert "chat template" in answer(page, 0).text_content()
    page.check("#chat-raw")
    send(page, "The capital of France is", 12)
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert answer_text(page, 1).strip()
    assert answer(page, 1).locator(".meta").text_content().startswith(OTHER_CHAT)
    # A text-only model offers no image button.
    expect(page.locator("#chat-attach")).to_be_hidden()


def test_embeddings_similarity_table(page):
    page.click("[data-tab=embeddings]")
    page.select_option("#embed-model", EMBEDDING)
    page.fill("#embed-texts", "A cat sat on the mat.\nA kitten was sleeping on the rug.\nStock prices fell sharply today.")
    page.fill("#embed-query", "a small pet")
    page.click("#embed-go")
    expect(page.locator("#embed-rank tbody tr")).to_have_count(3, timeout=ANSWER_TIMEOUT_MS)
    cells = page.locator("#embed-matrix tbody td.score")
    expect(cells).to_have_count(9)
    score = [[float(cells.nth(row * 3 + col).get_attribute("data-score")) for col in range(3)] for row in range(3)]
    for i in range(3):
        assert abs(score[i][i] - 1) < 1e-3, score
        assert abs(score[0][i] - score[i][0]) < 1e-4, score
    assert score[0][1] > score[0][2] + 0.1, f"cat~kitten should beat cat~stocks: {score}"
    first = page.locator("#embed-rank tbody tr").first.text_content()
    assert "Stock" not in first, first
    page.screenshot(path=str(artifacts() / "playground-embeddings.png"))


def test_models_panel_unloads_and_loads(page):
    page.click("[data-tab=models]")
    row = page.locator(f"#models-table tr[data-model='{EMBEDDING}']")
    expect(page.locator(f"#models-table tr[data-model='{CHAT}']")).to_have_attribute("data-state", "loaded")
    button = row.locator("button")
    if row.get_attribute("data-state") != "loaded":
        button.click()
        expect(row).to_have_attribute("data-state", "loaded", timeout=ANSWER_TIMEOUT_MS)
    assert row.locator("td.state").text_content() == "loaded"
    assert "MiB" in row.locator("td[data-label=Memory]").text_content()
    row.locator("button").click()
    expect(row).to_have_attribute("data-state", "unloaded", timeout=30_000)
    row.locator("button").click()
    expect(row).to_have_attribute("data-state", "loaded", timeout=ANSWER_TIMEOUT_MS)


def test_phone_screen_has_no_sideways_scroll(browser, server):
    watched = open_page(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                        device_scale_factor=2)
    phone = watched.page
    for tab in ("chat", "images", "embeddings", "models"):
        phone.click(f"[data-tab={tab}]")
        expect(phone.locator(f"#{tab}")).to_be_visible()
        if tab == "models":
            phone.wait_for_selector("#models-table tbody tr")
        width, viewport = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width <= viewport, f"{tab}: {width} px wide on a {viewport} px screen"
    phone.click("[data-tab=chat]")
    send(phone, "Say hi.", 8)
    expect(answer(phone, 0)).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    width, viewport = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= viewport
    expect(phone.locator("#chat-send")).to_be_in_viewport()
    phone.screenshot(path=str(artifacts() / "playground-phone.png"))
    watched.close()


# A second server with an API key, the tiny image model when its fixture
# exists, and a random-weight projector on the default model when it exists.
@pytest.fixture(scope="module")
def keyed_server():
    registry = (ROOT / "models" / "models.yaml").read_text()
    has_images = (models_dir() / IMAGE_FIXTURE / "model_index.json").is_file()
    if has_images:
        registry += f"\n  - {{id: {IMAGE_MODEL}, kind: image, backend: candle, path: {IMAGE_FIXTURE}}}\n"
    path = pathlib.Path(tempfile.mkdtemp(prefix="llmlab-playground-")) / "models.yaml"
    path.write_text(registry)
    has_vision = (models_dir() / PROJECTOR).is_file()
    env = {"LLMLAB_MODEL__QWEN2_5_CODER_0_5B__MMPROJ": PROJECTOR} if has_vision else {}
    running = Server("--no-preload", "--api-key", KEY, registry=str(path), env=env)
    running.has_images, running.has_vision = has_images, has_vision
    running.wait_healthy()
    yield running
    running.stop()


def open_keyed(browser, base):
    """Loads the page, which asks for the key (the model list answers 401), and gives it."""
    watched = Watched(browser, viewport={"width": 1280, "height": 900})
    page = watched.page
    page.goto(base + "/")
    expect(page.locator("#key-dialog")).to_be_visible()
    assert "API key" in page.locator("#key-reason").text_content()
    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector(f"#chat-model option[value='{CHAT}']", state="attached")
    return watched


def test_the_page_asks_for_the_key_and_keeps_it(browser, keyed_server):
    with urllib.request.urlopen(keyed_server.base + "/", timeout=10) as r:
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in r.headers["content-security-policy"]
    watched = open_keyed(browser, keyed_server.base)
    page = watched.page
    assert page.evaluate("localStorage.getItem('llmlab.apiKey')") == KEY
    expect(page.locator("#key-button")).to_have_text("Key ✓")
    # A reload sends the kept key without asking.
    page.reload()
    page.wait_for_selector(f"#chat-model option[value='{CHAT}']", state="attached")
    expect(page.locator("#key-dialog")).to_be_hidden()
    watched.close()


def test_image_generation_shows_the_picture(browser, keyed_server):
    if not keyed_server.has_images:
        missing(f"{IMAGE_FIXTURE} missing: run scripts/make-diffusion-fixture.py")
    watched = open_keyed(browser, keyed_server.base)
    page = watched.page
    page.click("[data-tab=images]")
    page.select_option("#images-model", IMAGE_MODEL)
    page.fill("#images-prompt", "a lighthouse at dusk")
    page.select_option("#images-size", "64x64")
    page.fill("#images-steps", "2")
    page.fill("#images-seed", "7")
    page.fill("#images-partials", "1")
    page.click("#images-go")
    card = page.locator(".card").first
    expect(card).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    source = card.locator("img").get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "64x64" in card.locator("figcaption").text_content()
    assert card.locator("img").evaluate("img => img.naturalWidth") == 64
    expect(page.locator("#images-go")).to_be_visible()
    page.screenshot(path=str(artifacts() / "playground-image.png"))
    watched.close()


def test_an_image_goes_to_a_vision_model(browser, keyed_server, tmp_path):
    if not keyed_server.has_vision:
        missing(f"{PROJECTOR} missing: run scripts/make-vision-fixtures.py")
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(32, 24))
    watched = open_keyed(browser, keyed_server.base)
    page = watched.page
    page.select_option("#chat-model", CHAT)
    expect(page.locator("#chat-attach")).to_be_visible()
    page.set_input_files("#chat-file", str(picture))
    expect(page.locator("#chat-attachment")).to_be_visible()
    send(page, "What is in this picture?", 8)
    expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("article.user img.thumb").get_attribute("src").startswith("data:image/png")
    # The image reached the model: the prompt holds the projector's cells.
    assert model_status(keyed_server.base, CHAT, KEY)["input_modalities"] == ["text", "image"]
    watched.close()
