//! The accept loop of the HTTP door. `axum::serve` offers no header read
//! timeout and no connection limit, so connections are served here with
//! hyper-util's builder (HTTP/1.1 with keep-alive and upgrades, and HTTP/2).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::conn::GuardedStream;
use super::{router_with, AppState, ServerOptions};

/// After the grace period has run out and in-flight work was cancelled,
/// how long connections still get to close (a cancelled stream sends its
/// last event) before the server stops waiting for them.
const LINGER_AFTER_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say), so that
/// the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// HTTP/2 pings find peers that vanished without closing the connection.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open.
const H2_MAX_STREAMS: u32 = 256;

fn connection_builder(options: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Applies to every request of a keep-alive connection, counted from
        // when hyper starts waiting for its head: an idle connection is
        // closed after this long too.
        .header_read_timeout(options.header_timeout)
        // The request head must fit in this buffer; beyond it hyper answers
        // 431 (which GuardedStream puts in the envelope). hyper refuses a
        // buffer under 8 KiB.
        .max_buf_size(options.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// Serve the HTTP door on `listener` until `stopping` is cancelled; then
/// stop accepting, let in-flight requests finish for `grace`, and cancel
/// what is left (`state.shutdown`).
pub async fn serve_listener(
    listener: TcpListener,
    state: AppState,
    options: ServerOptions,
    grace: Duration,
    stopping: CancellationToken,
) -> anyhow::Result<()> {
    let app = router_with(state.clone(), &options);
    let builder = Arc::new(connection_builder(&options));
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    // Every connection task holds a receiver; `send` asks them to finish
    // gracefully, and `closed()` resolves once all of them are gone.
    let (close_all, close_signal) = watch::channel(());
    loop {
        // Take a slot before accepting: beyond the limit, new connections
        // wait in the kernel's backlog instead of being read.
        let slot = tokio::select! {
            () = stopping.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let tcp = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let io = TokioIo::new(GuardedStream::new(tcp, slot, options.header_timeout, true));
        let service = TowerToHyperService::new(app.clone());
        let builder = Arc::clone(&builder);
        let mut close_signal = close_signal.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let outcome = tokio::select! {
                outcome = conn.as_mut() => outcome,
                _ = close_signal.changed() => {
                    // Idle keep-alive connections close now; busy ones
                    // after their current response.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(close_signal);
        });
    }
    drop(listener);
    drop(close_signal);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections; finishing in-flight requests"
    );
    let _ = close_all.send(());
    // The grace timer runs on its own: other doors (gRPC, WebSockets) wait
    // on the same token even when every HTTP connection is already gone.
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        tracing::warn!("grace period over; cancelling remaining requests");
        shutdown.cancel();
    });
    if tokio::time::timeout(grace + LINGER_AFTER_GRACE, close_all.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; leaving them");
    }
    Ok(())
}
