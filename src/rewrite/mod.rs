//! The rewrite core: `(envelope, message, policy, keys) -> one copy per recipient, or a
//! rejection`. Every outgoing front-end (milter, sendmail drop-in, `sealpost rewrite`) calls
//! [`Rewriter::rewrite`] and nothing else.
//!
//! Flow: parse the message → validate recipients → look keys up (cached) → [`plan::plan`]
//! decides per recipient → the content entity is made canonical once → one signature per kind
//! of payload (encrypted copies share one, signed cleartext copies another) → one encryption
//! per recipient, two at a time on the GnuPG workers → copies.
//!
//! Never cleartext by accident: a copy is only produced for the decision the plan made; any
//! failure while building an encrypted copy turns that recipient into a temporary failure.

pub mod plan;
pub mod policy;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use crate::keys::{KeyError, KeyService, Resolution};
use crate::message::canonical::{content_entity, ContentEntity};
use crate::message::mime::{self, Protection};
use crate::message::parse::{assemble, without_bcc};
use crate::message::{HeaderField, MessageError, ParsedMessage};
pub use plan::{Lookup, Plan, Recipient, Reply, Step};
pub use policy::{EncryptedForm, Mode, Policy};

/// The SMTP envelope of a message, and an identifier (queue id) for the logs.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
}

/// What happened for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    Encrypted {
        fingerprint: String,
    },
    /// `reason`: why there was no key to encrypt to ([`Resolution::reason`]).
    Signed {
        reason: String,
    },
    Clear {
        reason: String,
    },
    PassThrough,
    Rejected {
        reply: Reply,
    },
    Deferred {
        reply: Reply,
    },
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Encrypted { .. } => "encrypted",
            Decision::Signed { .. } => "signed",
            Decision::Clear { .. } => "clear",
            Decision::PassThrough => "pass-through",
            Decision::Rejected { .. } => "rejected",
            Decision::Deferred { .. } => "deferred",
        }
    }

    /// The key fingerprint or the reason, for the one-line summary.
    pub fn detail(&self) -> String {
        match self {
            Decision::Encrypted { fingerprint } => fingerprint.clone(),
            Decision::Rejected { reply } | Decision::Deferred { reply } => reply.to_string(),
            // The reason names a key found and refused (review: an expired key's copy went
            // out signed in clear with "no usable key" alone, also in the debug log).
            Decision::Signed { reason } => format!("{reason}: signed cleartext"),
            Decision::Clear { reason } => format!("{reason}, signing off: cleartext"),
            Decision::PassThrough => "already encrypted by the sender".into(),
        }
    }
}

/// One recipient's copy (absent when rejected or deferred).
#[derive(Debug, Clone)]
pub struct Copy {
    pub recipient: String,
    pub decision: Decision,
    pub message: Option<Vec<u8>>,
}

/// The result for a whole message.
#[derive(Debug, Clone)]
pub enum Outcome {
    Copies(Vec<Copy>),
    /// all-or-nothing refused the message: no copy was produced.
    Refused(Reply),
}

/// Errors that concern the whole message rather than one recipient.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// The core, bound to a key service and a policy.
pub struct Rewriter {
    keys: Arc<KeyService>,
    policy: Policy,
}

/// The signer, once known, and how signing is to be done.
#[derive(Clone)]
struct Signing {
    fingerprint: Option<String>,
    /// The key is the From address's own (not the configured default signer).
    own: bool,
    /// Why nothing can be signed, when signing is required but impossible.
    problem: Option<Reply>,
}

impl Signing {
    /// Why nothing can be signed, for a copy that needs a signature.
    fn unusable(&self) -> Reply {
        self.problem
            .clone()
            .unwrap_or_else(|| Reply::new(451, "4.7.0", "no signer"))
    }

    /// The reply for a signature that failed: one by the configured `default_signer` says
    /// so, since the fix is in the configuration or its keyring (review: "End of file" or
    /// "Unusable secret key" for a fingerprint that was not there, expired or revoked).
    fn failed(&self, e: &KeyError) -> Reply {
        self.failed_doing(e, "")
    }

    /// As [`Signing::failed`], for gpg's sign-and-encrypt in one (the combined form), whose
    /// error may be the encryption's as well.
    fn failed_doing(&self, e: &KeyError, also: &str) -> Reply {
        match &self.fingerprint {
            Some(fpr) if !self.own => Reply::new(
                451,
                "4.7.0",
                format!("temporary failure: signing with policy.default_signer {fpr}{also}: {e}"),
            ),
            _ => temporary(e),
        }
    }
}

impl Rewriter {
    pub fn new(keys: Arc<KeyService>, policy: Policy) -> Self {
        Rewriter { keys, policy }
    }

    /// Another core over the same keys (and caches) with a different policy.
    pub fn with_policy(&self, policy: Policy) -> Rewriter {
        Rewriter {
            keys: self.keys.clone(),
            policy,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> &KeyService {
        &self.keys
    }

    /// Looks up a key for one address, as the plan wants it: an address with an extension
    /// that has no key of its own has the key of the address it is delivered to.
    pub async fn lookup(&self, address: &str) -> Lookup {
        let lookup = |r: Result<Resolution, KeyError>| match r {
            Ok(r) => Lookup::Found(r),
            Err(e) => Lookup::Failed(e.to_string()),
        };
        if self.policy.own_keys_only {
            return lookup(self.keys.resolve_own(address).await);
        }
        let found = match self.keys.resolve(address).await {
            Ok(r) => r,
            Err(e) => return Lookup::Failed(e.to_string()),
        };
        let none_at_all = matches!(&found, Resolution::NoKey { refused } if refused.is_empty());
        if let Some(base) = self
            .policy
            .without_extension(address)
            .filter(|_| none_at_all)
        {
            return lookup(self.keys.resolve(&base).await);
        }
        Lookup::Found(found)
    }

    /// Runs the core over one message: every copy, built at once. Front-ends that may face
    /// large fan-outs ([`Rewriter::prepare`]) build the copies a batch at a time instead.
    pub async fn rewrite(
        &self,
        envelope: &Envelope,
        raw: Vec<u8>,
    ) -> Result<Outcome, RewriteError> {
        match self.prepare(envelope, raw).await? {
            Prepared::Refused(reply) => Ok(Outcome::Refused(reply)),
            Prepared::Copies(mut planned) => {
                let mut copies = Vec::with_capacity(envelope.recipients.len());
                while let Some(batch) = planned.next_batch().await {
                    copies.extend(batch);
                }
                Ok(Outcome::Copies(copies))
            }
        }
    }

    /// Parses the message, looks the keys up and decides for every recipient at once (so
    /// all-or-nothing sees the whole envelope), without building any copy yet.
    pub async fn prepare(
        &self,
        envelope: &Envelope,
        raw: Vec<u8>,
    ) -> Result<Prepared<'_>, RewriteError> {
        let message = ParsedMessage::parse(raw)?;
        let recipients = recipients(&envelope.recipients);
        let mut lookups = HashMap::new();
        if !message.is_encrypted() {
            let wanted: Vec<&Recipient> = recipients.iter().filter(|r| r.valid).collect();
            let found =
                futures::future::join_all(wanted.iter().map(|r| self.lookup(&r.address))).await;
            for (r, l) in wanted.iter().zip(found) {
                lookups.insert(r.address.clone(), l);
            }
        }
        match plan::plan(&recipients, message.is_encrypted(), &self.policy, &lookups) {
            Plan::Refuse(reply) => {
                tracing::info!(id = %envelope.id, from = %envelope.sender, decision = "refused", reason = %reply, "message refused");
                Ok(Prepared::Refused(reply))
            }
            Plan::PerRecipient(mut steps) => {
                // A signed copy in the clear cannot carry such a line (the encrypted ones
                // carry it inside their ciphertext).
                let signs = |s: &plan::Step| matches!(s, plan::Step::Sign { .. });
                if steps.iter().any(|(_, s)| signs(s)) && message.long_line_in_sealed_part() {
                    for (_, step) in steps.iter_mut().filter(|(_, s)| signs(s)) {
                        *step = plan::Step::Reject(plan::Reply::new(
                            554,
                            "5.6.0",
                            crate::message::parse::LONG_SEALED_LINE,
                        ));
                    }
                }
                let per_batch = batch_size(self.policy.copy_batch_bytes, message.raw().len());
                Ok(Prepared::Copies(Box::new(Planned {
                    core: self,
                    envelope: envelope.clone(),
                    message,
                    steps: steps.into_iter(),
                    per_batch,
                    shared: None,
                })))
            }
        }
    }

    /// What every copy of the message shares, made once: the header fields, and the signed
    /// payload (when some recipient `encrypts`) or signed copy (when some recipient `signs`):
    /// one signature per kind of payload, not one per batch.
    async fn shared(
        &self,
        envelope: &Envelope,
        message: &ParsedMessage,
        encrypts: bool,
        signs: bool,
    ) -> Shared {
        let needs_signature = self.policy.sign && (encrypts || signs);
        let from = message
            .from_address()
            .map(str::to_string)
            .unwrap_or_else(|| envelope.sender.clone());
        let signing = if needs_signature {
            self.signing_key(&from).await
        } else {
            Signing {
                fingerprint: None,
                own: false,
                problem: None,
            }
        };

        // The header fields every copy starts from: no Bcc (but inside the user's own stored
        // copy, `keep_bcc`), plus Autocrypt when enabled.
        let mut fields = if self.policy.keep_bcc {
            message.fields().to_vec()
        } else {
            without_bcc(message.fields())
        };
        // Autocrypt (Level 1 §2.1) advertises the From address's own key: not a gateway's
        // default signer, whose key belongs to another address, nor the envelope sender's for
        // a message without a From address of its own (none, two fields, or a field of
        // several), which readers would ignore or pin to the wrong address (review).
        let sole_from = message.sole_from_address() == Some(from.as_str());
        if self.policy.autocrypt && signing.own && sole_from {
            if let Some(fpr) = &signing.fingerprint {
                let address = from.to_ascii_lowercase();
                if let Ok(keydata) = self.keys.autocrypt_keydata(fpr, &address).await {
                    fields.retain(|f| !f.is("Autocrypt"));
                    fields.push(mime::autocrypt_field(&address, &keydata));
                }
            }
        }
        let content = content_entity(message);
        let encryption = if encrypts {
            Some(self.encryption(&fields, &content, &from, &signing).await)
        } else {
            None
        };
        let signed = if signs {
            Some(self.signed_copy(&fields, &content, &signing).await)
        } else {
            None
        };
        Shared { encryption, signed }
    }

    async fn signing_key(&self, from: &str) -> Signing {
        match self.keys.signer_or_refusal(from).await {
            Ok(Ok(fpr)) => Signing {
                fingerprint: Some(fpr),
                own: true,
                problem: None,
            },
            Ok(Err(refused)) => match &self.policy.default_signer {
                Some(fpr) => Signing {
                    fingerprint: Some(fpr.clone()),
                    own: false,
                    problem: None,
                },
                None => Signing {
                    fingerprint: None,
                    own: false,
                    problem: Some(Reply::new(
                        550,
                        "5.7.1",
                        if from.is_empty() {
                            // A null sender's message without a From field names nobody.
                            "no From address to sign as and no default signer configured"
                                .to_string()
                        } else if refused.is_empty() {
                            format!(
                                "no usable secret key to sign as {from} and no default signer configured"
                            )
                        } else {
                            // One SMTP reply line holds 512 octets (RFC 5321 §4.5.3.1.5):
                            // the reasons are cut to fit beside a long From (review).
                            let room = 400usize.saturating_sub(from.len()).max(60);
                            let mut refused = refused;
                            if refused.len() > room {
                                let mut cut = room;
                                while !refused.is_char_boundary(cut) {
                                    cut -= 1;
                                }
                                refused.truncate(cut);
                                refused.push_str("...");
                            }
                            format!(
                                "no usable secret key to sign as {from} ({refused}) and no default signer configured"
                            )
                        },
                    )),
                },
            },
            Err(e) => Signing {
                fingerprint: None,
                own: false,
                problem: Some(temporary(&e)),
            },
        }
    }

    /// `fields` without the Bcc that only `keep_bcc` leaves in them (the others have none).
    fn without_kept_bcc<'f>(
        &self,
        fields: &'f [HeaderField],
    ) -> std::borrow::Cow<'f, [HeaderField]> {
        if self.policy.keep_bcc {
            std::borrow::Cow::Owned(without_bcc(fields))
        } else {
            std::borrow::Cow::Borrowed(fields)
        }
    }

    /// What every encrypted copy shares: the outer header fields, and the plaintext to
    /// encrypt, signed already for RFC 3156 §6.1 or with the signer gpg uses for §6.2.
    /// Err: why no encrypted copy can be built (for every Encrypt step).
    async fn encryption(
        &self,
        fields: &[HeaderField],
        content: &ContentEntity,
        from: &str,
        signing: &Signing,
    ) -> Result<Encryption, Reply> {
        if self.policy.sign && signing.fingerprint.is_none() {
            return Err(signing.unusable());
        }
        // Never a Bcc outside (only `keep_bcc` leaves one in `fields`, for inside).
        let outside = self.without_kept_bcc(fields);
        let outer = if self.policy.header_protection {
            let mut outer = mime::outer_fields_encrypted(&outside, &self.policy.obscured_subject);
            if self.policy.listed_fields_only {
                // Trace fields too: the protected header leaves them out (review: the
                // upload lost Received and Return-Path altogether).
                outer.retain(|f| mime::LISTED_FIELDS.iter().any(|n| f.is(n)) || mime::is_trace(f));
            }
            outer
        } else {
            mime::outer_fields_clear(&outside)
        };
        let payload = if self.policy.header_protection {
            mime::protected_payload(fields, &outer, content, Protection::Cipher)
        } else {
            content.to_entity()
        };

        // What gets encrypted, and whether gpg signs while encrypting.
        let (plaintext, inline_signer) = match (self.policy.sign, self.policy.encrypted_form) {
            (true, EncryptedForm::SignedThenEncrypted) => {
                let signer = signing.fingerprint.clone().expect("checked above");
                match self.keys.sign_detached(&signer, payload.clone()).await {
                    Ok(sig) => {
                        let container = mime::multipart_signed(
                            &payload,
                            &sig.armored,
                            &mime::micalg(&sig.hash),
                        );
                        (container.to_entity(), None)
                    }
                    Err(e) => return Err(signing.failed(&e)),
                }
            }
            (true, EncryptedForm::Combined) => (payload, signing.fingerprint.clone()),
            (false, _) => (payload, None),
        };
        // The From address's own usable key (one that can encrypt), as for any recipient:
        // not the signing key, which may be the configured default signer (every copy would
        // then also open with the gateway's key) or a key without an encryption subkey (gpg
        // would refuse the recipient, and every encrypted copy with it).
        // One whose secret key is here comes first: the sender's own, which also signs
        // (review: a newer public key for the address, anyone's, got every copy). Any public
        // key for the address only when the sender has no secret key here at all (a gateway
        // signing as default_signer): one whose own key cannot encrypt gets no self copy,
        // not a stranger's (review of that fix).
        let self_key = if self.policy.encrypt_to_self {
            match self.keys.resolve_own(from).await {
                Ok(Resolution::Usable { fingerprint, .. }) => Some(fingerprint),
                _ if signing.own => None,
                _ => match self.keys.resolve(from).await {
                    Ok(Resolution::Usable { fingerprint, .. }) => Some(fingerprint),
                    _ => None,
                },
            }
        } else {
            None
        };
        Ok(Encryption {
            outer,
            plaintext,
            inline_signer,
            signing: signing.clone(),
            self_key,
        })
    }

    /// Encrypts one copy per target key; in order. Several copies share one encryption (one
    /// gpg process, each copy given only its own key's session key packet) when all their
    /// keys rank AES-256 first (see `keys::ops::encrypt_shared`); the others, and all of them when
    /// gpg refuses a key or its message cannot be split, are encrypted each on its own, two
    /// at a time on the GnuPG workers, so that a key gpg refuses fails only its own copy.
    async fn encrypt_each(
        &self,
        encryption: &Encryption,
        targets: &[&str],
    ) -> Vec<Result<Vec<u8>, Reply>> {
        let keys_of = |fpr: &str| {
            let mut keys = vec![fpr.to_string()];
            if let Some(own) = &encryption.self_key {
                if own != fpr {
                    keys.push(own.clone());
                }
            }
            keys
        };
        let signs = encryption.inline_signer.is_some();
        let failed = |e: &KeyError| {
            if signs {
                // The combined form: the signature is gpg's part of the encryption (review:
                // a failing default_signer was the bare gpg error here).
                encryption.signing.failed_doing(e, " and encrypting")
            } else {
                temporary(e)
            }
        };
        let copy =
            |armored: &[u8]| mime::message(&encryption.outer, &mime::multipart_encrypted(armored));
        let mut shared: Vec<Option<Vec<u8>>> = vec![None; targets.len()];
        if targets.len() > 1 {
            let copies = targets.iter().map(|fpr| keys_of(fpr)).collect();
            let result = self
                .keys
                .encrypt_shared(
                    copies,
                    encryption.inline_signer.clone(),
                    encryption.plaintext.clone(),
                )
                .await;
            match result {
                Ok(armored) if armored.len() == targets.len() => shared = armored,
                // GnuPG could not be run, or not in time: so it would be for each copy.
                Err(
                    e @ (KeyError::Deadline { .. }
                    | KeyError::Unavailable { .. }
                    | KeyError::WorkerGone),
                ) => return targets.iter().map(|_| Err(failed(&e))).collect(),
                Ok(_) | Err(_) => {}
            }
        }
        let jobs = targets.iter().zip(shared).map(|(fpr, done)| {
            let keys = keys_of(fpr);
            async move {
                if let Some(armored) = done {
                    return Ok(copy(&armored));
                }
                // Each job owns its copy of the plaintext (the worker takes it): a batch holds
                // one per copy, which `batch_size` counts.
                let data = encryption.plaintext.clone();
                let signer = encryption.inline_signer.clone();
                match self.keys.encrypt(keys, signer, data).await {
                    Ok(armored) => Ok(copy(&armored)),
                    Err(e) => Err(failed(&e)),
                }
            }
        });
        futures::future::join_all(jobs).await
    }

    /// Builds the one signed cleartext copy shared by every Sign step.
    async fn signed_copy(
        &self,
        fields: &[HeaderField],
        content: &ContentEntity,
        signing: &Signing,
    ) -> Result<Vec<u8>, Reply> {
        let Some(signer) = &signing.fingerprint else {
            return Err(signing.unusable());
        };
        // A signed copy is read in clear: never a Bcc, even with `keep_bcc`.
        let fields = &*self.without_kept_bcc(fields);
        let outer = mime::outer_fields_clear(fields);
        let payload = if self.policy.header_protection {
            mime::protected_payload(fields, &outer, content, Protection::Clear)
        } else {
            content.to_entity()
        };
        match self.keys.sign_detached(signer, payload.clone()).await {
            Ok(sig) => {
                let container =
                    mime::multipart_signed(&payload, &sig.armored, &mime::micalg(&sig.hash));
                Ok(mime::message(&outer, &container))
            }
            Err(e) => Err(signing.failed(&e)),
        }
    }
}

/// The outcome of [`Rewriter::prepare`].
pub enum Prepared<'a> {
    /// all-or-nothing refused the message: no copy is built.
    Refused(Reply),
    Copies(Box<Planned<'a>>),
}

/// A message with its decision made for every recipient, whose copies are built a batch at a
/// time ([`Planned::next_batch`]) so that a large message to many recipients never has all its
/// copies in memory at once.
pub struct Planned<'a> {
    core: &'a Rewriter,
    envelope: Envelope,
    message: ParsedMessage,
    steps: std::vec::IntoIter<(String, Step)>,
    per_batch: usize,
    /// Made with the first batch, from every step (not only that batch's).
    shared: Option<Shared>,
}

/// See [`Rewriter::shared`].
struct Shared {
    /// None when no recipient gets an encrypted copy.
    encryption: Option<Result<Encryption, Reply>>,
    /// None when no recipient gets a signed cleartext copy.
    signed: Option<Result<Vec<u8>, Reply>>,
}

/// See [`Rewriter::encryption`].
struct Encryption {
    outer: Vec<HeaderField>,
    plaintext: Vec<u8>,
    inline_signer: Option<String>,
    /// How a failure of gpg's inline signature is told ([`Signing::failed`]).
    signing: Signing,
    self_key: Option<String>,
}

impl Planned<'_> {
    /// Whether every copy still to be built is encrypted (none signed or sent as it is, none
    /// refused).
    pub fn all_encrypted(&self) -> bool {
        self.steps
            .as_slice()
            .iter()
            .all(|(_, s)| matches!(s, Step::Encrypt { .. }))
    }

    /// A recipient the plan defers (its key lookup failed) among those whose copies are not
    /// built yet, and why: before the first batch, a front-end that must send nothing when
    /// any recipient is deferred asks here.
    pub fn deferred(&self) -> Option<(&str, &Reply)> {
        self.steps.as_slice().iter().find_map(|(r, s)| match s {
            Step::Defer(reply) => Some((r.as_str(), reply)),
            _ => None,
        })
    }

    /// The next recipients' copies, in envelope order; None once every recipient has its copy.
    pub async fn next_batch(&mut self) -> Option<Vec<Copy>> {
        let steps: Vec<(String, Step)> = self.steps.by_ref().take(self.per_batch).collect();
        if steps.is_empty() {
            return None;
        }
        let core = self.core;
        if self.shared.is_none() {
            // The first batch: its steps and the ones still to come.
            let all = || steps.iter().chain(self.steps.as_slice()).map(|(_, s)| s);
            let encrypts = all().any(|s| matches!(s, Step::Encrypt { .. }));
            let signs = all().any(|s| matches!(s, Step::Sign { .. }));
            self.shared = Some(
                core.shared(&self.envelope, &self.message, encrypts, signs)
                    .await,
            );
        }
        let shared = self.shared.as_ref().expect("made above");
        let targets: Vec<&str> = steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Encrypt { fingerprint } => Some(fingerprint.as_str()),
                _ => None,
            })
            .collect();
        let encrypted = match &shared.encryption {
            _ if targets.is_empty() => Vec::new(),
            Some(Ok(encryption)) => core.encrypt_each(encryption, &targets).await,
            Some(Err(reply)) => targets.iter().map(|_| Err(reply.clone())).collect(),
            None => unreachable!("shared encryption is made whenever an Encrypt step exists"),
        };
        let mut encrypted = encrypted.into_iter();
        let message = &self.message;
        let copies: Vec<Copy> = steps
            .into_iter()
            .map(|(recipient, step)| {
                let (decision, bytes) = match step {
                    Step::Encrypt { fingerprint } => {
                        match encrypted.next().expect("one result per encrypt step") {
                            Ok(bytes) => (Decision::Encrypted { fingerprint }, Some(bytes)),
                            Err(reply) => (failed(reply), None),
                        }
                    }
                    Step::Sign { reason } => match &shared.signed {
                        Some(Ok(bytes)) => (Decision::Signed { reason }, Some(bytes.clone())),
                        Some(Err(reply)) => (failed(reply.clone()), None),
                        None => unreachable!("a signed copy is built whenever a Sign step exists"),
                    },
                    Step::Clear { reason } => (
                        Decision::Clear { reason },
                        Some(assemble(
                            &without_bcc(message.fields()),
                            &crate::message::encoding::crlf(message.body()),
                        )),
                    ),
                    // Line ends as the header's (CRLF): armor reads the same either way.
                    Step::PassThrough => (
                        Decision::PassThrough,
                        Some(assemble(
                            &without_bcc(message.fields()),
                            &crate::message::encoding::crlf(message.body()),
                        )),
                    ),
                    Step::Reject(reply) => (Decision::Rejected { reply }, None),
                    Step::Defer(reply) => (Decision::Deferred { reply }, None),
                };
                Copy {
                    recipient,
                    decision,
                    message: bytes,
                }
            })
            .collect();
        // The logging policy's one line per recipient (queue id, recipient, decision, key or
        // reason).
        for c in &copies {
            tracing::info!(id = %self.envelope.id, rcpt = %c.recipient, decision = c.decision.name(), detail = %c.decision.detail(), "recipient decision");
        }
        Some(copies)
    }
}

/// How many copies of a message of `message_len` bytes fit in `budget` bytes (at least one).
/// A copy is counted at twice the message: the plaintext a GnuPG job is handed plus its
/// armored ciphertext (a third larger than what it encrypts, before compression).
pub fn batch_size(budget: usize, message_len: usize) -> usize {
    (budget / message_len.max(1).saturating_mul(2)).max(1)
}

/// A copy that could not be built: deferred when the reason is temporary, rejected otherwise.
fn failed(reply: Reply) -> Decision {
    if reply.is_temporary() {
        Decision::Deferred { reply }
    } else {
        Decision::Rejected { reply }
    }
}

fn temporary(e: &KeyError) -> Reply {
    Reply::new(451, "4.7.0", format!("temporary failure: {e}"))
}

/// `"bob"@example.org` as `bob@example.org`: a quoted local part that needs no quotes (a
/// dot-atom, RFC 5322 §3.2.3) names the same mailbox, and policies and key lookups must see
/// it so.
pub(crate) fn unquoted(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let quoted = local.strip_prefix('"')?.strip_suffix('"')?;
    // A quoted-pair (RFC 5321 §4.1.2) stands for its character: `"n\05"` is n05, which is
    // where the MTA delivers it. Kept quoted, it found no key and no per-address policy of
    // n05's, and n05 got cleartext its policy refuses (review).
    let mut inner = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        inner.push(if c == '\\' { chars.next()? } else { c });
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !inner.is_empty()
        && inner
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    dot_atom.then(|| format!("{inner}@{domain}"))
}

/// Validates and de-duplicates envelope recipients (RFC 5321 paths: angle brackets allowed).
pub fn recipients(raw: &[String]) -> Vec<Recipient> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let recipient = recipient(r);
        if seen.insert(policy::canonical_address(&recipient.address)) {
            out.push(recipient);
        }
    }
    out
}

/// One envelope recipient as its copy names it: without angle brackets, a needless quote
/// and a trailing dot on the domain (the root, which Postfix drops) removed, spelled as given
/// otherwise.
fn recipient(raw: &str) -> Recipient {
    let trimmed = raw.trim();
    let bare = without_route(
        trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed),
    );
    let rooted = bare.rsplit_once('@').and_then(|(local, domain)| {
        let bare_domain = policy::without_root_dot(domain);
        (bare_domain != domain).then(|| format!("{local}@{bare_domain}"))
    });
    let bare = rooted.as_deref().unwrap_or(bare);
    // RFC 5321 §4.5.1: `<postmaster>` with no domain must be taken (the MTA delivers it to
    // its own postmaster); sealpost refused it as no address (review: 553 at RCPT on an MX).
    let unquoted_whole = bare
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or(bare);
    if unquoted_whole.eq_ignore_ascii_case("postmaster") {
        return Recipient {
            address: bare.to_string(),
            valid: true,
        };
    }
    let valid = lettre::Address::from_str(bare).is_ok() && !routes_in_local_part(bare);
    let address = if valid {
        unquoted(bare).unwrap_or_else(|| bare.to_string())
    } else {
        trimmed.to_string()
    };
    Recipient { address, valid }
}

/// A path without its source route (`@relay.example:bob@example.org` is bob@example.org):
/// RFC 5321 §4.1.1.3 and Appendix C, servers accept and ignore it, as Postfix does.
pub fn without_route(path: &str) -> &str {
    if !path.starts_with('@') {
        return path;
    }
    let mut literal = false;
    for (i, c) in path.char_indices() {
        match c {
            '[' => literal = true,
            ']' => literal = false,
            ':' if !literal => return &path[i + 1..],
            _ => {}
        }
    }
    path
}

/// A local part that routes on (`dave%example.net@localhost`, `example.net!dave@localhost`,
/// `"dave@example.net"@localhost`): the MTA rewrites it to another mailbox (Postfix's
/// allow_percent_hack and swap_bangpath) after sealpost has looked up the key and the policy
/// of the address as written, so it could take an encrypt-only recipient's mail in clear.
fn routes_in_local_part(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(local, _)| local.contains(['%', '!', '@']))
}

/// The refusal for a recipient that is no address sealpost sends to (553 5.1.3), as the
/// plan gives it and the milter at RCPT.
pub fn address_refusal(raw: &str) -> Option<Reply> {
    let r = recipient(raw);
    (!r.valid).then(|| plan::bad_address(&r.address))
}

/// Whether an envelope recipient as the MTA gave it (`<"Bob"@Example.org>`) is the mailbox a
/// copy names (`Bob@example.org`): the same address once brackets, needless quotes, the case
/// of ASCII letters and the form of an international domain are set aside.
pub fn same_recipient(raw: &str, copy: &str) -> bool {
    mailbox(raw) == mailbox(copy)
}

/// The mailbox an envelope recipient names, as [`same_recipient`] compares them: equal for
/// `<"Bob"@Example.org>` and `bob@example.org`.
pub fn mailbox(raw: &str) -> String {
    policy::canonical_address(&recipient(raw).address)
}

/// The address a copy for an envelope recipient as the MTA gave it is named by (what
/// [`Copy::recipient`] holds for it, when it is the first of its spellings).
pub fn copy_recipient(raw: &str) -> String {
    recipient(raw).address
}

#[cfg(test)]
mod tests {
    use super::batch_size;

    #[test]
    fn a_quoted_pair_is_its_character() {
        assert_eq!(
            super::copy_recipient("<\"n\\05\"@example.org>"),
            "n05@example.org"
        );
        assert_eq!(
            super::copy_recipient("\"\\n\\0\\5\"@example.org"),
            "n05@example.org"
        );
        assert!(super::same_recipient(
            "\"k\\02\"@example.org",
            "K02@example.org"
        ));
        // A local part that needs its quotes keeps them.
        assert_eq!(
            super::copy_recipient("\"john\\ doe\"@example.org"),
            "\"john\\ doe\"@example.org"
        );
    }

    #[test]
    fn a_root_dot_is_no_other_recipient() {
        assert!(super::same_recipient(
            "<bob@example.org.>",
            "bob@example.org"
        ));
        assert_eq!(
            super::copy_recipient("<bob@example.org.>"),
            "bob@example.org"
        );
        assert_eq!(
            super::mailbox("bob@Example.ORG."),
            super::mailbox("bob@example.org")
        );
    }

    #[test]
    fn a_needless_quote_and_another_spelling_are_one_recipient() {
        let got = super::recipients(&[
            "\"bob\"@example.org".into(),
            "Bob@EXAMPLE.org".into(),
            "\"b o\"@example.org".into(),
            "x@bücher.de".into(),
            "X@xn--bcher-kva.de".into(),
        ]);
        let names: Vec<&str> = got.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            names,
            ["bob@example.org", "\"b o\"@example.org", "x@bücher.de"]
        );
    }

    #[test]
    fn routes_are_dropped_and_routing_local_parts_refused() {
        assert_eq!(
            super::without_route("@a.example,@b.example:bob@x.org"),
            "bob@x.org"
        );
        assert_eq!(super::without_route("@[IPv6:::1]:bob@x.org"), "bob@x.org");
        assert_eq!(super::without_route("bob@x.org"), "bob@x.org");
        let got = super::recipients(&["<@relay.example:carol@example.org>".into()]);
        assert_eq!(got[0].address, "carol@example.org");
        assert!(got[0].valid);
        for routed in [
            "dave%example.net@localhost",
            "example.net!erin@localhost",
            "\"frank@example.net\"@localhost",
        ] {
            let reply = super::address_refusal(routed).expect(routed);
            assert_eq!((reply.code, reply.status), (553, "5.1.3"), "{routed}");
            assert!(reply.text.contains("routes on"), "{}", reply.text);
        }
        assert!(super::address_refusal("bob..x@example.org").is_some());
        assert!(super::address_refusal("<bob@example.org>").is_none());
    }

    #[test]
    fn batches_hold_about_the_budget() {
        const MIB: usize = 1024 * 1024;
        // A small message: the whole default fan-out limit in one batch.
        assert_eq!(batch_size(64 * MIB, 32 * 1024), 1024);
        // A 10 MB message: three copies at a time.
        assert_eq!(batch_size(64 * MIB, 10_240_000), 3);
        // Larger than the budget, or no budget at all: one copy at a time, never none.
        assert_eq!(batch_size(64 * MIB, 100 * MIB), 1);
        assert_eq!(batch_size(0, 10_000), 1);
        assert_eq!(batch_size(64 * MIB, 0), 32 * MIB);
    }
}
