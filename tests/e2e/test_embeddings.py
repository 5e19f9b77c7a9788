"""Embeddings on a real server with the official `openai` client: the
candle MiniLM model, both encodings (the client asks for base64 by default
and decodes it), shortened vectors refused for a non-Matryoshka model, and
similarity ranking."""
import json
import math
import urllib.error
import urllib.request

import openai
import pytest

MODEL = "all-minilm-l6-v2"


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def test_embeddings_are_unit_vectors_that_mean_something(client):
    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue rose by 5%."]
    answer = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in answer.data]
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(norm(v) - 1) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert answer.usage.prompt_tokens > 15
    floats = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    assert max(abs(x - y) for x, y in zip(floats.data[0].embedding, vectors[0])) < 1e-6


def test_dimensions_need_a_matryoshka_model(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert caught.value.body["param"] == "dimensions"


def test_similarity_ranks_documents(server):
    body = {"model": MODEL, "query": "Where is the cat?",
            "documents": ["Stock markets fell sharply.", "The cat is asleep on the sofa.", "It rained all day."],
            "top_k": 2}
    req = urllib.request.Request(server + "/v1/similarity", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.loads(r.read())
    assert [d["index"] for d in answer["data"]][0] == 1
    assert len(answer["data"]) == 2
    assert answer["data"][0]["score"] > answer["data"][1]["score"]
