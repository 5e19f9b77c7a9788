//! What the diffusion test binaries (`diffusion.rs`, `diffusion_xl.rs`,
//! `diffusion_flow.rs`) share: a registry spec for a diffusers folder, the
//! fixture folder in the models folder, copying a folder to alter it, and
//! the inpainting mask with its check.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use llmlab_core::config;
use llmlab_core::media::RgbImage;
use llmlab_core::registry::{ModelSpec, Registry};

/// An image model `id` read from `path`.
pub fn spec_at(id: &str, path: &Path) -> ModelSpec {
    let text = format!(
        "models:\n  - {{id: {id}, kind: image, backend: candle, path: '{}'}}\n",
        path.display()
    );
    let registry = Registry::parse(&text, Path::new("t.yaml"), Path::new("/"), |_| None).unwrap();
    registry.require(id).unwrap().clone()
}

/// The fixture `name` in the models folder; `None` (and a skip, which
/// fails under LLMLAB_REQUIRE_ALL) when `script` has not written it.
pub fn fixture(name: &str, script: &str) -> Option<PathBuf> {
    let path = config::models_dir().join(name);
    if path.join("model_index.json").is_file() {
        return Some(path);
    }
    config::skip_test(&format!("{name} missing: run {script} (scripts/test.sh does)"));
    None
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A `width` x `height` PNG of colour ramps, varied by `seed`.
#[allow(dead_code)] // not every test binary edits
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 4) as u8 ^ seed, (y * 4) as u8, seed])
    });
    let mut out = Cursor::new(Vec::new());
    picture.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A square PNG mask of `side` pixels that repaints the left half: its
/// transparent pixels, as OpenAI defines a mask.
#[allow(dead_code)] // not every test binary inpaints
pub fn left_half_mask(side: u32) -> Vec<u8> {
    let mask = image::RgbaImage::from_fn(side, side, |x, _| {
        image::Rgba([0, 0, 0, if x < side / 2 { 0 } else { 255 }])
    });
    let mut png = Cursor::new(Vec::new());
    mask.write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

/// `out` kept the right half of `picture` (a PNG) exactly and repainted
/// some of the left half: what an edit with [`left_half_mask`] must give.
#[allow(dead_code)] // not every test binary inpaints
pub fn assert_only_the_left_half_repainted(out: &RgbImage, picture: &[u8]) {
    let original = image::load_from_memory(picture).unwrap().to_rgb8();
    let side = original.width() as usize;
    let mut changed_inside = 0;
    for (i, (new, old)) in out.rgb.chunks(3).zip(original.as_raw().chunks(3)).enumerate() {
        if i % side >= side / 2 {
            assert_eq!(new, old, "pixel {i} outside the mask changed");
        } else if new != old {
            changed_inside += 1;
        }
    }
    assert!(changed_inside > 0, "the masked half was repainted");
}
