//! Prompt fingerprints: how a worker says which prompt prefixes its slots hold, and how the queen
//! matches a new prompt against them, without either side tokenizing for the other.
//!
//! A chat's fingerprints are a chain over its messages: `f[i]` hashes `f[i-1]`, then the role and the
//! content of message `i`, so `f[i]` stands for the whole conversation up to message `i`. A plain text
//! prompt is chained the same way over blocks of [`TEXT_BLOCK`] bytes. After a chat job a worker adds one
//! more link, the conversation with its own reply as an `assistant` message: the next turn a chat
//! client sends starts with exactly that. A prompt whose `k`-th fingerprint is in a worker's set shares
//! at least its first `k` messages (or blocks) with something that worker holds.
//!
//! The hash is 64-bit FNV-1a over length-prefixed fields, cut to 53 bits so that the numbers survive
//! JSON readers that hold them as doubles. It is a routing hint, not a proof: a collision only costs a
//! placement that finds less to reuse than hoped.

use crate::messages::job::{ChatMessage, Prompt};

/// Bytes of text per fingerprint of a plain text prompt.
pub const TEXT_BLOCK: usize = 256;
/// Most fingerprints a worker advertises in one heartbeat.
pub const MAX_ADVERTISED: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const MASK_53: u64 = (1 << 53) - 1;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The link after `previous` for one field list (each field length-prefixed, so fields cannot run
/// into each other).
fn link(previous: u64, fields: &[&[u8]]) -> u64 {
    let mut hash = fnv(FNV_OFFSET, &previous.to_le_bytes());
    for field in fields {
        hash = fnv(hash, &(field.len() as u64).to_le_bytes());
        hash = fnv(hash, field);
    }
    hash & MASK_53
}

/// The link for one more chat message after `previous` (0 before the first).
pub fn chat_link(previous: u64, message: &ChatMessage) -> u64 {
    if message.tool_calls.is_empty() && message.tool_call_id.is_none() && message.name.is_none() {
        return link(previous, &[b"chat", message.role.as_bytes(), message.content.as_bytes()]);
    }
    let extra =
        serde_json::to_vec(&(&message.tool_calls, &message.tool_call_id, &message.name)).unwrap_or_default();
    link(previous, &[b"chat+tools", message.role.as_bytes(), message.content.as_bytes(), &extra])
}

/// The fingerprints of a prompt, one per message (chat) or per [`TEXT_BLOCK`] bytes (text).
pub fn fingerprints(prompt: &Prompt) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last = 0;
    match prompt {
        Prompt::Chat { messages, tools } => {
            // Tools are rendered before the conversation (in the system turn): they seed the chain.
            if !tools.is_empty() {
                last = link(0, &[b"tools", &serde_json::to_vec(tools).unwrap_or_default()]);
            }
            for message in messages {
                last = chat_link(last, message);
                out.push(last);
            }
        }
        Prompt::Text { text } => {
            for block in text.as_bytes().chunks(TEXT_BLOCK) {
                last = link(last, &[b"text", block]);
                out.push(last);
            }
        }
    }
    out
}

/// How many leading fingerprints of `prompt` (from [`fingerprints`]) a sorted set `held` contains: the
/// largest `k` with `prompt[k-1]` in `held` (a chain, so that one says the first `k` all match).
pub fn held_prefix(prompt: &[u64], held: &[u64]) -> usize {
    if held.is_empty() {
        return 0;
    }
    prompt.iter().rposition(|f| held.binary_search(f).is_ok()).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(messages: &[(&str, &str)]) -> Prompt {
        Prompt::chat(messages.iter().map(|(role, content)| ChatMessage::new(*role, *content)).collect())
    }

    #[test]
    fn a_later_turn_starts_with_the_earlier_chain_plus_the_reply() {
        let turn1 = fingerprints(&chat(&[("system", "be brief"), ("user", "capital of France?")]));
        let reply = ChatMessage::new("assistant", "Paris.");
        let held_after_turn1 = chat_link(*turn1.last().expect("two links"), &reply);
        let turn2 = fingerprints(&chat(&[
            ("system", "be brief"),
            ("user", "capital of France?"),
            ("assistant", "Paris."),
            ("user", "and Italy?"),
        ]));
        assert_eq!(&turn2[..2], &turn1[..]);
        assert_eq!(turn2[2], held_after_turn1);
        let mut held = vec![turn1[0], turn1[1], held_after_turn1];
        held.sort_unstable();
        assert_eq!(held_prefix(&turn2, &held), 3);
        // Another conversation shares nothing; fields cannot run into each other.
        let other = fingerprints(&chat(&[("system", "be brie"), ("fuser", "capital of France?")]));
        assert_eq!(held_prefix(&other, &held), 0);
        assert!(turn2.iter().all(|f| *f <= MASK_53));
    }

    #[test]
    fn text_prompts_chain_over_blocks() {
        let long = "x".repeat(TEXT_BLOCK * 2 + 10);
        let a = fingerprints(&Prompt::Text { text: long.clone() });
        let b = fingerprints(&Prompt::Text { text: format!("{long}more") });
        assert_eq!(a.len(), 3);
        assert_eq!(&a[..2], &b[..2]);
        assert_ne!(a[2], b[2]);
        let mut held = a.clone();
        held.sort_unstable();
        assert_eq!(held_prefix(&b, &held), 2);
        assert_eq!(held_prefix(&b, &[]), 0);
    }
}
