//! Upstream folder names and local mailbox names, both ways.
//!
//! Locally every account has the same tree: INBOX, the special-use mailboxes Drafts, Sent,
//! Trash, Junk and Archive ([`DEFAULT_MAILBOXES`]) and the user's own, "/" between levels,
//! names in UTF-8. Upstream servers differ in three ways, and each is undone here:
//! - the hierarchy delimiter ("." on Dovecot's Maildir++, "/" on most others): it becomes "/";
//! - a personal namespace prefix (RFC 2342): on Courier and on Cyrus every folder but INBOX
//!   is named under "INBOX.", so "INBOX.Sent" is Sent here, and a folder made here goes
//!   under the prefix upstream (the server refuses any other name);
//! - special-use folders of another name (RFC 6154): "Sent Items" or "[Gmail]/Sent Mail"
//!   marked \Sent is Sent here, where the user's mail client looks for it, and what the
//!   client puts into Sent goes there. Only where upstream has no folder of the local name
//!   itself: a server with both "Sent" and "Sent Items" \Sent keeps both as they are.
//!
//! The mapping is worked out anew at every pass from the server's NAMESPACE and LIST.

use crate::store::{holds_delimiter, SpecialUse, DEFAULT_MAILBOXES};

/// One folder of the server's LIST: its wire name, hierarchy delimiter and special use.
#[derive(Debug, Clone)]
pub struct Listed {
    pub wire: String,
    pub delimiter: Option<String>,
    pub special_use: Option<SpecialUse>,
}

/// The account's upstream names as of this pass.
#[derive(Debug, Clone)]
pub struct FolderNames {
    /// The hierarchy delimiter ("/" for a flat server).
    pub delimiter: String,
    /// The personal namespace's prefix ("INBOX." on Courier), empty on most servers.
    prefix: String,
    /// (wire name, local name) of special-use folders named otherwise upstream.
    aliases: Vec<(String, String)>,
}

impl FolderNames {
    /// From the personal namespace's prefix (NAMESPACE, RFC 2342; empty when the server has
    /// none) and the folders LIST named.
    pub fn new(prefix: &str, listed: &[Listed]) -> FolderNames {
        let delimiter = listed
            .iter()
            .find_map(|l| l.delimiter.clone().filter(|d| !d.is_empty()))
            .unwrap_or_else(|| "/".into());
        let mut names = FolderNames {
            delimiter,
            prefix: prefix.to_string(),
            aliases: Vec::new(),
        };
        for (local, use_) in DEFAULT_MAILBOXES.iter() {
            let Some(use_) = use_ else { continue };
            // Upstream has a folder of the local name: that one is it.
            if listed
                .iter()
                .any(|l| names.natural(&l.wire).ok().as_deref() == Some(local))
            {
                continue;
            }
            let taken = |wire: &str| names.aliases.iter().any(|(w, _)| w == wire);
            if let Some(folder) = listed
                .iter()
                .find(|l| l.special_use == Some(*use_) && !taken(&l.wire))
            {
                names.aliases.push((folder.wire.clone(), local.to_string()));
            }
        }
        names
    }

    /// Names with a delimiter and nothing else: a Maildir++ source's folders (".").
    pub fn flat(delimiter: &str) -> FolderNames {
        FolderNames {
            delimiter: delimiter.into(),
            prefix: String::new(),
            aliases: Vec::new(),
        }
    }

    /// The local name of an upstream folder, or why it has none.
    pub fn local(&self, wire: &str) -> Result<String, String> {
        if let Some((_, local)) = self.aliases.iter().find(|(w, _)| w == wire) {
            return Ok(local.clone());
        }
        self.natural(wire)
    }

    /// The local name without aliases: the prefix gone, the delimiter "/", modified UTF-7
    /// decoded (RFC 3501 §5.1.3).
    fn natural(&self, wire: &str) -> Result<String, String> {
        if wire.eq_ignore_ascii_case("INBOX") {
            return Ok("INBOX".into());
        }
        let own = match self.prefix.as_str() {
            "" => wire,
            prefix => wire
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &wire[prefix.len()..])
                .ok_or_else(|| format!("outside the personal namespace {prefix:?}"))?,
        };
        let with_slash = match self.delimiter.as_str() {
            "/" => own.to_string(),
            d => own.replace(d, "/"),
        };
        // "INBOX.INBOX" would be INBOX here.
        if with_slash.eq_ignore_ascii_case("INBOX") {
            return Err("named INBOX under the namespace prefix".into());
        }
        crate::imap::names::validate(with_slash.as_bytes()).map_err(|e| e.to_string())
    }

    /// The upstream wire name of a local mailbox.
    pub fn wire(&self, local: &str) -> String {
        if local == "INBOX" {
            return local.into();
        }
        if let Some((wire, _)) = self.aliases.iter().find(|(_, l)| l == local) {
            return wire.clone();
        }
        let encoded = crate::imap::names::encode(local).replace('/', &self.delimiter);
        format!("{}{encoded}", self.prefix)
    }

    /// Why a local mailbox has no name upstream of its own, if it has none: a part of its
    /// name holds the upstream's delimiter ("v1.2" is v1's child 2 where it is "."), or its
    /// wire name is a special-use folder's that is another mailbox here ("Sent Items" where
    /// that is Sent).
    pub fn unrepresentable(&self, local: &str) -> Option<String> {
        if holds_delimiter(local, &self.delimiter) {
            return Some(format!(
                "the name holds the upstream's hierarchy delimiter {:?}",
                self.delimiter
            ));
        }
        let wire = self.wire(local);
        self.aliases
            .iter()
            .find(|(w, l)| *w == wire && l != local)
            .map(|(_, l)| format!("{wire:?} upstream is {l} here"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(wire: &str, delimiter: &str, special_use: Option<SpecialUse>) -> Listed {
        Listed {
            wire: wire.into(),
            delimiter: Some(delimiter.into()),
            special_use,
        }
    }

    #[test]
    fn delimiters_and_modified_utf7_are_undone() {
        let names = FolderNames::new("", &[listed("Lists.rust", ".", None)]);
        assert_eq!(names.local("INBOX").unwrap(), "INBOX");
        assert_eq!(names.local("inbox").unwrap(), "INBOX");
        assert_eq!(names.local("Lists.rust").unwrap(), "Lists/rust");
        assert_eq!(names.local("Entw&APw-rfe").unwrap(), "Entwürfe");
        assert_eq!(names.wire("Lists/rust"), "Lists.rust");
        assert_eq!(names.wire("Entwürfe"), "Entw&APw-rfe");
        let slash = FolderNames::new("", &[listed("Lists/rust", "/", None)]);
        assert_eq!(slash.local("Lists/rust").unwrap(), "Lists/rust");
        assert!(names.unrepresentable("v1.2").is_some());
        assert!(slash.unrepresentable("v1.2").is_none());
    }

    #[test]
    fn a_namespace_prefix_is_left_out_here_and_put_back_upstream() {
        let names = FolderNames::new(
            "INBOX.",
            &[
                listed("INBOX", ".", None),
                listed("INBOX.Sent", ".", Some(SpecialUse::Sent)),
                listed("INBOX.Lists.rust", ".", None),
            ],
        );
        assert_eq!(names.local("INBOX").unwrap(), "INBOX");
        assert_eq!(names.local("INBOX.Sent").unwrap(), "Sent");
        assert_eq!(names.local("inbox.Lists.rust").unwrap(), "Lists/rust");
        assert!(names.local("Shared.x").is_err());
        assert!(names.local("INBOX.INBOX").is_err());
        assert_eq!(names.wire("INBOX"), "INBOX");
        assert_eq!(names.wire("Sent"), "INBOX.Sent");
        assert_eq!(names.wire("Drafts"), "INBOX.Drafts");
        assert_eq!(names.wire("Lists/rust"), "INBOX.Lists.rust");
    }

    #[test]
    fn special_use_folders_named_otherwise_are_the_local_ones() {
        let names = FolderNames::new(
            "",
            &[
                listed("INBOX", "/", None),
                listed("Sent Items", "/", Some(SpecialUse::Sent)),
                listed("[Gmail]/Drafts", "/", Some(SpecialUse::Drafts)),
                listed("Trash", "/", None),
                listed("Deleted Items", "/", Some(SpecialUse::Trash)),
            ],
        );
        assert_eq!(names.local("Sent Items").unwrap(), "Sent");
        assert_eq!(names.wire("Sent"), "Sent Items");
        assert_eq!(names.local("[Gmail]/Drafts").unwrap(), "Drafts");
        assert_eq!(names.wire("Drafts"), "[Gmail]/Drafts");
        // Upstream has a Trash of its own: both stay as they are.
        assert_eq!(names.local("Trash").unwrap(), "Trash");
        assert_eq!(names.local("Deleted Items").unwrap(), "Deleted Items");
        assert_eq!(names.wire("Trash"), "Trash");
        // A mailbox here named like an aliased folder has no name upstream.
        assert!(names.unrepresentable("Sent Items").is_some());
        assert!(names.unrepresentable("Sent").is_none());
        assert!(names.unrepresentable("Deleted Items").is_none());
    }
}
