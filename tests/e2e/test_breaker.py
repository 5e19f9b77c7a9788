"""A corrupt model file on a real server: its loads fail, its circuit breaker
opens and answers fast, and the server keeps serving the other model."""
import json
import time
import urllib.error
import urllib.request

import pytest

from conftest import Server


@pytest.fixture(scope="module")
def corrupt_server(tmp_path_factory):
    corrupt = tmp_path_factory.mktemp("models") / "corrupt.gguf"
    # A GGUF magic followed by garbage: llama.cpp must refuse it, not crash.
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    import os

    os.environ["LLMLAB_MODEL__GEMMA_3_270M__PATH"] = str(corrupt)
    try:
        running = Server()
    finally:
        del os.environ["LLMLAB_MODEL__GEMMA_3_270M__PATH"]
    running.wait_healthy()
    yield running
    running.stop()


def complete(base, model):
    body = json.dumps({"model": model, "prompt": "The sky is", "max_tokens": 4, "temperature": 0}).encode()
    req = urllib.request.Request(
        base + "/v1/completions", method="POST", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def test_a_corrupt_model_opens_its_breaker_and_the_server_keeps_serving(corrupt_server):
    base = corrupt_server.base
    for _ in range(3):
        status, body, _ = complete(base, "gemma-3-270m")
        assert status == 503, body
        assert "not a readable GGUF file" in body["error"]["message"], body
    started = time.time()
    status, body, headers = complete(base, "gemma-3-270m")
    assert status == 503 and "circuit breaker is open" in body["error"]["message"], body
    assert int(headers["Retry-After"]) > 0
    assert time.time() - started < 1.0, "an open breaker answers at once"

    with urllib.request.urlopen(base + "/v1/models/gemma-3-270m", timeout=10) as r:
        model = json.loads(r.read())
    assert model["circuit"] == "open" and model["consecutive_failures"] == 3, model

    status, body, _ = complete(base, "qwen2.5-coder-0.5b")
    assert status == 200 and body["usage"]["completion_tokens"] > 0, body
    assert corrupt_server.proc.poll() is None, "the server is still running"
