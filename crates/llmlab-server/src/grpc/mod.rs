//! The gRPC door (tonic): `llmlab.v1.Llmlab` from `proto/llmlab/v1`, the
//! standard `grpc.health.v1` service and server reflection. Thin like the
//! HTTP door: decode, call the core service, encode.

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

/// Serve gRPC on `listener` until `stopping` is cancelled; generations still
/// running when `hard_stop` is cancelled end with UNAVAILABLE.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
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
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(proto::llmlab_server::LlmlabServer::new(door))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            stopping.cancelled().await
        })
        .await?;
    Ok(())
}
