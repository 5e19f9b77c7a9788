"""Compatibility proof for Ollama's API: the official `ollama` Python client
against `llmlab serve` (the `/api/*` routes beside `/v1/*`, one port, one
core service) on the real models."""
import json
import math
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import ollama
import pytest

MODEL = "qwen2.5-coder-0.5b"
BASE = "gemma-3-270m"
EMBED = "all-minilm-l6-v2"
GREEDY = {"temperature": 0, "seed": 1}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def ol(server):
    return ollama.Client(host=server, timeout=180)


def raw(server, method, path, body=None):
    """(status, parsed JSON body) of a request made without the client."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(server + path, method=method, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=180) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def loaded_names(ol):
    return [m.model for m in ol.ps().models]


def assert_figures(r):
    assert r.done is True
    assert RFC3339.match(r.created_at), r.created_at
    assert r.prompt_eval_count > 0 and r.eval_count > 0
    assert r.prompt_eval_duration > 0 and r.eval_duration > 0
    # Nanoseconds: the whole is at least its parts.
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration
    assert r.load_duration >= 0


def test_chat_whole_answer(ol):
    r = ol.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        options={**GREEDY, "num_predict": 16},
    )
    assert r.model == MODEL
    assert r.message.role == "assistant"
    assert "Paris" in r.message.content
    assert r.done_reason == "stop"
    assert_figures(r)


def test_chat_streams_by_default_and_matches_the_whole_answer(ol, server):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name two colors."}],
        options={**GREEDY, "num_predict": 20},
    )
    whole = ol.chat(**kwargs).message.content
    parts = list(ol.chat(stream=True, **kwargs))
    assert len(parts) > 2
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    assert "".join(p.message.content for p in parts) == whole
    assert parts[-1].done_reason in ("stop", "length")
    assert_figures(parts[-1])
    # Without "stream", Ollama's API streams: NDJSON lines.
    req = urllib.request.Request(
        server + "/api/chat", data=json.dumps({k: v for k, v in kwargs.items()}).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=180) as r:
        assert r.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.read().decode().splitlines()]
    assert lines[-1]["done"] is True and len(lines) > 2


def test_num_predict_ends_with_length_and_a_huge_num_ctx_is_harmless(ol):
    r = ol.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 100, separated by commas."}],
        options={**GREEDY, "num_predict": 5, "num_ctx": 1_000_000, "mirostat": 0},
    )
    assert r.done_reason == "length"
    assert r.eval_count == 5


def test_stop_option(ol):
    r = ol.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        options={**GREEDY, "num_predict": 60, "stop": ["5"]},
    )
    assert "4" in r.message.content and "5" not in r.message.content
    assert r.done_reason == "stop"


def test_generate_with_the_chat_template_and_raw(ol):
    r = ol.generate(model=MODEL, prompt="What is 2+2? Answer with the number only.", options={**GREEDY, "num_predict": 8})
    assert "4" in r.response
    assert r.done_reason == "stop"
    assert_figures(r)
    # raw: the base model continues the text as written.
    parts = list(ol.generate(model=BASE, prompt="The capital of France is", raw=True, stream=True,
                             options={**GREEDY, "num_predict": 6}))
    text = "".join(p.response for p in parts)
    assert text.strip() and parts[-1].done is True and parts[-1].eval_count > 0


def test_generate_refuses_suffix(ol):
    with pytest.raises(ollama.ResponseError) as e:
        ol.generate(model=MODEL, prompt="def f(", suffix="    return x")
    assert e.value.status_code == 400 and "suffix" in e.value.error


def test_embed_and_the_older_embeddings_endpoint(ol, server):
    r = ol.embed(model=EMBED, input=["hello world", "the cat sat on the mat"])
    assert len(r.embeddings) == 2 and all(len(v) == 384 for v in r.embeddings)
    for v in r.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert r.prompt_eval_count > 0 and r.total_duration > 0
    status, old = raw(server, "POST", "/api/embeddings", {"model": EMBED, "prompt": "hello world"})
    assert status == 200 and len(old["embedding"]) == 384
    norm = math.sqrt(sum(x * x for x in old["embedding"]))
    cosine = sum(a * b for a, b in zip(old["embedding"], r.embeddings[0])) / norm
    assert cosine > 0.9999, cosine


def test_list_show_and_version(ol, server):
    models = {m.model: m for m in ol.list().models}
    qwen = models[MODEL + ":latest"]
    assert qwen.size == 491_400_064
    assert qwen.digest == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert qwen.details.format == "gguf"
    assert qwen.details.family == "qwen2" and qwen.details.quantization_level == "Q4_K_M"
    assert qwen.modified_at.year >= 2024
    assert models[EMBED + ":latest"].details.format == "safetensors"

    shown = ol.show(MODEL)
    # Its chat template writes <tool_call> blocks: the engine parses them.
    assert shown.capabilities == ["completion", "tools"]
    assert "<tool_call>" in shown.template
    assert shown.details.format == "gguf"
    assert shown.modelinfo["llmlab.context_length"] > 0
    assert ol.show(EMBED + ":latest").capabilities == ["embedding"]

    status, version = raw(server, "GET", "/api/version")
    assert status == 200 and re.match(r"^\d+\.\d+\.\d+$", version["version"])


def test_ps_lists_the_loaded_model(ol):
    ol.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={**GREEDY, "num_predict": 2})
    running = {m.model: m for m in ol.ps().models}
    qwen = running[MODEL + ":latest"]
    assert qwen.size > 491_400_064  # weights plus the KV cache
    assert qwen.size_vram == 0
    assert qwen.expires_at > datetime.now(timezone.utc)
    assert qwen.context_length > 0


def test_tool_call_with_object_arguments_and_the_result_round_trip(ol):
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    r = ol.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], options={**GREEDY, "num_predict": 60})
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict)
    assert call.function.arguments["city"] == "Paris"
    # Streamed, the call arrives whole in one line.
    parts = list(ol.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True,
                         options={**GREEDY, "num_predict": 60}))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.arguments == call.function.arguments
    # The client's own message goes back, then the tool's answer by name.
    messages.append(r.message)
    messages.append({"role": "tool", "content": '{"temperature_c": 21, "sky": "sunny"}', "tool_name": "get_weather"})
    second = ol.chat(model=MODEL, messages=messages, options={**GREEDY, "num_predict": 40})
    answer = second.message.content
    assert "21" in answer or "sunny" in answer.lower(), answer


def test_format_json_schema_and_json(ol):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    r = ol.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        format=schema,
        options={**GREEDY, "num_predict": 80},
    )
    person = json.loads(r.message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    g = ol.generate(model=MODEL, prompt="List three fruits as JSON.", format="json", options={**GREEDY, "num_predict": 80})
    assert isinstance(json.loads(g.response), dict)


def test_empty_prompt_loads_and_keep_alive_zero_unloads(ol):
    loaded = ol.generate(model=BASE)
    assert loaded.done is True and loaded.done_reason == "load" and loaded.response == ""
    assert BASE + ":latest" in loaded_names(ol)
    unloaded = ol.generate(model=BASE, keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert BASE + ":latest" not in loaded_names(ol)
    # A generation with keep_alive 0 unloads its model once it is over.
    ol.generate(model=BASE, prompt="Hello", raw=True, keep_alive=0, options={"num_predict": 2})
    deadline = time.time() + 15
    while BASE + ":latest" in loaded_names(ol):
        assert time.time() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.25)


def test_unknown_model_is_a_404_in_ollamas_words(ol):
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert e.value.error == 'model "no-such-model" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as e:
        list(ol.generate(model="no-such-model:7b", prompt="hi", stream=True))
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        ol.show("no-such-model")
    assert e.value.status_code == 404


def test_bad_requests_are_400_with_a_string_error(ol, server):
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"temperature": -1})
    assert e.value.status_code == 400 and "temperature" in e.value.error
    status, body = raw(server, "POST", "/api/chat", b'{"model": "qwen2.5-coder-0.5b", "messages": [')
    assert status == 400 and isinstance(body["error"], str)
    # Errors the shared layers answer keep Ollama's shape on /api/*.
    status, body = raw(server, "GET", "/api/no-such-route")
    assert status == 404 and isinstance(body["error"], str)
    status, body = raw(server, "GET", "/api/chat")
    assert status == 405 and isinstance(body["error"], str)


def test_pull_of_a_present_model_streams_statuses_to_success(ol):
    statuses = [p.status for p in ol.pull(EMBED, stream=True)]
    assert statuses[0] == "pulling manifest"
    assert any("present and verified" in s for s in statuses), statuses
    assert statuses[-1] == "success"
    assert ol.pull(EMBED + ":latest").status == "success"


def test_delete_is_refused(ol):
    with pytest.raises(ollama.ResponseError) as e:
        ol.delete(MODEL)
    assert e.value.status_code == 403 and "disabled" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        ol.delete("no-such-model")
    assert e.value.status_code == 404
    assert MODEL + ":latest" in {m.model for m in ol.list().models}
