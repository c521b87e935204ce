//! User names for uids, through NSS (`getpwuid_r`), so that users that live in LDAP, SSSD or
//! systemd's `DynamicUser=` get their names like those of /etc/passwd. A lookup can be slow
//! (a directory server), so each uid is looked up at most once and the answer cached,
//! misses included: a uid with no name stays nameless until the cache is cleared.

use std::collections::HashMap;

use nix::unistd::{Uid, User};

const CACHE_CAPACITY: usize = 4096;

/// Where names come from: NSS in the daemon, a table in the tests.
pub trait UserSource {
    fn lookup(&mut self, uid: u32) -> Option<String>;
}

/// The C library's user database, with every source nsswitch.conf names.
pub struct Nss;

impl UserSource for Nss {
    fn lookup(&mut self, uid: u32) -> Option<String> {
        match User::from_uid(Uid::from_raw(uid)) {
            Ok(user) => user.map(|user| user.name),
            Err(error) => {
                // Cached as nameless like a miss: retrying a failing directory per request
                // would put its timeout on the reader's path.
                tracing::debug!(uid, %error, "user lookup failed");
                None
            }
        }
    }
}

pub struct UserNames<S = Nss> {
    source: S,
    names: HashMap<u32, Option<String>>,
}

impl Default for UserNames {
    fn default() -> Self {
        Self::with_source(Nss)
    }
}

impl<S: UserSource> UserNames<S> {
    pub fn with_source(source: S) -> Self {
        Self {
            source,
            names: HashMap::new(),
        }
    }

    pub fn name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.names.get(&uid) {
            return name.clone();
        }
        if self.names.len() >= CACHE_CAPACITY {
            self.names.clear();
        }
        let name = self.source.lookup(uid);
        self.names.insert(uid, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts lookups per uid.
    #[derive(Default)]
    struct Counting(HashMap<u32, usize>);

    impl UserSource for Counting {
        fn lookup(&mut self, uid: u32) -> Option<String> {
            *self.0.entry(uid).or_default() += 1;
            (uid < 10).then(|| format!("user{uid}"))
        }
    }

    #[test]
    fn each_uid_is_looked_up_once_names_and_misses_alike() {
        let mut names = UserNames::with_source(Counting::default());
        for _ in 0..3 {
            assert_eq!(names.name(1).as_deref(), Some("user1"));
            assert_eq!(names.name(4242), None);
        }
        assert_eq!(names.source.0, HashMap::from([(1, 1), (4242, 1)]));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut names = UserNames::with_source(Counting::default());
        for uid in 0..CACHE_CAPACITY as u32 * 2 + 1 {
            names.name(uid);
            assert!(names.names.len() <= CACHE_CAPACITY);
        }
        // Cleared once full: an early uid is looked up again.
        names.name(0);
        assert_eq!(names.source.0[&0], 2);
    }

    #[test]
    fn nss_names_root_and_not_an_unused_uid() {
        let mut nss = Nss;
        assert_eq!(nss.lookup(0).as_deref(), Some("root"));
        // Unused by any system: the kernel's "no id" value minus one.
        assert_eq!(nss.lookup(u32::MAX - 1), None);
    }
}
