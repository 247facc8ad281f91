//! How big a worker is: the slots and context per slot a worker gets when nobody says otherwise, and
//! the memory a worker of a model needs. The hive checks the fit with the model file's real shape;
//! the queen, which only sees model summaries, uses a typical KV cache size per token.

/// Concurrent jobs of a worker when the spawn request (or `rbee-worker --slots`) gives none.
pub const DEFAULT_SLOTS: u32 = 4;

/// Context tokens per slot when the spawn request (or `rbee-worker --ctx-per-slot`) gives none.
pub const DEFAULT_CTX_PER_SLOT: u32 = 2048;

/// KV cache bytes per token assumed when the model's shape is unknown: 32 KiB, a middle figure between
/// small grouped-query-attention models (~23 KiB per token) and 8B ones (~128 KiB).
pub const TYPICAL_KV_BYTES_PER_TOKEN: u64 = 32 * 1024;

/// The most layers a model's header may claim; more is refused as absurd (untrusted input).
pub const MAX_LAYERS: u64 = 1_000_000;
/// The widest embedding a model's header may claim.
pub const MAX_EMBEDDING: u64 = 1_000_000;
/// The longest trained context a model's header may claim, in tokens.
pub const MAX_CONTEXT: u64 = 10_000_000;

/// The shape of a model that decides its KV cache size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer blocks (GGUF `<arch>.block_count`).
    pub layers: u64,
    /// Embedding width (GGUF `<arch>.embedding_length`).
    pub embedding: u64,
}

impl KvShape {
    /// An 8B-class model (32 layers of width 4096), for a GGUF whose shape cannot be read.
    pub const LARGE: KvShape = KvShape { layers: 32, embedding: 4096 };

    /// A shape read from an untrusted header: refused (with why) when a value is 0 or absurd
    /// (over [`MAX_LAYERS`] or [`MAX_EMBEDDING`]).
    pub fn checked(layers: u64, embedding: u64) -> Result<KvShape, String> {
        if !(1..=MAX_LAYERS).contains(&layers) {
            return Err(format!("block_count {layers} is outside [1, {MAX_LAYERS}]"));
        }
        if !(1..=MAX_EMBEDDING).contains(&embedding) {
            return Err(format!("embedding_length {embedding} is outside [1, {MAX_EMBEDDING}]"));
        }
        Ok(KvShape { layers, embedding })
    }

    /// KV cache bytes per token: f16 K and V for every layer. Grouped-query attention is not taken
    /// into account, so this is an upper bound. Saturates rather than wraps.
    pub fn bytes_per_token(&self) -> u64 {
        self.layers.saturating_mul(self.embedding).saturating_mul(4)
    }
}

/// Bytes of memory a worker needs: the model file (weights are mapped or loaded whole) plus the KV
/// cache of `slots × ctx_per_slot` tokens at `kv_bytes_per_token`, and 10% on top for compute buffers.
pub fn worker_memory_bytes(file_bytes: u64, kv_bytes_per_token: u64, slots: u32, ctx_per_slot: u32) -> u64 {
    let tokens = u64::from(slots) * u64::from(ctx_per_slot);
    let kv = kv_bytes_per_token.saturating_mul(tokens);
    file_bytes.saturating_add(kv).saturating_mul(11) / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn kv_per_token_is_f16_k_and_v_for_every_layer() {
        assert_eq!(KvShape { layers: 30, embedding: 576 }.bytes_per_token(), 69_120);
        assert_eq!(KvShape::LARGE.bytes_per_token(), 512 * 1024);
    }

    #[test]
    fn memory_is_file_plus_kv_cache_plus_a_tenth() {
        // 100 MiB file, 1 KiB per token, 2 × 512 tokens: (100 MiB + 1 MiB) × 1.1.
        assert_eq!(worker_memory_bytes(100 * MIB, 1024, 2, 512), 101 * MIB * 11 / 10);
        // The defaults at the typical size: 8192 tokens × 32 KiB = 256 MiB of KV cache.
        let kv = TYPICAL_KV_BYTES_PER_TOKEN * u64::from(DEFAULT_SLOTS) * u64::from(DEFAULT_CTX_PER_SLOT);
        assert_eq!(kv, 256 * MIB);
        assert_eq!(
            worker_memory_bytes(0, TYPICAL_KV_BYTES_PER_TOKEN, DEFAULT_SLOTS, DEFAULT_CTX_PER_SLOT),
            256 * MIB * 11 / 10
        );
    }

    #[test]
    fn absurd_shapes_are_refused_and_huge_ones_saturate() {
        assert!(KvShape::checked(30, 576).is_ok());
        assert!(KvShape::checked(0, 576).is_err());
        assert!(KvShape::checked(MAX_LAYERS + 1, 576).is_err());
        assert!(KvShape::checked(30, MAX_EMBEDDING + 1).is_err());
        assert!(KvShape::checked(30, u64::MAX).is_err());
        // Within the bounds nothing overflows; beyond them (never built by `checked`) it saturates.
        let widest = KvShape::checked(MAX_LAYERS, MAX_EMBEDDING).map(|s| s.bytes_per_token());
        assert_eq!(widest, Ok(4 * MAX_LAYERS * MAX_EMBEDDING));
        assert_eq!(KvShape { layers: u64::MAX, embedding: u64::MAX }.bytes_per_token(), u64::MAX);
        assert_eq!(KvShape { layers: 1 << 62, embedding: 1 }.bytes_per_token(), u64::MAX);
    }

    #[test]
    fn huge_inputs_saturate_instead_of_wrapping() {
        assert_eq!(worker_memory_bytes(u64::MAX, u64::MAX, u32::MAX, u32::MAX), u64::MAX / 10);
    }
}
