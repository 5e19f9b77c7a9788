//! Percentiles and the per-concurrency report of `llmlab bench`.

use serde::Serialize;

/// What one request measured.
#[derive(Debug, Clone, Default)]
pub struct RequestSample {
    /// Seconds from sending the request to the first generated text.
    pub ttft: f64,
    /// Seconds between consecutive text chunks.
    pub gaps: Vec<f64>,
    /// Output tokens: the server's usage count when it sends one, else the
    /// number of text chunks received.
    pub output_tokens: u64,
    /// Seconds from the first to the last text chunk.
    pub generation: f64,
}

/// Nearest-rank percentile of `values` (`p` in 0..=100); 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Results of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
    /// Mean over requests of output tokens / generation seconds.
    pub per_stream_tokens_per_second: f64,
    /// All output tokens / wall-clock seconds of the level.
    pub aggregate_tokens_per_second: f64,
    pub output_tokens: u64,
    pub wall_seconds: f64,
}

impl LevelReport {
    pub fn new(concurrency: usize, samples: &[RequestSample], errors: usize, wall_seconds: f64) -> Self {
        let ttfts: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
        let gaps: Vec<f64> = samples.iter().flat_map(|s| s.gaps.iter().copied()).collect();
        let speeds: Vec<f64> = samples
            .iter()
            .filter(|s| s.generation > 0.0 && s.output_tokens > 1)
            .map(|s| (s.output_tokens - 1) as f64 / s.generation)
            .collect();
        let output_tokens = samples.iter().map(|s| s.output_tokens).sum();
        Self {
            concurrency,
            requests: samples.len(),
            errors,
            ttft_p50_ms: percentile(&ttfts, 50.0) * 1000.0,
            ttft_p99_ms: percentile(&ttfts, 99.0) * 1000.0,
            itl_p50_ms: percentile(&gaps, 50.0) * 1000.0,
            itl_p99_ms: percentile(&gaps, 99.0) * 1000.0,
            per_stream_tokens_per_second: if speeds.is_empty() {
                0.0
            } else {
                speeds.iter().sum::<f64>() / speeds.len() as f64
            },
            aggregate_tokens_per_second: if wall_seconds > 0.0 {
                output_tokens as f64 / wall_seconds
            } else {
                0.0
            },
            output_tokens,
            wall_seconds,
        }
    }
}

/// A fixed-width table of the levels.
pub fn table(levels: &[LevelReport]) -> String {
    let mut out = format!(
        "{:>5} {:>5} {:>4} {:>10} {:>10} {:>9} {:>9} {:>12} {:>11}\n",
        "conc", "reqs", "errs", "ttft p50", "ttft p99", "itl p50", "itl p99", "stream t/s", "total t/s"
    );
    for l in levels {
        out.push_str(&format!(
            "{:>5} {:>5} {:>4} {:>8.1}ms {:>8.1}ms {:>7.1}ms {:>7.1}ms {:>12.2} {:>11.2}\n",
            l.concurrency,
            l.requests,
            l.errors,
            l.ttft_p50_ms,
            l.ttft_p99_ms,
            l.itl_p50_ms,
            l.itl_p99_ms,
            l.per_stream_tokens_per_second,
            l.aggregate_tokens_per_second
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 99.0), 5.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn report_sums_tokens_and_speeds() {
        let s = RequestSample {
            ttft: 0.1,
            gaps: vec![0.01, 0.03],
            output_tokens: 3,
            generation: 0.04,
        };
        let r = LevelReport::new(2, &[s.clone(), s], 1, 2.0);
        assert_eq!((r.requests, r.errors, r.output_tokens), (2, 1, 6));
        assert_eq!(r.aggregate_tokens_per_second, 3.0);
        assert!((r.per_stream_tokens_per_second - 50.0).abs() < 1e-9);
        assert!((r.ttft_p50_ms - 100.0).abs() < 1e-9);
    }
}
