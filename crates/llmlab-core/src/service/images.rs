//! Image generation: resolve (decoding any starting picture off the async
//! threads), lease the model, run the backend on a blocking thread while
//! progress streams back, encode the results here for every backend.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Purpose, Service};
use crate::media::{encode_image, RgbImage};
use crate::pipeline::LoadedPipeline;
use crate::{
    Error, ErrorKind, GeneratedImage, ImageEvent, ImageProgress, ImageRequest, ImageResult, ImageStream, OutputFormat,
    Result,
};

impl Service {
    /// Start a generation; its progress and result come on the stream.
    /// Dropping the stream (or firing `cancel`) stops it between steps.
    pub async fn generate_image(&self, request: ImageRequest, cancel: CancellationToken) -> Result<ImageStream> {
        let spec = self.spec_for(&request.model, Purpose::Image)?;
        let owned = spec.clone();
        let mut request = tokio::task::spawn_blocking(move || request.resolve(&owned))
            .await
            .map_err(|e| Error::internal(format!("reading the request's images failed: {e}")))??;
        let (pipeline, lease, watch) = self.leased_pipeline(spec, request.keep_alive).await?;
        let LoadedPipeline::Image(pipeline) = pipeline else {
            return Err(Error::internal(format!(
                "model '{}' did not load as an image model",
                spec.id
            )));
        };
        request.adopt_defaults(&pipeline.defaults());
        let (events, stream) = ImageStream::channel();
        // The model's total deadline holds for images as for text; it is
        // checked between steps, where a generation can stop.
        let total = spec.guards.deadlines.total();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let progress_events = events.clone();
            let mut timed_out = false;
            let format = request.output_format;
            let mut progress = |report: ImageProgress| {
                let events: Vec<ImageEvent> = match report {
                    ImageProgress::Step { step, steps } => vec![ImageEvent::Progress { step, steps }],
                    ImageProgress::Preview { index, images } => images
                        .iter()
                        .enumerate()
                        .filter_map(|(image_index, picture)| {
                            let image = generated(picture, format).ok()?;
                            Some(ImageEvent::Partial {
                                index: image_index as u32,
                                partial_index: index,
                                image,
                            })
                        })
                        .collect(),
                };
                for event in events {
                    if progress_events.send(event).is_err() {
                        // Nobody reads the stream any more.
                        cancel.cancel();
                    }
                }
                if total.is_some_and(|total| started.elapsed() >= total) {
                    timed_out = true;
                    cancel.cancel();
                }
            };
            let outcome = pipeline
                .generate(&request, &cancel, &mut progress)
                .and_then(|pictures| {
                    pictures
                        .iter()
                        .map(|p| generated(p, format))
                        .collect::<Result<Vec<_>>>()
                });
            let outcome = match outcome {
                // A long generation cut by the total limit is nobody's
                // fault: the breaker hears nothing of it.
                Err(_) if timed_out => {
                    drop(watch);
                    Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "the generation ran past the model's {:.0} s deadline",
                            total.unwrap_or_default().as_secs_f64()
                        ),
                    ))
                }
                outcome => {
                    watch.settle(&outcome);
                    outcome
                }
            };
            let event = match outcome {
                Ok(images) => ImageEvent::Done(ImageResult {
                    model: request.model.clone(),
                    images,
                    seed: request.seed,
                    steps: request.steps,
                    generation_ms: started.elapsed().as_secs_f64() * 1000.0,
                }),
                Err(error) => ImageEvent::Error(error),
            };
            let _ = events.send(event);
            drop(lease);
        });
        Ok(stream)
    }
}

fn generated(picture: &RgbImage, format: OutputFormat) -> Result<GeneratedImage> {
    Ok(GeneratedImage {
        bytes: encode_image(picture, format)?,
        format,
        width: picture.width,
        height: picture.height,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::Registry;
    use crate::testing::{FakeFactory, Script};

    fn service(deadline: &str) -> Service {
        let text = format!(
            "models:\n  - {{id: chat, kind: chat, backend: llama, path: c.gguf}}\n  \
             - {{id: sd, kind: image, backend: candle, path: sd, guards: {{deadlines: {{total_secs: {deadline}}}}}}}\n"
        );
        let registry = Registry::parse(&text, "r.yaml".as_ref(), "/m".as_ref(), |_| None).unwrap();
        Service::new(registry, Arc::new(FakeFactory::new(Script::text(&["x"]))))
    }

    fn request(steps: u32) -> ImageRequest {
        ImageRequest {
            prompt: "a cat".into(),
            size: Some("16x8".into()),
            steps: Some(steps),
            seed: Some(3),
            n: Some(2),
            partial_images: Some(1),
            ..ImageRequest::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_comes_in_order_then_the_encoded_images() {
        let svc = service("600");
        let mut stream = svc.generate_image(request(3), CancellationToken::new()).await.unwrap();
        let mut steps = Vec::new();
        let mut partials = Vec::new();
        let result = loop {
            match stream.next().await.expect("a terminal event") {
                ImageEvent::Progress { step, steps: total } => steps.push((step, total)),
                ImageEvent::Partial {
                    index,
                    partial_index,
                    image,
                } => {
                    assert_eq!(&image.bytes[..4], b"\x89PNG");
                    partials.push((index, partial_index));
                }
                ImageEvent::Done(result) => break result,
                ImageEvent::Error(e) => panic!("{}", e.message),
            }
        };
        assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
        assert_eq!(partials, vec![(0, 0), (1, 0)], "one preview of each image");
        assert_eq!((result.model.as_str(), result.seed, result.images.len()), ("sd", 3, 2));
        assert_eq!(&result.images[0].bytes[..4], b"\x89PNG");
        assert_eq!((result.images[0].width, result.images[0].height), (16, 8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wrong_kind_of_model_is_refused_by_name() {
        let svc = service("600");
        let err = svc
            .generate_image(
                ImageRequest {
                    model: "chat".into(),
                    ..request(1)
                },
                CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(err.message.contains("cannot make images"), "{}", err.message);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_past_the_total_deadline_times_out() {
        let svc = service("0.000001");
        let err = svc
            .generate_image(request(50), CancellationToken::new())
            .await
            .unwrap()
            .finish()
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
        let status = svc.models().into_iter().find(|m| m.id == "sd").unwrap();
        assert_eq!(status.consecutive_failures, 0, "a deadline is not the model's fault");
    }
}
