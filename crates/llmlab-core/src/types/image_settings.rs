//! The settings of an image generation that have names: schedulers,
//! output formats, and the sampling defaults a model brings.

use crate::config;

/// The schedulers (samplers) a diffusion model can step with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Noise-predicting models (SD 1.x/2.x, SDXL).
    Ddim,
    EulerAncestral,
    /// Rectified-flow models (SD3, Flux): Euler steps along the predicted
    /// velocity, the only sampler they have here.
    FlowEuler,
}

impl Scheduler {
    pub const NAMES: &'static str = "ddim, euler_a, flow_euler";

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "ddim" => Some(Self::Ddim),
            "euler_a" | "euler_ancestral" | "euler-ancestral" => Some(Self::EulerAncestral),
            "flow_euler" | "flow_match_euler" | "flow-euler" => Some(Self::FlowEuler),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::EulerAncestral => "euler_a",
            Self::FlowEuler => "flow_euler",
        }
    }
}

/// What a model does with the sampling settings a request leaves out:
/// SD 1.x wants 20 guided steps, Flux schnell 4 unguided ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageDefaults {
    pub steps: u32,
    pub guidance_scale: f32,
    pub scheduler: Scheduler,
}

impl Default for ImageDefaults {
    fn default() -> Self {
        Self {
            steps: config::DEFAULT_IMAGE_STEPS,
            guidance_scale: config::DEFAULT_GUIDANCE_SCALE,
            scheduler: Scheduler::Ddim,
        }
    }
}

/// Which sampling settings the request itself chose (the rest come from
/// the model's [`ImageDefaults`] once it is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChosenSettings {
    pub steps: bool,
    pub guidance_scale: bool,
    pub scheduler: bool,
}

/// How generated images are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}
