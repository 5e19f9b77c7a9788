//! Every default of llmlab, defined once. Other modules refer to these
//! constants instead of repeating numbers.

use std::path::PathBuf;

use crate::SamplingParams;

/// Environment variable naming the registry file.
pub const ENV_REGISTRY: &str = "LLMLAB_REGISTRY";
/// Environment variable naming the folder that holds model files.
pub const ENV_MODELS_DIR: &str = "LLMLAB_MODELS_DIR";
/// Environment variable that sets the default thread count of every model.
pub const ENV_THREADS: &str = "LLMLAB_THREADS";
/// Prefix of per-model overrides: `LLMLAB_MODEL__<ID>__<FIELD>`.
pub const ENV_MODEL_PREFIX: &str = "LLMLAB_MODEL__";
/// `0` keeps the BERT encoder off Intel AMX tiles even where the CPU and
/// the OS offer them (candle's matmul runs instead); see [`amx_allowed`].
pub const ENV_AMX: &str = "LLMLAB_AMX";

/// Whether the candle encoder may use AMX tiles when they are usable
/// (default). Turning it off is for comparing kernels and for machines
/// whose hypervisor misreports AMX.
pub fn amx_allowed() -> bool {
    !switched_off(ENV_AMX)
}

/// `1` makes a test that lacks what setup provides (a model not pulled, the
/// broker down) fail instead of skipping; CI sets it so nothing skips
/// silently. What the machine lacks (a CPU feature) is not setup's to
/// provide: see [`skip_on_this_machine`].
pub const ENV_REQUIRE_ALL: &str = "LLMLAB_REQUIRE_ALL";

/// A test cannot run here for `reason`: it fails when
/// [`ENV_REQUIRE_ALL`] is set, else it says so on stderr and the caller
/// returns early.
pub fn skip_test(reason: &str) {
    let required = matches!(
        std::env::var(ENV_REQUIRE_ALL).as_deref().map(str::trim),
        Ok("1" | "true" | "on" | "yes")
    );
    assert!(!required, "{reason} ({ENV_REQUIRE_ALL} is set: nothing may be skipped)");
    eprintln!("SKIPPED: {reason}");
}

/// A test cannot run on this machine's hardware (a CPU feature it lacks):
/// it says so on stderr, `LLMLAB_REQUIRE_ALL` or not, and the caller
/// returns early. CI machines differ (AMD and Intel, with and without AMX),
/// and no setup step can add an instruction set.
pub fn skip_on_this_machine(reason: &str) {
    eprintln!("SKIPPED on this machine: {reason}");
}

/// An on-by-default switch set to `0`, `false`, `off` or `no`.
fn switched_off(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref().map(str::trim),
        Ok("0" | "false" | "off" | "no")
    )
}

/// Registry file used when neither a flag nor [`ENV_REGISTRY`] names one.
pub const DEFAULT_REGISTRY_PATH: &str = "models/models.yaml";
pub const DEFAULT_CONTEXT_SIZE: u32 = 4096;
pub const DEFAULT_BATCH_SIZE: u32 = 512;
/// Sequences one loaded model decodes together (continuous batching), as
/// llama-server's automatic slot count. Each has the full `context_size`.
pub const DEFAULT_PARALLEL: u32 = 4;
/// More sequences than this per model only add KV memory on one machine.
pub const MAX_PARALLEL: u32 = 64;
pub const MIN_CONTEXT_SIZE: u32 = 64;

/// HTTP server defaults (`llmlab serve`).
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_SSE_KEEP_ALIVE_SECS: u64 = 5;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Seconds a client has to send a request's line and headers; also how long
/// an idle keep-alive connection waits for its next request.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Seconds a client has to send a whole request body once its headers are in.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Connections (HTTP and upgraded WebSockets) served at once; further ones
/// wait in the listen backlog until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Largest request head (request line and headers) read; more is a 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Job-queue door: the prefix of every queue name, and how many times a job
/// whose failure is the server's is tried before it is dead-lettered.
pub const DEFAULT_AMQP_PREFIX: &str = "llmlab";
pub const DEFAULT_JOB_ATTEMPTS: u32 = 3;
/// Seconds before a failed job goes back on its queue.
pub const DEFAULT_JOB_RETRY_DELAY_SECS: f64 = 1.0;

/// Base URL of a local llmlab's OpenAI API (what `llmlab bench` targets).
pub fn default_api_base() -> String {
    format!("http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1")
}

/// Log filter when `LLMLAB_LOG` is unset: llama.cpp's own chatter is kept at
/// warnings unless asked for.
pub const DEFAULT_LOG_FILTER: &str =
    "warn,llmlab=info,llmlab_server=info,llmlab_core=info,llmlab_llama=info,llama_cpp_2=warn";

/// Requests that may wait for one model's engine unless the registry says
/// otherwise (`max_queue`); more are refused with `Overloaded` (HTTP 429 and
/// `Retry-After`).
pub const DEFAULT_MAX_QUEUE: u32 = 64;

/// How long an idle model stays loaded unless the registry or the request
/// says otherwise (Ollama's default).
pub const DEFAULT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// How often idle models are checked against their keep-alive.
pub const KEEP_ALIVE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The part of a memory (RAM or GPU) loaded models may hold together when no
/// budget is set: 90%, leaving room for the rest of the system.
pub fn budget_share(total: u64) -> u64 {
    total / 10 * 9
}

/// Memory loaded models may hold together when `--memory-budget` is not set:
/// [`budget_share`] of the machine's RAM (none when it cannot be read).
pub fn default_memory_budget() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(budget_share(kib * 1024))
}

/// Parse a byte size: `123`, `512M`, `12G`, `1.5G` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&text[..at], text[at..].to_ascii_uppercase()),
        None => (text, String::new()),
    };
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown size unit in '{text}'")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("invalid size '{text}'"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid size '{text}'"));
    }
    Ok((value * scale as f64) as u64)
}

/// Recent tokens the repetition penalties look at.
pub const DEFAULT_PENALTY_LAST_N: i32 = 64;

/// Sampling used when neither the request nor the model sets a value.
/// These match llama-server's defaults so that answers are comparable.
pub fn default_sampling() -> SamplingParams {
    SamplingParams {
        temperature: Some(0.8),
        top_p: Some(0.95),
        top_k: Some(40),
        min_p: Some(0.05),
        repeat_penalty: Some(1.0),
        presence_penalty: Some(0.0),
        frequency_penalty: Some(0.0),
        penalty_last_n: Some(DEFAULT_PENALTY_LAST_N),
        seed: None,
    }
}

/// Threads per model when nothing else is configured: every core, at most
/// 8 (llama-server's and Ollama's default: one thread per core).
///
/// Measured side by side with llama-server (bench/RESULTS.md, W2-2
/// "Threads"): on a quiet 2-core machine two threads decode far faster
/// than one; with another process spinning on one core, OpenMP's
/// busy-waiting threads collapse and one thread would be faster. A machine
/// that serves models mostly serves nothing else, so the default is for
/// the quiet case; `LLMLAB_THREADS=<cores - 1>` suits a shared machine.
/// Past 8 threads decode is memory bound and more threads only add spinning.
pub fn default_threads() -> u32 {
    if let Some(n) = std::env::var(ENV_THREADS)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    cores.clamp(1, 8)
}

/// Limits on the images of one chat request (vision models). A request
/// past one is refused with a 400 naming the part; nothing past them is
/// decoded. Environment: `LLMLAB_MAX_IMAGE_BYTES` (with units, as
/// `12M`), `LLMLAB_MAX_IMAGE_PIXELS`, `LLMLAB_MAX_IMAGES`,
/// `LLMLAB_IMAGE_MAX_SIDE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Encoded bytes of one image (after base64).
    pub max_bytes: u64,
    /// Width x height of one image as its header declares it; checked
    /// before any pixel is decoded, so a small file cannot expand into a
    /// huge allocation.
    pub max_pixels: u64,
    /// Images in one request, over all its messages.
    pub max_images: usize,
    /// Longer side, in pixels, an image is scaled down to before it reaches
    /// the model (projectors resize to a few hundred pixels anyway; a
    /// smaller copy costs less memory and preprocessing).
    pub max_side: u32,
}

/// Ample for photos (OpenAI takes up to 20 MB per image; our HTTP body
/// limit is lower), small enough that a request cannot exhaust memory.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 20 << 20;
/// 50 megapixels: beyond any phone camera.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 50_000_000;
pub const DEFAULT_MAX_IMAGES: usize = 16;
pub const DEFAULT_IMAGE_MAX_SIDE: u32 = 2048;

/// The image limits, from the environment over the defaults (read once).
pub fn image_limits() -> ImageLimits {
    static LIMITS: std::sync::OnceLock<ImageLimits> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(|| {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| parse_bytes(v.trim()).ok())
                .filter(|n| *n > 0)
        };
        ImageLimits {
            max_bytes: number("LLMLAB_MAX_IMAGE_BYTES").unwrap_or(DEFAULT_MAX_IMAGE_BYTES),
            max_pixels: number("LLMLAB_MAX_IMAGE_PIXELS").unwrap_or(DEFAULT_MAX_IMAGE_PIXELS),
            max_images: number("LLMLAB_MAX_IMAGES").map_or(DEFAULT_MAX_IMAGES, |n| n as usize),
            max_side: number("LLMLAB_IMAGE_MAX_SIDE").map_or(DEFAULT_IMAGE_MAX_SIDE, |n| n.min(16384) as u32),
        }
    })
}

/// Image generation defaults (a request or the registry may set each).
pub const DEFAULT_IMAGE_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE_SCALE: f32 = 7.5;
pub const DEFAULT_IMAGE_SIDE: u32 = 512;
/// Image-to-image: how much of the picture is repainted by default.
pub const DEFAULT_IMAGE_STRENGTH: f32 = 0.8;

/// Image URLs (`http(s)`) are fetched only when the operator allows it:
/// limits on what one fetch may take.
pub const IMAGE_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Redirects a fetch follows, each one checked like the first address.
pub const IMAGE_FETCH_MAX_REDIRECTS: usize = 3;

/// Folder where model files live: `$LLMLAB_MODELS_DIR`, else
/// `$XDG_CACHE_HOME/llmlab/models`, else `~/.cache/llmlab/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_MODELS_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("llmlab").join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that sets this variable; nothing else in this binary
    /// reads it.
    #[test]
    fn a_skip_fails_when_every_test_is_required() {
        std::env::remove_var(ENV_REQUIRE_ALL);
        skip_test("not required: only a note");
        std::env::set_var(ENV_REQUIRE_ALL, "1");
        let refused = std::panic::catch_unwind(|| skip_test("model missing"));
        std::env::remove_var(ENV_REQUIRE_ALL);
        assert!(refused.is_err());
    }

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("lots").is_err() && parse_bytes("5X").is_err() && parse_bytes("-1G").is_err());
    }
}
