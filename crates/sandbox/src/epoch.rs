//! The epoch ticker: the clock of call deadlines. It advances the engine's epoch every tick
//! while guest code may run (a call, a model's `init`, a spare instance being built) and sleeps
//! otherwise, so that an idle node wakes for nothing (it ticked 100 times a second whether or
//! not anything ran: on a machine of 200 idle nodes, 20,000 wake-ups a second).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A thread calling `on_tick` every tick while at least one [`Running`] guard is held.
pub(crate) struct Ticker {
    shared: Arc<Shared>,
    thread: std::thread::Thread,
}

struct Shared {
    /// Guards held now.
    running: AtomicUsize,
    /// Cleared when the ticker is dropped: the thread ends.
    alive: AtomicBool,
}

/// Guest code may run while this is held: the ticker ticks.
pub(crate) struct Running<'a>(&'a Ticker);

impl Ticker {
    /// Starts the ticker's thread (`name`), ticking every `tick` while a guard is held.
    pub(crate) fn start(
        name: &str,
        tick: Duration,
        on_tick: impl Fn() + Send + 'static,
    ) -> std::io::Result<Ticker> {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
        });
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while state.alive.load(Ordering::Acquire) {
                    if state.running.load(Ordering::Acquire) == 0 {
                        // An unpark between the check and here makes this return at once.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    on_tick();
                }
            })?;
        Ok(Ticker {
            shared,
            thread: handle.thread().clone(),
        })
    }

    /// Ticks until the guard is dropped (and while any other is held).
    pub(crate) fn running(&self) -> Running<'_> {
        self.shared.running.fetch_add(1, Ordering::AcqRel);
        self.thread.unpark();
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::Release);
        self.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// It ticks while a guard is held, and not at all before or after.
    #[test]
    fn ticks_only_while_guest_code_may_run() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        let ticker = Ticker::start("test-epoch", Duration::from_millis(2), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .expect("ticker");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ticks.load(Ordering::Relaxed), 0, "ticked while idle");

        let guard = ticker.running();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticks.load(Ordering::Relaxed) < 5 {
            assert!(Instant::now() < deadline, "never ticked while running");
            std::thread::sleep(Duration::from_millis(5));
        }
        let nested = ticker.running();
        drop(guard);
        let at = ticks.load(Ordering::Relaxed);
        while ticks.load(Ordering::Relaxed) < at + 3 {
            assert!(Instant::now() < deadline, "stopped while a guard was held");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(nested);
        // At most one tick already under way lands after the last guard went.
        std::thread::sleep(Duration::from_millis(20));
        let settled = ticks.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            ticks.load(Ordering::Relaxed),
            settled,
            "ticked after the last guard"
        );
    }
}
