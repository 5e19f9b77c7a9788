"""Image generation through a real `llmlab serve`: a tiny random-weight
SD-1.5-shaped model in the diffusers layout (scripts/make-diffusion-fixture.py)
added to the registry. The official `openai` client generates and edits;
streaming is read as raw server-sent events. Random weights paint noise,
so answers are checked for shape, sizes, seeds and errors.
"""
import base64
import io
import json
import os
import pathlib
import struct
import tempfile
import urllib.request
import zlib

import openai
import pytest

from conftest import ROOT, Server

MODEL = "sd-tiny"
FIXTURE = "test-sd15-tiny"


def models_dir() -> pathlib.Path:
    if os.environ.get("LLMLAB_MODELS_DIR"):
        return pathlib.Path(os.environ["LLMLAB_MODELS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return pathlib.Path(cache) / "llmlab" / "models"


def png(width, height, pixel, alpha=None) -> bytes:
    """An RGB (or RGBA) PNG of `pixel(x, y)` colours, written by hand."""
    channels = 3 if alpha is None else 4
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) + (bytes([alpha(x, y)]) if alpha else b"") for x in range(width))
        for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def read_png(data: bytes):
    """(width, height, RGB rows) of an 8-bit RGB PNG without interlacing."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02", "8-bit RGB"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * 3, [], bytearray(width * 3)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - 3] if i >= 3 else 0
            up, corner = prev[i], (prev[i - 3] if i >= 3 else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def registry_with_image_models(folders: dict, script: str) -> str:
    """The repo's registry plus image models {id: fixture folder}, written
    to a temporary file; a missing fixture fails under LLMLAB_REQUIRE_ALL,
    else skips."""
    missing = [f for f in folders.values() if not (models_dir() / f / "model_index.json").is_file()]
    if missing:
        message = f"{missing} missing: run {script}"
        if os.environ.get("LLMLAB_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    path = pathlib.Path(tempfile.mkdtemp(prefix="llmlab-images-")) / "models.yaml"
    entries = "".join(f"\n  - {{id: {model}, kind: image, backend: candle, path: {folder}}}"
                      for model, folder in folders.items())
    path.write_text((ROOT / "models" / "models.yaml").read_text() + entries + "\n")
    return str(path)


@pytest.fixture(scope="module")
def registry():
    """The repo's registry plus the tiny image model."""
    return registry_with_image_models({MODEL: FIXTURE}, "scripts/make-diffusion-fixture.py")


@pytest.fixture(scope="module")
def images_server(registry):
    import uuid

    prefix = f"images-{uuid.uuid4().hex[:8]}"
    from conftest import _free_port

    grpc_port = _free_port()
    running = Server("--no-preload", "--amqp", "amqp://guest:guest@127.0.0.1:5672/%2f", "--queue-prefix", prefix,
                     "--grpc-port", str(grpc_port), registry=registry)
    running.prefix = prefix
    running.grpc = f"127.0.0.1:{grpc_port}"
    running.wait_healthy()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(images_server):
    return openai.OpenAI(base_url=images_server.base + "/v1", api_key="unused", max_retries=0)


def generate(client, **fields):
    fields = {"model": MODEL, "prompt": "a lighthouse at dusk", "size": "64x64", "response_format": "b64_json",
              **fields}
    extra = {k: fields.pop(k) for k in ("seed", "steps", "negative_prompt", "scheduler", "guidance_scale")
             if k in fields}
    return client.images.generate(**fields, extra_body=extra)


def test_the_openai_client_generates_pngs_and_a_seed_repeats(client):
    answer = generate(client, n=2, seed=11, steps=2)
    assert len(answer.data) == 2
    first = base64.b64decode(answer.data[0].b64_json)
    assert read_png(first)[:2] == (64, 64)
    # The same request with the same seed gives the same bytes.
    again = generate(client, n=2, seed=11, steps=2)
    assert [d.b64_json for d in again.data] == [d.b64_json for d in answer.data]
    other = generate(client, n=2, seed=12, steps=2)
    assert base64.b64decode(other.data[0].b64_json) != first
    jpeg = generate(client, seed=11, steps=2, output_format="jpeg")
    assert base64.b64decode(jpeg.data[0].b64_json)[:3] == b"\xff\xd8\xff"


def test_an_edit_keeps_the_pixels_outside_the_mask(client):
    picture = png(64, 64, lambda x, y: (x * 4, y * 4, 77))
    # OpenAI's rule: transparent pixels are repainted (here the top half).
    mask = png(64, 64, lambda x, y: (0, 0, 0), alpha=lambda x, y: 0 if y < 32 else 255)
    answer = client.images.edit(model=MODEL, image=("in.png", picture, "image/png"),
                                mask=("mask.png", mask, "image/png"), prompt="a boat", size="64x64",
                                response_format="b64_json", extra_body={"steps": 2, "seed": 3, "strength": 1.0})
    width, height, rows = read_png(base64.b64decode(answer.data[0].b64_json))
    _, _, original = read_png(picture)
    assert (width, height) == (64, 64)
    assert rows[32:] == original[32:], "the kept half came back exactly"
    assert rows[:32] != original[:32], "the masked half was repainted"


def test_streaming_sends_progress_then_the_image(images_server):
    body = json.dumps({"model": MODEL, "prompt": "stars", "size": "64x64", "steps": 3, "stream": True,
                       "partial_images": 1}).encode()
    request = urllib.request.Request(images_server.base + "/v1/images/generations", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("event: "):] for line in r.read().decode().splitlines() if line.startswith("event: ")]
    assert events == ["image_generation.progress", "image_generation.partial_image"] \
        + ["image_generation.progress"] * 2 + ["image_generation.completed"], events


def bad_request(client, **fields):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, **fields)
    return caught.value.body


def test_bad_requests_name_the_field(client):
    assert bad_request(client, size="63x64")["param"] == "size"
    assert bad_request(client, n=99)["param"] == "n"
    assert bad_request(client, scheduler="karras-magic")["param"] == "scheduler"
    assert bad_request(client, response_format="url")["param"] == "response_format"
    assert bad_request(client, prompt=" ")["param"] == "prompt"
    body = bad_request(client, model="qwen2.5-coder-0.5b")
    assert "cannot make images" in body["message"], body


def test_llmlab_image_writes_files(registry, tmp_path):
    import subprocess

    from conftest import _binary

    out = tmp_path / "out.png"
    command = [_binary(), "--registry", registry, "image", "a kite", "-o", str(out), "--size", "64x64",
               "--steps", "2", "--seed", "5", "--n", "2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = [tmp_path / "out-1.png", tmp_path / "out-2.png"]
    assert run.stdout.split() == [str(p) for p in written]
    assert all(read_png(p.read_bytes())[:2] == (64, 64) for p in written)
    assert "seed 5" in run.stderr
    edit = tmp_path / "edit.jpg"
    run = subprocess.run([_binary(), "--registry", registry, "image", "a kite", "-o", str(edit), "--steps", "2",
                          "--init", str(written[0]), "--strength", "0.5"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert edit.read_bytes()[:3] == b"\xff\xd8\xff"
    run = subprocess.run([_binary(), "--registry", registry, "image", "a kite", "-o", str(out), "--size", "10x10"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "multiples of 8" in run.stderr, run.stderr[-1000:]


def test_an_image_job_replies_progress_then_the_images(images_server):
    import time

    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = connection.channel()
    replies = channel.queue_declare(queue="", exclusive=True).method.queue
    picture = base64.b64encode(png(64, 64, lambda x, y: (x, y, 9))).decode()
    jobs = [
        ("gen", {"type": "images.generations",
                 "body": {"model": MODEL, "prompt": "rain", "size": "64x64", "steps": 2, "seed": 1}}),
        ("edit", {"type": "images.edits",
                  "body": {"model": MODEL, "prompt": "rain", "image": picture, "steps": 2, "strength": 1.0}}),
        ("no-image", {"type": "images.edits", "body": {"model": MODEL, "prompt": "rain"}}),
    ]
    for name, job in jobs:
        channel.basic_publish(exchange="", routing_key=f"{images_server.prefix}.jobs", body=json.dumps(job).encode(),
                              properties=pika.BasicProperties(reply_to=replies, correlation_id=name))
    seen = {name: [] for name, _ in jobs}
    deadline = time.time() + 120
    while time.time() < deadline and not all(r and r[-1]["type"] in ("result", "error") for r in seen.values()):
        method, properties, body = channel.basic_get(replies, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        seen[properties.correlation_id].append(json.loads(body))
    connection.close()
    assert [r["type"] for r in seen["gen"]] == ["progress", "progress", "result"], seen["gen"]
    assert read_png(base64.b64decode(seen["gen"][-1]["data"]["data"][0]["b64_json"]))[:2] == (64, 64)
    assert seen["edit"][-1]["type"] == "result", seen["edit"]
    assert seen["no-image"][-1]["type"] == "error" and seen["no-image"][-1]["error"]["param"] == "image"


def test_websocket_frames_carry_progress_and_the_result(images_server):
    import websocket

    ws = websocket.create_connection(images_server.base.replace("http://", "ws://") + "/v1/ws", timeout=60)
    try:
        body = {"model": MODEL, "prompt": "snow", "size": "64x64", "steps": 2, "seed": 4}
        ws.send(json.dumps({"type": "images.generations", "id": "i", "body": body}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert [f["type"] for f in frames] == ["progress", "progress", "result", "done"], frames
    assert frames[2]["data"]["seed"] == 4


def test_grpc_streams_progress_then_the_images(images_server):
    import grpc

    from test_vision import grpc_stubs

    pb, pb_grpc = grpc_stubs()
    channel = grpc.insecure_channel(images_server.grpc)
    stub = pb_grpc.LlmlabStub(channel)
    events = list(stub.GenerateImage(pb.GenerateImageRequest(model=MODEL, prompt="fog", size="64x64", steps=2,
                                                             seed=8, n=2, partial_images=1), timeout=120))
    assert [e.WhichOneof("event") for e in events] == ["progress", "preview", "preview", "progress", "result"]
    assert read_png(events[1].preview.image)[:2] == (64, 64)
    result = events[-1].result
    assert (len(result.images), result.width, result.height, result.seed) == (2, 64, 64, 8)
    assert read_png(result.images[0])[:2] == (64, 64)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateImage(pb.GenerateImageRequest(model=MODEL, prompt="fog", size="60x64"), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
