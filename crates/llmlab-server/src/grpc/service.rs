//! The `llmlab.v1.Llmlab` service: decode, call the core service, encode.
//! Errors become statuses in [`super::status`] only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use llmlab_core::service::Service;
use llmlab_core::{ChatEvent, ChatStream, Error, ErrorKind, FinishReason, ImageEvent, ImageStream};

use super::convert;
use super::deadline::deadline;
use super::observe::{self, Call};
use super::proto::{self, chat_event::Event};
use super::status::status_from;

/// How long a call waits for the first event before answering with a stream:
/// errors found before the first token (a prompt longer than the context)
/// then come back as the call's status rather than inside the stream.
const FIRST_EVENT_WAIT: Duration = Duration::from_secs(2);

pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::ChatEvent, Status>> + Send>>;

pub struct LlmlabDoor {
    pub service: Arc<Service>,
    /// Cancelled when shutdown's grace period runs out.
    pub hard_stop: CancellationToken,
}

fn status(error: Error) -> Status {
    status_from(&error)
}

fn deadline_passed() -> Status {
    status(Error::new(ErrorKind::Timeout, "the client's deadline passed"))
}

/// Run `work` until the client's deadline, if one was set.
async fn within<T>(
    until: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match until {
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or_else(|_| Err(deadline_passed())),
        None => work.await,
    }
}

fn event(event: Event) -> Result<proto::ChatEvent, Status> {
    Ok(proto::ChatEvent { event: Some(event) })
}

/// Core events as proto events. Dropping the stream (the client cancelled
/// or went away) drops the core stream, which stops the generation.
fn proto_events(mut events: ChatStream, until: Option<Instant>, cancel: CancellationToken) -> EventStream {
    Box::pin(async_stream::stream! {
        let _cancel_on_drop = cancel.drop_guard();
        let mut stopped_by = String::new();
        let expiry = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let next = tokio::select! {
                next = events.next_event() => next,
                () = &mut expiry => {
                    yield Err(deadline_passed());
                    break;
                }
            };
            let Some(next) = next else { break };
            match next {
                ChatEvent::Content(text) => yield event(Event::Content(text)),
                ChatEvent::Reasoning(text) => yield event(Event::Reasoning(text)),
                ChatEvent::ToolCall(delta) => yield event(Event::ToolCall(proto::ToolCallDelta {
                    index: delta.index,
                    id: delta.id.unwrap_or_default(),
                    name: delta.name.unwrap_or_default(),
                    arguments: delta.arguments,
                })),
                ChatEvent::Logprobs(_) | ChatEvent::Started => {}
                ChatEvent::Stopped(trip) => stopped_by = convert::guard_name(&trip),
                ChatEvent::Usage { usage, .. } => yield event(Event::Usage(proto::Usage {
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cached_tokens: usage.cached_tokens,
                })),
                ChatEvent::Done { finish_reason: FinishReason::Cancelled } => {
                    // The client is still reading, so the server cancelled.
                    yield Err(status(Error::new(ErrorKind::Unavailable, "the server is shutting down")));
                    break;
                }
                ChatEvent::Done { finish_reason } => {
                    yield event(Event::Finished(proto::Finished {
                        finish_reason: finish_reason.as_str().to_owned(),
                        stopped_by: std::mem::take(&mut stopped_by),
                    }));
                    break;
                }
                ChatEvent::Error(error) => {
                    yield Err(status(error));
                    break;
                }
            }
        }
    })
}

pub type ImageEventStream = Pin<Box<dyn Stream<Item = Result<proto::ImageEvent, Status>> + Send>>;

/// A generation's progress and images as proto events; dropping the
/// stream stops the generation between steps.
fn image_events(mut events: ImageStream, until: Option<Instant>, cancel: CancellationToken) -> ImageEventStream {
    use proto::image_event::Event as Image;
    Box::pin(async_stream::stream! {
        let _cancel_on_drop = cancel.drop_guard();
        let expiry = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = &mut expiry => {
                    yield Err(deadline_passed());
                    break;
                }
            };
            match next {
                Some(ImageEvent::Progress { step, steps }) => {
                    yield Ok(proto::ImageEvent { event: Some(Image::Progress(proto::ImageProgress { step, steps })) });
                }
                Some(ImageEvent::Partial { index, partial_index, image }) => {
                    let preview = proto::ImagePreview { index, partial_index, image: image.bytes };
                    yield Ok(proto::ImageEvent { event: Some(Image::Preview(preview)) });
                }
                Some(ImageEvent::Done(result)) => {
                    yield Ok(proto::ImageEvent { event: Some(Image::Result(convert::image_result(result))) });
                    break;
                }
                Some(ImageEvent::Error(error)) => {
                    yield Err(status(error));
                    break;
                }
                None => {
                    yield Err(status(Error::internal("the generation ended without an answer")));
                    break;
                }
            }
        }
    })
}

impl LlmlabDoor {
    /// Answer a started generation: a status for errors found before the
    /// first token, otherwise the event stream.
    /// `call` ends with the stream (see `observe`).
    async fn answer(
        &self,
        events: impl std::future::Future<Output = llmlab_core::Result<ChatStream>>,
        until: Option<Instant>,
        cancel: CancellationToken,
        call: Option<Call>,
    ) -> Result<Response<EventStream>, Status> {
        let mut events = within(until, async { events.await.map_err(status) }).await?;
        if let Some(ChatEvent::Error(error)) = events.peek_within(FIRST_EVENT_WAIT).await {
            return Err(status(error.clone()));
        }
        Ok(Response::new(observe::watch(call, proto_events(events, until, cancel))))
    }
}

#[tonic::async_trait]
impl proto::llmlab_server::Llmlab for LlmlabDoor {
    type ChatStream = EventStream;
    type CompleteStream = EventStream;

    async fn chat(&self, request: Request<proto::ChatRequest>) -> Result<Response<EventStream>, Status> {
        let call = Call::of(&request);
        observe::set_model(&request, &self.service, &request.get_ref().model);
        let until = deadline(request.metadata()).map_err(status)?;
        let core = convert::chat_request(request.into_inner()).map_err(status)?;
        let cancel = self.hard_stop.child_token();
        self.answer(self.service.chat(core, cancel.clone()), until, cancel, call)
            .await
    }

    async fn complete(&self, request: Request<proto::CompleteRequest>) -> Result<Response<EventStream>, Status> {
        let call = Call::of(&request);
        observe::set_model(&request, &self.service, &request.get_ref().model);
        let until = deadline(request.metadata()).map_err(status)?;
        let core = convert::completion_request(request.into_inner()).map_err(status)?;
        let cancel = self.hard_stop.child_token();
        self.answer(self.service.complete(core, cancel.clone()), until, cancel, call)
            .await
    }

    async fn embed(&self, request: Request<proto::EmbedRequest>) -> Result<Response<proto::EmbedResponse>, Status> {
        // Without a model named, the answer says which one ran.
        if !request.get_ref().model.is_empty() {
            observe::set_model(&request, &self.service, &request.get_ref().model);
        }
        let call = Call::of(&request);
        let until = deadline(request.metadata()).map_err(status)?;
        let core = convert::embed_request(request.into_inner());
        let answer = within(until, async { self.service.embed(core).await.map_err(status) }).await?;
        if let Some(call) = call {
            call.set_model(&self.service, &answer.model);
        }
        Ok(Response::new(convert::embed_response(answer)))
    }

    async fn list_models(
        &self,
        _request: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self.service.models().iter().map(convert::model_info).collect();
        Ok(Response::new(proto::ListModelsResponse { models }))
    }

    async fn load_model(
        &self,
        request: Request<proto::LoadModelRequest>,
    ) -> Result<Response<proto::LoadModelResponse>, Status> {
        observe::set_model(&request, &self.service, &request.get_ref().model);
        let until = deadline(request.metadata()).map_err(status)?;
        let request = request.into_inner();
        let keep_alive = convert::load_keep_alive(&request.keep_alive).map_err(status)?;
        let id = within(until, async {
            self.service.load(&request.model, keep_alive).await.map_err(status)
        })
        .await?;
        let model = self
            .service
            .models()
            .iter()
            .find(|m| m.id == id)
            .map(convert::model_info);
        Ok(Response::new(proto::LoadModelResponse { model }))
    }

    async fn unload_model(
        &self,
        request: Request<proto::UnloadModelRequest>,
    ) -> Result<Response<proto::UnloadModelResponse>, Status> {
        observe::set_model(&request, &self.service, &request.get_ref().model);
        let request = request.into_inner();
        let unloaded = self.service.unload(&request.model).await.map_err(status)?;
        Ok(Response::new(proto::UnloadModelResponse { unloaded }))
    }

    type GenerateImageStream = ImageEventStream;

    async fn generate_image(
        &self,
        request: Request<proto::GenerateImageRequest>,
    ) -> Result<Response<ImageEventStream>, Status> {
        let call = Call::of(&request);
        observe::set_model(&request, &self.service, &request.get_ref().model);
        let until = deadline(request.metadata()).map_err(status)?;
        let core = convert::image_request(request.into_inner()).map_err(status)?;
        let cancel = self.hard_stop.child_token();
        let events = within(until, async {
            self.service.generate_image(core, cancel.clone()).await.map_err(status)
        })
        .await?;
        Ok(Response::new(observe::watch_images(
            call,
            image_events(events, until, cancel),
        )))
    }
}
