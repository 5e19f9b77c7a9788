//! Image generation: resolve (decoding any starting picture off the async
//! threads), lease the model, run the backend on a blocking thread while
//! progress streams back, encode the results here for every backend.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Purpose, Service};
use crate::media::encode_image;
use crate::pipeline::LoadedPipeline;
use crate::{Error, GeneratedImage, ImageEvent, ImageRequest, ImageResult, ImageStream, Result};

impl Service {
    /// Start a generation; its progress and result come on the stream.
    /// Dropping the stream (or firing `cancel`) stops it between steps.
    pub async fn generate_image(&self, request: ImageRequest, cancel: CancellationToken) -> Result<ImageStream> {
        let spec = self.spec_for(&request.model, Purpose::Image)?;
        let owned = spec.clone();
        let request = tokio::task::spawn_blocking(move || request.resolve(&owned))
            .await
            .map_err(|e| Error::internal(format!("reading the request's images failed: {e}")))??;
        let (pipeline, lease, watch) = self.leased_pipeline(spec, request.keep_alive).await?;
        let LoadedPipeline::Image(pipeline) = pipeline else {
            return Err(Error::internal(format!(
                "model '{}' did not load as an image model",
                spec.id
            )));
        };
        let (events, stream) = ImageStream::channel();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let progress_events = events.clone();
            let mut progress = |step, steps| {
                if progress_events.send(ImageEvent::Progress { step, steps }).is_err() {
                    // Nobody reads the stream any more.
                    cancel.cancel();
                }
            };
            let outcome = pipeline
                .generate(&request, &cancel, &mut progress)
                .and_then(|pictures| {
                    pictures
                        .iter()
                        .map(|picture| {
                            Ok(GeneratedImage {
                                bytes: encode_image(picture, request.output_format)?,
                                format: request.output_format,
                                width: picture.width,
                                height: picture.height,
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                });
            watch.settle(&outcome);
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
