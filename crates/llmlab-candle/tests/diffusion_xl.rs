//! SDXL on our own networks, with a tiny random-weight SDXL pipeline in the
//! diffusers layout (`scripts/make-sdxl-fixture.py`, run by
//! `scripts/test.sh`): two text encoders, the pooled text and size
//! conditions, several transformer blocks per level. Random weights paint
//! noise, so these tests check what the pipeline decides.

mod diffusion_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use llmlab_candle::DiffusionPipeline;
use llmlab_core::media::RgbImage;
use llmlab_core::pipeline::ImagePipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::{ErrorKind, ImageRequest};

const FIXTURE: &str = "test-sdxl-tiny";
static PIPELINE: OnceLock<DiffusionPipeline> = OnceLock::new();

fn fixture() -> Option<PathBuf> {
    diffusion_support::fixture(FIXTURE, "scripts/make-sdxl-fixture.py")
}

fn spec_at(path: &Path) -> ModelSpec {
    diffusion_support::spec_at("sdxl-tiny", path)
}

fn pipeline() -> Option<&'static DiffusionPipeline> {
    let path = fixture()?;
    Some(PIPELINE.get_or_init(|| DiffusionPipeline::load(&spec_at(&path)).expect("the SDXL fixture loads")))
}

fn generate(prompt: &str, negative: &str, seed: u64) -> Vec<RgbImage> {
    let request = ImageRequest {
        prompt: prompt.into(),
        negative_prompt: Some(negative.into()),
        size: Some("64x48".into()),
        steps: Some(2),
        n: Some(2),
        seed: Some(seed),
        ..ImageRequest::default()
    };
    let resolved = request
        .resolve(&spec_at(Path::new("/unused")))
        .expect("a valid request");
    pipeline()
        .unwrap()
        .generate(&resolved, &CancellationToken::new(), &mut |_| {})
        .expect("the generation runs")
}

#[test]
fn sdxl_generates_under_a_seed_and_both_prompts_steer_it() {
    if pipeline().is_none() {
        return;
    }
    let images = generate("a castle on a hill", "", 7);
    assert_eq!(images.len(), 2);
    assert!(images
        .iter()
        .all(|i| (i.width, i.height) == (64, 48) && i.rgb.len() == 64 * 48 * 3));
    assert_eq!(
        images,
        generate("a castle on a hill", "", 7),
        "the same seed, the same pixels"
    );
    assert_ne!(
        images,
        generate("a castle on a hill", "", 8),
        "another seed, other pixels"
    );
    // The text reaches the UNet through both encoders and the pooled
    // embedding: another prompt, or a negative prompt instead of the
    // zeros an empty one gives, changes the picture.
    assert_ne!(images, generate("a dog on the beach", "", 7));
    assert_ne!(images, generate("a castle on a hill", "blurry", 7));
}

#[test]
fn an_sdxl_unet_that_reads_another_width_than_the_encoders_give_is_refused_at_load() {
    let Some(path) = fixture() else { return };
    let copy = std::env::temp_dir().join(format!("sdxl-mismatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    diffusion_support::copy_dir(&path, &copy);
    let config_path = copy.join("unet/config.json");
    let mut unet: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    unet["projection_class_embeddings_input_dim"] = serde_json::json!(90);
    std::fs::write(&config_path, unet.to_string()).unwrap();
    let err = DiffusionPipeline::load(&spec_at(&copy)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(
        err.message.contains("projection_class_embeddings_input_dim 90"),
        "{}",
        err.message
    );
    std::fs::remove_dir_all(copy.join("text_encoder_2")).unwrap();
    let err = DiffusionPipeline::load(&spec_at(&copy)).unwrap_err();
    assert!(err.message.contains("text_encoder_2/config.json"), "{}", err.message);
    std::fs::remove_dir_all(&copy).unwrap();
}
