//! IMDSv2 session tokens: random generation and a bounded store of issued tokens.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    fs::File,
    io::{self, Read as _},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// 33 random bytes encode to exactly 44 base64 characters, with no padding to strip.
const RAW_LEN: usize = 33;
pub const TOKEN_LEN: usize = RAW_LEN / 3 * 4;

/// Enough for any test or benchmark; the cap only stops a token-minting loop from eating memory.
pub const DEFAULT_CAPACITY: usize = 100_000;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A token as sent on the wire. Fixed-size so storing and looking one up never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// Wire bytes that cannot be a token we issued (wrong length) give `None`.
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Token)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn from_raw(raw: &[u8; RAW_LEN]) -> Self {
        let mut out = [0u8; TOKEN_LEN];
        for (chunk, dst) in raw.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
            let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = BASE64[(n >> (18 - 6 * i) & 0x3f) as usize];
            }
        }
        Token(out)
    }
}

/// Tokens are credentials even here: keep them out of any log line that formats one.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The kernel's CSPRNG, opened once so minting a token costs one read(2) and no open(2).
pub struct Entropy(File);

impl Entropy {
    pub fn open() -> io::Result<Self> {
        File::open("/dev/urandom").map(Entropy)
    }

    pub fn token(&self) -> io::Result<Token> {
        let mut raw = [0u8; RAW_LEN];
        // `&File` is `Read`, so worker threads share the descriptor without a lock.
        (&self.0).read_exact(&mut raw)?;
        Ok(Token::from_raw(&raw))
    }
}

/// Issued tokens and their expiry. Insertion order doubles as eviction order: the oldest
/// token goes first when the store is full, as it is the one closest to being useless.
pub struct TokenStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    expiry: HashMap<Token, Instant>,
    order: VecDeque<Token>,
}

impl TokenStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    pub fn insert(&self, token: Token, ttl: Duration, now: Instant) {
        let mut inner = self.lock();
        inner.drop_expired_front(now);
        while inner.order.len() >= self.capacity {
            inner.evict_oldest();
        }
        if inner.expiry.insert(token, now + ttl).is_none() {
            inner.order.push_back(token);
        }
    }

    pub fn is_valid(&self, wire: &[u8], now: Instant) -> bool {
        let Some(token) = Token::from_wire(wire) else {
            return false;
        };
        self.lock()
            .expiry
            .get(&token)
            .is_some_and(|&expires| now < expires)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// The store holds no invariant a panicking holder could break halfway, so a poisoned
    /// lock is still safe to use and must not take the server down.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Cheap, incremental cleanup: only looks at the front, so an insert stays O(1).
    fn drop_expired_front(&mut self, now: Instant) {
        while let Some(front) = self.order.front() {
            match self.expiry.get(front) {
                Some(&expires) if now < expires => break,
                _ => self.evict_oldest(),
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            self.expiry.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> Token {
        Token::from_raw(&[n; RAW_LEN])
    }

    #[test]
    fn encodes_as_base64() {
        let t = Token::from_raw(&[0xff; RAW_LEN]);
        assert_eq!(t.as_bytes(), [b'/'; TOKEN_LEN].as_slice());
        let mut raw = [0u8; RAW_LEN];
        raw[..3].copy_from_slice(b"Man");
        assert_eq!(&Token::from_raw(&raw).as_bytes()[..8], b"TWFuAAAA");
    }

    #[test]
    fn random_tokens_differ_and_are_printable() {
        let entropy = Entropy::open().expect("/dev/urandom");
        let a = entropy.token().expect("read");
        let b = entropy.token().expect("read");
        assert_ne!(a, b);
        assert!(a.as_bytes().iter().all(|c| BASE64.contains(c)));
    }

    #[test]
    fn debug_redacts() {
        let t = token(1);
        let shown = format!("{t:?}");
        assert!(!shown.contains(std::str::from_utf8(t.as_bytes()).expect("ascii")));
    }

    #[test]
    fn valid_until_expiry() {
        let store = TokenStore::new(10);
        let now = Instant::now();
        store.insert(token(1), Duration::from_secs(5), now);
        assert!(store.is_valid(token(1).as_bytes(), now));
        assert!(store.is_valid(token(1).as_bytes(), now + Duration::from_secs(4)));
        assert!(!store.is_valid(token(1).as_bytes(), now + Duration::from_secs(5)));
        assert!(!store.is_valid(token(2).as_bytes(), now));
        assert!(!store.is_valid(b"short", now));
    }

    #[test]
    fn full_store_evicts_oldest() {
        let store = TokenStore::new(2);
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        for n in 1..=3 {
            store.insert(token(n), ttl, now);
        }
        assert_eq!(store.len(), 2);
        assert!(!store.is_valid(token(1).as_bytes(), now));
        assert!(store.is_valid(token(2).as_bytes(), now));
        assert!(store.is_valid(token(3).as_bytes(), now));
    }

    #[test]
    fn expired_tokens_are_dropped_on_insert() {
        let store = TokenStore::new(10);
        let now = Instant::now();
        store.insert(token(1), Duration::from_secs(1), now);
        store.insert(token(2), Duration::from_secs(1), now);
        store.insert(
            token(3),
            Duration::from_secs(60),
            now + Duration::from_secs(2),
        );
        assert_eq!(store.len(), 1);
    }
}
