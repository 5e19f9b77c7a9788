//! `llmlab chat`: stream a model's answer to the terminal. It runs the model
//! in this process through the core service, as every door does, so
//! validation, guards, deadlines and the circuit breaker apply here too.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use base64::Engine as _;
use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::service::Service;
use llmlab_core::{
    ChatEvent, ChatMessage, ChatRequest, CompletionRequest, ContentPart, GenerationParams, ImageUrl, MessageContent,
    SamplingParams, Timings, Usage,
};

use super::service::ServiceArgs;
use super::CommonArgs;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model id [default: the registry's default model]
    #[arg(short, long, env = "LLMLAB_MODEL")]
    pub model: Option<String>,
    /// The prompt; without one, an interactive session starts.
    pub prompt: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Complete the prompt as plain text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// An image for a vision model, sent with the first message
    /// (repeatable; PNG, JPEG, GIF or WebP).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<std::path::PathBuf>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<i32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print token counts and speeds to stderr after each answer.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl ChatArgs {
    fn params(&self) -> GenerationParams {
        GenerationParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
                ..SamplingParams::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: false,
            logprobs: None,
            json_schema: None,
            guards: None,
            batch_invariant: None,
        }
    }
}

/// The service and the runtime its tasks (deadlines, keep-alive) run on;
/// answers are read on this thread while the runtime's workers run them.
struct Session {
    runtime: Runtime,
    service: std::sync::Arc<Service>,
    model: String,
}

pub fn run(common: &CommonArgs, args: ChatArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    let id = args.model.clone().unwrap_or_else(|| registry.default_model.clone());
    registry.require(&id)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let service = runtime.block_on(async { args.service.build(registry) });
    // Load before the first prompt, so an interactive session starts ready.
    // A session keeps its model however long the person thinks.
    runtime.block_on(service.load(&id, Some(KeepAlive::Forever)))?;
    let session = Session {
        runtime,
        service,
        model: id.clone(),
    };
    let mut history: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    let mut images = image_parts(&args)?;

    if let Some(prompt) = &args.prompt {
        answer(&session, &args, &mut history, &mut images, prompt)?;
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Chatting with {id}. Empty line or Ctrl-D ends the session.");
    }
    let stdin = std::io::stdin();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        answer(&session, &args, &mut history, &mut images, line.trim_end())?;
    }
}

/// The `--image` files as content parts (base64 data URLs: the service
/// decodes and checks them as it does for every door).
fn image_parts(args: &ChatArgs) -> anyhow::Result<Vec<ContentPart>> {
    if args.raw && !args.images.is_empty() {
        anyhow::bail!("--image needs a chat message; it cannot go with --raw");
    }
    args.images
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let url = format!(
                "data:application/octet-stream;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            );
            Ok(ContentPart::ImageUrl {
                image_url: ImageUrl { url, detail: None },
            })
        })
        .collect()
}

/// Generate one answer, stream it to stdout and add the turn to `history`.
/// `images` go with this message (the first), ahead of its text.
fn answer(
    session: &Session,
    args: &ChatArgs,
    history: &mut Vec<ChatMessage>,
    images: &mut Vec<ContentPart>,
    prompt: &str,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let service = &session.service;
    let mut stream = if args.raw {
        let request = CompletionRequest {
            model: session.model.clone(),
            prompt: prompt.to_owned(),
            params: args.params(),
            keep_alive: Some(KeepAlive::Forever),
        };
        session.runtime.block_on(service.complete(request, cancel))?
    } else {
        let mut message = ChatMessage::user(prompt);
        if !images.is_empty() {
            let mut parts = std::mem::take(images);
            parts.push(ContentPart::Text {
                text: prompt.to_owned(),
            });
            message.content = MessageContent::Parts(parts);
        }
        history.push(message);
        let request = ChatRequest {
            model: session.model.clone(),
            messages: history.clone(),
            tools: Vec::new(),
            tool_choice: Default::default(),
            keep_alive: Some(KeepAlive::Forever),
            params: args.params(),
        };
        session.runtime.block_on(service.chat(request, cancel))?
    };
    let mut out = std::io::stdout().lock();
    let dim = std::io::stdout().is_terminal();
    let mut reply = String::new();
    let mut stats: Option<(Usage, Timings)> = None;
    while let Some(event) = stream.blocking_next() {
        match event {
            ChatEvent::Content(text) => {
                reply.push_str(&text);
                write!(out, "{text}")?;
            }
            ChatEvent::Reasoning(text) if dim => write!(out, "\x1b[2m{text}\x1b[0m")?,
            ChatEvent::Reasoning(text) => write!(out, "{text}")?,
            ChatEvent::ToolCall(delta) => write!(
                out,
                "{}{}",
                delta.name.map(|n| format!("\n[tool call {n}] ")).unwrap_or_default(),
                delta.arguments
            )?,
            ChatEvent::Usage { usage, timings } => stats = Some((usage, timings)),
            ChatEvent::Logprobs(_) | ChatEvent::Started => {}
            ChatEvent::Stopped(trip) => write!(
                out,
                "\n[stopped by the {} guard: {}]",
                trip.kind.stop_reason(),
                trip.detail
            )?,
            ChatEvent::Done { .. } => break,
            ChatEvent::Error(e) => return Err(e.into()),
        }
        out.flush()?;
    }
    writeln!(out)?;
    if !args.raw {
        history.push(ChatMessage::assistant(reply));
    }
    if let (true, Some((usage, t))) = (args.stats, stats) {
        eprintln!(
            "[{} prompt tokens ({} cached) at {:.1} t/s, {} generated at {:.1} t/s]",
            usage.prompt_tokens,
            usage.cached_tokens,
            t.prompt_tokens_per_second,
            usage.completion_tokens,
            t.generation_tokens_per_second
        );
    }
    Ok(())
}
