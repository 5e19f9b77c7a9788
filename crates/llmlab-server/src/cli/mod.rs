//! Command-line interface. Every flag can also be set from the environment.

mod bench_engine;
mod chat;
mod embed;
mod image;
mod models;
mod ps;
mod serve;
mod service;
mod worker;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use llmlab_core::config;
use llmlab_core::registry::Registry;

use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "llmlab",
    version,
    about = "Serve and run local models: chat, embeddings, images."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Model registry file.
    #[arg(long, global = true, env = config::ENV_REGISTRY, default_value = config::DEFAULT_REGISTRY_PATH)]
    pub registry: PathBuf,
    /// Folder holding model files [default: $XDG_CACHE_HOME/llmlab/models]
    #[arg(long, global = true, env = config::ENV_MODELS_DIR)]
    pub models_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "LLMLAB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

impl CommonArgs {
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir.clone().unwrap_or_else(config::models_dir)
    }

    pub fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::load(&self.registry, &self.models_dir())?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Take jobs from RabbitMQ queues (chat, completions, embeddings, images).
    Worker(worker::WorkerCommandArgs),
    /// Chat with a model in the terminal (interactive when no prompt is given).
    Chat(chat::ChatArgs),
    /// Embed texts, or rank them against a query, and print JSON.
    Embed(embed::EmbedArgs),
    /// Generate an image (or edit one with --init and --mask) into a file.
    Image(image::ImageArgs),
    /// Inspect the model registry.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Show the models a running server holds.
    Ps(ps::PsArgs),
    /// Fetch model files (the default model when no id is given).
    Pull(PullArgs),
    /// Load-test an OpenAI-compatible endpoint (ours or a peer's).
    Bench(crate::bench::BenchArgs),
    /// Measure the engine's decode speed (compare with llama-bench tg).
    #[command(hide = true)]
    BenchEngine(bench_engine::BenchEngineArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Model ids from the registry.
    pub models: Vec<String>,
    /// Fetch every model that has a source.
    #[arg(long)]
    pub all: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(&cli.common, args),
        Command::Worker(args) => worker::run(&cli.common, args),
        Command::Chat(args) => chat::run(&cli.common, args),
        Command::Embed(args) => embed::run(&cli.common, args),
        Command::Image(args) => image::run(&cli.common, args),
        Command::Models { command } => models::run(&cli.common, command),
        Command::Pull(args) => pull(&cli.common, args),
        Command::Ps(args) => ps::run(&args),
        Command::Bench(args) => bench(&args),
        Command::BenchEngine(args) => bench_engine::run(&cli.common, args),
    }
}

fn pull(common: &CommonArgs, args: PullArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    let ids: Vec<String> = if args.all {
        registry
            .models
            .iter()
            .filter(|m| m.source.is_some())
            .map(|m| m.id.clone())
            .collect()
    } else if args.models.is_empty() {
        vec![registry.default_model.clone()]
    } else {
        args.models
    };
    for id in ids {
        let spec = registry.require(&id)?;
        let path = crate::pull::pull(spec).with_context(|| format!("pulling '{id}'"))?;
        println!("{id}: {}", path.display());
    }
    Ok(())
}

fn bench(args: &crate::bench::BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let reports = runtime.block_on(crate::bench::run(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", crate::bench::stats::table(&reports));
    }
    Ok(())
}
