//! Embedding and similarity requests through the service, on the fake
//! embedding model.
use super::*;
use crate::embedding::{EmbedInput, EmbeddingRequest, SimilarityRequest};
use crate::testing::{fake_registry, FakeFactory, Script, FAKE_EMBEDDING_DIMENSIONS};
use crate::ErrorKind;

fn service(factory: &Arc<FakeFactory>) -> Service {
    Service::new(fake_registry(), Arc::clone(factory) as Arc<dyn PipelineFactory>)
}

fn texts(texts: &[&str]) -> Vec<EmbedInput> {
    texts.iter().map(|t| EmbedInput::Text((*t).to_owned())).collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn vectors_are_unit_length_by_default_and_raw_on_request() {
    let factory = Arc::new(FakeFactory::new(Script::text(&[])));
    let svc = service(&factory);
    let answer = svc
        .embed(EmbeddingRequest {
            model: "fake-embed".into(),
            inputs: texts(&["hello", "hi"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.embeddings.len(), 2);
    assert_eq!(answer.prompt_tokens, 7);
    for v in &answer.embeddings {
        assert_eq!(v.len(), FAKE_EMBEDDING_DIMENSIONS);
        assert!((norm(v) - 1.0).abs() < 1e-6);
    }
    let raw = svc
        .embed(EmbeddingRequest {
            model: "fake-embed".into(),
            inputs: vec![EmbedInput::Tokens(vec![1, 1, 2])],
            normalize: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(raw.embeddings[0][..3], [0.0, 2.0, 1.0]);
}

#[tokio::test]
async fn a_request_without_a_model_uses_the_first_embedding_model() {
    let factory = Arc::new(FakeFactory::new(Script::text(&[])));
    let answer = service(&factory)
        .embed(EmbeddingRequest {
            inputs: texts(&["x"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.model, "fake-embed");
}

#[tokio::test]
async fn dimensions_need_a_matryoshka_model() {
    let factory = Arc::new(FakeFactory::new(Script::text(&[])));
    let request = |model: &str, dimensions| EmbeddingRequest {
        model: model.into(),
        inputs: texts(&["abcdefgh"]),
        dimensions: Some(dimensions),
        ..Default::default()
    };
    let err = service(&factory).embed(request("fake-embed", 4)).await.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("dimensions"));
    assert!(err.message.contains("Matryoshka"), "{}", err.message);

    let text =
        "default_model: mrl\nmodels:\n  - {id: mrl, kind: embedding, backend: candle, path: e, matryoshka: true}\n";
    let registry =
        crate::registry::Registry::parse(text, std::path::Path::new("f.yaml"), std::path::Path::new("/"), |_| {
            None
        })
        .unwrap();
    let svc = Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let short = svc.embed(request("mrl", 4)).await.unwrap();
    assert_eq!(short.embeddings[0].len(), 4);
    assert!((norm(&short.embeddings[0]) - 1.0).abs() < 1e-6);
    let err = svc.embed(request("mrl", 9)).await.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("dimensions"));
}

#[tokio::test]
async fn kinds_are_not_mixed_up() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(&factory);
    let err = svc
        .embed(EmbeddingRequest {
            model: "fake-a".into(),
            inputs: texts(&["x"]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.param.as_deref()),
        (ErrorKind::InvalidRequest, Some("model"))
    );
    assert!(err.message.contains("cannot make embeddings"), "{}", err.message);
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_answers_an_error_never_zero_vectors_and_trips_its_breaker() {
    let factory = Arc::new(FakeFactory::new(Script::text(&[])));
    *factory.embedder.fail.lock().unwrap() = Some(Error::internal("encoder exploded"));
    let svc = service(&factory);
    let request = || EmbeddingRequest {
        model: "fake-embed".into(),
        inputs: texts(&["x"]),
        ..Default::default()
    };
    for _ in 0..3 {
        let err = svc.embed(request()).await.unwrap_err();
        assert_eq!(err.message, "encoder exploded");
    }
    let err = svc.embed(request()).await.unwrap_err();
    assert!(err.message.contains("circuit breaker is open"), "{}", err.message);
    assert_eq!(factory.embedder.calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn similarity_ranks_documents_by_cosine() {
    let factory = Arc::new(FakeFactory::new(Script::text(&[])));
    let answer = service(&factory)
        .similarity(SimilarityRequest {
            model: "fake-embed".into(),
            query: "aaaa".into(),
            documents: vec!["bbbb".into(), "aaab".into(), "a".into()],
            top_k: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let order: Vec<usize> = answer.results.iter().map(|r| r.index).collect();
    assert_eq!(order, [2, 1]);
    assert!((answer.results[0].score - 1.0).abs() < 1e-6);
    assert_eq!(answer.prompt_tokens, 13);
}
