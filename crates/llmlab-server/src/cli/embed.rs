//! `llmlab embed`: embed texts with a registry model in this process, or
//! rank documents against a query (`--query`), and print JSON.

use std::sync::Arc;

use clap::Args;
use serde_json::json;

use llmlab_core::embedding::{EmbedInput, EmbeddingRequest, SimilarityRequest};
use llmlab_core::service::Service;

use super::CommonArgs;
use crate::factory::BackendFactory;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Embedding model id (default: the registry's first embedding model).
    #[arg(short, long, default_value = "")]
    pub model: String,
    /// Texts to embed; with --query, the documents to rank.
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// Rank the texts by cosine similarity to this query instead.
    #[arg(long)]
    pub query: Option<String>,
    /// With --query: how many of the best documents to print.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep only this many leading dimensions (Matryoshka models).
    #[arg(long)]
    pub dimensions: Option<usize>,
    /// Print vectors as the model pools them instead of unit length.
    #[arg(long)]
    pub no_normalize: bool,
    /// Cut texts longer than the model's window instead of chunking them.
    #[arg(long)]
    pub truncate: bool,
}

pub fn run(common: &CommonArgs, args: EmbedArgs) -> anyhow::Result<()> {
    let service = Service::new(common.registry()?, Arc::new(BackendFactory));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let output = runtime.block_on(async {
        if let Some(query) = args.query {
            let answer = service
                .similarity(SimilarityRequest {
                    model: args.model,
                    query,
                    documents: args.texts.clone(),
                    top_k: args.top_k,
                    keep_alive: None,
                })
                .await?;
            let results: Vec<_> = answer
                .results
                .iter()
                .map(|r| json!({"index": r.index, "score": r.score, "document": args.texts[r.index]}))
                .collect();
            Ok::<_, llmlab_core::Error>(
                json!({"model": answer.model, "results": results, "prompt_tokens": answer.prompt_tokens}),
            )
        } else {
            let answer = service
                .embed(EmbeddingRequest {
                    model: args.model,
                    inputs: args.texts.into_iter().map(EmbedInput::Text).collect(),
                    dimensions: args.dimensions,
                    normalize: Some(!args.no_normalize),
                    truncate: args.truncate,
                    keep_alive: None,
                })
                .await?;
            Ok(json!({"model": answer.model, "embeddings": answer.embeddings, "prompt_tokens": answer.prompt_tokens}))
        }
    })?;
    println!("{}", serde_json::to_string(&output)?);
    Ok(())
}
