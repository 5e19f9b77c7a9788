//! Process signals: ctrl-c and SIGTERM both ask for a graceful stop.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first ctrl-c or SIGTERM.
pub fn stop_on_signal() -> CancellationToken {
    let stopping = CancellationToken::new();
    let token = stopping.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    stopping
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
