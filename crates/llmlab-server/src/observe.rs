//! How every door measures and logs a request, in one place: HTTP (the
//! middleware), WebSocket (each request on a socket), gRPC (each call) and
//! the job worker (each delivery) all start an [`Observed`] when a request
//! arrives and finish it when the request ends.
//!
//! An [`Observed`] is three things:
//! - the request id: the client's own (`x-request-id` header or metadata,
//!   a job's correlation or message id) when it is usable, else a UUID;
//! - a `request` tracing span carrying `request_id`, `transport` and
//!   `route`, which the door runs the request in, so every log line of the
//!   request names it; the span ends with one "request done" line;
//! - the request counter and latency histogram of `llmlab_core::metrics`,
//!   labelled by transport, route, model and status, recorded exactly once.
//!
//! Labels must stay bounded, or a client could create metric series
//! without end: routes are the door's own names, and models pass through
//! [`model_label`] (registry ids, else "unknown").

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::response::Response;
use futures::Stream;

use llmlab_core::metrics::{self, CLIENT_CLOSED};
use llmlab_core::service::Service;

pub use llmlab_core::metrics::JobEvent;

/// The header (HTTP) and metadata key (gRPC) carrying a request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client; a longer one is replaced.
const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
    Grpc,
    Amqp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::WebSocket => "websocket",
            Self::Grpc => "grpc",
            Self::Amqp => "amqp",
        }
    }
}

/// The client's request id when it is one we can log as is (printable
/// ASCII, at most 128 characters), else a fresh UUID. Ids go into every
/// log line of the request: control characters could forge lines.
pub fn request_id(offered: Option<&str>) -> String {
    offered
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_CHARS)
        .filter(|id| id.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The `model` label for a model a request names: the registry id (the
/// default model's when it names none), or "unknown" for a name the
/// registry does not know.
pub fn model_label(service: &Service, requested: &str) -> String {
    let id = service.model_id(requested);
    if service.registry().get(id).is_some() {
        id.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// Labels that become known while the request runs.
#[derive(Debug, Default)]
struct Labels {
    route: String,
    model: String,
    /// The status the request ends with unless told otherwise.
    status: Option<u16>,
    finished: bool,
}

/// One request at a door, from arrival to its end (see the module docs).
/// Methods take `&self` so that a door may share it (the gRPC layer and
/// the call's stream hold it together). Dropping it unfinished records the
/// request as abandoned by its client (499): a dropped future or stream is
/// how a door learns that its client went away.
#[derive(Debug)]
pub struct Observed {
    transport: Transport,
    id: String,
    span: tracing::Span,
    started: Instant,
    labels: Mutex<Labels>,
}

impl Observed {
    /// A request that just arrived; `offered` is the client's request id.
    pub fn start(transport: Transport, route: &str, offered: Option<&str>) -> Self {
        let id = request_id(offered);
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            transport = %transport.as_str(),
            route = tracing::field::Empty,
            method = tracing::field::Empty,
            path = tracing::field::Empty,
        );
        let observed = Self {
            transport,
            id,
            span,
            started: Instant::now(),
            labels: Mutex::default(),
        };
        observed.set_route(route);
        observed
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The span to run the request in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn labels(&self) -> std::sync::MutexGuard<'_, Labels> {
        self.labels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Name the route once it is known (a job's type is read from its
    /// body). Only the door's own names: never client text.
    pub fn set_route(&self, route: &str) {
        self.span.record("route", tracing::field::display(route));
        self.labels().route = route.to_owned();
    }

    /// HTTP's method and concrete path, for the log only (the route label
    /// is the matched pattern, `/v1/models/{id}`).
    pub fn record_http(&self, method: &str, path: &str) {
        self.span.record("method", tracing::field::display(method));
        self.span.record("path", tracing::field::display(path));
    }

    /// An already bounded label: a registry id or "unknown" (see
    /// [`model_label`]).
    pub fn set_model(&self, label: &str) {
        self.labels().model = label.to_owned();
    }

    /// The status to record if the request ends without one of its own.
    pub fn set_status(&self, status: u16) {
        self.labels().status = Some(status);
    }

    /// End the request with `status` (HTTP-equivalent). Only the first
    /// ending counts; later ones are ignored.
    pub fn finish(&self, status: u16) {
        let (route, model) = {
            let mut labels = self.labels();
            if labels.finished {
                return;
            }
            labels.finished = true;
            (std::mem::take(&mut labels.route), std::mem::take(&mut labels.model))
        };
        let elapsed = self.started.elapsed();
        metrics::request_finished(self.transport.as_str(), &route, &model, status, elapsed);
        self.span.in_scope(|| {
            tracing::info!(
                status,
                model = %model,
                ms = elapsed.as_millis() as u64,
                "request done"
            );
        });
    }

    /// End the request with the status set last, or `otherwise`.
    pub fn finish_as_set(&self, otherwise: u16) {
        let status = self.labels().status.unwrap_or(otherwise);
        self.finish(status);
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(CLIENT_CLOSED);
    }
}

/// A request refused before it could start (a frame that is not a
/// request, say): counted and logged like any other.
pub fn refused(transport: Transport, route: &str, status: u16) {
    Observed::start(transport, route, None).finish(status);
}

/// HTTP: a response whose body is already in memory ends the request
/// now; one still to be produced (a server-sent event stream) ends it when
/// its last byte is taken, or as abandoned (499) when the client goes
/// away first, so the latency is end to end in both cases.
pub fn finish_http(observed: Observed, response: Response) -> Response {
    let status = response.status().as_u16();
    let body = response.body();
    if body.is_end_stream() || body.size_hint().exact().is_some() {
        observed.finish(status);
        return response;
    }
    let (parts, body) = response.into_parts();
    let watched = Watched::new(body.into_data_stream(), Arc::new(observed), status, |_| None);
    Response::from_parts(parts, Body::from_stream(watched))
}

/// A stream that ends its request: at an item `ending` names as terminal
/// (with the status it gives), at its end (with `status`), or, dropped
/// before either, as abandoned by the client. It is polled in the
/// request's span.
pub struct Watched<S, F> {
    inner: S,
    observed: Arc<Observed>,
    status: u16,
    ending: F,
}

impl<S, F> Watched<S, F>
where
    S: Stream + Unpin,
    F: FnMut(&S::Item) -> Option<u16> + Unpin,
{
    pub fn new(inner: S, observed: Arc<Observed>, status: u16, ending: F) -> Self {
        Self {
            inner,
            observed,
            status,
            ending,
        }
    }
}

impl<S, F> Stream for Watched<S, F>
where
    S: Stream + Unpin,
    F: FnMut(&S::Item) -> Option<u16> + Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        // The stream is polled by the server after the door's own future
        // returned (an SSE body, a gRPC stream): enter the request's span
        // here, so what the stream logs is the request's too.
        let _entered = this.observed.span.enter();
        let next = Pin::new(&mut this.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(item)) => {
                if let Some(status) = (this.ending)(item) {
                    this.observed.finish(status);
                }
            }
            Poll::Ready(None) => this.observed.finish(this.status),
            Poll::Pending => {}
        }
        next
    }
}

impl<S, F> Drop for Watched<S, F> {
    fn drop(&mut self) {
        // The Arc may be shared (gRPC's layer), so its own drop may come
        // later: an unfinished stream is abandoned now.
        self.observed.finish(CLIENT_CLOSED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_safe_to_log() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        assert_eq!(request_id(Some("two words")), "two words");
        for bad in ["", "line\nbreak", "tab\there", "é", &"x".repeat(129)] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn routes_and_models_are_bounded_labels() {
        let service = Service::new(
            llmlab_core::testing::fake_registry(),
            std::sync::Arc::new(llmlab_core::testing::FakeFactory::new(
                llmlab_core::testing::Script::text(&["x"]),
            )) as _,
        );
        assert_eq!(model_label(&service, "fake-b"), "fake-b");
        assert_eq!(model_label(&service, ""), "fake-a");
        assert_eq!(model_label(&service, "no-such-model-9000"), "unknown");
    }

    /// The samples of the request counter whose labels include all of
    /// `labels`, from the process's recorder.
    fn requests(labels: &[&str]) -> Vec<String> {
        crate::http::prometheus::recorder()
            .render()
            .lines()
            .filter(|l| l.starts_with("llmlab_requests_total{") && labels.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn only_the_first_ending_counts_and_a_drop_is_an_abandonment() {
        crate::http::prometheus::recorder();
        let observed = Observed::start(Transport::Grpc, "unit-once", Some("id-1"));
        assert_eq!(observed.id(), "id-1");
        observed.set_model("fake-a");
        observed.set_status(503);
        observed.finish_as_set(200);
        // Later endings, and the drop, change nothing: no double count.
        observed.finish(200);
        drop(observed);
        let once = requests(&[r#"route="unit-once""#]);
        assert_eq!(once.len(), 1, "{once:?}");
        for part in [
            r#"transport="grpc""#,
            r#"model="fake-a""#,
            r#"status="503""#,
            r#"outcome="server_error""#,
        ] {
            assert!(once[0].contains(part), "{part} in {once:?}");
        }
        assert!(once[0].ends_with(" 1"), "{once:?}");

        drop(Observed::start(Transport::WebSocket, "unit-dropped", None));
        let dropped = requests(&[r#"route="unit-dropped""#, r#"status="499""#, r#"outcome="cancelled""#]);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
    }
}
