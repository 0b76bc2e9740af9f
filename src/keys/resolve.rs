//! Which of the keys found for an address is used, and why the others are not. Pure: works on
//! snapshots of key listings, so it is tested with tables.

use std::fmt;

/// What the keyring says about one key carrying a user ID with the exact address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyFacts {
    pub fingerprint: String,
    /// Creation time of the primary key, seconds since the epoch.
    pub created: i64,
    pub revoked: bool,
    pub expired: bool,
    pub disabled: bool,
    pub invalid: bool,
    /// The matching user ID is revoked (the address was withdrawn from this key).
    pub uid_revoked: bool,
    /// At least one subkey can encrypt and is itself not revoked, expired or invalid.
    pub usable_encryption_subkey: bool,
    /// An encryption subkey has expired / is revoked (said when none is usable: review, "no
    /// encryption-capable subkey" read as if the key never had one).
    #[serde(default)]
    pub encryption_subkey_expired: bool,
    #[serde(default)]
    pub encryption_subkey_revoked: bool,
    /// Listed for the user's own copies ([`crate::keys::KeyService::resolve_own`]), and no
    /// such subkey has its secret key here.
    #[serde(default)]
    pub no_secret: bool,
    /// The best validity GnuPG gives a matching user ID under the keyring's trust model.
    #[serde(default)]
    pub validity: Validity,
    /// The fingerprints of the primary key and the subkeys, as the listing gave them.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// A user ID's validity (`gpg --list-keys` shows it in brackets), lowest first. The keyring
/// is the trust anchor (encryption is always-trust): a key imported is used whatever its
/// validity, but not one the keyring's owner marked as not to be trusted (`never`: ownertrust
/// never under the direct trust model, a TOFU policy of bad), and among usable keys a more
/// valid one is chosen before a newer one, as gpg itself chooses (review: a newer key nobody
/// had checked, imported beside the one the owner had certified, won).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Validity {
    Never,
    #[default]
    Unknown,
    Marginal,
    Full,
    Ultimate,
}

/// Why a key cannot be used for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unusable {
    Revoked,
    Expired,
    Disabled,
    Invalid,
    UserIdRevoked,
    NoEncryptionSubkey,
    /// Encryption subkeys there, every one expired or revoked.
    EncryptionSubkeyGone {
        expired: bool,
        revoked: bool,
    },
    NoSecretKey,
    Distrusted,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unusable::Revoked => "revoked",
            Unusable::Expired => "expired",
            Unusable::Disabled => "disabled",
            Unusable::Invalid => "invalid",
            Unusable::UserIdRevoked => "user ID revoked",
            Unusable::NoEncryptionSubkey => "no encryption-capable subkey",
            Unusable::EncryptionSubkeyGone {
                expired: true,
                revoked: true,
            } => "encryption subkeys expired or revoked",
            Unusable::EncryptionSubkeyGone { revoked: true, .. } => "encryption subkey revoked",
            Unusable::EncryptionSubkeyGone { .. } => "encryption subkey expired",
            Unusable::NoSecretKey => "not the user's own: no secret key for it here",
            Unusable::Distrusted => "marked as not to be trusted in the keyring",
        })
    }
}

/// The outcome of resolving one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A usable key. `others` counts further usable keys that lost to it (newest wins).
    Usable { fingerprint: String, others: usize },
    /// No usable key: each key that was found, with why it was refused.
    NoKey { refused: Vec<(String, Unusable)> },
}

impl Resolution {
    /// A one-line human reason for a `NoKey` outcome.
    pub fn reason(&self) -> String {
        match self {
            Resolution::Usable { fingerprint, .. } => format!("key {fingerprint}"),
            Resolution::NoKey { refused } if refused.is_empty() => "no public key".into(),
            Resolution::NoKey { refused } => {
                let parts: Vec<String> = refused
                    .iter()
                    .map(|(fpr, why)| format!("key {fpr} {why}"))
                    .collect();
                format!("no usable public key ({})", parts.join("; "))
            }
        }
    }
}

fn why_unusable(k: &KeyFacts) -> Option<Unusable> {
    if k.revoked {
        Some(Unusable::Revoked)
    } else if k.expired {
        Some(Unusable::Expired)
    } else if k.disabled {
        Some(Unusable::Disabled)
    } else if k.invalid {
        Some(Unusable::Invalid)
    } else if k.uid_revoked {
        Some(Unusable::UserIdRevoked)
    } else if !k.usable_encryption_subkey {
        Some(
            match (k.encryption_subkey_expired, k.encryption_subkey_revoked) {
                (false, false) => Unusable::NoEncryptionSubkey,
                (expired, revoked) => Unusable::EncryptionSubkeyGone { expired, revoked },
            },
        )
    } else if k.no_secret {
        Some(Unusable::NoSecretKey)
    } else if k.validity == Validity::Never {
        Some(Unusable::Distrusted)
    } else {
        None
    }
}

/// Chooses the key for an address: among usable keys, the most valid ([`Validity`]), then the
/// newest (latest primary-key creation; ties broken by fingerprint so the choice is stable).
/// A newer key is what a correspondent most likely still holds the secret of.
pub fn choose(candidates: &[KeyFacts]) -> Resolution {
    let mut usable: Vec<&KeyFacts> = Vec::new();
    let mut refused = Vec::new();
    for k in candidates {
        match why_unusable(k) {
            None => usable.push(k),
            Some(why) => refused.push((k.fingerprint.clone(), why)),
        }
    }
    usable.sort_by(|a, b| {
        b.validity
            .cmp(&a.validity)
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    match usable.first() {
        Some(best) => Resolution::Usable {
            fingerprint: best.fingerprint.clone(),
            others: usable.len() - 1,
        },
        None => Resolution::NoKey { refused },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fpr: &str, created: i64) -> KeyFacts {
        KeyFacts {
            fingerprint: fpr.into(),
            created,
            revoked: false,
            expired: false,
            disabled: false,
            invalid: false,
            uid_revoked: false,
            usable_encryption_subkey: true,
            encryption_subkey_expired: false,
            encryption_subkey_revoked: false,
            no_secret: false,
            validity: Validity::Unknown,
            keys: vec![fpr.into()],
        }
    }

    #[test]
    fn table() {
        let revoked = KeyFacts {
            revoked: true,
            ..key("R", 5)
        };
        let expired = KeyFacts {
            expired: true,
            ..key("E", 6)
        };
        let sign_only = KeyFacts {
            usable_encryption_subkey: false,
            ..key("S", 7)
        };
        let subkey_expired = KeyFacts {
            usable_encryption_subkey: false,
            encryption_subkey_expired: true,
            ..key("X", 7)
        };
        let subkey_revoked = KeyFacts {
            usable_encryption_subkey: false,
            encryption_subkey_revoked: true,
            ..key("Y", 7)
        };
        let uid_gone = KeyFacts {
            uid_revoked: true,
            ..key("U", 8)
        };
        let distrusted = KeyFacts {
            validity: Validity::Never,
            ..key("N", 9)
        };
        let certified = KeyFacts {
            validity: Validity::Full,
            ..key("C", 1)
        };
        let cases: Vec<(Vec<KeyFacts>, Resolution)> = vec![
            (vec![], Resolution::NoKey { refused: vec![] }),
            (
                vec![key("A", 1)],
                Resolution::Usable {
                    fingerprint: "A".into(),
                    others: 0,
                },
            ),
            (
                vec![key("A", 1), key("B", 2)],
                Resolution::Usable {
                    fingerprint: "B".into(),
                    others: 1,
                },
            ),
            (
                vec![key("B", 2), key("A", 2)],
                Resolution::Usable {
                    fingerprint: "A".into(),
                    others: 1,
                },
            ),
            (
                vec![revoked.clone(), key("A", 1)],
                Resolution::Usable {
                    fingerprint: "A".into(),
                    others: 0,
                },
            ),
            (
                vec![
                    revoked,
                    expired,
                    sign_only,
                    uid_gone,
                    subkey_expired,
                    subkey_revoked,
                ],
                Resolution::NoKey {
                    refused: vec![
                        ("R".into(), Unusable::Revoked),
                        ("E".into(), Unusable::Expired),
                        ("S".into(), Unusable::NoEncryptionSubkey),
                        ("U".into(), Unusable::UserIdRevoked),
                        (
                            "X".into(),
                            Unusable::EncryptionSubkeyGone {
                                expired: true,
                                revoked: false,
                            },
                        ),
                        (
                            "Y".into(),
                            Unusable::EncryptionSubkeyGone {
                                expired: false,
                                revoked: true,
                            },
                        ),
                    ],
                },
            ),
        ];
        let mut cases = cases;
        cases.extend([
            // A key marked never to be trusted is refused; a certified one wins over a newer
            // one nobody checked.
            (
                vec![distrusted.clone(), key("A", 1)],
                Resolution::Usable {
                    fingerprint: "A".into(),
                    others: 0,
                },
            ),
            (
                vec![distrusted],
                Resolution::NoKey {
                    refused: vec![("N".into(), Unusable::Distrusted)],
                },
            ),
            (
                vec![key("B", 2), certified],
                Resolution::Usable {
                    fingerprint: "C".into(),
                    others: 1,
                },
            ),
        ]);
        for (input, want) in cases {
            assert_eq!(choose(&input), want, "{input:?}");
        }
    }

    #[test]
    fn reasons_name_each_key() {
        let r = Resolution::NoKey {
            refused: vec![("ABC".into(), Unusable::Expired)],
        };
        assert_eq!(r.reason(), "no usable public key (key ABC expired)");
        assert_eq!(
            Resolution::NoKey { refused: vec![] }.reason(),
            "no public key"
        );
    }
}
