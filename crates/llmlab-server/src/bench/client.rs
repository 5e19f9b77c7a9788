//! One streamed completion request against any OpenAI-compatible server,
//! timed chunk by chunk.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use super::stats::RequestSample;

/// What every request of a run asks for.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Base URL ending in `/v1`.
    pub base_url: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    /// Start each prompt with the request's own number, so that no two
    /// share a prefix and no server can answer from a prompt cache.
    pub distinct_prompts: bool,
}

impl Workload {
    fn body(&self, serial: u64) -> Value {
        let prompt = if self.distinct_prompts {
            format!("{serial}{}", self.prompt)
        } else {
            self.prompt.clone()
        };
        json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
            // Fixed output length where the server allows it (llmlab,
            // llama-server and vLLM do); elsewhere we count what came.
            "ignore_eos": true,
        })
    }
}

/// Send request number `serial` and time its chunks.
pub async fn run_one(client: &reqwest::Client, work: &Workload, serial: u64) -> Result<RequestSample> {
    let url = format!("{}/completions", work.base_url.trim_end_matches('/'));
    let started = Instant::now();
    let response = client
        .post(&url)
        .json(&work.body(serial))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("{url} answered {status}: {text}");
    }
    let mut sample = RequestSample::default();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut chunks = 0u64;
    let mut usage_tokens = None;
    let mut buffer = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        buffer.extend_from_slice(&bytes?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Some(data) = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim_end().strip_prefix("data:"))
            else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                break;
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(error) = event.get("error") {
                bail!("stream error: {error}");
            }
            if let Some(n) = event["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n);
            }
            let choice = &event["choices"][0];
            let text = choice["text"]
                .as_str()
                .or_else(|| choice["delta"]["content"].as_str())
                .unwrap_or("");
            if text.is_empty() {
                continue;
            }
            let now = Instant::now();
            match last {
                None => sample.ttft = (now - started).as_secs_f64(),
                Some(previous) => sample.gaps.push((now - previous).as_secs_f64()),
            }
            first.get_or_insert(now);
            last = Some(now);
            chunks += 1;
        }
    }
    sample.output_tokens = usage_tokens.unwrap_or(chunks);
    if let (Some(first), Some(last)) = (first, last) {
        sample.generation = (last - first).as_secs_f64();
    }
    Ok(sample)
}
