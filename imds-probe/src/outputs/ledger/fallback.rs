//! SDKs that fell back to IMDSv1: a token PUT, no request with a token after it, then a
//! token-less request from the same process within seconds. botocore, Go v1, JS v2/v3 and
//! Java v1 all do this when the token request gets no answer (1-5 s timeouts); in a container
//! that is the hop limit. Such a caller is not an old SDK.

use std::collections::HashMap;

use crate::streams::classify::Class;

/// How long after a token PUT a token-less request counts as the fallback: the SDKs' token
/// timeouts (1-5 s) and a retry.
const FALLBACK_WINDOW_NS: u64 = 10_000_000_000;
/// Processes with a token request in flight, at most. When full, expired ones are dropped; if
/// none has expired a new one is not tracked (its fallback would read as a plain IMDSv1 call).
const MAX_PENDING: usize = 4096;

#[derive(Default)]
pub struct FallbackTracker {
    /// pid -> when it asked for a token, while no request with a token has followed.
    pending: HashMap<u32, u64>,
}

impl FallbackTracker {
    /// Whether this request is a fallback to IMDSv1.
    pub fn observe(&mut self, pid: u32, class: Class, now_ns: u64) -> bool {
        match class {
            Class::Token => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending
                        .retain(|_, at| now_ns.saturating_sub(*at) <= FALLBACK_WINDOW_NS);
                }
                if self.pending.len() < MAX_PENDING || self.pending.contains_key(&pid) {
                    self.pending.insert(pid, now_ns);
                }
                false
            }
            // The token arrived and is in use.
            Class::Imdsv2 => {
                self.pending.remove(&pid);
                false
            }
            Class::Imdsv1 => self
                .pending
                .get(&pid)
                .is_some_and(|at| now_ns.saturating_sub(*at) <= FALLBACK_WINDOW_NS),
            Class::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_token_put_then_a_tokenless_get_is_a_fallback() {
        let mut t = FallbackTracker::default();
        assert!(!t.observe(7, Class::Token, 0));
        assert!(t.observe(7, Class::Imdsv1, S));
        assert!(
            t.observe(7, Class::Imdsv1, 2 * S),
            "every call after it too"
        );
        assert!(!t.observe(8, Class::Imdsv1, 2 * S), "another process");
        assert!(!t.observe(7, Class::Imdsv1, 12 * S), "long after the PUT");
    }

    #[test]
    fn a_token_in_use_is_no_fallback() {
        let mut t = FallbackTracker::default();
        t.observe(7, Class::Token, 0);
        assert!(!t.observe(7, Class::Imdsv2, S));
        assert!(!t.observe(7, Class::Imdsv1, 2 * S));
    }

    #[test]
    fn bounded() {
        let mut t = FallbackTracker::default();
        for pid in 0..(MAX_PENDING as u32 + 10) {
            t.observe(pid, Class::Token, 0);
        }
        assert_eq!(t.pending.len(), MAX_PENDING);
        t.observe(999_999, Class::Token, 20 * S);
        assert_eq!(t.pending.len(), 1, "expired entries make room");
    }
}
