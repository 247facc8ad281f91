//! Log probabilities of sampled tokens (OpenAI's `logprobs`/`top_logprobs`): the model's own
//! distribution at each position (a log-softmax of the raw logits, before penalties, temperature or
//! a grammar), with the most likely alternatives. No llama.cpp types here.

use rbee_bus::{TokenLogprob, TopLogprob};

/// The log-softmax normalizer of `logits`: `max` and `ln(sum(exp(l - max)))`.
fn normalizer(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| f64::from(l - max).exp()).sum();
    (max, sum.ln() as f32)
}

/// The `n` highest logits, highest first, as (token, logit).
fn top_n(logits: &[f32], n: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() || (best.len() == n && best.last().is_some_and(|&(_, worst)| l <= worst)) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i, l));
        best.truncate(n);
    }
    best
}

/// The entry of `token` sampled from `logits`, with `top` alternatives; `piece` gives a token's bytes.
pub(crate) fn entry(logits: &[f32], token: usize, top: u8, piece: impl Fn(usize) -> Vec<u8>) -> TokenLogprob {
    let (max, log_sum) = normalizer(logits);
    let logprob_of = |l: f32| l - max - log_sum;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let bytes = piece(token);
    TokenLogprob {
        token: text(&bytes),
        logprob: logits.get(token).map_or(f32::NEG_INFINITY, |&l| logprob_of(l)),
        top: top_n(logits, usize::from(top))
            .into_iter()
            .map(|(t, l)| {
                let bytes = piece(t);
                TopLogprob { token: text(&bytes), bytes, logprob: logprob_of(l) }
            })
            .collect(),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::{entry, top_n};

    #[test]
    fn probabilities_sum_to_one_and_the_top_are_ordered() {
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY, 0.5];
        let e = entry(&logits, 2, 3, |t| vec![b'a' + t as u8]);
        let total: f32 = logits.iter().map(|&l| (l - 3.0).exp()).sum();
        assert!((e.logprob - (2.0 - 3.0 - total.ln())).abs() < 1e-5, "{}", e.logprob);
        assert_eq!(e.token, "c");
        let tops: Vec<_> = e.top.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tops, ["b", "c", "a"]);
        let p: f32 = (0..5).map(|t| entry(&logits, t, 0, |_| Vec::new()).logprob.exp()).sum();
        assert!((p - 1.0).abs() < 1e-5, "{p}");
    }

    #[test]
    fn top_n_keeps_the_highest() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32).collect();
        let top = top_n(&logits, 4);
        assert_eq!(top.iter().map(|&(_, l)| l).collect::<Vec<_>>(), [999.0, 998.0, 997.0, 996.0]);
        assert!(top_n(&logits, 0).is_empty());
    }
}
