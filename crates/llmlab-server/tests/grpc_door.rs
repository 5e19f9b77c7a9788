//! The gRPC door over real TCP with a real client (tonic), on scripted fake
//! pipelines: streaming, concurrent calls on one connection, cancel, error
//! codes, client deadlines, embeddings, model admin, health and reflection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use llmlab_core::service::Service;
use llmlab_core::testing::{fake_registry, FakeFactory, Script};
use llmlab_server::grpc::proto::chat_event::Event;
use llmlab_server::grpc::proto::llmlab_client::LlmlabClient;
use llmlab_server::grpc::proto::{self as pb};
use llmlab_server::grpc::GrpcConfig;

struct Door {
    client: LlmlabClient<Channel>,
    channel: Channel,
    factory: Arc<FakeFactory>,
}

async fn door(script: Script) -> Door {
    door_with(script, GrpcConfig::default()).await
}

async fn door_with(script: Script, config: GrpcConfig) -> Door {
    let factory = Arc::new(FakeFactory::new(script));
    let service = Arc::new(Service::new(fake_registry(), Arc::clone(&factory) as _));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(llmlab_server::grpc::serve(
        listener,
        service,
        config,
        CancellationToken::new(),
        CancellationToken::new(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Door {
        client: LlmlabClient::new(channel.clone()),
        channel,
        factory,
    }
}

fn chat(model: &str, text: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.into(),
        messages: vec![pb::Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every event of a call, or the status that ended it.
async fn events(
    client: &mut LlmlabClient<Channel>,
    request: tonic::Request<pb::ChatRequest>,
) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = client.chat(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(event) = stream.message().await? {
        out.push(event.event.expect("every event carries a payload"));
    }
    Ok(out)
}

fn text_of(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Content(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn chat_streams_content_usage_and_the_finish() {
    let mut d = door(Script::text(&["Hel", "lo"])).await;
    let events = events(&mut d.client, tonic::Request::new(chat("fake-a", "hi")))
        .await
        .unwrap();
    assert_eq!(text_of(&events), "Hello");
    assert!(matches!(
        events[events.len() - 2],
        Event::Usage(pb::Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
            ..
        })
    ));
    match events.last().unwrap() {
        Event::Finished(f) => assert_eq!(f.finish_reason, "stop"),
        other => panic!("last event {other:?}"),
    }
    let seen = d.factory.pipeline.chats.lock().unwrap();
    assert_eq!(seen[0].messages[0].content.joined_text(), "hi");
}

#[tokio::test]
async fn concurrent_calls_share_one_connection() {
    let d = door(Script::text(&["a", "b", "c"]).with_delay(Duration::from_millis(20))).await;
    let calls = (0..4).map(|i| {
        let mut client = d.client.clone();
        tokio::spawn(async move { events(&mut client, tonic::Request::new(chat("fake-a", &format!("q{i}")))).await })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(text_of(&call.unwrap().unwrap()), "abc");
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_generation() {
    let mut d = door(Script::text(&["tick"; 200]).with_delay(Duration::from_millis(20))).await;
    let mut stream = d.client.chat(chat("fake-a", "hi")).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    for _ in 0..100 {
        if d.factory.pipeline.cancelled.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the generation was not cancelled");
}

#[tokio::test]
async fn the_client_deadline_stops_the_generation() {
    let mut d = door(Script::text(&["tick"; 200]).with_delay(Duration::from_millis(20))).await;
    let mut request = tonic::Request::new(chat("fake-a", "hi"));
    request.set_timeout(Duration::from_millis(300));
    let status = events(&mut d.client, request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    for _ in 0..100 {
        if d.factory.pipeline.cancelled.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the generation outlived the deadline");
}

#[tokio::test]
async fn errors_have_precise_codes_and_name_the_field() {
    let mut d = door(Script::text(&["ok"])).await;
    let unknown = events(&mut d.client, tonic::Request::new(chat("nope", "hi")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let mut bad_role = chat("fake-a", "hi");
    bad_role.messages[0].role = "robot".into();
    let status = events(&mut d.client, tonic::Request::new(bad_role)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.metadata().get("llmlab-param").unwrap(), "messages[0].role");

    let mut no_messages = chat("fake-a", "hi");
    no_messages.messages.clear();
    let status = events(&mut d.client, tonic::Request::new(no_messages))
        .await
        .unwrap_err();
    assert_eq!(status.metadata().get("llmlab-param").unwrap(), "messages");

    let mut hot = chat("fake-a", "hi");
    hot.settings = Some(pb::GenerationSettings {
        sampling: Some(pb::Sampling {
            temperature: Some(-1.0),
            ..Default::default()
        }),
        ..Default::default()
    });
    let status = events(&mut d.client, tonic::Request::new(hot)).await.unwrap_err();
    assert_eq!(
        (
            status.code(),
            status.metadata().get("llmlab-param").unwrap().to_str().unwrap()
        ),
        (Code::InvalidArgument, "temperature")
    );

    // The fake registry has no image model.
    let image = d
        .client
        .generate_image(pb::GenerateImageRequest {
            prompt: "a cat".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(image.code(), Code::InvalidArgument);
    assert!(image.message().contains("no image model"), "{}", image.message());

    let embed_on_chat_model = d
        .client
        .embed(pb::EmbedRequest {
            model: "fake-a".into(),
            inputs: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        embed_on_chat_model.code(),
        Code::InvalidArgument,
        "{embed_on_chat_model:?}"
    );

    // Still serving.
    let events = events(&mut d.client, tonic::Request::new(chat("fake-a", "hi")))
        .await
        .unwrap();
    assert_eq!(text_of(&events), "ok");
}

#[tokio::test]
async fn embed_completes_and_models_load_and_unload() {
    let mut d = door(Script::text(&["ok"])).await;
    let answer = d
        .client
        .embed(pb::EmbedRequest {
            model: "fake-embed".into(),
            inputs: vec!["one".into(), "two".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.embeddings.len(), 2);
    assert_eq!(
        answer.embeddings[0].values.len(),
        llmlab_core::testing::FAKE_EMBEDDING_DIMENSIONS
    );

    let completion = d
        .client
        .complete(pb::CompleteRequest {
            model: "fake-b".into(),
            prompt: "once".into(),
            settings: None,
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap();
    assert_eq!(completion.unwrap().event, Some(Event::Content("ok".into())));

    let loaded = d
        .client
        .load_model(pb::LoadModelRequest {
            model: "fake-b".into(),
            keep_alive: "10m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(loaded.model.unwrap().state, "loaded");
    let models = d
        .client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["fake-a", "fake-b", "fake-embed"]);
    let unloaded = d
        .client
        .unload_model(pb::UnloadModelRequest { model: "fake-b".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(unloaded.unloaded);
    let bad_keep_alive = d
        .client
        .load_model(pb::LoadModelRequest {
            model: "fake-b".into(),
            keep_alive: "soon".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_keep_alive.metadata().get("llmlab-param").unwrap(), "keep_alive");
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let d = door(Script::text(&["ok"])).await;
    let health = HealthClient::new(d.channel.clone())
        .check(HealthCheckRequest {
            service: "llmlab.v1.Llmlab".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(d.channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"llmlab.v1.Llmlab".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}

#[tokio::test]
async fn the_api_key_guards_the_service_but_not_health() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let config = GrpcConfig {
        api_key: Some("sesame".into()),
        max_message_bytes: Some(1024),
    };
    let mut d = door_with(Script::text(&["ok"]), config).await;
    let refused = events(&mut d.client, tonic::Request::new(chat("fake-a", "hi")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().starts_with("missing API key"), "{refused:?}");

    let mut wrong = tonic::Request::new(chat("fake-a", "hi"));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        events(&mut d.client, wrong).await.unwrap_err().message(),
        "invalid API key"
    );

    let mut right = tonic::Request::new(chat("fake-a", "hi"));
    right
        .metadata_mut()
        .insert("authorization", "Bearer sesame".parse().unwrap());
    assert_eq!(text_of(&events(&mut d.client, right).await.unwrap()), "ok");

    let mut too_big = tonic::Request::new(chat("fake-a", &"x".repeat(2000)));
    too_big
        .metadata_mut()
        .insert("authorization", "Bearer sesame".parse().unwrap());
    let status = events(&mut d.client, too_big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let health = HealthClient::new(d.channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "{health:?}");
}
