//! Passwords: argon2id hashes in the configuration (never the password itself), and the SASL
//! PLAIN message (RFC 4616). An unknown user costs the same work and gets the same answer as
//! a wrong password.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::time::{Duration, Instant};

use argon2::Argon2;
use thiserror::Error;

use super::Account;

#[derive(Debug, Error)]
pub enum PasswordError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A PHC-format argon2id hash of `password`, for `password_hash` in the configuration.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// [`check`] in turn with the other sessions' checks, [`CHECKERS`] at a time: the account's
/// name when the password is right. A check takes about 19 MiB (argon2id's m=19456) while it
/// runs (review: 10 wrong passwords at once took the server from 21 to 216 MB, before any
/// login). [`return_large_allocations`] makes that memory go back when a check ends.
pub async fn check_in_turn(
    accounts: Vec<Account>,
    user: String,
    password: Vec<u8>,
) -> Option<String> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CHECKERS);
    let turn = TURNS.acquire().await;
    tokio::task::spawn_blocking(move || {
        // Held by the check itself, also when the session is gone before it ends.
        let _turn = turn;
        check(&accounts, &user, &password).map(|a| a.name.clone())
    })
    .await
    .ok()
    .flatten()
}

/// Password checks at once, in every session together.
const CHECKERS: usize = 2;

/// Allocations of 8 MiB or more (a password check's 19 MiB) are mapped on their own and
/// unmapped when freed. glibc otherwise raises that threshold to the size of the largest
/// block freed, and then keeps such blocks in the freeing thread's arena without reusing
/// them: each password check left its 19 MiB behind (30 wrong passwords, 10 at a time:
/// 254 MB resident after, 21 MB with this). Smaller ones (a FETCH's row batch) stay on the
/// heap, where they are reused.
pub fn return_large_allocations() {
    // SAFETY: mallopt sets a process-wide tunable under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

/// Checks a login. The account's hash is verified; for an unknown user a fixed hash is
/// verified instead, so both cases take the same time.
pub fn check<'a>(accounts: &'a [Account], user: &str, password: &[u8]) -> Option<&'a Account> {
    let account = accounts.iter().find(|a| a.name == user);
    let hash = account.map_or(DUMMY_HASH, |a| a.password_hash.as_str());
    let ok = PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
        .unwrap_or(false);
    account.filter(|_| ok)
}

/// Why `hash` cannot be an account's `password_hash`, if it cannot: not a PHC string of
/// argon2 (argon2id, argon2i or argon2d) with parameters argon2 takes, or without its salt
/// and output. Such an account could never log in (review: `password_hash = "notahash"` was
/// taken, and every login then failed as a wrong password).
pub fn hash_problem(hash: &str) -> Option<String> {
    let parsed = match PasswordHash::new(hash) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Some(format!(
                "not a PHC hash string ({e}); `sealpost passwd` makes one"
            ))
        }
    };
    if argon2::Algorithm::try_from(parsed.algorithm).is_err() {
        return Some(format!(
            "\"{}\" is no argon2 hash; `sealpost passwd` makes an argon2id one",
            parsed.algorithm
        ));
    }
    if let Err(e) = argon2::Params::try_from(&parsed) {
        return Some(format!("argon2 parameters argon2 does not take ({e})"));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Some("the hash has no salt or no output; `sealpost passwd` makes one".into());
    }
    None
}

/// argon2id of a random string nobody knows; only used to spend time on unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2VhbHBvc3RkdW1teQ$3rKNu2ms0Wsq4SvDkiQUGJ1Hb3Xpwe1TqKbt3mC9l5Q";

/// RFC 4616: `[authzid] NUL authcid NUL passwd`. An authzid other than the user is refused
/// (sealpost has no proxy authorization).
pub fn parse_plain(message: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut fields = message.split(|&b| b == 0);
    let authzid = fields.next()?;
    let authcid = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    let password = fields.next()?.to_vec();
    if fields.next().is_some() || authcid.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != authcid.as_bytes() {
        return None;
    }
    Some((authcid, password))
}

/// Reads a password for `sealpost passwd` from stdin (one line, newline stripped).
pub fn read_password_line(input: &mut impl std::io::BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line)?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_unknown_users_fail_alike() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let accounts = vec![Account {
            name: "alice".into(),
            password_hash: hash,
            upstream: None,
            maildir: None,
        }];
        assert!(check(&accounts, "alice", b"s3cret").is_some());
        assert!(check(&accounts, "alice", b"wrong").is_none());
        assert!(check(&accounts, "mallory", b"s3cret").is_none());
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert_eq!(hash_problem(DUMMY_HASH), None);
        assert_eq!(hash_problem(&accounts[0].password_hash), None);
        for bad in [
            "notahash",
            "",
            "$argon2id$v=19$m=19456,t=2,p=1$c2VhbHBvc3RkdW1teQ",
            "$argon2id$v=19$m=1,t=2,p=1$c2VhbHBvc3RkdW1teQ$3rKNu2ms0Wsq4SvDkiQUGJ1Hb3Xpwe1TqKbt3mC9l5Q",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$3rKNu2ms0Wsq4SvDkiQUGJ1Hb3Xpwe1TqKbt3mC9l5Q",
            "$6$salt$hash",
        ] {
            assert!(hash_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn sasl_plain() {
        assert_eq!(
            parse_plain(b"\0alice\0pw"),
            Some(("alice".into(), b"pw".to_vec()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), b"pw".to_vec()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
    }
}

/// A client address as these limits count it: IPv6 by /64 (one host has many), an IPv4
/// client on an IPv6 listener ("::ffff:a.b.c.d") as its IPv4 address.
fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                std::net::IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

/// Connections per client address, so that one host cannot take every slot of
/// `max_connections` (and keep the others out until its logins time out). Loopback clients
/// are not counted: they are the user's own, or a proxy's in front of the server.
pub struct PerAddress {
    open: OpenByAddress,
    most: usize,
}

type OpenByAddress =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One counted connection; dropping it frees its place.
pub struct AddressSlot {
    open: OpenByAddress,
    key: Option<std::net::IpAddr>,
}

impl PerAddress {
    pub fn new(most: usize) -> PerAddress {
        PerAddress {
            open: Default::default(),
            most,
        }
    }

    /// A place for a connection from `ip`; None when that address has `most` already.
    pub fn claim(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        // ::1 (its /64 is no loopback), or 127.x.x.x, mapped on an IPv6 listener or not.
        if ip.is_loopback() || key.is_loopback() {
            return Some(AddressSlot {
                open: self.open.clone(),
                key: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.most {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            open: self.open.clone(),
            key: Some(key),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// Failed logins per client address, across connections, as Dovecot's auth penalty: after
/// a failure, an attempt from that address waits before its password is even checked, the
/// wait doubling with each failure up to [`MAX_PENALTY`]. Per connection, a client gets only
/// a few tries (`max_auth_failures`); without this, 60 connections at once guessed 16 times
/// a second and kept both cores busy with argon2. An address without a failure for
/// [`FORGET_AFTER`] starts over; a login that succeeds does not reset it (an attacker with an
/// account of its own would reset it between guesses). IPv6 addresses count by /64 (one host
/// has many), IPv4 ones on an IPv6 listener as IPv4.
pub struct Penalties {
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, Instant)>>,
    base: Duration,
}

/// The longest wait before an attempt is checked.
pub const MAX_PENALTY: Duration = Duration::from_secs(15);

/// How long a failure counts.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// Addresses remembered at most; past it, ones whose failures no longer count go first.
const MAX_ADDRESSES: usize = 65_536;

impl Penalties {
    /// `base`: the wait after one failure (the failure delay of the configuration).
    pub fn new(base: Duration) -> Penalties {
        Penalties {
            by_address: Default::default(),
            base,
        }
    }

    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, (u32, Instant)>>
    {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long an attempt from `ip` waits before it is checked.
    pub fn wait(&self, ip: std::net::IpAddr) -> Duration {
        match self.map().get(&address_key(ip)) {
            Some((failures, last)) if last.elapsed() < FORGET_AFTER && *failures > 0 => self
                .base
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_PENALTY),
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut map = self.map();
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
        }
        if map.len() >= MAX_ADDRESSES {
            return;
        }
        let entry = map.entry(address_key(ip)).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        *entry = (entry.0.saturating_add(1), Instant::now());
    }
}

#[cfg(test)]
mod penalty_tests {
    use super::*;

    #[test]
    fn each_address_gets_its_places_and_loopback_is_not_counted() {
        let limit = PerAddress::new(2);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = limit.claim(ip("192.0.2.7")).unwrap();
        let b = limit.claim(ip("::ffff:192.0.2.7")).unwrap();
        assert!(
            limit.claim(ip("192.0.2.7")).is_none(),
            "a third from the same host"
        );
        assert!(limit.claim(ip("192.0.2.8")).is_some(), "another host");
        let c = limit.claim(ip("2001:db8::1")).unwrap();
        let _d = limit.claim(ip("2001:db8::2")).unwrap();
        assert!(limit.claim(ip("2001:db8::3")).is_none(), "the same /64");
        let loopback: Vec<_> = (0..10)
            .map(|_| limit.claim(ip("127.0.0.1")).unwrap())
            .chain((0..10).map(|_| limit.claim(ip("::1")).unwrap()))
            .collect();
        assert_eq!(loopback.len(), 20);
        drop(a);
        assert!(limit.claim(ip("192.0.2.7")).is_some(), "a place freed");
        drop((b, c));
        assert!(limit.open.lock().unwrap().get(&ip("192.0.2.7")).is_none());
    }

    #[test]
    fn each_failure_doubles_the_wait_up_to_the_most() {
        let p = Penalties::new(Duration::from_secs(2));
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(p.wait(ip), Duration::ZERO);
        p.failed(ip);
        assert_eq!(p.wait(ip), Duration::from_secs(2));
        p.failed(ip);
        assert_eq!(p.wait(ip), Duration::from_secs(4));
        for _ in 0..10 {
            p.failed(ip);
        }
        assert_eq!(p.wait(ip), MAX_PENALTY);
        // An IPv4 client on an IPv6 listener is its IPv4 address, not "::/64".
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(p.wait(mapped), MAX_PENALTY);
        let other: std::net::IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(p.wait(other), Duration::ZERO);
        // One IPv6 host: its /64.
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        p.failed(a);
        assert_eq!(p.wait(b), Duration::from_secs(2));
    }
}
