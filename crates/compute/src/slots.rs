//! Per-caller slots on a provider: each caller may have at most a fixed number of calls running
//! at once, so one greedy caller cannot take every slot of the sandbox.

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::NodeId;

/// A caller already has as many calls on this provider as it may: answer busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this caller already has {limit} calls here")]
pub struct CallerBusy {
    /// The calls one caller may have at once.
    pub limit: usize,
}

/// Per-caller slots on a provider, shared by the tasks serving calls.
#[derive(Debug)]
pub struct CallerSlots {
    limit: usize,
    used: Mutex<HashMap<NodeId, usize>>,
}

/// A taken slot; released when dropped.
#[derive(Debug)]
pub struct CallerSlot<'a> {
    slots: &'a CallerSlots,
    caller: NodeId,
}

impl CallerSlots {
    /// `limit` calls per caller.
    pub fn new(limit: usize) -> CallerSlots {
        CallerSlots {
            limit,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `caller`, or says it has `limit` already.
    pub fn take(&self, caller: NodeId) -> Result<CallerSlot<'_>, CallerBusy> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = used.entry(caller).or_insert(0);
        if *n >= self.limit {
            return Err(CallerBusy { limit: self.limit });
        }
        *n += 1;
        Ok(CallerSlot {
            slots: self,
            caller,
        })
    }

    /// Calls `caller` has running now.
    pub fn used(&self, caller: &NodeId) -> usize {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.get(caller).copied().unwrap_or(0)
    }
}

impl Drop for CallerSlot<'_> {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = used.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                used.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::SecretKey;

    #[test]
    fn each_caller_gets_its_own_slots() {
        let slots = CallerSlots::new(2);
        let a = SecretKey::from_seed(&[1; 32]).node_id();
        let b = SecretKey::from_seed(&[2; 32]).node_id();
        let a1 = slots.take(a).expect("a1");
        let _a2 = slots.take(a).expect("a2");
        assert!(slots.take(a).is_err(), "a is at its limit");
        assert!(slots.take(b).is_ok(), "b is not starved");
        drop(a1);
        assert!(slots.take(a).is_ok(), "released");
    }

    #[test]
    fn a_full_caller_is_told_its_limit_and_released_slots_are_forgotten() {
        let slots = CallerSlots::new(1);
        let a = SecretKey::from_seed(&[1; 32]).node_id();
        let held = slots.take(a).expect("free");
        assert_eq!(slots.used(&a), 1);
        let busy = slots.take(a).expect_err("full");
        assert_eq!(busy.to_string(), "this caller already has 1 calls here");
        drop(held);
        assert_eq!(slots.used(&a), 0);
        assert!(
            slots
                .used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        );
    }
}
