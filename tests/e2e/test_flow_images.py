"""SD3 and Flux through a real `llmlab serve`: the tiny random-weight
SD3- and Flux-shaped diffusers folders (scripts/make-flow-fixtures.py) added
to the registry next to each other. What the doors must carry for these
families beyond what test_images.py checks for SD 1.5: each model's own
sampling defaults (steps, guidance, the flow-matching scheduler), the
refusals only a loaded model can make (a size off the transformer's patch
grid, a negative prompt to Flux, a noise-predicting scheduler) answered as
400s that name the field and leave the model serving, and edits that keep
the pixels outside the mask.
"""
import base64
import json
import urllib.request

import openai
import pytest

from conftest import Server
from test_images import png, read_png, registry_with_image_models

FIXTURES = {"sd3-tiny": "test-sd3-tiny", "flux-tiny": "test-flux-tiny"}
# What scripts/make-flow-fixtures.py's folders bring as defaults: SD3's 28
# guided steps, Flux dev's 28 (its guidance is an input of the network).
DEFAULT_STEPS = {"sd3-tiny": 28, "flux-tiny": 28}


@pytest.fixture(scope="module")
def server():
    path = registry_with_image_models(FIXTURES, "scripts/make-flow-fixtures.py")
    running = Server("--no-preload", registry=path)
    running.wait_healthy()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def generate(client, model, **extra):
    size = extra.pop("size", "64x64")
    return client.images.generate(model=model, prompt="a lighthouse at dusk", size=size,
                                  response_format="b64_json", extra_body=extra)


@pytest.mark.parametrize("model", list(FIXTURES))
def test_a_seed_repeats_and_another_differs(client, model):
    answer = generate(client, model, n=2, seed=21, steps=2)
    assert len(answer.data) == 2
    first = base64.b64decode(answer.data[0].b64_json)
    assert read_png(first)[:2] == (64, 64)
    assert [d.b64_json for d in generate(client, model, n=2, seed=21, steps=2).data] \
        == [d.b64_json for d in answer.data]
    assert base64.b64decode(generate(client, model, n=2, seed=22, steps=2).data[0].b64_json) != first


@pytest.mark.parametrize("model", list(FIXTURES))
def test_the_models_own_defaults_reach_the_stream(server, model):
    """No steps, guidance or scheduler in the request: the model's own
    defaults apply, and the stream reports that many steps."""
    body = json.dumps({"model": model, "prompt": "stars", "size": "64x64", "stream": True}).encode()
    request = urllib.request.Request(server.base + "/v1/images/generations", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        events = [json.loads(line[len("data: "):]) for line in r.read().decode().splitlines()
                  if line.startswith("data: ")]
    steps = [e["step"] for e in events if e.get("type") == "image_generation.progress"]
    assert steps == list(range(1, DEFAULT_STEPS[model] + 1)), steps
    assert events[-1]["type"] == "image_generation.completed"


@pytest.mark.parametrize("model", list(FIXTURES))
def test_an_edit_keeps_the_pixels_outside_the_mask(client, model):
    picture = png(64, 64, lambda x, y: (x * 4, 255 - y * 4, 40))
    mask = png(64, 64, lambda x, y: (0, 0, 0), alpha=lambda x, y: 0 if x < 32 else 255)
    answer = client.images.edit(model=model, image=("in.png", picture, "image/png"),
                                mask=("mask.png", mask, "image/png"), prompt="a boat", size="64x64",
                                response_format="b64_json", extra_body={"steps": 2, "seed": 5, "strength": 1.0})
    _, _, rows = read_png(base64.b64decode(answer.data[0].b64_json))
    _, _, original = read_png(picture)
    assert [row[32 * 3:] for row in rows] == [row[32 * 3:] for row in original], "the kept half came back exactly"
    assert [row[:32 * 3] for row in rows] != [row[:32 * 3] for row in original]


def refused(client, model, **extra):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, model, steps=2, **extra)
    return caught.value.body


def test_what_only_the_model_can_refuse_is_a_400_that_leaves_it_serving(client):
    # 72 is a multiple of 8 (the door's check) but not of 16 (2x2 patches).
    for model in FIXTURES:
        body = refused(client, model, size="72x72")
        assert body["param"] == "size" and "multiples of 16" in body["message"], body
        assert refused(client, model, scheduler="ddim")["param"] == "scheduler"
    body = refused(client, "flux-tiny", negative_prompt="blurry")
    assert body["param"] == "negative_prompt", body
    # Refusals are the client's fault: the breaker stays closed.
    for model in FIXTURES:
        assert read_png(base64.b64decode(generate(client, model, steps=2, seed=1).data[0].b64_json))[:2] == (64, 64)
