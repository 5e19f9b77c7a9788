//! `/api/pull`: `llmlab pull` (crate::pull) run for an HTTP client, its
//! progress as Ollama's status lines. Only the sources the registry names
//! are fetched, each verified before use, so a client can fetch nothing
//! else; a model already present is only verified.

use std::collections::HashSet;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, ErrorKind, Result};

use crate::pull::{pull_with, PullReport};

/// Progress lines per download at most (one per percent).
const PROGRESS_STEPS: u64 = 100;

/// Sends each step as `{"status": ...}` and downloads as
/// `{"status", "digest", "total", "completed"}`, as Ollama reports layers.
struct LineReport {
    lines: UnboundedSender<Value>,
}

impl PullReport for LineReport {
    fn status(&mut self, text: &str) {
        let _ = self.lines.send(json!({ "status": text }));
    }

    fn track<'a>(&mut self, name: &str, total: u64, reader: Box<dyn Read + Send + 'a>) -> Box<dyn Read + Send + 'a> {
        let progress = Progress {
            inner: reader,
            lines: self.lines.clone(),
            name: name.to_owned(),
            total,
            completed: 0,
            next: 0,
        };
        progress.send();
        Box::new(progress)
    }
}

struct Progress<R> {
    inner: R,
    lines: UnboundedSender<Value>,
    name: String,
    total: u64,
    completed: u64,
    /// Bytes after which the next line is sent.
    next: u64,
}

impl<R> Progress<R> {
    fn send(&self) {
        let _ = self.lines.send(json!({
            "status": format!("pulling {}", self.name),
            "digest": self.name,
            "total": self.total,
            "completed": self.completed,
        }));
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.completed += n as u64;
        if self.completed >= self.next || (n == 0 && self.completed > 0) {
            self.send();
            self.next = self.completed + (self.total / PROGRESS_STEPS).max(1);
        }
        Ok(n)
    }
}

/// Models being pulled now: two pulls of one model would write the same
/// partial file.
fn in_flight() -> &'static Mutex<HashSet<String>> {
    static PULLS: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    PULLS.get_or_init(Mutex::default)
}

/// Held while a pull runs.
#[derive(Debug)]
struct Claim(String);

impl Claim {
    fn take(id: &str) -> Result<Self> {
        let mut pulls = in_flight().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !pulls.insert(id.to_owned()) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("model '{id}' is being pulled already; try again when that pull is over"),
            )
            .with_retry_after(5));
        }
        Ok(Self(id.to_owned()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut pulls = in_flight().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pulls.remove(&self.0);
    }
}

/// Start pulling `spec`: its status lines, ending with `{"status":
/// "success"}` or the error that ended it (the door writes that as its
/// `{"error": ...}` line, or as the status of a whole answer). The pull runs
/// to its end on a blocking thread even if the client leaves (its file is
/// then in place for the next request). Refused at once if the model is
/// being pulled already.
pub fn pull_lines(spec: ModelSpec) -> Result<impl Stream<Item = Result<Value>>> {
    let claim = Claim::take(&spec.id)?;
    let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = lines.send(json!({"status": "pulling manifest"}));
    let task = tokio::task::spawn_blocking(move || {
        let _claim = claim;
        pull_with(&spec, &mut LineReport { lines }).map_err(|e| {
            // The cause may name server paths: the log gets it, the client a summary.
            tracing::error!(model = %spec.id, error = format!("{e:#}"), "pull failed");
            Error::unavailable(format!("pulling '{}' failed; the server log says why", spec.id))
        })
    });
    Ok(async_stream::stream! {
        while let Some(line) = rx.recv().await {
            yield Ok(line);
        }
        match task.await {
            Ok(Ok(_)) => yield Ok(json!({"status": "success"})),
            Ok(Err(error)) => yield Err(error),
            Err(e) => yield Err(Error::internal(format!("the pull task failed: {e}"))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_count_bytes_and_stay_few() {
        let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let data = vec![1u8; 10_000];
        let mut reader = LineReport { lines }.track("w.whl", 10_000, Box::new(&data[..]));
        let mut sink = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            let n = reader.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&chunk[..n]);
        }
        drop(reader);
        assert_eq!(sink, data);
        let mut sent = Vec::new();
        while let Ok(line) = rx.try_recv() {
            sent.push(line);
        }
        assert!(sent.len() <= PROGRESS_STEPS as usize + 3, "{}", sent.len());
        assert_eq!(sent[0]["completed"], 0);
        assert_eq!(sent.last().unwrap()["completed"], 10_000);
        assert_eq!(sent.last().unwrap()["status"], "pulling w.whl");
    }

    #[test]
    fn one_pull_per_model_at_a_time() {
        let first = Claim::take("m-claim-test").unwrap();
        assert_eq!(Claim::take("m-claim-test").unwrap_err().kind, ErrorKind::Unavailable);
        drop(first);
        assert!(Claim::take("m-claim-test").is_ok());
    }
}
