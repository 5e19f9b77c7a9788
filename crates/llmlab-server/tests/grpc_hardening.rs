//! The gRPC door against broken and hostile clients, over real TCP:
//! request bytes that are not protobuf, a model id of 10,000 characters,
//! and connections that never start talking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::bytes::{Buf, BufMut};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

use llmlab_core::service::Service;
use llmlab_core::testing::{fake_registry, FakeFactory, Script};
use llmlab_server::grpc::proto::llmlab_client::LlmlabClient;
use llmlab_server::grpc::proto::{self as pb};
use llmlab_server::grpc::{ConnectionLimits, GrpcConfig};

async fn start(config: GrpcConfig) -> std::net::SocketAddr {
    start_limited(config, ConnectionLimits::default()).await
}

async fn start_limited(config: GrpcConfig, limits: ConnectionLimits) -> std::net::SocketAddr {
    let factory = Arc::new(FakeFactory::new(Script::text(&["x"])));
    let service = Arc::new(Service::new(fake_registry(), factory as _));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(llmlab_server::grpc::serve_limited(
        listener,
        service,
        config,
        limits,
        CancellationToken::new(),
        CancellationToken::new(),
    ));
    addr
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Sends and receives message bytes as they are, so that a test can put
/// anything on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn raw_unary(channel: Channel, method: &'static str, bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(tonic::Request::new(bytes), PathAndQuery::from_static(method), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

async fn raw_streaming(channel: Channel, method: &'static str, bytes: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(bytes), PathAndQuery::from_static(method), RawCodec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_are_invalid_argument() {
    let channel = channel(start(GrpcConfig::default()).await).await;
    // Field 1 with wire type 7 (there is none), a varint that never ends,
    // a length prefix longer than the message.
    let corpus: [&[u8]; 3] = [&[0x0f], &[0x08, 0xff, 0xff, 0xff], &[0x0a, 0x40, b'x']];
    for bytes in corpus {
        let status = raw_unary(channel.clone(), "/llmlab.v1.Llmlab/Embed", bytes.to_vec())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bytes:?}: {status:?}");
        let status = raw_streaming(channel.clone(), "/llmlab.v1.Llmlab/Chat", bytes.to_vec())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bytes:?}: {status:?}");
    }
    // The door still serves a well-formed call afterwards.
    let models = LlmlabClient::new(channel)
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap();
    assert!(!models.into_inner().models.is_empty());
}

#[tokio::test]
async fn a_long_model_id_is_cut_in_what_comes_back() {
    let mut client = LlmlabClient::new(channel(start(GrpcConfig::default()).await).await);
    let request = pb::ChatRequest {
        model: "m".repeat(10_000),
        messages: vec![pb::Message {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = client.chat(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().chars().count() <= 1024,
        "{} chars",
        status.message().len()
    );
    assert!(status.message().contains('…'), "{}", status.message());
    let metadata_bytes: usize = status
        .metadata()
        .iter()
        .map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => k.as_str().len() + v.as_encoded_bytes().len(),
            tonic::metadata::KeyAndValueRef::Binary(k, v) => k.as_str().len() + v.as_encoded_bytes().len(),
        })
        .sum();
    assert!(metadata_bytes < 4096, "{metadata_bytes} bytes of metadata");
}

#[tokio::test]
async fn a_silent_connection_loses_its_slot_after_the_handshake_timeout() {
    let limits = ConnectionLimits {
        max_connections: Some(1),
        handshake_timeout: Some(Duration::from_secs(1)),
    };
    let addr = start_limited(GrpcConfig::default(), limits).await;
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let mut client = LlmlabClient::new(channel(addr).await);
    let models = tokio::time::timeout(Duration::from_secs(5), client.list_models(pb::ListModelsRequest {}))
        .await
        .expect("served once the silent connection was dropped")
        .unwrap();
    assert!(!models.into_inner().models.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the limit did not hold: {:?}",
        started.elapsed()
    );
}
