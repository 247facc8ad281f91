//! A small GGUF header reader (GGUF v2 and v3, little-endian), with no dependencies.
//!
//! It reads the header, every metadata key/value and every tensor info, and stops before the tensor
//! data. Every length and count is checked against the bytes left in the file before it is used,
//! values that are not needed are skipped without being buffered, so a corrupt or hostile file yields
//! a [`GgufError`], never a panic or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Longest metadata key accepted (the GGUF spec limit).
const MAX_KEY_LEN: u64 = 65_535;
/// Longest string value that is kept in memory (names, architecture); longer ones are refused.
const MAX_KEPT_STRING_LEN: u64 = 1 << 20;
/// Most dimensions a tensor may have (ggml uses 4).
const MAX_DIMS: u32 = 8;
/// Deepest nesting of arrays inside arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;

/// What the header of a GGUF model file says about the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufInfo {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// `general.architecture`, as in `llama`.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `{arch}.context_length`: the context the model was trained for, in tokens.
    pub context_length: Option<u64>,
    /// `{arch}.block_count`: the number of transformer layers.
    pub block_count: Option<u64>,
    /// `{arch}.embedding_length`: the hidden size.
    pub embedding_length: Option<u64>,
    /// Sum of the element counts of all tensors: the real parameter count.
    pub parameter_count: u64,
    /// Quantization name from `general.file_type` (`Q4_1`, `Q4_K_M`, `F16`...), `unknown(n)` for a
    /// code this reader does not know, `unknown` when the key is absent.
    pub quantization: String,
    /// `general.file_type`, raw.
    pub file_type: Option<u32>,
    /// `general.size_label` (as in `135M`), if present.
    pub size_label: Option<String>,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Number of metadata key/values.
    pub metadata_count: u64,
    /// Size of the whole file in bytes.
    pub file_size: u64,
    /// Whether `tokenizer.chat_template` is present.
    pub has_chat_template: bool,
}

/// Why a file could not be read as GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file does not start with the GGUF magic. The message does not echo the bytes found (an
    /// import request must not learn the first bytes of files it cannot read otherwise).
    #[error("not a GGUF file (no \"GGUF\" magic)")]
    NotGguf {
        /// The first bytes found.
        magic: Vec<u8>,
    },
    /// A GGUF version this reader does not handle (1, or big-endian files).
    #[error("unsupported GGUF version {version} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion {
        /// The version field as read.
        version: u32,
    },
    /// The file ends where more bytes are needed.
    #[error("GGUF file truncated at byte {offset}: {what} needs {needed} more bytes, {available} left")]
    Truncated {
        /// Where reading stopped.
        offset: u64,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A field holds a value no valid file has.
    #[error("corrupt GGUF file at byte {offset}: {reason}")]
    Corrupt {
        /// Where the bad field is.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A header value that no real model has (a layer count, width or context far too large).
    #[error("GGUF header value {key} = {value} is absurd (at most {max})")]
    Absurd {
        /// The key.
        key: String,
        /// Its value.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// `general.architecture` is absent, so the model cannot be identified.
    #[error("GGUF file has no general.architecture")]
    MissingArchitecture,
}

/// Checks the first bytes of what should be a GGUF file (a download in progress): the magic, and
/// with 8 bytes a version this reader handles. Says what is wrong without echoing the bytes.
pub fn check_head(head: &[u8]) -> Result<(), String> {
    if head.len() < GGUF_MAGIC.len() || head[..4] != GGUF_MAGIC {
        return Err("not a GGUF file (no GGUF magic)".to_owned());
    }
    if let Some(version) = head.get(4..8).and_then(|v| <[u8; 4]>::try_from(v).ok()).map(u32::from_le_bytes) {
        if !matches!(version, 2 | 3) {
            return Err(format!("unsupported GGUF version {version} (supported: 2 and 3, little-endian)"));
        }
    }
    Ok(())
}

/// Reads the header of the GGUF file at `path`.
pub fn read_gguf_info(path: &Path) -> Result<GgufInfo, GgufError> {
    let io_error = |source| GgufError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_error)?;
    let file_size = file.metadata().map_err(io_error)?.len();
    parse_gguf(BufReader::with_capacity(64 * 1024, file), file_size).map_err(|error| match error {
        GgufError::Io { source, .. } => GgufError::Io { path: path.to_path_buf(), source },
        other => other,
    })
}

/// Reads a GGUF header from `reader`, which holds a file of `file_size` bytes from its start.
pub fn parse_gguf(reader: impl Read, file_size: u64) -> Result<GgufInfo, GgufError> {
    let mut r = Reader { inner: reader, pos: 0, len: file_size };
    let magic = r.bytes::<4>("magic").map_err(|error| match error {
        GgufError::Truncated { .. } => GgufError::NotGguf { magic: Vec::new() },
        other => other,
    })?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::NotGguf { magic: magic.to_vec() });
    }
    let version = r.u32("version")?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = r.u64("tensor count")?;
    let metadata_count = r.u64("metadata count")?;
    // Smallest possible key/value: key length (8), value type (4), one value byte.
    r.check_count(metadata_count, 13, "metadata count")?;

    let mut strings: HashMap<&'static str, String> = HashMap::new();
    let mut numbers: HashMap<String, u64> = HashMap::new();
    let mut has_chat_template = false;
    for _ in 0..metadata_count {
        let key = r.string(MAX_KEY_LEN, "metadata key")?;
        let value_type = r.u32("metadata value type")?;
        let kept_string = ["general.architecture", "general.name", "general.size_label"]
            .into_iter()
            .find(|wanted| *wanted == key);
        let value = r.value(value_type, kept_string.is_some(), 0)?;
        if key == "tokenizer.chat_template" {
            has_chat_template = true;
        }
        match (kept_string, value) {
            (Some(wanted), Value::Str(text)) => {
                strings.insert(wanted, text);
            }
            (None, Value::Number(number)) => {
                let wanted_suffix = [".context_length", ".block_count", ".embedding_length"]
                    .iter()
                    .any(|suffix| key.ends_with(suffix));
                if wanted_suffix || key == "general.file_type" {
                    numbers.insert(key, number);
                }
            }
            _ => {}
        }
    }

    // Smallest possible tensor info: name length (8), dimension count (4), type (4), offset (8).
    r.check_count(tensor_count, 24, "tensor count")?;
    let mut parameter_count: u64 = 0;
    for _ in 0..tensor_count {
        r.skip_string("tensor name")?;
        let dims_offset = r.pos;
        let n_dims = r.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(r.corrupt(dims_offset, format!("tensor has {n_dims} dimensions")));
        }
        let mut elements: u64 = 1;
        for _ in 0..n_dims {
            let dim = r.u64("tensor dimension")?;
            elements = elements.checked_mul(dim).ok_or_else(|| r.corrupt(dims_offset, "tensor too large"))?;
        }
        r.u32("tensor type")?;
        r.u64("tensor offset")?;
        parameter_count = parameter_count
            .checked_add(elements)
            .ok_or_else(|| r.corrupt(dims_offset, "too many parameters"))?;
    }

    let architecture = strings.remove("general.architecture").ok_or(GgufError::MissingArchitecture)?;
    let arch_number = |suffix: &str| numbers.get(&format!("{architecture}.{suffix}")).copied();
    let file_type = numbers.get("general.file_type").and_then(|&n| u32::try_from(n).ok());
    // Untrusted numbers that later size memory: refuse absurd ones here, with the key named.
    use rbee_bus::sizing::{MAX_CONTEXT, MAX_EMBEDDING, MAX_LAYERS};
    for (suffix, max) in
        [("block_count", MAX_LAYERS), ("embedding_length", MAX_EMBEDDING), ("context_length", MAX_CONTEXT)]
    {
        if let Some(value) = arch_number(suffix).filter(|&v| v > max) {
            return Err(GgufError::Absurd { key: format!("{architecture}.{suffix}"), value, max });
        }
    }
    Ok(GgufInfo {
        version,
        context_length: arch_number("context_length"),
        block_count: arch_number("block_count"),
        embedding_length: arch_number("embedding_length"),
        architecture,
        name: strings.remove("general.name"),
        parameter_count,
        quantization: file_type.map_or_else(|| "unknown".to_owned(), quantization_name),
        file_type,
        size_label: strings.remove("general.size_label"),
        tensor_count,
        metadata_count,
        file_size,
        has_chat_template,
    })
}

/// The llama.cpp name of a `general.file_type` (`llama_ftype`) code.
pub fn quantization_name(file_type: u32) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_1_SOME_F16",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("unknown({other})"),
    };
    name.to_owned()
}

/// A metadata value, as far as this reader cares.
enum Value {
    /// A non-negative integer.
    Number(u64),
    /// A string that was asked for.
    Str(String),
    /// Anything else, skipped.
    Other,
}

/// A reader that knows its position and how many bytes the file has left.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> GgufError {
        GgufError::Corrupt { offset, reason: reason.into() }
    }

    fn need(&self, needed: u64, what: &'static str) -> Result<(), GgufError> {
        let available = self.remaining();
        if needed > available {
            return Err(GgufError::Truncated { offset: self.pos, what, needed, available });
        }
        Ok(())
    }

    /// Refuses a count of items that could not fit in the rest of the file.
    fn check_count(&self, count: u64, min_item_size: u64, what: &'static str) -> Result<(), GgufError> {
        if count > self.remaining() / min_item_size {
            return Err(self.corrupt(
                self.pos,
                format!("{what} {count} cannot fit in the {} bytes left", self.remaining()),
            ));
        }
        Ok(())
    }

    fn read_into(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), GgufError> {
        let needed = buf.len() as u64;
        self.need(needed, what)?;
        self.inner.read_exact(buf).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => {
                GgufError::Truncated { offset: self.pos, what, needed, available: 0 }
            }
            _ => GgufError::Io { path: PathBuf::new(), source },
        })?;
        self.pos += needed;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.read_into(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// Skips `n` bytes by streaming them away, without buffering them.
    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), GgufError> {
        self.need(n, what)?;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(|source| GgufError::Io { path: PathBuf::new(), source })?;
        if copied != n {
            return Err(GgufError::Truncated {
                offset: self.pos + copied,
                what,
                needed: n - copied,
                available: 0,
            });
        }
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, max_len: u64, what: &'static str) -> Result<String, GgufError> {
        let offset = self.pos;
        let len = self.u64(what)?;
        self.need(len, what)?;
        if len > max_len {
            return Err(self.corrupt(offset, format!("{what} is {len} bytes long, the limit is {max_len}")));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_into(&mut buf, what)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip_string(&mut self, what: &'static str) -> Result<(), GgufError> {
        let len = self.u64(what)?;
        self.skip(len, what)
    }

    /// Reads one value of GGUF type `value_type`; a string is kept only when `keep_string`.
    fn value(&mut self, value_type: u32, keep_string: bool, depth: u32) -> Result<Value, GgufError> {
        let offset = self.pos;
        let value = match value_type {
            0 => Value::Number(u64::from(self.bytes::<1>("u8 value")?[0])),
            1 => Self::signed(i64::from(i8::from_le_bytes(self.bytes::<1>("i8 value")?))),
            2 => Value::Number(u64::from(u16::from_le_bytes(self.bytes::<2>("u16 value")?))),
            3 => Self::signed(i64::from(i16::from_le_bytes(self.bytes::<2>("i16 value")?))),
            4 => Value::Number(u64::from(self.u32("u32 value")?)),
            5 => Self::signed(i64::from(i32::from_le_bytes(self.bytes::<4>("i32 value")?))),
            10 => Value::Number(self.u64("u64 value")?),
            11 => Self::signed(i64::from_le_bytes(self.bytes::<8>("i64 value")?)),
            6 | 7 | 12 => {
                self.skip(scalar_size(value_type).unwrap_or(0), "scalar value")?;
                Value::Other
            }
            8 if keep_string => Value::Str(self.string(MAX_KEPT_STRING_LEN, "string value")?),
            8 => {
                self.skip_string("string value")?;
                Value::Other
            }
            9 => {
                self.skip_array(depth)?;
                Value::Other
            }
            other => return Err(self.corrupt(offset, format!("unknown metadata value type {other}"))),
        };
        Ok(value)
    }

    fn signed(value: i64) -> Value {
        u64::try_from(value).map_or(Value::Other, Value::Number)
    }

    /// Skips an array: fixed-size elements in one stride, strings and nested arrays one by one.
    fn skip_array(&mut self, depth: u32) -> Result<(), GgufError> {
        let offset = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.corrupt(offset, "arrays nested too deep"));
        }
        let element_type = self.u32("array element type")?;
        let count = self.u64("array length")?;
        if let Some(size) = scalar_size(element_type) {
            let total = count.checked_mul(size).ok_or_else(|| self.corrupt(offset, "array too large"))?;
            return self.skip(total, "array elements");
        }
        match element_type {
            8 => {
                self.check_count(count, 8, "string array length")?;
                for _ in 0..count {
                    self.skip_string("array string")?;
                }
            }
            9 => {
                self.check_count(count, 12, "nested array length")?;
                for _ in 0..count {
                    self.skip_array(depth + 1)?;
                }
            }
            other => return Err(self.corrupt(offset, format!("unknown array element type {other}"))),
        }
        Ok(())
    }
}

/// Size in bytes of a fixed-size GGUF value type.
fn scalar_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes small GGUF files in memory.
    struct Builder {
        version: u32,
        kv: Vec<u8>,
        kv_count: u64,
        tensors: Vec<u8>,
        tensor_count: u64,
    }

    fn put_str(out: &mut Vec<u8>, text: &str) {
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
    }

    impl Builder {
        fn new() -> Self {
            Self { version: 3, kv: Vec::new(), kv_count: 0, tensors: Vec::new(), tensor_count: 0 }
        }

        fn raw(mut self, key: &str, value_type: u32, value: &[u8]) -> Self {
            put_str(&mut self.kv, key);
            self.kv.extend(value_type.to_le_bytes());
            self.kv.extend(value);
            self.kv_count += 1;
            self
        }

        fn string(self, key: &str, text: &str) -> Self {
            let mut value = Vec::new();
            put_str(&mut value, text);
            self.raw(key, 8, &value)
        }

        fn u32(self, key: &str, number: u32) -> Self {
            self.raw(key, 4, &number.to_le_bytes())
        }

        fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
            put_str(&mut self.tensors, name);
            self.tensors.extend((dims.len() as u32).to_le_bytes());
            for dim in dims {
                self.tensors.extend(dim.to_le_bytes());
            }
            self.tensors.extend(2u32.to_le_bytes());
            self.tensors.extend(0u64.to_le_bytes());
            self.tensor_count += 1;
            self
        }

        fn build(&self) -> Vec<u8> {
            let mut out = GGUF_MAGIC.to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend(self.tensor_count.to_le_bytes());
            out.extend(self.kv_count.to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.tensors);
            out
        }
    }

    fn sample() -> Builder {
        let mut tokens = 8u32.to_le_bytes().to_vec();
        tokens.extend(3u64.to_le_bytes());
        for token in ["<s>", "a", "bc"] {
            put_str(&mut tokens, token);
        }
        let mut scores = 6u32.to_le_bytes().to_vec();
        scores.extend(3u64.to_le_bytes());
        scores.extend([0u8; 12]);
        let mut nested = 9u32.to_le_bytes().to_vec();
        nested.extend(1u64.to_le_bytes());
        nested.extend(0u32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        nested.extend([7u8, 9]);
        Builder::new()
            .string("general.architecture", "llama")
            .string("general.name", "Tiny Test")
            .raw("general.some_flag", 7, &[1])
            .raw("general.some_float", 12, &1.5f64.to_le_bytes())
            .u32("llama.context_length", 8192)
            .raw("llama.block_count", 10, &30u64.to_le_bytes())
            .raw("llama.embedding_length", 5, &576i32.to_le_bytes())
            .u32("general.file_type", 3)
            .string("general.size_label", "135M")
            .raw("tokenizer.ggml.tokens", 9, &tokens)
            .raw("tokenizer.ggml.scores", 9, &scores)
            .raw("test.nested", 9, &nested)
            .string("tokenizer.chat_template", "{{ messages }}")
            .tensor("token_embd.weight", &[4, 8])
            .tensor("output_norm.weight", &[8])
    }

    fn parse(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
        parse_gguf(bytes, bytes.len() as u64)
    }

    #[test]
    fn reads_metadata_and_counts_parameters() {
        let bytes = sample().build();
        let info = parse(&bytes).expect("valid sample");
        assert_eq!(info.version, 3);
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.name.as_deref(), Some("Tiny Test"));
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.block_count, Some(30));
        assert_eq!(info.embedding_length, Some(576));
        assert_eq!(info.quantization, "Q4_1");
        assert_eq!(info.size_label.as_deref(), Some("135M"));
        assert_eq!(info.parameter_count, 40);
        assert_eq!(info.tensor_count, 2);
        assert_eq!(info.metadata_count, 13);
        assert_eq!(info.file_size, bytes.len() as u64);
        assert!(info.has_chat_template);
    }

    #[test]
    fn version_2_is_read_and_unknown_file_types_are_named() {
        let mut builder = Builder::new().string("general.architecture", "phi3").u32("general.file_type", 99);
        builder.version = 2;
        let info = parse(&builder.build()).expect("valid v2");
        assert_eq!((info.version, info.quantization.as_str()), (2, "unknown(99)"));
        assert_eq!((info.context_length, info.has_chat_template), (None, false));
    }

    #[test]
    fn absurd_shapes_are_refused_with_the_key_named() {
        for (key, value) in [
            ("llama.embedding_length", u64::MAX),
            ("llama.block_count", 1_000_001),
            ("llama.context_length", 10_000_001),
        ] {
            let builder =
                Builder::new().string("general.architecture", "llama").raw(key, 10, &value.to_le_bytes());
            match parse(&builder.build()) {
                Err(GgufError::Absurd { key: named, value: v, .. }) => {
                    assert_eq!((named.as_str(), v), (key, value))
                }
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
        let sane = Builder::new().string("general.architecture", "llama").raw(
            "llama.embedding_length",
            10,
            &1_000_000u64.to_le_bytes(),
        );
        assert!(parse(&sane.build()).is_ok());
    }

    #[test]
    fn heads_are_checked_from_the_first_bytes() {
        assert!(check_head(b"GGUF\x03\0\0\0").is_ok());
        assert!(check_head(b"GGUF").is_ok());
        assert!(check_head(b"GGU").is_err());
        assert!(check_head(b"<html>not").is_err());
        assert!(check_head(b"GGUF\x01\0\0\0").is_err());
    }

    #[test]
    fn refuses_other_files_and_versions() {
        assert!(matches!(parse(b"PK\x03\x04 not a model"), Err(GgufError::NotGguf { .. })));
        assert!(matches!(parse(b"GG"), Err(GgufError::NotGguf { .. })));
        let mut builder = Builder::new();
        builder.version = 1;
        assert!(matches!(parse(&builder.build()), Err(GgufError::UnsupportedVersion { version: 1 })));
        let no_arch = Builder::new().string("general.name", "x").build();
        assert!(matches!(parse(&no_arch), Err(GgufError::MissingArchitecture)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().build();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }

    #[test]
    fn damaged_bytes_never_panic() {
        let bytes = sample().build();
        for position in 0..bytes.len() {
            for value in [0x00, 0x7f, 0xff] {
                let mut damaged = bytes.clone();
                damaged[position] = value;
                let _ = parse(&damaged);
            }
        }
    }

    #[test]
    fn absurd_counts_and_lengths_are_refused() {
        let mut huge_kv = sample().build();
        huge_kv[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge_kv), Err(GgufError::Corrupt { .. })));

        let mut huge_tensors = sample().build();
        huge_tensors[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(parse(&huge_tensors).is_err());

        let huge_string = Builder::new().raw("general.architecture", 8, &u64::MAX.to_le_bytes()).build();
        assert!(matches!(parse(&huge_string), Err(GgufError::Truncated { .. })));

        let mut huge_byte_array = 0u32.to_le_bytes().to_vec();
        huge_byte_array.extend(u64::MAX.to_le_bytes());
        let bytes = Builder::new().raw("x", 9, &huge_byte_array).build();
        assert!(matches!(parse(&bytes), Err(GgufError::Truncated { .. })));

        let mut overflowing_array = 4u32.to_le_bytes().to_vec();
        overflowing_array.extend(u64::MAX.to_le_bytes());
        let bytes = Builder::new().raw("x", 9, &overflowing_array).build();
        assert!(matches!(parse(&bytes), Err(GgufError::Corrupt { .. })));

        let mut many_strings = 8u32.to_le_bytes().to_vec();
        many_strings.extend((u64::MAX / 2).to_le_bytes());
        let bytes = Builder::new().raw("x", 9, &many_strings).build();
        assert!(matches!(parse(&bytes), Err(GgufError::Corrupt { .. })));

        let overflow = sample().tensor("big", &[u64::MAX, 2]).build();
        assert!(matches!(parse(&overflow), Err(GgufError::Corrupt { .. })));

        let many_dims = sample().tensor("wide", &[1; 9]).build();
        assert!(matches!(parse(&many_dims), Err(GgufError::Corrupt { .. })));
    }

    #[test]
    fn reads_the_real_model_when_present() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            eprintln!("skipping: {} not present", path.display());
            return;
        }
        let info = read_gguf_info(&path).expect("real model parses");
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.quantization, "Q4_1");
        assert_eq!(info.context_length, Some(8192));
        assert!((130_000_000..140_000_000).contains(&info.parameter_count), "{}", info.parameter_count);
        assert!(info.has_chat_template);
        assert_eq!(info.file_size, std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
    }
}
