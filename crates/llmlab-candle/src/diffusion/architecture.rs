//! Which pipeline a diffusers folder is read as: the registry's
//! `architecture:` where it names one, else the pipeline class its
//! `model_index.json` names.

use llmlab_core::registry::ImageArchitecture;
use serde_json::Value;

use super::components::Folder;

/// What the loaders go on.
pub(crate) struct Detected {
    pub architecture: ImageArchitecture,
    /// The `model_index.json` pipeline class; empty when the registry
    /// named the architecture and the folder has no index.
    pub pipeline: String,
    pub index: Value,
}

impl Detected {
    /// Whether the folder's index names an inpainting pipeline (then its
    /// network must read the mask); `None` when there is no index to say.
    pub fn inpainting(&self) -> Option<bool> {
        (!self.pipeline.is_empty()).then(|| self.pipeline.contains("Inpaint"))
    }
}

/// The pipeline classes whose folder layout and networks we read.
const PIPELINES: [(&str, ImageArchitecture); 12] = [
    ("StableDiffusionPipeline", ImageArchitecture::StableDiffusion),
    ("StableDiffusionImg2ImgPipeline", ImageArchitecture::StableDiffusion),
    ("StableDiffusionInpaintPipeline", ImageArchitecture::StableDiffusion),
    ("StableDiffusionXLPipeline", ImageArchitecture::StableDiffusionXl),
    ("StableDiffusionXLImg2ImgPipeline", ImageArchitecture::StableDiffusionXl),
    ("StableDiffusionXLInpaintPipeline", ImageArchitecture::StableDiffusionXl),
    ("StableDiffusion3Pipeline", ImageArchitecture::StableDiffusion3),
    ("StableDiffusion3Img2ImgPipeline", ImageArchitecture::StableDiffusion3),
    ("StableDiffusion3InpaintPipeline", ImageArchitecture::StableDiffusion3),
    ("FluxPipeline", ImageArchitecture::Flux),
    ("FluxImg2ImgPipeline", ImageArchitecture::Flux),
    ("FluxInpaintPipeline", ImageArchitecture::Flux),
];

pub(crate) fn detect(folder: &Folder, named: Option<ImageArchitecture>) -> Result<Detected, String> {
    let index = match named {
        Some(_) => folder.config("model_index.json").unwrap_or(Value::Null),
        None => {
            folder.require(&["model_index.json"])?;
            folder.config("model_index.json")?
        }
    };
    let pipeline = index
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let architecture = match named {
        Some(architecture) => architecture,
        None => match PIPELINES.iter().find(|(name, _)| *name == pipeline) {
            Some(&(_, architecture)) => architecture,
            None => {
                let names: Vec<&str> = PIPELINES.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "model_index.json: {pipeline:?} is not supported yet (supported: {}; \
                     or name the registry's architecture)",
                    names.join(", ")
                ));
            }
        },
    };
    // A registry architecture overrides the index, whose class then says
    // nothing (inpainting follows from the network's input channels).
    let pipeline = if named.is_some() { String::new() } else { pipeline };
    Ok(Detected {
        architecture,
        pipeline,
        index,
    })
}
