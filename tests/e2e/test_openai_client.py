"""Compatibility proof: the official `openai` package against `llmlab serve`
on the real default model (Qwen2.5-Coder-0.5B-Instruct)."""
import json

import openai
import pytest

MODEL = "qwen2.5-coder-0.5b"
GREEDY = dict(temperature=0, seed=1)


def test_non_stream_chat(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France? One word."}], max_tokens=16, **GREEDY
    )
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_chat_with_usage_chunk(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 5."}],
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "1" in text and "5" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1]
    assert usage.choices == []
    assert usage.usage.completion_tokens > 0


def test_stream_matches_non_stream(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Name two colors."}], max_tokens=20, **GREEDY)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole


def test_stop_string(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}], max_tokens=60, stop=["5"], **GREEDY
    )
    text = r.choices[0].message.content
    assert "5" not in text and "4" in text
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long essay about the sea."}], max_tokens=5, **GREEDY
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_text_completion(client):
    r = client.completions.create(model=MODEL, prompt="def fibonacci(n):", max_tokens=12, **GREEDY)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("length", "stop")


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(e.value)


def test_bad_parameter_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3)
    assert e.value.body["param"] == "n"


def test_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=5, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_call(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris right now?"}], tools=[WEATHER_TOOL], max_tokens=60, **GREEDY
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"


def test_streamed_tool_call_is_reassembled(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris right now?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=60,
        stream=True,
        **GREEDY,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments)["city"] == "Paris"
    assert finish == "tool_calls"


def test_tool_result_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=60, **GREEDY)
    call = first.choices[0].message.tool_calls[0]
    # The SDK's own message object (content None) goes back as the assistant turn.
    messages.append(first.choices[0].message.model_dump(exclude_none=False))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "sunny"}'})
    # Tools stay declared but may not be called again (the 0.5B model would
    # happily call the same tool forever).
    second = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=40, **GREEDY
    )
    answer = second.choices[0].message.content or ""
    assert second.choices[0].finish_reason in ("stop", "length")
    assert "21" in answer or "sunny" in answer.lower(), answer


def test_admin_load_unload_and_ps(server):
    import subprocess
    import urllib.request

    from conftest import _binary

    def post(path):
        req = urllib.request.Request(server + path, method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    assert post("/v1/models/gemma-3-270m/load")["state"] == "loaded"
    ps = subprocess.run([_binary(), "ps", "--url", server + "/v1"], capture_output=True, text=True, check=True).stdout
    assert "gemma-3-270m" in ps and "loaded" in ps
    assert post("/v1/models/gemma-3-270m/unload")["state"] == "unloaded"
    ps = subprocess.run([_binary(), "ps", "--url", server + "/v1"], capture_output=True, text=True, check=True).stdout
    assert "gemma-3-270m" not in ps
