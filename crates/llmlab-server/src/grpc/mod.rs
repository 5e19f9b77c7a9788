//! The gRPC door (tonic): `llmlab.v1.Llmlab` from `proto/llmlab/v1`, the
//! standard `grpc.health.v1` service and server reflection. Thin like the
//! HTTP door: decode, call the core service, encode.

mod auth;
mod convert;
mod deadline;
mod decode;
mod observe;
mod service;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
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

/// How the door treats connections (set from the HTTP door's flags). Apart
/// from [`GrpcConfig`] so that code building that one literally compiles on.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLimits {
    /// Connections served at once (further ones wait to be accepted);
    /// `None`: no limit.
    pub max_connections: Option<usize>,
    /// Time a new connection has to send HTTP/2's preface; `None`: the
    /// default header timeout.
    pub handshake_timeout: Option<Duration>,
}

/// HTTP/2 pings find clients that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Serve gRPC on `listener` until `stopping` is cancelled; generations still
/// running when `hard_stop` is cancelled end with UNAVAILABLE.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    config: GrpcConfig,
    stopping: CancellationToken,
    hard_stop: CancellationToken,
) -> anyhow::Result<()> {
    serve_limited(
        listener,
        service,
        config,
        ConnectionLimits::default(),
        stopping,
        hard_stop,
    )
    .await
}

/// [`serve`] with limits on connections.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    config: GrpcConfig,
    limits: ConnectionLimits,
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
    let llmlab = decode::InvalidArgumentOnDecode(llmlab);
    // Outermost, so that it sees every call and the corrected statuses.
    let llmlab = observe::ObserveCalls(llmlab);
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    let handshake = limits
        .handshake_timeout
        .unwrap_or(Duration::from_secs(llmlab_core::config::DEFAULT_HEADER_TIMEOUT_SECS));
    let incoming = incoming(listener, limits.max_connections, handshake);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .add_service(health)
        .add_service(reflection)
        .add_service(llmlab)
        .serve_with_incoming_shutdown(incoming, async move { stopping.cancelled().await })
        .await?;
    Ok(())
}

/// Accepted connections, at most `limit` open at once: a slot is taken
/// before accepting and travels with the socket until it closes.
fn incoming(
    listener: tokio::net::TcpListener,
    limit: Option<usize>,
    handshake: Duration,
) -> impl futures::Stream<Item = std::io::Result<crate::http::GuardedStream>> {
    let slots = Arc::new(Semaphore::new(limit.unwrap_or(Semaphore::MAX_PERMITS).max(1)));
    async_stream::stream! {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
            match listener.accept().await {
                Ok((tcp, _)) => yield Ok(crate::http::GuardedStream::new(tcp, slot, handshake, false)),
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the
                    // connections already open, try again shortly.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
