//! Room in the sk_msg backend's socket hash. The hash holds `MAX_CONNECTIONS` sockets, and a
//! socket that is not in it is not seen at all: a process that opens more idle connections to
//! the IMDS than that would blind the probe to every connection opened after them. So the
//! kernel reports each socket it enrols, and user space keeps the hash below a high-water mark:
//! past it, the sockets idle the longest give up their place. Their later sends are not seen;
//! each eviction is counted (`sockets_evicted`) and a request in flight on one is `unknown`
//! with reason `evicted`. New connections, the ones a hidden IMDSv1 caller would make, always
//! find room.

use std::collections::{BTreeSet, HashMap};

use imds_probe_common::send::MAX_CONNECTIONS;

/// Above this many sockets in the hash, the longest-idle are evicted. The headroom above it
/// absorbs connections opened between two reads of the ring buffer (the reader is woken by
/// each enrolment): 4,096 connects take a 2-core host tens of milliseconds.
pub const HIGH_WATER: usize = MAX_CONNECTIONS as usize * 3 / 4;
/// Evictions go in batches down to this, so a flood costs one batch per few hundred connects.
pub const LOW_WATER: usize = HIGH_WATER - 256;

/// The sockets in the hash, by last activity (enrolment or send).
#[derive(Debug)]
pub struct SocketBudget {
    last_used: HashMap<u64, u64>,
    by_age: BTreeSet<(u64, u64)>,
    next_stamp: u64,
    high_water: usize,
    low_water: usize,
}

impl Default for SocketBudget {
    fn default() -> Self {
        Self::new(HIGH_WATER, LOW_WATER)
    }
}

impl SocketBudget {
    pub fn new(high_water: usize, low_water: usize) -> Self {
        Self {
            last_used: HashMap::new(),
            by_age: BTreeSet::new(),
            next_stamp: 0,
            high_water,
            low_water: low_water.min(high_water),
        }
    }

    /// `cookie` was enrolled, or sent: it is the most recently used now.
    pub fn used(&mut self, cookie: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(old) = self.last_used.insert(cookie, stamp) {
            self.by_age.remove(&(old, cookie));
        }
        self.by_age.insert((stamp, cookie));
    }

    /// `cookie` left the hash (closed, or evicted).
    pub fn forget(&mut self, cookie: u64) {
        if let Some(stamp) = self.last_used.remove(&cookie) {
            self.by_age.remove(&(stamp, cookie));
        }
    }

    /// The sockets to evict now, longest idle first: none below the high-water mark, else
    /// enough to bring the count down to the low-water mark. They are forgotten here.
    pub fn over_budget(&mut self) -> Vec<u64> {
        if self.last_used.len() <= self.high_water {
            return Vec::new();
        }
        let excess = self.last_used.len() - self.low_water;
        let victims: Vec<u64> = self
            .by_age
            .iter()
            .take(excess)
            .map(|&(_, cookie)| cookie)
            .collect();
        for &cookie in &victims {
            self.forget(cookie);
        }
        victims
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_longest_idle_go_first_and_only_past_the_mark() {
        let mut budget = SocketBudget::new(3, 2);
        for cookie in 1..=3 {
            budget.used(cookie);
        }
        assert!(budget.over_budget().is_empty(), "at the mark, nothing goes");
        budget.used(1); // 2 is now the longest idle, then 3.
        budget.used(4);
        assert_eq!(budget.over_budget(), [2, 3]);
        assert_eq!(budget.len(), 2);
        budget.forget(1);
        budget.forget(99);
        assert_eq!(budget.len(), 1);
    }

    proptest! {
        #[test]
        fn stays_within_bounds_and_never_evicts_the_newest(
            ops in prop::collection::vec((0u64..64, any::<bool>()), 0..400),
        ) {
            let mut budget = SocketBudget::new(16, 12);
            for (cookie, open) in ops {
                if open {
                    budget.used(cookie);
                    let victims = budget.over_budget();
                    prop_assert!(!victims.contains(&cookie), "the socket just used stays");
                } else {
                    budget.forget(cookie);
                }
                prop_assert!(budget.len() <= 16);
                prop_assert_eq!(budget.len(), budget.by_age.len());
            }
        }
    }
}
