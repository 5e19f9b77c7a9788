//! What one decode step computes: which sequences get tokens into the
//! shared batch, and which run in calls of their own. Pure bookkeeping (no
//! llama.cpp types) so the policy is tested on a simulated clock.
//!
//! The policy, per step:
//! 1. **Running streams never wait.** Every generating sequence gets its
//!    next token into the shared batch, first. A prompt can lengthen a step
//!    but never skip one, so inter-token latency is bounded by the step
//!    budget, not by the length of the prompts waiting.
//! 2. **Prompts fill the rest, oldest first (chunked prefill).** What the
//!    budget leaves after the decode rows goes to waiting prompts in the
//!    order they arrived; a long prompt is cut into chunks across steps.
//!    Finishing the oldest prompt first gives the lowest mean time to first
//!    token for the same work (shortest-remaining-first would starve long
//!    prompts), and a newcomer starts within `ceil(prompt tokens ahead of it
//!    / budget)` steps.
//! 3. **The budget is the batch size.** One step is one `llama_decode` of at
//!    most `n_batch` tokens (`batch_size` in the registry): the knob that
//!    trades a newcomer's first token against the others' next one. The
//!    default (512) keeps a step under a few decode-steps' time on small
//!    models; llama-server lets a step grow to 2048 tokens.
//! 4. **Batch-invariant sequences run alone.** A sequence that must give
//!    the same answer whatever else runs is decoded in calls of its own,
//!    cut exactly as it would be on an idle server: one token per call while
//!    generating, its prompt in chunks of the whole batch from position 0.
//!    llama.cpp's batched kernels (llamafile sgemm, repacked weights, tiled
//!    matmul, flash attention) pick their code path by the number of rows in
//!    a call, so equal calls give equal numbers. The cost is one extra
//!    `llama_decode` per invariant sequence per step.
//! 5. **Images are evaluated apart.** A prompt's tokens are granted up to
//!    its next image; the batcher evaluates at most one image per step (the
//!    oldest sequence's), in calls of its own, before the shared batch. A
//!    sequence waiting at an image takes nothing until then, and nobody
//!    else waits for it.

/// What a running sequence asks of the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Demand {
    /// Prompt tokens not yet decoded (0 once it generates).
    pub prompt_left: usize,
    /// Decoded in calls of its own (see the module docs).
    pub invariant: bool,
    /// Its prompt has reached an image: the batcher evaluates images apart
    /// (one per step), so it takes no tokens until its image is in.
    pub at_image: bool,
}

impl Demand {
    fn generating(&self) -> bool {
        self.prompt_left == 0 && !self.at_image
    }

    fn wants_tokens(&self) -> bool {
        !self.at_image
    }
}

/// Tokens a sequence puts into one decode call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Index of the sequence in the demands given to [`plan_step`].
    pub sequence: usize,
    pub tokens: usize,
}

/// One step: the shared batch, then one call per invariant sequence.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StepPlan {
    /// In the order of the demands (slot order, which llama.cpp needs to
    /// decode sequences of consecutive slots in one micro-batch).
    pub shared: Vec<Grant>,
    pub alone: Vec<Grant>,
}

/// Plan the next step for `demands` (in slot order); `arrival` gives each
/// sequence's admission rank (lower came first). `budget` is the most
/// tokens one call may hold (the context's `n_batch`).
pub(crate) fn plan_step(demands: &[Demand], arrival: &[u64], budget: usize) -> StepPlan {
    debug_assert_eq!(demands.len(), arrival.len());
    let budget = budget.max(1);
    let mut plan = StepPlan::default();
    let mut tokens = vec![0usize; demands.len()];
    // Rule 1: every generating sequence's next token.
    let mut left = budget;
    for (i, demand) in demands.iter().enumerate() {
        if !demand.wants_tokens() {
            continue;
        }
        if demand.invariant {
            let chunk = if demand.generating() {
                1
            } else {
                demand.prompt_left.min(budget)
            };
            plan.alone.push(Grant {
                sequence: i,
                tokens: chunk,
            });
        } else if demand.generating() && left > 0 {
            tokens[i] = 1;
            left -= 1;
        }
    }
    // Rule 2: prompts, oldest first, share what is left.
    let mut waiting: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].wants_tokens() && !demands[i].invariant && !demands[i].generating())
        .collect();
    waiting.sort_by_key(|&i| arrival[i]);
    for i in waiting {
        if left == 0 {
            break;
        }
        let chunk = demands[i].prompt_left.min(left);
        tokens[i] = chunk;
        left -= chunk;
    }
    plan.shared = tokens
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(sequence, &tokens)| Grant { sequence, tokens })
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(left: usize) -> Demand {
        Demand {
            prompt_left: left,
            invariant: false,
            at_image: false,
        }
    }

    const GENERATING: Demand = Demand {
        prompt_left: 0,
        invariant: false,
        at_image: false,
    };

    #[test]
    fn decode_rows_come_first_and_prompts_fill_the_rest_oldest_first() {
        // Slots 0..4: two generating, a prompt that came last, one that came first.
        let demands = [GENERATING, prompt(300), GENERATING, prompt(400)];
        let plan = plan_step(&demands, &[0, 9, 1, 2], 512);
        let shared: Vec<(usize, usize)> = plan.shared.iter().map(|g| (g.sequence, g.tokens)).collect();
        assert_eq!(shared, vec![(0, 1), (1, 110), (2, 1), (3, 400)]);
        assert!(plan.alone.is_empty());
    }

    #[test]
    fn invariant_sequences_are_cut_as_if_alone() {
        let invariant = |left| Demand {
            prompt_left: left,
            invariant: true,
            at_image: false,
        };
        let demands = [GENERATING, invariant(1000), invariant(0), prompt(50)];
        let plan = plan_step(&demands, &[0, 1, 2, 3], 512);
        let alone: Vec<(usize, usize)> = plan.alone.iter().map(|g| (g.sequence, g.tokens)).collect();
        assert_eq!(
            alone,
            vec![(1, 512), (2, 1)],
            "a whole batch of prompt, one token when generating"
        );
        let shared: Vec<(usize, usize)> = plan.shared.iter().map(|g| (g.sequence, g.tokens)).collect();
        assert_eq!(shared, vec![(0, 1), (3, 50)]);
    }

    /// A simulated engine on a virtual clock: each step costs a fixed
    /// overhead plus a cost per token, as a CPU decode roughly does.
    struct Simulation {
        demands: Vec<Demand>,
        arrival: Vec<u64>,
        generated: Vec<usize>,
        first_token_at: Vec<Option<f64>>,
        token_times: Vec<Vec<f64>>,
        clock: f64,
    }

    impl Simulation {
        const STEP_MS: f64 = 20.0;
        const TOKEN_MS: f64 = 2.0;

        fn new(prompts: &[usize]) -> Self {
            let n = prompts.len();
            Self {
                demands: prompts.iter().map(|&p| prompt(p)).collect(),
                arrival: (0..n as u64).collect(),
                generated: vec![0; n],
                first_token_at: vec![None; n],
                token_times: vec![Vec::new(); n],
                clock: 0.0,
            }
        }

        /// Run steps until every sequence has `output` tokens.
        fn run(&mut self, budget: usize, output: usize) {
            while self.generated.iter().any(|g| *g < output) {
                let plan = plan_step(&self.demands, &self.arrival, budget);
                let calls = std::iter::once(&plan.shared[..]).chain(plan.alone.iter().map(std::slice::from_ref));
                for call in calls.filter(|c| !c.is_empty()) {
                    let tokens: usize = call.iter().map(|g| g.tokens).sum();
                    self.clock += Self::STEP_MS + Self::TOKEN_MS * tokens as f64;
                    for grant in call {
                        let d = &mut self.demands[grant.sequence];
                        if d.prompt_left > 0 {
                            d.prompt_left -= grant.tokens;
                            if d.prompt_left > 0 {
                                continue;
                            }
                        }
                        // The prompt's last chunk or a decode row yields a token.
                        let s = grant.sequence;
                        if self.generated[s] < output {
                            self.generated[s] += 1;
                            self.first_token_at[s].get_or_insert(self.clock);
                            self.token_times[s].push(self.clock);
                        }
                    }
                }
            }
        }

        fn worst_gap(&self) -> f64 {
            self.token_times
                .iter()
                .flat_map(|t| t.windows(2).map(|w| w[1] - w[0]))
                .fold(0.0, f64::max)
        }
    }

    #[test]
    fn eight_streams_start_in_arrival_order_and_running_ones_keep_their_pace() {
        // Eight 300-token prompts arrive at once on an engine with a 512-token step.
        let mut sim = Simulation::new(&[300; 8]);
        sim.run(512, 32);
        let firsts: Vec<f64> = sim.first_token_at.iter().map(|t| t.unwrap()).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] <= w[1]),
            "first tokens in arrival order: {firsts:?}"
        );
        // All 2400 prompt tokens are through in ceil(2400 / 512) + 1 steps:
        // no step is wasted on a batch that is not full while prompts wait.
        let all_started = firsts[7];
        let max_steps = (2400f64 / 512.0).ceil() + 1.0;
        assert!(
            all_started <= max_steps * (Simulation::STEP_MS + 512.0 * Simulation::TOKEN_MS),
            "{all_started}"
        );
        // A step is at most one full batch: the worst gap between two tokens
        // of one stream is one full step, whatever waits.
        let full_step = Simulation::STEP_MS + 512.0 * Simulation::TOKEN_MS;
        assert!(sim.worst_gap() <= full_step + 1e-9, "worst gap {} ms", sim.worst_gap());
    }

    #[test]
    fn a_smaller_budget_trades_first_tokens_for_steadier_streams() {
        let mut big = Simulation::new(&[2000, 100, 100, 100]);
        big.run(512, 16);
        let mut small = Simulation::new(&[2000, 100, 100, 100]);
        small.run(128, 16);
        assert!(small.worst_gap() < big.worst_gap());
        assert!(small.first_token_at[0].unwrap() > big.first_token_at[0].unwrap());
    }

    #[test]
    fn an_invariant_stream_sees_the_same_calls_alone_and_among_others() {
        let invariant = Demand {
            prompt_left: 700,
            invariant: true,
            at_image: false,
        };
        let calls_of = |others: &[Demand]| {
            let mut demands = vec![invariant];
            demands.extend_from_slice(others);
            let arrival: Vec<u64> = (0..demands.len() as u64).collect();
            let mut seen = Vec::new();
            for _ in 0..4 {
                let plan = plan_step(&demands, &arrival, 512);
                let grant = plan.alone.iter().find(|g| g.sequence == 0).unwrap();
                seen.push(grant.tokens);
                demands[0].prompt_left = demands[0].prompt_left.saturating_sub(grant.tokens);
                for d in &mut demands[1..] {
                    d.prompt_left = d.prompt_left.saturating_sub(100);
                }
            }
            seen
        };
        let alone = calls_of(&[]);
        assert_eq!(alone, vec![512, 188, 1, 1]);
        assert_eq!(calls_of(&[prompt(900), GENERATING, prompt(30)]), alone);
    }

    #[test]
    fn a_sequence_at_an_image_takes_no_tokens_and_others_go_on() {
        let at_image = Demand {
            prompt_left: 0,
            invariant: false,
            at_image: true,
        };
        let plan = plan_step(&[GENERATING, at_image, prompt(40)], &[0, 1, 2], 512);
        let shared: Vec<(usize, usize)> = plan.shared.iter().map(|g| (g.sequence, g.tokens)).collect();
        assert_eq!(shared, vec![(0, 1), (2, 40)]);
        let invariant_at_image = Demand {
            invariant: true,
            ..at_image
        };
        assert!(plan_step(&[invariant_at_image], &[0], 512).alone.is_empty());
    }
}
