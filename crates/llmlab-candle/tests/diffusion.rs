//! Stable Diffusion on candle with a tiny random-weight SD-1.5-shaped model
//! in the diffusers layout (`scripts/make-diffusion-fixture.py`, run by
//! `scripts/test.sh`), so the real loading code runs. Random weights paint
//! noise, so these tests check what the pipeline decides: sizes, seeds,
//! strength, the mask, progress, cancelling, and what an incomplete folder
//! is told.

mod diffusion_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use llmlab_candle::DiffusionPipeline;
use llmlab_core::media::RgbImage;
use llmlab_core::pipeline::ImagePipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::{ErrorKind, ImageProgress, ImageRequest};

const FIXTURE: &str = "test-sd15-tiny";
static PIPELINE: OnceLock<DiffusionPipeline> = OnceLock::new();

fn fixture() -> Option<PathBuf> {
    diffusion_support::fixture(FIXTURE, "scripts/make-diffusion-fixture.py")
}

fn spec_at(path: &Path) -> ModelSpec {
    diffusion_support::spec_at("sd-tiny", path)
}

fn pipeline() -> Option<&'static DiffusionPipeline> {
    let path = fixture()?;
    Some(PIPELINE.get_or_init(|| DiffusionPipeline::load(&spec_at(&path)).expect("the fixture loads")))
}

fn request(seed: u64) -> ImageRequest {
    ImageRequest {
        prompt: "a red fox in the snow".into(),
        size: Some("64x64".into()),
        steps: Some(3),
        seed: Some(seed),
        ..ImageRequest::default()
    }
}

/// Generate, collecting the progress calls.
fn run(pipeline: &DiffusionPipeline, request: ImageRequest) -> (llmlab_core::Result<Vec<RgbImage>>, Vec<(u32, u32)>) {
    let resolved = request
        .resolve(&spec_at(Path::new("/unused")))
        .expect("a valid request");
    let mut seen = Vec::new();
    let result = pipeline.generate(&resolved, &CancellationToken::new(), &mut |report| {
        if let ImageProgress::Step { step, steps } = report {
            seen.push((step, steps));
        }
    });
    (result, seen)
}

#[test]
fn text_to_image_makes_n_images_of_the_size_and_reports_every_step() {
    let Some(model) = pipeline() else { return };
    let (images, progress) = run(
        model,
        ImageRequest {
            n: Some(2),
            ..request(1)
        },
    );
    let images = images.unwrap();
    assert_eq!(images.len(), 2);
    assert!(images
        .iter()
        .all(|i| (i.width, i.height, i.rgb.len()) == (64, 64, 64 * 64 * 3)));
    assert_eq!(progress, vec![(1, 3), (2, 3), (3, 3)]);
}

#[test]
fn the_same_seed_gives_the_same_pixels_and_another_seed_others() {
    let Some(model) = pipeline() else { return };
    let first = run(model, request(42)).0.unwrap();
    let again = run(model, request(42)).0.unwrap();
    let other = run(model, request(43)).0.unwrap();
    assert_eq!(first, again);
    assert_ne!(first, other);
    let euler = ImageRequest {
        scheduler: Some("euler_a".into()),
        ..request(42)
    };
    assert_eq!(run(model, euler).0.unwrap()[0].rgb.len(), 64 * 64 * 3);
}

#[test]
fn strength_zero_runs_no_step_and_an_inpainting_mask_keeps_the_pixels_outside_it() {
    let Some(model) = pipeline() else { return };
    let picture = diffusion_support::png(64, 64, 9);
    let untouched = ImageRequest {
        image: Some(picture.clone()),
        strength: Some(0.0),
        size: None,
        ..request(5)
    };
    let (images, progress) = run(model, untouched);
    assert_eq!(images.unwrap()[0].width, 64);
    assert!(progress.is_empty(), "{progress:?}");

    // Repaint the left half: its alpha is 0.
    let inpaint = ImageRequest {
        image: Some(picture.clone()),
        mask: Some(diffusion_support::left_half_mask(64)),
        strength: Some(1.0),
        size: None,
        ..request(6)
    };
    let (images, progress) = run(model, inpaint);
    let out = &images.unwrap()[0];
    assert_eq!(progress.len(), 3);
    diffusion_support::assert_only_the_left_half_repainted(out, &picture);
}

#[test]
fn previews_come_between_the_steps_at_full_size() {
    let Some(model) = pipeline() else { return };
    let resolved = ImageRequest {
        steps: Some(4),
        partial_images: Some(1),
        n: Some(2),
        ..request(1)
    }
    .resolve(&spec_at(Path::new("/unused")))
    .unwrap();
    let mut seen = Vec::new();
    model
        .generate(&resolved, &CancellationToken::new(), &mut |report| match report {
            ImageProgress::Step { step, .. } => seen.push(format!("step {step}")),
            ImageProgress::Preview { index, images } => {
                assert!(images
                    .iter()
                    .all(|i| (i.width, i.height, i.rgb.len()) == (64, 64, 64 * 64 * 3)));
                seen.push(format!("preview {index} of {}", images.len()));
            }
        })
        .unwrap();
    assert_eq!(seen, ["step 1", "step 2", "preview 0 of 2", "step 3", "step 4"]);
}

#[test]
fn image_to_image_repeats_under_a_seed() {
    let Some(model) = pipeline() else { return };
    let edit = |seed| ImageRequest {
        image: Some(diffusion_support::png(64, 64, 3)),
        strength: Some(0.6),
        size: None,
        ..request(seed)
    };
    let first = run(model, edit(21)).0.unwrap();
    assert_eq!(first, run(model, edit(21)).0.unwrap());
    assert_ne!(first, run(model, edit(22)).0.unwrap());
}

#[test]
fn a_cancel_stops_the_generation_between_steps() {
    let Some(model) = pipeline() else { return };
    let resolved = ImageRequest {
        steps: Some(10),
        ..request(3)
    }
    .resolve(&spec_at(Path::new("/unused")))
    .unwrap();
    let cancel = CancellationToken::new();
    let mut steps = 0;
    let err = model
        .generate(&resolved, &cancel, &mut |_| {
            steps += 1;
            cancel.cancel();
        })
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(steps, 1);
}

#[test]
fn an_incomplete_folder_names_the_missing_file() {
    let Some(path) = fixture() else { return };
    let copy = std::env::temp_dir().join(format!("sd-incomplete-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    diffusion_support::copy_dir(&path, &copy);
    std::fs::remove_file(copy.join("unet/config.json")).unwrap();
    let err = DiffusionPipeline::load(&spec_at(&copy)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("unet/config.json"), "{}", err.message);
    assert!(
        !err.message.contains(&copy.display().to_string()),
        "no server path: {}",
        err.message
    );
    std::fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn a_text_encoder_saved_without_its_text_model_prefix_loads_too() {
    let Some(path) = fixture() else { return };
    let copy = std::env::temp_dir().join(format!("sd-unprefixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    diffusion_support::copy_dir(&path, &copy);
    // Newer transformers save CLIPTextModel's weights without `text_model.`.
    let file = copy.join("text_encoder/model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("text_model.").unwrap_or(&name).to_owned(), t))
        .collect();
    candle_core::safetensors::save(&renamed, &file).unwrap();
    let model = DiffusionPipeline::load(&spec_at(&copy)).expect("loads without the prefix");
    let (images, _) = run(&model, request(1));
    assert_eq!(
        images.unwrap(),
        run(pipeline().unwrap(), request(1)).0.unwrap(),
        "the same weights, the same image"
    );
    std::fs::remove_dir_all(&copy).unwrap();
}
