//! The bounded queue in front of the sandbox: a fixed number of calls run, a fixed number wait,
//! and the rest are turned away at once rather than piling up.

use std::sync::{Condvar, Mutex, PoisonError};

use crate::SandboxError;

/// Admission control for calls.
pub(crate) struct Gate {
    state: Mutex<Counts>,
    freed: Condvar,
    max_running: usize,
    max_queued: usize,
}

#[derive(Default)]
struct Counts {
    running: usize,
    queued: usize,
}

/// A running call's slot; dropping it lets the next waiting call in.
pub(crate) struct Slot<'a>(&'a Gate);

impl Gate {
    pub(crate) fn new(max_running: usize, max_queued: usize) -> Gate {
        Gate {
            state: Mutex::new(Counts::default()),
            freed: Condvar::new(),
            max_running: max_running.max(1),
            max_queued,
        }
    }

    /// Calls running and calls waiting now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let counts = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (counts.running, counts.queued)
    }

    /// Waits for a slot, or fails at once with [`SandboxError::Busy`] when the queue is full.
    pub(crate) fn enter(&self) -> Result<Slot<'_>, SandboxError> {
        let mut counts = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.running >= self.max_running {
            if counts.queued >= self.max_queued {
                return Err(SandboxError::Busy {
                    running: counts.running,
                    queued: counts.queued,
                });
            }
            counts.queued += 1;
            while counts.running >= self.max_running {
                counts = self
                    .freed
                    .wait(counts)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            counts.queued -= 1;
        }
        counts.running += 1;
        Ok(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut counts = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        counts.running -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_answers_busy_and_frees_on_drop() {
        let gate = Gate::new(1, 0);
        let slot = gate.enter().expect("first call runs");
        assert!(matches!(
            gate.enter(),
            Err(SandboxError::Busy {
                running: 1,
                queued: 0
            })
        ));
        drop(slot);
        assert!(gate.enter().is_ok());
    }
}
