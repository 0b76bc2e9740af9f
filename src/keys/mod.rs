//! Keys and GnuPG. Everything that touches gpg goes through [`KeyService`], which runs GPGME on
//! a bounded worker pool ([`worker`]) with a deadline on every operation, resolves exact
//! addresses to keys ([`resolve`] decides which key and says why others are refused) and caches
//! lookups until the keyring files change. [`home`] makes throwaway GnuPG homes (demo, tests).
//!
//! Trust: the keyring sealpost is pointed at is its trust anchor (as in the seed's
//! per-address key lookup); keys are used when they are valid for the exact address, and
//! encryption is done with always-trust because freshly imported keys have unknown validity.

pub mod autocrypt;
pub mod home;
pub mod ops;
pub mod resolve;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use ops::{Request, Response};

pub use resolve::{KeyFacts, Resolution, Unusable};
pub use worker::{Gpg, GpgWorker, WorkerSettings};

/// A failed key or crypto operation. All of them are temporary by nature: the same
/// operation may succeed later (agent restarted, load gone), so callers that must encrypt
/// answer with a temporary failure, never with cleartext.
#[derive(Debug, thiserror::Error, Clone)]
pub enum KeyError {
    #[error("{op} did not finish within {after:?}")]
    Deadline { op: &'static str, after: Duration },
    #[error("{op} failed: {source}")]
    Gpg {
        op: &'static str,
        #[source]
        source: gpgme::Error,
    },
    #[error("{op} failed: {detail}")]
    Refused { op: &'static str, detail: String },
    #[error("the GnuPG worker pool has stopped")]
    WorkerGone,
    /// GnuPG could not be run at all: a worker process could not be started, died or talked
    /// nonsense, or GPGME could not be set up. The next operation starts afresh.
    #[error("{op} failed: {detail}")]
    Unavailable { op: &'static str, detail: String },
}

/// Where keys may come from. Only the local keyring unless the configuration names more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeySources {
    pub wkd: bool,
    pub keyserver: bool,
}

impl KeySources {
    /// The --auto-key-locate value for gpg. "local" alone turns off gpg's default WKD lookup.
    pub fn auto_key_locate(&self) -> String {
        let mut v = vec!["local"];
        if self.wkd {
            v.push("wkd");
        }
        if self.keyserver {
            v.push("keyserver");
        }
        v.join(",")
    }

    fn any_network(&self) -> bool {
        self.wkd || self.keyserver
    }
}

/// A detached signature and the micalg that belongs to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signature {
    #[serde(with = "ops::bytes")]
    pub armored: Vec<u8>,
    /// Hash algorithm name as GnuPG reports it (e.g. "SHA512").
    pub hash: String,
}

/// One signature found while verifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    pub fingerprint: String,
    pub valid: bool,
    pub state: SignatureState,
}

/// What GnuPG said of one signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureState {
    Valid,
    /// The signer's public key is not in the keyring: nothing can be said either way.
    UnknownKey,
    /// Good, by a key that has expired since, or a signature past its own expiry: GnuPG's
    /// "Good signature... This key has expired" (gpg exits 0 for it). Not bad: nothing was
    /// changed; not valid: the key is no longer vouched for.
    Expired(String),
    /// Bad, or not valid for another reason (revoked key...): GnuPG's words.
    Bad(String),
}

/// Agent and IPC errors: GnuPG could not be asked, which says nothing about the message.
/// A connection to gpg-agent broken off (the agent killed or restarted mid-operation) is one
/// (review: "Broken pipe" and "Connection reset by peer" kept messages undecryptable).
pub fn is_temporary(error: &gpgme::Error) -> bool {
    let broken = [
        libc::EPIPE,
        libc::ECONNRESET,
        libc::ECONNREFUSED,
        libc::ECONNABORTED,
        libc::ENOTCONN,
    ]
    .map(gpgme::Error::from_errno);
    [
        gpgme::Error::NO_AGENT,
        gpgme::Error::AGENT,
        gpgme::Error::TIMEOUT,
        gpgme::Error::EOF,
    ]
    .iter()
    .chain(broken.iter())
    .any(|e| e.code() == error.code())
        || error.to_string().contains("IPC")
}

/// The largest plaintext one decryption may produce unless configured otherwise
/// (`gnupg.max_plaintext_bytes`): the IMAP server's APPENDLIMIT, so a decrypted message can
/// still be stored and served.
pub const DEFAULT_MAX_PLAINTEXT: u64 = 64 * 1024 * 1024;

/// The result of decrypting (and verifying) a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decrypted {
    #[serde(with = "ops::bytes")]
    pub plaintext: Vec<u8>,
    /// Key IDs the ciphertext was encrypted to.
    pub recipients: Vec<String>,
    pub signatures: Vec<SignatureCheck>,
}

/// How long looked-up keys are trusted without a keyring change.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Default)]
struct Cache {
    stamp: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
    /// When the lookups started (None: none yet): they are dropped after [`CACHE_FOR`].
    since: Option<std::time::Instant>,
    public: HashMap<String, Resolution>,
    secret: HashMap<String, Result<String, String>>,
    keydata: HashMap<String, Vec<u8>>,
    /// Signers' keys (their own fingerprint and user-ID addresses) by (sub)key fingerprint:
    /// an import checks one per signed message, and a key listing is a gpg process of its own.
    signer_keys: HashMap<String, SignerKey>,
}

/// The key a signature was made with, found by the fingerprint of the (sub)key that made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerKey {
    /// The key's own (primary key's) fingerprint, as `gpg --fingerprint` shows it; empty when
    /// the keyring has no such key.
    pub primary: String,
    /// The e-mail addresses of its user IDs that are not revoked.
    pub addresses: Vec<String>,
}

/// The one way into GnuPG: lookups (cached), signing, encryption, decryption.
pub struct KeyService {
    worker: GpgWorker,
    home: PathBuf,
    sources: KeySources,
    cache: Mutex<Cache>,
    /// One lock per key looked up (an address, a fingerprint), held while its cache miss is
    /// looked up: a burst of messages for the same addresses (a queue run, a mailing) costs
    /// one gpg lookup per address, not one per message in flight, while lookups of different
    /// addresses go on side by side (review: one lock for all made N hung lookups take N
    /// deadlines). Waiting for it counts against the deadline.
    misses: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    deadline: Duration,
    /// See [`KeyService::with_max_plaintext`].
    max_plaintext: u64,
}

impl KeyService {
    /// Starts the workers as threads of this process, each with its own GPGME context.
    /// `home` is the GnuPG home (None: GnuPG's default for this user).
    pub fn start(
        home: Option<PathBuf>,
        threads: usize,
        deadline: Duration,
        sources: KeySources,
    ) -> Self {
        Self::start_with(home, threads, deadline, sources, None)
    }

    /// Starts the workers as `executable gpg-worker` processes (see [`worker`]): what the
    /// `sealpost` binary does, with its own path.
    pub fn start_isolated(
        executable: PathBuf,
        home: Option<PathBuf>,
        threads: usize,
        deadline: Duration,
        sources: KeySources,
    ) -> Self {
        Self::start_with(home, threads, deadline, sources, Some(executable))
    }

    fn start_with(
        home: Option<PathBuf>,
        threads: usize,
        deadline: Duration,
        sources: KeySources,
        executable: Option<PathBuf>,
    ) -> Self {
        // Keys there now are keys that must not go missing (review: a removed keyring, and
        // every recipient of an MX seemed keyless).
        home::remember_keys(home.as_deref().unwrap_or(&default_home()));
        let worker = GpgWorker::start(WorkerSettings {
            home: home.clone(),
            threads,
            queue: 64,
            deadline,
            auto_key_locate: sources.auto_key_locate(),
            executable,
        });
        KeyService {
            worker,
            home: home.unwrap_or_else(default_home),
            sources,
            cache: Mutex::new(Cache::default()),
            misses: Mutex::new(HashMap::new()),
            deadline,
            max_plaintext: DEFAULT_MAX_PLAINTEXT,
        }
    }

    /// Limits the plaintext of one decryption to `bytes` (default [`DEFAULT_MAX_PLAINTEXT`]).
    /// gpg decompresses what it decrypts, so a ciphertext of a few kilobytes can expand to
    /// gigabytes; past the limit the decryption stops and fails for good
    /// ([`KeyError::Refused`]), and the message is kept as it came.
    pub fn with_max_plaintext(mut self, bytes: u64) -> Self {
        self.max_plaintext = bytes;
        self
    }

    /// Runs one request on a worker; `pick` takes the answer of the expected kind.
    async fn call<T>(
        &self,
        what: &'static str,
        request: Request,
        pick: impl FnOnce(Response) -> Result<T, Response>,
    ) -> Result<T, KeyError> {
        let response = self.worker.call(what, request).await?;
        pick(response).map_err(|other| other.unexpected(what))
    }

    /// The GnuPG home in use.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// How long one GnuPG operation may take (`gnupg.timeout_secs`).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Drops cached lookups when a keyring file changed since they were made, or after
    /// [`CACHE_FOR`]: a key expires without any file changing, and a "no key" from an
    /// unreachable key server must not stand for the life of a daemon.
    fn fresh_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        let stamp = keyring_stamp(&self.home, true);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let old = cache.since.is_some_and(|t| t.elapsed() > CACHE_FOR);
        if cache.stamp != stamp || old {
            self.worker.invalidate();
            *cache = Cache {
                stamp,
                ..Cache::default()
            };
        }
        cache.since.get_or_insert_with(std::time::Instant::now);
        cache
    }

    /// A number that changes whenever the keyring files do (a key imported, deleted or
    /// changed): what the retry of undecryptable messages compares with its last try.
    pub fn keyring_state(&self) -> i64 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (path, meta) in keyring_stamp(&self.home, false) {
            h.update(path.as_os_str().as_encoded_bytes());
            if let Some((modified, len)) = meta {
                let since = modified
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                h.update(since.as_nanos().to_le_bytes());
                h.update(len.to_le_bytes());
            }
            h.update([0]);
        }
        // The secret key files by name too: a directory's time may not change between a
        // temporary file made and renamed within one tick of a coarse clock (review).
        if let Ok(dir) = std::fs::read_dir(self.home.join("private-keys-v1.d")) {
            let mut names: Vec<_> = dir.flatten().map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                h.update(name.as_encoded_bytes());
                h.update([0]);
            }
        }
        i64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// The lock for a cache miss of `key` (see `misses`), waited for at most the deadline.
    async fn miss_lock(
        &self,
        key: String,
        op: &'static str,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, KeyError> {
        let lock = {
            let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            // Locks nobody holds or waits for are dropped now and then.
            if misses.len() > 1024 {
                misses.retain(|_, l| Arc::strong_count(l) > 1);
            }
            misses.entry(key).or_default().clone()
        };
        tokio::time::timeout(self.deadline, lock.lock_owned())
            .await
            .map_err(|_| KeyError::Deadline {
                op,
                after: self.deadline,
            })
    }

    /// Resolves an exact address to a public key usable for encryption.
    pub async fn resolve(&self, address: &str) -> Result<Resolution, KeyError> {
        // Looked up and cached as given (ASCII case aside): GnuPG's search needs the letters
        // the key has (see `ops::address_patterns`), and a local part with letters outside
        // ASCII finds the domain's keys whose address folds to it as Postfix folds it
        // (`JÖRG@` finds jörg's, `Straße@` strasse's). An ASCII one finds its own spelling
        // only (`strasse@` not a key for `straße@`): cached under a folded name, what one
        // spelling found answered for the other, depending on which came first (review).
        let addr = address.to_ascii_lowercase();
        if let Some(hit) = self.fresh_cache().public.get(&addr) {
            return Ok(hit.clone());
        }
        let _miss = self
            .miss_lock(format!("public {addr}"), "looking up a public key")
            .await?;
        if let Some(hit) = self.fresh_cache().public.get(&addr) {
            return Ok(hit.clone());
        }
        let mut resolution = self.list_public(&addr, false).await?;
        if matches!(resolution, Resolution::NoKey { .. }) && self.sources.any_network() {
            let who = addr.clone();
            // Located keys are imported into the keyring (GPGME "auto-key-locate").
            let located = self
                .call(
                    "locating a key",
                    Request::Locate { addr: who },
                    |r| match r {
                        Response::Located(found) => Ok(found),
                        other => Err(other),
                    },
                )
                .await?;
            if located {
                resolution = self.list_public(&addr, false).await?;
            }
        }
        // Logged once per fresh lookup, not on every cache hit.
        if let Resolution::Usable {
            fingerprint,
            others,
        } = &resolution
        {
            if *others > 0 {
                tracing::info!(rcpt = %addr, key = %fingerprint, others, "several usable keys: chose the most valid, then the newest");
            }
        }
        self.fresh_cache().public.insert(addr, resolution.clone());
        Ok(resolution)
    }

    /// The key for the user's own copies (the sync's uploads of Sent and Drafts): as
    /// [`KeyService::resolve`], among the keys whose encryption secret key is here only, and
    /// from the keyring alone. A newer public key for the same address with no secret here
    /// (imported, or located) would make the user's own mail unreadable to the user, and
    /// readable to whoever holds that key (review: uploads were encrypted to it).
    pub async fn resolve_own(&self, address: &str) -> Result<Resolution, KeyError> {
        let addr = address.to_ascii_lowercase();
        // Cached beside the public lookups, under a name no address has.
        let cached = format!("own {addr}");
        if let Some(hit) = self.fresh_cache().public.get(&cached) {
            return Ok(hit.clone());
        }
        let resolution = self.list_public(&addr, true).await?;
        self.fresh_cache().public.insert(cached, resolution.clone());
        Ok(resolution)
    }

    async fn list_public(&self, addr: &str, own: bool) -> Result<Resolution, KeyError> {
        let who = addr.to_string();
        let facts = self
            .call(
                "looking up a public key",
                Request::ListPublic { addr: who, own },
                |r| match r {
                    Response::Facts(facts) => Ok(facts),
                    other => Err(other),
                },
            )
            .await?;
        // The user's own key without its secret: gpg lists no secret key when gpg-agent
        // cannot be reached (it cannot start, its configuration is broken), so that is asked
        // before "no secret key" stands (review: an upload refused for good, 550, with the
        // agent down).
        let (home, deadline) = (self.home.clone(), self.deadline);
        if own && facts.iter().any(|f| f.no_secret) {
            let home = home.clone();
            refused_on("looking up the user's own key", move || {
                home::secret_keyring_problem(Some(&home), deadline)
            })
            .await?;
        }
        if facts.is_empty() {
            let (home, addr) = (home.clone(), addr.to_string());
            refused_on("looking up a public key", move || {
                home::public_keyring_problem(&home, &addr, deadline)
            })
            .await?;
        }
        let chosen = resolve::choose(&facts);
        // Keys listed, none usable: what is left of a damaged key block lists as an invalid
        // key, or one without its encryption subkey (review: signed cleartext to bob, whose
        // key block was cut short). The whole keyring is read before that counts as no key.
        if !facts.is_empty() && matches!(chosen, Resolution::NoKey { .. }) {
            let listed: Vec<(String, Vec<String>)> = facts
                .iter()
                .map(|f| (f.fingerprint.clone(), f.keys.clone()))
                .collect();
            let addr = addr.to_string();
            refused_on("looking up a public key", move || {
                home::whole_keyring_problem(&home, deadline)
                    .or_else(|| home::unusable_keys_problem(&home, &addr, &listed, deadline))
            })
            .await?;
        }
        Ok(chosen)
    }

    /// The fingerprint of a secret key that can sign for `address`, if the keyring has one.
    pub async fn signer(&self, address: &str) -> Result<Option<String>, KeyError> {
        Ok(self.signer_or_refusal(address).await?.ok())
    }

    /// [`KeyService::signer`], or why there is none: each secret key the keyring has for the
    /// address with why it cannot sign (revoked, its signing subkey expired...), "" when it
    /// has none.
    pub async fn signer_or_refusal(
        &self,
        address: &str,
    ) -> Result<Result<String, String>, KeyError> {
        let addr = address.to_ascii_lowercase();
        if let Some(hit) = self.fresh_cache().secret.get(&addr) {
            return Ok(hit.clone());
        }
        let _miss = self
            .miss_lock(format!("secret {addr}"), "looking up a signing key")
            .await?;
        if let Some(hit) = self.fresh_cache().secret.get(&addr) {
            return Ok(hit.clone());
        }
        let who = addr.clone();
        let found = self
            .call(
                "looking up a signing key",
                Request::FindSigner { addr: who },
                |r| match r {
                    Response::Signer(found) => Ok(found),
                    other => Err(other),
                },
            )
            .await?;
        self.fresh_cache().secret.insert(addr, found.clone());
        Ok(found)
    }

    /// A detached, armored signature over `data` with the key `signer`.
    pub async fn sign_detached(&self, signer: &str, data: Vec<u8>) -> Result<Signature, KeyError> {
        let request = Request::SignDetached {
            signer: signer.to_string(),
            data,
        };
        self.call("signing", request, |r| match r {
            Response::Signature(signature) => Ok(signature),
            other => Err(other),
        })
        .await
    }

    /// Encrypts `data` to exactly the keys `recipients` (fingerprints), signing it in the same
    /// OpenPGP message when `signer` is given (RFC 3156 §6.2).
    pub async fn encrypt(
        &self,
        recipients: Vec<String>,
        signer: Option<String>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, KeyError> {
        let request = Request::Encrypt {
            recipients,
            signer,
            data,
        };
        self.call("encrypting", request, |r| match r {
            Response::Bytes(ciphertext) => Ok(ciphertext),
            other => Err(other),
        })
        .await
    }

    /// Encrypts `data` once for several copies, `copies[c]` the keys (fingerprints) of copy
    /// `c`, signing it in the same OpenPGP message when `signer` is given; each copy that may
    /// share it comes back armored, naming only its own keys, the others None (to encrypt on
    /// their own). `Refused` when gpg's message cannot be split that way (the caller encrypts
    /// each copy on its own then).
    pub async fn encrypt_shared(
        &self,
        copies: Vec<Vec<String>>,
        signer: Option<String>,
        data: Vec<u8>,
    ) -> Result<Vec<Option<Vec<u8>>>, KeyError> {
        let request = Request::EncryptShared {
            copies,
            signer,
            data,
        };
        self.call("encrypting", request, |r| match r {
            Response::Copies(copies) => Ok(copies),
            other => Err(other),
        })
        .await
    }

    /// The key data of `address`'s Autocrypt header from its key `fingerprint`: the five
    /// packets Autocrypt Level 1 names ([`autocrypt::keydata`]; the whole minimal export only
    /// when it cannot be read so), unarmored.
    pub async fn autocrypt_keydata(
        &self,
        fingerprint: &str,
        address: &str,
    ) -> Result<Vec<u8>, KeyError> {
        let cached = format!("{fingerprint} {address}");
        if let Some(hit) = self.fresh_cache().keydata.get(&cached) {
            return Ok(hit.clone());
        }
        let _miss = self
            .miss_lock(format!("keydata {cached}"), "exporting a key")
            .await?;
        if let Some(hit) = self.fresh_cache().keydata.get(&cached) {
            return Ok(hit.clone());
        }
        let fpr = fingerprint.to_string();
        let data = self
            .call(
                "exporting a key",
                Request::ExportMinimal { fingerprint: fpr },
                |r| match r {
                    Response::Bytes(data) => Ok(data),
                    other => Err(other),
                },
            )
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let data = autocrypt::keydata(&data, address, now).unwrap_or_else(|| {
            tracing::debug!(%fingerprint, "Autocrypt: the whole key goes (its packets were not read)");
            data
        });
        self.fresh_cache().keydata.insert(cached, data.clone());
        Ok(data)
    }

    /// Decrypts and verifies an OpenPGP message. Fails unless the data was integrity protected
    /// (a message without MDC is an error, never partial plaintext).
    pub async fn decrypt_verify(&self, ciphertext: Vec<u8>) -> Result<Decrypted, KeyError> {
        self.call(
            "decrypting",
            Request::DecryptVerify {
                ciphertext,
                max_plaintext: self.max_plaintext,
            },
            |r| match r {
                Response::Decrypted(decrypted) => Ok(decrypted),
                other => Err(other),
            },
        )
        .await
    }

    /// The key that has a (sub)key with this fingerprint: its own fingerprint and the
    /// addresses of its user IDs (empty when the key is not in the keyring).
    pub async fn signer_key(&self, fingerprint: &str) -> Result<SignerKey, KeyError> {
        if let Some(hit) = self.fresh_cache().signer_keys.get(fingerprint) {
            return Ok(hit.clone());
        }
        let key = fingerprint.to_string();
        let found = self.list_signer_key(fingerprint).await?;
        self.fresh_cache().signer_keys.insert(key, found.clone());
        Ok(found)
    }

    async fn list_signer_key(&self, fingerprint: &str) -> Result<SignerKey, KeyError> {
        let fingerprint = fingerprint.to_string();
        self.call(
            "looking up a signer's user IDs",
            Request::UserIds { fingerprint },
            |r| match r {
                Response::UserIds(ids) => Ok(ids),
                other => Err(other),
            },
        )
        .await
    }

    /// Verifies a detached signature over `signed`.
    pub async fn verify_detached(
        &self,
        signature: Vec<u8>,
        signed: Vec<u8>,
    ) -> Result<Vec<SignatureCheck>, KeyError> {
        self.verify(Request::VerifyDetached { signature, signed })
            .await
    }

    /// Verifies a cleartext-signed text (RFC 4880 §7: inline PGP's signed message).
    pub async fn verify_cleartext(&self, signed: Vec<u8>) -> Result<Vec<SignatureCheck>, KeyError> {
        self.verify(Request::VerifyCleartext { signed }).await
    }

    async fn verify(&self, request: Request) -> Result<Vec<SignatureCheck>, KeyError> {
        let checks = self
            .call("verifying", request, |r| match r {
                Response::Checks(checks) => Ok(checks),
                other => Err(other),
            })
            .await?;
        // A gpg that cannot read the keyring (a home or pubring.kbx that is not the user's, a
        // trust database it cannot make on a full or read-only file system: "Fatal: can't
        // create lock") reports no signature, or "no public key" for a signer whose key is
        // there, and GPGME no error (review: a valid signature stored as bad, or by an unknown
        // key, for good). The keyring is asked before either stands; its trouble is a
        // temporary failure.
        let unknown = checks
            .iter()
            .find(|c| matches!(c.state, SignatureState::UnknownKey));
        if checks.is_empty() || unknown.is_some() {
            let probe = unknown.map(|c| c.fingerprint.clone()).unwrap_or_default();
            let (home, deadline) = (self.home.clone(), self.deadline);
            // Unavailable, not Refused: a refusal by the verifier is the message's, for good.
            refused_on("verifying", move || {
                home::public_keyring_problem(&home, &probe, deadline)
            })
            .await
            .map_err(|e| match e {
                KeyError::Refused { op, detail } => KeyError::Unavailable { op, detail },
                other => other,
            })?;
        }
        Ok(checks)
    }
}

/// GnuPG's default home when none is configured, as gpg finds it: $GNUPGHOME (read, never
/// set) unless empty, else .gnupg in $HOME, or, without one, in the home directory of the
/// passwd entry (review: HOME unset made it ".gnupg" in whatever directory sealpost ran in).
pub(super) fn default_home() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    set("GNUPGHOME").map(PathBuf::from).unwrap_or_else(|| {
        set("HOME")
            .map(PathBuf::from)
            .or_else(|| crate::queue::passwd_entry(crate::queue::current_uid()).map(|(_, d)| d))
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".gnupg")
    })
}

/// Runs a keyring check (gpg run directly) off the async threads: a problem it finds refuses
/// `op` (a temporary failure, never "no key").
async fn refused_on(
    op: &'static str,
    check: impl FnOnce() -> Option<String> + Send + 'static,
) -> Result<(), KeyError> {
    let problem = tokio::task::spawn_blocking(check)
        .await
        .unwrap_or_else(|e| Some(format!("keyring check failed: {e}")));
    match problem {
        Some(detail) => Err(KeyError::Refused { op, detail }),
        None => Ok(()),
    }
}

/// Modification time and size of the keyring files: when any changes, cached lookups go.
fn keyring_stamp(home: &Path, with_trust: bool) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    // With `with_trust` (the lookup cache), the trust database, the TOFU database and
    // gpg.conf (its trust-model) too: they decide validity, which decides the key chosen
    // (review: a TOFU policy of bad went unseen for up to 10 minutes). Under a TOFU model gpg
    // writes tofu.db at every new signature it verifies, so the cache lasts one message there.
    // What can be decrypted does not depend on them (the retry of undecryptable messages,
    // whose own checks may rewrite the trust database: review).
    let trust: &[&str] = if with_trust {
        &["trustdb.gpg", "tofu.db", "gpg.conf"]
    } else {
        &[]
    };
    ["pubring.kbx", "pubring.gpg", "private-keys-v1.d"]
        .iter()
        .chain(trust)
        .map(|name| {
            let path = home.join(name);
            let meta = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path, meta)
        })
        .collect()
}

impl KeyService {
    /// Generates a key pair without passphrase for `userid` with GnuPG's `future-default`
    /// algorithms (ed25519 signing, cv25519 encryption subkey); returns its fingerprint. For
    /// the demo and tests: production keys are made by their owners.
    pub async fn generate_key(&self, userid: &str) -> Result<String, KeyError> {
        let request = Request::GenerateKey {
            userid: userid.to_string(),
        };
        self.call("generating a key", request, |r| match r {
            Response::Fingerprint(fingerprint) => Ok(fingerprint),
            other => Err(other),
        })
        .await
    }
}
