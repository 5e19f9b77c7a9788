//! Requests that are not valid protobuf are the client's fault. tonic's
//! prost codec answers them with INTERNAL (following grpc's table for
//! parse errors); a client, a retry policy or an alert on INTERNAL then
//! blames the server. The generated server hard-codes its codec, so the
//! status is corrected on the way out instead.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;

/// The message prefixes of tonic's errors for undecodable requests: the
/// protobuf decoder's, and a body that ends inside a message frame. As they
/// appear in `grpc-message`, which is percent-encoded (spaces too).
const DECODE_FAILURES: [&[u8]; 2] = [
    b"failed%20to%20decode%20Protobuf%20message",
    b"Unexpected%20EOF%20decoding%20stream",
];

/// Wraps a gRPC service; answers whose status is INTERNAL because the
/// request could not be decoded become INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct InvalidArgumentOnDecode<S>(pub S);

impl<S: NamedService> NamedService for InvalidArgumentOnDecode<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<Request<B>> for InvalidArgumentOnDecode<S>
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            fix_status(response.headers_mut());
            Ok(response)
        })
    }
}

/// A request that fails to decode is answered before any message, so its
/// status is in the response headers (a "trailers-only" answer).
fn fix_status(headers: &mut tonic::codegen::http::HeaderMap) {
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|m| DECODE_FAILURES.iter().any(|p| m.as_bytes().starts_with(p)));
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decode_failures_change_code() {
        let mut headers = tonic::codegen::http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("failed%20to%20decode%20Protobuf%20message:%20invalid%20wire%20type"),
        );
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "3");
        let mut headers = tonic::codegen::http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert("grpc-message", HeaderValue::from_static("engine%20crashed"));
        fix_status(&mut headers);
        assert_eq!(headers["grpc-status"], "13");
    }
}
