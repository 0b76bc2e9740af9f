//! The outgoing policy: what happens to a recipient without a usable key, and how copies are
//! built. Read from the `[policy]` section of the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What to do for a recipient that has no usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Send a signed cleartext copy (the seed's behaviour).
    #[default]
    Opportunistic,
    /// Reject that recipient (550 5.7.1); the others still get their copies.
    EncryptOnly,
    /// Refuse the whole message when any recipient lacks a key: no cleartext copy at all.
    AllOrNothing,
}

/// How an encrypted copy is signed (RFC 3156 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptedForm {
    /// RFC 3156 §6.1: one detached signature per message (multipart/signed) encrypted to each
    /// recipient. One signing operation per message, one encryption per copy.
    #[default]
    SignedThenEncrypted,
    /// RFC 3156 §6.2: a combined OpenPGP sign+encrypt per copy.
    Combined,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Default mode for every recipient.
    pub mode: Mode,
    /// Mode per recipient domain (exact domain, lower case).
    pub domains: BTreeMap<String, Mode>,
    /// Mode per recipient address (wins over the domain).
    pub addresses: BTreeMap<String, Mode>,
    /// Sign copies with the sender's key.
    pub sign: bool,
    pub encrypted_form: EncryptedForm,
    /// Also encrypt each copy to the sender's own key.
    pub encrypt_to_self: bool,
    /// Add an Autocrypt header carrying the sender's key.
    pub autocrypt: bool,
    /// RFC 9788 header protection for encrypted copies.
    pub header_protection: bool,
    /// The outer Subject of an encrypted copy.
    pub obscured_subject: String,
    /// Fingerprint of the key that signs when the From address has no secret key.
    pub default_signer: Option<String>,
    /// About how many bytes of one message's copies are built at a time: a large message to
    /// many recipients is encrypted and sent a batch of copies at a time (at least one).
    pub copy_batch_bytes: usize,
    /// Keep Bcc (and Resent-Bcc) in the protected header inside an encrypted copy, never
    /// outside: for the user's own copy stored upstream ([`Policy::upload`]), where the Bcc of
    /// a draft or of sent mail is the user's own record, not something leaked to another
    /// recipient. Needs `header_protection` (without it only the content is encrypted).
    /// Never read from the configuration (review: as a `[policy]` key it put every copy's
    /// Bcc in front of the other recipients): only [`Policy::upload`] sets it.
    #[serde(skip)]
    pub keep_bcc: bool,
    /// Encrypt only to keys whose secret key is here (the user's own): for the user's own
    /// copy stored upstream. Never read from the configuration; only [`Policy::upload`] sets it.
    #[serde(skip)]
    pub own_keys_only: bool,
    /// The outer header of an encrypted copy keeps only what a mail client lists and threads
    /// by ([`crate::message::mime::LISTED_FIELDS`]) and the trace fields; every other field is
    /// inside only. For
    /// the user's own copy stored upstream, which only the user reads: a decrypted message
    /// stored again holds the fields its sender hid inside (review: an inner X- field went
    /// upstream in clear). Never read from the configuration; only [`Policy::upload`] sets it.
    #[serde(skip)]
    pub listed_fields_only: bool,
    /// Postfix's `recipient_delimiter` (each character a delimiter, "" none): a recipient
    /// with an address extension (`bob+lists@example.org`, delivered to bob) has bob's
    /// per-address mode and, when it has no key of its own, bob's key.
    pub recipient_delimiter: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Opportunistic,
            domains: BTreeMap::new(),
            addresses: BTreeMap::new(),
            sign: true,
            encrypted_form: EncryptedForm::SignedThenEncrypted,
            encrypt_to_self: false,
            autocrypt: true,
            header_protection: true,
            obscured_subject: "[...]".into(),
            default_signer: None,
            copy_batch_bytes: 64 * 1024 * 1024,
            keep_bcc: false,
            own_keys_only: false,
            listed_fields_only: false,
            recipient_delimiter: String::new(),
        }
    }
}

impl Policy {
    /// The policy for non-delivery reports (null sender): like the outgoing one, but signed
    /// only by the configured default signer, since no one's own key may sign a report.
    pub fn reports(&self) -> Policy {
        let mut policy = self.clone();
        policy.sign &= policy.default_signer.is_some();
        policy
    }

    /// The policy for mail arriving at an MX for a local recipient (the milter's inbound
    /// mode, as the seed's leap_mx): encrypted to the recipient's key when there is one, never
    /// signed (the MX holds no sender's key), cleartext otherwise; the copy's form follows the
    /// outgoing policy.
    pub fn inbound(outgoing: &Policy) -> Policy {
        Policy {
            mode: Mode::Opportunistic,
            domains: BTreeMap::new(),
            addresses: BTreeMap::new(),
            sign: false,
            encrypted_form: outgoing.encrypted_form,
            encrypt_to_self: false,
            autocrypt: false,
            header_protection: outgoing.header_protection,
            obscured_subject: outgoing.obscured_subject.clone(),
            default_signer: None,
            copy_batch_bytes: outgoing.copy_batch_bytes,
            keep_bcc: false,
            own_keys_only: false,
            listed_fields_only: false,
            recipient_delimiter: outgoing.recipient_delimiter.clone(),
        }
    }

    /// `address` without its extension (`bob+lists@x` is `bob@x` with delimiter "+"), as
    /// Postfix delivers it; None when it has none.
    pub fn without_extension(&self, address: &str) -> Option<String> {
        if self.recipient_delimiter.is_empty() {
            return None;
        }
        let (local, domain) = address.rsplit_once('@')?;
        // Postfix's split_addr leaves these whole: postmaster and MAILER-DAEMON, and with "-"
        // a delimiter, owner-foo and foo-request (mailing list addresses of their own).
        let lower = local.to_ascii_lowercase();
        if lower == "postmaster" || lower == "mailer-daemon" {
            return None;
        }
        if self.recipient_delimiter.contains('-')
            && (lower.starts_with("owner-") || (lower.len() > 8 && lower.ends_with("-request")))
        {
            return None;
        }
        let at = local.find(|c| self.recipient_delimiter.contains(c))?;
        (at > 0).then(|| format!("{}@{domain}", &local[..at]))
    }

    /// The policy for what the sync stores upstream for the user (Sent, Drafts, copies): to the
    /// user's own key only, unsigned (the user wrote or already judged it), and never in clear:
    /// without a key nothing is stored. Header protection always, whatever `header_protection`
    /// says for outgoing mail (a recipient's client may not read it; the user's own copy is
    /// read through sealpost), with only the listed fields outside.
    pub fn upload(outgoing: &Policy) -> Policy {
        Policy {
            mode: Mode::EncryptOnly,
            keep_bcc: true,
            own_keys_only: true,
            header_protection: true,
            listed_fields_only: true,
            ..Policy::inbound(outgoing)
        }
    }

    /// The mode for one recipient: its address override, else its domain's, else the default.
    /// Addresses and domains are compared as [`canonical_address`] has them, so that
    /// `bücher.de` in the configuration also governs `xn--bcher-kva.de` and the other way round.
    pub fn mode_for(&self, address: &str) -> Mode {
        let addr = canonical_address(address);
        // The address as given, then without its extension (bob+x is delivered to bob, and
        // bob's rule holds for it: review, an encrypt-only rule was passed by).
        let base = self
            .without_extension(address)
            .map(|a| canonical_address(&a));
        for wanted in std::iter::once(&addr).chain(base.as_ref()) {
            if let Some((_, m)) = self
                .addresses
                .iter()
                .find(|(k, _)| canonical_address(k) == *wanted)
            {
                return *m;
            }
        }
        let domain = addr.rsplit_once('@').map_or("", |(_, d)| d);
        self.domains
            .iter()
            .find(|(k, _)| canonical_domain(k) == domain)
            .map_or(self.mode, |(_, m)| *m)
    }
}

/// An address as policies and duplicate checks compare it: the local part case-folded as
/// Postfix folds it (see [`folded_local`]), the domain as IDNA ASCII (punycode, lower case).
pub fn canonical_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            format!("{}@{}", folded_local(local), canonical_domain(domain))
        }
        None => folded_local(address),
    }
}

/// A local part as Postfix folds addresses for its table lookups (ICU full case folding, with
/// SMTPUTF8): `JÖRG` is `jörg`, `straße` is `strasse`, and each reaches that mailbox. Folded in
/// ASCII only, `Élodie@` passed an encrypt-only rule for `élodie@` and got cleartext, and
/// `JÖRG@` missed jörg's key (review).
pub fn folded_local(local: &str) -> String {
    if local.is_ascii() {
        local.to_ascii_lowercase()
    } else {
        caseless::default_case_fold_str(local)
    }
}

/// A domain as IDNA ASCII (UTS #46: `Bücher.DE` → `xn--bcher-kva.de`); one that does not
/// convert, in ASCII lower case.
pub fn canonical_domain(domain: &str) -> String {
    let domain = without_root_dot(domain);
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// A domain without its one trailing dot, which names the root: `example.org.` is
/// `example.org` (Postfix drops it).
pub fn without_root_dot(domain: &str) -> &str {
    domain
        .strip_suffix('.')
        .filter(|d| !d.is_empty() && !d.ends_with('.'))
        .unwrap_or(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn international_domains_match_in_either_form() {
        let mut p = Policy::default();
        p.domains.insert("bücher.de".into(), Mode::EncryptOnly);
        p.addresses
            .insert("chef@xn--bcher-kva.de".into(), Mode::AllOrNothing);
        assert_eq!(p.mode_for("x@xn--bcher-kva.de"), Mode::EncryptOnly);
        assert_eq!(p.mode_for("x@BÜCHER.de"), Mode::EncryptOnly);
        assert_eq!(p.mode_for("Chef@bücher.de"), Mode::AllOrNothing);
        // An address extension has the address's own rule, once the delimiter is set.
        let mut p = Policy::default();
        p.addresses
            .insert("n05@example.org".into(), Mode::EncryptOnly);
        assert_eq!(p.mode_for("n05+x@example.org"), Mode::Opportunistic);
        p.recipient_delimiter = "+-".into();
        assert_eq!(p.mode_for("n05+x@example.org"), Mode::EncryptOnly);
        assert_eq!(p.mode_for("N05-a+b@Example.org"), Mode::EncryptOnly);
        assert_eq!(p.without_extension("+x@example.org"), None);
        assert_eq!(p.without_extension("n05@example.org"), None);
        // As Postfix splits them: not owner-list, list-request with "-" a delimiter.
        assert_eq!(p.without_extension("owner-list@example.org"), None);
        assert_eq!(p.without_extension("bob-request@example.org"), None);
        assert_eq!(
            p.without_extension("bob+request@example.org").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(p.mode_for("x@buecher.de"), Mode::Opportunistic);
    }

    #[test]
    fn overrides() {
        let mut p = Policy::default();
        p.domains.insert("example.net".into(), Mode::EncryptOnly);
        p.addresses
            .insert("boss@example.net".into(), Mode::Opportunistic);
        p.addresses
            .insert("ceo@example.org".into(), Mode::AllOrNothing);
        assert_eq!(p.mode_for("x@example.org"), Mode::Opportunistic);
        assert_eq!(p.mode_for("x@Example.NET"), Mode::EncryptOnly);
        assert_eq!(p.mode_for("x@sub.example.net"), Mode::Opportunistic);
        assert_eq!(p.mode_for("Boss@example.net"), Mode::Opportunistic);
        assert_eq!(p.mode_for("ceo@example.org"), Mode::AllOrNothing);
    }
}
