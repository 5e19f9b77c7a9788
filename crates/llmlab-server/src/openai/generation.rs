//! The one path from a decoded OpenAI body to a running generation, shared
//! by the HTTP endpoints and the WebSocket door.

use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;
use llmlab_core::{ChatRequest, ChatStream, CompletionRequest, Result};

use super::request::{Delivery, OpenAiRequest};
use super::responses::Endpoint;

enum CoreRequest {
    Chat(ChatRequest),
    Completion(CompletionRequest),
}

/// A validated request for one endpoint, its model id resolved.
pub struct Generation {
    /// The registry id the request runs on (the default model's when the
    /// body named none).
    pub model: String,
    pub delivery: Delivery,
    request: CoreRequest,
}

impl Generation {
    pub fn new(body: OpenAiRequest, endpoint: Endpoint, service: &Service) -> Result<Self> {
        let (request, delivery, model) = match endpoint {
            Endpoint::Chat => {
                let (mut request, delivery) = body.into_chat()?;
                request.model = service.model_id(&request.model).to_owned();
                let model = request.model.clone();
                (CoreRequest::Chat(request), delivery, model)
            }
            Endpoint::Completion => {
                let (mut request, delivery) = body.into_completion()?;
                request.model = service.model_id(&request.model).to_owned();
                let model = request.model.clone();
                (CoreRequest::Completion(request), delivery, model)
            }
        };
        Ok(Self {
            model,
            delivery,
            request,
        })
    }

    /// Hand the request to the core service.
    pub async fn start(self, service: &Service, cancel: CancellationToken) -> Result<ChatStream> {
        match self.request {
            CoreRequest::Chat(request) => service.chat(request, cancel).await,
            CoreRequest::Completion(request) => service.complete(request, cancel).await,
        }
    }
}
