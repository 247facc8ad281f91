//! The per-job sampler chain, built from [`SamplingParams`].

use std::hash::{BuildHasher, Hasher};

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use rbee_bus::{ParamError, SamplingParams};

/// The fewest recent tokens the penalties look at (llama.cpp's default `repeat_last_n`).
const PENALTY_LAST_N: i32 = 64;

/// llama.cpp's `LLAMA_DEFAULT_SEED`: `dist` treats it as "pick a random seed", so it is never passed.
const LLAMA_RANDOM_SEED: u32 = u32::MAX;

/// The seed a job runs with: the one asked for, or a fresh random one.
pub(crate) fn job_seed(requested: Option<u64>) -> u64 {
    requested.unwrap_or_else(|| {
        // `RandomState` is randomly keyed per process and per instance: good enough for sampling.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    })
}

/// Folds a 64-bit seed into the 32 bits llama.cpp's `dist` sampler takes, never producing the value
/// llama.cpp reads as "random", so the same seed always gives the same stream.
pub(crate) fn fold_seed(seed: u64) -> u32 {
    let folded = ((seed >> 32) ^ (seed & 0xffff_ffff)) as u32;
    if folded == LLAMA_RANDOM_SEED {
        LLAMA_RANDOM_SEED - 1
    } else {
        folded
    }
}

/// The sampler chain for one job: logit biases, repeat/frequency/presence penalties, top-k, top-p,
/// min-p, temperature, then a seeded random pick; temperature 0 is greedy (after the biases and
/// penalties). Params must be validated; a biased token outside the vocabulary is refused here, where
/// the vocabulary is known.
pub(crate) fn build(params: &SamplingParams, n_vocab: i32, seed: u64) -> Result<LlamaSampler, ParamError> {
    let mut chain = Vec::with_capacity(8);
    if !params.logit_bias.is_empty() {
        let mut biases = Vec::with_capacity(params.logit_bias.len());
        for b in &params.logit_bias {
            let token = i32::try_from(b.token).ok().filter(|t| *t < n_vocab).ok_or_else(|| ParamError {
                field: "logit_bias",
                message: format!("token {} is not in the model's vocabulary of {n_vocab}", b.token),
            })?;
            // OpenAI's -100 bans the token outright; a finite -100 only makes it unlikely.
            let bias = if b.bias <= -100.0 { f32::NEG_INFINITY } else { b.bias };
            biases.push(LlamaLogitBias::new(LlamaToken(token), bias));
        }
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    let penalized =
        params.repeat_penalty != 1.0 || params.frequency_penalty != 0.0 || params.presence_penalty != 0.0;
    if penalized {
        // OpenAI counts every generated token; the window covers the whole answer (at least llama.cpp's
        // default of 64 for the repeat penalty).
        let last_n = i32::try_from(params.max_tokens).unwrap_or(i32::MAX).max(PENALTY_LAST_N);
        chain.push(LlamaSampler::penalties(
            n_vocab,
            last_n,
            params.repeat_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if params.top_k > 0 {
            chain.push(LlamaSampler::top_k(i32::try_from(params.top_k).unwrap_or(i32::MAX)));
        }
        if params.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(params.min_p, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature));
        chain.push(LlamaSampler::dist(fold_seed(seed)));
    }
    Ok(LlamaSampler::chain(chain, true))
}

#[cfg(test)]
mod tests {
    use super::{fold_seed, job_seed, LLAMA_RANDOM_SEED};

    #[test]
    fn fold_is_stable_and_avoids_the_random_marker() {
        assert_eq!(fold_seed(42), 42);
        assert_eq!(fold_seed(42), fold_seed(42));
        assert_ne!(fold_seed(1), fold_seed(2));
        assert_ne!(fold_seed(u64::from(u32::MAX)), LLAMA_RANDOM_SEED);
        assert_ne!(fold_seed(0xffff_ffff_0000_0000), LLAMA_RANDOM_SEED);
    }

    #[test]
    fn requested_seed_is_kept_and_missing_seed_varies() {
        assert_eq!(job_seed(Some(7)), 7);
        assert_ne!(job_seed(None), job_seed(None));
    }
}
