//! Each `llmlab.v1.Llmlab` call observed like a request at any other door
//! (see `crate::observe`). A layer around the service gives every call
//! its request id (the `x-request-id` metadata when usable, echoed back in
//! the response metadata), its span and its count, so calls refused before
//! a method runs (no API key, a message that does not decode) count too.
//!
//! A call ends where the layer can see it end: at the response head when
//! the status is already there (an error, or a unary answer), else when
//! its event stream ends, which only the method holds: the method takes
//! the call's [`Call`] from the request and hands it to [`watch`]. The
//! method also names the model, which only it reads from the message.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Code;
use tracing::Instrument;

use llmlab_core::metrics::CLIENT_CLOSED;
use llmlab_core::service::Service as Core;

use super::proto::chat_event::Event;
use super::service::EventStream;
use crate::observe::{self, Observed, Transport, Watched, REQUEST_ID_HEADER};

/// The service's methods, as route labels; anything else is "unknown"
/// (tonic answers it UNIMPLEMENTED).
const METHODS: [&str; 7] = [
    "Chat",
    "Complete",
    "Embed",
    "ListModels",
    "LoadModel",
    "UnloadModel",
    "GenerateImage",
];
/// Methods that answer with a stream: those end when the stream does.
const STREAMING: [&str; 2] = ["Chat", "Complete"];

/// The observation of one call, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Call(Arc<Observed>);

impl Call {
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }

    /// Name the call's model (as a registry id or "unknown").
    pub fn set_model(&self, service: &Core, requested: &str) {
        self.0.set_model(&observe::model_label(service, requested));
    }
}

/// Name the model of the call `request` belongs to.
pub fn set_model<T>(request: &tonic::Request<T>, service: &Core, requested: &str) {
    if let Some(call) = request.extensions().get::<Call>() {
        call.set_model(service, requested);
    }
}

/// A call's event stream that ends the call with the stream's status.
pub fn watch(call: Option<Call>, events: EventStream) -> EventStream {
    let Some(Call(observed)) = call else { return events };
    Box::pin(Watched::new(events, observed, 200, |item| match item {
        Ok(event) if matches!(event.event, Some(Event::Finished(_))) => Some(200),
        Ok(_) => None,
        Err(status) => Some(http_status(status.code())),
    }))
}

/// An image call's event stream, ended like [`watch`]'s: by the images or
/// by a status.
pub fn watch_images(call: Option<Call>, events: super::service::ImageEventStream) -> super::service::ImageEventStream {
    use super::proto::image_event::Event as Image;
    let Some(Call(observed)) = call else { return events };
    Box::pin(Watched::new(events, observed, 200, |item| match item {
        Ok(event) if matches!(event.event, Some(Image::Result(_))) => Some(200),
        Ok(_) => None,
        Err(status) => Some(http_status(status.code())),
    }))
}

/// The HTTP-equivalent status of a gRPC code, so one `status` label reads
/// the same on every door (the inverse of `status::code_for` where the
/// core has a kind for it).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => CLIENT_CLOSED,
        Code::InvalidArgument | Code::FailedPrecondition => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        // This door answers OUT_OF_RANGE to messages over the size limit.
        Code::OutOfRange => 413,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS.into_iter().find(|m| *m == name).unwrap_or("unknown")
}

/// A status already in the response head: a "trailers-only" answer.
fn head_status(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

/// The layer: wraps the whole `llmlab.v1.Llmlab` service.
#[derive(Debug, Clone)]
pub struct ObserveCalls<S>(pub S);

impl<S: NamedService> NamedService for ObserveCalls<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<Request<B>> for ObserveCalls<S>
where
    S: Service<Request<B>, Response = Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let offered = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
        let observed = Arc::new(Observed::start(Transport::Grpc, method, offered));
        request.extensions_mut().insert(Call(Arc::clone(&observed)));
        let span = observed.span().clone();
        let answer = span.in_scope(|| self.0.call(request));
        Box::pin(
            async move {
                let mut response = answer.await?;
                if let Ok(id) = HeaderValue::from_str(observed.id()) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, id);
                }
                match head_status(response.headers()) {
                    Some(code) => observed.finish(http_status(code)),
                    // The method's stream holds the call and ends it.
                    None if STREAMING.contains(&method) => {}
                    None => observed.finish(200),
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded_labels() {
        assert_eq!(method_of("/llmlab.v1.Llmlab/Chat"), "Chat");
        assert_eq!(method_of("/llmlab.v1.Llmlab/ListModels"), "ListModels");
        assert_eq!(method_of("/llmlab.v1.Llmlab/Anything-a-client-likes"), "unknown");
        assert_eq!(method_of(""), "unknown");
    }

    #[test]
    fn codes_read_as_the_http_statuses_of_the_other_doors() {
        for kind in [
            llmlab_core::ErrorKind::InvalidRequest,
            llmlab_core::ErrorKind::NotFound,
            llmlab_core::ErrorKind::Overloaded,
            llmlab_core::ErrorKind::Unavailable,
            llmlab_core::ErrorKind::Timeout,
            llmlab_core::ErrorKind::Internal,
        ] {
            let http = crate::openai::errors::status_for(kind).as_u16();
            assert_eq!(http_status(super::super::code_for(kind)), http, "{kind:?}");
        }
    }
}
