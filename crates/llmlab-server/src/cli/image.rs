//! `llmlab image`: generate (or edit) an image with a registry model in
//! this process, through the core service as every door does, with a
//! progress bar; the result is written to a file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;
use llmlab_core::{ImageEvent, ImageRequest, OutputFormat};

use super::CommonArgs;
use crate::factory::BackendFactory;

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What the image shows.
    pub prompt: String,
    /// Image model id [default: the registry's first image model]
    #[arg(short, long, default_value = "")]
    pub model: String,
    /// Where to write it (the format follows the extension: .png, .jpg,
    /// .webp); with --n above 1, `-1`, `-2` ... go before the extension.
    #[arg(short, long, default_value = "image.png")]
    pub output: PathBuf,
    /// WIDTHxHEIGHT, multiples of 8 [default: 512x512, or --init's size]
    #[arg(long)]
    pub size: Option<String>,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub guidance: Option<f32>,
    /// What the image should not show.
    #[arg(long)]
    pub negative: Option<String>,
    /// ddim or euler_a.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Images to make in one batch.
    #[arg(long, default_value_t = 1)]
    pub n: u32,
    /// Start from this picture (image-to-image).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init: repaint only where this mask is transparent.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// With --init: how much to repaint, 0 to 1.
    #[arg(long)]
    pub strength: Option<f32>,
}

pub fn run(common: &CommonArgs, args: ImageArgs) -> anyhow::Result<()> {
    let read = |path: &Option<PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
        path.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
            .transpose()
    };
    let format = match args.output.extension().and_then(|e| e.to_str()) {
        None => OutputFormat::Png,
        Some(ext) => {
            OutputFormat::parse(ext).with_context(|| format!("cannot write .{ext} images: use .png, .jpg or .webp"))?
        }
    };
    let request = ImageRequest {
        model: args.model.clone(),
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        n: Some(args.n),
        size: args.size.clone(),
        steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        scheduler: args.scheduler.clone(),
        image: read(&args.init)?,
        mask: read(&args.mask)?,
        strength: args.strength,
        output_format: Some(format.as_str().to_owned()),
        partial_images: None,
        keep_alive: None,
    };
    let service = Service::new(common.registry()?, Arc::new(BackendFactory));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let mut stream = service.generate_image(request, CancellationToken::new()).await?;
        let bar = std::io::stderr().is_terminal().then(|| {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template("  step {pos}/{len} {bar:30} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        while let Some(event) = stream.next().await {
            match event {
                ImageEvent::Progress { step, steps } => {
                    if let Some(bar) = &bar {
                        bar.set_length(u64::from(steps));
                        bar.set_position(u64::from(step));
                    }
                }
                ImageEvent::Partial { .. } => {}
                ImageEvent::Done(result) => {
                    if let Some(bar) = &bar {
                        bar.finish_and_clear();
                    }
                    return Ok(result);
                }
                ImageEvent::Error(error) => return Err(error),
            }
        }
        Err(llmlab_core::Error::internal("the generation ended without an answer"))
    })?;
    for (index, image) in result.images.iter().enumerate() {
        let path = if result.images.len() == 1 {
            args.output.clone()
        } else {
            numbered(&args.output, index + 1)
        };
        std::fs::write(&path, &image.bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    eprintln!(
        "[{} {}x{}, seed {}, {} steps in {:.1} s]",
        result.model,
        result.images.first().map_or(0, |i| i.width),
        result.images.first().map_or(0, |i| i.height),
        result.seed,
        result.steps,
        result.generation_ms / 1000.0
    );
    Ok(())
}

/// `out.png` -> `out-2.png`.
fn numbered(path: &std::path::Path, index: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{index}.{ext}"),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}
