//! The provider's request window: a request is accepted only within [`REQUEST_WINDOW_MS`] of
//! the provider's clock, and each `(caller, nonce)` only once, so a provider runs a signed
//! request at most once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use protocol::NodeId;

use crate::RequestError;

/// How far a request's time may be from the provider's clock, ms.
pub const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Remembered nonces beyond which the ones that can only be stale are forgotten.
const PRUNE_AT: usize = 1024;

/// Nonces of requests this provider accepted, remembered for the request window: a request is
/// run at most once.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<(NodeId, [u8; 16]), u64>,
}

impl Nonces {
    /// Accepts a request (`issued_ms`, `nonce` from `caller`) once, if it is within the window
    /// around `now_ms`; says why not ([`RequestError::Stale`], [`RequestError::Replayed`]).
    pub fn accept(
        &mut self,
        caller: NodeId,
        nonce: [u8; 16],
        issued_ms: u64,
        now_ms: u64,
    ) -> Result<(), RequestError> {
        if issued_ms.saturating_add(REQUEST_WINDOW_MS) < now_ms
            || issued_ms > now_ms.saturating_add(REQUEST_WINDOW_MS)
        {
            return Err(RequestError::Stale {
                skew_s: now_ms.abs_diff(issued_ms) / 1000,
                window_s: REQUEST_WINDOW_MS / 1000,
            });
        }
        // Entries older than the window can no longer be replayed (they would be stale).
        if self.seen.len() >= PRUNE_AT {
            self.seen
                .retain(|_, issued| issued.saturating_add(REQUEST_WINDOW_MS) >= now_ms);
        }
        match self.seen.entry((caller, nonce)) {
            Entry::Occupied(_) => Err(RequestError::Replayed),
            Entry::Vacant(v) => {
                v.insert(issued_ms);
                Ok(())
            }
        }
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::SecretKey;

    #[test]
    fn a_nonce_is_accepted_once_and_stale_requests_never() {
        let caller = SecretKey::from_seed(&[1; 32]).node_id();
        let mut n = Nonces::default();
        let now = 10 * REQUEST_WINDOW_MS;
        assert!(n.accept(caller, [1; 16], now, now).is_ok());
        assert!(
            n.accept(caller, [1; 16], now, now)
                .expect_err("a replay")
                .to_string()
                .contains("replayed")
        );
        assert!(
            n.accept(caller, [2; 16], now - REQUEST_WINDOW_MS - 1, now)
                .is_err()
        );
        assert!(
            n.accept(caller, [3; 16], now + REQUEST_WINDOW_MS + 1, now)
                .is_err()
        );
        // Old entries are forgotten once they can only be stale.
        for i in 0..2000u32 {
            let mut nonce = [0; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            n.accept(caller, nonce, now, now).expect("fresh");
        }
        let later = now + 2 * REQUEST_WINDOW_MS;
        n.accept(caller, [9; 16], later, later).expect("fresh");
        n.accept(caller, [8; 16], later, later).expect("fresh");
        assert!(n.seen.len() < 1100, "{}", n.seen.len());
    }

    #[test]
    fn a_stale_request_says_how_far_off_the_clock_it_was() {
        let caller = SecretKey::from_seed(&[1; 32]).node_id();
        let mut n = Nonces::default();
        let now = 10 * REQUEST_WINDOW_MS;
        let err = n
            .accept(caller, [1; 16], now - REQUEST_WINDOW_MS - 1000, now)
            .expect_err("stale");
        assert_eq!(
            err.to_string(),
            "the request was made 301 s from this provider's clock (at most 300 s allowed)"
        );
        assert!(
            n.accept(caller, [1; 16], now, now).is_ok(),
            "a refused request's nonce is not spent"
        );
        // Times at the ends of the range neither overflow nor pass.
        assert!(n.accept(caller, [2; 16], u64::MAX, now).is_err());
        assert!(n.accept(caller, [3; 16], 0, u64::MAX).is_err());
        assert!(n.accept(caller, [4; 16], u64::MAX, u64::MAX).is_ok());
    }

    #[test]
    fn each_caller_has_its_own_nonces() {
        let a = SecretKey::from_seed(&[1; 32]).node_id();
        let b = SecretKey::from_seed(&[2; 32]).node_id();
        let mut n = Nonces::default();
        assert!(n.accept(a, [1; 16], 0, 0).is_ok());
        assert!(n.accept(b, [1; 16], 0, 0).is_ok());
        assert_eq!(n.len(), 2);
    }
}
