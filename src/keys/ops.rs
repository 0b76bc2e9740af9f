//! The GnuPG operations a worker runs, as data: a [`Request`] goes to a worker (a thread of
//! this process, or a `sealpost gpg-worker` process; see [`super::worker`]), [`execute`] runs
//! it on that worker's GPGME context, and a [`Response`] or a [`KeyError`] comes back. Being
//! data, both can cross a pipe; nothing here knows which kind of worker runs it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpgme::{Context, EncryptFlags, ExportMode, KeyListMode};
use serde::{Deserialize, Serialize};

use super::worker::Gpg;
use super::{
    home, Decrypted, KeyError, KeyFacts, Signature, SignatureCheck, SignatureState, SignerKey,
};

/// One operation for a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Look a key up on the network sources (WKD, keyserver) and import it.
    Locate {
        addr: String,
    },
    /// Every key with a user ID of exactly this address, as facts for [`super::resolve`].
    ListPublic {
        addr: String,
        /// Only keys with the secret of an encryption subkey here count as usable.
        #[serde(default)]
        own: bool,
    },
    /// The newest usable signing key for this address.
    FindSigner {
        addr: String,
    },
    SignDetached {
        signer: String,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Encrypt to exactly these fingerprints; sign in the same message when `signer` is set.
    Encrypt {
        recipients: Vec<String>,
        signer: Option<String>,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// One encryption for several copies: `copies[c]` are the fingerprints copy `c` is
    /// encrypted to; each comes back armored, with only its own keys' session key packets.
    EncryptShared {
        copies: Vec<Vec<String>>,
        signer: Option<String>,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// The key exported minimal and unarmored (Autocrypt).
    ExportMinimal {
        fingerprint: String,
    },
    DecryptVerify {
        #[serde(with = "bytes")]
        ciphertext: Vec<u8>,
        /// Most bytes of plaintext; decryption stops past it.
        max_plaintext: u64,
    },
    UserIds {
        fingerprint: String,
    },
    VerifyDetached {
        #[serde(with = "bytes")]
        signature: Vec<u8>,
        #[serde(with = "bytes")]
        signed: Vec<u8>,
    },
    /// A cleartext-signed text (RFC 4880 §7), from its BEGIN PGP SIGNED MESSAGE line to its
    /// END PGP SIGNATURE line.
    VerifyCleartext {
        #[serde(with = "bytes")]
        signed: Vec<u8>,
    },
    GenerateKey {
        userid: String,
    },
}

/// The slowest pace at which a request's message bytes are still waited for, on top of
/// `gnupg.timeout_secs`: a 55 MB ciphertext took a debug build's worker past 20 s (review:
/// deferred for good, kept undecryptable after an hour), where a hung agent with a small
/// message is still given up at the deadline.
const MIN_BYTES_PER_SEC: u64 = 1 << 20;

impl Request {
    /// The time on top of the deadline that the size of the request's message allows.
    pub fn size_allowance(&self) -> Duration {
        let bytes = match self {
            Request::SignDetached { data, .. }
            | Request::Encrypt { data, .. }
            | Request::EncryptShared { data, .. } => data.len(),
            Request::DecryptVerify { ciphertext, .. } => ciphertext.len(),
            Request::VerifyDetached { signed, .. } | Request::VerifyCleartext { signed } => {
                signed.len()
            }
            _ => 0,
        };
        Duration::from_secs(bytes as u64 / MIN_BYTES_PER_SEC)
    }

    /// The request's byte fields, which cross the worker's pipe beside its JSON.
    pub fn parts_mut(&mut self) -> Vec<&mut Vec<u8>> {
        match self {
            Request::SignDetached { data, .. }
            | Request::Encrypt { data, .. }
            | Request::EncryptShared { data, .. } => vec![data],
            Request::DecryptVerify { ciphertext, .. } => vec![ciphertext],
            Request::VerifyDetached { signature, signed } => vec![signature, signed],
            Request::VerifyCleartext { signed } => vec![signed],
            Request::Locate { .. }
            | Request::ListPublic { .. }
            | Request::FindSigner { .. }
            | Request::ExportMinimal { .. }
            | Request::UserIds { .. }
            | Request::GenerateKey { .. } => Vec::new(),
        }
    }
}

/// What a request gave; each request has one kind of answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Located(bool),
    Facts(Vec<KeyFacts>),
    /// The signing key, or why none: each secret key found for the address with why it
    /// cannot sign ("" when there is none).
    Signer(Result<String, String>),
    Signature(Signature),
    Bytes(#[serde(with = "bytes")] Vec<u8>),
    Copies(#[serde(with = "bytes_list")] Vec<Option<Vec<u8>>>),
    Decrypted(Decrypted),
    UserIds(SignerKey),
    Checks(Vec<SignatureCheck>),
    Fingerprint(String),
}

impl Response {
    /// The answer's byte fields, which cross the worker's pipe beside its JSON.
    pub fn parts_mut(&mut self) -> Vec<&mut Vec<u8>> {
        match self {
            Response::Signature(signature) => vec![&mut signature.armored],
            Response::Bytes(bytes) => vec![bytes],
            Response::Copies(copies) => copies.iter_mut().flatten().collect(),
            Response::Decrypted(decrypted) => vec![&mut decrypted.plaintext],
            Response::Located(_)
            | Response::Facts(_)
            | Response::Signer(_)
            | Response::UserIds(_)
            | Response::Checks(_)
            | Response::Fingerprint(_) => Vec::new(),
        }
    }

    /// The answer's kind did not match the request: a bug, reported as a failed operation
    /// rather than a panic in a mail path.
    pub fn unexpected(self, op: &'static str) -> KeyError {
        KeyError::Refused {
            op,
            detail: "the GnuPG worker answered with another kind of result".into(),
        }
    }
}

fn to_err(op: &'static str) -> impl Fn(gpgme::Error) -> KeyError {
    move |source| KeyError::Gpg { op, source }
}

/// Runs one request on a worker's context.
pub fn execute(gpg: &mut Gpg, request: Request) -> Result<Response, KeyError> {
    // Nothing is verified where gpg would fetch the signer's key as it verifies, nor
    // decrypted where it would hand out plaintext without integrity protection.
    if matches!(
        request,
        Request::DecryptVerify { .. }
            | Request::VerifyDetached { .. }
            | Request::VerifyCleartext { .. }
    ) {
        if let Some(problem) = home::verification_problem(gpg.home.as_deref()) {
            return Err(KeyError::Unavailable {
                op: if matches!(request, Request::DecryptVerify { .. }) {
                    "decrypting"
                } else {
                    "verifying"
                },
                detail: problem,
            });
        }
    }
    // Nothing is signed or decrypted through an agent that refuses loopback mode: every try
    // would fail, and not because of the key or the message.
    let secret = match &request {
        Request::FindSigner { .. } | Request::SignDetached { .. } => Some("signing"),
        Request::Encrypt { signer, .. } | Request::EncryptShared { signer, .. } => {
            signer.as_ref().map(|_| "signing")
        }
        Request::DecryptVerify { .. } => Some("decrypting"),
        Request::ListPublic { own: true, .. } => Some("looking up a public key"),
        Request::GenerateKey { .. } => Some("generating a key"),
        _ => None,
    };
    if let Some(op) = secret {
        if let Some(problem) = home::agent_problem(gpg.home.as_deref()) {
            return Err(KeyError::Unavailable {
                op,
                detail: problem,
            });
        }
    }
    match request {
        Request::Locate { addr } => locate(gpg, &addr).map(Response::Located),
        Request::ListPublic { addr, own } => {
            let mode = if own {
                KeyListMode::LOCAL | KeyListMode::WITH_SECRET
            } else {
                KeyListMode::LOCAL
            };
            gpg.ctx
                .set_key_list_mode(mode)
                .map_err(to_err("looking up a public key"))?;
            list_facts(&mut gpg.ctx, &addr, own).map(Response::Facts)
        }
        Request::FindSigner { addr } => {
            let found = find_signer(&mut gpg.ctx, &addr)?;
            if found.is_err() {
                // Without its agent gpg lists no secret keys and GPGME reports no error.
                // gpg itself says so on its status channel: ask it before answering "no
                // secret key" (permanent) instead of "cannot tell now" (temporary).
                // Nor when the public keyring is damaged: a secret key whose public key gpg
                // cannot read lists as none (review: one byte in alice's key block, and all
                // her mail refused for good, 550, instead of deferred).
                let problem = home::secret_keyring_problem(
                    gpg.home.as_deref(),
                    home::WORKER_LISTING_DEADLINE,
                )
                .or_else(|| {
                    let home = gpg.home.as_deref()?;
                    home::whole_keyring_problem(home, home::WORKER_LISTING_DEADLINE)
                })
                .or_else(|| unreadable_secret_key(&mut gpg.ctx, gpg.home.as_deref(), &addr));
                if let Some(problem) = problem {
                    return Err(KeyError::Refused {
                        op: "looking up a signing key",
                        detail: problem,
                    });
                }
            }
            Ok(Response::Signer(found))
        }
        Request::SignDetached { signer, data } => {
            sign_detached(gpg, &signer, &data).map(Response::Signature)
        }
        Request::Encrypt {
            recipients,
            signer,
            data,
        } => encrypt(gpg, &recipients, signer.as_deref(), &data).map(Response::Bytes),
        Request::EncryptShared {
            copies,
            signer,
            data,
        } => encrypt_shared(gpg, &copies, signer.as_deref(), &data).map(Response::Copies),
        Request::ExportMinimal { fingerprint } => {
            export_minimal(gpg, &fingerprint, "exporting a key").map(Response::Bytes)
        }
        Request::DecryptVerify {
            ciphertext,
            max_plaintext,
        } => decrypt_verify(gpg, &ciphertext, max_plaintext).map(Response::Decrypted),
        Request::UserIds { fingerprint } => {
            let Ok(key) = gpg.ctx.get_key(&fingerprint) else {
                return Ok(Response::UserIds(SignerKey::default()));
            };
            Ok(Response::UserIds(SignerKey {
                primary: key.fingerprint().unwrap_or_default().to_string(),
                addresses: key
                    .user_ids()
                    .filter(|u| !u.is_revoked() && !u.is_invalid())
                    .filter_map(|u| uid_address(&u).map(|a| a.to_ascii_lowercase()))
                    .filter(|e| !e.is_empty())
                    .collect(),
            }))
        }
        Request::VerifyDetached { signature, signed } => {
            let many = crate::message::parse::signature_packets(&signature, MAX_SIGNATURES);
            if many == usize::MAX {
                return Err(KeyError::Refused {
                    op: "verifying",
                    detail: "multipart/signed whose signature part holds no detached \
                             signature (compressed data)"
                        .into(),
                });
            }
            if many > MAX_SIGNATURES {
                return Err(KeyError::Refused {
                    op: "verifying",
                    detail: format!("more than {MAX_SIGNATURES} signatures in one part"),
                });
            }
            // gpg in batch mode stops at the first bad signature of several, and fails on
            // one it cannot read: those after it go unreported, and the verdict would hang on
            // their order (review: bad, then Alice's valid one, read "bad"; the other way
            // round, the bad one went unseen; a signature packet of a newer version next to
            // hers, "No data"). Each is then verified on its own.
            let mut named = false;
            let checks: Vec<SignatureCheck> = match gpg.ctx.verify_detached(&signature, &signed) {
                Ok(ver) => checks_of(gpg, &ver, &mut named),
                Err(e) if many < 2 || super::is_temporary(&e) => {
                    return Err(to_err("verifying")(e));
                }
                Err(_) => Vec::new(),
            };
            if checks.len() >= many || many < 2 {
                return Ok(Response::Checks(checks));
            }
            let mut each = Vec::new();
            for one in crate::message::parse::each_signature(&signature) {
                match gpg.ctx.verify_detached(&one, &signed) {
                    Ok(ver) => each.extend(checks_of(gpg, &ver, &mut named)),
                    Err(e) if super::is_temporary(&e) => return Err(to_err("verifying")(e)),
                    Err(e) => each.push(SignatureCheck {
                        fingerprint: String::new(),
                        valid: false,
                        state: SignatureState::Bad(format!("a signature gpg cannot read: {e}")),
                    }),
                }
            }
            Ok(Response::Checks(each))
        }
        Request::VerifyCleartext { signed } => {
            // As for a detached signature: a bounded number, checked before gpg runs (review:
            // 20,000 copies of one genuine signature outlasted the deadline on every try).
            const ARMOR: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
            let armor = signed
                .windows(ARMOR.len())
                .position(|w| w == ARMOR)
                .map_or(&[][..], |at| &signed[at..]);
            let many = crate::message::parse::signature_packets(armor, MAX_SIGNATURES);
            if many > MAX_SIGNATURES {
                return Err(KeyError::Refused {
                    op: "verifying",
                    detail: format!(
                        "more than {MAX_SIGNATURES} signatures in one cleartext signature"
                    ),
                });
            }
            let mut text = Vec::new();
            let mut named = false;
            match gpg.ctx.verify_opaque(&signed, &mut text) {
                Ok(ver) => Ok(Response::Checks(checks_of(gpg, &ver, &mut named))),
                Err(e) if super::is_temporary(&e) => Err(to_err("verifying")(e)),
                Err(e) => Ok(Response::Checks(vec![SignatureCheck {
                    fingerprint: String::new(),
                    valid: false,
                    state: SignatureState::Bad(format!("a signature gpg cannot read: {e}")),
                }])),
            }
        }
        Request::GenerateKey { userid } => {
            let flags = gpgme::CreateKeyFlags::NOPASSWD | gpgme::CreateKeyFlags::NOEXPIRE;
            let result = gpg
                .ctx
                .create_key_with_flags(userid.as_str(), "future-default", Duration::ZERO, flags)
                .map_err(to_err("generating a key"))?;
            Ok(Response::Fingerprint(
                result.fingerprint().unwrap_or_default().to_string(),
            ))
        }
    }
}

/// Located keys are imported into the keyring (GPGME "auto-key-locate").
fn locate(gpg: &mut Gpg, who: &str) -> Result<bool, KeyError> {
    gpg.ctx
        .set_key_list_mode(KeyListMode::LOCATE)
        .map_err(to_err("locating a key"))?;
    let found = gpg.ctx.locate_key(who);
    gpg.ctx
        .set_key_list_mode(KeyListMode::LOCAL)
        .map_err(to_err("locating a key"))?;
    // Only "nothing found" means no key. Any other failure (a keyserver or WKD error GnuPG
    // reports) is a failed lookup: the plan defers, it never sends a cleartext copy for it.
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
}

fn sign_detached(gpg: &mut Gpg, signer: &str, data: &[u8]) -> Result<Signature, KeyError> {
    let key = gpg.key(signer, true).map_err(to_err("signing"))?;
    gpg.ctx.clear_signers();
    gpg.ctx.add_signer(&key).map_err(to_err("signing"))?;
    let mut out = Vec::new();
    let result = refusing_passphrases(gpg, "signing", |ctx| ctx.sign_detached(data, &mut out))?;
    let sig = result.new_signatures().next().ok_or(KeyError::Refused {
        op: "signing",
        detail: "GnuPG made no signature".into(),
    })?;
    let hash = sig.hash_algorithm().name().unwrap_or("SHA256").to_string();
    Ok(Signature { armored: out, hash })
}

/// Runs `f` with a passphrase callback that refuses (sealpost has no passphrase to give) and
/// notes that a secret key asked: such a failure says why, rather than gpg's "General error"
/// (review: a sender key with a passphrase was deferred for good with that).
fn refusing_passphrases<T>(
    gpg: &mut Gpg,
    op: &'static str,
    f: impl FnOnce(&mut Context) -> gpgme::Result<T>,
) -> Result<T, KeyError> {
    let asked = std::sync::atomic::AtomicBool::new(false);
    let refuse = |request: gpgme::PassphraseRequest<'_>, _: &mut dyn std::io::Write| {
        if request.user_id_hint_raw().is_some_and(|h| !h.is_empty()) {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Err(gpgme::Error::NO_PASSPHRASE)
    };
    let result = gpg.ctx.with_passphrase_provider(refuse, f);
    match result {
        Err(_) if asked.into_inner() => Err(KeyError::Unavailable {
            op,
            detail: "the secret key cannot be used now: it has a passphrase, which sealpost \
                     cannot give (remove it with gpg --passwd, or keep the key unlocked in \
                     gpg-agent)"
                .into(),
        }),
        // gpg's own error says little ("Unusable secret key" when gpg-agent cannot start, the
        // same as for a key that expired since it was chosen): the agent and the secret
        // keyring are asked, and their trouble named when there is one (review).
        Err(e) => {
            match home::secret_keyring_problem(gpg.home.as_deref(), home::WORKER_LISTING_DEADLINE) {
                Some(problem) => Err(KeyError::Refused {
                    op,
                    detail: format!("{problem} ({e})"),
                }),
                None => Err(to_err(op)(e)),
            }
        }
        Ok(done) => Ok(done),
    }
}

/// Encrypts `data` once to the keys of the `copies` that may share an encryption and gives
/// each its own message: only the session key packets of its keys, in the order of its keys,
/// then the encrypted data they share (see [`crate::message::parse::split_by_recipient`]).
/// One gpg process instead of one per copy. Every copy's plaintext is the same, so sharing the
/// session key tells a reader nothing their own copy does not; a copy still names no key but
/// its own. A copy may share when every key of it ranks AES-256 first ([`prefers_aes256`]:
/// gpg picks one cipher for all the keys, and one key preferring an older one would give the
/// others it too; review); the others come back None, to be encrypted on their own. `Refused` ("cannot be split") when
/// the home's gpg.conf adds or hides recipients, when one key ID belongs to two of the keys
/// (a key can carry another's subkey, made up by its owner; review: matched by it, a Bcc
/// recipient's packet went into the copy of the key that carried it), or when gpg's output is
/// not what splitting needs; the caller then encrypts each copy on its own.
fn encrypt_shared(
    gpg: &mut Gpg,
    copies: &[Vec<String>],
    signer: Option<&str>,
    data: &[u8],
) -> Result<Vec<Option<Vec<u8>>>, KeyError> {
    let cannot = |why: String| KeyError::Refused {
        op: "encrypting",
        detail: format!("one encryption for several copies: {why}"),
    };
    if let Some(option) = recipients_from_gpg_conf(gpg.home.as_deref()) {
        return Err(cannot(format!("gpg.conf has {option}")));
    }
    let mut sharing = Vec::new();
    for (n, copy) in copies.iter().enumerate() {
        let mut strong = true;
        for fpr in copy {
            strong &= prefers_aes256(gpg, fpr)?;
        }
        if strong {
            sharing.push(n);
        }
    }
    let mut out = vec![None; copies.len()];
    if sharing.len() < 2 {
        return Ok(out);
    }
    let mut owners: std::collections::HashMap<[u8; 8], &str> = std::collections::HashMap::new();
    let mut all: Vec<String> = Vec::new();
    let mut key_ids = Vec::with_capacity(sharing.len());
    for &n in &sharing {
        let mut ids = Vec::with_capacity(copies[n].len());
        for fpr in &copies[n] {
            let key = gpg.key(fpr, false).map_err(to_err("encrypting"))?;
            // The subkeys gpg may encrypt to: one of these is the one it takes.
            let of_key: Vec<[u8; 8]> = key
                .subkeys()
                .filter(|k| {
                    k.can_encrypt()
                        && !k.is_expired()
                        && !k.is_revoked()
                        && !k.is_invalid()
                        && !k.is_disabled()
                })
                .filter_map(|k| k.id().ok().and_then(key_id_bytes))
                .collect();
            for id in &of_key {
                if owners.insert(*id, fpr.as_str()).is_some_and(|o| o != fpr) {
                    return Err(cannot(format!(
                        "the key ID {} belongs to two keys",
                        hex::encode_upper(id)
                    )));
                }
            }
            ids.push(of_key);
            if !all.contains(fpr) {
                all.push(fpr.clone());
            }
        }
        key_ids.push(ids);
    }
    gpg.ctx.set_armor(false);
    let binary = encrypt(gpg, &all, signer, data);
    gpg.ctx.set_armor(true);
    let binary = binary?;
    let split = crate::message::parse::split_by_recipient(&binary, &key_ids)
        .ok_or_else(|| cannot("gpg's message cannot be split by recipient".into()))?;
    for (&n, copy) in sharing.iter().zip(split) {
        out[n] = Some(crate::message::parse::armored_message(&copy));
    }
    Ok(out)
}

/// Whether every self-signature of the key `fpr` puts AES-256 first among the ciphers it
/// prefers, from its minimal export; remembered until the keyring changes. gpg picks for
/// several keys the cipher ranked best over all their lists (ties to the lower number, 3DES
/// is 2), and reads the primary user ID's list only: AES-256 merely listed, or a user ID
/// listing none (3DES alone to gpg), let one recipient bring the others to 3DES (review).
/// First in every list, and no cipher listed twice (gpg adds a cipher's rank once per
/// entry: AES-256 listed five times outweighed 3DES, which gpg adds after the list, and took
/// every copy to 3DES; third review), it ranks best for every key, whichever list gpg reads.
fn prefers_aes256(gpg: &mut Gpg, fpr: &str) -> Result<bool, KeyError> {
    if let Some(&strong) = gpg.strong_ciphers.get(fpr) {
        return Ok(strong);
    }
    let block = export_minimal(gpg, fpr, "encrypting")?;
    let strong = aes256_ranks_first(&crate::message::parse::preferred_ciphers(&block));
    gpg.strong_ciphers.insert(fpr.to_string(), strong);
    Ok(strong)
}

/// The key `fpr` exported minimal and unarmored; errors are `op`'s.
fn export_minimal(gpg: &mut Gpg, fpr: &str, op: &'static str) -> Result<Vec<u8>, KeyError> {
    let key = gpg.key(fpr, false).map_err(to_err(op))?;
    let mut out = Vec::new();
    gpg.ctx.set_armor(false);
    let result = gpg.ctx.export_keys([&key], ExportMode::MINIMAL, &mut out);
    gpg.ctx.set_armor(true);
    result.map_err(to_err(op))?;
    Ok(out)
}

/// Whether AES-256 is first in each of these preference lists, and no cipher is listed twice
/// in any (see [`prefers_aes256`]). No list at all: no.
fn aes256_ranks_first(lists: &[Vec<u8>]) -> bool {
    const AES256: u8 = 9;
    let once = |l: &Vec<u8>| l.iter().enumerate().all(|(n, c)| !l[..n].contains(c));
    !lists.is_empty() && lists.iter().all(|l| l.first() == Some(&AES256) && once(l))
}

/// The option of the home's gpg.conf that adds recipients to every encryption or hides them
/// (`encrypt-to`, `recipient`, `recipient-file`, their hidden forms, `throw-keyids`, a
/// `group` that may stand for a key): a message gpg makes then is for keys sealpost did not
/// name, and is not taken apart. Every gpg.conf file of the home is read (gpg 2.2.40 reads gpg.conf-2.2.40 first,
/// then gpg.conf-2.2, gpg.conf-2, gpg.conf; review: one of them was not looked at).
fn recipients_from_gpg_conf(home: Option<&Path>) -> Option<String> {
    gpg_conf_options(home)
        .into_iter()
        .find(|(option, _)| ADDING.iter().any(|a| a.eq_ignore_ascii_case(option)))
        .map(|(option, _)| option)
}

/// The options of the GnuPG home's gpg.conf files, each with the rest of its line; every
/// file whose name starts with gpg.conf, in name order (gpg 2.2.40 reads the first of
/// gpg.conf-2.2.40, gpg.conf-2.2, gpg.conf-2, gpg.conf that exists; all are read here, so that
/// none is missed).
fn gpg_conf_options(home: Option<&Path>) -> Vec<(String, String)> {
    let home = home.map_or_else(super::default_home, Path::to_path_buf);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&home)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|n| n.to_string_lossy().starts_with("gpg.conf"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut options = Vec::new();
    for name in names {
        let Ok(text) = std::fs::read_to_string(home.join(name)) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim_start();
            let end = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let option = line[..end].trim_start_matches("--").to_string();
            let rest = line[end..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
            options.push((option, rest.to_string()));
        }
    }
    options
}

/// A `group` of the home's gpg.conf named like one of `fingerprints`. sealpost names each key
/// to gpg by its fingerprint, and gpg puts a group's keys in place of a recipient named like
/// the group: such a group takes the key's place (review: `group BOBFPR=ERINFPR` sent Bob's
/// encrypt-only copy to Erin's key alone, logged as encrypted to Bob's). Names are compared
/// without case, a leading 0x ignored, so as to refuse rather than miss one.
fn group_in_place_of(home: Option<&Path>, fingerprints: &[String]) -> Option<String> {
    let bare = |s: &str| {
        let s = s.trim();
        s.strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s)
            .to_ascii_uppercase()
    };
    gpg_conf_options(home)
        .into_iter()
        .filter(|(option, _)| option.eq_ignore_ascii_case("group"))
        .filter_map(|(_, rest)| rest.split_once('=').map(|(name, _)| bare(name)))
        .find(|name| fingerprints.iter().any(|f| bare(f) == *name))
}

/// The gpg.conf options [`recipients_from_gpg_conf`] looks for.
const ADDING: &[&str] = &[
    "encrypt-to",
    "hidden-encrypt-to",
    "recipient",
    "hidden-recipient",
    "throw-keyids",
    "throw-keyid",
    "group",
    "recipient-file",
    "hidden-recipient-file",
];

/// A key ID as gpg lists it (16 hex digits) in bytes.
fn key_id_bytes(hex: &str) -> Option<[u8; 8]> {
    if hex.len() != 16 {
        return None;
    }
    let mut id = [0u8; 8];
    for (n, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * n..2 * n + 2)?, 16).ok()?;
    }
    Some(id)
}

fn encrypt(
    gpg: &mut Gpg,
    recipients: &[String],
    signer: Option<&str>,
    data: &[u8],
) -> Result<Vec<u8>, KeyError> {
    if let Some(group) = group_in_place_of(gpg.home.as_deref(), recipients) {
        // Temporary: the mail waits until the home is put right, never going to other keys.
        return Err(KeyError::Unavailable {
            op: "encrypting",
            detail: format!(
                "a gpg.conf of the GnuPG home defines group {group}, which gpg would use in \
                 place of that key; nothing was encrypted (remove or rename the group)"
            ),
        });
    }
    let mut keys = Vec::with_capacity(recipients.len());
    for fpr in recipients {
        keys.push(gpg.key(fpr, false).map_err(to_err("encrypting"))?);
    }
    let mut out = Vec::new();
    // Always-trust: the keyring is the trust anchor (see the module docs of keys). No hidden
    // recipients and no default recipients: the ciphertext names exactly these keys.
    let flags = EncryptFlags::ALWAYS_TRUST;
    match signer {
        Some(fpr) => {
            let key = gpg.key(fpr, true).map_err(to_err("signing"))?;
            gpg.ctx.clear_signers();
            gpg.ctx.add_signer(&key).map_err(to_err("signing"))?;
            let (enc, sign) = refusing_passphrases(gpg, "signing and encrypting", |ctx| {
                ctx.sign_and_encrypt_with_flags(&keys, data, &mut out, flags)
            })?;
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
                .encrypt_with_flags(&keys, data, &mut out, flags)
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
}

/// Most session key packets a message to decrypt may have. A message for a thousand readers
/// is rare; one with tens of thousands of garbled packets for the reader's key keeps gpg and
/// gpg-agent busy past any deadline (see [`crate::message::parse::session_key_packets`]),
/// and would come back on every try. 1,000 cost gpg about 1.7 s here.
pub const MAX_SESSION_KEYS: usize = 1000;

/// Most signatures a detached signature part may hold; a message has one or two.
pub const MAX_SIGNATURES: usize = 100;

/// Fails unless the data was integrity protected (a message without MDC is an error, never
/// partial plaintext), and stops at `limit` bytes of plaintext.
fn decrypt_verify(gpg: &mut Gpg, ciphertext: &[u8], limit: u64) -> Result<Decrypted, KeyError> {
    if crate::message::parse::session_key_packets(ciphertext, MAX_SESSION_KEYS) > MAX_SESSION_KEYS {
        return Err(KeyError::Refused {
            op: "decrypting",
            detail: format!(
                "more than {MAX_SESSION_KEYS} session key packets; gpg would try each one"
            ),
        });
    }
    // Before gpg, whose options may let it through (`ignore-mdc-error`; review: stored as
    // "encrypted" with its plaintext), and GPGME flags only legacy ciphers without MDC.
    if crate::message::parse::unprotected_encrypted_data(ciphertext) {
        return Err(KeyError::Refused {
            op: "decrypting",
            detail: "message has no integrity protection (MDC)".into(),
        });
    }
    let mut plaintext = Bounded {
        data: Vec::new(),
        limit,
        exceeded: false,
    };
    // A secret key with a passphrase asks for it (loopback mode): sealpost has none to give.
    let asked = std::sync::atomic::AtomicBool::new(false);
    let result = gpgme::Data::from_writer(&mut plaintext)
        .map_err(|e| to_err("decrypting")(e.error()))
        .and_then(|sink| {
            let refuse = |request: gpgme::PassphraseRequest<'_>, _: &mut dyn std::io::Write| {
                // Only a secret key's passphrase (it comes with a user ID hint) says the key
                // cannot be used now; a symmetric message's is the sender's, and stays an
                // undecryptable message (else a sender could hold up the sync for good).
                if request.user_id_hint_raw().is_some_and(|h| !h.is_empty()) {
                    asked.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(gpgme::Error::NO_PASSPHRASE)
            };
            gpg.ctx
                .with_passphrase_provider(refuse, |ctx| ctx.decrypt_and_verify(ciphertext, sink))
                .map_err(to_err("decrypting"))
        });
    if asked.into_inner() && result.is_err() {
        return Err(KeyError::Unavailable {
            op: "decrypting",
            detail: "the secret key cannot be used now: it has a passphrase, which sealpost \
                     cannot give (remove it with gpg --passwd, or keep the key unlocked in \
                     gpg-agent)"
                .into(),
        });
    }
    if plaintext.exceeded {
        // Whatever GPGME made of the refused write: the cause is the size.
        return Err(KeyError::Refused {
            op: "decrypting",
            detail: format!(
                "the plaintext is larger than {limit} bytes (gnupg.max_plaintext_bytes); \
                 decryption stopped there"
            ),
        });
    }
    let (dec, ver) = match result {
        Ok(done) => done,
        Err(KeyError::Gpg { op, source }) => {
            let detail = key_unusable_now(gpg, &source)
                .or_else(|| secret_key_here(gpg, &source, ciphertext))
                .or_else(|| public_keyring_lost(gpg, &source));
            return Err(match detail {
                Some(detail) => KeyError::Unavailable { op, detail },
                None => KeyError::Gpg { op, source },
            });
        }
        Err(other) => return Err(other),
    };
    let plaintext = plaintext.data;
    if dec.is_legacy_cipher_no_mdc() {
        return Err(KeyError::Refused {
            op: "decrypting",
            detail: "message has no integrity protection (MDC)".into(),
        });
    }
    // gpg also "decrypts" data that was only signed, or not encrypted at all: that must not
    // be reported as decrypted.
    if dec.recipients().next().is_none() {
        return Err(KeyError::Refused {
            op: "decrypting",
            detail: "the message is not encrypted to a public key".into(),
        });
    }
    let recipients = dec
        .recipients()
        .map(|r| r.key_id().unwrap_or_default().to_string())
        .collect();
    let signatures = checks_of(gpg, &ver, &mut false);
    Ok(Decrypted {
        plaintext,
        recipients,
        signatures,
    })
}

/// Why a decryption that failed says nothing about the message, when that is so: the secret
/// key could not be used now (a pinentry or smartcard problem), or gpg failed while the secret
/// keyring itself cannot be read (gpg-agent down or broken, the GnuPG home missing: a file
/// system not mounted yet). Such a message is tried again later, not kept as undecryptable
/// until the keyring changes. Any error is checked against the keyring: gpg reports a missing
/// home as a system error (ENOENT), not as a missing secret key.
fn key_unusable_now(gpg: &Gpg, error: &gpgme::Error) -> Option<String> {
    use gpgme::Error as E;
    // Not the passphrase errors: a symmetric message's passphrase is the sender's (a
    // secret key's passphrase request is recognised where it is asked).
    let now = [
        E::NO_PIN_ENTRY,
        E::PIN_ENTRY,
        E::CARD_NOT_PRESENT,
        E::CARD_REMOVED,
        E::NOT_LOCKED,
    ];
    if now.iter().any(|e| e.code() == error.code()) {
        return Some(format!("the secret key cannot be used now: {error}"));
    }
    home::secret_keyring_problem(gpg.home.as_deref(), home::WORKER_LISTING_DEADLINE)
        .map(|problem| format!("{error}, and the secret keyring cannot be read: {problem}"))
}

/// "No secret key" where the public keyring is damaged, or was cut or removed (it holds no
/// key while the trust database names keys): gpg finds the secret key through its public
/// key, so every message would seem to be for someone else (review: stored undecryptable at
/// once with the keybox cut to its header, where outgoing mail was deferred). Said, to be
/// tried again once the keyring is mended. The check of the whole keyring is remembered
/// while its files stay as they are.
fn public_keyring_lost(gpg: &Gpg, error: &gpgme::Error) -> Option<String> {
    if error.code() != gpgme::Error::NO_SECKEY.code() {
        return None;
    }
    let home = gpg.home.clone().unwrap_or_else(super::default_home);
    home::whole_keyring_problem(&home, home::WORKER_LISTING_DEADLINE)
        .map(|problem| format!("{error}, and {problem}"))
}

/// "No secret key" for a message encrypted to a key whose secret key file is in the home's
/// `private-keys-v1.d`: gpg could not use it now (gpg-agent killed mid-operation, or one that
/// hung up: review, such messages stayed undecryptable until the keyring changed, long after
/// the agent was back). Said when so, to be tried again later. The key file is looked for by
/// the keygrip of the public subkey the message names (a listing of public keys, which needs
/// no agent; one of secret keys asks the agent, the one that failed). A hidden recipient (key
/// ID 0) names none.
fn secret_key_here(gpg: &mut Gpg, error: &gpgme::Error, ciphertext: &[u8]) -> Option<String> {
    if error.code() != gpgme::Error::NO_SECKEY.code() {
        return None;
    }
    let dir = secret_key_dir(gpg.home.as_deref());
    let ids = crate::message::parse::session_key_ids(ciphertext, MAX_SESSION_KEYS);
    // One listing for all of them (review: one per packet, up to a thousand, could outlast
    // the deadline).
    let mut ids: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| id.bytes().any(|b| b != b'0'))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return None;
    }
    let (id, file) = with_keygrips(&mut gpg.ctx, |ctx| {
        ctx.find_keys(ids.iter().copied())
            .ok()?
            .flatten()
            .flat_map(|key| {
                key.subkeys()
                    .filter_map(|sub| {
                        let named = ids
                            .iter()
                            .find(|i| sub.id().is_ok_and(|id| i.eq_ignore_ascii_case(id)))?;
                        let file = dir.join(format!("{}.key", sub.keygrip().ok()?));
                        file.is_file().then(|| (named.to_string(), file))
                    })
                    .collect::<Vec<_>>()
            })
            .next()
    })?;
    // A file gpg-agent cannot read (left root's by `sudo gpg --import` into a service's
    // home) is said as such: the administrator's to fix, then the message decrypts (review:
    // the agent was blamed).
    Some(match std::fs::File::open(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "{error}: the secret key file {} of {id}, which the message is encrypted to, \
             cannot be read: {e}",
            file.display()
        ),
        _ => format!(
            "{error}, though the secret key file of {id}, which the message is encrypted to, \
             is in {}: gpg-agent could not use it now",
            dir.display()
        ),
    })
}

/// Plaintext output that refuses to grow past `limit` bytes.
struct Bounded {
    data: Vec<u8>,
    limit: u64,
    exceeded: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() as u64 + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("plaintext size limit"));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The checks of a verification, the first signature gpg found bad (BADSIG: checked against
/// its key, and it does not match) named by its key's fingerprint ([`name_bad_signer`]) unless
/// `named` says one was already. One lookup at most: each is a gpg process, and a message may
/// carry thousands of signatures (review: 500 bad ones made 500 key listings, past the
/// deadline at every retry). Other failures (an unknown algorithm, a signature gpg cannot
/// read) keep what gpg reported: their key was never checked.
fn checks_of(
    gpg: &mut Gpg,
    ver: &gpgme::VerificationResult,
    named: &mut bool,
) -> Vec<SignatureCheck> {
    let mut bad = None;
    let mut checks = Vec::new();
    for (i, s) in ver.signatures().enumerate() {
        let gpgs_badsig = s
            .status()
            .is_err_and(|e| e.code() == gpgme::Error::BAD_SIGNATURE.code());
        if gpgs_badsig && bad.is_none() {
            bad = Some(i);
        }
        // When the key has expired, or the signature says it was made in the future (past
        // an expiry still to come, it is not the key's either: review, such a signature was
        // "valid" until the expiry came, then "bad"): when was the signature made?
        let made = s.creation_time().filter(|made| {
            s.status()
                .is_err_and(|e| e.code() == gpgme::Error::KEY_EXPIRED.code())
                || *made > SystemTime::now()
        });
        let mut check = check(s);
        if let Some(made) = made {
            if let Some(expired) = expired_before(gpg, &check.fingerprint, made) {
                check.state = SignatureState::Bad(format!(
                    "made {} after the key expired",
                    days_between(expired, made)
                ));
            }
        }
        checks.push(check);
    }
    if let Some(i) = bad.filter(|_| !*named) {
        name_bad_signer(gpg, &mut checks[i]);
        *named = true;
    }
    checks
}

/// When the key that made a signature at `made` (the signing subkey of `fingerprint`, or its
/// primary key) had expired already: gpg's "Good signature... This key has expired" is said
/// of every signature by an expired key, also of one made after it expired, when the key
/// could no longer sign (RFC 9580 §5.2.3.13: it is not valid after its expiration time).
/// Such a signature is anyone's who holds an abandoned key, not an old message read late
/// (review: one made 14 days after was "expired", as one made while the key was valid).
/// The key's current self-signature decides, as in gpg: an extended expiry counts.
fn expired_before(gpg: &mut Gpg, fingerprint: &str, made: SystemTime) -> Option<SystemTime> {
    let key = gpg
        .ctx
        .find_keys([fingerprint])
        .ok()?
        .find_map(Result::ok)?;
    let subkey = key.subkeys().find(|k| {
        k.fingerprint()
            .is_ok_and(|f| f.eq_ignore_ascii_case(fingerprint))
    })?;
    [
        subkey.expiration_time(),
        key.primary_key()?.expiration_time(),
    ]
    .into_iter()
    .flatten()
    .filter(|expired| made > *expired)
    .min()
}

/// "N days" (or "less than a day") from `from` to `to`.
fn days_between(from: SystemTime, to: SystemTime) -> String {
    match to.duration_since(from).map_or(0, |d| d.as_secs() / 86_400) {
        0 => "less than a day".into(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    }
}

/// For a bad signature gpg names only the signing key's 64-bit key ID (its BADSIG status
/// line), where every other verdict names the key's fingerprint: the ID is looked up in the
/// keyring, and one key that has a (sub)key of that ID gives that (sub)key's fingerprint, as
/// a valid signature by it would show. Not found, or the ID under two keys: the ID stays.
fn name_bad_signer(gpg: &mut Gpg, check: &mut SignatureCheck) {
    let is_key_id =
        check.fingerprint.len() == 16 && check.fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_key_id {
        return;
    }
    let Ok(mut keys) = gpg.ctx.find_keys([check.fingerprint.as_str()]) else {
        return;
    };
    let found: Vec<String> = keys
        .by_ref()
        .filter_map(Result::ok)
        .filter_map(|key| {
            key.subkeys()
                .find(|k| {
                    k.id()
                        .is_ok_and(|id| id.eq_ignore_ascii_case(&check.fingerprint))
                })
                .and_then(|k| k.fingerprint().ok().map(str::to_string))
        })
        .collect();
    if let [fingerprint] = found.as_slice() {
        check.fingerprint = fingerprint.clone();
    }
}

fn check(s: gpgme::results::Signature<'_>) -> SignatureCheck {
    let state = match s.status() {
        Ok(()) => SignatureState::Valid,
        Err(e) if e.code() == gpgme::Error::NO_PUBKEY.code() => SignatureState::UnknownKey,
        Err(e) if e.code() == gpgme::Error::KEY_EXPIRED.code() => {
            SignatureState::Expired("key expired".into())
        }
        Err(e) if e.code() == gpgme::Error::SIG_EXPIRED.code() => {
            SignatureState::Expired("signature expired".into())
        }
        Err(e) => SignatureState::Bad(e.to_string()),
    };
    SignatureCheck {
        fingerprint: s.fingerprint().unwrap_or_default().to_string(),
        valid: state == SignatureState::Valid,
        state,
    }
}

/// The newest secret key with a usable signing subkey and a user ID of exactly `who`.
/// Why a secret key the keyring has for `who` cannot be used now: its signing subkey's file in
/// `private-keys-v1.d` exists but cannot be read (left root's by `sudo gpg --import` into a
/// service's home). gpg-agent then answers "no such key" and gpg lists no secret key, without
/// an error (review: taken for "no secret key", 550, or the default signer signed instead).
fn unreadable_secret_key(ctx: &mut Context, home: Option<&Path>, who: &str) -> Option<String> {
    let dir = secret_key_dir(home);
    with_keygrips(ctx, |ctx| unreadable_key_file(ctx, &dir, who))
}

/// Where gpg-agent keeps the secret key files of `home` (the default home when None), one
/// per keygrip.
fn secret_key_dir(home: Option<&Path>) -> std::path::PathBuf {
    home.map_or_else(super::default_home, Path::to_path_buf)
        .join("private-keys-v1.d")
}

/// `f` over `ctx` with local key listings that carry keygrips, the listing mode restored
/// after.
fn with_keygrips<T>(ctx: &mut Context, f: impl FnOnce(&mut Context) -> Option<T>) -> Option<T> {
    let mode = ctx.key_list_mode();
    ctx.set_key_list_mode(KeyListMode::LOCAL | KeyListMode::WITH_KEYGRIP)
        .ok()?;
    let found = f(ctx);
    let _ = ctx.set_key_list_mode(mode);
    found
}

/// [`unreadable_secret_key`]'s search, with keygrips listed. A key file that can be read but
/// whose secret gpg does not list (truncated, garbage: gpg shows `sec#`) cannot be used
/// either (review: taken for "no secret key", 550, or the default signer signed the
/// sender's mail); a key that is listed with its secret and not chosen (expired, revoked)
/// is not this.
fn unreadable_key_file(ctx: &mut Context, dir: &Path, who: &str) -> Option<String> {
    let listed_secret: Vec<String> = ctx
        .find_secret_keys(address_patterns(who))
        .ok()?
        .flatten()
        .flat_map(|key| {
            key.subkeys()
                .filter(|s| s.is_secret())
                .filter_map(|s| s.keygrip().ok().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut keys = ctx.find_keys(address_patterns(who)).ok()?;
    for key in keys.by_ref().flatten() {
        for sub in key.subkeys().filter(|s| s.can_sign()) {
            let Ok(grip) = sub.keygrip() else { continue };
            let path = dir.join(format!("{grip}.key"));
            match std::fs::File::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Some(format!(
                        "the secret key file {} cannot be read: {e}",
                        path.display()
                    ));
                }
                Ok(_) if !listed_secret.iter().any(|g| g == grip) => {
                    return Some(format!(
                        "the secret key file {} is there, but gpg-agent cannot use it \
                         (damaged?)",
                        path.display()
                    ));
                }
                _ => {}
            }
        }
    }
    None
}

/// The newest usable secret key for `who` among the most valid (as [`super::resolve::choose`]
/// chooses a recipient's key, so that encrypt_to_self's key is the signing one; review).
/// None usable: each secret key of that address with why it cannot sign (review: "no usable
/// secret key" for a key whose signing subkey had expired, which `gpg -K` lists).
fn find_signer(ctx: &mut Context, who: &str) -> Result<Result<String, String>, KeyError> {
    let mut best: Option<((super::resolve::Validity, i64), String)> = None;
    let mut refused: Vec<String> = Vec::new();
    let mut keys = ctx
        .find_secret_keys(address_patterns(who))
        .map_err(to_err("looking up a signing key"))?;
    for key in keys.by_ref() {
        let key = key.map_err(to_err("looking up a signing key"))?;
        let fpr = key.fingerprint().unwrap_or_default().to_string();
        let with_address: Vec<_> = key
            .user_ids()
            .filter(|u| uid_address(u).is_some_and(|e| same_address(e, who)))
            .collect();
        if with_address.is_empty() {
            continue;
        }
        let matching: Vec<_> = with_address.iter().filter(|u| !u.is_revoked()).collect();
        // As for encryption: not one made in the future, which gpg refuses to use.
        let signing: Vec<_> = key.subkeys().filter(|s| s.can_sign()).collect();
        let usable = |s: &gpgme::Subkey<'_>| {
            s.is_secret()
                && !s.is_revoked()
                && !s.is_expired()
                && !s.is_invalid()
                && s.creation_time().is_none_or(|t| t <= SystemTime::now())
        };
        let validity = matching
            .iter()
            .map(|u| uid_validity(u))
            .max()
            .unwrap_or_default();
        let why = if key.is_revoked() {
            Some("revoked")
        } else if key.is_expired() {
            Some("expired")
        } else if key.is_disabled() {
            Some("disabled")
        } else if key.is_invalid() {
            Some("invalid")
        } else if matching.is_empty() {
            Some("user ID revoked")
        } else if !signing.iter().any(usable) {
            Some(signing_subkeys_gone(&signing))
        } else if validity == super::resolve::Validity::Never {
            Some("marked as not to be trusted in the keyring")
        } else {
            None
        };
        if let Some(why) = why {
            refused.push(format!("key {fpr} {why}"));
            continue;
        }
        let created = key
            .primary_key()
            .and_then(|p| p.creation_time())
            .map_or(0, epoch);
        let rank = (validity, created);
        // Ties to the lowest fingerprint, as [`super::resolve::choose`] breaks them.
        if best
            .as_ref()
            .is_none_or(|(r, f)| rank > *r || rank == *r && fpr < *f)
        {
            best = Some((rank, fpr));
        }
    }
    keys.finish().map_err(to_err("looking up a signing key"))?;
    // A few, so that the SMTP reply that names them stays one line of 512 octets.
    let more = refused.len().saturating_sub(3);
    refused.truncate(3);
    if more > 0 {
        refused.push(format!("and {more} more"));
    }
    Ok(best.map(|(_, f)| f).ok_or_else(|| refused.join("; ")))
}

/// Why none of a key's signing subkeys (`signing`, those that can sign) can sign here.
fn signing_subkeys_gone(signing: &[gpgme::Subkey<'_>]) -> &'static str {
    let secret = || signing.iter().filter(|s| s.is_secret());
    if signing.is_empty() {
        "no signing subkey"
    } else if secret().next().is_none() {
        "no secret key for its signing subkey here"
    } else if secret().all(|s| s.is_revoked()) {
        "signing subkey revoked"
    } else if secret().all(|s| s.is_revoked() || s.is_expired()) {
        "signing subkey expired"
    } else {
        "no usable signing subkey"
    }
}

fn epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Snapshots every key that has a user ID with exactly `addr` (a bare address search is a
/// substring match in GnuPG, hence `<addr>` and the exact comparison below).
/// The search patterns for `addr`: its domain as written, as IDNA ASCII and as Unicode, so
/// that a key whose UID has `bob@xn--bcher-kva.de` is found for `bob@bücher.de` and the
/// other way round, as policies and duplicate checks already take them for one mailbox
/// (review: a recipient in the other spelling got cleartext).
/// GnuPG compares addresses in ASCII case only: for a local part with other letters, every
/// key of the domain is listed (`@domain`, a substring search) and the exact comparison below
/// folds the case as Postfix does (`Jörg@` is the mailbox of `JÖRG@` and `jörg@`).
pub(crate) fn address_patterns(addr: &str) -> Vec<String> {
    let mut spellings = vec![addr.to_string()];
    let mut patterns = Vec::new();
    if let Some((local, domain)) = addr.rsplit_once('@') {
        let ascii = crate::rewrite::policy::canonical_domain(domain);
        let (unicode, _) = idna::domain_to_unicode(&ascii);
        for d in [ascii, unicode] {
            let spelling = format!("{local}@{d}");
            if !spellings.iter().any(|s| s.eq_ignore_ascii_case(&spelling)) {
                spellings.push(spelling);
            }
            let whole_domain = format!("@{d}");
            if !local.is_ascii() && !patterns.contains(&whole_domain) {
                patterns.push(whole_domain);
            }
        }
    }
    spellings
        .into_iter()
        .map(|s| format!("<{s}>"))
        .chain(patterns)
        .collect()
}

/// A user ID's address: its `<...>` part as written, else the address GPGME reads from a user
/// ID that is an address alone. GPGME gives no email for `Mixed@example.org` (only
/// `mixed@example.org` as its address; a lower-case one it gives as both): such a key was
/// never found, and since gpg did list it, the keyring was taken for broken (451 for the
/// whole message, for good; review).
fn uid_address<'a>(u: &'a gpgme::UserId<'_>) -> Option<&'a str> {
    u.email()
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| u.address().ok())
        .filter(|a| !a.is_empty())
}

/// Whether a UID's address is `addr`, the domain compared in IDNA ASCII, the local part
/// case-folded as Postfix folds it.
fn same_address(uid_address: &str, addr: &str) -> bool {
    uid_address.eq_ignore_ascii_case(addr)
        || crate::rewrite::policy::canonical_address(uid_address)
            == crate::rewrite::policy::canonical_address(addr)
}

/// A subkey gpg would encrypt to: not revoked, expired, invalid or disabled, and not made in
/// the future (a clock that was wrong when it was made): gpg refuses such a subkey, and the
/// copy was deferred for good while an older usable key was there (review).
fn usable_for_encryption(s: gpgme::Subkey<'_>) -> bool {
    s.can_encrypt()
        && !s.is_revoked()
        && !s.is_expired()
        && !s.is_invalid()
        && !s.is_disabled()
        && s.creation_time()
            .is_none_or(|t| t <= std::time::SystemTime::now())
}

/// GnuPG's validity of a user ID, as [`super::resolve::Validity`].
fn uid_validity(u: &gpgme::UserId<'_>) -> super::resolve::Validity {
    use super::resolve::Validity;
    match u.validity() {
        gpgme::Validity::Never => Validity::Never,
        gpgme::Validity::Marginal => Validity::Marginal,
        gpgme::Validity::Full => Validity::Full,
        gpgme::Validity::Ultimate => Validity::Ultimate,
        gpgme::Validity::Unknown | gpgme::Validity::Undefined => Validity::Unknown,
    }
}

fn list_facts(ctx: &mut Context, addr: &str, own: bool) -> Result<Vec<KeyFacts>, KeyError> {
    let mut keys = ctx
        .find_keys(address_patterns(addr))
        .map_err(to_err("looking up a public key"))?;
    let mut facts = Vec::new();
    for key in keys.by_ref() {
        let key = key.map_err(to_err("looking up a public key"))?;
        let matching: Vec<_> = key
            .user_ids()
            .filter(|u| uid_address(u).is_some_and(|e| same_address(e, addr)))
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
            usable_encryption_subkey: key.subkeys().any(usable_for_encryption),
            encryption_subkey_expired: key.subkeys().any(|s| s.can_encrypt() && s.is_expired()),
            encryption_subkey_revoked: key.subkeys().any(|s| s.can_encrypt() && s.is_revoked()),
            no_secret: own
                && !key
                    .subkeys()
                    .any(|s| usable_for_encryption(s) && (s.is_secret() || s.is_card_key())),
            validity: matching
                .iter()
                .filter(|u| !u.is_revoked() && !u.is_invalid())
                .map(uid_validity)
                .max()
                .unwrap_or_default(),
            keys: key
                .subkeys()
                .filter_map(|s| s.fingerprint().ok().map(str::to_string))
                .collect(),
        });
    }
    // gpg's own failure (a home it cannot read, a keyring it cannot open) ends the listing
    // early with no key: it is a failed lookup, never "no key".
    keys.finish().map_err(to_err("looking up a public key"))?;
    Ok(facts)
}

/// Byte strings as base64 in JSON. The worker's pipe carries the fields `parts_mut` names
/// beside the JSON, so they are empty there; as a JSON array of numbers, a byte string would
/// be four times its size and slow to parse (a decrypted 21 MB message was: 244 MB of memory
/// and 12 s in `deliver`, debug build, for gpg's 0.3 s).
pub(super) mod bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A list of byte strings or nothing, each as [`bytes`] writes one (nothing: null).
mod bytes_list {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(data.iter().map(|d| {
            d.as_ref()
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
        let texts = <Vec<Option<std::borrow::Cow<'de, str>>>>::deserialize(d)?;
        texts
            .iter()
            .map(|text| {
                text.as_ref()
                    .map(|text| {
                        base64::engine::general_purpose::STANDARD
                            .decode(text.as_bytes())
                            .map_err(serde::de::Error::custom)
                    })
                    .transpose()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_gets_time_for_its_size() {
        let decrypt = |n: usize| Request::DecryptVerify {
            ciphertext: vec![0; n],
            max_plaintext: 1 << 26,
        };
        assert_eq!(decrypt(10_000).size_allowance(), Duration::ZERO);
        assert_eq!(
            decrypt(55_000_000).size_allowance(),
            Duration::from_secs(52)
        );
        let sign = Request::SignDetached {
            signer: "F".into(),
            data: vec![0; 3 << 20],
        };
        assert_eq!(sign.size_allowance(), Duration::from_secs(3));
        let lookup = Request::FindSigner { addr: "a@b".into() };
        assert_eq!(lookup.size_allowance(), Duration::ZERO);
    }

    #[test]
    fn aes256_must_rank_first_in_every_list_and_be_listed_once() {
        // GnuPG 2.2's defaults: AES256 AES192 AES CAST5 3DES.
        assert!(aes256_ranks_first(&[vec![9, 8, 7, 3, 2]]));
        assert!(aes256_ranks_first(&[vec![9, 7], vec![9]]));
        for weak in [
            vec![],
            vec![vec![]],
            vec![vec![2]],
            vec![vec![2, 9]],
            vec![vec![9, 8], vec![7, 9]],
            // Listed again and again, AES-256 outweighs the 3DES gpg adds after the list.
            vec![vec![9, 9, 9, 9, 9]],
            vec![vec![9, 2, 9]],
        ] {
            assert!(!aes256_ranks_first(&weak), "{weak:?}");
        }
    }
}
