"""Malformed and hostile requests for the adversarial suite, door by door.

Each HTTP case is (name, method, path, headers, body, expected status,
expected `param` or None). Bodies are bytes, str or JSON-able values. Every
case must be refused before it reaches the engine: none of them may cost a
model anything, so none may count against its circuit breaker.
"""
import json

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"


def chat(**fields):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    body.update(fields)
    return body


def schema(s):
    return chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": s}})


def forced_tool(parameters):
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    return chat(tools=[tool], tool_choice="required")


JSON = {"content-type": "application/json"}

HTTP_CASES = [
    # Bodies that are not the request they claim to be.
    ("not json", "POST", CHAT, JSON, b"{nope", 400, None),
    ("trailing garbage", "POST", CHAT, JSON, json.dumps(chat()) + " garbage", 400, None),
    ("two json values", "POST", CHAT, JSON, json.dumps(chat()) + json.dumps(chat()), 400, None),
    ("invalid utf-8", "POST", CHAT, JSON, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("empty body", "POST", CHAT, JSON, b"", 400, None),
    ("json array", "POST", CHAT, JSON, [1, 2], 400, None),
    ("deep nesting", "POST", CHAT, JSON, "[" * 100_000 + "]" * 100_000, 400, None),
    ("nan", "POST", CHAT, JSON, '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None),
    ("body over the limit", "POST", CHAT, JSON, b"x" * (9 * 1024 * 1024), 413, None),
    # Fields out of range or of the wrong type.
    ("no messages", "POST", CHAT, JSON, {"messages": []}, 400, "messages"),
    ("messages not a list", "POST", CHAT, JSON, {"messages": "hi"}, 400, "messages"),
    ("unknown role", "POST", CHAT, JSON, {"messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ("content a number", "POST", CHAT, JSON, {"messages": [{"role": "user", "content": 5}]}, 400, None),
    ("temperature 500", "POST", CHAT, JSON, chat(temperature=500), 400, "temperature"),
    ("top_p 0", "POST", CHAT, JSON, chat(top_p=0), 400, "top_p"),
    ("max_tokens 0", "POST", CHAT, JSON, chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens negative", "POST", CHAT, JSON, chat(max_tokens=-5), 400, None),
    ("seed beyond 32 bits", "POST", CHAT, JSON, chat(seed=4294967301), 400, "seed"),
    ("seed that means random", "POST", CHAT, JSON, chat(seed=4294967295), 400, "seed"),
    ("seed negative", "POST", CHAT, JSON, chat(seed=-1), 400, None),
    ("top_logprobs 50", "POST", CHAT, JSON, chat(logprobs=True, top_logprobs=50), 400, None),
    ("too many stops", "POST", CHAT, JSON, chat(stop=[str(i) for i in range(20)]), 400, "stop"),
    ("empty stop", "POST", CHAT, JSON, chat(stop=[""]), 400, "stop"),
    ("bad keep_alive", "POST", CHAT, JSON, chat(keep_alive="forever-ish"), 400, "keep_alive"),
    ("bad guards", "POST", CHAT, JSON, chat(guards={"deadlines": {"total_secs": -1}}), 400, None),
    ("unknown model", "POST", CHAT, JSON, chat(model="no-such-model"), 404, None),
    ("huge model id", "POST", CHAT, JSON, chat(model="m" * 10_000), 404, None),
    ("tool without name", "POST", CHAT, JSON,
     chat(tools=[{"type": "function", "function": {"name": ""}}]), 400, None),
    ("tool_choice unknown tool", "POST", CHAT, JSON,
     chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "g"}}),
     400, "tool_choice"),
    ("tool_choice nonsense", "POST", CHAT, JSON, chat(tool_choice="sometimes"), 400, "tool_choice"),
    ("response_format unknown", "POST", CHAT, JSON, chat(response_format={"type": "yaml"}), 400, None),
    # Schemas that cannot become a grammar, or only a ruinous one.
    ("schema self-cycle", "POST", CHAT, JSON,
     schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), 400, "response_format"),
    ("schema two-way cycle", "POST", CHAT, JSON,
     schema({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
     400, "response_format"),
    ("schema dangling ref", "POST", CHAT, JSON, schema({"$ref": "#/$defs/missing"}), 400, "response_format"),
    ("schema remote ref", "POST", CHAT, JSON, schema({"$ref": "https://example.com/s.json"}), 400, "response_format"),
    ("schema minLength 5000", "POST", CHAT, JSON, schema({"type": "string", "minLength": 5000}), 400, "response_format"),
    ("schema minItems 1e6", "POST", CHAT, JSON, schema({"type": "array", "minItems": 1_000_000}), 400, "response_format"),
    ("schema enum 10000", "POST", CHAT, JSON, schema({"enum": [f"v{i}" for i in range(10_000)]}), 400, "response_format"),
    ("schema bad pattern", "POST", CHAT, JSON, schema({"type": "string", "pattern": "^(ab$"}), 400, "response_format"),
    ("schema minimum over maximum", "POST", CHAT, JSON,
     schema({"type": "integer", "minimum": 10, "maximum": 1}), 400, "response_format"),
    ("schema minLength over maxLength", "POST", CHAT, JSON,
     schema({"type": "string", "minLength": 10, "maxLength": 2}), 400, "response_format"),
    ("forced tool with a cyclic schema", "POST", CHAT, JSON,
     forced_tool({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), 400, "tools[0].function.parameters"),
    # Prompts the model cannot hold: refused naming the field they came in.
    ("chat prompt over the context", "POST", CHAT, JSON,
     {"messages": [{"role": "user", "content": "word " * 40_000}]}, 400, "messages"),
    ("completion prompt over the context", "POST", COMPLETIONS, JSON,
     {"prompt": "word " * 40_000, "max_tokens": 1}, 400, "prompt"),
    ("completion without prompt", "POST", COMPLETIONS, JSON, {"max_tokens": 1}, 400, None),
    # Embeddings.
    ("embeddings without input", "POST", EMBEDDINGS, JSON, {"model": "all-minilm-l6-v2"}, 400, None),
    ("embeddings bad encoding", "POST", EMBEDDINGS, JSON,
     {"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "hex"}, 400, None),
    ("embeddings on a chat model", "POST", EMBEDDINGS, JSON, {"model": "qwen2.5-coder-0.5b", "input": "x"}, 400, None),
    # Routes, methods and paths.
    ("unknown route", "GET", "/v1/nothing", {}, None, 404, None),
    ("wrong method", "GET", CHAT, {}, None, 405, None),
    ("path not utf-8", "GET", "/v1/models/%ff%fe", {}, None, 400, None),
    ("unknown model route", "GET", "/v1/models/nope", {}, None, 404, None),
    ("unload unknown model", "POST", "/v1/models/nope/unload", {}, None, 404, None),
    ("headers too large", "GET", "/v1/models", {"x-filler": "y" * 200_000}, None, 431, None),
]

# Text that must never appear in an answer: server paths, panics, backtraces.
LEAKS = ["/root/", "/home/", "/tmp/", ".gguf", "panicked", "RUST_BACKTRACE", "thread '", "src/", ".rs:"]

WS_FRAMES = [
    ("not json", "not json", 400),
    ("no id", json.dumps({"type": "chat.completions", "body": {}}), 400),
    ("unknown type", json.dumps({"type": "dance", "id": "t"}), 400),
    ("no body", json.dumps({"type": "chat.completions", "id": "nb"}), 400),
    ("bad body", json.dumps({"type": "chat.completions", "id": "bb", "body": {"messages": 3}}), 400),
    ("cyclic schema", json.dumps({"type": "chat.completions", "id": "cs",
                                  "body": schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})}), 400),
    ("unknown model", json.dumps({"type": "chat.completions", "id": "um", "body": chat(model="nope")}), 404),
]
