//! One accepted TCP connection, as the HTTP and gRPC servers see it: a
//! [`TcpStream`] that carries its slot of the connection limit, gives up on
//! clients that connect and say nothing, and (HTTP/1 only) turns hyper's own
//! bare error answers into the JSON error envelope.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::errors::ApiError;

/// What every HTTP/2 connection starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest a closing connection keeps reading what the client still sends
/// (long enough for a client on a busy machine to finish pushing a body
/// of several MiB, so that it reads the 413 instead of a reset).
const LINGER: Duration = Duration::from_secs(5);

/// An accepted connection. The semaphore permit lives as long as the
/// socket, also after an upgrade to WebSocket (hyper moves this whole value
/// into the upgraded stream), so upgraded sockets count towards the limit.
pub struct GuardedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    sniff: Option<Sniff>,
    rewrite: Rewrite,
    linger: Linger,
    write_shut: bool,
}

/// Closing with unread bytes in the socket makes the kernel send a reset,
/// which can destroy an answer the client has not read yet: a 413 sent
/// before a large body was read, or a 431. So an HTTP connection that
/// closes while the client is still sending first shuts its writing side
/// and reads (and drops) what arrives, until the client closes or
/// [`LINGER`] runs out.
enum Linger {
    Off,
    Ready,
    Draining(Pin<Box<Sleep>>),
}

/// Until the protocol is known (the first byte that is not HTTP/2's
/// preface, or the whole preface), reads have a deadline. hyper's HTTP/1
/// header timeout only starts once hyper-util has told HTTP/1 from HTTP/2,
/// and that detection waits for bytes without any limit.
struct Sniff {
    deadline: Pin<Box<Sleep>>,
    matched: usize,
}

enum Rewrite {
    /// Not an HTTP/1 connection (yet, or at all): write bytes as they are.
    Off,
    /// HTTP/1: look at each response head for hyper's automatic errors.
    Watch,
    /// A replacement answer being written; `usize` bytes are out already.
    Writing(Vec<u8>, usize),
}

impl GuardedStream {
    /// `first_bytes_within`: how long the client has to show which protocol
    /// it speaks. `rewrite_errors`: this is an HTTP door (not gRPC), whose
    /// HTTP/1 errors must be in the JSON envelope.
    pub fn new(
        inner: TcpStream,
        slot: OwnedSemaphorePermit,
        first_bytes_within: Duration,
        rewrite_errors: bool,
    ) -> Self {
        let _ = inner.set_nodelay(true);
        Self {
            inner,
            _slot: slot,
            sniff: Some(Sniff {
                deadline: Box::pin(tokio::time::sleep(first_bytes_within)),
                matched: 0,
            }),
            rewrite: if rewrite_errors { Rewrite::Watch } else { Rewrite::Off },
            linger: if rewrite_errors { Linger::Ready } else { Linger::Off },
            write_shut: false,
        }
    }

    /// Read and drop what the client still sends; ready when it closes,
    /// when nothing is waiting at the start, or when the time is up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    if matches!(self.linger, Linger::Ready) {
                        self.linger = Linger::Draining(Box::pin(tokio::time::sleep(LINGER)));
                    }
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    return match &mut self.linger {
                        // Nothing unread: closing resets nothing.
                        Linger::Off | Linger::Ready => Poll::Ready(()),
                        Linger::Draining(deadline) => deadline.as_mut().poll(cx),
                    };
                }
            }
        }
    }

    /// Note the bytes just read; returns whether the protocol is now known.
    fn settle(&mut self, fresh: &[u8]) -> bool {
        let Some(sniff) = self.sniff.as_mut() else { return true };
        for &byte in fresh {
            if byte != H2_PREFACE[sniff.matched] {
                return true; // HTTP/1: hyper's header timeout takes over.
            }
            sniff.matched += 1;
            if sniff.matched == H2_PREFACE.len() {
                // HTTP/2 frames are binary: never rewrite them.
                self.rewrite = Rewrite::Off;
                return true;
            }
        }
        false
    }

    /// Write out the pending replacement answer, if any.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Rewrite::Writing(bytes, sent) = &mut self.rewrite {
            if *sent == bytes.len() {
                self.rewrite = Rewrite::Off; // The connection closes after it.
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.sniff.is_none() {
            return result;
        }
        match &result {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() || this.settle(fresh) {
                    this.sniff = None;
                }
            }
            Poll::Ready(Err(_)) => {}
            Poll::Pending => {
                let expired = this
                    .sniff
                    .as_mut()
                    .is_some_and(|s| s.deadline.as_mut().poll(cx).is_ready());
                if expired {
                    this.sniff = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client sent no request within the header timeout",
                    )));
                }
            }
        }
        result
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        if matches!(this.rewrite, Rewrite::Watch) {
            if let Some(answer) = envelope_for_bare_error(buf) {
                // Take hyper's bytes as written and send ours instead.
                this.rewrite = Rewrite::Writing(answer, 0);
                let _ = this.poll_replacement(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            // One buffer: the shape of hyper's bodiless error head.
            return self.poll_write(cx, only);
        }
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        if !self.write_shut {
            ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.write_shut = true;
        }
        if !matches!(self.linger, Linger::Off) {
            ready!(self.poll_linger(cx));
            self.linger = Linger::Off;
        }
        Poll::Ready(Ok(()))
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// hyper answers requests it cannot parse by itself, before any of our code
/// runs: 400 (malformed), 414 (URI too long), 431 (head too large), each
/// with `content-length: 0`. Every answer of ours to an error has a JSON
/// body, so a head of that shape can only be hyper's; it becomes the same
/// status with the envelope. The connection is closed after it either way.
fn envelope_for_bare_error(head: &[u8]) -> Option<Vec<u8>> {
    if !(head.starts_with(b"HTTP/1.1 ") || head.starts_with(b"HTTP/1.0 ")) || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, headers) = text.split_once("\r\n")?;
    let status = StatusCode::from_bytes(status_line.get(9..12)?.as_bytes()).ok()?;
    let lines: Vec<&str> = headers.split("\r\n").filter(|l| !l.is_empty()).collect();
    if !lines.iter().any(|l| l.eq_ignore_ascii_case("content-length: 0")) {
        return None;
    }
    let (message, code) = match status {
        StatusCode::BAD_REQUEST => ("malformed HTTP request", "invalid_request"),
        StatusCode::URI_TOO_LONG => ("request URI is too long", "uri_too_long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "request headers are too large or too many",
            "request_header_fields_too_large",
        ),
        _ => return None,
    };
    let body = ApiError::with_code(status, code, message).envelope().to_string();
    let mut answer = format!("{status_line}\r\n");
    for line in lines.iter().filter(|l| {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        name != "content-length" && name != "connection"
    }) {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_errors_get_the_envelope() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(envelope_for_bare_error(head).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("date: x") && head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "request_header_fields_too_large");
    }

    #[test]
    fn our_own_answers_pass_untouched() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 80\r\n\r\n";
        let body = b"{\"error\":{}}";
        for bytes in [&ok[..], &json[..], &body[..]] {
            assert!(envelope_for_bare_error(bytes).is_none());
        }
    }
}
