//! The learning-rate schedule of `transformers.get_linear_schedule_with_warmup`.

/// Linear warm-up from 0 over `warmup` steps, then linear decay to 0 at `total`.
#[derive(Clone, Copy, Debug)]
pub struct LinearSchedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
}

impl LinearSchedule {
    /// `warmup = ceil(ratio * total)`, as `TrainingArguments.warmup_ratio` rounds.
    pub fn with_ratio(peak: f64, ratio: f64, total: usize) -> Self {
        LinearSchedule { peak, warmup: (ratio * total as f64).ceil() as usize, total }
    }

    /// The rate for optimiser step `step` (0-based): the first step of a warm-up uses rate 0.
    pub fn rate(&self, step: usize) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            (self.total.saturating_sub(step)) as f64 / (self.total.saturating_sub(self.warmup)).max(1) as f64
        };
        self.peak * factor.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_protocol() {
        // MR protocol: 3 epochs x 266 batches, warm-up ratio 0.06 -> 48 of 798 steps.
        let s = LinearSchedule::with_ratio(1e-4, 0.06, 798);
        assert_eq!(s.warmup, 48);
        assert_eq!(s.rate(0), 0.0);
        assert!((s.rate(24) - 0.5e-4).abs() < 1e-12);
        assert!((s.rate(48) - 1e-4).abs() < 1e-12);
        assert!((s.rate(423) - 0.5e-4).abs() < 1e-12);
        assert_eq!(s.rate(798), 0.0);
    }
}
