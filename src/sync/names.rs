//! Upstream folder names and local mailbox names, both ways.
//!
//! Locally every account has the same tree: INBOX, the special-use mailboxes Drafts, Sent,
//! Trash, Junk and Archive ([`DEFAULT_MAILBOXES`]) and the user's own, "/" between levels,
//! names in UTF-8. Upstream servers differ in three ways, and each is undone here:
//! - the hierarchy delimiter ("." on Dovecot's Maildir++, "/" on most others): it becomes "/";
//! - a personal namespace prefix (RFC 2342): on Courier and on Cyrus every folder but INBOX
//!   is named under "INBOX.", so "INBOX.Sent" is Sent here, and a folder made here goes
//!   under the prefix upstream (the server refuses any other name). Folders outside it (a
//!   public or shared namespace) keep their whole name here, unless it is one a personal
//!   folder has here already (then they are left out);
//! - special-use folders of another name (RFC 6154): "Sent Items" or "[Gmail]/Sent Mail"
//!   marked \Sent is Sent here, where the user's mail client looks for it, and what the
//!   client puts into Sent goes there. Only where upstream has no folder of the local name
//!   itself: a server with both "Sent" and "Sent Items" \Sent keeps both as they are.
//!
//! Local names must not move under the user's mail client, so both choices are made once
//! and kept in the store: the prefix at the account's first pass (an account synced before
//! keeps the names it has, without one), a special-use folder when it is first seen and not
//! synced yet under a name of its own. A folder that comes later under a local name a
//! special-use folder took ("Sent" made upstream beside "Sent Items") is left out.

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
    /// (wire name, local name) of folders outside the personal namespace.
    outside: Vec<(String, String)>,
    /// (wire name, local name) of personal folders spelled otherwise upstream than the local
    /// name encodes: decomposed Unicode (NFD "Cafe\u{301}", which is "Café" here, in NFC), or
    /// a modified UTF-7 that is not the shortest. What goes up goes to that folder (review:
    /// a move into "Café" made a second folder "Caf&AOk-" beside "Cafe&AwE-").
    spelled: Vec<(String, String)>,
}

impl FolderNames {
    /// From the personal namespace's prefix as decided for the account, the folders LIST
    /// named, the special-use choices kept (`kept`: local name, wire name) and the folders
    /// synced so far. Returns the names and the special-use choices made now, to be kept.
    pub fn new(
        prefix: &str,
        listed: &[Listed],
        kept: &[(String, String)],
        synced: &[String],
    ) -> (FolderNames, Vec<(String, String)>) {
        let delimiter = listed
            .iter()
            .find_map(|l| l.delimiter.clone().filter(|d| !d.is_empty()))
            .unwrap_or_else(|| "/".into());
        let mut names = FolderNames {
            delimiter,
            prefix: prefix.to_string(),
            aliases: Vec::new(),
            outside: Vec::new(),
            spelled: Vec::new(),
        };
        // Kept even while the folder is not listed (another client deleted it): what the
        // mail client puts into Sent makes it again, rather than a plain "Sent" that would
        // be left out once it is back.
        for (local, wire) in kept {
            names.aliases.push((wire.clone(), local.clone()));
        }
        // (local name, wire name) of the folders in the personal namespace.
        let personal: Vec<(String, &String)> = listed
            .iter()
            .filter_map(|l| names.natural(&l.wire).ok().map(|n| (n, &l.wire)))
            .collect();
        for (local, wire) in personal.iter().filter(|(l, _)| l != "INBOX") {
            let plain = names.plain_wire(local);
            let listed_plain = personal.iter().any(|(l, w)| l == local && **w == plain);
            if **wire != plain && !listed_plain {
                names.spelled.push(((*wire).clone(), local.clone()));
            }
        }
        let mut made = Vec::new();
        for (local, use_) in DEFAULT_MAILBOXES.iter() {
            let Some(use_) = use_ else { continue };
            // Upstream has a folder of the local name (that one is it), or one was chosen.
            if personal.iter().any(|(p, _)| p == local)
                || names.aliases.iter().any(|(_, l)| l == local)
            {
                continue;
            }
            // A folder synced under a name of its own keeps it (mail is there already).
            let taken = |wire: &str| names.aliases.iter().any(|(w, _)| w == wire);
            if let Some(folder) = listed.iter().find(|l| {
                l.special_use == Some(*use_)
                    && !taken(&l.wire)
                    && !synced.contains(&l.wire)
                    && names.natural(&l.wire).is_ok()
            }) {
                names.aliases.push((folder.wire.clone(), local.to_string()));
                made.push((local.to_string(), folder.wire.clone()));
            }
        }
        if !names.prefix.is_empty() {
            for l in listed {
                if names.natural(&l.wire).is_ok() {
                    continue;
                }
                let Ok(local) = names.converted(&l.wire) else {
                    continue;
                };
                // A personal folder of that name here, or under it, takes it; except that one
                // synced already keeps it against a personal one that came later.
                let synced_here = synced.contains(&l.wire);
                let under = |p: &str| p == local || p.starts_with(&format!("{local}/"));
                let clash = local.eq_ignore_ascii_case("INBOX")
                    || personal
                        .iter()
                        .any(|(p, wire)| under(p) && (!synced_here || synced.contains(wire)))
                    || names.aliases.iter().any(|(_, a)| under(a));
                if !clash {
                    names.outside.push((l.wire.clone(), local));
                }
            }
        }
        (names, made)
    }

    /// Names with a delimiter and nothing else: a Maildir++ source's folders (".").
    pub fn flat(delimiter: &str) -> FolderNames {
        FolderNames {
            delimiter: delimiter.into(),
            prefix: String::new(),
            aliases: Vec::new(),
            outside: Vec::new(),
            spelled: Vec::new(),
        }
    }

    /// The local name of an upstream folder, or why it has none.
    pub fn local(&self, wire: &str) -> Result<String, String> {
        // A chosen folder, or one of its children.
        for (w, l) in self.chosen() {
            if wire == w {
                return Ok(l.clone());
            }
            if let Some(rest) = wire
                .strip_prefix(w.as_str())
                .and_then(|r| r.strip_prefix(self.delimiter.as_str()))
            {
                return Ok(format!("{l}/{}", self.converted(rest)?));
            }
        }
        let local = self.natural(wire)?;
        // Its name here is a chosen folder's, or a child's of one.
        if let Some((other, l)) = self
            .chosen()
            .find(|(_, l)| local == *l || local.starts_with(&format!("{l}/")))
        {
            return Err(format!("{l} here is {other:?} upstream"));
        }
        Ok(local)
    }

    /// The special-use choices, the folders outside the personal namespace and those spelled
    /// otherwise upstream.
    fn chosen(&self) -> impl Iterator<Item = &(String, String)> {
        self.aliases
            .iter()
            .chain(self.outside.iter())
            .chain(self.spelled.iter())
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
        // "INBOX.INBOX" would be INBOX here.
        let local = self.converted(own)?;
        if local.eq_ignore_ascii_case("INBOX") {
            return Err("named INBOX under the namespace prefix".into());
        }
        Ok(local)
    }

    /// A wire name with "/" for the delimiter, modified UTF-7 decoded.
    fn converted(&self, wire: &str) -> Result<String, String> {
        let with_slash = match self.delimiter.as_str() {
            "/" => wire.to_string(),
            d => wire.replace(d, "/"),
        };
        crate::imap::names::validate(with_slash.as_bytes()).map_err(|e| e.to_string())
    }

    /// The upstream wire name of a local mailbox (one a journal entry marks gone included:
    /// its folder's name, see [`crate::store::GONE`]).
    pub fn wire(&self, local: &str) -> String {
        let (local, _) = crate::store::unmarked(local);
        if local == "INBOX" {
            return local.into();
        }
        for (w, l) in self.chosen() {
            if local == l {
                return w.clone();
            }
            if let Some(rest) = local
                .strip_prefix(l.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                let rest = crate::imap::names::encode(rest).replace('/', &self.delimiter);
                return format!("{w}{}{rest}", self.delimiter);
            }
        }
        self.plain_wire(local)
    }

    /// The wire name a local name encodes to, with the prefix and delimiter.
    fn plain_wire(&self, local: &str) -> String {
        let encoded = crate::imap::names::encode(local).replace('/', &self.delimiter);
        format!("{}{encoded}", self.prefix)
    }

    /// Why a local mailbox has no name upstream of its own, if it has none: a part of its
    /// name holds the upstream's delimiter ("v1.2" is v1's child 2 where it is "."), or its
    /// wire name is a special-use folder's that is another mailbox here ("Sent Items" where
    /// that is Sent).
    pub fn unrepresentable(&self, local: &str) -> Option<String> {
        let (local, _) = crate::store::unmarked(local);
        if holds_delimiter(local, &self.delimiter) {
            return Some(format!(
                "the name holds the upstream's hierarchy delimiter {:?}",
                self.delimiter
            ));
        }
        let wire = self.wire(local);
        self.chosen()
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

    /// The names of a first pass (nothing kept, nothing synced).
    fn first_pass(prefix: &str, listed: &[Listed]) -> FolderNames {
        FolderNames::new(prefix, listed, &[], &[]).0
    }

    /// A folder spelled in decomposed Unicode upstream is the local NFC one, both ways, its
    /// children too; beside the NFC spelling, the NFC one is it.
    #[test]
    fn a_folder_spelled_otherwise_upstream_is_written_back_to() {
        let nfd = "Cafe&AwE-";
        let names = first_pass(
            "",
            &[listed(nfd, ".", None), listed("Cafe&AwE-.x", ".", None)],
        );
        assert_eq!(names.local(nfd).unwrap(), "Café");
        assert_eq!(names.wire("Café"), nfd);
        assert_eq!(names.wire("Café/x"), "Cafe&AwE-.x");
        assert_eq!(names.wire("Other"), "Other");
        let both = first_pass("", &[listed(nfd, ".", None), listed("Caf&AOk-", ".", None)]);
        assert_eq!(both.wire("Café"), "Caf&AOk-");
    }

    #[test]
    fn delimiters_and_modified_utf7_are_undone() {
        let names = first_pass("", &[listed("Lists.rust", ".", None)]);
        assert_eq!(names.local("INBOX").unwrap(), "INBOX");
        assert_eq!(names.local("inbox").unwrap(), "INBOX");
        assert_eq!(names.local("Lists.rust").unwrap(), "Lists/rust");
        assert_eq!(names.local("Entw&APw-rfe").unwrap(), "Entwürfe");
        assert_eq!(names.wire("Lists/rust"), "Lists.rust");
        assert_eq!(names.wire("Entwürfe"), "Entw&APw-rfe");
        let slash = first_pass("", &[listed("Lists/rust", "/", None)]);
        assert_eq!(slash.local("Lists/rust").unwrap(), "Lists/rust");
        assert!(names.unrepresentable("v1.2").is_some());
        assert!(slash.unrepresentable("v1.2").is_none());
    }

    #[test]
    fn a_namespace_prefix_is_left_out_here_and_put_back_upstream() {
        let names = first_pass(
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
        let names = first_pass(
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

    #[test]
    fn special_use_choices_are_kept_and_not_made_over_synced_folders() {
        let sent_items = listed("Sent Items", "/", Some(SpecialUse::Sent));
        let (first, made) = FolderNames::new("", std::slice::from_ref(&sent_items), &[], &[]);
        assert_eq!(made, [("Sent".to_string(), "Sent Items".to_string())]);
        assert_eq!(first.local("Sent Items").unwrap(), "Sent");
        // Another client makes a plain "Sent" upstream: the choice holds, and the newcomer,
        // whose name here is taken, is left out.
        let plain = listed("Sent", "/", None);
        let (later, made) = FolderNames::new(
            "",
            &[sent_items.clone(), plain],
            &[("Sent".into(), "Sent Items".into())],
            &["Sent Items".into()],
        );
        assert!(made.is_empty());
        assert_eq!(later.local("Sent Items").unwrap(), "Sent");
        assert!(later.local("Sent").is_err());
        assert_eq!(later.wire("Sent"), "Sent Items");
        // Synced before under its own name (an account from before): it keeps it.
        let (old, made) = FolderNames::new("", &[sent_items], &[], &["Sent Items".into()]);
        assert!(made.is_empty());
        assert_eq!(old.local("Sent Items").unwrap(), "Sent Items");
        assert_eq!(old.wire("Sent Items"), "Sent Items");
        assert_eq!(old.wire("Sent"), "Sent");
        // Deleted upstream by another client: Sent still goes there (made again).
        let (gone, made) = FolderNames::new(
            "",
            &[listed("INBOX", "/", None)],
            &[("Sent".into(), "Sent Items".into())],
            &[],
        );
        assert!(made.is_empty());
        assert_eq!(gone.wire("Sent"), "Sent Items");
    }

    #[test]
    fn folders_outside_the_personal_namespace_keep_their_whole_name() {
        let names = first_pass(
            "INBOX.",
            &[
                listed("INBOX", ".", None),
                listed("INBOX.Lists", ".", None),
                listed("Public.Announce", ".", None),
                listed("Lists", ".", None),
            ],
        );
        assert_eq!(names.local("Public.Announce").unwrap(), "Public/Announce");
        assert_eq!(names.wire("Public/Announce"), "Public.Announce");
        // "Lists" here is INBOX.Lists: the shared one of that name is left out.
        assert_eq!(names.local("INBOX.Lists").unwrap(), "Lists");
        assert!(names.local("Lists").is_err());
        assert_eq!(names.wire("Lists"), "INBOX.Lists");
        // Children follow their parent.
        assert_eq!(names.wire("Public/Announce/2026"), "Public.Announce.2026");
        assert_eq!(
            names.local("Public.Announce.2026").unwrap(),
            "Public/Announce/2026"
        );
        // New mailboxes elsewhere go under the prefix.
        assert_eq!(names.wire("Public/New"), "INBOX.Public.New");
    }

    #[test]
    fn a_public_folder_takes_no_name_a_personal_one_has_here_or_under_it() {
        let first = [
            listed("INBOX", ".", None),
            listed("INBOX.Public.Announce.2026", ".", None),
            listed("Public.Announce", ".", None),
        ];
        let (names, _) = FolderNames::new("INBOX.", &first, &[], &[]);
        assert_eq!(
            names.local("INBOX.Public.Announce.2026").unwrap(),
            "Public/Announce/2026"
        );
        assert!(names.local("Public.Announce").is_err());
        assert_eq!(
            names.wire("Public/Announce/2026"),
            "INBOX.Public.Announce.2026"
        );
        // Synced first, the public one keeps its name against a personal one made later.
        let later = [
            listed("INBOX", ".", None),
            listed("Public.Announce", ".", None),
            listed("INBOX.Public.Announce", ".", None),
        ];
        let (names, _) = FolderNames::new("INBOX.", &later, &[], &["Public.Announce".into()]);
        assert_eq!(names.local("Public.Announce").unwrap(), "Public/Announce");
        assert!(names.local("INBOX.Public.Announce").is_err());
        assert_eq!(names.wire("Public/Announce"), "Public.Announce");
    }
}
