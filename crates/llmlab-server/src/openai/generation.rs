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

/// A decoded request for one endpoint. The service validates it and
/// resolves its model; the stream it starts names that model.
pub struct Generation {
    /// The model as the body named it ("" for the default), for the
    /// metrics label of a request that fails before it starts.
    pub requested_model: String,
    pub delivery: Delivery,
    request: CoreRequest,
}

impl Generation {
    pub fn new(body: OpenAiRequest, endpoint: Endpoint) -> Result<Self> {
        let (request, delivery, requested_model) = match endpoint {
            Endpoint::Chat => {
                let (request, delivery) = body.into_chat()?;
                let model = request.model.clone();
                (CoreRequest::Chat(request), delivery, model)
            }
            Endpoint::Completion => {
                let (request, delivery) = body.into_completion()?;
                let model = request.model.clone();
                (CoreRequest::Completion(request), delivery, model)
            }
        };
        Ok(Self {
            requested_model,
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
