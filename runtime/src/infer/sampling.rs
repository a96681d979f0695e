//! Request sampling parameters, validated, and their mapping onto candle's
//! `LogitsProcessor`. Trusts nothing: every value comes from an API client.

use super::InferError;
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax). OpenAI's range: 0 to 2.
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    /// Seed of the sampler's random generator; same seed, same request, same output.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: None, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks ranges; errors name the OpenAI parameter at fault.
    pub fn validate(&self) -> Result<(), InferError> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(InferError::InvalidParam {
                param: "temperature",
                reason: format!("{} is not between 0 and 2", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InferError::InvalidParam { param: "top_p", reason: format!("{} is not in (0, 1]", self.top_p) });
        }
        if self.top_k == Some(0) {
            return Err(InferError::InvalidParam { param: "top_k", reason: "must be at least 1".into() });
        }
        Ok(())
    }

    /// candle's sampler for these parameters.
    pub fn processor(&self) -> LogitsProcessor {
        let temperature = self.temperature;
        let sampling = if temperature <= 0.0 || self.top_k == Some(1) {
            Sampling::ArgMax
        } else {
            match (self.top_k, self.top_p < 1.0) {
                (Some(k), true) => Sampling::TopKThenTopP { k, p: self.top_p, temperature },
                (Some(k), false) => Sampling::TopK { k, temperature },
                (None, true) => Sampling::TopP { p: self.top_p, temperature },
                (None, false) => Sampling::All { temperature },
            }
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn ranges() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplingParams { temperature: -0.1, ..ok.clone() },
            SamplingParams { temperature: 2.5, ..ok.clone() },
            SamplingParams { temperature: f64::NAN, ..ok.clone() },
            SamplingParams { top_p: 0.0, ..ok.clone() },
            SamplingParams { top_p: 1.5, ..ok.clone() },
            SamplingParams { top_k: Some(0), ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn greedy_and_seeded_sampling() -> candle_core::Result<()> {
        let logits = Tensor::new(&[0.1f32, 3.0, 0.2, 2.9], &Device::Cpu)?;
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(greedy.processor().sample(&logits)?, 1);
        let topk = SamplingParams { temperature: 1.0, top_k: Some(2), seed: 7, ..Default::default() };
        let draws: Vec<u32> = {
            let mut p = topk.processor();
            (0..50).map(|_| p.sample(&logits)).collect::<candle_core::Result<_>>()?
        };
        assert!(draws.iter().all(|&t| t == 1 || t == 3), "top-k keeps the two best: {draws:?}");
        assert!(draws.contains(&1) && draws.contains(&3));
        let again: Vec<u32> = {
            let mut p = topk.processor();
            (0..50).map(|_| p.sample(&logits)).collect::<candle_core::Result<_>>()?
        };
        assert_eq!(draws, again, "same seed, same draws");
        Ok(())
    }
}
