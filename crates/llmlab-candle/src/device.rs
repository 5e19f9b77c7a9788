//! The device candle's networks run on: the first CUDA GPU when the crate is
//! built with `cuda` and a GPU answers, else the CPU. One device for the
//! whole process, made once: each `Device::new_cuda` would open a stream
//! (and cuBLAS handles) of its own.

use std::sync::OnceLock;

use candle_core::Device;

/// Set to `cpu` to keep candle's networks on the CPU in a CUDA build.
pub const DEVICE_ENV: &str = "LLMLAB_CANDLE_DEVICE";

/// Whether image models run on a GPU (BERT's encoder is the CPU's own).
pub fn images_on_gpu() -> bool {
    !compute_device().is_cpu()
}

pub(crate) fn compute_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(pick).clone()
}

#[cfg(feature = "cuda")]
fn pick() -> Device {
    if std::env::var(DEVICE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("cpu")) {
        return Device::Cpu;
    }
    match Device::new_cuda(0) {
        Ok(device) => {
            // f32 products on tensor cores (TF32): what PyTorch's
            // convolutions do by default.
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
            tracing::info!("candle runs on CUDA GPU 0");
            device
        }
        Err(e) => {
            tracing::warn!(error = %e, "no CUDA GPU for candle; its models run on the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn pick() -> Device {
    Device::Cpu
}
