//! Builds llama.cpp's sampler chain from request sampling settings, in the
//! same order llama-server uses: penalties, top-k, top-p, min-p, temperature,
//! then a seeded draw (or greedy when the temperature is 0).

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llmlab_core::{Error, ResolvedParams, Result, SamplingParams};

/// llama.cpp's "pick a random seed" value.
const RANDOM_SEED: u32 = u32::MAX;

/// The sampler for a request: an optional grammar (from `json_schema`)
/// masks impossible tokens first, then the sampling chain picks one.
pub(crate) fn build_request_sampler(model: &LlamaModel, params: &ResolvedParams) -> Result<LlamaSampler> {
    let mut chain = Vec::new();
    if let Some(schema) = &params.json_schema {
        chain.push(grammar_sampler(model, schema)?);
    }
    chain.push(build_sampler(&params.sampling, model.n_vocab()));
    Ok(LlamaSampler::chain_simple(chain))
}

/// A grammar sampler accepting exactly the JSON texts that match `schema`,
/// converted by llama.cpp's own JSON-schema-to-GBNF translator.
///
/// Validation (`check_grammar_schema`) refuses the schemas known to fail
/// here; whatever still fails is the client's schema too, never the model's
/// fault, so it is a client error and does not count against the model.
fn grammar_sampler(model: &LlamaModel, schema: &serde_json::Value) -> Result<LlamaSampler> {
    let gbnf = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
        Error::invalid_param(
            "response_format",
            format!("llama.cpp cannot turn the JSON schema into a grammar: {e}"),
        )
    })?;
    LlamaSampler::grammar(model, &gbnf, "root").map_err(|e| {
        Error::invalid_param(
            "response_format",
            format!("llama.cpp rejected the grammar made from the JSON schema: {e}"),
        )
    })
}

/// `params` must be fully resolved (every field set); missing values fall
/// back to "off".
pub(crate) fn build_sampler(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    let repeat = params.repeat_penalty.unwrap_or(1.0);
    let presence = params.presence_penalty.unwrap_or(0.0);
    let frequency = params.frequency_penalty.unwrap_or(0.0);
    if repeat != 1.0 || presence != 0.0 || frequency != 0.0 {
        let last_n = params
            .penalty_last_n
            .unwrap_or(llmlab_core::config::DEFAULT_PENALTY_LAST_N);
        chain.push(LlamaSampler::penalties(n_vocab, last_n, repeat, frequency, presence));
    }
    let temperature = params.temperature.unwrap_or(0.0);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(k) = params.top_k.filter(|k| *k > 0) {
            chain.push(LlamaSampler::top_k(k));
        }
        if let Some(p) = params.top_p.filter(|p| *p < 1.0) {
            chain.push(LlamaSampler::top_p(p, 1));
        }
        if let Some(p) = params.min_p.filter(|p| *p > 0.0) {
            chain.push(LlamaSampler::min_p(p, 1));
        }
        chain.push(LlamaSampler::temp(temperature));
        // Validation keeps seeds within 32 bits (`MAX_SEED`).
        let seed = params.seed.and_then(|s| u32::try_from(s).ok()).unwrap_or(RANDOM_SEED);
        chain.push(LlamaSampler::dist(seed));
    }
    LlamaSampler::chain_simple(chain)
}
