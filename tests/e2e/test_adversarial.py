"""The adversarial suite: a real `llmlab serve` on the default model with
every door open (HTTP, WebSocket, gRPC, the job queue on the real broker)
takes a corpus of malformed and hostile requests, and slow clients.

Every answer must be a 4xx in the door's error shape, with no server path
or panic text in it; nothing may hang; the model's circuit breaker must not
move; and afterwards the server must still be healthy and answer a normal
chat. The figures are written to $LLMLAB_ADVERSARIAL_REPORT (default
target/adversarial-report.json) and recorded in the README.
"""
import json
import os
import pathlib
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest

from adversarial_corpus import HTTP_CASES, LEAKS, WS_FRAMES, chat, schema
from conftest import ROOT, Server, _free_port

KEY = "adversarial-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MODEL = "qwen2.5-coder-0.5b"
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
REPORT = {"cases": 0, "4xx_with_envelope": 0, "5xx": 0, "hangs": 0, "leaks": 0, "failures": []}


@pytest.fixture(scope="module")
def adversary():
    grpc_port = _free_port()
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    running = Server(
        "--api-key", KEY,
        "--grpc-port", str(grpc_port),
        "--amqp", "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--queue-prefix", prefix,
        "--header-timeout-secs", str(HEADER_TIMEOUT),
        "--body-timeout-secs", str(BODY_TIMEOUT),
    )
    running.wait_healthy()
    running.grpc = f"127.0.0.1:{grpc_port}"
    running.prefix = prefix
    yield running
    running.stop()
    path = pathlib.Path(os.environ.get("LLMLAB_ADVERSARIAL_REPORT", ROOT / "target" / "adversarial-report.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(REPORT, indent=2))


def record(name, status, text, envelope_ok, hung=False):
    """Count one answer; return the problems found with it."""
    REPORT["cases"] += 1
    problems = []
    if hung:
        REPORT["hangs"] += 1
        problems.append("no answer in time")
    elif status >= 500:
        REPORT["5xx"] += 1
        problems.append(f"status {status}")
    elif 400 <= status < 500 and envelope_ok:
        REPORT["4xx_with_envelope"] += 1
    leaked = [marker for marker in LEAKS if marker in text]
    if leaked:
        REPORT["leaks"] += 1
        problems.append(f"leaks {leaked}")
    if problems:
        REPORT["failures"].append({"case": name, "problems": problems, "answer": text[:300]})
    return problems


def http(base, method, path, headers=None, body=None, timeout=60):
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(base + path, method=method, data=body, headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers)


def is_envelope(text):
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and all(k in error for k in ("message", "type", "param", "code"))


def breaker(base):
    status, text, _ = http(base, "GET", f"/v1/models/{MODEL}")
    assert status == 200, text
    model = json.loads(text)
    return model["circuit"], model["consecutive_failures"]


def assert_still_serving(base):
    status, text, _ = http(base, "GET", "/health")
    assert status == 200, text
    status, text, _ = http(base, "POST", "/v1/chat/completions", dict(JSON_HEADERS), chat(model=MODEL, temperature=0))
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["content"], text


JSON_HEADERS = {"content-type": "application/json"}


def test_http_corpus(adversary):
    base = adversary.base
    problems = {}
    for name, method, path, headers, body, expected, param in HTTP_CASES:
        try:
            status, text, _ = http(base, method, path, headers, body)
        except (TimeoutError, socket.timeout, urllib.error.URLError, ConnectionError) as e:
            refused_by_closing = {"headers too large": 431, "body over the limit": 413}
            if name in refused_by_closing and isinstance(e, (urllib.error.URLError, ConnectionError)):
                # The server answers at once and closes after a while; a
                # client still sending may see the close before the answer.
                record(name, refused_by_closing[name], "", True)
                continue
            problems[name] = record(name, 0, str(e), False, hung=True)
            continue
        found = record(name, status, text, is_envelope(text))
        if status != expected:
            found.append(f"status {status}, expected {expected}: {text[:200]}")
        elif not is_envelope(text):
            found.append(f"not in the error envelope: {text[:200]}")
        elif param is not None and json.loads(text)["error"]["param"] != param:
            found.append(f"param {json.loads(text)['error']['param']!r}, expected {param!r}")
        if name == "huge model id" and len(text) > 2_000:
            found.append(f"echoes the model id whole ({len(text)} bytes)")
        if found:
            problems[name] = found
    assert not problems, json.dumps(problems, indent=2)
    # None of it was the model's fault.
    assert breaker(base) == ("closed", 0)
    assert_still_serving(base)


def test_client_errors_never_open_the_breaker(adversary):
    base = adversary.base
    cyclic = schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
    for _ in range(6):
        status, text, _ = http(base, "POST", "/v1/chat/completions", JSON_HEADERS, {**cyclic, "model": MODEL})
        assert status == 400, text
    assert breaker(base) == ("closed", 0)
    assert_still_serving(base)


def test_api_key_is_asked_first_and_schemes_are_case_insensitive(adversary):
    base = adversary.base
    for path in ["/v1/nothing", "/v1/chat/completions", "/no/such/route"]:
        request = urllib.request.Request(base + path, method="GET")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401, path
        assert is_envelope(refused.value.read().decode())
    request = urllib.request.Request(base + "/v1/models", headers={"authorization": f"bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200


def test_slow_clients_are_cut_off(adversary):
    host, port = "127.0.0.1", int(adversary.base.rsplit(":", 1)[1])
    # Headers that never end.
    stalled = []
    for _ in range(50):
        s = socket.create_connection((host, port))
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(s)
    # Bodies that never arrive: one declared over the body limit, one under.
    bodies = []
    for declared in (50_000_000, 1_000_000):
        body = socket.create_connection((host, port))
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {declared}\r\n\r\n{{".encode()
        )
        bodies.append(body)
    time.sleep(max(HEADER_TIMEOUT, BODY_TIMEOUT) + 2)
    cut = 0
    for s in stalled + bodies:
        s.settimeout(5)
        try:
            data = s.recv(65536)
            # Closed (b""), or answered and closed: 408 for a body that
            # did not come in time, 413 at once for a declared size over
            # the limit.
            cut += data == b"" or data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 413"))
        except (ConnectionResetError, socket.timeout):
            cut += 0
        finally:
            s.close()
    held = len(stalled) + len(bodies) - cut
    REPORT["cases"] += len(stalled) + len(bodies)
    REPORT["hangs"] += held
    assert held == 0, f"{held} slow connections were still held"
    assert_still_serving(adversary.base)


def test_websocket_corpus_and_one_terminal_frame_per_request(adversary):
    import websocket

    url = adversary.base.replace("http://", "ws://") + "/v1/ws"
    ws = websocket.create_connection(url, header=[f"Authorization: Bearer {KEY}"], timeout=30)
    try:
        problems = {}
        for name, frame, expected in WS_FRAMES:
            ws.send(frame)
            answer = ws.recv()
            reply = json.loads(answer)
            found = record(f"ws {name}", reply.get("status", 0), answer, "error" in reply and "message" in reply["error"])
            if (reply.get("type"), reply.get("status")) != ("error", expected):
                found.append(f"got {answer[:200]}")
            if found:
                problems[name] = found
        assert not problems, json.dumps(problems, indent=2)
        # Cancel `a`, reuse `a`, cancel it again: each request ends once.
        for round_ in range(2):
            ws.send(json.dumps({"type": "chat.completions", "id": "a",
                                "body": chat(model=MODEL, max_tokens=400, temperature=0.7,
                                             messages=[{"role": "user", "content": "Write a long story."}])}))
            first = json.loads(ws.recv())
            assert (first["id"], first["type"]) == ("a", "chunk"), first
            ws.send(json.dumps({"type": "cancel", "id": "a"}))
            endings = []
            while not endings:
                frame = json.loads(ws.recv())
                if frame["type"] != "chunk":
                    endings.append(frame["type"])
            assert endings == ["cancelled"], (round_, endings)
        # Nothing more for `a`: the next frame belongs to a new request.
        ws.send(json.dumps({"type": "chat.completions", "id": "b", "body": chat(model=MODEL, temperature=0)}))
        assert json.loads(ws.recv())["id"] == "b"
    finally:
        ws.close()
    assert breaker(adversary.base) == ("closed", 0)


def test_grpc_corpus(adversary):
    import grpc

    channel = grpc.insecure_channel(adversary.grpc)
    metadata = [("authorization", f"Bearer {KEY}")]
    raw = lambda method: channel.unary_unary(f"/llmlab.v1.Llmlab/{method}")  # noqa: E731
    cases = [
        ("malformed protobuf", "Embed", b"\xff\xff\xff\xff\x0f garbage", grpc.StatusCode.INVALID_ARGUMENT),
        ("truncated protobuf", "ListModels", b"\x0a\x05ab", grpc.StatusCode.INVALID_ARGUMENT),
        # EmbedRequest: field 1 (model) a 10,000-character string, field 2
        # (inputs) one "hi".
        ("huge model id", "Embed", b"\x0a\x90\x4e" + b"m" * 10_000 + b"\x12\x02hi", grpc.StatusCode.NOT_FOUND),
    ]
    problems = {}
    for name, method, payload, expected in cases:
        try:
            raw(method)(payload, metadata=metadata, timeout=30)
            problems[name] = ["accepted"]
            continue
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            echoed = " ".join(str(v) for _, v in (e.trailing_metadata() or []))
        # gRPC's client-error codes count as 4xx; anything else is a
        # server error for the report.
        client_codes = {
            grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.OUT_OF_RANGE: 413,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        }
        found = record(f"grpc {name}", client_codes.get(code, 500), details + echoed, True)
        if code != expected:
            found.append(f"{code}, expected {expected}: {details[:200]}")
        if len(details) + len(echoed) > 2_000:
            found.append(f"echoes {len(details) + len(echoed)} characters")
        if found:
            problems[name] = found
    channel.close()
    assert not problems, json.dumps(problems, indent=2)


def test_job_queue_poison_and_invalid_jobs_are_dead_lettered_and_a_good_job_is_answered(adversary):
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    replies = channel.queue_declare(queue="", exclusive=True).method.queue
    jobs = f"{adversary.prefix}.jobs"
    dead = f"{adversary.prefix}.dead"

    def publish(body, headers=None, correlation=None, reply_to=replies):
        channel.basic_publish(
            exchange="", routing_key=jobs, body=body if isinstance(body, bytes) else json.dumps(body).encode(),
            properties=pika.BasicProperties(reply_to=reply_to, correlation_id=correlation, headers=headers))

    good = {"type": "chat.completions", "body": chat(model=MODEL, temperature=0)}
    poison = [
        ("attempts overflow", good, {"x-llmlab-attempts": 4294967295}),
        ("attempts negative", good, {"x-llmlab-attempts": -7}),
        ("attempts text", good, {"x-llmlab-attempts": "many"}),
        ("not json", b"{nope", None),
        ("unknown type", {"type": "dance", "body": {}}, None),
        ("invalid request", {"type": "chat.completions", "body": chat(temperature=500)}, None),
        ("cyclic schema", {"type": "chat.completions",
                           "body": schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})}, None),
    ]
    for name, body, headers in poison:
        publish(body, headers, correlation=name)
    publish(good, correlation="good")
    answers = {}
    deadline = time.time() + 180
    while len(answers) < len(poison) + 1 and time.time() < deadline:
        method, properties, body = channel.basic_get(replies, auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        answers[properties.correlation_id] = json.loads(body)
    connection_problems = {}
    for name, _, _ in poison:
        reply = answers.get(name)
        if name.startswith("attempts"):
            # A counter from the message never breaks the worker; the job
            # runs (or is refused) and is answered.
            ok = reply is not None and reply["type"] in ("result", "error")
        else:
            ok = reply is not None and reply["type"] == "error" and 400 <= reply["status"] < 500
        text = json.dumps(reply)
        found = record(f"job {name}", reply["status"] if reply and reply["type"] == "error" else 200, text, True,
                       hung=reply is None)
        if not ok:
            found.append(f"reply {text[:200]}")
        if found:
            connection_problems[name] = found
    assert answers.get("good", {}).get("type") == "result", answers.get("good")
    assert not connection_problems, json.dumps(connection_problems, indent=2)
    # The refused jobs are in the dead-letter queue, each with its reason.
    reasons = []
    while True:
        method, properties, _ = channel.basic_get(dead, auto_ack=True)
        if method is None:
            break
        reasons.append((properties.headers or {}).get("x-llmlab-reason", ""))
    assert len(reasons) >= 4 and all(reasons), reasons
    connection.close()
    assert breaker(adversary.base) == ("closed", 0)
    assert_still_serving(adversary.base)
