//! `/v1/embeddings` and `/v1/similarity` over the router, on the fake
//! embedding model: OpenAI's shapes, both encodings, and precise errors.

mod common;

use base64::Engine as _;
use serde_json::{json, Value};

use common::{harness, post, send};
use llmlab_core::testing::{Script, FAKE_EMBEDDING_DIMENSIONS};
use llmlab_core::Error;

fn body(value: Value) -> String {
    value.to_string()
}

#[tokio::test]
async fn embeddings_have_openai_shape_for_every_input_form() {
    let h = harness(Script::text(&[]), None);
    for (input, count) in [
        (json!("hello"), 1),
        (json!(["hello", "world", "!"]), 3),
        (json!([104, 105]), 1),
        (json!([[104, 105], [1, 2, 3]]), 2),
    ] {
        let reply = send(
            &h.state,
            post("/v1/embeddings", body(json!({"model": "fake-embed", "input": input}))),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer = reply.json();
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["model"], "fake-embed");
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), count);
        for (i, item) in data.iter().enumerate() {
            assert_eq!(
                (item["object"].as_str(), item["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            let vector: Vec<f64> = serde_json::from_value(item["embedding"].clone()).unwrap();
            assert_eq!(vector.len(), FAKE_EMBEDDING_DIMENSIONS);
            let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(answer["usage"]["prompt_tokens"], answer["usage"]["total_tokens"]);
    }
}

#[tokio::test]
async fn base64_encoding_carries_the_same_floats() {
    let h = harness(Script::text(&[]), None);
    let floats = send(
        &h.state,
        post("/v1/embeddings", body(json!({"model": "fake-embed", "input": "abc"}))),
    )
    .await;
    let packed = send(
        &h.state,
        post(
            "/v1/embeddings",
            body(json!({"model": "fake-embed", "input": "abc", "encoding_format": "base64"})),
        ),
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(packed.json()["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let expected: Vec<f32> = serde_json::from_value(floats.json()["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(decoded, expected);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let h = harness(Script::text(&[]), None);
    for (request, param) in [
        (json!({"model": "fake-embed"}), "input"),
        (json!({"model": "fake-embed", "input": 5}), "input"),
        (json!({"model": "fake-embed", "input": []}), "input"),
        (json!({"model": "fake-embed", "input": ["a", 3]}), "input[1]"),
        (json!({"model": "fake-embed", "input": [[1, -2]]}), "input[0][1]"),
        (json!({"model": "fake-embed", "input": ["a", ""]}), "input[1]"),
        (
            json!({"model": "fake-embed", "input": "a", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": "fake-embed", "input": "a", "dimensions": 4}),
            "dimensions",
        ),
        (json!({"model": "fake-a", "input": "a"}), "model"),
    ] {
        let reply = send(&h.state, post("/v1/embeddings", body(request.clone()))).await;
        assert_eq!(
            reply.assert_error(400, Some(param))["type"],
            "invalid_request_error",
            "{request}"
        );
    }
    send(
        &h.state,
        post("/v1/embeddings", body(json!({"model": "nope", "input": "a"}))),
    )
    .await
    .assert_error(404, None);
}

#[tokio::test]
async fn a_model_failure_is_an_error_not_a_zero_vector() {
    let h = harness(Script::text(&[]), None);
    *h.factory.embedder.fail.lock().unwrap() = Some(Error::internal("encoder exploded"));
    let reply = send(
        &h.state,
        post("/v1/embeddings", body(json!({"model": "fake-embed", "input": "a"}))),
    )
    .await;
    assert_eq!(reply.assert_error(500, None)["message"], "encoder exploded");
}

#[tokio::test]
async fn similarity_ranks_documents_with_scores() {
    let h = harness(Script::text(&[]), None);
    let request = json!({"model": "fake-embed", "query": "aaaa", "documents": ["bbbb", "aaab", "a"], "top_k": 2});
    let reply = send(&h.state, post("/v1/similarity", body(request))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["index"].as_u64(), data[0]["document"].as_str()),
        (Some(2), Some("a"))
    );
    assert_eq!(
        (data[1]["index"].as_u64(), data[1]["document"].as_str()),
        (Some(1), Some("aaab"))
    );
    assert!(data[0]["score"].as_f64().unwrap() > data[1]["score"].as_f64().unwrap());
    let reply = send(
        &h.state,
        post(
            "/v1/similarity",
            body(json!({"model": "fake-embed", "query": "", "documents": ["x"]})),
        ),
    )
    .await;
    reply.assert_error(400, Some("query"));
}
