//! Writes a tiny random-weight llama GGUF for plumbing tests, and a tiny Mamba (recurrent) one for the
//! paths that must tell a model whose memory cannot be cut after a prefix.
//!
//! The file is a real GGUF v3 (little-endian, 32-byte alignment, F32 tensors) that llama.cpp loads and
//! generates from in milliseconds. It carries a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`,
//! `tokenizer.ggml.pre = "gpt-2"`) that covers all 256 bytes, so any text tokenizes; the ChatML special
//! tokens `<|endoftext|>` (id 0), `<|im_start|>` (id 1, BOS) and `<|im_end|>` (id 2, EOS); and a ChatML
//! chat template, so chat requests render.
//!
//! The weights are random (seeded, deterministic): the output is gibberish, honest only about plumbing.
//! To keep that gibberish easy to handle, the output rows of control tokens and of byte tokens that are
//! not printable ASCII are zero: greedy decoding then (with overwhelming probability) never emits an
//! end-of-generation token nor invalid UTF-8, and runs until its token limit. Sampling with a temperature
//! can still pick them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The shape of the tiny model. `Default` gives a ~0.5 MB file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyModelSpec {
    /// Vocabulary size: at least 260 (3 specials + 256 byte tokens + 1 merge). Tokens beyond the
    /// built-in merge list are filled with unused placeholders.
    pub vocab: usize,
    /// Embedding width (`llama.embedding_length`); a multiple of `heads` with an even head size.
    pub embd: usize,
    /// Number of transformer blocks (`llama.block_count`).
    pub layers: usize,
    /// Attention heads (`llama.attention.head_count`, also `head_count_kv`: no GQA).
    pub heads: usize,
    /// Feed-forward width (`llama.feed_forward_length`).
    pub ff: usize,
    /// Training context length (`llama.context_length`).
    pub ctx: u32,
    /// Seed of the weights' PRNG: same spec, same bytes.
    pub seed: u64,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self { vocab: 300, embd: 64, layers: 2, heads: 4, ff: 128, ctx: 512, seed: 42 }
    }
}

/// Token id of `<|endoftext|>`.
pub const ENDOFTEXT_ID: u32 = 0;
/// Token id of `<|im_start|>` (also the BOS token).
pub const IM_START_ID: u32 = 1;
/// Token id of `<|im_end|>` (the EOS token).
pub const IM_END_ID: u32 = 2;

/// The ChatML template stored as `tokenizer.chat_template` (llama.cpp recognizes it as `chatml`).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// File name used by [`tiny_llama_in`].
pub const TINY_LLAMA_FILE: &str = "tiny-llama.gguf";

const ALIGNMENT: usize = 32;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Writes `tiny-llama.gguf` with the default spec into `dir` and returns its path.
pub fn tiny_llama_in(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(TINY_LLAMA_FILE);
    write_tiny_llama(&path, &TinyModelSpec::default())?;
    Ok(path)
}

/// File name used by [`tiny_mamba_in`].
pub const TINY_MAMBA_FILE: &str = "tiny-mamba.gguf";

/// The architectures this module writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// Attention with a KV cache (cells can be removed past any position).
    Llama,
    /// Mamba: a recurrent state per sequence, which cannot be cut back to a prefix.
    Mamba,
}

/// Writes a tiny random-weight llama GGUF described by `spec` to `path`.
///
/// Fails with `InvalidInput` when the spec cannot make a loadable model (see [`TinyModelSpec`]).
pub fn write_tiny_llama(path: &Path, spec: &TinyModelSpec) -> io::Result<()> {
    write(path, spec, Arch::Llama)
}

/// Writes `tiny-mamba.gguf` (the default spec's vocabulary, width, depth and context; `heads` and `ff`
/// do not apply) into `dir` and returns its path. Same tokenizer and chat template as the llama one.
pub fn tiny_mamba_in(dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(TINY_MAMBA_FILE);
    write(&path, &TinyModelSpec::default(), Arch::Mamba)?;
    Ok(path)
}

fn write(path: &Path, spec: &TinyModelSpec, arch: Arch) -> io::Result<()> {
    validate(spec)?;
    let vocab = build_vocab(spec.vocab);
    let tensors = match arch {
        Arch::Llama => tensor_list(spec),
        Arch::Mamba => mamba_tensor_list(spec),
    };

    let mut w = GgufWriter { out: BufWriter::new(File::create(path)?), pos: 0 };
    let kvs = match arch {
        Arch::Llama => metadata(spec, &vocab),
        Arch::Mamba => mamba_metadata(spec, &vocab),
    };

    // header
    w.bytes(b"GGUF")?;
    w.u32(3)?;
    w.u64(tensors.len() as u64)?;
    w.u64(kvs.len() as u64)?;
    for (key, value) in &kvs {
        w.string(key)?;
        w.value(value)?;
    }

    // tensor infos: offsets are relative to the (aligned) start of the data section
    let mut offset = 0usize;
    for t in &tensors {
        w.string(&t.name)?;
        w.u32(t.dims.len() as u32)?;
        for &d in &t.dims {
            w.u64(d as u64)?;
        }
        w.u32(0)?; // GGML_TYPE_F32
        w.u64(offset as u64)?;
        offset = align(offset + t.len() * 4);
    }
    w.pad()?;

    // tensor data
    let mut rng = XorShift::new(spec.seed);
    for t in &tensors {
        let data = t.data(&mut rng, &vocab.output_masked, spec.embd);
        for v in data {
            w.bytes(&v.to_le_bytes())?;
        }
        w.pad()?;
    }
    w.out.flush()?;
    w.out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn validate(spec: &TinyModelSpec) -> io::Result<()> {
    let min_vocab = SPECIALS.len() + 256 + 1;
    if spec.vocab < min_vocab {
        return Err(invalid(format!("vocab {} < {min_vocab} (specials + 256 bytes + 1 merge)", spec.vocab)));
    }
    if spec.heads == 0 || spec.embd == 0 || spec.embd % spec.heads != 0 || (spec.embd / spec.heads) % 2 != 0 {
        return Err(invalid(format!(
            "embd {} must be a positive multiple of heads {} with an even head size",
            spec.embd, spec.heads
        )));
    }
    if spec.layers == 0 || spec.ff == 0 || spec.ctx == 0 {
        return Err(invalid("layers, ff and ctx must be positive".into()));
    }
    let too_big =
        [spec.vocab, spec.embd, spec.layers, spec.heads, spec.ff].iter().any(|&n| n > u32::MAX as usize);
    if too_big {
        return Err(invalid("dimensions must fit in u32".into()));
    }
    Ok(())
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

// ---------------------------------------------------------------------------------------------------------
// vocabulary

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    /// Tokens whose output row is zero (control tokens, non-printable-ASCII bytes, placeholders).
    output_masked: Vec<bool>,
}

const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_UNUSED: i32 = 5;

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the rest to U+0100 onwards.
fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let cp = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        map[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    map
}

/// Merges in priority order, as (left, right) in byte-unicode form (`Ġ` is a space). Each merge's parts
/// are single bytes or results of earlier merges.
fn merge_candidates() -> Vec<(String, String)> {
    const FIXED: &[(&str, &str)] = &[
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġ", "a"),
        ("i", "n"),
        ("Ġt", "he"),
        ("e", "r"),
        ("o", "n"),
        ("r", "e"),
        ("Ġ", "s"),
        ("Ġ", "w"),
        ("o", "r"),
        ("l", "d"),
        ("l", "l"),
        ("Ġ", "h"),
        ("Ġw", "or"),
        ("Ġwor", "ld"),
        ("he", "ll"),
        ("hell", "o"),
        ("Ġ", "hello"),
    ];
    let mut out: Vec<(String, String)> = FIXED.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    for c in 'a'..='z' {
        out.push(("Ġ".to_string(), c.to_string()));
    }
    for a in 'a'..='z' {
        for b in 'a'..='z' {
            out.push((a.to_string(), b.to_string()));
        }
    }
    out
}

fn build_vocab(size: usize) -> Vocab {
    let mut tokens: Vec<String> = Vec::with_capacity(size);
    let mut types = Vec::with_capacity(size);
    let mut masked = Vec::with_capacity(size);
    for s in SPECIALS {
        tokens.push(s.to_string());
        types.push(TYPE_CONTROL);
        masked.push(true);
    }
    let b2u = byte_to_unicode();
    for b in 0..=255u8 {
        tokens.push(b2u[usize::from(b)].to_string());
        types.push(TYPE_NORMAL);
        masked.push(!(b == b' ' || b.is_ascii_graphic()));
    }
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::new();
    for (a, b) in merge_candidates() {
        if tokens.len() >= size {
            break;
        }
        let merged = format!("{a}{b}");
        if !seen.contains(&a) || !seen.contains(&b) || seen.contains(&merged) {
            continue;
        }
        merges.push(format!("{a} {b}"));
        seen.insert(merged.clone());
        tokens.push(merged);
        types.push(TYPE_NORMAL);
        masked.push(false);
    }
    let mut n = 0;
    while tokens.len() < size {
        tokens.push(format!("<|unused_{n}|>"));
        types.push(TYPE_UNUSED);
        masked.push(true);
        n += 1;
    }
    Vocab { tokens, types, merges, output_masked: masked }
}

// ---------------------------------------------------------------------------------------------------------
// metadata

enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
}

fn metadata(spec: &TinyModelSpec, vocab: &Vocab) -> Vec<(&'static str, Value)> {
    let u = |n: usize| Value::U32(n as u32);
    let s = |t: &str| Value::Str(t.to_string());
    let mut out = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tiny-random-llama")),
        ("general.file_type", Value::U32(0)),
        ("general.alignment", u(ALIGNMENT)),
        ("llama.context_length", Value::U32(spec.ctx)),
        ("llama.embedding_length", u(spec.embd)),
        ("llama.block_count", u(spec.layers)),
        ("llama.feed_forward_length", u(spec.ff)),
        ("llama.attention.head_count", u(spec.heads)),
        ("llama.attention.head_count_kv", u(spec.heads)),
        ("llama.rope.dimension_count", u(spec.embd / spec.heads)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u(spec.vocab)),
    ];
    out.extend(tokenizer(vocab));
    out
}

/// The Mamba hyperparameters (as llama.cpp's converter writes them: no attention heads, no
/// feed-forward), inner size twice the width as llama.cpp requires.
fn mamba_metadata(spec: &TinyModelSpec, vocab: &Vocab) -> Vec<(&'static str, Value)> {
    let u = |n: usize| Value::U32(n as u32);
    let s = |t: &str| Value::Str(t.to_string());
    let mut out = vec![
        ("general.architecture", s("mamba")),
        ("general.name", s("tiny-random-mamba")),
        ("general.file_type", Value::U32(0)),
        ("general.alignment", u(ALIGNMENT)),
        ("mamba.context_length", Value::U32(spec.ctx)),
        ("mamba.embedding_length", u(spec.embd)),
        ("mamba.block_count", u(spec.layers)),
        ("mamba.feed_forward_length", u(0)),
        ("mamba.attention.head_count", u(0)),
        ("mamba.ssm.conv_kernel", u(MAMBA_CONV)),
        ("mamba.ssm.inner_size", u(2 * spec.embd)),
        ("mamba.ssm.state_size", u(MAMBA_STATE)),
        ("mamba.ssm.time_step_rank", u(mamba_dt_rank(spec))),
        ("mamba.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("mamba.vocab_size", u(spec.vocab)),
    ];
    out.extend(tokenizer(vocab));
    out
}

const MAMBA_CONV: usize = 4;
const MAMBA_STATE: usize = 16;

fn mamba_dt_rank(spec: &TinyModelSpec) -> usize {
    spec.embd.div_ceil(16)
}

fn tokenizer(vocab: &Vocab) -> Vec<(&'static str, Value)> {
    let s = |t: &str| Value::Str(t.to_string());
    vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt-2")),
        ("tokenizer.ggml.tokens", Value::StrArray(vocab.tokens.clone())),
        ("tokenizer.ggml.token_type", Value::I32Array(vocab.types.clone())),
        ("tokenizer.ggml.merges", Value::StrArray(vocab.merges.clone())),
        ("tokenizer.ggml.bos_token_id", Value::U32(IM_START_ID)),
        ("tokenizer.ggml.eos_token_id", Value::U32(IM_END_ID)),
        ("tokenizer.ggml.padding_token_id", Value::U32(ENDOFTEXT_ID)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(false)),
        ("tokenizer.chat_template", s(CHATML_TEMPLATE)),
    ]
}

// ---------------------------------------------------------------------------------------------------------
// tensors

#[derive(Clone, Copy)]
enum Init {
    /// All ones (norm weights).
    Ones,
    /// Every element the same value.
    Const(f32),
    /// Uniform in `[-a, a]`.
    Uniform(f32),
    /// Like `Uniform`, with the rows of masked tokens set to zero.
    OutputRows,
}

struct Tensor {
    name: String,
    /// GGUF order: `dims[0]` (ne0) is the contiguous row length.
    dims: Vec<usize>,
    init: Init,
}

impl Tensor {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn data(&self, rng: &mut XorShift, masked: &[bool], embd: usize) -> Vec<f32> {
        match self.init {
            Init::Ones => vec![1.0; self.len()],
            Init::Const(v) => vec![v; self.len()],
            Init::Uniform(a) => (0..self.len()).map(|_| rng.uniform(a)).collect(),
            Init::OutputRows => {
                let a = lin(embd);
                let mut out = Vec::with_capacity(self.len());
                for &m in masked {
                    for _ in 0..embd {
                        let v = rng.uniform(a);
                        out.push(if m { 0.0 } else { v });
                    }
                }
                out
            }
        }
    }
}

/// Amplitude of a uniform init giving unit-variance outputs for unit-variance inputs: `sqrt(3 / fan_in)`.
fn lin(fan_in: usize) -> f32 {
    (3.0 / fan_in as f32).sqrt()
}

fn tensor_list(spec: &TinyModelSpec) -> Vec<Tensor> {
    let (embd, ff, vocab) = (spec.embd, spec.ff, spec.vocab);
    let t = |name: String, dims: Vec<usize>, init: Init| Tensor { name, dims, init };
    let mut out = vec![
        t("token_embd.weight".into(), vec![embd, vocab], Init::Uniform(1.0)),
        t("output_norm.weight".into(), vec![embd], Init::Ones),
        t("output.weight".into(), vec![embd, vocab], Init::OutputRows),
    ];
    for i in 0..spec.layers {
        let uni = |fan_in: usize| Init::Uniform(lin(fan_in));
        out.push(t(format!("blk.{i}.attn_norm.weight"), vec![embd], Init::Ones));
        out.push(t(format!("blk.{i}.attn_q.weight"), vec![embd, embd], uni(embd)));
        out.push(t(format!("blk.{i}.attn_k.weight"), vec![embd, embd], uni(embd)));
        out.push(t(format!("blk.{i}.attn_v.weight"), vec![embd, embd], uni(embd)));
        out.push(t(format!("blk.{i}.attn_output.weight"), vec![embd, embd], uni(embd)));
        out.push(t(format!("blk.{i}.ffn_norm.weight"), vec![embd], Init::Ones));
        out.push(t(format!("blk.{i}.ffn_gate.weight"), vec![embd, ff], uni(embd)));
        out.push(t(format!("blk.{i}.ffn_up.weight"), vec![embd, ff], uni(embd)));
        out.push(t(format!("blk.{i}.ffn_down.weight"), vec![ff, embd], uni(ff)));
    }
    out
}

/// Mamba's tensors (shapes as llama.cpp's loader expects them, `models/mamba.cpp`). `ssm_a` is
/// negative (the discretized state decays) and `ssm_d` one, as in trained models.
fn mamba_tensor_list(spec: &TinyModelSpec) -> Vec<Tensor> {
    let (embd, vocab) = (spec.embd, spec.vocab);
    let inner = 2 * embd;
    let dt_rank = mamba_dt_rank(spec);
    let t = |name: String, dims: Vec<usize>, init: Init| Tensor { name, dims, init };
    let uni = |fan_in: usize| Init::Uniform(lin(fan_in));
    let mut out = vec![
        t("token_embd.weight".into(), vec![embd, vocab], Init::Uniform(1.0)),
        t("output_norm.weight".into(), vec![embd], Init::Ones),
        t("output.weight".into(), vec![embd, vocab], Init::OutputRows),
    ];
    for i in 0..spec.layers {
        out.push(t(format!("blk.{i}.attn_norm.weight"), vec![embd], Init::Ones));
        out.push(t(format!("blk.{i}.ssm_in.weight"), vec![embd, 2 * inner], uni(embd)));
        out.push(t(format!("blk.{i}.ssm_conv1d.weight"), vec![MAMBA_CONV, inner], uni(MAMBA_CONV)));
        out.push(t(format!("blk.{i}.ssm_conv1d.bias"), vec![inner], Init::Const(0.0)));
        out.push(t(format!("blk.{i}.ssm_x.weight"), vec![inner, dt_rank + 2 * MAMBA_STATE], uni(inner)));
        out.push(t(format!("blk.{i}.ssm_dt.weight"), vec![dt_rank, inner], uni(dt_rank)));
        out.push(t(format!("blk.{i}.ssm_dt.bias"), vec![inner], Init::Const(0.0)));
        out.push(t(format!("blk.{i}.ssm_a"), vec![MAMBA_STATE, inner], Init::Const(-1.0)));
        out.push(t(format!("blk.{i}.ssm_d"), vec![inner], Init::Ones));
        out.push(t(format!("blk.{i}.ssm_out.weight"), vec![inner, embd], uni(inner)));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// writing

struct GgufWriter<W: Write> {
    out: W,
    pos: usize,
}

const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_INT32: u32 = 5;
const GGUF_TYPE_FLOAT32: u32 = 6;
const GGUF_TYPE_BOOL: u32 = 7;
const GGUF_TYPE_STRING: u32 = 8;
const GGUF_TYPE_ARRAY: u32 = 9;

impl<W: Write> GgufWriter<W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.pos += b.len();
        self.out.write_all(b)
    }
    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn string(&mut self, s: &str) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }
    fn pad(&mut self) -> io::Result<()> {
        let n = align(self.pos) - self.pos;
        self.bytes(&[0u8; ALIGNMENT][..n])
    }
    fn value(&mut self, v: &Value) -> io::Result<()> {
        match v {
            Value::U32(x) => {
                self.u32(GGUF_TYPE_UINT32)?;
                self.u32(*x)
            }
            Value::F32(x) => {
                self.u32(GGUF_TYPE_FLOAT32)?;
                self.bytes(&x.to_le_bytes())
            }
            Value::Bool(x) => {
                self.u32(GGUF_TYPE_BOOL)?;
                self.bytes(&[u8::from(*x)])
            }
            Value::Str(s) => {
                self.u32(GGUF_TYPE_STRING)?;
                self.string(s)
            }
            Value::StrArray(items) => {
                self.u32(GGUF_TYPE_ARRAY)?;
                self.u32(GGUF_TYPE_STRING)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|s| self.string(s))
            }
            Value::I32Array(items) => {
                self.u32(GGUF_TYPE_ARRAY)?;
                self.u32(GGUF_TYPE_INT32)?;
                self.u64(items.len() as u64)?;
                items.iter().try_for_each(|x| self.bytes(&x.to_le_bytes()))
            }
        }
    }
}

/// xorshift64* seeded through splitmix64 (so any seed, 0 included, gives a good state).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-a, a)`.
    fn uniform(&mut self, a: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        (unit * 2.0 - 1.0) * a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_matches_gpt2() {
        let m = byte_to_unicode();
        assert_eq!(m[usize::from(b' ')], 'Ġ');
        assert_eq!(m[usize::from(b'\n')], 'Ċ');
        assert_eq!(m[usize::from(b'a')], 'a');
        let unique: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn vocab_has_requested_size_unique_tokens_and_merges() {
        for size in [260, 300, 1000, 1500] {
            let v = build_vocab(size);
            assert_eq!(v.tokens.len(), size);
            assert_eq!(v.types.len(), size);
            assert_eq!(v.output_masked.len(), size);
            let unique: std::collections::HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(unique.len(), size);
            assert!(!v.merges.is_empty());
            assert_eq!(v.merges[0], "Ġ t");
            for m in &v.merges {
                let (a, b) = m.split_once(' ').expect("merge has a space");
                assert!(v.tokens.contains(&format!("{a}{b}")), "{m}");
            }
        }
    }

    #[test]
    fn file_is_deterministic_aligned_and_small() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = tiny_llama_in(dir.path())?;
        let b = dir.path().join("b.gguf");
        write_tiny_llama(&b, &TinyModelSpec::default())?;
        let (a, b) = (std::fs::read(a)?, std::fs::read(b)?);
        assert_eq!(a, b);
        assert_eq!(&a[..4], b"GGUF");
        assert_eq!(a.len() % ALIGNMENT, 0);
        assert!(a.len() < 1 << 20, "{} bytes", a.len());
        let c = dir.path().join("c.gguf");
        write_tiny_llama(&c, &TinyModelSpec { seed: 7, ..TinyModelSpec::default() })?;
        assert_ne!(a, std::fs::read(c)?);
        Ok(())
    }

    #[test]
    fn rejects_bad_specs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.gguf");
        for spec in [
            TinyModelSpec { vocab: 100, ..TinyModelSpec::default() },
            TinyModelSpec { heads: 3, ..TinyModelSpec::default() },
            TinyModelSpec { layers: 0, ..TinyModelSpec::default() },
        ] {
            let err = write_tiny_llama(&p, &spec).expect_err("should fail");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
