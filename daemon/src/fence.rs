//! Fencing: the highest leader fence ([`rbee_bus::LeaderLease::fence`]) a hive or worker has seen, in
//! a hello or an order. An order that carries a lower fence comes from a queen that lost its lease
//! (paused, or cut off and back): it is refused with `fenced`, so two queens never both place work
//! here. Orders without a fence (a queen running without a lease, a person's CLI) are taken.

use std::sync::atomic::{AtomicU64, Ordering};

use rbee_bus::{ErrorCode, WireError};

/// The highest fence seen by this process.
#[derive(Debug, Default)]
pub struct Fence {
    highest: AtomicU64,
}

impl Fence {
    /// Raises the fence to `fence` (from a hello); never lowers it.
    pub fn raise(&self, fence: u64) {
        let before = self.highest.fetch_max(fence, Ordering::SeqCst);
        if fence > before {
            tracing::info!(fence, before, "queen leader fence raised");
        }
    }

    /// The highest fence seen; 0 before any.
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }

    /// Takes an order carrying `fence`: refused when it is below the highest seen; raises the fence
    /// otherwise. `what` names the order in the refusal.
    pub fn admit(&self, fence: Option<u64>, what: &str) -> Result<(), WireError> {
        let Some(fence) = fence else { return Ok(()) };
        let before = self.highest.fetch_max(fence, Ordering::SeqCst);
        if fence < before {
            tracing::warn!(fence, current = before, what, "order from a fenced queen refused");
            return Err(WireError::new(
                ErrorCode::Fenced,
                format!("{what} refused: it comes from queen fence {fence}, but fence {before} leads now"),
            ));
        }
        if fence > before {
            tracing::info!(fence, before, "queen leader fence raised");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_below_the_highest_fence_is_refused_and_none_is_always_taken() {
        let fence = Fence::default();
        assert!(fence.admit(Some(5), "spawn").is_ok());
        fence.raise(9);
        fence.raise(7);
        assert_eq!(fence.highest(), 9, "never lowered");
        let refused = fence.admit(Some(5), "assignment").expect_err("fenced");
        assert_eq!(refused.code(), ErrorCode::Fenced);
        assert!(refused.error.message.contains("fence 9"), "{}", refused.error.message);
        assert!(fence.admit(Some(9), "stop").is_ok());
        assert!(fence.admit(None, "stop").is_ok());
        assert!(fence.admit(Some(12), "stop").is_ok());
        assert!(fence.admit(Some(9), "stop").is_err(), "the later order raised it");
    }
}
