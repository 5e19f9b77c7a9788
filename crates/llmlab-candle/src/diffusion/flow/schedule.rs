//! The noise levels (sigmas) a rectified-flow model steps through, as
//! diffusers' `FlowMatchEulerDiscreteScheduler` sets them: a linear ramp
//! from 1 down, bent towards the noisy end by `shift` (SD3: 3), or, for
//! models trained with dynamic shifting (Flux dev), by an amount that
//! grows with the number of image tokens.

use serde_json::Value;

use crate::diffusion::configs::{ConfigResult, Fields};

#[derive(Debug, Clone, Copy, PartialEq)]
struct DynamicShift {
    base_tokens: f64,
    max_tokens: f64,
    base_shift: f64,
    max_shift: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FlowSchedule {
    shift: f64,
    dynamic: Option<DynamicShift>,
    train_steps: usize,
}

/// Where the ramp starts and ends: diffusers' SD3 pipeline spans its
/// training levels (their shifted first and last); its Flux pipeline
/// passes its own ramp, 1 down to 1/steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ramp {
    TrainingRange,
    OneOverSteps,
}

impl FlowSchedule {
    pub fn from_json(json: &Value) -> ConfigResult<Self> {
        let c = Fields(json);
        let dynamic = if c.bool("use_dynamic_shifting", false)? {
            Some(DynamicShift {
                base_tokens: c.f64("base_image_seq_len", 256.0)?,
                max_tokens: c.f64("max_image_seq_len", 4096.0)?,
                base_shift: c.f64("base_shift", 0.5)?,
                max_shift: c.f64("max_shift", 1.15)?,
            })
        } else {
            None
        };
        if let Some(kind) = c.get("time_shift_type").and_then(Value::as_str) {
            if kind != "exponential" {
                return Err(format!("time_shift_type {kind} is not supported (exponential)"));
            }
        }
        let shift = c.f64("shift", 1.0)?;
        if shift <= 0.0 {
            return Err(format!("shift {shift} must be above 0"));
        }
        Ok(Self {
            shift,
            dynamic,
            train_steps: c.usize("num_train_timesteps", Some(1000))?.max(1),
        })
    }

    fn shifted(&self, sigma: f64) -> f64 {
        self.shift * sigma / (1.0 + (self.shift - 1.0) * sigma)
    }

    /// `steps` + 1 levels from the noisiest down to 0; `image_tokens`
    /// sets a dynamic shift.
    pub fn sigmas(&self, steps: usize, image_tokens: usize, ramp: Ramp) -> Vec<f64> {
        let steps = steps.max(1);
        let (first, last) = match ramp {
            Ramp::OneOverSteps => (1.0, 1.0 / steps as f64),
            Ramp::TrainingRange => {
                let lowest = 1.0 / self.train_steps as f64;
                // The scheduler's own range is shifted once at creation
                // unless it shifts dynamically.
                let lowest = if self.dynamic.is_some() {
                    lowest
                } else {
                    self.shifted(lowest)
                };
                (1.0, lowest)
            }
        };
        let ramp = (0..steps).map(|i| {
            if steps == 1 {
                first
            } else {
                first + (last - first) * i as f64 / (steps - 1) as f64
            }
        });
        let mut sigmas: Vec<f64> = match self.dynamic {
            None => ramp.map(|s| self.shifted(s)).collect(),
            Some(d) => {
                let slope = (d.max_shift - d.base_shift) / (d.max_tokens - d.base_tokens);
                let mu = d.base_shift + slope * (image_tokens as f64 - d.base_tokens);
                let e = mu.exp();
                ramp.map(|s| e / (e + (1.0 / s - 1.0))).collect()
            }
        };
        sigmas.push(0.0);
        sigmas
    }

    /// The training step a level corresponds to (what SD3's transformer
    /// reads as its timestep).
    pub fn timestep(&self, sigma: f64) -> f64 {
        sigma * self.train_steps as f64
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn an_unshifted_ramp_is_linear_to_zero() {
        let schedule = FlowSchedule::from_json(&json!({"shift": 1.0})).unwrap();
        let sigmas = schedule.sigmas(4, 1024, Ramp::OneOverSteps);
        assert!(close(&sigmas, &[1.0, 0.75, 0.5, 0.25, 0.0]), "{sigmas:?}");
    }

    #[test]
    fn a_shift_bends_the_ramp_towards_noise_and_keeps_its_ends() {
        let schedule = FlowSchedule::from_json(&json!({"shift": 3.0})).unwrap();
        let sigmas = schedule.sigmas(3, 0, Ramp::TrainingRange);
        assert_eq!(sigmas[0], 1.0);
        assert_eq!(*sigmas.last().unwrap(), 0.0);
        // 3s / (1 + 2s): the middle of the ramp is well above its middle.
        assert!(sigmas[1] > 0.7 && sigmas[1] < 0.8, "{sigmas:?}");
        assert!(sigmas.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn a_dynamic_shift_grows_with_the_image() {
        let schedule = FlowSchedule::from_json(&json!({
            "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096
        }))
        .unwrap();
        let small = schedule.sigmas(4, 256, Ramp::OneOverSteps);
        let large = schedule.sigmas(4, 4096, Ramp::OneOverSteps);
        assert!(large[2] > small[2], "{small:?} {large:?}");
        // At the base size mu = 0.5: e^0.5 / (e^0.5 + 1/s - 1).
        let e = 0.5f64.exp();
        assert!((small[2] - e / (e + 1.0)).abs() < 1e-9);
    }

    #[test]
    fn unknown_shift_kinds_are_refused() {
        let err = FlowSchedule::from_json(&json!({"time_shift_type": "linear"})).unwrap_err();
        assert!(err.contains("time_shift_type"), "{err}");
    }
}
