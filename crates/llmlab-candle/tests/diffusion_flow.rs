//! SD3 and Flux (rectified-flow transformers on candle) from tiny
//! random-weight pipelines in the diffusers layout
//! (`scripts/make-flow-fixtures.py`, run by `scripts/test.sh`): the
//! transformers' renaming for candle, both text sides (two CLIPs and T5; CLIP
//! pooled and T5), the flow sampler with its edits, and each family's
//! defaults and refusals. Random weights paint noise, so these tests check
//! what the pipeline decides; `bench/diffusers/same_pixels.py` compares the
//! pixels with diffusers'.

mod diffusion_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use llmlab_candle::DiffusionPipeline;
use llmlab_core::media::RgbImage;
use llmlab_core::pipeline::ImagePipeline;
use llmlab_core::{ErrorKind, ImageProgress, ImageRequest, ResolvedImageRequest, Scheduler};

const SCRIPT: &str = "scripts/make-flow-fixtures.py";
static SD3: OnceLock<DiffusionPipeline> = OnceLock::new();
static FLUX: OnceLock<DiffusionPipeline> = OnceLock::new();

fn load(cell: &'static OnceLock<DiffusionPipeline>, name: &str) -> Option<&'static DiffusionPipeline> {
    let path = diffusion_support::fixture(name, SCRIPT)?;
    Some(cell.get_or_init(|| DiffusionPipeline::load(&diffusion_support::spec_at("flow", &path)).expect("loads")))
}

fn sd3() -> Option<&'static DiffusionPipeline> {
    load(&SD3, "test-sd3-tiny")
}

fn flux() -> Option<&'static DiffusionPipeline> {
    load(&FLUX, "test-flux-tiny")
}

fn request(prompt: &str, seed: u64) -> ImageRequest {
    ImageRequest {
        prompt: prompt.into(),
        size: Some("64x64".into()),
        steps: Some(2),
        seed: Some(seed),
        ..ImageRequest::default()
    }
}

/// Resolve as the service does: the model's defaults fill what the
/// request leaves out.
fn resolve(pipeline: &DiffusionPipeline, request: ImageRequest) -> llmlab_core::Result<ResolvedImageRequest> {
    let mut resolved = request.resolve(&diffusion_support::spec_at("flow", Path::new("/unused")))?;
    resolved.adopt_defaults(&pipeline.defaults());
    Ok(resolved)
}

/// Generate, collecting the steps reported.
fn run(pipeline: &DiffusionPipeline, request: ImageRequest) -> (llmlab_core::Result<Vec<RgbImage>>, Vec<(u32, u32)>) {
    let resolved = resolve(pipeline, request).expect("a valid request");
    let mut steps = Vec::new();
    let result = pipeline.generate(&resolved, &CancellationToken::new(), &mut |report| {
        if let ImageProgress::Step { step, steps: total } = report {
            steps.push((step, total));
        }
    });
    (result, steps)
}

fn images(pipeline: &DiffusionPipeline, request: ImageRequest) -> Vec<RgbImage> {
    run(pipeline, request).0.expect("the generation runs")
}

#[test]
fn sd3_generates_under_a_seed_and_every_text_input_steers_it() {
    let Some(model) = sd3() else { return };
    let (first, steps) = run(
        model,
        ImageRequest {
            n: Some(2),
            ..request("a castle on a hill", 7)
        },
    );
    let first = first.unwrap();
    assert_eq!(steps, vec![(1, 2), (2, 2)]);
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|i| (i.width, i.height, i.rgb.len()) == (64, 64, 64 * 64 * 3)));
    let single = images(model, request("a castle on a hill", 7));
    assert_eq!(single[0], first[0], "the batch's first image is the single image");
    assert_eq!(single, images(model, request("a castle on a hill", 7)));
    assert_ne!(single, images(model, request("a castle on a hill", 8)));
    assert_ne!(single, images(model, request("a dog on the beach", 7)));
    let negative = ImageRequest {
        negative_prompt: Some("snow".into()),
        ..request("a castle on a hill", 7)
    };
    assert_ne!(single, images(model, negative), "the negative prompt guides SD3");
}

#[test]
fn flux_generates_under_a_seed_and_reads_its_guidance_as_an_input() {
    let Some(model) = flux() else { return };
    let first = images(model, request("a red fox in the snow", 3));
    assert_eq!((first[0].width, first[0].height), (64, 64));
    assert_eq!(first, images(model, request("a red fox in the snow", 3)));
    assert_ne!(first, images(model, request("a red fox in the snow", 4)));
    assert_ne!(first, images(model, request("a cat on the beach", 3)));
    let guided = ImageRequest {
        guidance_scale: Some(9.0),
        ..request("a red fox in the snow", 3)
    };
    assert_ne!(first, images(model, guided), "Flux dev embeds its guidance scale");
}

#[test]
fn each_family_brings_its_own_defaults() {
    let (Some(sd3), Some(flux)) = (sd3(), flux()) else {
        return;
    };
    let bare = ImageRequest {
        prompt: "a fox".into(),
        ..ImageRequest::default()
    };
    let resolved = resolve(sd3, bare.clone()).unwrap();
    assert_eq!(
        (resolved.steps, resolved.guidance_scale, resolved.scheduler),
        (28, 7.0, Scheduler::FlowEuler)
    );
    let resolved = resolve(flux, bare.clone()).unwrap();
    assert_eq!((resolved.steps, resolved.guidance_scale), (28, 3.5));
    // What the request sets wins.
    let chosen = resolve(
        flux,
        ImageRequest {
            steps: Some(3),
            guidance_scale: Some(1.0),
            ..bare
        },
    )
    .unwrap();
    assert_eq!((chosen.steps, chosen.guidance_scale), (3, 1.0));
}

#[test]
fn flow_models_refuse_other_schedulers_odd_sizes_and_a_negative_prompt_for_flux() {
    let (Some(sd3), Some(flux)) = (sd3(), flux()) else {
        return;
    };
    let ddim = ImageRequest {
        scheduler: Some("ddim".into()),
        ..request("a fox", 1)
    };
    let err = run(sd3, ddim).0.unwrap_err();
    assert_eq!(
        (err.kind, err.param.as_deref()),
        (ErrorKind::InvalidRequest, Some("scheduler"))
    );
    let odd = ImageRequest {
        size: Some("72x64".into()),
        ..request("a fox", 1)
    };
    let err = run(flux, odd).0.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("size"));
    assert!(err.message.contains("multiples of 16"), "{}", err.message);
    let negative = ImageRequest {
        negative_prompt: Some("blurry".into()),
        ..request("a fox", 1)
    };
    let err = run(flux, negative).0.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("negative_prompt"));
}

#[test]
fn flux_edits_keep_the_pixels_outside_the_mask_and_strength_picks_the_steps() {
    let Some(model) = flux() else { return };
    let picture = diffusion_support::png(64, 64, 77);
    let half = ImageRequest {
        image: Some(picture.clone()),
        strength: Some(0.5),
        size: None,
        steps: Some(4),
        ..request("a red fox", 2)
    };
    let (edited, steps) = run(model, half.clone());
    assert_eq!(steps.len(), 2, "half the steps: {steps:?}");
    assert_eq!(edited.unwrap(), images(model, half), "an edit repeats under its seed");

    let inpaint = ImageRequest {
        image: Some(picture.clone()),
        mask: Some(diffusion_support::left_half_mask(64)),
        strength: Some(1.0),
        size: None,
        ..request("a red fox", 6)
    };
    let out = &images(model, inpaint)[0];
    diffusion_support::assert_only_the_left_half_repainted(out, &picture);
}

#[test]
fn flow_previews_are_decoded_pictures_between_the_steps() {
    let Some(model) = sd3() else { return };
    let resolved = resolve(
        model,
        ImageRequest {
            partial_images: Some(1),
            steps: Some(3),
            ..request("a fox", 1)
        },
    )
    .unwrap();
    let mut previews = Vec::new();
    model
        .generate(&resolved, &CancellationToken::new(), &mut |report| {
            if let ImageProgress::Preview { index, images } = report {
                previews.push((index, images.len(), images[0].width));
            }
        })
        .unwrap();
    assert_eq!(previews, vec![(0, 1, 64)]);
}

fn copy_of(name: &str, tag: &str) -> Option<PathBuf> {
    let path = diffusion_support::fixture(name, SCRIPT)?;
    let copy = std::env::temp_dir().join(format!("{name}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    diffusion_support::copy_dir(&path, &copy);
    Some(copy)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn sd3_without_t5_conditions_on_zeros_and_a_mismatched_width_is_refused() {
    let Some(copy) = copy_of("test-sd3-tiny", "no-t5") else {
        return;
    };
    std::fs::remove_dir_all(copy.join("text_encoder_3")).unwrap();
    let model = DiffusionPipeline::load(&diffusion_support::spec_at("sd3", &copy)).expect("loads without T5");
    assert_eq!(images(&model, request("a fox", 1)).len(), 1);

    edit_json(&copy.join("transformer/config.json"), |c| {
        c["pooled_projection_dim"] = 48.into()
    });
    let err = DiffusionPipeline::load(&diffusion_support::spec_at("sd3", &copy)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("pooled_projection_dim 48"), "{}", err.message);
    std::fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn flux_without_guidance_embeds_is_schnell_shaped_and_a_missing_tensor_is_named() {
    let Some(copy) = copy_of("test-flux-tiny", "schnell") else {
        return;
    };
    edit_json(&copy.join("transformer/config.json"), |c| {
        c["guidance_embeds"] = false.into()
    });
    let schnell = DiffusionPipeline::load(&diffusion_support::spec_at("schnell", &copy)).unwrap();
    let defaults = schnell.defaults();
    assert_eq!((defaults.steps, defaults.guidance_scale), (4, 0.0));
    let plain = images(&schnell, request("a fox", 1));
    let guided = ImageRequest {
        guidance_scale: Some(9.0),
        ..request("a fox", 1)
    };
    assert_eq!(plain, images(&schnell, guided), "schnell reads no guidance");

    std::fs::remove_dir_all(copy.join("tokenizer_2")).unwrap();
    let err = DiffusionPipeline::load(&diffusion_support::spec_at("schnell", &copy)).unwrap_err();
    assert!(err.message.contains("tokenizer_2/tokenizer.json"), "{}", err.message);
    std::fs::remove_dir_all(&copy).unwrap();
}
