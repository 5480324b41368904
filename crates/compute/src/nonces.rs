//! The provider's request window: a request is accepted only within [`REQUEST_WINDOW_MS`] of
//! the provider's clock, not before the provider started (the nonces accepted before a restart
//! are not kept, so no request from before it may run), and each `(caller, nonce)` only once,
//! so a provider runs a signed request at most once, restarts included.
//!
//! **Bounds:** one entry per request accepted in the last window (requests are themselves
//! bounded by the caller slots); expired entries are dropped oldest first, `O(log n)` each.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use protocol::NodeId;

use crate::RequestError;

/// How far a request's time may be from the provider's clock, ms.
pub const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;

type Key = (NodeId, [u8; 16]);

/// Nonces of requests this provider accepted, remembered for the request window: a request is
/// run at most once.
#[derive(Debug, Default)]
pub struct Nonces {
    seen: HashMap<Key, u64>,
    /// The same entries, by the time they were issued: expired ones are dropped from the front.
    by_time: BTreeSet<(u64, Key)>,
    /// Requests issued before this (the provider's start) are refused.
    floor_ms: u64,
}

impl Nonces {
    /// The window of a provider that started at `start_ms`: requests issued before its start
    /// are refused ([`RequestError::BeforeStart`]), since the nonces it accepted before a
    /// restart are gone.
    pub fn since(start_ms: u64) -> Nonces {
        Nonces {
            floor_ms: start_ms,
            ..Nonces::default()
        }
    }

    /// Accepts a request (`issued_ms`, `nonce` from `caller`) once, if it is within the window
    /// around `now_ms` and not from before this provider started; says why not
    /// ([`RequestError::Stale`], [`RequestError::BeforeStart`], [`RequestError::Replayed`]).
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
        if issued_ms < self.floor_ms {
            return Err(RequestError::BeforeStart {
                early_ms: self.floor_ms - issued_ms,
            });
        }
        // Entries issued more than a window ago can no longer be replayed (they would be stale).
        while let Some(&(issued, key)) = self.by_time.first() {
            if issued.saturating_add(REQUEST_WINDOW_MS) >= now_ms {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&key);
        }
        match self.seen.entry((caller, nonce)) {
            Entry::Occupied(_) => Err(RequestError::Replayed),
            Entry::Vacant(v) => {
                v.insert(issued_ms);
                self.by_time.insert((issued_ms, (caller, nonce)));
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
        assert_eq!(n.len(), 2, "only the two fresh ones are left");
        assert_eq!(n.by_time.len(), 2);
    }

    #[test]
    fn a_request_from_before_a_restart_is_refused_after_it() {
        let caller = SecretKey::from_seed(&[1; 32]).node_id();
        let before = 10 * REQUEST_WINDOW_MS;
        let mut first_run = Nonces::since(before - 60_000);
        first_run
            .accept(caller, [5; 16], before, before)
            .expect("fresh");
        // The provider restarts a second later: its memory of nonces is gone, and the same
        // request, still inside the window, must not run again.
        let restart = before + 1000;
        let mut second_run = Nonces::since(restart);
        let err = second_run
            .accept(caller, [5; 16], before, restart + 10)
            .expect_err("a request from before the restart");
        assert!(err.to_string().contains("before"), "{err}");
        second_run
            .accept(caller, [6; 16], restart + 5, restart + 10)
            .expect("a request made after the restart");
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
