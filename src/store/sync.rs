//! What the sync needs of the store besides storing messages: the upstream folders' marks,
//! the links between upstream messages and local ones, and the change journal that the
//! write-back empties.
//!
//! Links are kept in the same transaction as the change they describe: an imported batch
//! with its links ([`Store::append_synced`]), a written-back journal entry with the links it
//! made or broke ([`Store::writeback_done`]). So after a crash the links say exactly what
//! upstream holds of each local message, as of the last commit.

use rusqlite::{params, OptionalExtension};

use super::{
    expunge_rows, find_mailbox, find_mailbox_id, save_counters, unix_now, AccountId, Flags,
    MailboxId, Store, StoreError,
};

/// A journal entry's reason for waiting when it waits behind an earlier change to the same
/// message or mailbox.
pub const HELD_BACK: &str = "waits for an earlier change to the same message or mailbox";

/// Why a folder deleted here waits: its new mail upstream comes down first.
pub const UNSEEN_BEFORE_DELETE: &str =
    "new mail upstream since the last pass: fetched before the folder is deleted";

/// A deletion or rename made here, waiting in the journal, of a mailbox no longer here.
#[derive(Debug)]
struct Departure {
    id: i64,
    name: String,
    kind: String,
    why: String,
}

impl Departure {
    /// A deletion that waits for the folder's new mail to be fetched first.
    fn fetches(&self) -> bool {
        self.kind == "delete-mailbox" && self.why == UNSEEN_BEFORE_DELETE
    }
}

/// The folders a pass's fetch leaves out while a deletion or rename made here waits to be
/// written back (see [`Store::waiting_departures`]).
#[derive(Debug, Default)]
pub struct Departures {
    /// Name → the entry that decides, for names no mailbox here has.
    latest: std::collections::HashMap<String, Departure>,
    /// The names of the renames waiting, oldest first.
    renamed_from: Vec<String>,
}

/// Whether a pass's fetch takes the upstream folder of a local name.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    Taken,
    /// Deleted or renamed here, not upstream yet: the changes after it still name the mailbox
    /// that went, and would take a new one of that name for it, and the folder would stay
    /// here after the change went upstream. Only new mail a deletion found upstream brings
    /// the folder back (the deletion waits for it).
    Departed,
    /// Under a folder renamed here (its subfolders went with it), while the rename waits
    /// (review: they came back here, empty, beside their renamed copies), also when a folder
    /// of the old name was made here since: unless one of its own name is here (made, or
    /// renamed back), which is its local folder.
    UnderRenamedUnlessHere,
}

impl Departures {
    /// Whether the fetch takes the upstream folder of local name `local`.
    pub fn keeps_out(&self, local: &str) -> Fetch {
        if self.latest.get(local).is_some_and(|d| !d.fetches()) {
            return Fetch::Departed;
        }
        let renamed_above = self.renamed_from.iter().any(|name| {
            local
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with(crate::store::DELIMITER))
        });
        if renamed_above {
            Fetch::UnderRenamedUnlessHere
        } else {
            Fetch::Taken
        }
    }
}

/// What [`Store::follow_upstream_rename`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowedRename {
    /// Nothing: the folder is left to be forgotten and fetched again under its new name.
    No,
    /// The local mailbox of this name took the new name.
    Renamed(String),
    /// The local mailbox had the new name already (renamed with its parent): only the mark
    /// and the links moved.
    Relinked,
    /// The same rename was made here and waited to go up: it is taken as done, and the mark
    /// and the links moved.
    AlsoHere,
    /// Renamed here to another name, the rename waiting to go up: the mark and the links
    /// moved, and the waiting rename now renames the folder from its new name upstream (for an
    /// inferior, its parent's did so already).
    Carried,
}

/// Keywords that sealpost sets itself (the verdict): local only, never written upstream and
/// never taken away by an upstream flag change.
pub const LOCAL_KEYWORD_PREFIX: &str = "$Sealpost-";

/// Store meta key (+ account id) of the upstream's hierarchy delimiter, as a character code:
/// a local name must not hold it, or it would name another folder upstream.
const UPSTREAM_DELIMITER: &str = "upstream-delimiter:";

/// The store_meta keys of placeholder mailboxes ([`Store::forget_placeholders`]): this, the
/// account, `:` and the mailbox's id (ids are never given out twice).
pub(super) const PLACEHOLDER: &str = "placeholder:";

/// What keeps a local mailbox the sync could remove.
#[derive(Debug, PartialEq, Eq)]
enum Use {
    /// INBOX, a special-use mailbox, one with messages, or one a waiting change names.
    Kept,
    /// Only mailboxes under it.
    Parent,
    Unused,
}

fn use_of(
    tx: &rusqlite::Connection,
    account: AccountId,
    mb: &super::Mailbox,
) -> Result<Use, StoreError> {
    if mb.name == "INBOX" || mb.special_use.is_some() {
        return Ok(Use::Kept);
    }
    let kept: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE mailbox = ?1)
             OR EXISTS (SELECT 1 FROM journal
                        WHERE account = ?2 AND (mailbox = ?3 OR detail = ?3
                              OR substr(detail, 1, ?4) = ?5))",
        params![
            mb.id,
            account,
            mb.name,
            mb.name.chars().count() as i64 + 1,
            format!("{}\t", mb.name)
        ],
        |r| r.get(0),
    )?;
    if kept {
        return Ok(Use::Kept);
    }
    let prefix = format!("{}{}", mb.name, super::DELIMITER);
    let parent: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM mailboxes
                        WHERE account = ?1 AND substr(name, 1, ?2) = ?3)",
        params![account, prefix.chars().count() as i64, prefix],
        |r| r.get(0),
    )?;
    Ok(if parent { Use::Parent } else { Use::Unused })
}

/// Removes a mailbox [`use_of`] finds unused (not journaled).
fn remove_unused(tx: &rusqlite::Connection, mailbox: MailboxId) -> Result<(), StoreError> {
    tx.execute("DELETE FROM expunged WHERE mailbox = ?1", [mailbox])?;
    tx.execute("DELETE FROM mailboxes WHERE id = ?1", [mailbox])?;
    Ok(())
}

impl Store {
    /// Records the hierarchy delimiter the account's upstream uses (when it is not "/").
    pub fn set_upstream_delimiter(
        &self,
        account: AccountId,
        delimiter: Option<char>,
    ) -> Result<(), StoreError> {
        let key = format!("{UPSTREAM_DELIMITER}{account}");
        let wanted = delimiter.filter(|&d| d != '/').map(|d| d as i64);
        if self.meta(&key)? != wanted {
            match wanted {
                Some(code) => self.set_meta(&key, code)?,
                None => self.delete_meta(&[key])?,
            }
        }
        Ok(())
    }

    /// Why the local mailbox `name` could not be named upstream, when it could not: a part
    /// of it holds the upstream's hierarchy delimiter ("v1.2" upstream with "." is v1/2).
    pub fn upstream_name_problem(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let delimiter = self
            .meta(&format!("{UPSTREAM_DELIMITER}{account}"))?
            .and_then(|code| u32::try_from(code).ok())
            .and_then(char::from_u32);
        Ok(delimiter
            .filter(|d| holds_delimiter(name, d.encode_utf8(&mut [0; 4])))
            .map(|d| {
                format!(
                    "the upstream server's hierarchy delimiter {d:?} cannot be in a mailbox name \
                     here: it would name another folder there (use \"/\" for a hierarchy)"
                )
            }))
    }
}

/// Whether a part of the local mailbox name `name` holds the upstream's hierarchy delimiter
/// (one other than "/"), so that upstream would read it as another folder.
pub fn holds_delimiter(name: &str, delimiter: &str) -> bool {
    !delimiter.is_empty()
        && delimiter != "/"
        && name.split('/').any(|part| part.contains(delimiter))
}

/// Whether `flag` is one of sealpost's own keywords, in any letter case (IMAP keywords are
/// case-insensitive, RFC 3501 §2.3.2): only sealpost may set them, never an upstream server
/// or whoever can set flags there.
pub fn is_local_keyword(flag: &str) -> bool {
    flag.get(..LOCAL_KEYWORD_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(LOCAL_KEYWORD_PREFIX))
}

/// A verdict found for a message stored again ([`Store::carried_verdict`]): its
/// `Sealpost-Verdict` field as stored, and its `$Sealpost-` keywords.
pub type CarriedVerdict = (Vec<u8>, Vec<String>);

/// A journal entry as it is now, with what it names ([`Store::journal_entry_now`]).
#[derive(Debug)]
pub struct EntryNow {
    pub entry: JournalEntry,
    /// The local mailbox of the entry's name.
    pub mailbox: Option<MailboxId>,
    /// The local mailbox of the name the entry's detail starts with (a move's target, a
    /// copy's source).
    pub named: Option<MailboxId>,
    /// The id of the newest waiting rename or deletion (0: none).
    pub mark: i64,
    /// The waiting renames and deletions, when the mark was not the one known.
    pub departures: Option<Departed>,
}

/// The waiting renames (entry id, from, to) and deletions (entry id, name), oldest first.
pub type Departed = (Vec<(i64, String, String)>, Vec<(i64, String)>);

/// One change made by an IMAP client, to be written back upstream.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: i64,
    pub account: String,
    pub mailbox: String,
    pub uid: u32,
    /// flags, expunge, move, append, copy, delete-mailbox, rename-mailbox.
    pub kind: String,
    /// flags: the new flags, then a tab and the flags they replaced (older entries: the new
    /// flags alone); move: "TARGET\tNEWUID"; copy: "SOURCE\tSOURCEUID" (the entry's
    /// own mailbox and UID are the copy's); rename-mailbox: the new name.
    pub detail: String,
    /// Earlier tries that did not finish.
    pub attempts: u32,
    pub last_error: String,
}

/// An upstream folder as the sync last left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncFolder {
    pub uidvalidity: u32,
    /// The next upstream UID to fetch.
    pub next_uid: u32,
    /// The folder's HIGHESTMODSEQ at the last flag sync (0: none yet, or no CONDSTORE).
    pub highestmodseq: u64,
}

/// One upstream message: folder (wire name), UIDVALIDITY and UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRef {
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// What writing one journal entry back changed upstream, recorded with its removal.
#[derive(Debug, Clone, Default)]
pub struct WrittenBack {
    /// The local message no longer stands for the upstream message it was linked to
    /// (expunged, or moved away).
    pub unlink: Option<(MailboxId, u32)>,
    /// The local message now stands for this upstream message (uploaded, or moved).
    pub link: Option<(MailboxId, u32, UpstreamRef)>,
    /// SHA-256 of the linked upstream message's bytes, when known (an upload's own bytes); a
    /// move takes its source link's (`unlink`), a copy the one of `hash_from`.
    pub link_hash: Option<[u8; 32]>,
    /// The local message whose link's upstream hash the new link takes (a copy's source).
    pub hash_from: Option<(MailboxId, u32)>,
    /// The upstream folder was deleted: its marks and links go.
    pub forget_folder: Option<String>,
    /// The upstream folder (and its children, after the delimiter) was renamed.
    pub rename_folder: Option<(String, String, String)>,
    /// With `rename_folder`: only the folder's links under this UIDVALIDITY follow it; the
    /// others stay, as they are a new folder's of the old name (an upload into it).
    pub renamed_uidvalidity: Option<u32>,
    /// The change reached nothing upstream and is given up (said in the log): the entry is
    /// done, but not counted as written back.
    pub given_up: bool,
}

impl Store {
    /// An upstream folder's mark, when it was synced before.
    pub fn sync_folder(
        &self,
        account: AccountId,
        folder: &str,
    ) -> Result<Option<SyncFolder>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT uidvalidity, next_uid, highestmodseq FROM sync_folders
                 WHERE account = ?1 AND folder = ?2",
            )?
            .query_row(params![account, folder], |r| {
                Ok(SyncFolder {
                    uidvalidity: r.get(0)?,
                    next_uid: r.get(1)?,
                    highestmodseq: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()?)
        })
    }

    /// Starts an upstream folder over under a new UIDVALIDITY (RFC 3501 §2.3.1.1: the old
    /// UIDs mean nothing any more). The local messages stay; the old links are kept until
    /// the resync has matched them.
    pub fn reset_sync_folder(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sync_folders (account, folder, uidvalidity, next_uid, highestmodseq)
                 VALUES (?1, ?2, ?3, 1, 0)
                 ON CONFLICT (account, folder)
                 DO UPDATE SET uidvalidity = ?3, next_uid = 1, highestmodseq = 0",
                params![account, folder, uidvalidity],
            )?;
            Ok(())
        })
    }

    /// Moves a folder's mark on past upstream UIDs that need no fetch (already linked, such as
    /// this side's own uploads), and records the HIGHESTMODSEQ the flags are synced up to.
    pub fn advance_sync_folder(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        next_uid: u32,
        highestmodseq: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sync_folders (account, folder, uidvalidity, next_uid, highestmodseq)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account, folder) DO UPDATE
                 SET next_uid = max(next_uid, ?4), highestmodseq = ?5
                 WHERE uidvalidity = ?3",
                params![account, folder, uidvalidity, next_uid, highestmodseq as i64],
            )?;
            Ok(())
        })
    }

    /// The upstream UIDs from `from` on that are already linked to a local message, ascending.
    pub fn linked_upstream(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        from: u32,
    ) -> Result<Vec<u32>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT upstream_uid FROM sync_map
                 WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3 AND upstream_uid >= ?4
                 ORDER BY upstream_uid",
            )?;
            let rows = stmt.query_map(params![account, folder, uidvalidity, from], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The upstream folders the account has synced (their marks).
    pub fn synced_folders(&self, account: AccountId) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT folder FROM sync_folders WHERE account = ?1")?;
            let rows = stmt.query_map([account], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// An upstream folder another client renamed, `from` to `to` (the same folder: a rename
    /// keeps its UIDVALIDITY), followed here: the local mailbox holding its messages takes
    /// the name `local_to`, with its messages, flags, UIDs and inferiors, and the folder's mark
    /// and links move to the new name, so nothing is fetched and decrypted again and no local
    /// change waiting for it is lost (before: its messages were expunged here and came down
    /// again as new mail under the new name). Not journaled: upstream did it. Changes nothing
    /// when it cannot be followed that way: no message of the folder here, messages in more
    /// than one mailbox or one that holds other folders' too, INBOX or a special-use mailbox,
    /// or another mailbox with the new name, or a mark for `to` already. `local_from`: the
    /// local name of `from`. `uidvalidity`: when another folder has the name `from` now, the
    /// renamed one's; only its links follow (the others are the new folder's).
    pub fn follow_upstream_rename(
        &self,
        account: AccountId,
        from: &str,
        to: &str,
        local_from: &str,
        local_to: &str,
        uidvalidity: Option<u32>,
    ) -> Result<FollowedRename, StoreError> {
        self.write(|tx| {
            let mailboxes: Vec<MailboxId> = {
                let mut stmt = tx.prepare(
                    "SELECT DISTINCT mailbox FROM sync_map WHERE account = ?1 AND folder = ?2",
                )?;
                let rows = stmt.query_map(params![account, from], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let [mailbox] = mailboxes[..] else {
                return Ok(FollowedRename::No);
            };
            // Its mailbox deleted here (the deletion waits to go up): not followed (review:
            // "no such mailbox" ended every pass, and nothing more was synced).
            let source = match find_mailbox_id(tx, mailbox) {
                Err(StoreError::NoMailbox(_)) => return Ok(FollowedRename::No),
                found => found?,
            };
            // Renamed here the same way, the rename waiting to go up (another client made
            // it upstream too, or the answer to ours was lost): done. The changes made here
            // before it then go to the folder under its new name, and its messages are not
            // fetched again (review: a message stored into the folder before the rename here
            // made the old folder again upstream and the rename waited for good; a flag set
            // there was dropped, and the folder's messages came down again as new).
            let same: Option<i64> = if source.name == local_to {
                tx.query_row(
                    "SELECT min(id) FROM journal
                     WHERE account = ?1 AND kind = 'rename-mailbox' AND mailbox = ?2
                       AND detail = ?3",
                    params![account, local_from, local_to],
                    |r| r.get(0),
                )?
            } else {
                None
            };
            // Renamed here to another name (once, or several times in a row), the renames
            // waiting to go up: they and the other client's are of one folder, and the ones
            // here go up after it, from the name upstream has now: the first one's entry takes
            // that name (the fetch leaves the folder out meanwhile), the mailbox here keeps its
            // own (review: the rename waited for good while the folder came down a second time
            // under the other client's name, and the mailbox here was left empty). An inferior
            // of such a folder is taken with its parent's entries, rewritten before it (parents
            // are followed first).
            let carried: Option<(Vec<i64>, bool)> = if same.is_some()
                || find_mailbox(tx, account, local_to)?.is_some()
                || journal_names(tx, account, local_to)?
            {
                None
            } else if let Some(chain) = rename_chain(tx, account, local_from, &source.name)? {
                Some((chain, true))
            } else {
                let mut found = None;
                for (at, _) in local_to.match_indices(super::DELIMITER) {
                    let (parent, rest) = local_to.split_at(at);
                    let Some(there) = source.name.strip_suffix(rest) else {
                        continue;
                    };
                    if let Some(chain) = rename_chain(tx, account, parent, there)? {
                        found = Some((chain, false));
                        break;
                    }
                }
                found
            };
            // A rename or deletion of it, under it or above it waiting here: followed, the
            // user's own change would be undone or go up under names upstream no longer has
            // (review: a waiting rename was undone; a child was followed while its parent,
            // renamed twice here, was not, and the two sides never agreed again). A subfolder
            // made here waits for the follow and is then made under the new name (the
            // write-back holds it back, see writeback).
            let prefix = format!("{}{}", source.name, super::DELIMITER);
            let structure: Vec<i64> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM journal
                     WHERE account = ?1
                       AND kind IN ('rename-mailbox', 'delete-mailbox')
                       AND (mailbox = ?2 OR substr(mailbox, 1, ?3) = ?4
                            OR detail = ?2 OR substr(detail, 1, ?3) = ?4
                            OR substr(?2, 1, length(mailbox) + 1) = mailbox || ?5
                            OR substr(?2, 1, length(detail) + 1) = detail || ?5)",
                )?;
                let rows = stmt.query_map(
                    params![
                        account,
                        source.name,
                        prefix.chars().count() as i64,
                        prefix,
                        super::DELIMITER.to_string()
                    ],
                    |r| r.get(0),
                )?;
                rows.collect::<Result<_, _>>()?
            };
            let taken: Vec<i64> = same
                .into_iter()
                .chain(carried.iter().flat_map(|(chain, _)| chain.iter().copied()))
                .collect();
            if structure.iter().any(|id| !taken.contains(id)) {
                return Ok(FollowedRename::No);
            }
            let others: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sync_map WHERE mailbox = ?1 AND folder != ?2)
                     OR EXISTS (SELECT 1 FROM sync_folders WHERE account = ?3 AND folder = ?4)",
                params![mailbox, from, account, to],
                |r| r.get(0),
            )?;
            if others || source.name == "INBOX" || source.special_use.is_some() {
                return Ok(FollowedRename::No);
            }
            let followed = match find_mailbox(tx, account, local_to)? {
                _ if carried.is_some() => {
                    if let Some((chain, true)) = &carried {
                        tx.execute(
                            "UPDATE journal SET mailbox = ?2 WHERE id = ?1 AND mailbox = ?3",
                            params![chain[0], local_to, local_from],
                        )?;
                    }
                    FollowedRename::Carried
                }
                Some(m) if m.id == source.id => match same {
                    Some(id) => {
                        tx.execute("DELETE FROM journal WHERE id = ?1", [id])?;
                        FollowedRename::AlsoHere
                    }
                    // An inferior of a folder followed before it: renamed with it already.
                    None => FollowedRename::Relinked,
                },
                Some(_) => return Ok(FollowedRename::No),
                None => {
                    if local_to
                        .strip_prefix(source.name.as_str())
                        .is_some_and(|rest| rest.starts_with(super::DELIMITER))
                    {
                        return Ok(FollowedRename::No);
                    }
                    let made = super::create_parents(tx, account, local_to)?;
                    super::mark_placeholders(tx, account, &made)?;
                    super::rename_rows(tx, account, &source, local_to)?;
                    FollowedRename::Renamed(source.name)
                }
            };
            for table in ["sync_folders", "sync_map"] {
                tx.execute(
                    &format!(
                        "UPDATE {table} SET folder = ?3
                         WHERE account = ?1 AND folder = ?2 AND (?4 IS NULL OR uidvalidity = ?4)"
                    ),
                    params![account, from, to, uidvalidity],
                )?;
            }
            Ok(followed)
        })
    }

    /// The links with the highest upstream UIDs of `folder` under `uidvalidity` whose upstream
    /// bytes' SHA-256 is known, at most `limit`, the highest first: (upstream UID, SHA-256).
    /// What a folder taken for `folder` renamed must hold (not a link of another folder of
    /// that name: an upload into one another client made of the name since, say); more than
    /// one, as the newest may have been expunged before the rename.
    pub fn sample_links(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        limit: usize,
    ) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT upstream_uid, upstream_sha256 FROM sync_map
                 WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3
                   AND upstream_sha256 IS NOT NULL
                 ORDER BY upstream_uid DESC LIMIT ?4",
            )?;
            let rows = stmt
                .query_map(params![account, folder, uidvalidity, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// An upstream folder that is gone (deleted or renamed by another client): its messages
    /// are expunged here, as upstream expunges are (one with a move or copy still waiting keeps
    /// its message, without the link: the change then uploads it; a waiting flag change is
    /// dropped with its message), its links and mark
    /// go, and a local mailbox it leaves empty goes too, unless it is INBOX or a special-use
    /// one, has children, or a waiting change names it. Not journaled. Returns how many
    /// messages were expunged.
    pub fn forget_vanished_folder(
        &self,
        account: AccountId,
        folder: &str,
        local: Option<&str>,
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            // (mailbox, uid, mailbox name, whether the message is still here)
            let links: Vec<(MailboxId, u32, String, bool)> = {
                let mut stmt = tx.prepare(
                    "SELECT s.mailbox, s.uid, mb.name,
                            EXISTS (SELECT 1 FROM messages m
                                    WHERE m.mailbox = s.mailbox AND m.uid = s.uid)
                     FROM sync_map s JOIN mailboxes mb ON mb.id = s.mailbox
                     WHERE s.account = ?1 AND s.folder = ?2 ORDER BY s.mailbox, s.uid",
                )?;
                let rows = stmt.query_map(params![account, folder], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut mailboxes = std::collections::BTreeSet::new();
            // The folder's own local mailbox, also when nothing in it is linked (an empty
            // folder another client deleted or renamed stayed here for good: soak review).
            if let Some(mailbox) = local.map(|name| find_mailbox(tx, account, name)).transpose()? {
                mailboxes.extend(mailbox.map(|m| m.id));
            }
            let mut by_mailbox: std::collections::BTreeMap<MailboxId, Vec<u32>> =
                Default::default();
            for (mailbox, uid, name, here) in links {
                mailboxes.insert(mailbox);
                // Only a change that may take the message's bytes up (a move or copy of it)
                // keeps it. A flag change has nothing left to change upstream: it goes with
                // the message, which stayed here for good beside the renamed folder's copy
                // (review).
                if here && !upload_waiting(tx, account, &name, uid)? {
                    let dropped = tx.execute(
                        "DELETE FROM journal
                         WHERE account = ?1 AND mailbox = ?2 AND uid = ?3 AND kind = 'flags'",
                        params![account, name, uid],
                    )?;
                    if dropped > 0 {
                        tracing::warn!(mailbox = %name, uid, folder,
                            "a flag change not written back is dropped: the folder is gone upstream");
                    }
                    by_mailbox.entry(mailbox).or_default().push(uid);
                }
            }
            forget_folder(tx, account, folder)?;
            let expunged = expunge_each(tx, by_mailbox)?;
            let own = local
                .map(|name| find_mailbox(tx, account, name))
                .transpose()?
                .flatten()
                .map(|m| m.id);
            for mailbox in mailboxes {
                let mb = find_mailbox_id(tx, mailbox)?;
                match use_of(tx, account, &mb)? {
                    Use::Unused => remove_unused(tx, mailbox)?,
                    // Kept for its subfolders (Dovecot lists the folder still, refusing
                    // EXAMINE), or for a change that waits (an expunge, a move out): gone
                    // here too once they are, as it is never looked at again (review: it
                    // stayed for good, with its parent).
                    _ if Some(mailbox) == own => super::mark_placeholder(tx, account, mailbox)?,
                    Use::Parent | Use::Kept => {}
                }
            }
            Ok(expunged)
        })
    }

    /// Placeholders (parents made by [`Store::create_synced_mailbox`], by following an
    /// upstream rename or by a rename here, and a folder another client deleted upstream
    /// that stayed here for its subfolders or a waiting change) that are empty, with no mailbox
    /// under them and no waiting change naming them, and that `upstream` (the local names of
    /// the folders the pass synced) does not hold: removed here, as upstream has no folder of
    /// theirs (before: a parent another client made by making a child under it stayed here,
    /// empty, once the child was renamed away). One that `upstream` holds is a folder now: its
    /// mark goes. Not journaled. Returns the names removed.
    pub fn forget_placeholders(
        &self,
        account: AccountId,
        upstream: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.write(|tx| {
            let prefix = format!("{PLACEHOLDER}{account}:");
            let marks: Vec<String> = {
                let mut stmt =
                    tx.prepare("SELECT key FROM store_meta WHERE substr(key, 1, length(?1)) = ?1")?;
                let rows = stmt.query_map([&prefix], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut marked = Vec::new();
            for key in marks {
                let mailbox = key[prefix.len()..]
                    .parse::<MailboxId>()
                    .ok()
                    .map(|id| find_mailbox_id(tx, id))
                    .transpose()
                    .or_else(|e| match e {
                        StoreError::NoMailbox(_) => Ok(None),
                        e => Err(e),
                    })?;
                match mailbox {
                    Some(mb) if !upstream.contains(&mb.name) => marked.push((key, mb)),
                    // Gone (deleted or renamed here and upstream), or a folder upstream now.
                    _ => {
                        tx.execute("DELETE FROM store_meta WHERE key = ?1", [&key])?;
                    }
                }
            }
            // Children first: a placeholder under another leaves that one empty.
            marked.sort_by_key(|(_, mb)| std::cmp::Reverse(mb.name.chars().count()));
            let mut removed = Vec::new();
            for (key, mb) in marked {
                // Subscribed: the user wants it listed (review: a placeholder the user
                // subscribed to went, and LSUB lost it).
                if !mb.subscribed && use_of(tx, account, &mb)? == Use::Unused {
                    remove_unused(tx, mb.id)?;
                    tx.execute("DELETE FROM store_meta WHERE key = ?1", [&key])?;
                    removed.push(mb.name);
                }
            }
            Ok(removed)
        })
    }

    /// Whether `folder` has links under another UIDVALIDITY than `uidvalidity` (a resync is
    /// under way, or done and not yet cleaned up). One read on the primary key.
    pub fn has_stale_links(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT EXISTS (SELECT 1 {STALE})"))?
                    .query_row(params![account, folder, uidvalidity], |r| r.get(0))?,
            )
        })
    }

    /// Once a resync of `folder` (after an upstream UIDVALIDITY change) has read every message
    /// there is under `uidvalidity`: links under an older UIDVALIDITY matched nothing the
    /// server still has, so they go. Kept, they would take a later message with the same
    /// bytes for theirs; a change waiting for one whose local message is gone (expunged or
    /// moved away here) finds no link now and ends (a move uploads its message). With
    /// `expunge`, a local message such a link stood for is expunged here too, as upstream no
    /// longer has it (one with a change still waiting is left to the write-back, link and
    /// all); without, only the links of messages gone here go. The caller asks
    /// [`Store::has_stale_links`] first. Returns how many local messages were expunged.
    pub fn forget_unmatched_links(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        expunge: bool,
    ) -> Result<usize, StoreError> {
        const GONE: &str = "AND NOT EXISTS (SELECT 1 FROM messages m
                               WHERE m.mailbox = sync_map.mailbox AND m.uid = sync_map.uid)";
        let params = params![account, folder, uidvalidity];
        self.write(|tx| {
            tx.execute(&format!("DELETE {STALE} {GONE}"), params)?;
            if !expunge {
                return Ok(0);
            }
            let stale: Vec<(u32, u32, MailboxId, u32, String)> = {
                let mut stmt = tx.prepare(
                    "SELECT s.uidvalidity, s.upstream_uid, s.mailbox, s.uid, mb.name
                     FROM sync_map s JOIN mailboxes mb ON mb.id = s.mailbox
                     WHERE s.account = ?1 AND s.folder = ?2
                       AND (s.uidvalidity < ?3 OR s.uidvalidity > ?3)
                     ORDER BY s.mailbox, s.uid",
                )?;
                let rows = stmt.query_map(params, |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let mut unlink = tx.prepare_cached(
                "DELETE FROM sync_map
                 WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3 AND upstream_uid = ?4",
            )?;
            let mut by_mailbox: std::collections::BTreeMap<MailboxId, Vec<u32>> =
                Default::default();
            for (old_validity, upstream_uid, mailbox, uid, name) in stale {
                if change_waiting(tx, account, &name, uid)? {
                    continue;
                }
                unlink.execute(params![account, folder, old_validity, upstream_uid])?;
                by_mailbox.entry(mailbox).or_default().push(uid);
            }
            expunge_each(tx, by_mailbox)
        })
    }

    /// The upstream message a local message stands for, if any.
    pub fn upstream_of(
        &self,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Option<UpstreamRef>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT folder, uidvalidity, upstream_uid FROM sync_map
                 WHERE mailbox = ?1 AND uid = ?2",
            )?
            .query_row(params![mailbox, uid], |r| {
                Ok(UpstreamRef {
                    folder: r.get(0)?,
                    uidvalidity: r.get(1)?,
                    uid: r.get(2)?,
                })
            })
            .optional()?)
        })
    }

    /// The SHA-256 of the upstream bytes of the message a local one is linked to, when known.
    pub fn upstream_hash(
        &self,
        mailbox: MailboxId,
        uid: u32,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        self.read(|c| {
            let hash: Option<Option<Vec<u8>>> = c
                .prepare_cached(
                    "SELECT upstream_sha256 FROM sync_map WHERE mailbox = ?1 AND uid = ?2",
                )?
                .query_row(params![mailbox, uid], |r| r.get(0))
                .optional()?;
            Ok(hash.flatten().and_then(|h| <[u8; 32]>::try_from(h).ok()))
        })
    }

    /// The deletions and renames made here that wait in the journal, as a pass's fetch sees
    /// them ([`Departures::keeps_out`]). `assume_unseen`: a delete-mailbox entry taken as
    /// waiting for new mail to be fetched ([`UNSEEN_BEFORE_DELETE`]), as the write-back is
    /// about to record it.
    pub fn waiting_departures(
        &self,
        account: AccountId,
        assume_unseen: Option<i64>,
    ) -> Result<Departures, StoreError> {
        let mut departures = Departures::default();
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.id, j.mailbox, j.kind, j.last_error FROM journal j
                 WHERE j.account = ?1 AND j.kind IN ('delete-mailbox', 'rename-mailbox')
                   AND NOT EXISTS (SELECT 1 FROM mailboxes m
                                   WHERE m.account = ?1 AND m.name = j.mailbox)
                 ORDER BY j.id",
            )?;
            let rows = stmt.query_map([account], |r| {
                Ok(Departure {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    kind: r.get(2)?,
                    why: r.get(3)?,
                })
            })?;
            // In journal order, so the latest entry of a name is the one kept; but a deletion
            // that waits for new mail to be fetched is kept while no rename of that name
            // comes after it: a later deletion of the name waits behind it (HELD_BACK), and
            // taken for the name's entry it kept the mail from being fetched, so both waited
            // for good (review).
            for row in rows {
                let mut row = row?;
                if Some(row.id) == assume_unseen {
                    row.why = UNSEEN_BEFORE_DELETE.to_string();
                }
                if departures
                    .latest
                    .get(&row.name)
                    .is_some_and(Departure::fetches)
                    && row.kind == "delete-mailbox"
                {
                    continue;
                }
                departures.latest.insert(row.name.clone(), row);
            }
            Ok::<_, StoreError>(())
        })?;
        departures.renamed_from = self
            .journal_renames(account)?
            .into_iter()
            .map(|(_, from, _)| from)
            .collect();
        Ok(departures)
    }

    /// The link of message `uid` of a mailbox deleted here, linked in upstream `folder`, while
    /// the deletion waits to be written back (its links stay until then): (the deleted
    /// mailbox's id, the link). None when there is none, or more than one (the name deleted
    /// twice).
    pub fn orphan_upstream_of(
        &self,
        account: AccountId,
        folder: &str,
        uid: u32,
    ) -> Result<Option<(MailboxId, UpstreamRef)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.mailbox, s.uidvalidity, s.upstream_uid FROM sync_map s
                 WHERE s.account = ?1 AND s.folder = ?2 AND s.uid = ?3
                   AND NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.id = s.mailbox)
                 LIMIT 2",
            )?;
            let found: Vec<(MailboxId, UpstreamRef)> = stmt
                .query_map(params![account, folder, uid], |r| {
                    Ok((
                        r.get(0)?,
                        UpstreamRef {
                            folder: folder.to_string(),
                            uidvalidity: r.get(1)?,
                            uid: r.get(2)?,
                        },
                    ))
                })?
                .collect::<Result<_, _>>()?;
            Ok(match <[_; 1]>::try_from(found) {
                Ok([one]) => Some(one),
                Err(_) => None,
            })
        })
    }

    /// Whether mailbox `name` (upstream `folder`) was brought back by the sync since journal
    /// entry `after` deleted it. When the entry records which mailbox it deleted (`deleted`),
    /// that is when the folder has links to any other mailbox, here or deleted since: mail the
    /// sync fetched from it after the deletion, which waited for that mail (review: a folder
    /// brought back, emptied by a move, deleted again and made again was taken for one with
    /// no new mail, and deleted upstream before the move of its mail). Else (an entry written
    /// before mailboxes were recorded): it is here again, and either no later entry made it
    /// (CREATE, a RENAME to it, or a CREATE under it, which makes it too), or one did and it
    /// holds mail the sync fetched from the folder.
    pub fn brought_back(
        &self,
        account: AccountId,
        name: &str,
        folder: &str,
        after: i64,
        deleted: Option<MailboxId>,
    ) -> Result<bool, StoreError> {
        self.read(|c| {
            if let Some(deleted) = deleted {
                return Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM sync_map
                       WHERE account = ?1 AND folder = ?2 AND mailbox != ?3)",
                    params![account, folder, deleted],
                    |r| r.get(0),
                )?);
            }
            let Some(mailbox) = find_mailbox(c, account, name)? else {
                return Ok(false);
            };
            let made: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM journal WHERE account = ?1 AND id > ?2
                   AND ((kind = 'create-mailbox' AND mailbox = ?3)
                        OR (kind = 'rename-mailbox' AND detail = ?3)))",
                params![account, after, name],
                |r| r.get(0),
            )?;
            let fetched: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM sync_map
                   WHERE account = ?1 AND folder = ?2 AND mailbox = ?3)",
                params![account, folder, mailbox.id],
                |r| r.get(0),
            )?;
            Ok(!made || fetched)
        })
    }

    /// The links in upstream `folder` of messages whose local mailbox is gone (deleted here,
    /// the deletion not written back): (UIDVALIDITY, upstream UID).
    /// With `only`, the links of that deleted mailbox's messages alone.
    pub fn orphan_links(
        &self,
        account: AccountId,
        folder: &str,
        only: Option<MailboxId>,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT s.uidvalidity, s.upstream_uid FROM sync_map s
                 WHERE s.account = ?1 AND s.folder = ?2 AND (?3 IS NULL OR s.mailbox = ?3)
                   AND NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.id = s.mailbox)",
            )?;
            let rows = stmt.query_map(params![account, folder, only], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Forgets the links [`Store::orphan_links`] gives.
    pub fn forget_orphan_links(
        &self,
        account: AccountId,
        folder: &str,
        only: Option<MailboxId>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM sync_map WHERE account = ?1 AND folder = ?2
                   AND (?3 IS NULL OR mailbox = ?3)
                   AND NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.id = sync_map.mailbox)",
                params![account, folder, only],
            )?;
            Ok(())
        })
    }

    /// Takes flag changes made upstream (RFC 7162 CHANGEDSINCE) into the linked local
    /// messages: upstream's flags replace the local ones, except sealpost's own verdict
    /// keywords, which stay, and keywords the upstream refused ([`Store::keyword_refusals`]:
    /// they stay here only; review, they were wiped at the next pass). A message with a local
    /// change still waiting in the journal keeps its local flags (the write-back will send
    /// them). Not journaled. Returns how many messages changed, and how many were left so.
    pub fn apply_upstream_flags(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        changes: &[(u32, Flags)],
    ) -> Result<(usize, usize), StoreError> {
        let prefix = refused_prefix(account);
        let refused: std::collections::HashSet<String> = self
            .meta_prefixed(&prefix)?
            .into_iter()
            .map(|(key, _)| key[prefix.len()..].to_string())
            .collect();
        let never_upstream = |keyword: &str| refused.contains(&keyword.to_lowercase());
        if changes.is_empty() {
            return Ok((0, 0));
        }
        self.write(|tx| {
            let (mut changed, mut left) = (0, 0);
            let mut by_mailbox: std::collections::BTreeMap<MailboxId, Vec<(u32, Flags)>> =
                Default::default();
            {
                let mut find = tx.prepare_cached(
                    "SELECT mailbox, uid FROM sync_map
                     WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3 AND upstream_uid = ?4",
                )?;
                for (upstream_uid, flags) in changes {
                    let local: Option<(MailboxId, u32)> = find
                        .query_row(params![account, folder, uidvalidity, upstream_uid], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()?;
                    if let Some((mailbox, uid)) = local {
                        by_mailbox
                            .entry(mailbox)
                            .or_default()
                            .push((uid, flags.clone()));
                    }
                }
            }
            for (mailbox, rows) in by_mailbox {
                // A mailbox deleted here keeps its links while its deletion waits to go up:
                // nothing here to change (review: "no such mailbox" ended every pass, and no
                // folder after it was fetched).
                let mb = match find_mailbox_id(tx, mailbox) {
                    Err(StoreError::NoMailbox(_)) => continue,
                    found => found?,
                };
                let modseq = mb.highestmodseq + 1;
                let mut select = tx
                    .prepare_cached("SELECT flags FROM messages WHERE mailbox = ?1 AND uid = ?2")?;
                let mut update = tx.prepare_cached(
                    "UPDATE messages SET flags = ?3, modseq = ?4 WHERE mailbox = ?1 AND uid = ?2",
                )?;
                let mut any = false;
                for (uid, upstream) in rows {
                    let Some(current) = select
                        .query_row(params![mailbox, uid], |r| r.get::<_, String>(0))
                        .optional()?
                    else {
                        continue;
                    };
                    if change_waiting(tx, account, &mb.name, uid)? {
                        left += 1;
                        continue;
                    }
                    let current = Flags::from_column(&current);
                    let mut new = upstream.clone();
                    for keyword in current
                        .iter()
                        .filter(|f| is_local_keyword(f) || never_upstream(f))
                    {
                        new.insert(keyword.to_string());
                    }
                    let mut applied = current.clone();
                    if applied.apply(super::FlagOp::Replace, &new) {
                        update.execute(params![mailbox, uid, new.to_column(), modseq as i64])?;
                        changed += 1;
                        any = true;
                    }
                }
                if any {
                    save_counters(tx, &mb, modseq)?;
                }
            }
            Ok((changed, left))
        })
    }

    /// An account's journal entries after `after` (by id), oldest first.
    pub fn journal_for(
        &self,
        account: AccountId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.id, a.name, j.mailbox, j.uid, j.kind, j.detail, j.attempts, j.last_error
                 FROM journal j JOIN accounts a ON a.id = j.account
                 WHERE j.account = ?1 AND j.id > ?2 ORDER BY j.id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![account, after, limit], journal_entry)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The account's journal entries that may upload a message (append, copy, move) and were
    /// tried at least once: an earlier try may have landed upstream.
    pub fn journal_tried_uploads(
        &self,
        account: AccountId,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT j.id, a.name, j.mailbox, j.uid, j.kind, j.detail, j.attempts, j.last_error
                 FROM journal j JOIN accounts a ON a.id = j.account
                 WHERE j.account = ?1 AND j.attempts > 0
                   AND j.kind IN ('append', 'copy', 'move')
                 ORDER BY j.id",
            )?;
            let rows = stmt.query_map(params![account], journal_entry)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Counts a try of a journal entry before it is sent upstream (so that a retry after a
    /// crash knows an upload may already have landed), or after it failed, with the error.
    pub fn journal_attempt(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE journal SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                params![id, error],
            )?;
            Ok(())
        })
    }

    /// The account's mailbox renames waiting in the journal: (entry id, from, to), oldest
    /// first.
    pub fn journal_renames(
        &self,
        account: AccountId,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        self.read(|c| renames_in(c, account))
    }

    /// Journal entry `id` as the journal has it now (None: done or dropped meanwhile), read in
    /// one snapshot with what it names: the local mailbox of its name and of the name its
    /// detail starts with (a move's target, a copy's source), and the account's waiting
    /// renames and deletions, which are only read again when their mark (the newest one's
    /// id) is not `known`. A client's RENAME or DELETE, in another process, commits the new
    /// name, the journal's rewritten names and its own entry at once: read together, they
    /// agree (review: an entry read before a rename found no mailbox by its old name and was
    /// dropped as deleted here, and the renamed folder never went upstream).
    pub fn journal_entry_now(
        &self,
        account: AccountId,
        id: i64,
        known: i64,
    ) -> Result<Option<EntryNow>, StoreError> {
        self.read(|c| {
            let c = c.unchecked_transaction()?;
            let entry = c
                .query_row(
                    "SELECT j.id, a.name, j.mailbox, j.uid, j.kind, j.detail, j.attempts,
                            j.last_error
                     FROM journal j JOIN accounts a ON a.id = j.account
                     WHERE j.account = ?1 AND j.id = ?2",
                    params![account, id],
                    journal_entry,
                )
                .optional()?;
            let Some(entry) = entry else {
                return Ok(None);
            };
            let mailbox = find_mailbox(&c, account, &entry.mailbox)?.map(|m| m.id);
            let named = match entry.detail.split_once('\t') {
                Some((name, _)) => find_mailbox(&c, account, name)?.map(|m| m.id),
                None => None,
            };
            let mark: i64 = c.query_row(
                "SELECT COALESCE(MAX(id), 0) FROM journal
                 WHERE account = ?1 AND kind IN ('rename-mailbox', 'delete-mailbox')",
                [account],
                |r| r.get(0),
            )?;
            let departures = if mark == known {
                None
            } else {
                Some((renames_in(&c, account)?, deletes_in(&c, account)?))
            };
            Ok(Some(EntryNow {
                entry,
                mailbox,
                named,
                mark,
                departures,
            }))
        })
    }

    /// Whether the account has journal entries made at or after `since` (Unix seconds): local
    /// changes newer than the sync pass that started then.
    pub fn journal_since(&self, account: AccountId, since: i64) -> Result<bool, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM journal WHERE account = ?1 AND at >= ?2)",
                params![account, since],
                |r| r.get(0),
            )?)
        })
    }

    /// How many changes wait in the account's journal, and why: the earliest one's own
    /// reason (not [`HELD_BACK`]) if one has any, else the latest reason.
    pub fn journal_backlog(
        &self,
        account: AccountId,
    ) -> Result<(usize, Option<String>), StoreError> {
        self.read(|c| {
            let count: i64 = c.query_row(
                "SELECT count(*) FROM journal WHERE account = ?1",
                [account],
                |r| r.get(0),
            )?;
            // The first change's own reason, which the ones behind it wait for (review: the
            // latest's, "waits for an earlier change ...", which never said what for); else
            // the latest.
            let error: Option<String> = c
                .query_row(
                    "SELECT last_error FROM journal WHERE account = ?1 AND last_error != ''
                     ORDER BY last_error = ?2, CASE WHEN last_error = ?2 THEN -id ELSE id END
                     LIMIT 1",
                    params![account, HELD_BACK],
                    |r| r.get(0),
                )
                .optional()?;
            Ok((count as usize, error))
        })
    }

    /// Removes a journal entry once it is written back, and in the same transaction records
    /// what that did to the links.
    pub fn writeback_done(
        &self,
        account: AccountId,
        id: i64,
        done: &WrittenBack,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM journal WHERE id = ?1", [id])?;
            // A moved message's bytes upstream are its source's: the link keeps their hash, by
            // which a resync after a UIDVALIDITY change finds it.
            let moved_hash: Option<Vec<u8>> = match done.hash_from.or(done.unlink) {
                Some((mailbox, uid)) => tx
                    .query_row(
                        "SELECT upstream_sha256 FROM sync_map WHERE mailbox = ?1 AND uid = ?2",
                        params![mailbox, uid],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten(),
                None => None,
            };
            if let Some((mailbox, uid)) = done.unlink {
                tx.execute(
                    "DELETE FROM sync_map WHERE mailbox = ?1 AND uid = ?2",
                    params![mailbox, uid],
                )?;
            }
            if let Some((mailbox, uid, to)) = &done.link {
                tx.execute(
                    "DELETE FROM sync_map WHERE mailbox = ?1 AND uid = ?2",
                    params![mailbox, uid],
                )?;
                let hash = done.link_hash.map(|h| h.to_vec()).or(moved_hash);
                tx.execute(
                    "INSERT OR REPLACE INTO sync_map
                     (account, folder, uidvalidity, upstream_uid, mailbox, uid, upstream_sha256)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        account,
                        to.folder,
                        to.uidvalidity,
                        to.uid,
                        mailbox,
                        uid,
                        hash
                    ],
                )?;
            }
            if let Some(folder) = &done.forget_folder {
                forget_folder(tx, account, folder)?;
            }
            if let Some((from, to, delimiter)) = &done.rename_folder {
                let prefix = format!("{from}{delimiter}");
                // A folder of the new name synced already (another client made it, and its
                // mail came down into the folder renamed here, which has that name: the two
                // were merged upstream): the renamed folder's mark replaces its, so the next
                // pass reads it as a folder whose UIDVALIDITY changed and links its messages
                // again by content (review: the UNIQUE constraint failed at every pass, and
                // the account synced nothing more).
                for table in ["sync_map", "sync_folders"] {
                    tx.execute(
                        &format!(
                            "UPDATE OR REPLACE {table} SET folder = ?2 || substr(folder, ?3)
                             WHERE account = ?1
                               AND ((folder = ?4 AND (?7 IS NULL OR uidvalidity = ?7))
                                    OR substr(folder, 1, ?5) = ?6)"
                        ),
                        // SQLite's substr counts characters, not bytes ("Entwürfe/").
                        params![
                            account,
                            to,
                            from.chars().count() as i64 + 1,
                            from,
                            prefix.chars().count() as i64,
                            prefix,
                            done.renamed_uidvalidity
                        ],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Turns the change journal on for an account synced from an upstream IMAP account (its
    /// write-back empties it), or off, forgetting what waits.
    pub fn set_write_back(&self, account: AccountId, on: bool) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE accounts SET write_back = ?2 WHERE id = ?1 AND write_back != ?2",
                params![account, on],
            )?;
            if !on {
                tx.execute("DELETE FROM journal WHERE account = ?1", [account])?;
            }
            Ok(())
        })
    }

    /// How many local messages stand for messages of this upstream folder (under
    /// `uidvalidity`).
    pub fn linked_count(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<usize, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT count(*) FROM sync_map
                 WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3",
            )?
            .query_row(params![account, folder, uidvalidity], |r| {
                r.get::<_, i64>(0)
            })? as usize)
        })
    }

    /// Mirrors expunges made upstream (by another client of the account, or the provider):
    /// each local message linked to an upstream UID of this folder below `below` that is not
    /// in `present` (ascending: every UID the folder still has) is expunged here too, with its
    /// link, in one transaction. Not journaled: the change came from upstream. A message with
    /// a local change still waiting in the journal is left to the write-back. Returns how many
    /// local messages went.
    pub fn apply_upstream_expunges(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        below: u32,
        present: &[u32],
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            let gone: Vec<(u32, MailboxId, u32, String)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT s.upstream_uid, s.mailbox, s.uid, mb.name FROM sync_map s
                     JOIN mailboxes mb ON mb.id = s.mailbox
                     WHERE s.account = ?1 AND s.folder = ?2 AND s.uidvalidity = ?3
                       AND s.upstream_uid < ?4
                     ORDER BY s.mailbox, s.uid",
                )?;
                let rows = stmt.query_map(params![account, folder, uidvalidity, below], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                let mut gone = Vec::new();
                for row in rows {
                    let row: (u32, MailboxId, u32, String) = row?;
                    if present.binary_search(&row.0).is_err() {
                        gone.push(row);
                    }
                }
                gone
            };
            let mut exists = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE mailbox = ?1 AND uid = ?2)",
            )?;
            let mut unlink = tx.prepare_cached(
                "DELETE FROM sync_map
                 WHERE account = ?1 AND folder = ?2 AND uidvalidity = ?3 AND upstream_uid = ?4",
            )?;
            let mut by_mailbox: std::collections::BTreeMap<MailboxId, Vec<u32>> =
                Default::default();
            for (upstream_uid, mailbox, uid, name) in gone {
                if change_waiting(tx, account, &name, uid)? {
                    continue;
                }
                unlink.execute(params![account, folder, uidvalidity, upstream_uid])?;
                if exists.query_row(params![mailbox, uid], |r| r.get::<_, bool>(0))? {
                    by_mailbox.entry(mailbox).or_default().push(uid);
                }
            }
            expunge_each(tx, by_mailbox)
        })
    }

    /// The unique names of the Maildir files already imported from `folder`.
    pub fn file_links(
        &self,
        account: AccountId,
        folder: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT name FROM sync_files WHERE account = ?1 AND folder = ?2")?;
            let rows = stmt.query_map(params![account, folder], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The account's messages that carry `keyword`: (mailbox, UID), in store order. For the
    /// retry of messages that could not be decrypted.
    pub fn with_keyword(
        &self,
        account: AccountId,
        keyword: &str,
    ) -> Result<Vec<(MailboxId, u32)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.mailbox, m.uid, m.flags FROM messages m
                 JOIN mailboxes mb ON mb.id = m.mailbox
                 WHERE mb.account = ?1 AND instr(m.flags, ?2) > 0
                 ORDER BY m.mailbox, m.uid",
            )?;
            let rows = stmt.query_map(params![account, keyword], |r| {
                Ok((
                    r.get::<_, MailboxId>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mailbox, uid, flags) = row?;
                if Flags::from_column(&flags).contains(keyword) {
                    out.push((mailbox, uid));
                }
            }
            Ok(out)
        })
    }

    /// A message's exact bytes, if it is still there.
    pub fn raw_message(&self, mailbox: MailboxId, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT r.raw FROM messages m JOIN content_raw r ON r.id = m.content
                 WHERE m.mailbox = ?1 AND m.uid = ?2",
            )?
            .query_row(params![mailbox, uid], |r| r.get(0))
            .optional()?)
        })
    }

    /// The verdict sealpost gave a message of `account` whose content `raw` is (but for the
    /// verdict field and mbsync's X-TUID: the carried hash): its `Sealpost-Verdict` field as
    /// stored, and its `$Sealpost-` keywords. None when no such message has one.
    pub fn carried_verdict(
        &self,
        account: AccountId,
        raw: &[u8],
    ) -> Result<Option<CarriedVerdict>, StoreError> {
        let carried = super::carried_sha256(raw);
        // Copies stored without one (an APPEND from elsewhere) may come first: the first
        // of a few that has one.
        let found: Vec<(Vec<u8>, String)> = self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.raw, m.flags FROM contents c
                 JOIN messages m ON m.content = c.id
                 JOIN mailboxes b ON b.id = m.mailbox
                 JOIN content_raw r ON r.id = c.id
                 WHERE c.carried_sha256 = ?1 AND b.account = ?2
                 ORDER BY m.mailbox, m.uid LIMIT 16",
            )?;
            let rows = stmt.query_map(params![&carried[..], account], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        for (stored, flags) in found {
            let field = crate::inbound::field_lines(
                crate::inbound::split(&stored).0,
                crate::inbound::VERDICT_FIELD,
            );
            if field.is_empty() {
                continue;
            }
            let keywords = Flags::from_column(&flags)
                .iter()
                .filter(|f| is_local_keyword(f))
                .map(str::to_string)
                .collect();
            return Ok(Some((field, keywords)));
        }
        Ok(None)
    }

    /// The store's own secret for the tokens of its uploads (made at first use, random): a
    /// token another cannot compute, so that a message someone else put upstream with one
    /// is never taken for the user's upload (review: the token was a hash of account,
    /// UIDVALIDITY and UID alone).
    pub fn upload_secret(&self) -> Result<i64, StoreError> {
        if let Some(secret) = self.meta("upload-secret")? {
            return Ok(secret);
        }
        self.write(|tx| {
            // SQLite's random(): 64 bits from its generator, seeded from the system's.
            tx.execute(
                "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('upload-secret', random())",
                [],
            )?;
            Ok(tx.query_row(
                "SELECT value FROM store_meta WHERE key = 'upload-secret'",
                [],
                |r| r.get(0),
            )?)
        })
    }

    /// A number kept under `key` (store_meta), if set.
    pub fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT value FROM store_meta WHERE key = ?1")?
                    .query_row([key], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// Whether any key of the store's meta table starts with `prefix` (an ASCII text): one
    /// seek on the key's index.
    pub fn has_meta_prefixed(&self, prefix: &str) -> Result<bool, StoreError> {
        // Keys from the prefix up to, not including, the prefix followed by the highest byte.
        let mut end = prefix.as_bytes().to_vec();
        end.push(0xFF);
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM store_meta WHERE key >= ?1 AND key < CAST(?2 AS TEXT))",
            )?
            .query_row(params![prefix, end], |r| r.get(0))?)
        })
    }

    /// The keys (store_meta) that begin with `prefix`, with their numbers.
    pub fn meta_prefixed(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|c| {
            // A range of the key's index, as in `has_meta_prefixed` (no UTF-8 key has the
            // byte 0xFF), then the exact test.
            let mut statement = c.prepare_cached(
                "SELECT key, value FROM store_meta WHERE key >= ?1 AND key < CAST(?2 AS TEXT)
                 AND substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let mut end = prefix.as_bytes().to_vec();
            end.push(0xFF);
            let keys = statement
                .query_map(params![prefix, end], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(keys)
        })
    }

    /// Removes these keys (store_meta), in one transaction.
    pub fn delete_meta(&self, keys: &[String]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut statement = tx.prepare_cached("DELETE FROM store_meta WHERE key = ?1")?;
            for key in keys {
                statement.execute([key])?;
            }
            Ok(())
        })
    }

    /// Remembers which keywords the account's upstream refused to store (they stay here only,
    /// also when upstream's flags of their messages come down) and forgets those it took now.
    pub fn keyword_refusals(
        &self,
        account: AccountId,
        refused: &[String],
        taken: &[String],
    ) -> Result<(), StoreError> {
        // Nothing to forget, in the common case, without a write.
        let forget = !taken.is_empty() && self.has_meta_prefixed(&refused_prefix(account))?;
        if refused.is_empty() && !forget {
            return Ok(());
        }
        let key =
            |keyword: &String| format!("{}{}", refused_prefix(account), keyword.to_lowercase());
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO store_meta (key, value) VALUES (?1, 1) ON CONFLICT (key) DO NOTHING",
            )?;
            for keyword in refused {
                insert.execute([key(keyword)])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM store_meta WHERE key = ?1")?;
            for keyword in taken {
                delete.execute([key(keyword)])?;
            }
            Ok(())
        })
    }

    /// Adds one to the number under `key` (store_meta; a missing one counts as 0), in one
    /// statement: two processes that bump it at once both count.
    pub fn bump_meta(&self, key: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO store_meta (key, value) VALUES (?1, 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1",
            )?
            .execute([key])?;
            Ok(())
        })
    }

    /// Keeps `value` under `key` (store_meta).
    pub fn set_meta(&self, key: &str, value: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO store_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
            )?
            .execute(params![key, value])?;
            Ok(())
        })
    }

    /// Replaces a message's content, in one transaction: the new content gets a new UID (IMAP
    /// content never changes under a UID) with the old flags but sealpost's own keywords, which
    /// come from `message`, and the old INTERNALDATE; the old UID is expunged. Its upstream
    /// link, Maildir file link and waiting journal entries follow it to the new UID, and
    /// nothing is journaled: upstream still holds the same message. Returns the new UID, or
    /// None when the message is gone (expunged meanwhile).
    pub fn replace_content(
        &self,
        mailbox: MailboxId,
        uid: u32,
        message: super::Prepared,
    ) -> Result<Option<u32>, StoreError> {
        let summary = crate::imap::summary::summarize(&message.raw);
        let carried = super::carried_sha256(&message.raw);
        self.write(|tx| {
            let mut mb = find_mailbox_id(tx, mailbox)?;
            let old: Option<(String, i64, i64)> = tx
                .prepare_cached(
                    "SELECT flags, internaldate, tz_minutes FROM messages
                     WHERE mailbox = ?1 AND uid = ?2",
                )?
                .query_row(params![mailbox, uid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((old_flags, internaldate, tz_minutes)) = old else {
                return Ok(None);
            };
            let mut flags = Flags::new(
                Flags::from_column(&old_flags)
                    .iter()
                    .filter(|f| !is_local_keyword(f)),
            );
            for f in message.flags.iter() {
                flags.insert(f.to_string());
            }
            let content = match super::content_id(tx, &message.sha256)? {
                Some(id) => id,
                None => super::insert_content(tx, &message, summary, &carried)?,
            };
            let modseq = mb.highestmodseq + 1;
            let new_uid = super::next_uid(&mut mb)?;
            tx.prepare_cached(
                "INSERT INTO messages (mailbox, uid, content, flags, modseq, internaldate,
                 tz_minutes, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                mailbox,
                new_uid,
                content,
                flags.to_column(),
                modseq as i64,
                internaldate,
                tz_minutes,
                message.raw.len() as i64
            ])?;
            save_counters(tx, &mb, modseq)?;
            for table in ["sync_map", "sync_files"] {
                tx.execute(
                    &format!("UPDATE {table} SET uid = ?3 WHERE mailbox = ?1 AND uid = ?2"),
                    params![mailbox, uid, new_uid],
                )?;
            }
            tx.prepare_cached(
                "UPDATE journal SET uid = ?4 WHERE account = ?1 AND mailbox = ?2 AND uid = ?3",
            )?
            .execute(params![mb.account, mb.name, uid, new_uid])?;
            // A move's target and a copy's source name the message in their detail.
            tx.prepare_cached(
                "UPDATE journal SET detail = ?2 || char(9) || ?4
                                             || substr(detail, length(?2 || char(9) || ?3) + 1)
                 WHERE account = ?1 AND kind IN ('copy', 'move')
                   AND (detail = ?2 || char(9) || ?3
                        OR substr(detail, 1, length(?2 || char(9) || ?3) + 1)
                           = ?2 || char(9) || ?3 || char(9))",
            )?
            .execute(params![mb.account, mb.name, uid, new_uid])?;
            expunge_rows(tx, &mb, &[uid])?;
            Ok(Some(new_uid))
        })
    }
}

/// Expunges the given local messages, mailbox by mailbox; returns how many.
fn expunge_each(
    tx: &rusqlite::Connection,
    by_mailbox: std::collections::BTreeMap<MailboxId, Vec<u32>>,
) -> Result<usize, StoreError> {
    let mut expunged = 0;
    for (mailbox, uids) in by_mailbox {
        let mb = find_mailbox_id(tx, mailbox)?;
        expunge_rows(tx, &mb, &uids)?;
        expunged += uids.len();
    }
    Ok(expunged)
}

/// Drops an upstream folder's links and mark.
fn forget_folder(
    tx: &rusqlite::Connection,
    account: AccountId,
    folder: &str,
) -> Result<(), StoreError> {
    for table in ["sync_map", "sync_folders"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE account = ?1 AND folder = ?2"),
            params![account, folder],
        )?;
    }
    Ok(())
}

/// The links of a folder under another UIDVALIDITY than ?3 (with ?1 the account, ?2 the folder).
const STALE: &str = "FROM sync_map
     WHERE account = ?1 AND folder = ?2 AND (uidvalidity < ?3 OR uidvalidity > ?3)";

/// True when a local change of this message still waits in the journal to be written back.
fn change_waiting(
    tx: &rusqlite::Connection,
    account: AccountId,
    mailbox: &str,
    uid: u32,
) -> Result<bool, StoreError> {
    journal_has(tx, account, mailbox, uid, "")
}

/// True when a move or copy of this message still waits in the journal: it may need the
/// message's bytes to upload it.
fn upload_waiting(
    tx: &rusqlite::Connection,
    account: AccountId,
    mailbox: &str,
    uid: u32,
) -> Result<bool, StoreError> {
    journal_has(
        tx,
        account,
        mailbox,
        uid,
        "AND kind IN ('append', 'copy', 'move')",
    )
}

/// The waiting renames, oldest first, that took the local mailbox `from` to the name `to`
/// one after another, to the last (at least one; `to` may be `from`, renamed and back).
fn rename_chain(
    tx: &rusqlite::Connection,
    account: AccountId,
    from: &str,
    to: &str,
) -> Result<Option<Vec<i64>>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, detail FROM journal
         WHERE account = ?1 AND kind = 'rename-mailbox' AND mailbox = ?2 AND id > ?3
         ORDER BY id LIMIT 1",
    )?;
    let (mut name, mut last, mut chain) = (from.to_string(), 0i64, Vec::new());
    while chain.len() < 64 {
        let next: Option<(i64, String)> = stmt
            .query_row(params![account, name, last], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((id, detail)) = next else {
            return Ok((!chain.is_empty() && name == to).then_some(chain));
        };
        chain.push(id);
        (name, last) = (detail, id);
    }
    Ok(None)
}

/// Whether a waiting change names the local mailbox `name` or one under it: as its own,
/// as a rename's new name, or as a move's or copy's other mailbox.
fn journal_names(
    tx: &rusqlite::Connection,
    account: AccountId,
    name: &str,
) -> Result<bool, StoreError> {
    let under = format!("{name}{}", super::DELIMITER);
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM journal
                        WHERE account = ?1
                          AND (mailbox = ?2 OR substr(mailbox, 1, ?4) = ?3
                               OR (kind IN ('rename-mailbox', 'copy', 'move')
                                   AND (detail = ?2 OR substr(detail, 1, ?4) = ?3
                                        OR substr(detail, 1, ?5) = ?2 || char(9)))))",
        params![
            account,
            name,
            under,
            under.chars().count() as i64,
            name.chars().count() as i64 + 1
        ],
        |r| r.get(0),
    )?)
}

/// Whether the journal has an entry for this message (and `condition`, SQL).
fn journal_has(
    tx: &rusqlite::Connection,
    account: AccountId,
    mailbox: &str,
    uid: u32,
    condition: &'static str,
) -> Result<bool, StoreError> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM journal
                        WHERE account = ?1 AND mailbox = ?2 AND uid = ?3 {condition})"
    );
    Ok(tx
        .prepare_cached(&sql)?
        .query_row(params![account, mailbox, uid], |r| r.get(0))?)
}

/// The account's waiting mailbox renames (see [`Store::journal_renames`]).
fn renames_in(
    c: &rusqlite::Connection,
    account: AccountId,
) -> Result<Vec<(i64, String, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, mailbox, detail FROM journal
         WHERE account = ?1 AND kind = 'rename-mailbox' ORDER BY id",
    )?;
    let rows = stmt.query_map([account], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The account's mailbox deletions waiting in the journal: (entry id, name), oldest first.
fn deletes_in(
    c: &rusqlite::Connection,
    account: AccountId,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, mailbox FROM journal
         WHERE account = ?1 AND kind = 'delete-mailbox' ORDER BY id",
    )?;
    let rows = stmt.query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A journal entry from a row of `SELECT j.id, a.name, j.mailbox, j.uid, j.kind, j.detail,
/// j.attempts, j.last_error`.
fn journal_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        id: r.get(0)?,
        account: r.get(1)?,
        mailbox: r.get(2)?,
        uid: r.get(3)?,
        kind: r.get(4)?,
        detail: r.get(5)?,
        attempts: r.get(6)?,
        last_error: r.get(7)?,
    })
}

/// Records a client change for the write-back, when the account has one.
/// The store_meta keys of an account's refused keywords begin with this.
fn refused_prefix(account: AccountId) -> String {
    format!("refused-keyword:{account}:")
}

pub(super) fn journal(
    tx: &rusqlite::Connection,
    account: AccountId,
    mailbox: &str,
    uid: u32,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO journal (account, mailbox, uid, kind, detail, at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6 FROM accounts WHERE id = ?1 AND write_back",
    )?
    .execute(params![account, mailbox, uid, kind, detail, unix_now()])?;
    Ok(())
}
