//! Requests after the service has validated them and resolved every
//! default against their model: the only form in which a generation
//! request reaches a pipeline.
//!
//! The types can only be built by [`ChatRequest::resolve`] and
//! [`CompletionRequest::resolve`] (a private field stands in for the proof),
//! so a pipeline that receives one knows validation ran, exactly once, and
//! that nothing is left for it to fill in. Compare TGI's router, whose
//! backends take a `ValidGenerateRequest`.

use serde_json::Value;

use super::{
    ChatMessage, ChatRequest, CompletionRequest, GenerationParams, SamplingParams, ToolChoice, ToolDefinition,
};
use crate::guards::GuardSettings;
use crate::keep_alive::KeepAlive;
use crate::media::{self, DecodedImage, RemoteImages};
use crate::registry::ModelSpec;
use crate::{config, Result};

/// Proof that a value came out of validation; only this module makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validated;

/// Generation settings with nothing left to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedParams {
    /// Request values, else the model's (registry), else llmlab's
    /// ([`config::default_sampling`]). A `seed` may still be unset: a
    /// random one is then drawn.
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens; `None` = until the context is full.
    pub max_tokens: Option<u32>,
    /// Strings that end generation; they are never part of the output.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// The output must be JSON matching this schema: the request's
    /// `response_format`, or the arguments of a forced tool call.
    pub json_schema: Option<Value>,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<u32>,
    /// The request's guards, else the model's.
    pub guards: GuardSettings,
    /// The request chose deadlines other than the model's. A deadline of
    /// the client's own that runs out is no fault of the model's.
    pub deadlines_from_client: bool,
    /// Decoded so that the answer does not depend on other requests (the
    /// request's choice, else the model's `batch_invariant`).
    pub batch_invariant: bool,
}

/// A chat request ready for a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedChat {
    /// The registry id of the model (the default model's when the request
    /// named none).
    pub model: String,
    /// Image parts' URLs read `llmlab-image:<id>` (see
    /// [`crate::media::IMAGE_ID_SCHEME`]); the pixels are in `images`.
    pub messages: Vec<ChatMessage>,
    /// The messages' images, decoded, in the order their parts appear.
    pub images: Vec<DecodedImage>,
    /// The tools the model sees and whose calls are parsed: none when the
    /// request's `tool_choice` was `"none"`.
    pub tools: Vec<ToolDefinition>,
    pub params: ResolvedParams,
    /// How long the model stays loaded after this request.
    pub keep_alive: KeepAlive,
    _validated: Validated,
}

/// A plain completion request ready for a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCompletion {
    pub model: String,
    /// The client's own text, read as written (no template).
    pub prompt: String,
    pub params: ResolvedParams,
    pub keep_alive: KeepAlive,
    _validated: Validated,
}

impl ChatRequest {
    /// Validate the request and resolve it against `model`, the registry
    /// entry it runs on. The only way to make a [`ResolvedChat`].
    pub fn resolve(self, model: &ModelSpec) -> Result<ResolvedChat> {
        self.resolve_with_images(model, &RemoteImages::default())
    }

    /// The `http(s)` image URLs the service must fetch before resolving,
    /// once it is known that `model` reads images and the request's image
    /// parts are well formed.
    pub fn image_urls_to_fetch(&self, model: &ModelSpec) -> Result<Vec<media::ImagePart<'_>>> {
        media::check_images(&self.messages, model, &config::image_limits())
    }

    /// [`Self::resolve`], with the bytes fetched for the request's image
    /// URLs. Decoding images takes a while: call it off the async threads
    /// when [`Self::has_images`].
    pub fn resolve_with_images(self, model: &ModelSpec, fetched: &RemoteImages) -> Result<ResolvedChat> {
        let forced_call = self.validate()?;
        let limits = config::image_limits();
        media::check_images(&self.messages, model, &limits)?;
        let ChatRequest {
            mut messages,
            mut tools,
            tool_choice,
            mut params,
            keep_alive,
            ..
        } = self;
        if tool_choice == ToolChoice::None {
            // "none": the model neither sees the tools nor gets its text
            // parsed as calls.
            tools.clear();
        }
        if forced_call.is_some() {
            // Validation refused a forced call together with a
            // `response_format`, so nothing is overwritten here.
            params.json_schema = forced_call;
        }
        let images = media::decode_images(&mut messages, fetched, &limits)?;
        Ok(ResolvedChat {
            model: model.id.clone(),
            messages,
            images,
            tools,
            params: params.resolve(model),
            keep_alive: keep_alive.unwrap_or(model.keep_alive),
            _validated: Validated,
        })
    }
}

impl ChatRequest {
    /// Some message holds an image part.
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| m.content.has_images())
    }
}

impl CompletionRequest {
    /// Validate the request and resolve it against `model`. The only way
    /// to make a [`ResolvedCompletion`].
    pub fn resolve(self, model: &ModelSpec) -> Result<ResolvedCompletion> {
        self.validate()?;
        Ok(ResolvedCompletion {
            model: model.id.clone(),
            prompt: self.prompt,
            params: self.params.resolve(model),
            keep_alive: self.keep_alive.unwrap_or(model.keep_alive),
            _validated: Validated,
        })
    }
}

impl GenerationParams {
    /// Fill what the request left open from the model, then from llmlab's
    /// defaults. Call only on validated params.
    fn resolve(self, model: &ModelSpec) -> ResolvedParams {
        let deadlines_from_client = self.guards.is_some_and(|g| g.deadlines != model.guards.deadlines);
        ResolvedParams {
            sampling: self.sampling.or(&model.sampling).or(&config::default_sampling()),
            max_tokens: self.max_tokens,
            stop: self.stop,
            ignore_eos: self.ignore_eos,
            json_schema: self.json_schema,
            logprobs: self.logprobs,
            guards: self.guards.unwrap_or(model.guards),
            deadlines_from_client,
            batch_invariant: self
                .batch_invariant
                .unwrap_or_else(|| model.backend.llama().is_some_and(|l| l.batch_invariant)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::{ChatMessage, FunctionDefinition};

    fn model() -> ModelSpec {
        let text = "default_model: m\nmodels:\n  - id: m\n    kind: chat\n    backend: llama\n    path: m.gguf\n    \
                    keep_alive: 7m\n    sampling: {temperature: 0.3, top_k: 5}\n    guards: {deadlines: {total_secs: 50}}\n";
        let registry = Registry::parse(text, "models.yaml".as_ref(), "/models".as_ref(), |_| None).unwrap();
        registry.models[0].clone()
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user("hi")],
            ..Default::default()
        }
    }

    #[test]
    fn sampling_comes_from_request_then_model_then_defaults() {
        let mut chat = request();
        chat.params.sampling.temperature = Some(0.9);
        let resolved = chat.resolve(&model()).unwrap();
        let sampling = &resolved.params.sampling;
        assert_eq!(sampling.temperature, Some(0.9), "the request's own value wins");
        assert_eq!(sampling.top_k, Some(5), "the model's value comes next");
        assert_eq!(
            sampling.top_p,
            config::default_sampling().top_p,
            "llmlab's default last"
        );
        assert_eq!(resolved.model, "m");
        assert_eq!(resolved.keep_alive, model().keep_alive);
    }

    #[test]
    fn guards_and_deadlines_come_from_the_model_unless_the_request_sets_its_own() {
        let resolved = request().resolve(&model()).unwrap();
        assert_eq!(resolved.params.guards.deadlines.total_secs, Some(50.0));
        assert!(!resolved.params.deadlines_from_client);

        let mut own = request();
        let mut guards = model().guards;
        guards.deadlines.total_secs = Some(5.0);
        own.params.guards = Some(guards);
        let resolved = own.resolve(&model()).unwrap();
        assert_eq!(resolved.params.guards.deadlines.total_secs, Some(5.0));
        assert!(resolved.params.deadlines_from_client);
    }

    #[test]
    fn batch_invariance_is_the_model_setting_unless_the_request_chooses() {
        assert!(!request().resolve(&model()).unwrap().params.batch_invariant);
        let mut invariant_model = model();
        invariant_model.backend.llama_mut().unwrap().batch_invariant = true;
        assert!(request().resolve(&invariant_model).unwrap().params.batch_invariant);
        let mut opt_out = request();
        opt_out.params.batch_invariant = Some(false);
        assert!(!opt_out.resolve(&invariant_model).unwrap().params.batch_invariant);
    }

    #[test]
    fn tool_choice_none_hides_the_tools_and_a_forced_call_becomes_a_schema() {
        let tool = ToolDefinition {
            kind: "function".into(),
            function: FunctionDefinition {
                name: "get_weather".into(),
                description: None,
                parameters: Some(serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}})),
            },
        };
        let mut none = request();
        none.tools = vec![tool.clone()];
        none.tool_choice = ToolChoice::None;
        assert!(none.resolve(&model()).unwrap().tools.is_empty());

        let mut forced = request();
        forced.tools = vec![tool];
        forced.tool_choice = ToolChoice::Function("get_weather".into());
        let resolved = forced.resolve(&model()).unwrap();
        assert!(
            resolved.params.json_schema.is_some(),
            "a forced call is grammar-constrained"
        );
        assert_eq!(resolved.tools.len(), 1);
    }

    #[test]
    fn an_invalid_request_is_refused_naming_the_field() {
        let mut chat = request();
        chat.params.sampling.top_p = Some(2.0);
        assert_eq!(chat.resolve(&model()).unwrap_err().param.as_deref(), Some("top_p"));
        let empty = ChatRequest::default();
        assert_eq!(empty.resolve(&model()).unwrap_err().param.as_deref(), Some("messages"));
        let completion = CompletionRequest {
            prompt: "x".into(),
            params: GenerationParams {
                max_tokens: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            completion.resolve(&model()).unwrap_err().param.as_deref(),
            Some("max_tokens")
        );
    }
}
