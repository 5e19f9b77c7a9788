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


@pytest.fixture(scope="module")
def images_server():
    if not (models_dir() / FIXTURE / "model_index.json").is_file():
        if os.environ.get("LLMLAB_REQUIRE_ALL") == "1":
            pytest.fail(f"{FIXTURE} missing: run scripts/make-diffusion-fixture.py")
        pytest.skip(f"{FIXTURE} missing: run scripts/make-diffusion-fixture.py")
    registry = pathlib.Path(tempfile.mkdtemp(prefix="llmlab-images-")) / "models.yaml"
    registry.write_text((ROOT / "models" / "models.yaml").read_text()
                        + f"\n  - {{id: {MODEL}, kind: image, backend: candle, path: {FIXTURE}}}\n")
    running = Server("--no-preload", registry=str(registry))
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
    body = json.dumps({"model": MODEL, "prompt": "stars", "size": "64x64", "steps": 3, "stream": True}).encode()
    request = urllib.request.Request(images_server.base + "/v1/images/generations", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("event: "):] for line in r.read().decode().splitlines() if line.startswith("event: ")]
    assert events == ["image_generation.progress"] * 3 + ["image_generation.completed"], events


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
