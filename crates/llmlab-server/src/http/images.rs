//! `/v1/images/generations` (JSON) and `/v1/images/edits` (multipart, as
//! OpenAI defines them): decode, call the core service, answer in one
//! piece or as server-sent events (`image_generation.progress` after each
//! step, `image_generation.partial_image` for the previews asked for,
//! `image_generation.completed` per image). Shapes live in
//! [`crate::openai::images`].

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;

use llmlab_core::{Error, ImageEvent, ImageRequest, ImageStream};

use crate::openai::errors::{envelope, status_for};
use crate::openai::images::{
    completed_events, images_json, partial_event, progress_event, unix_now, ImageDelivery, ImagesBody,
};
use crate::openai::parse_json;

use super::errors::ApiError;
use super::handlers::body_bytes;
use super::model_label::ModelLabel;
use super::AppState;

pub async fn generations(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let decoded = body_bytes(body, state.config.max_body_bytes)
        .and_then(|body| Ok(parse_json::<ImagesBody>(&body)?.into_request()?));
    match decoded {
        Ok((request, delivery)) => run(&state, request, delivery).await,
        Err(e) => e.into_response(),
    }
}

pub async fn edits(State(state): State<AppState>, form: Result<Multipart, MultipartRejection>) -> Response {
    let decoded = async {
        let form = form.map_err(|e| ApiError::from(Error::invalid(format!("expected a multipart form: {e}"))))?;
        read_edit_form(form).await
    }
    .await;
    match decoded {
        Ok((request, delivery)) => run(&state, request, delivery).await,
        Err(e) => e.into_response(),
    }
}

/// The multipart fields: files `image` (or `image[]`, the first) and
/// `mask`, the rest as text with the JSON body's names.
async fn read_edit_form(mut form: Multipart) -> Result<(ImageRequest, ImageDelivery), ApiError> {
    let bad = |field: &str, message: String| ApiError::from(Error::invalid_param(field, message));
    let mut fields = serde_json::Map::new();
    let (mut image, mut mask) = (None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad("image", format!("the form does not read: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| bad(&name, format!("field '{name}' does not read: {e}")))?;
        match name.as_str() {
            "image" | "image[]" if image.is_none() => image = Some(bytes.to_vec()),
            "image" | "image[]" => {}
            "mask" => mask = Some(bytes.to_vec()),
            _ => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                fields.insert(name, form_value(&text));
            }
        }
    }
    if image.is_none() {
        return Err(bad("image", "an edit needs an 'image' file".into()));
    }
    let body: ImagesBody = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| bad("body", format!("a form field has the wrong type: {e}")))?;
    let (mut request, delivery) = body.into_request()?;
    request.image = image;
    request.mask = mask;
    Ok((request, delivery))
}

/// A form field's text as the JSON value it stands for (numbers and
/// booleans are sent as text in forms).
fn form_value(text: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => value,
        _ => serde_json::Value::String(text.to_owned()),
    }
}

async fn run(state: &AppState, request: ImageRequest, delivery: ImageDelivery) -> Response {
    let label = ModelLabel::for_request(state, &request.model);
    let cancel = state.shutdown.child_token();
    let stream = match state.service.generate_image(request, cancel).await {
        Ok(stream) => stream,
        Err(e) => return ApiError::from(e).for_model(&label).into_response(),
    };
    if delivery.stream {
        return label.attach(Sse::new(sse_events(stream)).into_response());
    }
    match stream.finish().await {
        Ok(result) => {
            let label = ModelLabel::for_request(state, &result.model);
            label.attach(Json(images_json(&result, unix_now())).into_response())
        }
        Err(e) => ApiError::from(e).for_model(&label).into_response(),
    }
}

fn sse_events(mut stream: ImageStream) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        while let Some(event) = stream.next().await {
            match event {
                ImageEvent::Progress { step, steps } => {
                    yield Ok(Event::default().event("image_generation.progress").data(progress_event(step, steps).to_string()));
                }
                ImageEvent::Partial { index, partial_index, image } => {
                    let partial = partial_event(index, partial_index, &image, unix_now());
                    yield Ok(Event::default().event("image_generation.partial_image").data(partial.to_string()));
                }
                ImageEvent::Done(result) => {
                    for completed in completed_events(&result, unix_now()) {
                        yield Ok(Event::default().event("image_generation.completed").data(completed.to_string()));
                    }
                    break;
                }
                ImageEvent::Error(error) => {
                    let body = envelope(status_for(error.kind), &error);
                    yield Ok(Event::default().event("error").data(body.to_string()));
                    break;
                }
            }
        }
    }
}
