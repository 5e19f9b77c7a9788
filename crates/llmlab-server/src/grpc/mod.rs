//! The gRPC door (tonic): `llmlab.v1.Llmlab` from `proto/llmlab/v1`, the
//! standard `grpc.health.v1` service and server reflection. Thin like the
//! HTTP door: decode, call the core service, encode.

mod auth;
mod convert;
mod deadline;
mod service;
mod status;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;

/// Code generated from `proto/llmlab/v1/llmlab.proto` (server and client).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("llmlab.v1");

    /// The encoded descriptors of the contract, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/llmlab_v1_descriptor.bin"));
}

pub use status::code_for;

/// Settings of the gRPC door (the HTTP door's, so one flag covers both).
#[derive(Debug, Clone, Default)]
pub struct GrpcConfig {
    /// When set, `llmlab.v1.Llmlab` calls need `authorization: Bearer <key>`
    /// (health and reflection stay open, as probes expect).
    pub api_key: Option<String>,
    /// Largest accepted request message; `None`: tonic's 4 MiB.
    pub max_message_bytes: Option<usize>,
}

/// Serve gRPC on `listener` until `stopping` is cancelled; generations still
/// running when `hard_stop` is cancelled end with UNAVAILABLE.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    config: GrpcConfig,
    stopping: CancellationToken,
    hard_stop: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::llmlab_server::LlmlabServer<service::LlmlabDoor>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let door = service::LlmlabDoor { service, hard_stop };
    let mut llmlab = proto::llmlab_server::LlmlabServer::new(door);
    if let Some(limit) = config.max_message_bytes {
        llmlab = llmlab.max_decoding_message_size(limit);
    }
    let key = config.api_key;
    let llmlab = tonic::service::interceptor::InterceptedService::new(llmlab, move |request: tonic::Request<()>| {
        auth::check(key.as_deref(), &request)?;
        Ok(request)
    });
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(llmlab)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            stopping.cancelled().await
        })
        .await?;
    Ok(())
}
