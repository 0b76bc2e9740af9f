//! Keys and GnuPG. Everything that touches gpg goes through [`KeyService`], which runs GPGME on
//! a bounded worker pool ([`worker`]) with a deadline on every operation, resolves exact
//! addresses to keys ([`resolve`] decides which key and says why others are refused) and caches
//! lookups until the keyring files change. [`home`] makes throwaway GnuPG homes (demo, tests).
//!
//! Trust: the keyring sealpost is pointed at is its trust anchor (as in the seed's
//! per-address key lookup); keys are used when they are valid for the exact address, and
//! encryption is done with always-trust because freshly imported keys have unknown validity.

pub mod home;
pub mod resolve;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpgme::{Context, EncryptFlags, ExportMode, KeyListMode};

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
}

fn to_err(op: &'static str) -> impl Fn(gpgme::Error) -> KeyError {
    move |source| KeyError::Gpg { op, source }
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
#[derive(Debug, Clone)]
pub struct Signature {
    pub armored: Vec<u8>,
    /// Hash algorithm name as GnuPG reports it (e.g. "SHA512").
    pub hash: String,
}

/// One signature found while verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    pub fingerprint: String,
    pub valid: bool,
    pub state: SignatureState,
}

/// What GnuPG said of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureState {
    Valid,
    /// The signer's public key is not in the keyring: nothing can be said either way.
    UnknownKey,
    /// Bad, or not valid for another reason (expired or revoked key...): GnuPG's words.
    Bad(String),
}

fn check(s: gpgme::results::Signature<'_>) -> SignatureCheck {
    let state = match s.status() {
        Ok(()) => SignatureState::Valid,
        Err(e) if e.code() == gpgme::Error::NO_PUBKEY.code() => SignatureState::UnknownKey,
        Err(e) => SignatureState::Bad(e.to_string()),
    };
    SignatureCheck {
        fingerprint: s.fingerprint().unwrap_or_default().to_string(),
        valid: state == SignatureState::Valid,
        state,
    }
}

/// The result of decrypting (and verifying) a message.
#[derive(Debug, Clone)]
pub struct Decrypted {
    pub plaintext: Vec<u8>,
    /// Key IDs the ciphertext was encrypted to.
    pub recipients: Vec<String>,
    pub signatures: Vec<SignatureCheck>,
}

#[derive(Default)]
struct Cache {
    stamp: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
    public: HashMap<String, Resolution>,
    secret: HashMap<String, Option<String>>,
    keydata: HashMap<String, Vec<u8>>,
    /// Signers' user-ID addresses by fingerprint: an import checks one per signed message,
    /// and a key listing is a gpg process of its own.
    user_ids: HashMap<String, Vec<String>>,
}

/// The one way into GnuPG: lookups (cached), signing, encryption, decryption.
pub struct KeyService {
    worker: GpgWorker,
    home: PathBuf,
    configured_home: Option<PathBuf>,
    sources: KeySources,
    cache: Mutex<Cache>,
    /// Held while a cache miss is looked up: a burst of messages for the same addresses (a
    /// queue run, a mailing) costs one gpg lookup per address, not one per message in flight.
    misses: tokio::sync::Mutex<()>,
}

impl KeyService {
    /// Starts the workers. `home` is the GnuPG home (None: GnuPG's default for this user).
    pub fn start(
        home: Option<PathBuf>,
        threads: usize,
        deadline: Duration,
        sources: KeySources,
    ) -> Self {
        let worker = GpgWorker::start(WorkerSettings {
            home: home.clone(),
            threads,
            queue: 64,
            deadline,
            auto_key_locate: sources.auto_key_locate(),
        });
        KeyService {
            worker,
            home: home.clone().unwrap_or_else(default_home),
            configured_home: home,
            sources,
            cache: Mutex::new(Cache::default()),
            misses: tokio::sync::Mutex::new(()),
        }
    }

    /// The GnuPG home in use.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Drops cached lookups when a keyring file changed since they were made.
    fn fresh_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        let stamp = keyring_stamp(&self.home);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.stamp != stamp {
            self.worker.invalidate();
            *cache = Cache {
                stamp,
                ..Cache::default()
            };
        }
        cache
    }

    /// A number that changes whenever the keyring files do (a key imported, deleted or
    /// changed): what the retry of undecryptable messages compares with its last try.
    pub fn keyring_state(&self) -> i64 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (path, meta) in keyring_stamp(&self.home) {
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
        i64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    /// Resolves an exact address to a public key usable for encryption.
    pub async fn resolve(&self, address: &str) -> Result<Resolution, KeyError> {
        let addr = address.to_ascii_lowercase();
        if let Some(hit) = self.fresh_cache().public.get(&addr) {
            return Ok(hit.clone());
        }
        let _miss = self.misses.lock().await;
        if let Some(hit) = self.fresh_cache().public.get(&addr) {
            return Ok(hit.clone());
        }
        let mut resolution = self.list_public(&addr).await?;
        if matches!(resolution, Resolution::NoKey { .. }) && self.sources.any_network() {
            let who = addr.clone();
            // Located keys are imported into the keyring (GPGME "auto-key-locate").
            let located = self
                .worker
                .run("locating a key", move |gpg| {
                    gpg.ctx
                        .set_key_list_mode(KeyListMode::LOCATE)
                        .map_err(to_err("locating a key"))?;
                    let found = gpg.ctx.locate_key(who.as_str());
                    gpg.ctx
                        .set_key_list_mode(KeyListMode::LOCAL)
                        .map_err(to_err("locating a key"))?;
                    // Only "nothing found" means no key. Any other failure (a keyserver or
                    // WKD error GnuPG reports) is a failed lookup: the plan defers, it never
                    // sends a cleartext copy for it.
                    match found {
                        Ok(_) => Ok(true),
                        Err(e)
                            if [
                                gpgme::Error::EOF.code(),
                                gpgme::Error::NOT_FOUND.code(),
                                gpgme::Error::NO_PUBKEY.code(),
                            ]
                            .contains(&e.code()) =>
                        {
                            Ok(false)
                        }
                        Err(e) => Err(to_err("locating a key")(e)),
                    }
                })
                .await?;
            if located {
                resolution = self.list_public(&addr).await?;
            }
        }
        // Logged once per fresh lookup, not on every cache hit.
        if let Resolution::Usable {
            fingerprint,
            others,
        } = &resolution
        {
            if *others > 0 {
                tracing::info!(rcpt = %addr, key = %fingerprint, others, "several usable keys: chose the newest");
            }
        }
        self.fresh_cache().public.insert(addr, resolution.clone());
        Ok(resolution)
    }

    async fn list_public(&self, addr: &str) -> Result<Resolution, KeyError> {
        let who = addr.to_string();
        let facts = self
            .worker
            .run("looking up a public key", move |gpg| {
                gpg.ctx
                    .set_key_list_mode(KeyListMode::LOCAL)
                    .map_err(to_err("looking up a public key"))?;
                list_facts(&mut gpg.ctx, &who)
            })
            .await?;
        Ok(resolve::choose(&facts))
    }

    /// The fingerprint of a secret key that can sign for `address`, if the keyring has one.
    pub async fn signer(&self, address: &str) -> Result<Option<String>, KeyError> {
        let addr = address.to_ascii_lowercase();
        if let Some(hit) = self.fresh_cache().secret.get(&addr) {
            return Ok(hit.clone());
        }
        let _miss = self.misses.lock().await;
        if let Some(hit) = self.fresh_cache().secret.get(&addr) {
            return Ok(hit.clone());
        }
        let who = addr.clone();
        let home = self.configured_home.clone();
        let found = self
            .worker
            .run("looking up a signing key", move |gpg| {
                let found = find_signer(&mut gpg.ctx, &who)?;
                if found.is_none() {
                    // Without its agent gpg lists no secret keys and GPGME reports no error.
                    // gpg itself says so on its status channel: ask it before answering "no
                    // secret key" (permanent) instead of "cannot tell now" (temporary).
                    if let Some(problem) = home::secret_keyring_problem(home.as_deref()) {
                        return Err(KeyError::Refused {
                            op: "looking up a signing key",
                            detail: problem,
                        });
                    }
                }
                Ok(found)
            })
            .await?;
        self.fresh_cache().secret.insert(addr, found.clone());
        Ok(found)
    }

    /// A detached, armored signature over `data` with the key `signer`.
    pub async fn sign_detached(&self, signer: &str, data: Vec<u8>) -> Result<Signature, KeyError> {
        let fpr = signer.to_string();
        self.worker
            .run("signing", move |gpg| {
                let key = gpg.key(&fpr, true).map_err(to_err("signing"))?;
                gpg.ctx.clear_signers();
                gpg.ctx.add_signer(&key).map_err(to_err("signing"))?;
                let mut out = Vec::new();
                let result = gpg
                    .ctx
                    .sign_detached(&data, &mut out)
                    .map_err(to_err("signing"))?;
                let sig = result.new_signatures().next().ok_or(KeyError::Refused {
                    op: "signing",
                    detail: "GnuPG made no signature".into(),
                })?;
                let hash = sig.hash_algorithm().name().unwrap_or("SHA256").to_string();
                Ok(Signature { armored: out, hash })
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
        self.worker
            .run("encrypting", move |gpg| {
                let mut keys = Vec::with_capacity(recipients.len());
                for fpr in &recipients {
                    keys.push(gpg.key(fpr, false).map_err(to_err("encrypting"))?);
                }
                let mut out = Vec::new();
                // Always-trust: the keyring is the trust anchor (see the module docs). No
                // hidden recipients and no default recipients: the ciphertext names exactly
                // these keys.
                let flags = EncryptFlags::ALWAYS_TRUST;
                match signer {
                    Some(fpr) => {
                        let key = gpg.key(&fpr, true).map_err(to_err("signing"))?;
                        gpg.ctx.clear_signers();
                        gpg.ctx.add_signer(&key).map_err(to_err("signing"))?;
                        let (enc, sign) = gpg
                            .ctx
                            .sign_and_encrypt_with_flags(&keys, &data, &mut out, flags)
                            .map_err(to_err("signing and encrypting"))?;
                        if enc.invalid_recipients().next().is_some()
                            || sign.invalid_signers().next().is_some()
                            || sign.new_signatures().next().is_none()
                        {
                            return Err(KeyError::Refused {
                                op: "signing and encrypting",
                                detail: "GnuPG refused a key".into(),
                            });
                        }
                    }
                    None => {
                        let enc = gpg
                            .ctx
                            .encrypt_with_flags(&keys, &data, &mut out, flags)
                            .map_err(to_err("encrypting"))?;
                        if enc.invalid_recipients().next().is_some() {
                            return Err(KeyError::Refused {
                                op: "encrypting",
                                detail: "GnuPG refused a recipient key".into(),
                            });
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The key `fingerprint` exported minimal and unarmored, for the Autocrypt header.
    pub async fn autocrypt_keydata(&self, fingerprint: &str) -> Result<Vec<u8>, KeyError> {
        if let Some(hit) = self.fresh_cache().keydata.get(fingerprint) {
            return Ok(hit.clone());
        }
        let _miss = self.misses.lock().await;
        if let Some(hit) = self.fresh_cache().keydata.get(fingerprint) {
            return Ok(hit.clone());
        }
        let fpr = fingerprint.to_string();
        let data = self
            .worker
            .run("exporting a key", move |gpg| {
                let key = gpg.key(&fpr, false).map_err(to_err("exporting a key"))?;
                let mut out = Vec::new();
                gpg.ctx.set_armor(false);
                let result = gpg.ctx.export_keys([&key], ExportMode::MINIMAL, &mut out);
                gpg.ctx.set_armor(true);
                result.map_err(to_err("exporting a key"))?;
                Ok(out)
            })
            .await?;
        self.fresh_cache()
            .keydata
            .insert(fingerprint.to_string(), data.clone());
        Ok(data)
    }

    /// Decrypts and verifies an OpenPGP message. Fails unless the data was integrity protected
    /// (a message without MDC is an error, never partial plaintext).
    pub async fn decrypt_verify(&self, ciphertext: Vec<u8>) -> Result<Decrypted, KeyError> {
        self.worker
            .run("decrypting", move |gpg| {
                let mut plaintext = Vec::new();
                let (dec, ver) = gpg
                    .ctx
                    .decrypt_and_verify(&ciphertext, &mut plaintext)
                    .map_err(to_err("decrypting"))?;
                if dec.is_legacy_cipher_no_mdc() {
                    return Err(KeyError::Refused {
                        op: "decrypting",
                        detail: "message has no integrity protection (MDC)".into(),
                    });
                }
                let recipients = dec
                    .recipients()
                    .map(|r| r.key_id().unwrap_or_default().to_string())
                    .collect();
                let signatures = ver.signatures().map(check).collect();
                Ok(Decrypted {
                    plaintext,
                    recipients,
                    signatures,
                })
            })
            .await
    }

    /// The e-mail addresses of the non-revoked user IDs of the key with this fingerprint
    /// (empty when the key is not in the keyring).
    pub async fn user_ids(&self, fingerprint: &str) -> Result<Vec<String>, KeyError> {
        if let Some(hit) = self.fresh_cache().user_ids.get(fingerprint) {
            return Ok(hit.clone());
        }
        let key = fingerprint.to_string();
        let ids = self.list_user_ids(fingerprint).await?;
        self.fresh_cache().user_ids.insert(key, ids.clone());
        Ok(ids)
    }

    async fn list_user_ids(&self, fingerprint: &str) -> Result<Vec<String>, KeyError> {
        let fingerprint = fingerprint.to_string();
        self.worker
            .run("looking up a signer's user IDs", move |gpg| {
                let Ok(key) = gpg.ctx.get_key(&fingerprint) else {
                    return Ok(Vec::new());
                };
                Ok(key
                    .user_ids()
                    .filter(|u| !u.is_revoked() && !u.is_invalid())
                    .filter_map(|u| u.email().ok().map(str::to_ascii_lowercase))
                    .filter(|e| !e.is_empty())
                    .collect())
            })
            .await
    }

    /// Verifies a detached signature over `signed`.
    pub async fn verify_detached(
        &self,
        signature: Vec<u8>,
        signed: Vec<u8>,
    ) -> Result<Vec<SignatureCheck>, KeyError> {
        self.worker
            .run("verifying", move |gpg| {
                let ver = gpg
                    .ctx
                    .verify_detached(&signature, &signed)
                    .map_err(to_err("verifying"))?;
                Ok(ver.signatures().map(check).collect())
            })
            .await
    }
}

/// The newest secret key with a usable signing subkey and a user ID of exactly `who`.
fn find_signer(ctx: &mut Context, who: &str) -> Result<Option<String>, KeyError> {
    let mut best: Option<(i64, String)> = None;
    let mut keys = ctx
        .find_secret_keys([format!("<{who}>")])
        .map_err(to_err("looking up a signing key"))?;
    for key in keys.by_ref() {
        let key = key.map_err(to_err("looking up a signing key"))?;
        if key.is_revoked() || key.is_expired() || key.is_disabled() || key.is_invalid() {
            continue;
        }
        let uid_ok = key
            .user_ids()
            .any(|u| u.email().is_ok_and(|e| e.eq_ignore_ascii_case(who)) && !u.is_revoked());
        let can_sign = key.subkeys().any(|s| {
            s.can_sign() && s.is_secret() && !s.is_revoked() && !s.is_expired() && !s.is_invalid()
        });
        if uid_ok && can_sign {
            let created = key
                .primary_key()
                .and_then(|p| p.creation_time())
                .map_or(0, epoch);
            let fpr = key.fingerprint().unwrap_or_default().to_string();
            if best.as_ref().is_none_or(|(c, _)| created > *c) {
                best = Some((created, fpr));
            }
        }
    }
    keys.finish().map_err(to_err("looking up a signing key"))?;
    Ok(best.map(|(_, f)| f))
}

fn epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Snapshots every key that has a user ID with exactly `addr` (a bare address search is a
/// substring match in GnuPG, hence `<addr>` and the exact comparison below).
fn list_facts(ctx: &mut Context, addr: &str) -> Result<Vec<KeyFacts>, KeyError> {
    let pattern = [format!("<{addr}>")];
    let mut keys = ctx
        .find_keys(pattern)
        .map_err(to_err("looking up a public key"))?;
    let mut facts = Vec::new();
    for key in keys.by_ref() {
        let key = key.map_err(to_err("looking up a public key"))?;
        let matching: Vec<_> = key
            .user_ids()
            .filter(|u| u.email().is_ok_and(|e| e.eq_ignore_ascii_case(addr)))
            .collect();
        if matching.is_empty() {
            continue;
        }
        facts.push(KeyFacts {
            fingerprint: key.fingerprint().unwrap_or_default().to_string(),
            created: key
                .primary_key()
                .and_then(|p| p.creation_time())
                .map_or(0, epoch),
            revoked: key.is_revoked(),
            expired: key.is_expired(),
            disabled: key.is_disabled(),
            invalid: key.is_invalid(),
            uid_revoked: matching.iter().all(|u| u.is_revoked() || u.is_invalid()),
            usable_encryption_subkey: key.subkeys().any(|s| {
                s.can_encrypt()
                    && !s.is_revoked()
                    && !s.is_expired()
                    && !s.is_invalid()
                    && !s.is_disabled()
            }),
        });
    }
    Ok(facts)
}

/// GnuPG's default home when none is configured: $GNUPGHOME (read, never set) or ~/.gnupg.
fn default_home() -> PathBuf {
    std::env::var_os("GNUPGHOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".gnupg")))
        .unwrap_or_else(|| PathBuf::from(".gnupg"))
}

/// Modification time and size of the keyring files: when any changes, cached lookups go.
fn keyring_stamp(home: &Path) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    [
        "pubring.kbx",
        "pubring.gpg",
        "trustdb.gpg",
        "private-keys-v1.d",
    ]
    .iter()
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
        let uid = userid.to_string();
        self.worker
            .run("generating a key", move |gpg| {
                let flags = gpgme::CreateKeyFlags::NOPASSWD | gpgme::CreateKeyFlags::NOEXPIRE;
                let result = gpg
                    .ctx
                    .create_key_with_flags(uid.as_str(), "future-default", Duration::ZERO, flags)
                    .map_err(to_err("generating a key"))?;
                Ok(result.fingerprint().unwrap_or_default().to_string())
            })
            .await
    }
}
