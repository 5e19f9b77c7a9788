//! `LlamaEmbeddingPipeline`: embeddings from a GGUF model. Like chat, the
//! model and its context live on one thread of their own; callers send a
//! job and block for its answer (the service calls from a blocking thread).

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use llmlab_core::embedding::{EmbedInput, RawEmbedding};
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::{Error, Result};

use crate::encoder::{Encoder, EncoderInfo};
use crate::settings::llama_settings;

enum EmbedJob {
    Embed {
        inputs: Vec<EmbedInput>,
        truncate: bool,
        reply: SyncSender<Result<Vec<RawEmbedding>>>,
    },
    Tokenize {
        text: String,
        reply: SyncSender<Vec<u32>>,
    },
}

pub struct LlamaEmbeddingPipeline {
    spec: ModelSpec,
    info: EncoderInfo,
    /// `None` once dropping; the thread ends when the channel closes.
    jobs: Mutex<Option<Sender<EmbedJob>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LlamaEmbeddingPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEmbeddingPipeline")
            .field("model", &self.spec.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LlamaEmbeddingPipeline {
    /// Load the model on a new thread and wait until it is ready (blocking).
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        crate::check_model_file(spec)?;
        let settings = llama_settings(spec)?.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (jobs, job_rx) = mpsc::channel();
        let thread_spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name(format!("embed-{}", spec.id))
            .spawn(move || encoder_main(&thread_spec, &settings, &job_rx, &ready_tx))
            .map_err(|e| Error::internal(format!("cannot start embedding thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| Error::internal("embedding thread died while loading the model"))??;
        tracing::info!(model = %spec.id, ?info, "embedding model ready");
        Ok(Self {
            spec: spec.clone(),
            info,
            jobs: Mutex::new(Some(jobs)),
            thread: Some(thread),
        })
    }

    pub fn info(&self) -> &EncoderInfo {
        &self.info
    }

    fn send(&self, job: EmbedJob) -> Result<()> {
        let stopped = || Error::unavailable(format!("model '{}' was unloaded", self.spec.id));
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .ok_or_else(stopped)?
            .send(job);
        sent.map_err(|_| stopped())
    }

    /// The model's token ids of `text`, without special tokens: the form
    /// token-array inputs take.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(EmbedJob::Tokenize {
            text: text.to_owned(),
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| Error::unavailable(format!("model '{}' was unloaded", self.spec.id)))
    }
}

impl EmbeddingPipeline for LlamaEmbeddingPipeline {
    fn dimensions(&self) -> usize {
        self.info.dimensions
    }

    fn embed(&self, inputs: &[EmbedInput], truncate: bool) -> Result<Vec<RawEmbedding>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(EmbedJob::Embed {
            inputs: inputs.to_vec(),
            truncate,
            reply,
        })?;
        answer
            .recv()
            .map_err(|_| Error::unavailable(format!("model '{}' was unloaded", self.spec.id)))?
    }
}

impl Drop for LlamaEmbeddingPipeline {
    fn drop(&mut self) {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn encoder_main(
    spec: &ModelSpec,
    settings: &LlamaSettings,
    jobs: &Receiver<EmbedJob>,
    ready: &SyncSender<Result<EncoderInfo>>,
) {
    let settings = &match crate::memory::with_gpu_plan(spec, settings) {
        Ok(planned) => planned,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let model = match crate::engine::load_model(spec, settings) {
        Ok(model) => model,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut encoder = match Encoder::new(&model, spec, settings) {
        Ok(encoder) => encoder,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(encoder.info().clone())).is_err() {
        return;
    }
    while let Ok(job) = jobs.recv() {
        match job {
            EmbedJob::Embed {
                inputs,
                truncate,
                reply,
            } => {
                // A llama.cpp failure inside one job answers that job with
                // an error; the thread goes on serving the next.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.embed(&inputs, truncate)))
                        .unwrap_or_else(|_| Err(Error::internal("embedding failed unexpectedly")));
                let _ = reply.send(result);
            }
            EmbedJob::Tokenize { text, reply } => {
                let _ = reply.send(encoder.tokenize(&text));
            }
        }
    }
}
