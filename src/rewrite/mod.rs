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
    Encrypted { fingerprint: String },
    Signed,
    Clear,
    PassThrough,
    Rejected { reply: Reply },
    Deferred { reply: Reply },
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Encrypted { .. } => "encrypted",
            Decision::Signed => "signed",
            Decision::Clear => "clear",
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
            Decision::Signed => "no usable key: signed cleartext".into(),
            Decision::Clear => "no usable key, signing off: cleartext".into(),
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
struct Signing {
    fingerprint: Option<String>,
    /// The key is the From address's own (not the configured default signer).
    own: bool,
    /// Why nothing can be signed, when signing is required but impossible.
    problem: Option<Reply>,
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

    /// Looks up a key for one address, as the plan wants it.
    pub async fn lookup(&self, address: &str) -> Lookup {
        match self.keys.resolve(address).await {
            Ok(r) => Lookup::Found(r),
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }

    /// Runs the core over one message.
    pub async fn rewrite(
        &self,
        envelope: &Envelope,
        raw: Vec<u8>,
    ) -> Result<Outcome, RewriteError> {
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
        let outcome = match plan::plan(&recipients, message.is_encrypted(), &self.policy, &lookups)
        {
            Plan::Refuse(reply) => Outcome::Refused(reply),
            Plan::PerRecipient(steps) => {
                Outcome::Copies(self.build(envelope, &message, steps).await)
            }
        };
        log_outcome(envelope, &outcome);
        Ok(outcome)
    }

    async fn build(
        &self,
        envelope: &Envelope,
        message: &ParsedMessage,
        steps: Vec<(String, Step)>,
    ) -> Vec<Copy> {
        let needs_signature = self.policy.sign
            && steps
                .iter()
                .any(|(_, s)| matches!(s, Step::Encrypt { .. } | Step::Sign));
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

        // The header fields every copy starts from: no Bcc, plus Autocrypt when enabled.
        let mut fields = without_bcc(message.fields());
        // Autocrypt (Level 1 §2.1) advertises the From address's own key: not a gateway's
        // default signer, whose key belongs to another address.
        if self.policy.autocrypt && signing.own {
            if let Some(fpr) = &signing.fingerprint {
                if let Ok(keydata) = self.keys.autocrypt_keydata(fpr).await {
                    fields.retain(|f| !f.is("Autocrypt"));
                    fields.push(mime::autocrypt_field(&from.to_ascii_lowercase(), &keydata));
                }
            }
        }
        let content = content_entity(message);

        let encrypted = self
            .encrypted_copies(&steps, &fields, &content, &from, &signing)
            .await;
        let signed = self.signed_copy(&steps, &fields, &content, &signing).await;
        let mut encrypted = encrypted.into_iter();

        steps
            .into_iter()
            .map(|(recipient, step)| {
                let (decision, bytes) = match step {
                    Step::Encrypt { fingerprint } => {
                        match encrypted.next().expect("one result per encrypt step") {
                            Ok(bytes) => (Decision::Encrypted { fingerprint }, Some(bytes)),
                            Err(reply) => (failed(reply), None),
                        }
                    }
                    Step::Sign => match &signed {
                        Some(Ok(bytes)) => (Decision::Signed, Some(bytes.clone())),
                        Some(Err(reply)) => (failed(reply.clone()), None),
                        None => unreachable!("a signed copy is built whenever a Sign step exists"),
                    },
                    Step::Clear => (
                        Decision::Clear,
                        Some(assemble(
                            &without_bcc(message.fields()),
                            &crate::message::encoding::crlf(message.body()),
                        )),
                    ),
                    Step::PassThrough => (
                        Decision::PassThrough,
                        Some(assemble(&without_bcc(message.fields()), message.body())),
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
            .collect()
    }

    async fn signing_key(&self, from: &str) -> Signing {
        match self.keys.signer(from).await {
            Ok(Some(fpr)) => Signing {
                fingerprint: Some(fpr),
                own: true,
                problem: None,
            },
            Ok(None) => match &self.policy.default_signer {
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
                        format!("no secret key to sign as {from} and no default signer configured"),
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

    /// Builds every encrypted copy, in the order of the Encrypt steps.
    async fn encrypted_copies(
        &self,
        steps: &[(String, Step)],
        fields: &[HeaderField],
        content: &ContentEntity,
        from: &str,
        signing: &Signing,
    ) -> Vec<Result<Vec<u8>, Reply>> {
        let targets: Vec<&str> = steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Encrypt { fingerprint } => Some(fingerprint.as_str()),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        if self.policy.sign && signing.fingerprint.is_none() {
            let reply = signing
                .problem
                .clone()
                .unwrap_or_else(|| Reply::new(451, "4.7.0", "no signer"));
            return targets.iter().map(|_| Err(reply.clone())).collect();
        }
        let outer = if self.policy.header_protection {
            mime::outer_fields_encrypted(fields, &self.policy.obscured_subject)
        } else {
            mime::outer_fields_clear(fields)
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
                    Err(e) => return targets.iter().map(|_| Err(temporary(&e))).collect(),
                }
            }
            (true, EncryptedForm::Combined) => (payload, signing.fingerprint.clone()),
            (false, _) => (payload, None),
        };
        let self_key = if self.policy.encrypt_to_self {
            match &signing.fingerprint {
                Some(f) => Some(f.clone()),
                None => match self.keys.resolve(from).await {
                    Ok(Resolution::Usable { fingerprint, .. }) => Some(fingerprint),
                    _ => None,
                },
            }
        } else {
            None
        };
        let jobs = targets.iter().map(|fpr| {
            let mut keys = vec![fpr.to_string()];
            if let Some(own) = &self_key {
                if own != fpr {
                    keys.push(own.clone());
                }
            }
            let data = plaintext.clone();
            let signer = inline_signer.clone();
            let outer = &outer;
            async move {
                match self.keys.encrypt(keys, signer, data).await {
                    Ok(armored) => Ok(mime::message(outer, &mime::multipart_encrypted(&armored))),
                    Err(e) => Err(temporary(&e)),
                }
            }
        });
        futures::future::join_all(jobs).await
    }

    /// Builds the one signed cleartext copy shared by every Sign step (None when there is none).
    async fn signed_copy(
        &self,
        steps: &[(String, Step)],
        fields: &[HeaderField],
        content: &ContentEntity,
        signing: &Signing,
    ) -> Option<Result<Vec<u8>, Reply>> {
        if !steps.iter().any(|(_, s)| matches!(s, Step::Sign)) {
            return None;
        }
        let Some(signer) = &signing.fingerprint else {
            return Some(Err(signing
                .problem
                .clone()
                .unwrap_or_else(|| Reply::new(451, "4.7.0", "no signer"))));
        };
        let outer = mime::outer_fields_clear(fields);
        let payload = if self.policy.header_protection {
            mime::protected_payload(fields, &outer, content, Protection::Clear)
        } else {
            content.to_entity()
        };
        Some(
            match self.keys.sign_detached(signer, payload.clone()).await {
                Ok(sig) => {
                    let container =
                        mime::multipart_signed(&payload, &sig.armored, &mime::micalg(&sig.hash));
                    Ok(mime::message(&outer, &container))
                }
                Err(e) => Err(temporary(&e)),
            },
        )
    }
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

/// Validates and de-duplicates envelope recipients (RFC 5321 paths: angle brackets allowed).
pub fn recipients(raw: &[String]) -> Vec<Recipient> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let trimmed = r.trim();
        let bare = trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed);
        let valid = lettre::Address::from_str(bare).is_ok();
        let address = if valid {
            bare.to_string()
        } else {
            trimmed.to_string()
        };
        if seen.insert(address.to_ascii_lowercase()) {
            out.push(Recipient { address, valid });
        }
    }
    out
}

/// The logging policy's one line per recipient (queue id, recipient, decision, key or reason).
fn log_outcome(envelope: &Envelope, outcome: &Outcome) {
    match outcome {
        Outcome::Refused(reply) => {
            tracing::info!(id = %envelope.id, from = %envelope.sender, decision = "refused", reason = %reply, "message refused")
        }
        Outcome::Copies(copies) => {
            for c in copies {
                tracing::info!(id = %envelope.id, rcpt = %c.recipient, decision = c.decision.name(), detail = %c.decision.detail(), "recipient decision");
            }
        }
    }
}
