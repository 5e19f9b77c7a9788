//! Flux from a GGUF file: a diffusers Flux folder whose `transformer/`
//! holds one `.gguf` (Q8_0, Q4_K, ... as the community's Flux GGUFs and
//! candle's own are made) instead of, or beside, its safetensors. The file
//! keeps Black Forest Labs' tensor names (`double_blocks.0.img_attn.qkv`),
//! with or without ComfyUI's `model.diffusion_model.` prefix; the network
//! is candle's quantized Flux, whose activations are F32. The folder's
//! `transformer/config.json` still gives the shape, and the file must
//! hold as many blocks as it says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use candle_transformers::models::flux::model::Config as FluxConfig;
use candle_transformers::models::flux::quantized_model::Flux as QuantizedFlux;
use candle_transformers::quantized_var_builder::VarBuilder;

/// Prefix ComfyUI-style checkpoints put before every tensor name.
const COMFY_PREFIX: &str = "model.diffusion_model.";

/// The one `.gguf` file in `<folder>/transformer/`, if there is one.
pub(crate) fn gguf_in(folder: &Path) -> Result<Option<PathBuf>, String> {
    let directory = folder.join("transformer");
    let Ok(entries) = std::fs::read_dir(&directory) else {
        return Ok(None);
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "transformer/ holds {} .gguf files ({}); keep one",
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Load the quantized network from `path`, checked against `shape`.
pub(crate) fn load_flux(path: &Path, shape: &FluxConfig, device: &Device) -> Result<QuantizedFlux, String> {
    let shown = format!(
        "transformer/{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    );
    let names = tensor_names(path).map_err(|e| format!("{shown}: {e}"))?;
    let prefixed = names.iter().all(|name| name.starts_with(COMFY_PREFIX));
    let names: BTreeSet<&str> = names
        .iter()
        .map(|name| {
            if prefixed {
                &name[COMFY_PREFIX.len()..]
            } else {
                name.as_str()
            }
        })
        .collect();
    check_blocks(&names, shape).map_err(|e| format!("{shown}: {e}"))?;
    let vb = VarBuilder::from_gguf(path, device).map_err(|e| format!("{shown}: {e}"))?;
    let vb = if prefixed {
        vb.pp("model").pp("diffusion_model")
    } else {
        vb
    };
    QuantizedFlux::new(shape, vb).map_err(|e| format!("{shown}: {e}"))
}

fn tensor_names(path: &Path) -> Result<Vec<String>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| format!("not a GGUF file: {e}"))?;
    Ok(content.tensor_infos.into_keys().collect())
}

/// candle builds as many blocks as the config says and ignores the rest
/// of a file: a file with other counts is another model, refused here.
fn check_blocks(names: &BTreeSet<&str>, shape: &FluxConfig) -> Result<(), String> {
    if !names.iter().any(|name| name.starts_with("double_blocks.")) {
        return Err(
            "no double_blocks.* tensors: a Flux GGUF keeps Black Forest Labs' tensor names \
                    (diffusers' names are read from safetensors only)"
                .into(),
        );
    }
    let count = |prefix: &str| {
        names
            .iter()
            .filter_map(|name| name.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let (double, single) = (count("double_blocks."), count("single_blocks."));
    if (double, single) != (shape.depth, shape.depth_single_blocks) {
        return Err(format!(
            "{double} double and {single} single blocks, but transformer/config.json says {} and {}",
            shape.depth, shape.depth_single_blocks
        ));
    }
    if shape.guidance_embed != names.iter().any(|name| name.starts_with("guidance_in.")) {
        return Err(format!(
            "guidance_in tensors {} but transformer/config.json has guidance_embeds {}",
            if shape.guidance_embed { "missing" } else { "present" },
            shape.guidance_embed
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::Device;
    use tokio_util::sync::CancellationToken;

    use llmlab_core::pipeline::ImagePipeline;
    use llmlab_core::registry::{ModelSpec, Registry};
    use llmlab_core::{config, ImageRequest};

    use crate::diffusion::components::Folder;
    use crate::diffusion::flow::rename;
    use crate::DiffusionPipeline;

    const FIXTURE: &str = "test-flux-tiny";

    fn fixture() -> Option<PathBuf> {
        let path = config::models_dir().join(FIXTURE);
        if path.join("model_index.json").is_file() {
            return Some(path);
        }
        config::skip_test(&format!("{FIXTURE} missing: run scripts/make-flow-fixtures.py"));
        None
    }

    fn spec(path: &Path) -> ModelSpec {
        let text = format!(
            "models:\n  - {{id: q, kind: image, backend: candle, path: '{}'}}\n",
            path.display()
        );
        let registry = Registry::parse(&text, Path::new("t.yaml"), Path::new("/"), |_| None).unwrap();
        registry.require("q").unwrap().clone()
    }

    /// The fixture without its transformer safetensors, and a GGUF of its
    /// transformer under Black Forest Labs' names instead: matrices in
    /// Q8_0, the rest F32, every name after `prefix`; `keep` picks tensors.
    fn quantized_copy(from: &Path, tag: &str, prefix: &str, keep: impl Fn(&str) -> bool) -> PathBuf {
        let to = std::env::temp_dir().join(format!("flux-gguf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&to);
        copy_without_transformer_weights(from, &to);
        let folder = Folder {
            path: from,
            device: Device::Cpu,
        };
        let tensors = folder.tensors("transformer", "diffusion_pytorch_model").unwrap();
        let renamed = rename::flux_for_candle(tensors, 1, 1).unwrap();
        let quantized: Vec<(String, QTensor)> = renamed
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, tensor)| {
                let matrix = tensor.rank() == 2 && tensor.dim(1).unwrap() % 32 == 0;
                let dtype = if matrix { GgmlDType::Q8_0 } else { GgmlDType::F32 };
                (format!("{prefix}{name}"), QTensor::quantize(tensor, dtype).unwrap())
            })
            .collect();
        let listed: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let architecture = gguf_file::Value::String("flux".into());
        let mut file = std::fs::File::create(to.join("transformer/flux1-tiny-Q8_0.gguf")).unwrap();
        gguf_file::write(&mut file, &[("general.architecture", &architecture)], &listed).unwrap();
        to
    }

    fn copy_without_transformer_weights(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_without_transformer_weights(&entry.path(), &target);
            } else if !(from.ends_with("transformer") && entry.path().extension().is_some_and(|e| e == "safetensors")) {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn picture(pipeline: &DiffusionPipeline) -> Vec<u8> {
        let request = ImageRequest {
            prompt: "a red fox in the snow".into(),
            size: Some("64x64".into()),
            steps: Some(2),
            seed: Some(9),
            ..ImageRequest::default()
        };
        let mut resolved = request.resolve(&spec(Path::new("/unused"))).unwrap();
        resolved.adopt_defaults(&pipeline.defaults());
        let images = pipeline
            .generate(&resolved, &CancellationToken::new(), &mut |_| {})
            .unwrap();
        images[0].rgb.clone()
    }

    #[test]
    fn a_q8_gguf_transformer_paints_nearly_what_the_full_one_paints() {
        let Some(full_folder) = fixture() else { return };
        let full = DiffusionPipeline::load(&spec(&full_folder)).unwrap();
        let reference = picture(&full);
        for (tag, prefix) in [("plain", ""), ("comfy", super::COMFY_PREFIX)] {
            let copy = quantized_copy(&full_folder, tag, prefix, |_| true);
            let quantized = DiffusionPipeline::load(&spec(&copy)).expect("the GGUF folder loads");
            assert_eq!(
                quantized.defaults(),
                full.defaults(),
                "dev's defaults, read from the config"
            );
            let ours = picture(&quantized);
            let mean = ours
                .iter()
                .zip(&reference)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / ours.len() as f64;
            assert!(mean < 2.0, "{tag}: mean difference {mean} levels");
            assert_eq!(ours, picture(&quantized), "{tag}: the same seed repeats");
            std::fs::remove_dir_all(&copy).unwrap();
        }
    }

    #[test]
    fn a_gguf_of_another_shape_or_a_second_gguf_is_refused_by_name() {
        let Some(full_folder) = fixture() else { return };
        let copy = quantized_copy(&full_folder, "short", "", |name| !name.starts_with("single_blocks."));
        let err = DiffusionPipeline::load(&spec(&copy)).unwrap_err();
        assert!(
            err.message
                .contains("transformer/flux1-tiny-Q8_0.gguf: 1 double and 0 single blocks"),
            "{}",
            err.message
        );
        std::fs::copy(
            copy.join("transformer/flux1-tiny-Q8_0.gguf"),
            copy.join("transformer/other.gguf"),
        )
        .unwrap();
        let err = DiffusionPipeline::load(&spec(&copy)).unwrap_err();
        assert!(
            err.message.contains("transformer/ holds 2 .gguf files"),
            "{}",
            err.message
        );
        std::fs::remove_dir_all(&copy).unwrap();
    }
}
