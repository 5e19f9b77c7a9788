//! What an image generation reports while it runs and when it ends, and
//! the stream that carries it from the service to a door.

use tokio::sync::mpsc;

use crate::{Error, OutputFormat, Result};

/// What a pipeline reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageProgress {
    /// A denoising step is done.
    Step { step: u32, steps: u32 },
    /// A rough look at every image of the batch as it is now.
    Preview {
        index: u32,
        images: Vec<crate::media::RgbImage>,
    },
}

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    pub bytes: Vec<u8>,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
}

/// What a finished generation answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageResult {
    pub model: String,
    pub images: Vec<GeneratedImage>,
    pub seed: u64,
    pub steps: u32,
    pub generation_ms: f64,
}

/// What a generation streams: progress after each step, then exactly one
/// `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageEvent {
    Progress {
        step: u32,
        steps: u32,
    },
    /// Preview number `partial_index` of image `index` (streams only).
    Partial {
        index: u32,
        partial_index: u32,
        image: GeneratedImage,
    },
    Done(ImageResult),
    Error(Error),
}

/// The receiving end of a generation (holds the model's lease while open).
#[derive(Debug)]
pub struct ImageStream {
    rx: mpsc::UnboundedReceiver<ImageEvent>,
    _guard: Option<Box<dyn std::any::Any + Send>>,
}

pub type ImageEventSender = mpsc::UnboundedSender<ImageEvent>;

impl ImageStream {
    pub fn channel() -> (ImageEventSender, ImageStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ImageStream { rx, _guard: None })
    }

    /// Keep `guard` alive as long as the stream.
    pub fn holding(mut self, guard: impl std::any::Any + Send) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    pub async fn next(&mut self) -> Option<ImageEvent> {
        self.rx.recv().await
    }

    pub fn blocking_next(&mut self) -> Option<ImageEvent> {
        self.rx.blocking_recv()
    }

    /// Wait for the end, dropping progress.
    pub async fn finish(mut self) -> Result<ImageResult> {
        while let Some(event) = self.next().await {
            match event {
                ImageEvent::Progress { .. } | ImageEvent::Partial { .. } => {}
                ImageEvent::Done(result) => return Ok(result),
                ImageEvent::Error(error) => return Err(error),
            }
        }
        Err(Error::internal("the generation ended without an answer"))
    }
}
