//! `llmlab ps`: which models a running server holds, and in what state.

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Base URL of the server's OpenAI API.
    #[arg(long, default_value_t = llmlab_core::config::default_api_base())]
    pub url: String,
    #[arg(long, env = "LLMLAB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also list models that are not loaded.
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: &PsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body: serde_json::Value = runtime.block_on(async {
        let url = format!("{}/models", args.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().get(&url);
        if let Some(key) = &args.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            bail!(
                "{url} answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json().await?)
    })?;
    println!(
        "{:<32} {:<9} {:>6} {:>10} {:>10} {:>8}  ERROR",
        "ID", "STATE", "ACTIVE", "MEMORY", "GPU", "EXPIRES"
    );
    for model in body["data"].as_array().into_iter().flatten() {
        let state = model["state"].as_str().unwrap_or("?");
        if state == "unloaded" && !args.all {
            continue;
        }
        let mib = |key: &str| {
            model[key]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |b| format!("{} MiB", b >> 20))
        };
        let expires = match (model["pinned"].as_bool(), model["expires_in_secs"].as_u64()) {
            (Some(true), _) => "pinned".to_owned(),
            (_, Some(secs)) => format!("{secs}s"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<32} {:<9} {:>6} {:>10} {:>10} {:>8}  {}",
            model["id"].as_str().unwrap_or("?"),
            state,
            model["active_requests"].as_u64().unwrap_or(0),
            mib("memory_bytes"),
            mib("gpu_memory_bytes"),
            expires,
            model["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
