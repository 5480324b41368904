//! Upload rate limits: token buckets, one for the node and one per peer, that blob streams
//! wait on before each write. The bucket is I/O-free (time is an input); [`Upload`] shares
//! them between the streams.
//!
//! A bucket lets a burst of [`TokenBucket::burst`] bytes go at once and then `rate` bytes a
//! second. A stream *reserves* the bytes it is about to send and sleeps until they are paid
//! for: reservations queue in order, so concurrent streams share the rate fairly (each waits
//! its turn), and nothing is polled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// A token bucket of bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Bytes that may go now; negative: reserved ahead (the debt is paid as time passes).
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes a second (at least 1), with a burst of `burst` bytes; starts full.
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// The burst: bytes that may go at once after a quiet spell.
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Reserves `bytes` and returns how long to wait before sending them.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

impl TokenBucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Whether the bucket is full again (forgetting it then loses nothing).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// Takes `n` tokens if the bucket holds them now; otherwise takes nothing.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Per-peer buckets not used for this long are forgotten (and start full again).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The node's upload limits, shared by every blob stream it serves.
#[derive(Debug, Default)]
pub struct Upload {
    total: Option<Mutex<TokenBucket>>,
    per_peer: Option<u64>,
    peers: Mutex<HashMap<PeerId, TokenBucket>>,
}

impl Upload {
    /// At most `total` bytes a second to all peers together, and `per_peer` to each (`None`:
    /// unlimited).
    pub fn new(total: Option<u64>, per_peer: Option<u64>) -> Upload {
        let now = Instant::now();
        Upload {
            total: total.map(|rate| Mutex::new(TokenBucket::new(rate, burst(rate), now))),
            per_peer,
            peers: Mutex::default(),
        }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.total.is_some() || self.per_peer.is_some()
    }

    /// How long to wait before sending `bytes` to `peer` (reserving them).
    pub fn reserve(&self, peer: PeerId, bytes: u64, now: Instant) -> Duration {
        let total = self.total.as_ref().map_or(Duration::ZERO, |b| {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .reserve(bytes, now)
        });
        let own = self.per_peer.map_or(Duration::ZERO, |rate| {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if peers.len() >= 1024 {
                peers.retain(|_, b| now.saturating_duration_since(b.last) < FORGET_AFTER);
            }
            peers
                .entry(peer)
                .or_insert_with(|| TokenBucket::new(rate, burst(rate), now))
                .reserve(bytes, now)
        });
        total.max(own)
    }

    /// Waits until `bytes` may go to `peer`.
    pub async fn pace(&self, peer: PeerId, bytes: u64) {
        if !self.is_limited() {
            return;
        }
        let wait = self.reserve(peer, bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A bucket's burst for a rate: a tenth of a second of it, at least 64 KiB.
fn burst(rate: u64) -> u64 {
    (rate / 10).max(64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.reserve(500, t0), Duration::ZERO);
        // 1000 more bytes at 1000 B/s: a second.
        assert_eq!(b.reserve(1000, t0), Duration::from_secs(1));
        // Half a second later the debt is half paid; another 500 wait for the rest and theirs.
        let wait = b.reserve(500, t0 + Duration::from_millis(500));
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn try_take_takes_only_what_is_there() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.try_take(3, t0));
        assert!(!b.try_take(1, t0), "the burst is spent");
        assert!(!b.is_full(t0));
        // A tenth of a second earns one token; a refused take costs nothing.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(1, t1));
        assert!(!b.try_take(1, t1));
        assert!(b.is_full(t1 + Duration::from_millis(300)));
    }

    #[test]
    fn each_peer_has_its_own_bucket_under_the_node_s() {
        let t0 = Instant::now();
        let up = Upload::new(None, Some(100_000));
        let (a, b) = (PeerId::random(), PeerId::random());
        let burst = burst(100_000);
        assert_eq!(up.reserve(a, burst, t0), Duration::ZERO);
        assert!(up.reserve(a, 100_000, t0) >= Duration::from_secs(1));
        // Another peer is not held back by the first.
        assert_eq!(up.reserve(b, burst, t0), Duration::ZERO);
        let shared = Upload::new(Some(100_000), None);
        assert_eq!(shared.reserve(a, burst, t0), Duration::ZERO);
        assert!(shared.reserve(b, 100_000, t0) >= Duration::from_secs(1));
    }

    proptest! {
        /// Whatever the reservations, the bytes sent by any time never exceed the burst plus
        /// the rate times the time elapsed.
        #[test]
        fn the_rate_is_never_exceeded(
            rate in 1_000u64..10_000_000,
            sends in proptest::collection::vec((1u64..2_000_000, 0u64..2_000), 1..100),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst(rate), t0);
            let mut now = t0;
            let mut sent_by: Vec<(Instant, u64)> = Vec::new();
            for (bytes, dt_ms) in sends {
                now += Duration::from_millis(dt_ms);
                let at = now + b.reserve(bytes, now);
                sent_by.push((at, bytes));
            }
            sent_by.sort();
            let mut total = 0u64;
            for (at, bytes) in sent_by {
                total += bytes;
                let allowed = b.burst() as f64 + rate as f64 * at.duration_since(t0).as_secs_f64();
                prop_assert!(total as f64 <= allowed + 1.0, "{total} > {allowed}");
            }
        }
    }
}
