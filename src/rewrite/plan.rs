//! The per-recipient decision, before any cryptography: pure, over the policy and the key
//! lookups, and tested with tables.

use std::collections::HashMap;
use std::fmt;

use super::policy::{Mode, Policy};
use crate::keys::Resolution;

/// An SMTP reply: basic code, enhanced status code (RFC 3463) and text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// 4xx: try again later.
    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// The outcome of a key lookup for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Resolution),
    /// The lookup itself failed (agent gone, deadline, gpg error).
    Failed(String),
}

/// What the plan says for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Encrypt to this key (and sign, per policy).
    Encrypt { fingerprint: String },
    /// No key, opportunistic: a signed cleartext copy. `reason`: why no key (keys found and
    /// refused are named, an expired one most often: a refresh would encrypt again).
    Sign { reason: String },
    /// No key, opportunistic, signing off: the message as it is (Bcc removed).
    Clear { reason: String },
    /// Already encrypted by the sender: passed on untouched (Bcc removed).
    PassThrough,
    /// Refused for this recipient.
    Reject(Reply),
    /// Cannot decide now; try again later.
    Defer(Reply),
}

/// The plan for a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    PerRecipient(Vec<(String, Step)>),
    /// all-or-nothing: no copy at all.
    Refuse(Reply),
}

/// One envelope recipient and whether its address is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub valid: bool,
}

/// The refusal of a recipient that is not an address sealpost sends to.
pub fn bad_address(address: &str) -> Reply {
    let text = if super::routes_in_local_part(address) {
        format!("an address that routes on (%, ! or @ in its local part) is not taken: {address}; write the mailbox itself")
    } else {
        format!("bad recipient address syntax: {address}")
    };
    Reply::new(553, "5.1.3", text)
}

/// Decides per recipient. `lookups` holds an entry for every valid recipient unless the
/// message is already encrypted.
pub fn plan(
    recipients: &[Recipient],
    already_encrypted: bool,
    policy: &Policy,
    lookups: &HashMap<String, Lookup>,
) -> Plan {
    let all_or_nothing = recipients
        .iter()
        .any(|r| r.valid && policy.mode_for(&r.address) == Mode::AllOrNothing);
    let mut keyless = Vec::new();
    let mut steps = Vec::with_capacity(recipients.len());
    for r in recipients {
        let step = if !r.valid {
            Step::Reject(bad_address(&r.address))
        } else if already_encrypted {
            Step::PassThrough
        } else {
            match lookups.get(&r.address) {
                None => Step::Defer(Reply::new(451, "4.7.0", "key lookup did not run")),
                // We cannot tell whether a key exists, so even an opportunistic recipient is
                // deferred: sending cleartext could leak what should have been encrypted.
                Some(Lookup::Failed(why)) => Step::Defer(Reply::new(
                    451,
                    "4.7.0",
                    format!("key lookup failed: {why}"),
                )),
                Some(Lookup::Found(Resolution::Usable { fingerprint, .. })) => Step::Encrypt {
                    fingerprint: fingerprint.clone(),
                },
                Some(Lookup::Found(none @ Resolution::NoKey { .. })) => {
                    let reason = none.reason();
                    keyless.push(format!("{} ({reason})", r.address));
                    match policy.mode_for(&r.address) {
                        _ if all_or_nothing => Step::Reject(Reply::new(
                            550,
                            "5.7.1",
                            format!("encryption required, {reason}"),
                        )),
                        Mode::Opportunistic if policy.sign => Step::Sign { reason },
                        Mode::Opportunistic => Step::Clear { reason },
                        Mode::EncryptOnly | Mode::AllOrNothing => Step::Reject(Reply::new(
                            550,
                            "5.7.1",
                            format!("encryption required, {reason}"),
                        )),
                    }
                }
            }
        };
        steps.push((r.address.clone(), step));
    }
    // all-or-nothing cannot be decided while a lookup failed: defer every recipient rather
    // than send some copies now and refuse the message later.
    if all_or_nothing && lookups.values().any(|l| matches!(l, Lookup::Failed(_))) {
        for (_, step) in steps.iter_mut() {
            let bad_address = matches!(step, Step::Reject(r) if r.status == "5.1.3");
            if !bad_address {
                *step = Step::Defer(Reply::new(
                    451,
                    "4.7.0",
                    "all-or-nothing: a key lookup failed, cannot decide yet",
                ));
            }
        }
        return Plan::PerRecipient(steps);
    }
    if all_or_nothing && !keyless.is_empty() {
        return Plan::Refuse(Reply::new(
            550,
            "5.7.1",
            format!(
                "message refused: every recipient must have a usable key; none for {}",
                listed(&keyless, 300)
            ),
        ));
    }
    Plan::PerRecipient(steps)
}

/// `items` joined with ", " up to about `max` characters, then "and N more": an SMTP reply
/// line holds 512 octets (RFC 5321 §4.5.3.1.5), and Postfix replaced a longer one with a bare
/// "Command rejected", the reason lost (review: 20 keyless recipients).
fn listed(items: &[String], max: usize) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 && out.len() + 2 + item.len() > max {
            return format!("{out} and {} more", items.len() - i);
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_is_cut_short() {
        let many: Vec<String> = (0..40)
            .map(|i| format!("recipient-number-{i:02}@example.org"))
            .collect();
        let text = listed(&many, 300);
        assert!(text.len() < 340, "{text}");
        assert!(
            text.starts_with("recipient-number-00@example.org, "),
            "{text}"
        );
        assert!(text.ends_with(" and 31 more"), "{text}");
        assert_eq!(
            listed(&many[..2], 300),
            "recipient-number-00@example.org, recipient-number-01@example.org"
        );
    }

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            valid: true,
        }
    }

    fn found(fpr: &str) -> Lookup {
        Lookup::Found(Resolution::Usable {
            fingerprint: fpr.into(),
            others: 0,
        })
    }

    fn none() -> Lookup {
        Lookup::Found(Resolution::NoKey { refused: vec![] })
    }

    fn lookups(entries: &[(&str, Lookup)]) -> HashMap<String, Lookup> {
        entries
            .iter()
            .map(|(a, l)| (a.to_string(), l.clone()))
            .collect()
    }

    fn codes(plan: &Plan) -> Vec<String> {
        match plan {
            Plan::Refuse(r) => vec![format!("refuse {}", r.status)],
            Plan::PerRecipient(steps) => steps
                .iter()
                .map(|(a, s)| match s {
                    Step::Encrypt { fingerprint } => format!("{a} encrypt {fingerprint}"),
                    Step::Sign { .. } => format!("{a} sign"),
                    Step::Clear { .. } => format!("{a} clear"),
                    Step::PassThrough => format!("{a} pass"),
                    Step::Reject(r) => format!("{a} reject {} {}", r.code, r.status),
                    Step::Defer(r) => format!("{a} defer {} {}", r.code, r.status),
                })
                .collect(),
        }
    }

    #[test]
    fn table() {
        let abc = [rcpt("a@x.org"), rcpt("b@y.net"), rcpt("c@x.org")];
        let keys = lookups(&[
            ("a@x.org", found("A")),
            ("b@y.net", none()),
            ("c@x.org", found("C")),
        ]);
        let opportunistic = Policy::default();
        let encrypt_only = Policy {
            mode: Mode::EncryptOnly,
            ..Policy::default()
        };
        let aon = Policy {
            mode: Mode::AllOrNothing,
            ..Policy::default()
        };
        let unsigned = Policy {
            sign: false,
            ..Policy::default()
        };
        let mut per_domain = Policy::default();
        per_domain.domains.insert("y.net".into(), Mode::EncryptOnly);
        let mut one_aon = Policy::default();
        one_aon
            .addresses
            .insert("c@x.org".into(), Mode::AllOrNothing);

        type Case<'a> = (&'a Policy, bool, HashMap<String, Lookup>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                &opportunistic,
                false,
                keys.clone(),
                vec!["a@x.org encrypt A", "b@y.net sign", "c@x.org encrypt C"],
            ),
            (
                &encrypt_only,
                false,
                keys.clone(),
                vec![
                    "a@x.org encrypt A",
                    "b@y.net reject 550 5.7.1",
                    "c@x.org encrypt C",
                ],
            ),
            (&aon, false, keys.clone(), vec!["refuse 5.7.1"]),
            (&one_aon, false, keys.clone(), vec!["refuse 5.7.1"]),
            (
                &unsigned,
                false,
                keys.clone(),
                vec!["a@x.org encrypt A", "b@y.net clear", "c@x.org encrypt C"],
            ),
            (
                &per_domain,
                false,
                keys.clone(),
                vec![
                    "a@x.org encrypt A",
                    "b@y.net reject 550 5.7.1",
                    "c@x.org encrypt C",
                ],
            ),
            (
                &opportunistic,
                true,
                HashMap::new(),
                vec!["a@x.org pass", "b@y.net pass", "c@x.org pass"],
            ),
            (
                &opportunistic,
                false,
                lookups(&[
                    ("a@x.org", Lookup::Failed("deadline".into())),
                    ("b@y.net", none()),
                    ("c@x.org", found("C")),
                ]),
                vec![
                    "a@x.org defer 451 4.7.0",
                    "b@y.net sign",
                    "c@x.org encrypt C",
                ],
            ),
        ];
        for (policy, enc, lk, want) in cases {
            assert_eq!(codes(&plan(&abc, enc, policy, &lk)), want, "{policy:?}");
        }
        let aon_failed = lookups(&[
            ("a@x.org", found("A")),
            ("b@y.net", Lookup::Failed("gone".into())),
            ("c@x.org", found("C")),
        ]);
        assert_eq!(
            codes(&plan(&abc, false, &aon, &aon_failed)),
            vec![
                "a@x.org defer 451 4.7.0",
                "b@y.net defer 451 4.7.0",
                "c@x.org defer 451 4.7.0"
            ]
        );
        let aon_all_keys = lookups(&[
            ("a@x.org", found("A")),
            ("b@y.net", found("B")),
            ("c@x.org", found("C")),
        ]);
        assert_eq!(codes(&plan(&abc, false, &aon, &aon_all_keys)).len(), 3);
    }

    #[test]
    fn invalid_address_is_5_1_3() {
        let bad = [Recipient {
            address: "not an address".into(),
            valid: false,
        }];
        assert_eq!(
            codes(&plan(&bad, false, &Policy::default(), &HashMap::new())),
            vec!["not an address reject 553 5.1.3"]
        );
    }
}
