//! Memory budgets: what a model is estimated to hold in RAM and in GPU
//! memory, and whether a new model fits next to the ones already loaded.

use serde::Serialize;

/// Bytes a model holds once loaded, estimated before loading it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Host memory: weights and KV cache of the layers kept on the CPU,
    /// plus compute buffers.
    pub ram: u64,
    /// GPU memory of the offloaded layers (0 when nothing is offloaded).
    pub vram: u64,
}

impl MemoryEstimate {
    pub fn ram(bytes: u64) -> Self {
        Self { ram: bytes, vram: 0 }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            ram: self.ram + other.ram,
            vram: self.vram + other.vram,
        }
    }
}

/// Limits on what loaded models may hold together; `None`: no limit.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct MemoryBudget {
    pub ram: Option<u64>,
    pub vram: Option<u64>,
}

/// Why a model does not fit: which memory, and the figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shortfall {
    gpu: bool,
    needed: u64,
    available: u64,
    budget: u64,
}

impl Shortfall {
    pub fn describe(&self, model: &str) -> String {
        let (memory, budget) = if self.gpu {
            ("bytes of GPU memory", "GPU memory budget")
        } else {
            ("bytes", "memory budget")
        };
        format!(
            "model '{model}' needs about {} {memory} but only {} of the {}-byte {budget} are free",
            self.needed, self.available, self.budget
        )
    }
}

impl MemoryBudget {
    pub fn is_unlimited(&self) -> bool {
        self.ram.is_none() && self.vram.is_none()
    }

    /// Whether `needed` fits next to `used`; the first memory that does not.
    pub fn shortfall(&self, used: impl Iterator<Item = MemoryEstimate>, needed: MemoryEstimate) -> Option<Shortfall> {
        let used = used.fold(MemoryEstimate::default(), MemoryEstimate::plus);
        let check = |gpu: bool, budget: Option<u64>, used: u64, needed: u64| {
            let budget = budget?;
            (used + needed > budget).then(|| Shortfall {
                gpu,
                needed,
                available: budget.saturating_sub(used),
                budget,
            })
        };
        check(false, self.ram, used.ram, needed.ram).or_else(|| check(true, self.vram, used.vram, needed.vram))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_memory_is_checked_against_its_own_budget() {
        let budget = MemoryBudget {
            ram: Some(100),
            vram: Some(50),
        };
        let loaded = [MemoryEstimate { ram: 40, vram: 30 }];
        assert_eq!(
            budget.shortfall(loaded.into_iter(), MemoryEstimate { ram: 60, vram: 20 }),
            None
        );
        let ram = budget
            .shortfall(loaded.into_iter(), MemoryEstimate { ram: 61, vram: 0 })
            .unwrap();
        assert_eq!(
            ram.describe("m"),
            "model 'm' needs about 61 bytes but only 60 of the 100-byte memory budget are free"
        );
        let vram = budget
            .shortfall(loaded.into_iter(), MemoryEstimate { ram: 0, vram: 21 })
            .unwrap();
        assert_eq!(
            vram.describe("m"),
            "model 'm' needs about 21 bytes of GPU memory but only 20 of the 50-byte GPU memory budget are free"
        );
        let unlimited = MemoryBudget::default();
        assert!(unlimited.is_unlimited());
        assert_eq!(
            unlimited.shortfall(loaded.into_iter(), MemoryEstimate::ram(u64::MAX / 2)),
            None
        );
    }
}
