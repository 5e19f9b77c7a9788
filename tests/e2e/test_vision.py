"""Vision chat through every door of a real `llmlab serve`: the default
model (Qwen2.5-Coder 0.5B) given a random-weight LLaVA-style projector
(scripts/make-vision-fixtures.py) through an environment override. The
official `openai` client sends a PNG data URL; the same image goes through
WebSocket, gRPC (stubs compiled from proto/ at test time) and a job on the
real broker. Random weights say nothing about the picture, so the answers
are checked for shape and the prompt's cell count, not for meaning.
"""
import base64
import io
import json
import os
import pathlib
import struct
import sys
import tempfile
import time
import uuid
import zlib

import openai
import pytest

from conftest import ROOT, Server, _free_port

MODEL = "qwen2.5-coder-0.5b"
TEXT_ONLY_MODEL = "gemma-3-270m"
PROJECTOR = "test-mmproj-mlp-896.gguf"
IMAGE_CELLS = 36  # the fixture projector: 6x6 patches per image
MAX_IMAGES = 3


def models_dir() -> pathlib.Path:
    if os.environ.get("LLMLAB_MODELS_DIR"):
        return pathlib.Path(os.environ["LLMLAB_MODELS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return pathlib.Path(cache) / "llmlab" / "models"


def png(width=32, height=24, seed=1, rows=None) -> bytes:
    """A small RGB PNG, written by hand (no imaging library needed);
    `rows` replaces the pixel data (to forge a header's size)."""
    if rows is None:
        rows = b"".join(
            b"\x00" + bytes(((x * seed) % 256, (y * 7 + seed) % 256, seed % 256)[c]
                            for x in range(width) for c in range(3))
            for y in range(height)
        )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(seed=1) -> str:
    return "data:image/png;base64," + base64.b64encode(png(seed=seed)).decode()


def image_message(text="What is in this picture?", seeds=(1,)):
    parts = [{"type": "image_url", "image_url": {"url": data_url(s)}} for s in seeds]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def vision():
    if not (models_dir() / PROJECTOR).is_file():
        if os.environ.get("LLMLAB_REQUIRE_ALL") == "1":
            pytest.fail(f"{PROJECTOR} missing: run scripts/make-vision-fixtures.py")
        pytest.skip(f"{PROJECTOR} missing: run scripts/make-vision-fixtures.py")
    grpc_port = _free_port()
    prefix = f"vision-{uuid.uuid4().hex[:8]}"
    running = Server(
        "--grpc-port", str(grpc_port),
        "--amqp", "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--queue-prefix", prefix,
        env={"LLMLAB_MODEL__QWEN2_5_CODER_0_5B__MMPROJ": PROJECTOR, "LLMLAB_MAX_IMAGES": str(MAX_IMAGES)},
    )
    running.wait_healthy()
    running.grpc = f"127.0.0.1:{grpc_port}"
    running.prefix = prefix
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(vision):
    return openai.OpenAI(base_url=vision.base + "/v1", api_key="unused", max_retries=0)


def test_models_list_their_input_modalities(client):
    models = {m.id: m for m in client.models.list().data}
    assert models[MODEL].input_modalities == ["text", "image"]
    assert models[TEXT_ONLY_MODEL].input_modalities == ["text"]


def test_the_openai_client_sends_a_png_and_gets_an_answer(client):
    text_only = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is in this picture?"}], max_tokens=8, temperature=0)
    answer = client.chat.completions.create(model=MODEL, messages=image_message(), max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content is not None
    # The image's cells, and the newline that joins it to the text.
    assert answer.usage.prompt_tokens - text_only.usage.prompt_tokens >= IMAGE_CELLS
    streamed = client.chat.completions.create(
        model=MODEL, messages=image_message(seeds=(1, 2)), max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(streamed)
    assert chunks[-1].usage.prompt_tokens - answer.usage.prompt_tokens >= IMAGE_CELLS


def bad_request(client, **fields):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(max_tokens=4, **fields)
    body = caught.value.body
    assert caught.value.status_code == 400 and body["type"] == "invalid_request_error", body
    return body


def test_image_errors_name_the_part(client):
    body = bad_request(client, model=TEXT_ONLY_MODEL, messages=image_message())
    assert TEXT_ONLY_MODEL in body["message"] and "mmproj" in body["message"], body
    assert body["param"] == "messages[0].content[0].image_url.url", body

    broken = image_message()
    broken[0]["content"][0]["image_url"]["url"] = "data:image/png;base64,@@@not base64@@@"
    body = bad_request(client, model=MODEL, messages=broken)
    assert "base64" in body["message"] and body["param"] == "messages[0].content[0].image_url.url", body

    not_an_image = image_message()
    not_an_image[0]["content"][0]["image_url"]["url"] = "data:image/png;base64," + base64.b64encode(b"GIF? no").decode()
    body = bad_request(client, model=MODEL, messages=not_an_image)
    assert "PNG, JPEG, GIF or WebP" in body["message"], body

    # A decompression bomb: a header declaring 100000 x 100000 pixels.
    bomb_png = png(width=100_000, height=100_000, rows=b"")
    bomb = image_message()
    bomb[0]["content"][0]["image_url"]["url"] = "data:image/png;base64," + base64.b64encode(bomb_png).decode()
    body = bad_request(client, model=MODEL, messages=bomb)
    assert "100000x100000" in body["message"], body

    body = bad_request(client, model=MODEL, messages=image_message(seeds=range(1, MAX_IMAGES + 2)))
    assert body["param"] == f"messages[0].content[{MAX_IMAGES}].image_url.url", body
    assert f"more than the {MAX_IMAGES} allowed" in body["message"], body

    remote = image_message()
    remote[0]["content"][0]["image_url"]["url"] = "http://127.0.0.1:9/cat.png"
    body = bad_request(client, model=MODEL, messages=remote)
    assert "--allow-image-urls" in body["message"], body


def test_the_same_image_through_websocket(vision):
    import websocket

    ws = websocket.create_connection(vision.base.replace("http://", "ws://") + "/v1/ws", timeout=60)
    try:
        body = {"model": MODEL, "messages": image_message(), "max_tokens": 6, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        ws.send(json.dumps({"type": "chat.completions", "id": "img", "body": body}))
        frames = []
        while not frames or frames[-1]["type"] == "chunk":
            frames.append(json.loads(ws.recv()))
        assert frames[-1] == {"id": "img", "type": "done"}, frames[-1]
        usage = [f["data"]["usage"] for f in frames if f["type"] == "chunk" and f["data"].get("usage")]
        assert usage and usage[-1]["prompt_tokens"] > IMAGE_CELLS, frames
    finally:
        ws.close()


def grpc_stubs():
    """Python stubs of proto/llmlab/v1/llmlab.proto, compiled now."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="llmlab-proto-")
    proto_root = ROOT / "proto"
    status = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                          str(proto_root / "llmlab" / "v1" / "llmlab.proto")])
    assert status == 0, "protoc failed"
    sys.path.insert(0, out)
    from llmlab.v1 import llmlab_pb2, llmlab_pb2_grpc
    return llmlab_pb2, llmlab_pb2_grpc


def test_the_same_image_through_grpc(vision):
    import grpc

    pb, pb_grpc = grpc_stubs()
    channel = grpc.insecure_channel(vision.grpc)
    stub = pb_grpc.LlmlabStub(channel)
    message = pb.Message(role="user", parts=[
        pb.ContentPart(image=pb.Image(data=png())),
        pb.ContentPart(text="What is in this picture?"),
    ])
    request = pb.ChatRequest(model=MODEL, messages=[message],
                             settings=pb.GenerationSettings(max_tokens=6))
    events = list(stub.Chat(request, timeout=120))
    usage = [e.usage for e in events if e.HasField("usage")]
    assert usage and usage[0].prompt_tokens > IMAGE_CELLS, events
    assert events[-1].HasField("finished"), events[-1]
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert list(next(m for m in models if m.id == MODEL).input_modalities) == ["text", "image"]
    bad = pb.ChatRequest(model=TEXT_ONLY_MODEL, messages=[message])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Chat(bad, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert TEXT_ONLY_MODEL in caught.value.details()
    channel.close()


def test_the_same_image_through_a_job(vision):
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    replies = channel.queue_declare(queue="", exclusive=True).method.queue
    job = {"type": "chat.completions",
           "body": {"model": MODEL, "messages": image_message(), "max_tokens": 6, "temperature": 0}}
    channel.basic_publish(exchange="", routing_key=f"{vision.prefix}.jobs", body=json.dumps(job).encode(),
                          properties=pika.BasicProperties(reply_to=replies, correlation_id="img"))
    deadline = time.time() + 120
    reply = None
    while reply is None and time.time() < deadline:
        method, properties, body = channel.basic_get(replies, auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        reply = json.loads(body)
    connection.close()
    assert reply is not None and reply["type"] == "result", reply
    assert reply["data"]["usage"]["prompt_tokens"] > IMAGE_CELLS, reply


def test_llmlab_chat_sends_image_files(vision, tmp_path):
    import subprocess

    from conftest import _binary

    picture = tmp_path / "picture.png"
    picture.write_bytes(png(seed=5))
    env = {**os.environ, "LLMLAB_MODEL__QWEN2_5_CODER_0_5B__MMPROJ": PROJECTOR}
    run = subprocess.run(
        [_binary(), "--registry", str(ROOT / "models" / "models.yaml"), "chat", "--image", str(picture),
         "--image", str(picture), "--max-tokens", "4", "--temperature", "0", "--stats", "What is this?"],
        capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    prompt_tokens = int(run.stderr.split("[")[-1].split(" prompt tokens")[0])
    assert prompt_tokens > 2 * IMAGE_CELLS, run.stderr[-500:]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    run = subprocess.run(
        [_binary(), "--registry", str(ROOT / "models" / "models.yaml"), "chat", "--image", str(broken),
         "--max-tokens", "4", "hi"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0 and "PNG, JPEG, GIF or WebP" in run.stderr, run.stderr[-1000:]


def test_allowed_image_urls_still_never_reach_private_addresses():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    running = Server("--no-preload", "--allow-image-urls",
                     env={"LLMLAB_MODEL__QWEN2_5_CODER_0_5B__MMPROJ": PROJECTOR})
    try:
        running.wait_healthy()
        client = openai.OpenAI(base_url=running.base + "/v1", api_key="unused", max_retries=0)
        messages = image_message()
        messages[0]["content"][0]["image_url"]["url"] = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png"
        body = bad_request(client, model=MODEL, messages=messages)
        assert "public addresses" in body["message"], body
        assert body["param"] == "messages[0].content[0].image_url.url", body
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing connected
    finally:
        running.stop()
        listener.close()
