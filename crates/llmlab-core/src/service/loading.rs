//! One model load: a preflight check of the file, then the factory's load,
//! retried with back-off down the factory's degradation ladder, with
//! metrics, logs and the note `/v1/models` reports.

use std::sync::Arc;

use super::records::Models;
use super::PipelineFactory;
use crate::guards::load_with_retry;
use crate::metrics;
use crate::pipeline::LoadedPipeline;
use crate::registry::ModelSpec;
use crate::{Error, Result};

/// How a model's last load went.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LoadNote {
    Loading,
    Failed(String),
    /// Loaded; `degraded` says what it gave up to load, if anything.
    Loaded {
        degraded: Option<String>,
    },
}

/// Run a blocking factory call off the runtime's workers.
async fn blocking<T: Send + 'static>(id: &str, call: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| Error::internal(format!("loading model '{id}' panicked: {e}")))
        .and_then(|result| result)
}

/// Load one pipeline, recording metrics, logs and the model's load note.
pub(super) async fn load_pipeline(
    factory: Arc<dyn PipelineFactory>,
    spec: ModelSpec,
    models: Models,
) -> Result<LoadedPipeline> {
    let id = spec.id.clone();
    let note = |note: LoadNote| models.with(&id, |model| model.note = Some(note));
    note(LoadNote::Loading);
    tracing::info!(model = %id, "loading model");
    let started = std::time::Instant::now();
    let loaded = async {
        let checker = Arc::clone(&factory);
        let checked = spec.clone();
        blocking(&id, move || checker.preflight(&checked)).await?;
        load_with_retry(
            &spec,
            |configured, step| factory.degrade(configured, step),
            |attempt| {
                let factory = Arc::clone(&factory);
                blocking(&id, move || factory.load(&attempt))
            },
        )
        .await
    }
    .await;
    match loaded {
        Ok(loaded) => {
            note(LoadNote::Loaded {
                degraded: loaded.degraded,
            });
            metrics::model_loaded(&id, started.elapsed());
            tracing::info!(model = %id, ms = started.elapsed().as_millis() as u64, "model loaded");
            Ok(loaded.value)
        }
        Err(e) => {
            note(LoadNote::Failed(e.message.clone()));
            metrics::model_load_failed(&id);
            tracing::error!(model = %id, error = %e, "model failed to load");
            Err(e)
        }
    }
}
