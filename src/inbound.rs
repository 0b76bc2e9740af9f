//! Incoming mail, one message at a time: a whole-message OpenPGP ciphertext is decrypted,
//! signatures are verified, and the message is marked with sealpost's verdict — a
//! `Sealpost-Verdict` header field and IMAP keywords — after every sender-supplied copy of
//! that field is removed.
//!
//! Rules (DESIGN.md §3, RFC 3156, RFC 9788):
//! - Only a message that *is* a ciphertext is decrypted: `multipart/encrypted` with
//!   `protocol="application/pgp-encrypted"` at the top, or a `text/plain` body that is one
//!   armored PGP MESSAGE and nothing else. Ciphertext inside other parts is left alone, so
//!   decrypted text never sits next to parts an attacker wrote (EFAIL direct exfiltration).
//! - Plaintext is used only when GnuPG reports success with integrity protection; a message
//!   without MDC, with a bad tag or truncated yields no plaintext at all (KeyService refuses
//!   it) and the message is kept as it came, marked undecryptable.
//! - The decrypted entity replaces the encrypted body; with `protected-headers="v1"` its header
//!   fields (Subject, From, To...) replace the outer ones, and an inner From that differs from
//!   the outer one is flagged.
//! - Signatures: those GnuPG reports while decrypting (RFC 3156 §6.2), a `multipart/signed`
//!   message (§5) or a `multipart/signed` entity inside the ciphertext (§6.1). A valid
//!   signature also says whether one of the signer key's user IDs is the From address.

use crate::imap::section::fields;
use crate::keys::{KeyError, KeyService, SignatureCheck, SignatureState};
use mail_parser::{MimeHeaders, PartType};

/// sealpost's verdict header field. Any field of this name a sender put in (any case, with
/// whitespace before the colon, folded, encoded) is removed before ours is added.
pub const VERDICT_FIELD: &str = "Sealpost-Verdict";

/// The IMAP keywords a verdict sets.
pub mod keyword {
    pub const ENCRYPTED: &str = "$Sealpost-Encrypted";
    pub const UNDECRYPTABLE: &str = "$Sealpost-Undecryptable";
    pub const SIGNED: &str = "$Sealpost-Signed";
    pub const BAD_SIGNATURE: &str = "$Sealpost-BadSignature";
    pub const EXPIRED_SIGNATURE: &str = "$Sealpost-ExpiredSignature";
    pub const UNKNOWN_SIGNER: &str = "$Sealpost-UnknownSigner";
    pub const FROM_MISMATCH: &str = "$Sealpost-FromMismatch";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    Plaintext,
    Decrypted,
    /// Kept as it came; the reason in GnuPG's words.
    Undecryptable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    Unsigned,
    Valid {
        fingerprint: String,
        /// One of the signer key's user IDs is the From address.
        from_matches: bool,
    },
    UnknownKey {
        fingerprint: String,
    },
    /// Good, but the key has expired since (or the signature is past its own expiry).
    Expired {
        fingerprint: String,
        from_matches: bool,
        reason: String,
    },
    Bad {
        fingerprint: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub encryption: Encryption,
    pub signature: Signature,
    /// The protected (inner) From differs from the outer From.
    pub inner_from_mismatch: bool,
}

impl Verdict {
    /// The field value: `encrypted; signature=valid; signer=FPR; from=match`.
    pub fn field_value(&self) -> String {
        let mut parts = vec![match &self.encryption {
            Encryption::Plaintext => "plaintext".to_string(),
            Encryption::Decrypted => "encrypted".to_string(),
            Encryption::Undecryptable(why) => format!("undecryptable ({})", clean(why)),
        }];
        match &self.signature {
            Signature::Unsigned => parts.push("signature=none".into()),
            Signature::Valid {
                fingerprint,
                from_matches,
            } => {
                parts.push("signature=valid".into());
                parts.push(format!("signer={fingerprint}"));
                let from = if *from_matches { "match" } else { "mismatch" };
                parts.push(format!("from={from}"));
            }
            Signature::UnknownKey { fingerprint } => {
                parts.push("signature=unknown-key".into());
                parts.push(format!("signer={fingerprint}"));
            }
            Signature::Expired {
                fingerprint,
                from_matches,
                reason,
            } => {
                parts.push(format!("signature=expired ({})", clean(reason)));
                parts.push(format!("signer={fingerprint}"));
                let from = if *from_matches { "match" } else { "mismatch" };
                parts.push(format!("from={from}"));
            }
            Signature::Bad {
                fingerprint,
                reason,
            } => {
                parts.push(format!("signature=bad ({})", clean(reason)));
                // A multipart/signed that is no signature at all has no signer to name
                // (review: "signer=" with nothing after it).
                if !fingerprint.is_empty() {
                    parts.push(format!("signer={fingerprint}"));
                }
            }
        }
        if self.inner_from_mismatch {
            parts.push("inner-from=mismatch".into());
        }
        parts.join("; ")
    }

    pub fn keywords(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        match self.encryption {
            Encryption::Decrypted => out.push(keyword::ENCRYPTED),
            Encryption::Undecryptable(_) => out.push(keyword::UNDECRYPTABLE),
            Encryption::Plaintext => {}
        }
        match &self.signature {
            Signature::Valid { from_matches, .. } => {
                out.push(keyword::SIGNED);
                if !from_matches {
                    out.push(keyword::FROM_MISMATCH);
                }
            }
            Signature::UnknownKey { .. } => out.push(keyword::UNKNOWN_SIGNER),
            Signature::Expired { from_matches, .. } => {
                out.push(keyword::EXPIRED_SIGNATURE);
                if !from_matches {
                    out.push(keyword::FROM_MISMATCH);
                }
            }
            Signature::Bad { .. } => out.push(keyword::BAD_SIGNATURE),
            Signature::Unsigned => {}
        }
        if self.inner_from_mismatch && !out.contains(&keyword::FROM_MISMATCH) {
            out.push(keyword::FROM_MISMATCH);
        }
        out
    }
}

/// Text of a reason as it may appear in a header field: one line, no parentheses.
fn clean(text: &str) -> String {
    // gpg's "Bad signature (gpg error 8)" read "Bad signature  gpg error 8" (review): the
    // parentheses go, and each run of blanks is one.
    text.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message after processing: the bytes to store and what was found.
#[derive(Debug, Clone)]
pub struct Processed {
    pub message: Vec<u8>,
    pub verdict: Verdict,
}

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// GnuPG could not be asked (agent down, deadline): try again later, nothing stored.
    #[error("temporary failure: {0}")]
    Temporary(KeyError),
}

/// Processes one message (CRLF line ends, as stored).
pub async fn process(keys: &KeyService, raw: &[u8]) -> Result<Processed, InboundError> {
    process_layer(keys, raw, 0).await
}

/// The ciphertext of a message that is one as a whole: PGP/MIME's second part (RFC 3156 §4),
/// with true, or an inline armored block that is the whole text body, with false. Nothing
/// around it is ever decrypted with it (EFAIL: attacker-written parts stay out).
fn whole_message_ciphertext(parsed: Option<&mail_parser::Message<'_>>) -> Option<(Vec<u8>, bool)> {
    let message = parsed?;
    let root = message.parts.first();
    let content_type = root.and_then(|p| p.content_type());
    let is = |t: &str, s: &str| has_type(content_type, t, s);
    let protocol = content_type
        .and_then(|ct| ct.attribute("protocol"))
        .map(str::to_ascii_lowercase);
    if is("multipart", "encrypted") && protocol.as_deref() == Some("application/pgp-encrypted") {
        // The second part as RFC 2046 §5.1.1 delimits it: mail-parser takes "--boundary"
        // anywhere in a line for a delimiter, and a boundary "E" cut the ciphertext at its
        // "-----END" line (review, on the outgoing side).
        let root = root?;
        let body = message
            .raw_message()
            .get(root.offset_body as usize..root.offset_end as usize)?;
        let boundary = content_type?.attribute("boundary")?;
        // A message cut short (no close delimiter) is still tried: gpg says what is wrong.
        let parts = crate::message::parse::delimited_parts(body, boundary.as_bytes())?.parts;
        let data = crate::message::parse::mail_parser().parse(*parts.get(1)?)?;
        Some((data.parts.first()?.contents().to_vec(), true))
    } else if is("text", "plain") || content_type.is_none() {
        inline_armor(root.map(|p| p.contents()).unwrap_or_default()).map(|c| (c, false))
    } else {
        None
    }
}

const PGP_MESSAGE: &[u8] = b"-----BEGIN PGP MESSAGE-----";

/// Whether `hay` holds `needle` (ASCII, lower case), case aside.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// [`process`] at a depth: 0 for the message as it came, 1 for the plaintext of an unsigned
/// PGP/MIME layer that is itself a whole ciphertext (a sender's encrypted mail that sealpost's
/// MX, finding it not encrypted strictly enough to pass unchanged, encrypted once more).
async fn process_layer(
    keys: &KeyService,
    raw: &[u8],
    depth: u8,
) -> Result<Processed, InboundError> {
    // A bare CR in the header is a blank from here on, as it is stored (`strip_field`): the
    // IMAP summary of the stored message must read the fields that were verified (review: a
    // boundary "B<CR>C" was verified as one boundary and served as "B C", with Mallory's parts).
    let blanked = header_crs_blanked(raw);
    let raw = &blanked[..];
    let (header, body) = split(raw);
    let parsed = parse_message(raw);
    let root = parsed.as_ref().and_then(|m| m.parts.first());
    let content_type = root.and_then(|p| p.content_type());
    let is = |t: &str, s: &str| has_type(content_type, t, s);
    let protocol = content_type
        .and_then(|ct| ct.attribute("protocol"))
        .map(str::to_ascii_lowercase);
    let outer_from = from_address(header);

    let mut verdict = Verdict {
        encryption: Encryption::Plaintext,
        signature: Signature::Unsigned,
        inner_from_mismatch: false,
    };
    let mut out_header = header.to_vec();
    // Copied only when it changes (a large message is not held twice for nothing).
    let mut out_body = std::borrow::Cow::Borrowed(body);
    // A PGP/MIME layer decrypted that nobody signed, whose plaintext may be a ciphertext again:
    // the header that plaintext is read with then (see below).
    let mut unsigned_layer: Option<Vec<u8>> = None;

    if let Some((ciphertext, pgp_mime)) = whole_message_ciphertext(parsed.as_deref()) {
        match keys.decrypt_verify(ciphertext).await {
            Ok(mut decrypted) => {
                verdict.encryption = Encryption::Decrypted;
                let plaintext = crate::store::into_crlf(std::mem::take(&mut decrypted.plaintext));
                if pgp_mime {
                    // The same for the decrypted entity's header (outside any signature:
                    // §6.2's is checked by gpg before, §6.1's signed part is in the body).
                    let plaintext = match split(&plaintext) {
                        (header, _) if is_mime_header(header) => {
                            header_crs_blanked(&plaintext).into_owned()
                        }
                        _ => plaintext,
                    };
                    let (inner_header, inner_body) = match split(&plaintext) {
                        (header, body) if is_mime_header(header) => (header, body),
                        // Not a MIME entity (RFC 3156 §4 says it is one): text from a sender
                        // that encrypted a bare text. Read as a header, its first paragraph
                        // would be dropped field by field; all of it is the body.
                        _ => (TEXT_HEADER, &plaintext[..]),
                    };
                    let signed_header = signed_part_header(&plaintext);
                    // A multipart/signed entity's own header is outside its signature (§6.1):
                    // anyone can wrap a signed part they captured, with protected fields of
                    // their own around it. When the signed part has protected fields and the
                    // OpenPGP message is not signed as a whole (§6.2), only the signed part's
                    // count. A signed part without them (a MUA's own signed mail, encrypted
                    // whole by sealpost's MX) leaves the entity's: outside the signature, but
                    // no more so than the outer header they replace, which shows the MX's
                    // obscured Subject (review: the real Subject was lost for good).
                    let whole_signed = !decrypted.signatures.is_empty();
                    let protected = match signed_header.as_deref() {
                        Some(signed) if !whole_signed && is_protected(signed) => Some(signed),
                        _ if is_protected(inner_header) => Some(inner_header),
                        _ => signed_header.as_deref().filter(|h| is_protected(h)),
                    };
                    let (merged, inner_from) = merge_headers(header, inner_header, protected);
                    verdict.inner_from_mismatch = from_mismatch(&inner_from, &outer_from);
                    // The signer is compared with the From that is shown: the protected one
                    // when there is one (RFC 9788), not the outer one a relay could change.
                    let shown_from = from_address(&merged);
                    out_header = merged;
                    out_body = inner_body.to_vec().into();
                    // The protected fields are the message's own fields now: their copy in the
                    // body for mail clients without header protection (RFC 9788 §4.5.3) would
                    // be shown twice. Not inside a multipart/signed, whose signature covers it.
                    if protected == Some(inner_header) {
                        let entity = entity_of(&plaintext, inner_header, inner_body);
                        if let Some((_, r)) = crate::imap::summary::legacy_display_element(&entity)
                            .filter(|(element, r)| {
                                r.start >= inner_header.len()
                                    && is_copy_of_fields(&entity[element.clone()], inner_header)
                            })
                        {
                            let at = r.start - inner_header.len()..r.end - inner_header.len();
                            out_body.to_mut().drain(at);
                        }
                    }
                    // Nobody vouches for an unsigned layer's protected From and reply routing:
                    // around a ciphertext, they would replace the outer From the inner
                    // signature is compared with (review: Mallory's layer around Alice's
                    // signed message showed From Alice, from=match, and Mallory's Reply-To).
                    // Its other fields stay (an MX's copy of the Subject it obscured outside).
                    unsigned_layer = (!whole_signed).then(|| {
                        let kept = protected.map(|p| {
                            let mut kept: Vec<u8> = fields(p)
                                .into_iter()
                                .filter(|(n, _)| {
                                    !n.eq_ignore_ascii_case(b"from") && !is_reply_routing(n)
                                })
                                .flat_map(|(_, f)| f.iter().copied())
                                .collect();
                            kept.extend_from_slice(b"\r\n");
                            kept
                        });
                        merge_headers(header, inner_header, kept.as_deref()).0
                    });
                    // RFC 3156 §6.2: signed and encrypted in one OpenPGP message.
                    verdict.signature =
                        signature_of(keys, &decrypted.signatures, &shown_from).await?;
                    // RFC 3156 §6.1: signed, then encrypted.
                    if verdict.signature == Signature::Unsigned {
                        let entity = entity_of(&plaintext, inner_header, inner_body);
                        verdict.signature =
                            verify_multipart_signed(keys, &entity, &shown_from).await?;
                    }
                } else {
                    verdict.signature =
                        signature_of(keys, &decrypted.signatures, &outer_from).await?;
                    out_header = replace_content_fields(header, &plaintext);
                    out_body = plaintext.into();
                }
            }
            Err(error) => match error {
                KeyError::Deadline { .. } | KeyError::WorkerGone | KeyError::Unavailable { .. } => {
                    return Err(InboundError::Temporary(error))
                }
                KeyError::Gpg { ref source, .. } if crate::keys::is_temporary(source) => {
                    return Err(InboundError::Temporary(error))
                }
                other => verdict.encryption = Encryption::Undecryptable(other.to_string()),
            },
        }
    } else if is("multipart", "signed") && protocol.as_deref() == Some("application/pgp-signature")
    {
        // With RFC 9788 fields in the signed part, a MUA that knows them shows its From: the
        // signer is compared with that one, and a different outer From is flagged.
        let protected = signed_part_header(raw).filter(|h| is_protected(h));
        let signed_from = protected
            .as_deref()
            .filter(|h| has_field(h, b"from"))
            .map(from_address);
        verdict.inner_from_mismatch = from_mismatch(&signed_from, &outer_from);
        let shown_from = signed_from.unwrap_or_else(|| outer_from.clone());
        verdict.signature = verify_multipart_signed(keys, raw, &shown_from).await?;
        // What the signature covers is what is shown, as for encrypted mail: the signed
        // Subject, not one a resender put outside, and no outer Reply-To the signer did not
        // write. The body, the multipart/signed, stays as it came, to be verified again.
        // Also through a mailing list: anyone resending a captured message can add a List-Id
        // (review: a forged one kept Mallory's Reply-To under Alice's valid signature), and a
        // List-Post, where a client's "reply to list" goes: both go; other List-* fields stay.
        if let (Some(protected), Signature::Valid { .. }) = (&protected, &verdict.signature) {
            out_header = merge_headers(header, header, Some(protected)).0;
        }
    }

    // Inline PGP's signed text (mutt's pgp_autoinline), in clear or as what a decryption gave
    // (an MX's or the sender's encryption around it; review: "encrypted; signature=none"
    // where the same text in clear read valid): the body is the signed block and nothing
    // else, so what the signature covers is all the body shows; the header is vouched for no
    // more than a multipart/signed's without protected fields.
    let readable = !matches!(verdict.encryption, Encryption::Undecryptable(_));
    if readable && verdict.signature == Signature::Unsigned {
        // The message as it is read in clear; a decrypted one, as it will be stored.
        let decrypted = (verdict.encryption == Encryption::Decrypted)
            .then(|| [&out_header[..], &out_body[..]].concat());
        let reparsed = decrypted.as_deref().map(parse_message);
        let message = match &reparsed {
            Some(entity) => entity.as_deref(),
            None => parsed.as_deref(),
        };
        if let Some(signed) = message.and_then(inline_cleartext) {
            verdict.signature =
                verify_inline_cleartext(keys, signed, &from_address(&out_header)).await?;
        }
    }

    // The layer's plaintext is a whole ciphertext again: decrypted too, once, and then that
    // is what is shown, with its own verdict. Only an unsigned layer's (nobody vouched for
    // what it wraps, and nothing sits beside the inner ciphertext: it is the whole entity).
    // Undecryptable inside, the layer is kept as decrypted so far.
    // Looked for only where a ciphertext can be (most unsigned layers are an MX's copy of
    // plain mail, not parsed again for nothing).
    // (Only for an unsigned layer: the scan of the body is not made for every message.)
    let may_be_ciphertext = || {
        contains_ignore_case(&out_header, b"multipart/encrypted")
            || out_body
                .windows(PGP_MESSAGE.len())
                .any(|w| w == PGP_MESSAGE)
    };
    let rewrapped = unsigned_layer
        .filter(|_| depth == 0 && verdict.signature == Signature::Unsigned && may_be_ciphertext());
    if let Some(layer_header) = rewrapped {
        let entity = [&layer_header[..], &out_body[..]].concat();
        let inner = parse_message(&entity);
        if whole_message_ciphertext(inner.as_deref()).is_some() {
            let inner = Box::pin(process_layer(keys, &entity, depth + 1)).await?;
            if inner.verdict.encryption == Encryption::Decrypted {
                return Ok(inner);
            }
        }
    }

    let message = with_verdict(&out_header, &out_body, &verdict);
    Ok(Processed { message, verdict })
}

/// A message GnuPG kept failing on for a temporary reason while it worked for others (it took
/// longer than the deadline every time, say): kept as it came, with the reason, marked like an
/// undecryptable message so that the retry of those tries it again later.
pub fn unprocessed(raw: &[u8], reason: &str) -> Processed {
    let (header, body) = split(raw);
    let verdict = Verdict {
        encryption: Encryption::Undecryptable(reason.to_string()),
        signature: Signature::Unsigned,
        inner_from_mismatch: false,
    };
    let message = with_verdict(header, body, &verdict);
    Processed { message, verdict }
}

/// `header` (with its blank line) without any sender-supplied verdict field and with ours,
/// then `body`.
fn with_verdict(header: &[u8], body: &[u8], verdict: &Verdict) -> Vec<u8> {
    let field = format!("{VERDICT_FIELD}: {}\r\n", verdict.field_value());
    with_last_field(&strip_field(header, VERDICT_FIELD), body, field.as_bytes())
}

/// `raw` with `field` (whole lines, CRLF) as the last field of its header.
pub(crate) fn with_field_added(raw: &[u8], field: &[u8]) -> Vec<u8> {
    let (header, body) = split(raw);
    with_last_field(header, body, field)
}

/// `header` (with its blank line) with `field` last, then `body`.
fn with_last_field(header: &[u8], body: &[u8], field: &[u8]) -> Vec<u8> {
    let mut message = header.to_vec();
    // A message that is all header, without a final line break: ours must not be glued to
    // its last field.
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    // The header block ends with its blank line; ours goes just before it. A message with
    // no header field at all ("\r\n" then the body) gets ours as its only one.
    let blank = if message.ends_with(b"\r\n\r\n") || message == b"\r\n" {
        2
    } else {
        0
    };
    let at = message.len() - blank;
    message.splice(at..at, field.iter().copied());
    if blank == 0 {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(body);
    message
}

async fn signature_of(
    keys: &KeyService,
    checks: &[SignatureCheck],
    from: &Option<String>,
) -> Result<Signature, InboundError> {
    // The From address is compared as the outgoing side compares addresses: the domain in
    // either IDNA form (review: `u@xn--bcher-kva.de` against the user ID `u@bücher.de`,
    // sealpost's own signed mail, read "mismatch").
    // A valid signature counts (one whose key holds the From address before others: two
    // people may sign one text), else a good one by a key expired since, else a bad one, else
    // an unknown key.
    for expired in [false, true] {
        let good = |c: &&SignatureCheck| match &c.state {
            SignatureState::Valid => !expired,
            SignatureState::Expired(_) => expired,
            _ => false,
        };
        let mut first = None;
        for check in checks.iter().filter(good) {
            let key = keys
                .signer_key(&check.fingerprint)
                .await
                .map_err(InboundError::Temporary)?;
            if from.as_ref().is_some_and(|f| {
                let from = crate::rewrite::policy::canonical_address(f);
                key.addresses
                    .iter()
                    .any(|id| crate::rewrite::policy::canonical_address(id) == from)
            }) {
                return Ok(signature_verdict(check, &key.primary, true));
            }
            first.get_or_insert((check, key.primary));
        }
        if let Some((check, primary)) = first {
            return Ok(signature_verdict(check, &primary, false));
        }
    }
    // A bad one before an unknown key: a signature a known key made that no longer matches
    // is news, and an unknown key vouches for nothing.
    let pick = checks
        .iter()
        .find(|c| matches!(c.state, SignatureState::Bad(_)))
        .or_else(|| checks.first());
    let Some(check) = pick else {
        return Ok(Signature::Unsigned);
    };
    let primary = match check.state {
        // Named by the fingerprint gpg gave or the 64-bit ID it could not resolve: no key to
        // look up.
        SignatureState::UnknownKey => String::new(),
        // Only to name the key: a lookup that fails leaves the signature's own fingerprint,
        // rather than holding up a message whose verdict is known (review).
        _ if check.fingerprint.len() >= 40 => keys
            .signer_key(&check.fingerprint)
            .await
            .map(|key| key.primary)
            .unwrap_or_default(),
        _ => String::new(),
    };
    Ok(signature_verdict(check, &primary, false))
}

/// The verdict on one signature; `from_matches`: the signer's key has the From address.
/// `primary`: the fingerprint of the key that holds the signing (sub)key, the one a user
/// knows the key by (review: a signing subkey's fingerprint in `signer=`, another than
/// `gpg --fingerprint` and sealpost's own outgoing logs show); empty when not known, and
/// then the signature's own fingerprint or ID stands.
fn signature_verdict(check: &SignatureCheck, primary: &str, from_matches: bool) -> Signature {
    let fingerprint = match primary {
        "" => check.fingerprint.clone(),
        primary => primary.to_string(),
    };
    match &check.state {
        SignatureState::Valid => Signature::Valid {
            fingerprint,
            from_matches,
        },
        SignatureState::Expired(reason) => Signature::Expired {
            fingerprint,
            from_matches,
            reason: reason.clone(),
        },
        SignatureState::UnknownKey => Signature::UnknownKey { fingerprint },
        SignatureState::Bad(reason) => Signature::Bad {
            fingerprint,
            reason: reason.clone(),
        },
    }
}

/// RFC 3156 §5: a `multipart/signed` entity (a whole message or a decrypted one) — the first
/// part's exact bytes, MIME header included, against the second part's signature.
async fn verify_multipart_signed(
    keys: &KeyService,
    entity: &[u8],
    from: &Option<String>,
) -> Result<Signature, InboundError> {
    let Some(message) = parse_message(entity) else {
        return Ok(Signature::Unsigned);
    };
    let ct = message.parts.first().and_then(|p| p.content_type());
    let signed = ct.is_some_and(|ct| {
        ct.c_type.eq_ignore_ascii_case("multipart")
            && ct
                .c_subtype
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
            && ct
                .attribute("protocol")
                .is_some_and(|p| p.eq_ignore_ascii_case("application/pgp-signature"))
    });
    if !signed {
        return Ok(Signature::Unsigned);
    }
    let map = crate::imap::summary::summarize(entity).parts;
    let root = &map.parts[0];
    let boundary = ct
        .and_then(|ct| ct.attribute("boundary"))
        .unwrap_or_default();
    // A boundary of characters RFC 2046 §5.1.1 does not allow there is read differently by
    // different parsers: one that ends in a blank (Python's email trims it, so "--b" lines
    // delimit other parts than the "--b " ones verified here), or one written with a
    // backslash (a quoted-pair here, a character of the boundary to others). Review: a
    // genuine signature over Alice's parts vouched for Mallory's, shown by those parsers.
    let raw_content_type = fields(split(entity).0)
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"content-type"))
        .any(|(_, field)| field.contains(&b'\\'));
    let bchars = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if raw_content_type || boundary.ends_with(' ') || !boundary.bytes().all(bchars) {
        return Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: "multipart/signed whose boundary other readers read another way (RFC 2046 \
                     5.1.1: no blank at its end, no quoted-pair)"
                .into(),
        });
    }
    // The line itself is not quoted into the verdict: it is the sender's text.
    if loose_delimiter(&entity[root.body()], boundary.as_bytes()) {
        return Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: "multipart/signed with a line that begins with its boundary but is no \
                     delimiter by RFC 2046 5.1.1"
                .into(),
        });
    }
    // What follows the close delimiter is epilogue to RFC 2046, and to the readers here; a
    // delimiter line in it makes more parts to a reader that does not stop at the first close
    // (review: Mallory's HTML part after Alice's signed text and signature).
    if delimiter_after_close(&entity[root.body()], boundary.as_bytes()) {
        return Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: "multipart/signed with a delimiter line after its close delimiter".into(),
        });
    }
    // RFC 3156 §5: exactly the signed part and the signature. A second Content-Type (mail-parser
    // reads the last, the IMAP summary and MUAs the first) or a third part would let a genuine
    // signature over one part vouch for a message that shows other parts.
    let two_parts = match &message.parts[0].body {
        PartType::Multipart(children) => {
            children.len() == 2
                && message
                    .parts
                    .get(children[1] as usize)
                    .is_some_and(|p| has_type(p.content_type(), "application", "pgp-signature"))
        }
        _ => false,
    };
    // The same two parts by both readings: mail-parser's (the signature taken here) and the
    // IMAP summary's (the signed bytes, and what clients are shown). Where they disagree on the
    // boundary (RFC 2231 `boundary*1`, which mail-parser joins to `boundary` and the summary does
    // not; one over the summary's 80 characters), a genuine signature read one way vouched for
    // other parts read the other way (review).
    let same_parts = match &message.parts[0].body {
        PartType::Multipart(children) => {
            children.len() == root.children.len()
                && children.iter().zip(&root.children).all(|(&m, &s)| {
                    let (m, s) = (&message.parts[m as usize], &map.parts[s]);
                    m.offset_header as usize == s.start && m.offset_end as usize == s.body().end
                })
        }
        _ => false,
    };
    if !two_parts
        || !same_parts
        || root.children.len() != 2
        || !crate::message::parse::single_fields(&message.parts[0])
    {
        return Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: "multipart/signed that is not exactly one signed part and its signature".into(),
        });
    }
    let (Some(&first), Some(_)) = (root.children.first(), root.children.get(1)) else {
        return Ok(Signature::Unsigned);
    };
    let first = &map.parts[first];
    let signed_bytes = entity[first.start..first.body().end].to_vec();
    let signature = message
        .parts
        .get(match &message.parts[0].body {
            PartType::Multipart(children) if children.len() >= 2 => children[1] as usize,
            _ => return Ok(Signature::Unsigned),
        })
        .map(|p| p.contents().to_vec())
        .unwrap_or_default();
    // An opaque signed message or a cleartext-signed text in the signature part: gpg
    // verifies nothing against the signed part and reports no signature (review: read
    // "signature=none", while a garbled signature part reads bad).
    verdict_of(
        keys,
        keys.verify_detached(signature, signed_bytes).await,
        "multipart/signed whose signature part holds no detached signature",
        from,
    )
    .await
}

/// The verdict on what a verification gave; `none_found`: why a verification that found no
/// signature at all is bad.
async fn verdict_of(
    keys: &KeyService,
    checked: Result<Vec<SignatureCheck>, KeyError>,
    none_found: &str,
    from: &Option<String>,
) -> Result<Signature, InboundError> {
    match checked {
        Ok(checks) if checks.is_empty() => Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: none_found.into(),
        }),
        Ok(checks) => signature_of(keys, &checks, from).await,
        Err(KeyError::Gpg { source, .. }) if !crate::keys::is_temporary(&source) => {
            Ok(Signature::Bad {
                fingerprint: String::new(),
                reason: source.to_string(),
            })
        }
        // Refused before gpg ran (too many signatures): about the message, for good.
        Err(KeyError::Refused { detail, .. }) => Ok(Signature::Bad {
            fingerprint: String::new(),
            reason: detail,
        }),
        Err(error) => Err(InboundError::Temporary(error)),
    }
}

/// The armored message when the text is exactly one PGP MESSAGE block (whitespace around it
/// allowed, nothing else) that holds encrypted data: session keys, then the encrypted packet
/// (the outgoing side's test). A signed-only message (`gpg --sign --armor`) is no ciphertext:
/// taken for one, it would be stored undecryptable and retried for nothing.
fn inline_armor(text: &[u8]) -> Option<Vec<u8>> {
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let trimmed = text.trim_ascii();
    (trimmed.starts_with(PGP_MESSAGE)
        && trimmed.ends_with(END)
        && trimmed
            .windows(PGP_MESSAGE.len())
            .filter(|w| *w == PGP_MESSAGE)
            .count()
            == 1
        && crate::message::parse::armored_ciphertext_any_headers(trimmed))
    .then(|| trimmed.to_vec())
}

/// The verdict on a cleartext-signed text ([`inline_cleartext`]).
async fn verify_inline_cleartext(
    keys: &KeyService,
    signed: Vec<u8>,
    from: &Option<String>,
) -> Result<Signature, InboundError> {
    verdict_of(
        keys,
        keys.verify_cleartext(signed).await,
        "a cleartext-signed text whose signature gpg found none in",
        from,
    )
    .await
}

/// The text of a single-part message whose body is exactly one cleartext-signed block (RFC
/// 4880 §7), its transfer encoding undone but in its own charset: the signature is over those
/// bytes. Only a block with no text the signature does not cover is taken: gpg calls a
/// signature good with armor headers (Comment: ...), text on the armor lines or lines after
/// the checksum, all of which a client shows (review: "Comment: wire 10000 EUR" under Alice's
/// valid signature). So the block must be exactly: the BEGIN line, `Hash:` lines, a blank
/// line, the text (dash-escaped), the signature's BEGIN line, a blank line, base64 lines, an
/// optional checksum, the END line; whitespace around it, nothing else. And every reader must
/// see that one text part: one Content-Type and one Content-Transfer-Encoding field (a second
/// Content-Type made the IMAP summary and clients read another part than the one verified:
/// review), the IMAP summary's body the same bytes, base64 that decodes strictly (padding in
/// mid-body made decoders stop at different places: review).
fn inline_cleartext(message: &mail_parser::Message<'_>) -> Option<Vec<u8>> {
    if message.parts.len() != 1 {
        return None;
    }
    let root = message.parts.first()?;
    let content_type = root.content_type();
    if content_type.is_some() && !has_type(content_type, "text", "plain")
        || !crate::message::parse::single_fields(root)
    {
        return None;
    }
    let body = root.offset_body as usize..root.offset_end as usize;
    let summary = crate::imap::summary::summarize(message.raw_message()).parts;
    let shown = summary.parts.first()?;
    if !shown.children.is_empty() || shown.body() != body {
        return None;
    }
    let raw = message.raw_message().get(body)?;
    let encoding = root
        .content_transfer_encoding()
        .map(str::to_ascii_lowercase);
    let text = match encoding.as_deref() {
        Some("quoted-printable") => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(raw)?
        }
        Some("base64") => {
            use base64::Engine as _;
            let packed: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(packed)
                .ok()?
        }
        Some("7bit" | "8bit" | "binary") | None => raw.to_vec(),
        Some(_) => return None,
    };
    let trimmed = text.trim_ascii();
    canonical_cleartext_block(trimmed).then(|| trimmed.to_vec())
}

/// Whether `line` is an armor header of a signature that a known program writes into every
/// signature it makes (its name and version, or its fixed comment), not text of the sender's
/// choosing, which a reader would see under the signed text as if it were signed: GnuPG 1.4
/// and 2.0 (`Version: GnuPG v1.4.11 (GNU/Linux)`), Enigmail and GPGTools (`Comment:`),
/// OpenPGP.js and Mailvelope. Old inline-signed mail, an imported archive say, is then
/// checked rather than left unchecked.
fn known_armor_header(line: &[u8]) -> bool {
    const COMMENTS: &[&str] = &[
        "Using GnuPG with Thunderbird - http://www.enigmail.net/",
        "Using GnuPG with Thunderbird - https://www.enigmail.net/",
        "Using GnuPG with Icedove - http://www.enigmail.net/",
        "Using GnuPG with Mozilla - http://enigmail.mozdev.org/",
        "Using GnuPG with Thunderbird - http://enigmail.mozdev.org/",
        "Using GnuPG with SeaMonkey - http://enigmail.mozdev.org/",
        "GPGTools - https://gpgtools.org",
        "GPGTools - http://gpgtools.org",
        "https://openpgpjs.org",
        "http://openpgpjs.org",
        "https://www.mailvelope.com",
    ];
    const PROGRAMS: &[&str] = &["GnuPG", "GnuPG/MacGPG2", "OpenPGP.js", "Mailvelope", "BCPG"];
    const SYSTEMS: &[&str] = &[
        "GNU/Linux",
        "MingW32",
        "Darwin",
        "Cygwin",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "SunOS",
    ];
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    if let Some(comment) = line.strip_prefix("Comment: ") {
        return COMMENTS.contains(&comment);
    }
    let Some(version) = line.strip_prefix("Version: ") else {
        return false;
    };
    let (version, system) = match version.strip_suffix(')').and_then(|v| v.rsplit_once(" (")) {
        Some((version, system)) => (version, Some(system)),
        None => (version, None),
    };
    if system.is_some_and(|s| !SYSTEMS.contains(&s)) {
        return false;
    }
    PROGRAMS.iter().any(|program| {
        version
            .strip_prefix(program)
            .and_then(|rest| rest.strip_prefix(" v"))
            .is_some_and(|number| {
                number.len() <= 16
                    && number.starts_with(|c: char| c.is_ascii_digit())
                    && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
    })
}

/// Whether `block` is a cleartext-signed block with nothing in it that its signature does not
/// cover (see [`inline_cleartext`]).
fn canonical_cleartext_block(block: &[u8]) -> bool {
    if block.contains(&0) {
        return false;
    }
    let mut lines = block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if lines.next() != Some(b"-----BEGIN PGP SIGNED MESSAGE-----".as_slice()) {
        return false;
    }
    // Hash: lines (one or more), then the blank line.
    let mut hashes = 0;
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let Some(names) = line.strip_prefix(b"Hash: ") else {
            return false;
        };
        if names.is_empty()
            || !names
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b',' || *b == b'-')
        {
            return false;
        }
        hashes += 1;
    }
    if hashes == 0 {
        return false;
    }
    // The signed text: a line that begins with a dash is dash-escaped, up to the signature.
    let mut in_signature = false;
    for line in lines.by_ref() {
        if line == b"-----BEGIN PGP SIGNATURE-----" {
            in_signature = true;
            break;
        }
        if line.starts_with(b"-") && !line.starts_with(b"- ") {
            return false;
        }
        if line.contains(&b'\r') {
            return false;
        }
    }
    // No armor header but a known program's own (see [`known_armor_header`]), the blank line,
    // then base64, an optional checksum, then END.
    if !in_signature {
        return false;
    }
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if !known_armor_header(line) {
            return false;
        }
    }
    let mut data = 0;
    let mut checksum = false;
    for line in lines.by_ref() {
        if line == b"-----END PGP SIGNATURE-----" {
            return data > 0 && lines.next().is_none();
        }
        let is_base64 = |l: &[u8]| {
            !l.is_empty()
                && l.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        };
        if checksum || !is_base64(line) {
            return false;
        }
        if line.len() == 5 && line[0] == b'=' {
            checksum = true;
        } else {
            data += 1;
        }
    }
    false
}

/// Whether the whole message is ciphertext, with no part in clear (the outgoing core's
/// pass-through test, `message::parse::whole_ciphertext`): what the write-back sends upstream
/// as it is must have no part in clear.
pub fn is_whole_ciphertext(raw: &[u8]) -> bool {
    parse_message(raw).is_some_and(|m| crate::message::parse::whole_ciphertext(&m))
}

/// `raw` parsed by mail-parser, unless it nests attached messages too deeply to work on
/// safely ([`crate::message::parse::MAX_NESTING`]): such a message is kept as it came, as one
/// that does not parse.
fn parse_message(raw: &[u8]) -> Option<crate::message::parse::Bounded<'_>> {
    crate::message::parse::parse_bounded(raw).ok().flatten()
}

/// Whether a Content-Type is `t/s` (ASCII case-insensitively).
fn has_type(content_type: Option<&mail_parser::ContentType<'_>>, t: &str, s: &str) -> bool {
    content_type.is_some_and(|ct| {
        ct.c_type.eq_ignore_ascii_case(t)
            && ct
                .c_subtype
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(s))
    })
}

/// The message (CRLF line ends) without any `Sealpost-Verdict` field. What goes back upstream
/// is the message, not this side's judgement of it; and what a client APPENDs or `sealpost
/// import` reads was not verified here: it may be mail copied in from elsewhere, with a
/// verdict an attacker wrote. Only sealpost's own verification adds one.
pub fn without_verdict(raw: &[u8]) -> Vec<u8> {
    let (header, body) = split(raw);
    let mut out = strip_field(header, VERDICT_FIELD);
    out.extend_from_slice(body);
    out
}

/// [`without_verdict`] for a message held whole: returned as it is (no copy) when nothing
/// changed, as for almost every message. Compared byte for byte: a bare CR made a blank
/// keeps the length (review: APPEND kept a verdict field hidden behind one).
pub fn into_without_verdict(raw: Vec<u8>) -> Vec<u8> {
    let (header, body) = split(&raw);
    let stripped = strip_field(header, VERDICT_FIELD);
    if stripped == header {
        return raw;
    }
    let mut out = stripped;
    out.extend_from_slice(body);
    out
}

/// The `name` fields of a header, as they are written (folding kept), in their order.
pub(crate) fn field_lines(header: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (field_name, field) in fields(header) {
        if field_name.eq_ignore_ascii_case(name.as_bytes()) {
            out.extend_from_slice(field);
        }
    }
    out
}

/// The decrypted entity of `header` and `body`: `plaintext` itself when they are it, split
/// at its blank line (a large message is not copied again), else the two joined.
fn entity_of<'a>(plaintext: &'a [u8], header: &[u8], body: &[u8]) -> std::borrow::Cow<'a, [u8]> {
    if plaintext.len() == header.len() + body.len()
        && plaintext.starts_with(header)
        && plaintext.ends_with(body)
    {
        std::borrow::Cow::Borrowed(plaintext)
    } else {
        std::borrow::Cow::Owned([header, body].concat())
    }
}

/// The header block (with its blank line when there is one) and the body.
pub(crate) fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    if raw.starts_with(b"\r\n") {
        return (&raw[..2], &raw[2..]);
    }
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&raw[..at + 4], &raw[at + 4..]),
        None => (raw, &[]),
    }
}

/// The header block without any field called `name` (ASCII case-insensitively; whitespace
/// before the colon ignored). For the verdict field, also without any field whose name only
/// looks like it ([`verdict_lookalike`]).
pub fn strip_field(header: &[u8], name: &str) -> Vec<u8> {
    let lookalikes = name.eq_ignore_ascii_case(VERDICT_FIELD);
    // A bare CR (not before LF) ends a line for some readers and not for others: a field
    // written behind one, inside another field, would survive here and be shown there. It
    // becomes a blank, as Postfix's cleanup makes it.
    let header = bare_cr_as_blank(header);
    let header = &header[..];
    let mut out = Vec::with_capacity(header.len());
    let kept = fields(header);
    for (field_name, field) in &kept {
        // A header that starts with a folded line (" Sealpost-Verdict: ...") has a first
        // field with blanks before its name: no field to RFC 5322, but one to readers that
        // skip the blanks, sealpost's own SEARCH HEADER among them (review). It goes too.
        let named = field_name
            .trim_ascii_start()
            .eq_ignore_ascii_case(name.as_bytes());
        if !(named || lookalikes && verdict_lookalike(field_name)) {
            out.extend_from_slice(field);
        }
    }
    let consumed: usize = kept.iter().map(|(_, f)| f.len()).sum();
    out.extend_from_slice(&header[consumed..]);
    out
}

/// Whether a field name reads as sealpost's verdict field to a person or to a client that
/// shows fields by prefix: its letters and digits, with everything else dropped (dashes
/// and other punctuation, a zero-width or no-break space, a control character, accents),
/// hold `sealpostverdict` in any case (review: "Sealpost-Verdict" with a zero-width space, a
/// no-break space or a vertical tab after it, with U+2010 for its hyphen, "Sealpost-Verdicts",
/// and then "Sealpost_Verdict", "Sealpost.Verdict", "SealpostVerdict", "Sealpost--Verdict" and
/// "X-Sealpost-Verdict" were kept, and mutt showed them above sealpost's own). Letters are
/// compared as they look: compatibility forms as their letter (fullwidth, mathematical,
/// Roman numerals), look-alikes of other scripts and small capitals as the Latin letter, and
/// `I`, `l`, `1` and `|`, or `O` and `0`, as one (review: "Sealpost-Ｖerdict",
/// "Sealpost-ᴠerdict", "Sealpost-Vérdict" and a Cyrillic "г" for the "r" were kept).
fn verdict_lookalike(field_name: &[u8]) -> bool {
    use unicode_normalization::UnicodeNormalization;
    // As Unicode's confusables list has them (review: a Cyrillic "е" in "Vеrdict" kept the
    // field), for the letters of the name.
    let skeleton = |c: char| match c {
        'а' | 'ɑ' | 'α' | 'ᴀ' | '⍺' => 'a',
        'с' | 'ϲ' | 'ᴄ' => 'c',
        'ԁ' | 'ᴅ' => 'd',
        'е' | 'ε' | 'ᴇ' | 'ҽ' => 'e',
        'і' | 'ı' | 'ι' | 'ӏ' | 'ɪ' | 'ⅼ' | 'Ι' | 'І' | 'Ӏ' | 'ʟ' | 'ǀ' | 'l' | '1' | '|' => {
            'i'
        }
        'о' | 'ο' | 'օ' | 'ᴏ' | '0' => 'o',
        'р' | 'ρ' | 'ᴘ' => 'p',
        'г' | 'ʀ' | 'ᴦ' => 'r',
        'ѕ' | 'ꜱ' => 's',
        'т' | 'τ' | 'ᴛ' => 't',
        'ν' | 'ѵ' | 'ᴠ' => 'v',
        _ => c,
    };
    let letters: String = String::from_utf8_lossy(field_name)
        .nfkd()
        .flat_map(char::to_lowercase)
        .map(skeleton)
        .filter(char::is_ascii_alphanumeric)
        .collect();
    // "cl" reads as "d".
    letters.replace("ci", "d").contains("seaipostverdict")
}

/// The header of decrypted text that is not a MIME entity (UTF-8, as inline text is read).
const TEXT_HEADER: &[u8] = b"Content-Type: text/plain; charset=utf-8\r\n\
    Content-Transfer-Encoding: 8bit\r\n\r\n";

/// Whether the first paragraph of decrypted PGP/MIME content is a MIME header: every line a
/// field (a name of RFC 5322 ftext, a colon) or its continuation, and a Content-* field among
/// them. Text whose first line only looks like a field ("Note: ...") has no Content-Type.
fn is_mime_header(header: &[u8]) -> bool {
    let fields = fields(header);
    let consumed: usize = fields.iter().map(|(_, f)| f.len()).sum();
    let well_formed = fields.iter().all(|(name, field)| {
        !name.is_empty()
            && name.iter().all(|b| (33..=126).contains(b) && *b != b':')
            && field.contains(&b':')
    });
    well_formed
        && matches!(&header[consumed..], b"\r\n" | b"")
        && fields.iter().any(|(name, _)| is_content_field(name))
}

/// `raw` with each bare CR of its header (up to the first empty line) a blank.
fn header_crs_blanked(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (header, body) = split(raw);
    match bare_cr_as_blank(header) {
        std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(raw),
        std::borrow::Cow::Owned(blanked) => std::borrow::Cow::Owned([&blanked[..], body].concat()),
    }
}

fn bare_cr_as_blank(header: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = |i: usize| header[i] == b'\r' && header.get(i + 1) != Some(&b'\n');
    if !(0..header.len()).any(bare) {
        return std::borrow::Cow::Borrowed(header);
    }
    let blanked = (0..header.len())
        .map(|i| if bare(i) { b' ' } else { header[i] })
        .collect();
    std::borrow::Cow::Owned(blanked)
}

fn is_content_field(name: &[u8]) -> bool {
    name.len() >= 8 && name[..8].eq_ignore_ascii_case(b"content-")
}

/// Whether the header's Content-Type has a parameter of one of these (lower-case) names.
fn content_type_names(header: &[u8], parameters: &[&str]) -> bool {
    fields(header).iter().any(|(name, field)| {
        name.eq_ignore_ascii_case(b"content-type")
            && String::from_utf8_lossy(field)
                .to_ascii_lowercase()
                .replace([' ', '\t', '\r', '\n'], "")
                .split(';')
                .any(|p| {
                    parameters
                        .iter()
                        .any(|name| p.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
                })
    })
}

/// Whether a protected header is RFC 9788's: its Content-Type carries `hp`.
fn is_rfc9788(inner_header: &[u8]) -> bool {
    content_type_names(inner_header, &["hp"])
}

fn is_protected(inner_header: &[u8]) -> bool {
    content_type_names(inner_header, &["protected-headers", "hp"])
}

/// Fields that route replies or notices. When the protected set has a From (the sender's
/// MUA protects the addressing fields, as Thunderbird and sealpost do), an outer one of these
/// is shown only when the protected set has it too: anyone who forwards a captured signed
/// message could add a Reply-To outside, and a reply would take the quoted plaintext there.
/// A protected set without From (Mutt protects only the Subject) leaves the outer fields be.
const REPLY_ROUTING: [&[u8]; 12] = [
    b"sender",
    b"reply-to",
    b"mail-followup-to",
    b"mail-reply-to",
    b"followup-to",
    b"disposition-notification-to",
    b"return-receipt-to",
    // A client's "reply to list" writes to List-Post (review: Mallory's, added with a List-Id
    // to Alice's signed message, kept); Errors-To takes bounces of the reply.
    b"list-post",
    b"errors-to",
    // Gnus and Emacs's message mode copy a wide reply to Mail-Copies-To (review).
    b"mail-copies-to",
    b"x-mail-copies-to",
    b"resent-reply-to",
];

/// The protected fields that are shown in place of the outer ones: those a reader sees
/// (RFC 9788 header protection is for them). Others in the protected set are left out, and
/// never replace an outer field: the sender writes the protected set, and anyone can encrypt
/// to the user, so a protected Received, Return-Path, Authentication-Results or spam
/// verdict would stand in for what the user's own mail server recorded.
const PROTECTABLE: [&[u8]; 12] = [
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"keywords",
    b"comments",
    b"thread-topic",
    b"organization",
];

fn is_reply_routing(name: &[u8]) -> bool {
    REPLY_ROUTING.iter().any(|p| p.eq_ignore_ascii_case(name))
}

fn is_protectable(name: &[u8]) -> bool {
    PROTECTABLE
        .iter()
        .chain(REPLY_ROUTING.iter())
        .any(|p| p.eq_ignore_ascii_case(name))
}

/// Fields only mail servers write: trace, authentication, spam verdicts, delivery addresses
/// (and sealpost's own). One of these in the protected set is the sender's claim, never shown.
fn is_servers(name: &[u8]) -> bool {
    const EXACT: [&[u8]; 12] = [
        b"received",
        b"return-path",
        b"authentication-results",
        b"received-spf",
        b"dkim-signature",
        b"domainkey-signature",
        b"delivered-to",
        b"x-original-to",
        b"envelope-to",
        b"x-envelope-from",
        b"x-envelope-to",
        b"x-received",
    ];
    const PREFIXES: [&[u8]; 4] = [b"arc-", b"x-spam", b"sealpost-", b"x-sealpost-"];
    EXACT.iter().any(|e| e.eq_ignore_ascii_case(name))
        || PREFIXES.iter().any(|p| {
            name.get(..p.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(p))
        })
}

/// Whether the header has a field of this (lower-case) name.
fn has_field(header: &[u8], name: &[u8]) -> bool {
    fields(header)
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Whether the From that is shown (the protected one) is not the outer one. `inner` is None
/// when there is no protected From field, Some(None) when it is not exactly one mailbox.
fn from_mismatch(inner: &Option<Option<String>>, outer: &Option<String>) -> bool {
    match (inner, outer) {
        (None, _) => false,
        (Some(Some(inner)), Some(outer)) => !inner.eq_ignore_ascii_case(outer),
        (Some(_), _) => true,
    }
}

/// Outer fields minus the outer Content-* ones, with the inner entity's Content-* fields (and,
/// when protected, its [`PROTECTABLE`] and [`REPLY_ROUTING`] fields, which replace outer
/// fields of the same name; outer [`REPLY_ROUTING`] fields go when the protected set has a
/// From, and, in RFC 9788's form, every outer one of those kinds but Date, Message-ID and the
/// over-long). Returns the protected
/// From: None when the protected set has no From field, Some(None) when it is not exactly
/// one mailbox.
///
/// `protected` is the header that carries the protected fields: the decrypted entity's own, or,
/// when it is a `multipart/signed` (RFC 3156 §6.1, signed then encrypted), its signed part's.
/// RFC 9788 §2.2 HP-Outer fields only record what the outside showed and are not copied.
fn merge_headers(
    outer: &[u8],
    inner: &[u8],
    protected: Option<&[u8]>,
) -> (Vec<u8>, Option<Option<String>>) {
    let inner_fields = fields(inner);
    let outer_fields = fields(outer);
    // Reader-facing fields replace the outer ones; others the sender protected (Chat-*,
    // Importance, Autocrypt-Gossip) are added when the outside lacks them, unless only a mail
    // server may write them.
    let protected_fields: Vec<_> = protected
        .map(fields)
        .unwrap_or_default()
        .into_iter()
        .filter(|(n, _)| {
            is_protectable(n)
                || (!is_content_field(n)
                    && !n.eq_ignore_ascii_case(b"hp-outer")
                    && !is_servers(n)
                    && !outer_fields.iter().any(|(o, _)| o.eq_ignore_ascii_case(n)))
        })
        .collect();
    let addressing = protected_fields
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"from"));
    // RFC 9788 (`hp`): the sender's MUA copied every field it wrote into the protected set,
    // so an outer one of those kinds it lacks is someone else's (review: Mallory's Cc on
    // Alice's genuine message, and a reply to all went to him; In-Reply-To moved it into his
    // thread), and goes. Not Date and Message-ID, which a server may add outside, nor a field
    // too long for a signed-only payload, which its sender leaves outside (sealpost's own
    // does, over MAX_SIGNED_FIELD). The older protected-headers="v1" promises no full copy
    // (LEAP's memoryhole protects no Cc, Delta Chat's first versions no To, In-Reply-To or
    // References: review), so there only the fields that route replies go.
    let full_copy = protected.is_some_and(is_rfc9788);
    let unprotected_kept = |name: &[u8], field: &[u8]| {
        name.eq_ignore_ascii_case(b"date")
            || name.eq_ignore_ascii_case(b"message-id")
            || field.len() > crate::message::mime::MAX_SIGNED_FIELD
    };
    let replaced = |name: &[u8], field: &[u8]| {
        is_content_field(name)
            || (addressing && is_reply_routing(name))
            || (addressing && full_copy && is_protectable(name) && !unprotected_kept(name, field))
            || protected_fields
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut out = Vec::new();
    for (name, field) in outer_fields {
        if !replaced(name, field) {
            out.extend_from_slice(field);
        }
    }
    for (name, field) in &inner_fields {
        if is_content_field(name) {
            out.extend_from_slice(field);
        }
    }
    for (_, field) in &protected_fields {
        out.extend_from_slice(field);
    }
    out.extend_from_slice(b"\r\n");
    let inner_from = protected
        .filter(|h| has_field(h, b"from"))
        .map(from_address);
    (out, inner_from)
}

/// The header of a `multipart/signed` entity's first (signed) part.
fn signed_part_header(entity: &[u8]) -> Option<Vec<u8>> {
    let message = parse_message(entity)?;
    let root = message.parts.first()?;
    if !root.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
    }) {
        return None;
    }
    // The header of the bytes `verify_multipart_signed` has verified (the IMAP summary's
    // part), not mail-parser's: that part begins right after the boundary, so text after it
    // on the delimiter line ("--b" "Reply-To: m@evil") would be a field of the part there.
    let map = crate::imap::summary::summarize(entity).parts;
    let first = &map.parts[*map.parts.first()?.children.first()?];
    entity.get(first.header()).map(<[u8]>::to_vec)
}

/// Whether a line of a multipart body begins with "--" and the boundary but is no
/// delimiter: RFC 2046 §5.1.1 allows only "--" after it (the close delimiter) and then blanks
/// (transport padding). Parsers disagree on such a line: mail-parser, Dovecot and the IMAP
/// summary take it for a delimiter, others for text. A signed message whose parts depend on
/// the parser would show another message than the one verified ("Johnny, You Are Fired",
/// USENIX Security 2019, MIME wrapping).
fn loose_delimiter(body: &[u8], boundary: &[u8]) -> bool {
    body.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.strip_prefix(b"--")
            .is_some_and(|l| l.starts_with(boundary))
            && crate::message::parse::delimiter_line(line, boundary).is_none()
    })
}

/// Whether a delimiter line of `boundary` comes after its first close delimiter in `body`.
fn delimiter_after_close(body: &[u8], boundary: &[u8]) -> bool {
    let mut closed = false;
    body.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match crate::message::parse::delimiter_line(line, boundary) {
            Some(_) if closed => true,
            Some((close, _)) => {
                closed = close;
                false
            }
            None => false,
        }
    })
}

/// The header with its Content-* fields replaced by those of decrypted inline text. The
/// charset is UTF-8 when the text is UTF-8; else the one the part around the armor named
/// (inline PGP senders label it with the plaintext's charset: review, Latin-1 text labelled
/// UTF-8 showed as replacement characters).
fn replace_content_fields(header: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, field) in fields(header) {
        if !is_content_field(name) {
            out.extend_from_slice(field);
        }
    }
    let named = crate::message::parse::mail_parser()
        .parse_headers(header)
        .and_then(|m| {
            m.root_part()
                .content_type()
                .and_then(|ct| ct.attribute("charset"))
                .map(str::to_string)
        })
        .filter(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:+".contains(&b))
        });
    let charset = match named {
        Some(named) if std::str::from_utf8(plaintext).is_err() => named,
        _ => "utf-8".to_string(),
    };
    let encoding = if plaintext.is_ascii() { "7bit" } else { "8bit" };
    out.extend_from_slice(
        format!(
            "Content-Type: text/plain; charset={charset}\r\n\
             Content-Transfer-Encoding: {encoding}\r\n\r\n"
        )
        .as_bytes(),
    );
    out
}

/// The address of the one mailbox in the one From field; None for anything else (no From,
/// two From fields, several mailboxes, a group): no signer can then match From (RFC 5322
/// §3.6.2 allows several authors, but "from=match" must not mean "one of them").
fn from_address(header: &[u8]) -> Option<String> {
    let message = crate::message::parse::mail_parser().parse_headers(header)?;
    let fields = message
        .root_part()
        .headers
        .iter()
        .filter(|h| matches!(h.name, mail_parser::HeaderName::From))
        .count();
    if fields != 1 {
        return None;
    }
    let value = header_value(header, b"from")?;
    let from = message.from()?;
    if from.as_list().is_none_or(|list| list.len() != 1) {
        return None;
    }
    let mailbox = from.first()?;
    // A quoted local part that needs no quotes, alone (`"alice"@example.org`), is alice's
    // address (RFC 5322 §3.4.1), when every reading agrees: mail-parser reads the quoted
    // string as a display name and "@example.org" as the address. With no display name
    // there is no other address to look for in one. (Review: a line "From" without a
    // colon, its value on the next, was the field read here, while mail-parser read the
    // From after it: from=match for the From shown, which another key had not signed.)
    if let Some(address) = std::str::from_utf8(&value)
        .ok()
        .and_then(|v| crate::rewrite::unquoted(v.trim()))
        .map(|a| a.to_ascii_lowercase())
    {
        let (local, domain) = address.rsplit_once('@')?;
        let name_agrees = mailbox
            .name()
            .is_some_and(|n| n.eq_ignore_ascii_case(local));
        let address_agrees = mailbox
            .address()
            .and_then(|a| a.strip_prefix('@'))
            .is_some_and(|d| d.eq_ignore_ascii_case(domain));
        let ours = crate::imap::summary::single_mailbox(&value);
        return (name_agrees && address_agrees && ours.as_deref() == Some(address.as_str()))
            .then_some(address);
    }
    let address = mailbox.address()?.to_ascii_lowercase();
    // Shown as one mailbox only if every reading agrees: the IMAP ENVELOPE's parser reads
    // broken input its own way (`alice@example.org <m@evil.example>` is alice there).
    if crate::imap::summary::single_mailbox(&value).as_deref() != Some(address.as_str()) {
        return None;
    }
    // A display name that names another address ("alice@example.org" <m@evil.example>) is
    // what many clients show instead of the address; "Alice @ Work", "Alice (@alice)" or the
    // address itself ("alice@example.org via Team") are no other address.
    if mailbox
        .name()
        .is_some_and(|n| names_another_address(n, &address))
    {
        return None;
    }
    // And as clients may read it: adjacent encoded words of one charset joined before they
    // are decoded (mail-parser decodes each alone: an ISO-2022-JP fullwidth @ split over two
    // words read as "!w"), and text in a charset not read here in each charset a client
    // might read it in (review: both read from=match).
    if crate::imap::summary::single_display_name(&value).is_some_and(|raw| {
        name_readings(&raw)
            .iter()
            .any(|n| names_another_address(n, &address))
    }) {
        return None;
    }
    Some(address)
}

/// The charsets text is read in when its own is not known here (an unknown label, or 8-bit
/// bytes with none): what mail clients may take it for.
const GUESSED_CHARSETS: [&[u8]; 13] = [
    b"utf-8",
    b"windows-1252",
    b"shift_jis",
    b"euc-jp",
    b"iso-2022-jp",
    b"gb18030",
    b"big5",
    b"euc-kr",
    b"utf-7",
    b"utf-16le",
    b"utf-16be",
    b"utf-32be",
    b"utf-32le",
];

/// The ways a display name as written (`raw`, encoded words not decoded) may read: adjacent
/// RFC 2047 encoded words of one charset joined before decoding (RFC 2047 §6.2 drops the
/// blanks between them; a character may be split over two), each word in its charset when it
/// is known here, and the words of an unknown charset and 8-bit text that is not UTF-8 in each
/// of [`GUESSED_CHARSETS`], one reading for each.
fn name_readings(raw: &[u8]) -> Vec<String> {
    use mail_parser::decoders::charsets::map::charset_decoder;
    // The pieces: (bytes, Some(charset)) for a run of encoded words, (text, None) otherwise.
    let mut pieces: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if let Some((charset, bytes, end)) = encoded_word(&raw[i..]) {
            match pieces.last_mut() {
                Some((joined, Some(last))) if last.eq_ignore_ascii_case(&charset) => {
                    joined.extend_from_slice(&bytes)
                }
                _ => pieces.push((bytes, Some(charset))),
            }
            i += end;
            // Blanks between two encoded words are no text.
            let blanks = raw[i..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if encoded_word(&raw[i + blanks..]).is_some() {
                i += blanks;
            }
            continue;
        }
        let next = raw[i + 1..]
            .windows(2)
            .position(|w| w == b"=?")
            .map_or(raw.len(), |p| i + 1 + p);
        match pieces.last_mut() {
            Some((text, None)) => text.extend_from_slice(&raw[i..next]),
            _ => pieces.push((raw[i..next].to_vec(), None)),
        }
        i = next;
    }
    // Bytes that are not text in their own charset (replacement characters) are guessed at
    // too: a client may fall back to another.
    let known = |piece: &(Vec<u8>, Option<Vec<u8>>)| match &piece.1 {
        Some(charset) => charset_decoder(charset)
            .map(|d| d(&piece.0))
            .filter(|t| !t.contains('\u{FFFD}')),
        // 7-bit text with ISO-2022 escapes is UTF-8, and JIS to clients (review).
        None => std::str::from_utf8(&piece.0)
            .ok()
            .filter(|t| !t.contains('\u{1b}'))
            .map(str::to_string),
    };
    let known: Vec<Option<String>> = pieces.iter().map(known).collect();
    let guessed = known.iter().any(Option::is_none);
    let mut readings = Vec::new();
    // UTF-32, which mail-parser does not decode, here.
    fn utf32(bytes: &[u8], big_endian: bool) -> String {
        bytes
            .chunks(4)
            .map(|c| {
                let mut word = [0u8; 4];
                word[..c.len()].copy_from_slice(c);
                let n = if big_endian {
                    u32::from_be_bytes(word)
                } else {
                    u32::from_le_bytes(word)
                };
                char::from_u32(n).unwrap_or('\u{FFFD}')
            })
            .collect()
    }
    for guess in GUESSED_CHARSETS {
        let decode = |bytes: &[u8]| match guess {
            b"utf-32be" => utf32(bytes, true),
            b"utf-32le" => utf32(bytes, false),
            _ => charset_decoder(guess)
                .map_or_else(|| String::from_utf8_lossy(bytes).into_owned(), |d| d(bytes)),
        };
        let reading: String = pieces
            .iter()
            .zip(&known)
            .map(|(p, k)| k.clone().unwrap_or_else(|| decode(&p.0)))
            .collect();
        readings.push(reading);
        if !guessed {
            break;
        }
    }
    readings
}

/// The RFC 2047 encoded word at the start of `text`: its charset (without a `*language`),
/// its decoded bytes, and its length; None when `text` does not start with one.
fn encoded_word(text: &[u8]) -> Option<(Vec<u8>, Vec<u8>, usize)> {
    let rest = text.strip_prefix(b"=?")?;
    let q1 = rest.iter().position(|&b| b == b'?')?;
    let encoding = *rest.get(q1 + 1)?;
    if rest.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let body = &rest[q1 + 3..];
    let end = body.windows(2).position(|w| w == b"?=")?;
    let encoded = &body[..end];
    if encoded.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let charset = rest[..q1].split(|&b| b == b'*').next()?.to_vec();
    let bytes = match encoding {
        // As leniently as clients decode (trailing bits, padding): a strict decoder left a
        // word with a changed last character undecoded, unjoined (review).
        b'B' | b'b' => crate::message::encoding::base64_decode_lenient(encoded)?,
        b'Q' | b'q' => {
            let mut out = Vec::with_capacity(encoded.len());
            let mut j = 0;
            while j < encoded.len() {
                match encoded[j] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let hex = std::str::from_utf8(encoded.get(j + 1..j + 3)?).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        j += 2;
                    }
                    b => out.push(b),
                }
                j += 1;
            }
            out
        }
        _ => return None,
    };
    Some((charset, bytes, 2 + q1 + 3 + end + 2))
}

/// Whether `name` holds a word that looks like an address (`local@domain.tld`) other than
/// `address`. Look-alikes count as what they look like: the name is read in NFKC, which makes
/// the fullwidth and small @ (U+FF20, U+FE6B) and the fullwidth and leader dots (U+FF0E,
/// U+2024) plain ones; dots NFKC keeps (the ideographic full stop, a label separator to IDNA,
/// U+A4F8, U+0660 and others) are dots; invisible characters (zero-width ones, narrow spaces)
/// are dropped; leading @s and trailing dots are no part of the word. A name with a bidi
/// override or isolate and an @ counts as another address whatever it reads (a reversed text
/// shows one). Review: each of these read from=match; "alice@laptop" or "Support@ACME" are
/// no address (no dot in the domain) and stay so.
fn names_another_address(name: &str, address: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    // Bidi controls (overrides, and embeddings or isolates with right-to-left marks) can show
    // the words in another order than they are written ("org.example@alice" read backwards):
    // then any word with an @ counts, dotted domain or not, unless it is the address itself
    // (software puts isolates around names).
    let bidi = name
        .chars()
        .any(|c| matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'));
    let invisible = |c: &char| {
        matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{2000}'..='\u{200F}' | '\u{2028}'..='\u{202F}'
            | '\u{205F}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    let dot = |c: char| {
        matches!(
            c,
            '\u{00B7}' | '\u{0387}' | '\u{05C5}' | '\u{0660}' | '\u{06D4}' | '\u{06F0}' | '\u{0701}'
                ..='\u{0709}'
                    | '\u{0F0B}'
                    | '\u{0F0C}'
                    | '\u{1427}'
                    | '\u{16EB}'
                    | '\u{1802}'
                    | '\u{1803}'
                    | '\u{1808}'
                    | '\u{1809}'
                    | '\u{2022}'
                    | '\u{2027}'
                    | '\u{2219}'
                    | '\u{22C5}'
                    | '\u{2E31}'
                    | '\u{3002}'
                    | '\u{30FB}'
                    | '\u{A4F8}'
                    | '\u{A60E}'
                    | '\u{A78F}'
                    | '\u{FF65}'
        )
    };
    // Before NFKC too, which makes the narrow spaces plain ones.
    let visible: String = name.chars().filter(|c| !invisible(c)).collect();
    let name: String = visible
        .nfkc()
        .filter(|c| !invisible(c))
        .map(|c| if dot(c) { '.' } else { c })
        .collect();
    name.split(|c: char| c.is_whitespace() || "<>()[]\"',;:".contains(c))
        .map(|w| w.trim_start_matches('@').trim_end_matches(['.', '@']))
        .filter(|w| {
            w.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && (bidi || (domain.contains('.') && !domain.starts_with('.')))
                    && !domain.contains('@')
            })
        })
        .any(|w| !w.eq_ignore_ascii_case(address))
}

/// The value of the first field of this name, unfolded, without the blanks after the colon
/// (as the IMAP summary reads it). Only a field whose name is followed by its colon on its
/// first line counts: a line "From" without one, its value folded onto the next line, is no
/// From field to mail-parser or a mail client (review: it was read here as the From, and a
/// check of "every reading agrees" compared the wrong fields).
fn header_value(header: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let (_, field) = fields(header)
        .into_iter()
        .find(|(n, f)| n.eq_ignore_ascii_case(name) && named_on_first_line(f))?;
    let colon = field.iter().position(|&b| b == b':')?;
    let value: Vec<u8> = field[colon + 1..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    Some(value.trim_ascii_start().to_vec())
}

/// Whether a Legacy Display Element (a MIME part: its header and body) holds nothing but
/// copies of fields `protected` has: each line it reads as (HTML as text, decoded) is
/// "Name: value" with a name of a field there, or a folded line after one. Only then is it
/// left out: marked so by the sender, a part with anything else in it (the message's real
/// text, say) is the sender's text (review: it was removed whatever it held).
fn is_copy_of_fields(element: &[u8], protected: &[u8]) -> bool {
    let names: Vec<String> = fields(protected)
        .iter()
        .filter(|(_, f)| named_on_first_line(f))
        .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
        .collect();
    let Some(text) = crate::message::parse::mail_parser()
        .parse(element)
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
    else {
        return false;
    };
    let mut fields_seen = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) && fields_seen > 0 {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return false;
        };
        if !names.contains(&name.trim().to_ascii_lowercase()) {
            return false;
        }
        fields_seen += 1;
    }
    fields_seen > 0
}

/// Whether a field's name ends in its colon on its first line (RFC 5322 §2.2: name, then
/// ":", blanks allowed before it by §4.5.3's obsolete syntax).
fn named_on_first_line(field: &[u8]) -> bool {
    let first = field.split(|&b| b == b'\n').next().unwrap_or_default();
    first.iter().position(|&b| b == b':').is_some_and(|colon| {
        let name = first[..colon].trim_ascii_end();
        !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_in_the_verdict_field_reads_as_one_line_of_single_blanks() {
        assert_eq!(
            clean("Bad signature (gpg error 8)"),
            "Bad signature gpg error 8"
        );
        assert_eq!(clean(" a\r\n\tb ((c)) "), "a b c");
    }

    #[test]
    fn a_verdict_is_removed_from_a_message_held_whole_as_from_a_borrowed_one() {
        for raw in [
            &b"Subject: x\r\nSealpost-Verdict: forged\r\n\r\nbody"[..],
            b"Subject: x\r\n\r\nSealpost-Verdict: in the body\r\n",
            b"no header at all",
            b"\r\nbody",
            // Behind a bare CR: a blank here, a line end for some readers.
            b"Subject: hello\rSealpost-Verdict: encrypted; signature=valid\r\n\r\nbody",
        ] {
            assert_eq!(
                into_without_verdict(raw.to_vec()),
                without_verdict(raw),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn look_alikes_of_the_verdict_field_go_with_it() {
        for name in [
            "Sealpost-Verdict\u{200b}",
            "Sealpost-Verdict\u{a0}",
            "Sealpost-Verdict\u{0b}",
            "Sealpost-Verdict\u{0c}",
            "Sealpost-Verdicts",
            "Sealpost\u{2010}Verdict",
            "Seal\u{200b}post-Verdict",
            "SEALPOST-VERDICT",
            "Sealpost_Verdict",
            "Sealpost.Verdict",
            "SealpostVerdict",
            "Sealpost--Verdict",
            "X-Sealpost-Verdict",
            "Sealpost-V\u{435}rdict",
            "S\u{435}\u{430}lp\u{43e}st-V\u{435}rdi\u{441}t",
            // Compatibility forms, small capitals, accents, a Cyrillic ghe (review).
            "Sealpost-\u{ff36}erdict",
            "Sealpost-\u{2164}erdict",
            "Sealpost-\u{1d5b5}erdict",
            "Sealpost-\u{1d20}erdict",
            "Sealpost-Ve\u{280}dict",
            "Sealpost-Verdi\u{217d}t",
            "Sealpost-V\u{e9}rdict",
            "Sealpost-Ve\u{433}dict",
            // ASCII that looks the same in many fonts.
            "SeaIpost-Verdict",
            "Sea1post-Verdict",
            "Sealp0st-Verdict",
            "Sealpost-Verclict",
            "Sea|post-Verdict",
        ] {
            let raw = format!("Subject: x\r\n{name}: encrypted; signature=valid\r\n\r\nbody");
            assert_eq!(
                without_verdict(raw.as_bytes()),
                b"Subject: x\r\n\r\nbody",
                "{name:?}"
            );
        }
        // Other fields, and the names of other fields, stay.
        let raw = b"Sealpost-Upload: 1\r\nX-Verdict: a\r\nSubject: Sealpost-Verdict\r\n\r\nb";
        assert_eq!(without_verdict(raw), raw);
        assert_eq!(
            strip_field(b"Bcc\xe2\x80\x8b: a\r\n\r\n", "Bcc"),
            b"Bcc\xe2\x80\x8b: a\r\n\r\n"
        );
    }

    #[test]
    fn a_delimiter_after_the_close_delimiter_is_found() {
        let body = b"pre\r\n--S\r\n\r\nx\r\n--S\r\n\r\ny\r\n--S--\r\nepilogue\r\n";
        assert!(!delimiter_after_close(body, b"S"));
        assert!(delimiter_after_close(
            &[&body[..], b"--S\r\n\r\nz\r\n"].concat(),
            b"S"
        ));
        assert!(delimiter_after_close(
            &[&body[..], b"--S-- \r\n"].concat(),
            b"S"
        ));
        // Other boundaries' lines, and a close without parts, are no such thing.
        assert!(!delimiter_after_close(
            &[&body[..], b"--T\r\n--S-x\r\n"].concat(),
            b"S"
        ));
    }

    #[test]
    fn delimiter_lines_are_exact_or_loose() {
        let body = b"--S\r\nA: 1\r\n\r\nx\r\n--S \t\r\n\r\ny\r\n--S--  \r\nend\r\n";
        assert!(!loose_delimiter(body, b"S"));
        assert!(loose_delimiter(b"--SX-Pad: 1\r\n--S\r\n", b"S"));
        assert!(loose_delimiter(b"--S--x\r\n", b"S"));
        assert!(loose_delimiter(b"--SReply-To: m@evil.example\r\n", b"S"));
        // Other lines with dashes are text.
        assert!(!loose_delimiter(b"-- \r\n--T\r\n---S\r\n", b"S"));
    }

    #[test]
    fn decrypted_inline_text_keeps_the_charset_it_is_in() {
        let header = b"Subject: x\r\nContent-Type: text/plain; charset=\"ISO-8859-1\"\r\n\
            Content-Transfer-Encoding: 7bit\r\n\r\n";
        let fields =
            |plain: &[u8]| String::from_utf8(replace_content_fields(header, plain)).unwrap();
        assert!(fields(b"Gr\xfc\xdfe").ends_with(
            "Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ));
        assert!(fields("Grüße".as_bytes()).contains("charset=utf-8\r\n"));
        assert!(fields(b"Hello").contains("charset=utf-8\r\nContent-Transfer-Encoding: 7bit"));
        assert!(!fields(b"x").contains("7bit\r\nContent-Transfer-Encoding"));
        let odd = b"Content-Type: text/plain; charset=\"a;b\"\r\n\r\n";
        let text = String::from_utf8(replace_content_fields(odd, b"\xfc")).unwrap();
        assert!(text.contains("charset=utf-8\r\n"), "{text}");
    }

    #[test]
    fn from_is_one_mailbox_only_when_every_reading_agrees() {
        let from = |v: &str| from_address(format!("From: {v}\r\nSubject: x\r\n\r\n").as_bytes());
        assert_eq!(
            from("Alice <Alice@Example.org>").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            from("alice@example.org").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            from("\"alice@example.org\" <alice@example.org>").as_deref(),
            Some("alice@example.org")
        );
        // A needlessly quoted local part is the address (mail-parser reads it as a display
        // name and "@example.org"); a quoted one that needs its quotes is not read as one.
        assert_eq!(
            from("\"alice\"@example.org").as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            from(" \"Alice.B\"@Example.org ").as_deref(),
            Some("alice.b@example.org")
        );
        assert_eq!(from("\"alice\"@example.org, bob@example.org"), None);
        assert_eq!(from("\"alice\"@example.org <m@evil.example>"), None);
        assert_eq!(from("\"alice smith\"@example.org"), None);
        // A line "From" without a colon is no From field to mail-parser or a mail client:
        // the From is the one after it (review: the line was read, mallory's).
        let forged = b"From\r\n x:\"mallory\"@evil.example\r\nFrom: Alice <alice@example.org>\r\n\
                       Subject: x\r\n\r\n";
        assert_eq!(from_address(forged).as_deref(), Some("alice@example.org"));
        // Read as the one From there is, whatever the line before it says (review: each read
        // the line without a colon, and matched mallory's key under Alice's From).
        for shown in [
            "\"alice\"@example.org <mallory@evil.example>",
            "alice @ example.org <mallory@evil.example>",
            "alice@example.org <.evil.example>",
            "mallory <@evil.example>",
        ] {
            let forged =
                format!("From\r\n x:mallory@evil.example\r\nFrom: {shown}\r\nSubject: x\r\n\r\n");
            let read = from_address(forged.as_bytes());
            assert!(
                read.as_deref() != Some("mallory@evil.example")
                    && read.as_deref() != Some("alice@example.org"),
                "{shown}: {read:?}"
            );
        }
        assert_eq!(from("mallory@evil.example <alice@example.org>"), None);
        assert_eq!(from("\"mallory@evil.example\" <alice@example.org>"), None);
        assert_eq!(from("\"Alice [m@evil.example]\" <alice@example.org>"), None);
        // Look-alikes of @ and the dot (Unicode compatibility forms) in the display name.
        for lookalike in [
            "\"alice\u{FF20}example.org\" <m@evil.example>",
            "\"alice\u{FE6B}example.org\" <m@evil.example>",
            "\"alice@example\u{2024}org\" <m@evil.example>",
            "\"alice@example\u{FF0E}org\" <m@evil.example>",
            "\"alice@example\u{3002}org\" <m@evil.example>",
            "=?UTF-8?B?YWxpY2XvvKBleGFtcGxlLm9yZw==?= <m@evil.example>",
            // Look-alikes NFKC keeps, a reversed text, a hair space, an invisible character.
            "\"alice@example\u{A4F8}org\" <m@evil.example>",
            "\"alice@example\u{0660}org\" <m@evil.example>",
            "\"\u{202E}gro.elpmaxe@ecila\" <m@evil.example>",
            "\"alice@exa\u{200A}mple.org\" <m@evil.example>",
            "\"alice@exa\u{200B}mple.org\" <m@evil.example>",
            "=?UTF-8?Q?alice=40example=EA=93=B8org?= <m@evil.example>",
            "\"@alice@example.org\" <m@evil.example>",
            "\"Alice Smith @alice@example.org\" <m@evil.example>",
            "\"\u{FF20}alice@example.org\" <m@evil.example>",
            "\"alice@example.org@\" <m@evil.example>",
            "\"alice@example\u{1427}org\" <m@evil.example>",
            "\"alice@example\u{A78F}org\" <m@evil.example>",
            "\"alice@example\u{2022}org\" <m@evil.example>",
            "\"alice@example\u{0F0C}org\" <m@evil.example>",
            // Written backwards between right-to-left marks in an embedding or an isolate.
            "\"\u{202B}org\u{200F}.\u{200F}example\u{200F}@\u{200F}alice\u{202C}\" <m@evil.example>",
            "\"\u{2067}org\u{200F}.\u{200F}example\u{200F}@\u{200F}alice\u{2069}\" <m@evil.example>",
            // The fullwidth @ in the East Asian charsets mail clients decode (review: read as
            // replacement characters, so no @, and from=match).
            "=?iso-2022-jp?B?YWxpY2UbJEIhdxsoQmV4YW1wbGUub3Jn?= <m@evil.example>",
            "=?shift_jis?B?YWxpY2WBl2V4YW1wbGWBRG9yZw==?= <m@evil.example>",
            "=?gbk?B?YWxpY2WjwGV4YW1wbGUub3Jn?= <m@evil.example>",
            "=?big5?B?YWxpY2WiSWV4YW1wbGUub3Jn?= <m@evil.example>",
            "=?euc-kr?B?YWxpY2WjwGV4YW1wbGUub3Jn?= <m@evil.example>",
            "=?euc-jp?B?YWxpY2Wh92V4YW1wbGUub3Jn?= <m@evil.example>",
            "=?gb18030?B?YWxpY2WjwGV4YW1wbGUub3Jn?= <m@evil.example>",
            // A charset not read here: whatever a client that knows it shows.
            "=?x-no-such-charset?B?YWxpY2WjwGV4YW1wbGUub3Jn?= <m@evil.example>",
            // Adjacent words of one charset, a character split over two (review: each
            // decoded alone read "alice!wexample.org", or replacement characters).
            "=?iso-2022-jp?B?YWxpY2UbJEI=?= =?iso-2022-jp?B?IXcbKEJleGFtcGxlLm9yZw==?= <m@evil.example>",
            "=?utf-8?B?YWxpY2XvvA==?= =?utf-8?B?oGV4YW1wbGUub3Jn?= <m@evil.example>",
            "=?utf-7?B?YWxpY2UrL3k=?= =?utf-7?B?QS1leGFtcGxlLm9yZw==?= <m@evil.example>",
            // UTF-7 under a label not known here (review).
            "=?unicode-1-1-utf-7?B?YWxpY2UrL3lBLWV4YW1wbGUub3Jn?= <m@evil.example>",
            // The same split words with a last base64 character whose spare bits are not
            // zero (clients decode it; a strict decoder did not: review).
            "=?utf-8?B?YWxpY2XvvB==?= =?utf-8?B?oGV4YW1wbGUub3Jn?= <m@evil.example>",
            // UTF-32, and 7-bit ISO-2022-JP in a quoted name (review).
            "=?utf-32be?B?AAAAYQAAAGwAAABpAAAAYwAAAGUAAP8gAAAAZQAAAHgAAABhAAAAbQAAAHAAAABsAAAAZQAAAC4AAABvAAAAcgAAAGc=?= <m@evil.example>",
            "\"alice\u{1b}$B!w\u{1b}(Bexample.org\" <m@evil.example>",
            // Labelled UTF-8, but no UTF-8: GB18030's fullwidth @.
            "=?utf-8?B?YWxpY2WjwGV4YW1wbGUub3Jn?= <m@evil.example>",
        ] {
            assert_eq!(from(lookalike), None, "{lookalike}");
        }
        for fine in [
            "\"Alice (@alice)\" <alice@example.org>",
            "\"Alice @ Work\" <alice@example.org>",
            "=?UTF-8?Q?Alice_=40_Work?= <alice@example.org>",
            "alice@example.org (Alice @ Work)",
            "\"Alice Smith (alice@example.org)\" <alice@example.org>",
            "\"alice@example.org via Team\" <alice@example.org>",
            "\"ali\u{200B}ce@example.org\" <alice@example.org>",
            // No dot in the domain: no address (review: these read "mismatch").
            "\"alice@laptop\" <alice@example.org>",
            "\"Support@ACME\" <alice@example.org>",
            "\"Alice \u{1F4E7}@work\" <alice@example.org>",
            "\"alice@example.org.\" <alice@example.org>",
            "\"Alice, alice@example.org.\" <alice@example.org>",
            // Isolates and embeddings reorder nothing that matters here.
            "\"\u{2068}alice@example.org\u{2069}\" <alice@example.org>",
            "\"\u{05D0}\u{202B}@\u{202C}\" <alice@example.org>",
            // Names in a charset not read here, or mislabelled, that read as no address in
            // any charset (review: from=mismatch for Alice's own mail).
            "=?utf-8?Q?Ren=E9_Alice?= <alice@example.org>",
            "=?cp932?B?k26V0w==?= <alice@example.org>",
            "=?x-mac-japanese?B?k26V0w==?= <alice@example.org>",
        ] {
            assert_eq!(from(fine).as_deref(), Some("alice@example.org"), "{fine}");
        }
        let raw_latin1 = b"From: Ren\xe9 Alice <alice@example.org>\r\nSubject: x\r\n\r\n";
        assert_eq!(
            from_address(raw_latin1).as_deref(),
            Some("alice@example.org")
        );
    }

    #[test]
    fn a_message_without_header_fields_gets_the_verdict_as_its_header() {
        let p = unprocessed(b"\r\njust a body\r\n", "test");
        let text = String::from_utf8(p.message).unwrap();
        assert!(text.starts_with("Sealpost-Verdict: "), "{text}");
        assert!(text.ends_with("\r\n\r\njust a body\r\n"), "{text}");
        assert_eq!(text.matches("\r\n\r\n").count(), 1, "{text}");
    }

    #[test]
    fn the_verdict_is_a_field_of_its_own_after_a_header_without_a_line_break() {
        let p = unprocessed(b"Subject: no line break", "test");
        let text = String::from_utf8(p.message).unwrap();
        assert!(
            text.starts_with("Subject: no line break\r\nSealpost-Verdict: "),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn every_spelling_of_the_verdict_field_is_removed() {
        let header = b"From: a@example.org\r\n\
            Sealpost-Verdict: encrypted; signature=valid\r\n\
            sealpost-verdict: forged\r\n\
            SEALPOST-VERDICT : forged\r\n\
            Sealpost-Verdict:\r\n encrypted;\r\n\tsignature=valid\r\n\
            Sealpost-Verdict: =?utf-8?q?encrypted=3B_signature=3Dvalid?=\r\n\
            X-Sealpost-Verdict: encrypted; signature=valid\r\n\
            X-Verdict: not ours, kept\r\n\
            Subject: hi\r\n\r\n";
        let stripped = strip_field(header, VERDICT_FIELD);
        assert_eq!(
            String::from_utf8(stripped).unwrap(),
            "From: a@example.org\r\nX-Verdict: not ours, kept\r\nSubject: hi\r\n\r\n"
        );
        // A forged one as a folded first line, which SEARCH HEADER read as the field.
        let indented = b" Sealpost-Verdict: encrypted; signature=valid\r\nFrom: a@x\r\n\r\n";
        assert_eq!(strip_field(indented, VERDICT_FIELD), b"From: a@x\r\n\r\n");
    }

    #[test]
    fn whole_ciphertext_has_no_part_in_clear() {
        let block = crate::message::parse::SAMPLE_CIPHERTEXT;
        let inline = format!("Subject: x\r\n\r\n{block}");
        assert!(is_whole_ciphertext(inline.as_bytes()));
        let pgp_mime = format!(
            "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; \
             boundary=b\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n\
             Version: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n{block}--b--\r\n"
        );
        assert!(is_whole_ciphertext(pgp_mime.as_bytes()));
        let mixed = format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\n{block}--b\r\n\
             Content-Type: text/plain\r\n\r\nthe attachment in clear\r\n--b--\r\n"
        );
        assert!(!is_whole_ciphertext(mixed.as_bytes()));
        assert!(!is_whole_ciphertext(b"Subject: x\r\n\r\nplain\r\n"));
    }

    #[test]
    fn a_verdict_behind_a_bare_cr_is_no_field_of_its_own() {
        let forged = b"From: m@evil.example\r\nSubject: hello\rSealpost-Verdict: encrypted; \
            signature=valid\r\n\r\nbody\r\n";
        let cleaned = without_verdict(forged);
        assert_eq!(
            cleaned,
            b"From: m@evil.example\r\nSubject: hello Sealpost-Verdict: encrypted; \
            signature=valid\r\n\r\nbody\r\n"
        );
        let p = unprocessed(forged, "test");
        let text = String::from_utf8(p.message).unwrap();
        assert!(!text.contains("\rSealpost"), "{text}");
        assert_eq!(text.matches("\r\nSealpost-Verdict:").count(), 1, "{text}");
    }

    #[test]
    fn only_a_lone_armored_block_is_inline_ciphertext() {
        // A session key packet (tag 1), then encrypted data (tag 18), one byte each.
        let block = b"-----BEGIN PGP MESSAGE-----\r\n\r\nwQED0gEB\r\n-----END PGP MESSAGE-----";
        assert!(inline_armor(&[b"\r\n", &block[..], b"\r\n"].concat()).is_some());
        // An armor header RFC 4880 does not name is no reason to leave it undecrypted.
        let headed = b"-----BEGIN PGP MESSAGE-----\r\nEncoding: base64\r\n\r\nwQED0gEB\r\n\
            -----END PGP MESSAGE-----";
        assert!(inline_armor(headed).is_some());
        // A one-pass signature packet (tag 4): signed, not encrypted.
        let signed = b"-----BEGIN PGP MESSAGE-----\r\n\r\nxAEA\r\n-----END PGP MESSAGE-----";
        assert!(inline_armor(signed).is_none());
        assert!(inline_armor(&[b"Click here: ", &block[..]].concat()).is_none());
        assert!(inline_armor(&[&block[..], b"\r\n", &block[..]].concat()).is_none());
    }

    #[test]
    fn protected_headers_replace_the_outer_ones() {
        let outer =
            b"From: a@example.org\r\nSubject: [...]\r\nContent-Type: multipart/encrypted\r\n\r\n";
        let inner = b"Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\nSubject: Real subject\r\nFrom: b@example.org\r\n\r\n";
        let (merged, inner_from) =
            merge_headers(outer, inner, Some(&inner[..]).filter(|h| is_protected(h)));
        let merged = String::from_utf8(merged).unwrap();
        assert_eq!(
            merged,
            "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\nSubject: Real subject\r\nFrom: b@example.org\r\n\r\n"
        );
        assert_eq!(inner_from, Some(Some("b@example.org".to_string())));
        // Outer fields that route replies go unless protected; trace fields stay.
        let outer = b"Received: from x\r\nFrom: a@example.org\r\nReply-To: m@evil.example\r\n\
            Subject: [...]\r\n\r\n";
        let (merged, _) = merge_headers(outer, inner, Some(&inner[..]));
        let merged = String::from_utf8(merged).unwrap();
        assert!(merged.starts_with("Received: from x\r\n"), "{merged}");
        assert!(!merged.contains("evil"), "{merged}");
        // Mutt protects only the Subject: the outer From, To and Reply-To stay.
        let mutt = b"Content-Type: text/plain; protected-headers=\"v1\"\r\nSubject: Real\r\n\r\n";
        let outer = b"From: a@example.org\r\nTo: b@example.org\r\nReply-To: list@example.org\r\n\
            Subject: ...\r\n\r\n";
        let (merged, inner_from) = merge_headers(outer, mutt, Some(&mutt[..]));
        let merged = String::from_utf8(merged).unwrap();
        assert_eq!(inner_from, None);
        for kept in ["From: a@", "To: b@", "Reply-To: list@", "Subject: Real"] {
            assert!(merged.contains(kept), "{kept}: {merged}");
        }
        // protected-headers="v1" promises no full copy: LEAP's memoryhole protects From, To,
        // Subject, Date and Message-ID, and the outer Cc and threading fields stay (review:
        // they were lost). RFC 9788's form copies every field: an outer one it lacks goes,
        // but Date, Message-ID and one too long to sign (left outside by its sender).
        let memoryhole = b"Content-Type: text/plain; protected-headers=\"v1\"\r\n\
            From: a@example.org\r\nTo: b@example.org\r\nSubject: Real\r\n\r\n";
        let long_references = format!("References: <{}@x>\r\n", "r".repeat(17_000));
        let outer = format!(
            "From: a@example.org\r\nTo: b@example.org\r\nCc: c@example.org\r\n\
             In-Reply-To: <p@x>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n{long_references}\
             Reply-To: m@evil.example\r\n\r\n"
        );
        let (merged, _) = merge_headers(outer.as_bytes(), memoryhole, Some(&memoryhole[..]));
        let merged = String::from_utf8(merged).unwrap();
        for kept in ["Cc: c@", "In-Reply-To: <p@x>", "Date: ", "References: "] {
            assert!(merged.contains(kept), "{kept}: {merged}");
        }
        assert!(!merged.contains("evil"), "{merged}");
        let rfc9788 = b"Content-Type: text/plain; hp=\"cipher\"\r\n\
            From: a@example.org\r\nTo: b@example.org\r\nSubject: Real\r\n\r\n";
        let (merged, _) = merge_headers(outer.as_bytes(), rfc9788, Some(&rfc9788[..]));
        let merged = String::from_utf8(merged).unwrap();
        for gone in ["Cc: c@", "In-Reply-To: <p@x>", "evil"] {
            assert!(!merged.contains(gone), "{gone}: {merged}");
        }
        for kept in ["Date: ", "References: "] {
            assert!(merged.contains(kept), "{kept}: {merged}");
        }
    }

    #[test]
    fn verdict_text_and_keywords() {
        let verdict = Verdict {
            encryption: Encryption::Decrypted,
            signature: Signature::Valid {
                fingerprint: "ABCD".into(),
                from_matches: true,
            },
            inner_from_mismatch: false,
        };
        assert_eq!(
            verdict.field_value(),
            "encrypted; signature=valid; signer=ABCD; from=match"
        );
        assert_eq!(verdict.keywords(), [keyword::ENCRYPTED, keyword::SIGNED]);
    }
}
