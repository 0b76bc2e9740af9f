//! Write-back: what the user changed through the local IMAP server — flags and keywords,
//! expunges, moves, messages stored (Sent, Drafts, copies), mailboxes deleted or renamed — is
//! done upstream too, from the store's change journal, oldest first.
//!
//! An entry leaves the journal only in the transaction that records what it did to the links
//! between local and upstream messages ([`Store::writeback_done`]); an entry that fails stays
//! and is tried again at the next sync, after a restart too. Each upstream step can be
//! repeated safely: a flag store, a \Deleted + UID EXPUNGE and a DELETE are idempotent; a MOVE
//! whose COPYUID was lost is found again by content when the target folder is synced; an
//! upload carries a `Sealpost-Upload` token, and a retried upload first looks for it upstream.
//!
//! What goes up is never plaintext: a stored message is encrypted to the account's own key
//! ([`Policy::upload`]); without that key it stays local and the entry waits.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::names::FolderNames;
use super::upstream::{command, quote, Reply, Session};
use super::{blocking, within, SyncError, Syncer};
use crate::rewrite::{Decision, Envelope, Outcome, Policy, Rewriter};
use crate::store::{
    is_local_keyword, AccountId, Fetch, JournalEntry, MailboxId, Need, UpstreamRef, WrittenBack,
    HELD_BACK, UNSEEN_BEFORE_DELETE,
};

/// Journal entries read per round.
const ROUND: u32 = 200;

/// Passes a flag change waits for its message to be linked again after the folder's
/// UIDVALIDITY changed (an expunge or move waits until the resync has linked its message again
/// or dropped the link).
const STALE_LINK_TRIES: u32 = 10;

/// How many messages of the target folder with the original's size a retried move or copy
/// reads, the newest first, looking for the copy an earlier try made.
const COPY_CANDIDATES: usize = 8;

/// Why a change to a message whose link went stale waits.
const STALE_LINK: &str =
    "the folder's UIDVALIDITY changed: waits until the message is linked again";

/// The slowest upload rate allowed for before a command with a literal times out.
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 64 * 1024;

/// The header field that marks an upload, so that a retry finds an earlier copy.
pub const UPLOAD_FIELD: &str = "Sealpost-Upload";

/// The upstream session as the write-back uses it.
struct Upstream<'a> {
    session: &'a mut Session,
    /// Local names and upstream ones.
    names: FolderNames,
    can_move: bool,
    uidplus: bool,
    /// The selected folder and its UIDVALIDITY.
    selected: Option<(String, u32)>,
    /// The mailbox renames waiting in the journal: (entry id, from, to), oldest first.
    renames: Vec<(i64, String, String)>,
    /// The mailbox deletions waiting in the journal: (entry id, name), oldest first.
    deletes: Vec<(i64, String)>,
    /// The id of the newest of those renames and deletions when they were read (-1: to be
    /// read with the first entry).
    departures_mark: i64,
    account: AccountId,
}

/// What a write-back did: changes written, changes still waiting, and whether one of those
/// waits for GnuPG.
#[derive(Default)]
pub(super) struct WrittenBackCounts {
    pub done: usize,
    pub waiting: usize,
    pub gnupg_waits: bool,
}

/// The local mailboxes a journal entry names, looked up with it ([`Store::journal_entry_now`]).
#[derive(Clone, Copy)]
struct Named {
    /// Its own mailbox's.
    mailbox: Option<MailboxId>,
    /// The mailbox its detail names (a move's target, a copy's source).
    in_detail: Option<MailboxId>,
}

/// Why one entry did not finish.
enum Failure {
    /// The connection is gone or timed out: the pass ends, the entry stays.
    Connection(SyncError),
    /// This entry cannot be done now (the server said NO, no key to encrypt to): it stays,
    /// with the reason, and the pass goes on with the next one.
    Entry(String),
    /// As `Entry`, because GnuPG cannot be used now (gpg-agent not reachable, a deadline, a
    /// keyring that cannot be read): `sync --once` then ends with 75, as when a fetch waits
    /// for GnuPG (review: 0, and a timer took the pass for done).
    Gnupg(String),
}

impl From<SyncError> for Failure {
    fn from(e: SyncError) -> Failure {
        match e {
            SyncError::Store(_) | SyncError::Task(_) => Failure::Entry(e.to_string()),
            other => Failure::Connection(other),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Failure {
        Failure::Entry(e.to_string())
    }
}

/// The messages (local mailbox, UID) and mailboxes that an entry waiting in this pass is
/// about: later entries about them wait too.
#[derive(Default)]
struct Held {
    messages: std::collections::HashSet<(String, u32)>,
    mailboxes: Vec<String>,
}

impl Held {
    /// The messages and mailboxes an entry is about: its own, a move's target, a copy's
    /// source, a rename's new name; each by the name it had when the change was made
    /// (`then`: a change's names follow later renames here, while upstream the folder keeps
    /// the name until those go up). A change made to a new folder of the name a waiting
    /// rename took away is about that name upstream, and waits behind it (review: it went
    /// up into the old folder's name first, and the rename then took it along).
    fn subjects(
        entry: &JournalEntry,
        then: &dyn Fn(&str) -> String,
    ) -> (Vec<(String, u32)>, Vec<String>) {
        // (A three-field move detail too: review, it was read as naming nothing, and the
        // flag change after a move that waited was not held back.)
        // A change marked as a deleted folder's (`store::GONE`) is about that folder still:
        // it holds back the folder's deletion, and whatever names the folder's name (review).
        let name = |n: &str| crate::store::unmarked(n).0.to_string();
        // Renames and deletions keep the names they were made with.
        let (own, other) = match entry.kind.as_str() {
            "rename-mailbox" | "delete-mailbox" => (name(&entry.mailbox), None),
            _ => (
                then(&entry.mailbox),
                crate::store::named_message(&entry.detail).map(|(n, uid)| (then(n), uid)),
            ),
        };
        match entry.kind.as_str() {
            "delete-mailbox" | "create-mailbox" => (vec![], vec![own]),
            "rename-mailbox" => (vec![], vec![own, entry.detail.clone()]),
            "move" | "copy" => {
                let mut messages = vec![(own, entry.uid)];
                messages.extend(other);
                (messages, vec![])
            }
            _ => (vec![(own, entry.uid)], vec![]),
        }
    }

    fn hold(&mut self, entry: &JournalEntry, then: &dyn Fn(&str) -> String) {
        let (messages, mailboxes) = Held::subjects(entry, then);
        self.messages.extend(messages);
        self.mailboxes.extend(mailboxes);
    }

    fn blocks(&self, entry: &JournalEntry, then: &dyn Fn(&str) -> String) -> bool {
        let (messages, mailboxes) = Held::subjects(entry, then);
        let under = |name: &str, parent: &str| {
            name.strip_prefix(parent)
                .is_some_and(|rest| rest.starts_with('/'))
        };
        let in_held = |name: &str| {
            self.mailboxes
                .iter()
                .any(|held| name == held || under(name, held))
        };
        messages
            .iter()
            .any(|m| self.messages.contains(m) || in_held(&m.0))
            // A mailbox renamed or deleted after a change to it, to one under it or to one
            // of its parents, or after a change to a message inside it, that waits.
            || mailboxes.iter().any(|m| {
                self.mailboxes
                    .iter()
                    .any(|held| m == held || under(m, held) || under(held, m))
                    || self
                        .messages
                        .iter()
                        .any(|(name, _)| name == m || under(name, m))
            })
    }
}

impl Syncer {
    /// Writes the account's journal back upstream. Returns how many entries were done and
    /// how many wait for a later try.
    pub(super) async fn write_back(
        &self,
        session: &mut Session,
        capabilities: &async_imap::types::Capabilities,
        prefix: &str,
        account: AccountId,
    ) -> Result<WrittenBackCounts, SyncError> {
        let store = self.store.clone();
        let first = blocking(move || store.journal_for(account, 0, ROUND)).await??;
        if first.is_empty() {
            return Ok(WrittenBackCounts::default());
        }
        // The names of this pass (the server's delimiter, namespace prefix, special-use
        // folders): a folder listed now may be gone by the fetch, which lists again.
        let (names, _) = self
            .folder_names(session, capabilities, prefix, account)
            .await?;
        let mut upstream = Upstream {
            can_move: capabilities.has_str("MOVE"),
            uidplus: capabilities.has_str("UIDPLUS"),
            session,
            names,
            selected: None,
            // Read with the first entry, and again whenever a new one came.
            renames: Vec::new(),
            deletes: Vec::new(),
            departures_mark: -1,
            account,
        };
        let (mut done, mut waiting, mut gnupg_waits) = (0, 0, false);
        let mut held = Held::default();
        let mut batch = first;
        while let Some(last) = batch.last().map(|e| e.id) {
            for listed in batch {
                // As it is now: a client may have renamed or deleted its mailbox since the
                // batch was read (see `journal_entry_now`).
                let (store, id, known) = (self.store.clone(), listed.id, upstream.departures_mark);
                let Some(now) =
                    blocking(move || store.journal_entry_now(account, id, known)).await??
                else {
                    continue;
                };
                if let Some((renames, deletes)) = now.departures {
                    (upstream.renames, upstream.deletes) = (renames, deletes);
                    upstream.departures_mark = now.mark;
                }
                let (entry, named) = (
                    now.entry,
                    Named {
                        mailbox: now.mailbox,
                        in_detail: now.named,
                    },
                );
                let then = |name: &str| upstream.local_name_at(name, entry.id);
                if held.blocks(&entry, &then) {
                    // In journal order: done before the earlier change, this one would find
                    // no link (a move that waits) and count as done, or act on a stale one.
                    held.hold(&entry, &then);
                    let store = self.store.clone();
                    blocking(move || store.journal_attempt(entry.id, HELD_BACK)).await??;
                    waiting += 1;
                    continue;
                }
                let why = match self
                    .write_entry(&mut upstream, account, &entry, named)
                    .await
                {
                    Ok(result) => {
                        let counted = !result.given_up;
                        let store = self.store.clone();
                        blocking(move || store.writeback_done(account, entry.id, &result))
                            .await??;
                        done += usize::from(counted);
                        None
                    }
                    Err(Failure::Entry(why)) => Some(why),
                    Err(Failure::Gnupg(why)) => {
                        gnupg_waits = true;
                        Some(why)
                    }
                    Err(Failure::Connection(e)) => {
                        let (store, why) = (self.store.clone(), e.to_string());
                        blocking(move || store.journal_attempt(entry.id, &why)).await??;
                        return Err(e);
                    }
                };
                if let Some(why) = why {
                    // Told once per reason: the same one at every pass (no `address`
                    // for thousands of stored messages, say) is in the pass's count of
                    // changes waiting (review: 13,000 lines a minute under a busy client).
                    if !same_reason(&entry.last_error, &why) {
                        tracing::warn!(account = %self.name, mailbox = %crate::store::unmarked(&entry.mailbox).0,
                                uid = entry.uid, kind = %entry.kind,
                                "not written back upstream yet: {why}");
                    } else {
                        tracing::debug!(account = %self.name, mailbox = %crate::store::unmarked(&entry.mailbox).0,
                                uid = entry.uid, kind = %entry.kind,
                                "still not written back upstream: {why}");
                    }
                    held.hold(&entry, &|name: &str| upstream.local_name_at(name, entry.id));
                    let store = self.store.clone();
                    blocking(move || store.journal_attempt(entry.id, &why)).await??;
                    waiting += 1;
                }
            }
            let store = self.store.clone();
            batch = blocking(move || store.journal_for(account, last, ROUND)).await??;
        }
        if done > 0 {
            tracing::info!(account = %self.name, "{done} local changes written back upstream");
        }
        Ok(WrittenBackCounts {
            done,
            waiting,
            gnupg_waits,
        })
    }

    async fn write_entry(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        entry: &JournalEntry,
        named: Named,
    ) -> Result<WrittenBack, Failure> {
        let mailbox = named.mailbox;
        match entry.kind.as_str() {
            "flags" => {
                let Some(target) = self.linked(mailbox, entry.uid).await? else {
                    // Not upstream (yet): an upload takes the flags the message has then.
                    return Ok(WrittenBack::default());
                };
                if !up.select(self, &target).await? {
                    // The folder's UIDVALIDITY changed: this pass's resync links the message
                    // again (by the bytes the server sends), and the next pass sets its flags
                    // there. One the resync never finds again is given up after a while.
                    if entry.attempts < STALE_LINK_TRIES {
                        return Err(Failure::Entry(STALE_LINK.into()));
                    }
                    tracing::warn!(account = %self.name, mailbox = %crate::store::unmarked(&entry.mailbox).0,
                        uid = entry.uid, "flag change dropped: the message was not found \
                        upstream again after the folder's UIDVALIDITY changed");
                    return Ok(WrittenBack {
                        given_up: true,
                        ..WrittenBack::default()
                    });
                }
                match entry.detail.split_once('\t') {
                    // What this change added and removed, nothing else: a flag another client
                    // changed upstream meanwhile stays as it is there.
                    Some((new, old)) => {
                        let (new, old): (Vec<&str>, Vec<&str>) =
                            (new.split(' ').collect(), old.split(' ').collect());
                        let added = upstream_flags(
                            new.iter()
                                .copied()
                                .filter(|f| !old.iter().any(|o| o.eq_ignore_ascii_case(f))),
                        );
                        let removed = upstream_flags(
                            old.iter()
                                .copied()
                                .filter(|f| !new.iter().any(|n| n.eq_ignore_ascii_case(f))),
                        );
                        let stored = !added.is_empty() || !removed.is_empty();
                        let mut answered = false;
                        for (sign, flags) in [('+', added), ('-', removed)] {
                            answered |= self
                                .store_flags(up, account, &entry.mailbox, target.uid, sign, &flags)
                                .await?;
                        }
                        // A STORE of a UID the folder no longer has is no error (RFC 3501
                        // §6.4.8): another client moved or deleted the message since the last
                        // pass, and the change reaches nothing (review: counted as written
                        // back, and the message came down in the other folder without it).
                        if stored && !answered && !up.has_uid(self, target.uid).await? {
                            tracing::warn!(account = %self.name,
                                mailbox = %crate::store::unmarked(&entry.mailbox).0,
                                uid = entry.uid, "flag change not written back: the message \
                                is no longer in its folder upstream (another client moved or \
                                deleted it); wherever it went, it comes down with the flags it \
                                has there");
                            return Ok(WrittenBack {
                                given_up: true,
                                ..WrittenBack::default()
                            });
                        }
                    }
                    // An entry from before the change kept its flags alone: set them all.
                    None => {
                        let flags = upstream_flags(entry.detail.split(' '));
                        up.run(
                            self,
                            &format!("UID STORE {} FLAGS.SILENT ({flags})", target.uid),
                            None,
                        )
                        .await?;
                    }
                }
                Ok(WrittenBack::default())
            }
            "expunge" => self.expunge_linked(up, mailbox, entry.uid).await,
            "move" => {
                self.write_move(up, account, mailbox, named.in_detail, entry)
                    .await
            }
            "copy" => match mailbox {
                Some(mailbox) => {
                    self.write_copy(up, account, mailbox, named.in_detail, entry)
                        .await
                }
                None => Ok(WrittenBack::default()),
            },
            "append" => match mailbox {
                Some(mailbox) => {
                    self.upload(up, entry, mailbox, entry.uid, &entry.mailbox)
                        .await
                }
                // Its mailbox deleted here: nothing to store. A try that landed before a crash
                // or a lost answer is taken back, or the deletion would find it as new mail
                // upstream, and the folder would come back here holding it (review).
                None => {
                    if let Some(uidvalidity) = crate::store::deleted_uidvalidity(&entry.detail) {
                        let folder = up.wire_name_at(&entry.mailbox, entry.id);
                        let tokens = self.upload_tokens(uidvalidity, entry.uid).await?;
                        self.take_back_upload(up, entry, &folder, &entry.mailbox, &tokens)
                            .await?;
                    }
                    Ok(WrittenBack::default())
                }
            },
            "create-mailbox" => {
                // Deleted here since (its own entry deletes it upstream, if it got there):
                // nothing to make.
                if mailbox.is_none() {
                    return Ok(WrittenBack::default());
                }
                let folder = up.wire_name_at(&entry.mailbox, entry.id);
                if !up.goes_up(self, &folder, &entry.mailbox) {
                    return Ok(WrittenBack::default());
                }
                // Under a folder synced before that is gone upstream (another client renamed
                // or deleted it): made now, it would stand apart from the renamed parent this
                // pass follows here (review: one folder here, two upstream). It waits a pass.
                let delimiter = up.names.delimiter.clone();
                let parent = folder
                    .rsplit_once(delimiter.as_str())
                    .filter(|_| !delimiter.is_empty());
                if let Some((parent, _)) = parent {
                    if up.synced_before(self, parent).await? && !up.exists(self, parent).await? {
                        return Err(gone_upstream(parent));
                    }
                }
                let reply = up
                    .command(self, &format!("CREATE {}", quote(&folder)), None)
                    .await?;
                // There already (made by another client, or by an earlier try whose answer
                // was lost) is as good as made.
                if !reply.ok && !up.exists(self, &folder).await? {
                    return Err(Failure::Entry(format!("CREATE: {}", reply.text)));
                }
                Ok(WrittenBack::default())
            }
            "delete-mailbox" => {
                let folder = up.wire_name(&entry.mailbox);
                // A name upstream would read as another folder was never made there: nothing
                // to delete (DELETE "v1.2" would take v1's child 2 and its mail).
                if !up.goes_up(self, &folder, &entry.mailbox) {
                    return Ok(WrittenBack::default());
                }
                // Brought back here by mail that came upstream after the deletion (see below):
                // the deletion stands for what the folder held then, which goes upstream; the
                // folder, with the mail that came since, stays on both sides (soak review:
                // deleted upstream with that mail, the folder stayed here holding it, and the
                // two sides never agreed again).
                let (store, name, id) = (self.store.clone(), entry.mailbox.clone(), entry.id);
                let f = folder.clone();
                let deleted = crate::store::deleted_mailbox(&entry.detail);
                if blocking(move || store.brought_back(account, &name, &f, id, deleted)).await?? {
                    self.expunge_what_it_held(up, account, &folder, deleted)
                        .await?;
                    tracing::info!(account = %self.name, %folder,
                        "deleted here, then brought back by new mail upstream: what it held \
                         then is expunged there, the folder stays");
                    return Ok(WrittenBack::default());
                }
                up.selected = None;
                // Mail that came upstream after the last pass read the folder was seen by
                // nobody: the folder is not deleted over it. The entry waits; this pass's
                // fetch brings that mail down (into the folder made again here), and the next
                // pass keeps the folder (above).
                let (store, name) = (self.store.clone(), folder.clone());
                let mark = blocking(move || store.sync_folder(account, &name)).await??;
                let examined = up
                    .command(self, &format!("EXAMINE {}", quote(&folder)), None)
                    .await?;
                if examined.ok && examined.exists != Some(0) {
                    let unseen = match (&mark, examined.uidvalidity) {
                        (Some(m), Some(v)) if v == m.uidvalidity => {
                            // "N:*" also names the highest UID when it is below N.
                            let found = up
                                .command(self, &format!("UID SEARCH UID {}:*", m.next_uid), None)
                                .await?;
                            !found.ok || found.search.iter().any(|u| *u >= m.next_uid)
                        }
                        _ => true,
                    };
                    up.selected = None;
                    if unseen {
                        // Unless this pass's fetch leaves the folder out: a later change
                        // here (the name made again and that folder renamed, a parent
                        // renamed) keeps it from coming back, and the deletion would wait
                        // for good, the changes after it with it (review). Then what the
                        // folder held goes now, and the folder stays upstream with the new
                        // mail, which comes down where the later changes take it.
                        let (store, local, id) =
                            (self.store.clone(), entry.mailbox.clone(), entry.id);
                        let kept_out = blocking(move || {
                            let local = crate::store::unmarked(&local).0;
                            Ok::<_, crate::store::StoreError>(
                                match store
                                    .waiting_departures(account, Some(id))?
                                    .keeps_out(local)
                                {
                                    Fetch::Taken => false,
                                    Fetch::Departed => true,
                                    Fetch::UnderRenamedUnlessHere => {
                                        store.mailbox(account, local)?.is_none()
                                    }
                                },
                            )
                        })
                        .await??;
                        if !kept_out {
                            return Err(Failure::Entry(UNSEEN_BEFORE_DELETE.into()));
                        }
                        self.expunge_what_it_held(up, account, &folder, deleted)
                            .await?;
                        tracing::info!(account = %self.name, %folder,
                            "deleted here while new mail came upstream, which a later change \
                             here keeps from being fetched: what it held is expunged there, the \
                             folder stays");
                        return Ok(WrittenBack::default());
                    }
                }
                if examined.ok {
                    // Out of the folder before it goes (CLOSE after EXAMINE expunges nothing).
                    up.command(self, "CLOSE", None).await?;
                }
                let reply = up
                    .command(self, &format!("DELETE {}", quote(&folder)), None)
                    .await?;
                if !reply.ok {
                    // Already gone upstream (an earlier try whose answer was lost, say) is
                    // as good as deleted; a folder still there (it has subfolders, the
                    // server refuses) waits, or the next pass would fetch it all again.
                    // Listed but gone at EXAMINE is gone: Dovecot lists a folder another
                    // client deleted while it has subfolders (review: the deletion waited
                    // for good, every later change with it).
                    if !examined.says_gone() && up.exists(self, &folder).await? {
                        return Err(Failure::Entry(format!("DELETE: {}", reply.text)));
                    }
                    tracing::info!(account = %self.name, %folder,
                        "upstream DELETE: {} (the folder is gone)", reply.text);
                }
                Ok(WrittenBack {
                    forget_folder: Some(folder),
                    ..WrittenBack::default()
                })
            }
            "rename-mailbox" => {
                let (from, to) = (up.wire_name(&entry.mailbox), up.wire_name(&entry.detail));
                if !up.goes_up(self, &from, &entry.mailbox) {
                    return Ok(WrittenBack::default());
                }
                // Renamed to a name upstream would read as another folder: it waits (the
                // folder is not fetched meanwhile, so nothing comes twice).
                if let Some(why) = up.names.unrepresentable(&entry.detail) {
                    return Err(Failure::Entry(format!(
                        "{:?} cannot be named upstream: {why}",
                        entry.detail
                    )));
                }
                // Out of the folder first: Dovecot ends the session at the next command
                // when the selected folder was renamed away (review: after a deletion had
                // expunged from a folder, the APPEND after the rename of it got BYE).
                up.deselect(self, &from).await?;
                // The name another folder's upstream now (another client renamed this one and
                // made a new folder of the name): not that one. The fetch looks for this one
                // under its new name, and the rename then goes up from there (review: the
                // other client's new folder was renamed instead). At the first try only: one
                // the fetch did not find (deleted there, the names swapped, or the mark left
                // by a merge into another client's folder) is renamed as before, which the
                // fetch then takes for a change of UIDVALIDITY (review: it waited for good).
                let (store, folder) = (self.store.clone(), from.clone());
                let mark = match entry.attempts {
                    0 => blocking(move || store.sync_folder(account, &folder)).await??,
                    _ => None,
                };
                if let Some(mark) = mark {
                    let line = format!("STATUS {} (UIDVALIDITY)", quote(&from));
                    let status = up.command(self, &line, None).await?;
                    let other = status
                        .uidvalidity
                        .filter(|v| status.ok && *v != mark.uidvalidity);
                    if let Some(now) = other {
                        // A folder of the new name there: the RENAME is refused, and the
                        // checks after it tell whether that one is this one.
                        if !up.exists(self, &to).await? {
                            return Err(Failure::Entry(format!(
                                "RENAME: {from:?} upstream is another folder now \
                                 (UIDVALIDITY {now}, not {})",
                                mark.uidvalidity
                            )));
                        }
                    }
                }
                let reply = up
                    .command(
                        self,
                        &format!("RENAME {} {}", quote(&from), quote(&to)),
                        None,
                    )
                    .await?;
                // A retry of a RENAME the server did but whose answer was lost gets NO: the
                // folder has its new name already. So does a folder that was never upstream
                // (one `sealpost deliver` made here, never synced): there is nothing to
                // rename, and waiting would hold up every later change in it for good. A
                // folder still there under its old name waits, and so does one that was synced
                // and is gone (another client renamed or deleted it): taken as renamed, its
                // links would name a folder upstream does not have.
                if !reply.ok {
                    if up.exists(self, &from).await? {
                        // Another client made a folder of the new name meanwhile: the two
                        // are one folder here now, and become one upstream.
                        if up.exists(self, &to).await? {
                            return self.merge_into(up, account, &from, &to, &reply.text).await;
                        }
                        return Err(Failure::Entry(format!("RENAME: {}", reply.text)));
                    }
                    if !up.exists(self, &to).await? {
                        let (store, folder) = (self.store.clone(), from.clone());
                        if blocking(move || store.sync_folder(account, &folder))
                            .await??
                            .is_some()
                        {
                            return Err(Failure::Entry(format!("RENAME: {}", reply.text)));
                        }
                        tracing::info!(account = %self.name, %from, %to,
                            "upstream RENAME: {} (the folder was never upstream)", reply.text);
                    }
                }
                Ok(WrittenBack {
                    rename_folder: Some((from, to, up.names.delimiter.clone())),
                    ..WrittenBack::default()
                })
            }
            other => Err(Failure::Entry(format!(
                "unknown journal entry kind {other:?}"
            ))),
        }
    }

    /// Expunges upstream, from `folder`, the messages the mailbox deleted here held (all of a
    /// deleted mailbox's links there when the entry does not say which), and forgets their
    /// links; the folder stays.
    async fn expunge_what_it_held(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        folder: &str,
        deleted: Option<MailboxId>,
    ) -> Result<(), Failure> {
        let (store, f) = (self.store.clone(), folder.to_string());
        let held = blocking(move || store.orphan_links(account, &f, deleted)).await??;
        if !held.is_empty() {
            up.selected = None;
            let selected = up
                .run(self, &format!("SELECT {}", quote(folder)), None)
                .await?;
            up.selected = selected.uidvalidity.map(|v| (folder.to_string(), v));
            for (uidvalidity, uid) in held {
                if selected.uidvalidity == Some(uidvalidity) {
                    up.expunge(self, uid).await?;
                }
            }
        }
        let (store, f) = (self.store.clone(), folder.to_string());
        blocking(move || store.forget_orphan_links(account, &f, deleted)).await??;
        Ok(())
    }

    /// A local rename of `from` to a name another client gave a folder upstream meanwhile
    /// (RENAME got `refused`): `from`'s messages are moved into `to` and `from` is deleted, as
    /// the folders are one here. The links of `from`'s messages then name `to` under `from`'s
    /// UIDVALIDITY, so the next pass reads `to` as a folder whose UIDVALIDITY changed: it
    /// links the moved messages again by content, and fetches the other client's (and mail
    /// that came into `from` since the last pass). Waits as before without MOVE (a COPY
    /// repeated after a crash would leave copies twice), when `from` has subfolders upstream,
    /// and when the two folders have the same UIDVALIDITY (links would then be taken for
    /// `to`'s messages of the same UIDs).
    async fn merge_into(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        from: &str,
        to: &str,
        refused: &str,
    ) -> Result<WrittenBack, Failure> {
        let wait = |why: &str| {
            Err(Failure::Entry(format!(
                "RENAME: {refused} ({to:?} exists upstream too: {why})"
            )))
        };
        // Never synced (made upstream by an upload into it after another client had renamed
        // or deleted it, say): the UIDVALIDITY it has now is the one to compare (review: it
        // waited for good).
        let (store, folder) = (self.store.clone(), from.to_string());
        up.selected = None;
        let mark = blocking(move || store.sync_folder(account, &folder)).await??;
        let now = up
            .run(self, &format!("STATUS {} (UIDVALIDITY)", quote(from)), None)
            .await?
            .uidvalidity;
        let status = up
            .run(self, &format!("STATUS {} (UIDVALIDITY)", quote(to)), None)
            .await?;
        let Some(known) = mark.as_ref().map(|m| m.uidvalidity).or(now) else {
            return wait("the server gave no UIDVALIDITY for the folder");
        };
        if status.uidvalidity == Some(known) {
            // The folder of the new name is this one, renamed upstream already (by another
            // client, or by a RENAME whose answer was lost), and the one of the old name a
            // folder another client made since, which the fetch brings down as a folder of
            // its own: the rename is done. Taken for that only when the old name's folder is
            // not the one synced and the new one holds its newest message, byte for byte
            // (review: the rename waited for good, and the folder's messages came down a
            // second time under the new name).
            let renamed = match &mark {
                Some(mark) if now != Some(known) => {
                    self.is_renamed(up, account, from, to, mark).await?
                }
                _ => false,
            };
            if renamed {
                tracing::info!(account = %self.name, %from, %to,
                    "renamed upstream already, and a new folder made of the old name: the rename is done");
                return Ok(WrittenBack {
                    rename_folder: Some((
                        from.to_string(),
                        to.to_string(),
                        up.names.delimiter.clone(),
                    )),
                    // An upload that went into the new folder stays linked there (review:
                    // moved with the others, its link was stale, and a move out of it left
                    // the message in both folders).
                    renamed_uidvalidity: Some(known),
                    ..WrittenBack::default()
                });
            }
            return wait("both have the same UIDVALIDITY");
        }
        if !up.can_move {
            return wait("the server has no MOVE to merge them with");
        }
        let children = format!("{from}{}*", up.names.delimiter);
        if !up.listed(self, &children).await?.is_empty() {
            return wait("the folder has subfolders upstream");
        }
        // Mail that comes into `from` while it is emptied is moved too; what comes after the
        // last look and before DELETE is the one thing this leaves to chance, as any client's
        // DELETE does.
        for _ in 0..3 {
            let selected = up
                .run(self, &format!("SELECT {}", quote(from)), None)
                .await?;
            if selected.exists.unwrap_or(0) > 0 {
                up.run(self, &format!("UID MOVE 1:* {}", quote(to)), None)
                    .await?;
                continue;
            }
            up.run(self, "CLOSE", None).await?;
            up.run(self, &format!("DELETE {}", quote(from)), None)
                .await?;
            tracing::warn!(account = %self.name, %from, %to,
                "renamed here to a folder another client made upstream meanwhile: merged into it");
            return Ok(WrittenBack {
                rename_folder: Some((from.to_string(), to.to_string(), up.names.delimiter.clone())),
                ..WrittenBack::default()
            });
        }
        wait("mail keeps coming into the folder")
    }

    /// Whether upstream folder `to`, which has the UIDVALIDITY of folder `from`'s `mark`, can
    /// be taken for `from` renamed: it holds the newest message linked to `from` whose bytes
    /// are known and that it still has, byte for byte; or, when nothing of `from` is linked
    /// here (it was empty, or emptied), it holds nothing below the mark's next UID, so no
    /// message of it is passed over when it takes the mark (review: an empty folder's rename
    /// waited for good).
    async fn is_renamed(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        from: &str,
        to: &str,
        mark: &crate::store::SyncFolder,
    ) -> Result<bool, Failure> {
        let v = mark.uidvalidity;
        let (store, f) = (self.store.clone(), from.to_string());
        let (samples, linked) = blocking(move || {
            Ok::<_, crate::store::StoreError>((
                store.sample_links(account, &f, v, super::RENAME_SAMPLES)?,
                store.linked_count(account, &f, v)?,
            ))
        })
        .await??;
        let target = UpstreamRef {
            folder: to.to_string(),
            uidvalidity: v,
            uid: 0,
        };
        match samples.len() {
            1.. => {
                if !up.select(self, &target).await? {
                    return Ok(false);
                }
                // The newest that is still there tells (it may have been expunged before
                // the rename).
                for (uid, hash) in samples {
                    if let Some(found) = up.hash_of(self, uid, super::MAX_SAMPLE_BYTES).await? {
                        return Ok(found[..] == hash[..]);
                    }
                }
                Ok(false)
            }
            // Linked, but no bytes known to compare.
            0 if linked > 0 => Ok(false),
            0 => {
                if !up.select(self, &target).await? {
                    return Ok(false);
                }
                if mark.next_uid <= 1 {
                    return Ok(true);
                }
                let below = up
                    .command(
                        self,
                        &format!("UID SEARCH UID 1:{}", mark.next_uid - 1),
                        None,
                    )
                    .await?;
                Ok(below.ok && below.search.iter().all(|u| *u >= mark.next_uid))
            }
        }
    }

    /// An upload whose local message or mailbox went here before it was done: a try of it
    /// (`entry` was tried) that landed in `folder` before a crash or a lost answer is found by
    /// its `tokens` and expunged there, or it would come down again as new mail (review).
    async fn take_back_upload(
        &self,
        up: &mut Upstream<'_>,
        entry: &JournalEntry,
        folder: &str,
        name: &str,
        tokens: &[String],
    ) -> Result<(), Failure> {
        if entry.attempts == 0 || !up.goes_up(self, folder, name) {
            return Ok(());
        }
        // None when the folder is gone upstream: nothing to take back.
        if let Some((_, earlier)) = up.find_upload(self, folder, tokens).await? {
            up.expunge(self, earlier).await?;
        }
        Ok(())
    }

    /// Expunges upstream the message linked to local (`mailbox`, `uid`), if any.
    async fn expunge_linked(
        &self,
        up: &mut Upstream<'_>,
        mailbox: Option<MailboxId>,
        uid: u32,
    ) -> Result<WrittenBack, Failure> {
        let Some(mailbox) = mailbox else {
            return Ok(WrittenBack::default());
        };
        let Some(target) = self.linked(Some(mailbox), uid).await? else {
            return Ok(WrittenBack::default());
        };
        if !up.select(self, &target).await? {
            // The folder's UIDVALIDITY changed: the resync links the message again (the link
            // is kept until now) and the pass after it expunges it there, or it drops the link
            // once it has read the whole folder without finding the message. Done now, the
            // resync would bring the message back.
            return Err(Failure::Entry(STALE_LINK.into()));
        }
        up.expunge(self, target.uid).await?;
        // Without UIDPLUS the message stays upstream, marked \Deleted: so does its link (to
        // no local message), so that no later fetch takes it for new mail.
        let gone = up.uidplus;
        Ok(WrittenBack {
            unlink: gone.then_some((mailbox, uid)),
            ..WrittenBack::default()
        })
    }

    /// A local MOVE: UID MOVE upstream (or COPY, \Deleted, UID EXPUNGE), and the link follows
    /// the message by COPYUID. A message that was never upstream is uploaded instead.
    async fn write_move(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        source: Option<MailboxId>,
        target: Option<MailboxId>,
        entry: &JournalEntry,
    ) -> Result<WrittenBack, Failure> {
        // "TARGET\tNEWUID", with a third field when the move stands for an expunge and an
        // APPEND of the same message (mbsync's move).
        let by_append = entry.detail.split('\t').nth(2) == Some(crate::store::MOVED_BY_APPEND);
        let Some((target_name, new_uid)) =
            crate::store::named_message(&entry.detail).map(|(n, u)| (n.to_string(), u))
        else {
            return Err(Failure::Entry(format!(
                "damaged move entry {:?}",
                entry.detail
            )));
        };
        let Some(target) = target else {
            // The target folder was deleted here before this pass, and the message with it:
            // the original is expunged upstream, as the message's expunge would be. (A later
            // move out of that folder has no link to follow and uploads its copy.) Dropped,
            // the move left the original upstream for good (review).
            return self.expunge_linked(up, source, entry.uid).await;
        };
        let (source, from) = match source {
            Some(source) => (Some(source), self.linked(Some(source), entry.uid).await?),
            None => match self
                .orphan_link(up, account, &entry.mailbox, entry.uid, entry.id)
                .await?
            {
                Some((source, link)) => (Some(source), Some(link)),
                None => (None, None),
            },
        };
        let to_folder = up.wire_name_at(&target_name, entry.id);
        if by_append && !up.goes_up(self, &to_folder, &target_name) {
            // Stored again in a folder that stays here: the original goes upstream, as the
            // expunge it stands for would have taken it (review: it stayed there for good).
            return self.expunge_linked(up, source, entry.uid).await;
        }
        let Some(from) = from.filter(|_| up.goes_up(self, &to_folder, &target_name)) else {
            return self.upload(up, entry, target, new_uid, &target_name).await;
        };
        // Without MOVE and UIDPLUS the original stays upstream, marked \Deleted: its link
        // stays too (to no local message), so that no later fetch takes it for new mail; the
        // copy's link takes its hash from it.
        let source_ref = source.map(|s| (s, entry.uid));
        let (unlink, hash_from) = if !up.can_move && !up.uidplus {
            (None, source_ref)
        } else {
            (source_ref, None)
        };
        if !up.can_move && entry.attempts > 0 {
            // COPY, then \Deleted and UID EXPUNGE: a try that got as far as the copy leaves it
            // in the target folder. Then only the original's removal is left; a second COPY
            // would leave two. The copy may be linked already (a fetch of the target folder
            // since then matched it by content), or still linked to nothing.
            if self.linked(Some(target), new_uid).await?.is_some() {
                if !up.select(self, &from).await? {
                    return Err(Failure::Entry(STALE_LINK.into()));
                }
                up.expunge(self, from.uid).await?;
                return Ok(WrittenBack {
                    unlink,
                    hash_from,
                    ..WrittenBack::default()
                });
            }
            // Found by its very bytes, not by Message-ID: another message with the same
            // Message-ID (a resend, a forged one) is not the copy, and taking it for the copy
            // would expunge the original with no copy made; a message without a Message-ID
            // would be copied a second time.
            let estimate = self.estimate(target, new_uid).await?;
            if let Some((v, u)) = up
                .find_copy(self, account, &from, &to_folder, estimate)
                .await?
            {
                if !up.select(self, &from).await? {
                    return Err(Failure::Entry(STALE_LINK.into()));
                }
                up.expunge(self, from.uid).await?;
                let link = UpstreamRef {
                    folder: to_folder.clone(),
                    uidvalidity: v,
                    uid: u,
                };
                return Ok(WrittenBack {
                    unlink,
                    hash_from,
                    link: Some((target, new_uid, link)),
                    ..WrittenBack::default()
                });
            }
            tracing::info!(account = %self.name, folder = %to_folder, uid = from.uid,
                "no earlier copy upstream: copying");
        }
        if !up.select(self, &from).await? {
            // The source folder's UIDVALIDITY changed: as for an expunge, the resync links the
            // original again and the next pass moves it. An upload now would leave it in the
            // source folder, to come back there at the resync. One the resync does not find
            // loses its link, and the move then uploads the message.
            return Err(Failure::Entry(STALE_LINK.into()));
        }
        let moved = self
            .copy_then_expunge(
                up, account, &from, &to_folder, target, new_uid, entry, unlink, hash_from,
            )
            .await?;
        if moved.link.is_none() && up.uidplus {
            // Moved by another device into this same folder (the same move made on both
            // sides): the original is there, not fetched yet, and is linked to the local copy
            // rather than uploaded beside it (review: two copies on both sides). So is the
            // one an earlier try of this MOVE moved, its answer lost: linked now, a deletion
            // of the local copy journaled after the move expunges it upstream (it came back
            // here as new mail).
            let hash = match source {
                Some(source) => {
                    let store = self.store.clone();
                    let uid = entry.uid;
                    blocking(move || store.upstream_hash(source, uid)).await??
                }
                None => None,
            };
            let looked_for = hash.is_some();
            if let Some(hash) = hash {
                let estimate = self.estimate(target, new_uid).await?;
                if let Some((v, u)) = up
                    .find_moved_here(self, account, &to_folder, hash, estimate)
                    .await?
                {
                    let link = UpstreamRef {
                        folder: to_folder.clone(),
                        uidvalidity: v,
                        uid: u,
                    };
                    return Ok(WrittenBack {
                        link: Some((target, new_uid, link)),
                        ..moved
                    });
                }
            }
            // A UIDPLUS server moved nothing (RFC 4315 §3: no COPYUID when none of the UIDs
            // exist): another device deleted or moved the original since the last pass. The
            // local copy goes up on its own, as a copy's does; linked to nothing, it stayed
            // here only, for good (review). On a retry too, once the original was looked for
            // in the target folder by its hash and is not there (an earlier try moved nothing
            // there); the upload finds an earlier try's own upload by its token (review: a
            // run killed before the MOVE left the message here only, and one whose upload's
            // answer was lost left it here twice). Without the hash, a retry leaves the copy
            // to the target folder's fetch, which links it by content.
            if entry.attempts > 0 && !looked_for {
                return Ok(moved);
            }
            let uploaded = self
                .upload(up, entry, target, new_uid, &target_name)
                .await?;
            return Ok(WrittenBack {
                unlink: moved.unlink,
                hash_from: moved.hash_from,
                ..uploaded
            });
        }
        Ok(moved)
    }

    /// The move itself, with the source folder selected: `UID MOVE`, or `UID COPY` then the
    /// original's expunge; the copy is linked by COPYUID.
    #[allow(clippy::too_many_arguments)]
    async fn copy_then_expunge(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        from: &UpstreamRef,
        to_folder: &str,
        target: MailboxId,
        new_uid: u32,
        entry: &JournalEntry,
        unlink: Option<(MailboxId, u32)>,
        hash_from: Option<(MailboxId, u32)>,
    ) -> Result<WrittenBack, Failure> {
        let print = self.print_for_copy(up, from, target, new_uid).await?;
        // Counted before it is sent: after a crash from here on, the retry looks first (a
        // COPY's copy by content; a MOVE that moves nothing then is not taken for one another
        // device undid, see `write_move`).
        let (store, id) = (self.store.clone(), entry.id);
        blocking(move || store.journal_attempt(id, "")).await??;
        let verb = if up.can_move { "MOVE" } else { "COPY" };
        let line = format!("UID {verb} {} {}", from.uid, quote(to_folder));
        let reply = up.create_and_run(self, &line, None, to_folder).await?;
        if !up.can_move {
            up.expunge(self, from.uid).await?;
        }
        let mut link = reply.copyuid.and_then(|(uidvalidity, _, to)| {
            to.first().map(|uid| {
                (
                    target,
                    new_uid,
                    UpstreamRef {
                        folder: to_folder.to_string(),
                        uidvalidity,
                        uid: *uid,
                    },
                )
            })
        });
        if let (None, Some(print)) = (&link, print) {
            if let Some((uidvalidity, uid)) = up
                .find_by_fingerprint(self, account, to_folder, print, None)
                .await?
            {
                let folder = to_folder.to_string();
                link = Some((
                    target,
                    new_uid,
                    UpstreamRef {
                        folder,
                        uidvalidity,
                        uid,
                    },
                ));
            }
        }
        Ok(WrittenBack {
            unlink,
            hash_from,
            link,
            ..WrittenBack::default()
        })
    }

    /// `UID STORE uid ±FLAGS (flags)` in the selected folder: whether the server answered
    /// with the message's flags (it has the message; with nothing to store, no). A server
    /// that refuses keywords (not in its PERMANENTFLAGS) gets the system flags alone, and the
    /// keywords stay here only: refused again and again, they would hold up this message's
    /// later changes for good.
    #[allow(clippy::too_many_arguments)]
    async fn store_flags(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        mailbox: &str,
        uid: u32,
        sign: char,
        flags: &str,
    ) -> Result<bool, Failure> {
        if flags.is_empty() {
            return Ok(false);
        }
        let line = |flags: &str| format!("UID STORE {uid} {sign}FLAGS ({flags})");
        let answered = |reply: &Reply| reply.flags.iter().any(|(u, _)| *u == uid);
        let keywords: Vec<String> = flags
            .split(' ')
            .filter(|f| !f.is_empty() && !f.starts_with('\\'))
            .map(str::to_string)
            .collect();
        let reply = up.command(self, &line(flags), None).await?;
        if reply.ok {
            // Taken now: no longer one the server refuses (it may have changed).
            if sign == '+' && !keywords.is_empty() {
                let store = self.store.clone();
                blocking(move || store.keyword_refusals(account, &[], &keywords)).await??;
            }
            return Ok(answered(&reply));
        }
        let system: Vec<&str> = flags.split(' ').filter(|f| f.starts_with('\\')).collect();
        if system.len() == flags.split(' ').count() {
            return Err(Failure::Entry(format!(
                "{:.60}: {}",
                line(flags),
                reply.text
            )));
        }
        // Each keyword on its own, so that those the server takes go up and only those it
        // refuses are remembered as refused (review: one refused keyword had every keyword of
        // its change remembered, and a removal of one of those upstream never came down).
        // Only additions are remembered: a removal refused changes nothing here.
        let (mut refused, mut taken) = (Vec::new(), Vec::new());
        let mut seen = false;
        for keyword in &keywords {
            let reply = up.command(self, &line(keyword), None).await?;
            if reply.ok {
                seen |= answered(&reply);
                taken.push(keyword.clone());
            } else {
                tracing::warn!(account = %self.name, %mailbox, uid,
                    "upstream refused the keyword {keyword}: {}; it stays here only", reply.text);
                refused.push(keyword.clone());
            }
        }
        if sign == '+' {
            let store = self.store.clone();
            blocking(move || store.keyword_refusals(account, &refused, &taken)).await??;
        }
        if system.is_empty() {
            return Ok(seen);
        }
        let reply = up.run(self, &line(&system.join(" ")), None).await?;
        Ok(seen || answered(&reply))
    }

    /// A local COPY of a message that is upstream: `UID COPY` there, so the copy is the
    /// provider's own message (its original ciphertext and signature, no GnuPG work) rather
    /// than a new upload; the link follows by COPYUID. A copy of a message that is not upstream
    /// is uploaded like an APPEND. A retry first looks in the target folder for a copy an
    /// earlier try may have made: a message with the original's bytes that is linked to
    /// nothing ([`Upstream::find_copy`]).
    async fn write_copy(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        target: MailboxId,
        source: Option<MailboxId>,
        entry: &JournalEntry,
    ) -> Result<WrittenBack, Failure> {
        if self.linked(Some(target), entry.uid).await?.is_some() {
            return Ok(WrittenBack::default());
        }
        let mut source_message = None;
        let from = match entry.detail.split_once('\t') {
            Some((name, uid)) => match (source, uid.parse()) {
                (Some(source), Ok(uid)) => {
                    source_message = Some((source, uid));
                    self.linked(Some(source), uid).await?
                }
                (None, Ok(uid)) => {
                    match self.orphan_link(up, account, name, uid, entry.id).await? {
                        Some((source, link)) => {
                            source_message = Some((source, uid));
                            Some(link)
                        }
                        None => None,
                    }
                }
                _ => None,
            },
            None => None,
        };
        let to_folder = up.wire_name_at(&entry.mailbox, entry.id);
        let Some(from) = from.filter(|_| up.goes_up(self, &to_folder, &entry.mailbox)) else {
            return self
                .upload(up, entry, target, entry.uid, &entry.mailbox)
                .await;
        };
        // The copy upstream has the original's bytes: its link takes the original's hash.
        let link = |uidvalidity: u32, uid: u32| WrittenBack {
            link: Some((
                target,
                entry.uid,
                UpstreamRef {
                    folder: to_folder.clone(),
                    uidvalidity,
                    uid,
                },
            )),
            hash_from: source_message,
            ..WrittenBack::default()
        };
        if entry.attempts > 0 {
            // An earlier try's copy has the original's bytes; an earlier try made when the
            // original was not upstream yet uploaded the message, under its token.
            let local = blocking({
                let store = self.store.clone();
                move || store.mailbox_by_id(target)
            })
            .await??;
            let tokens = self.upload_tokens(local.uidvalidity, entry.uid).await?;
            let estimate = self.estimate(target, entry.uid).await?;
            if let Some((v, u)) = up.find_upload(self, &to_folder, &tokens).await? {
                let hash = up.hash_of(self, u, estimate).await?;
                return Ok(WrittenBack {
                    hash_from: None,
                    link_hash: hash,
                    ..link(v, u)
                });
            }
            if let Some((v, u)) = up
                .find_copy(self, account, &from, &to_folder, estimate)
                .await?
            {
                return Ok(link(v, u));
            }
        }
        if !up.select(self, &from).await? {
            // The source folder's UIDVALIDITY changed: as for a move, the copy waits for the
            // resync to link the original again, and is then made of the original's bytes
            // (an upload now would replace the sender's ciphertext and signature with a copy
            // encrypted to the user). One the resync does not find loses its link, and the
            // copy is then uploaded.
            return Err(Failure::Entry(STALE_LINK.into()));
        }
        let print = self.print_for_copy(up, &from, target, entry.uid).await?;
        // Counted before it is sent: after a crash from here on, the retry looks first.
        let (store, id) = (self.store.clone(), entry.id);
        blocking(move || store.journal_attempt(id, "")).await??;
        let line = format!("UID COPY {} {}", from.uid, quote(&to_folder));
        let reply = up.create_and_run(self, &line, None, &to_folder).await?;
        if let Some((v, _, to)) = reply.copyuid {
            if let Some(uid) = to.first() {
                return Ok(link(v, *uid));
            }
        }
        if up.uidplus {
            // A UIDPLUS server copied nothing (RFC 4315 §3: no COPYUID when none of the UIDs
            // exist): the original is gone upstream, so the local copy goes up on its own.
            return self
                .upload(up, entry, target, entry.uid, &entry.mailbox)
                .await;
        }
        if let Some(print) = print {
            if let Some((v, u)) = up
                .find_by_fingerprint(self, account, &to_folder, print, Some(&from))
                .await?
            {
                return Ok(link(v, u));
            }
        }
        // Not found (gone again already): the target folder's next pass fetches the copy and
        // links it to this local message by content, if it is still here.
        Ok(WrittenBack::default())
    }

    /// The bytes of a local message; None when it is gone.
    async fn local_raw(&self, mailbox: MailboxId, uid: u32) -> Result<Option<Vec<u8>>, Failure> {
        let store = self.store.clone();
        let need = Need {
            raw: true,
            ..Need::default()
        };
        let batch = blocking(move || store.fetch_batch(mailbox, &[uid], need, u64::MAX)).await??;
        Ok(batch
            .items
            .into_iter()
            .next()
            .map(|(_, content)| content.raw.to_vec()))
    }

    /// Without UIDPLUS no COPYUID names the copy a COPY or MOVE of `original` (selected) makes:
    /// it is found afterwards by the original's (size, SHA-256), taken here while the
    /// original is there. Unlinked, the copy would be fetched as new mail, and a later change
    /// to the message here (local `target`/`uid`) would not reach it. None with UIDPLUS.
    async fn print_for_copy(
        &self,
        up: &mut Upstream<'_>,
        original: &UpstreamRef,
        target: MailboxId,
        uid: u32,
    ) -> Result<Option<(u64, [u8; 32])>, Failure> {
        if up.uidplus {
            return Ok(None);
        }
        let estimate = self.estimate(target, uid).await?;
        up.fingerprint(self, original.uid, estimate).await
    }

    /// About how many bytes a local message's upstream form takes (its ciphertext is larger
    /// than the plaintext kept here): what a fetch of it is given time for.
    async fn estimate(&self, mailbox: MailboxId, uid: u32) -> Result<u64, Failure> {
        let local = self.local_raw(mailbox, uid).await?;
        Ok(local.map_or(0, |raw| raw.len() as u64) * 2 + 65536)
    }

    /// Stores a local message upstream, encrypted to the account's own key, and links it.
    async fn upload(
        &self,
        up: &mut Upstream<'_>,
        entry: &JournalEntry,
        mailbox: MailboxId,
        uid: u32,
        name: &str,
    ) -> Result<WrittenBack, Failure> {
        if self.linked(Some(mailbox), uid).await?.is_some() {
            return Ok(WrittenBack::default());
        }
        let store = self.store.clone();
        let need = Need {
            raw: true,
            ..Need::default()
        };
        let (batch, local) = blocking(move || {
            let batch = store.fetch_batch(mailbox, &[uid], need, u64::MAX)?;
            Ok::<_, crate::store::StoreError>((batch, store.mailbox_by_id(mailbox)?))
        })
        .await??;
        // The entry's name for the mailbox, as upstream has it now (not yet renamed there).
        let folder = up.wire_name_at(name, entry.id);
        let tokens = self.upload_tokens(local.uidvalidity, uid).await?;
        let token = &tokens[0];
        let Some((row, content)) = batch.items.into_iter().next() else {
            // Expunged (or moved on) here before it went up: nothing to store. A try that
            // landed before a crash or a lost answer is taken back, or it would come down
            // again as new mail, the message the user deleted (review).
            self.take_back_upload(up, entry, &folder, name, &tokens)
                .await?;
            return Ok(WrittenBack::default());
        };
        if !up.goes_up(self, &folder, name) {
            return Ok(WrittenBack::default());
        }
        let found = |uidvalidity: u32, upstream_uid: u32| WrittenBack {
            link: Some((
                mailbox,
                uid,
                UpstreamRef {
                    folder: folder.clone(),
                    uidvalidity,
                    uid: upstream_uid,
                },
            )),
            ..WrittenBack::default()
        };
        // A retry: an earlier try may have landed before the crash or the timeout.
        if entry.attempts > 0 {
            if let Some((v, u)) = up.find_upload(self, &folder, &tokens).await? {
                // Its bytes were made by that try, not kept: read back for the link's hash.
                let bytes = content.raw.len() as u64 * 2;
                let hash = up.hash_of(self, u, bytes).await?;
                return Ok(WrittenBack {
                    link_hash: hash,
                    ..found(v, u)
                });
            }
        }
        let sealed = self.seal(&content.raw, &local.name, uid).await?;
        let mut message = format!("{UPLOAD_FIELD}: {token}\r\n").into_bytes();
        message.extend_from_slice(&sealed);
        let flags = upstream_flags(row.flags.iter());
        let date =
            crate::imap::render::internal_date(row.internaldate.unix, row.internaldate.tz_minutes);
        let line = format!(
            "APPEND {} ({flags}) \"{date}\" {{{}}}",
            quote(&folder),
            message.len()
        );
        // Counted before it is sent: after a crash from here on, the retry looks first.
        let (store, id) = (self.store.clone(), entry.id);
        blocking(move || store.journal_attempt(id, "")).await??;
        let reply = up
            .create_and_run(self, &line, Some(&message), &folder)
            .await?;
        // What the server keeps is the literal as sent: its hash is the link's.
        let hash: [u8; 32] = Sha256::digest(&message).into();
        let sent = |v: u32, u: u32| WrittenBack {
            link_hash: Some(hash),
            ..found(v, u)
        };
        if let Some((v, u)) = reply.appenduid {
            return Ok(sent(v, u));
        }
        match up.find_upload(self, &folder, &tokens[..1]).await? {
            Some((v, u)) => Ok(sent(v, u)),
            None => Err(Failure::Entry(
                "stored upstream, but its UID is not known yet (no APPENDUID)".into(),
            )),
        }
    }

    /// The message as it goes upstream: without the verdict field, encrypted to the
    /// account's own key. Mail that is already encrypted goes as it is.
    async fn seal(&self, raw: &[u8], mailbox: &str, uid: u32) -> Result<Vec<u8>, Failure> {
        let Some(own) = self.config.own_address() else {
            return Err(Failure::Entry(
                "[accounts.upstream] address is not set (the username is not an address): \
                 nothing is stored upstream in clear"
                    .into(),
            ));
        };
        let rewriter = Rewriter::new(self.keys.clone(), Policy::upload(&self.policy));
        let envelope = Envelope {
            id: format!("upload {mailbox}/{uid}"),
            sender: own.to_string(),
            recipients: vec![own.to_string()],
        };
        let message = crate::inbound::without_verdict(raw);
        let whole_ciphertext = crate::inbound::is_whole_ciphertext(&message);
        let outcome = rewriter
            .rewrite(&envelope, message)
            .await
            .map_err(|e| Failure::Entry(format!("cannot encrypt for upload: {e}")))?;
        let copy = match outcome {
            Outcome::Copies(mut copies) if copies.len() == 1 => copies.remove(0),
            Outcome::Copies(_) => {
                return Err(Failure::Entry("the core made no single copy".into()));
            }
            Outcome::Refused(reply) => {
                return Err(Failure::Entry(format!("not encrypted: {reply:?}")));
            }
        };
        match (copy.decision, copy.message) {
            (Decision::Encrypted { .. }, Some(bytes)) => Ok(bytes),
            (Decision::PassThrough, Some(bytes)) if whole_ciphertext => Ok(bytes),
            (Decision::PassThrough, _) => Err(Failure::Entry(
                "not stored upstream: an armored block comes first but other parts are in \
                 clear; the message stays local"
                    .into(),
            )),
            (decision, _) => {
                let why = format!(
                    "not stored upstream in clear: no usable key for {own} ({})",
                    decision.detail()
                );
                Err(match decision {
                    Decision::Deferred { .. } => Failure::Gnupg(why),
                    _ => Failure::Entry(why),
                })
            }
        }
    }

    async fn linked(
        &self,
        mailbox: Option<MailboxId>,
        uid: u32,
    ) -> Result<Option<UpstreamRef>, Failure> {
        let Some(mailbox) = mailbox else {
            return Ok(None);
        };
        let store = self.store.clone();
        Ok(blocking(move || store.upstream_of(mailbox, uid)).await??)
    }

    /// The link of message `uid` of local mailbox `name` that was deleted here after the
    /// change (entry `entry`) was made: the deletion, written back after it, has not yet
    /// dropped its links. So a move or copy out of a folder deleted before the pass is still
    /// a UID MOVE or COPY of the original, not an upload of it. (The deleted mailbox's id, the
    /// link.)
    async fn orphan_link(
        &self,
        up: &mut Upstream<'_>,
        account: AccountId,
        name: &str,
        uid: u32,
        entry: i64,
    ) -> Result<Option<(MailboxId, UpstreamRef)>, Failure> {
        let (store, folder) = (self.store.clone(), up.wire_name_at(name, entry));
        let found = blocking(move || store.orphan_upstream_of(account, &folder, uid)).await??;
        let Some((mailbox, link)) = found else {
            return Ok(None);
        };
        // Of use only while its folder is upstream under the same UIDVALIDITY: a folder
        // another client deleted has nothing to move, and no resync links the messages of a
        // mailbox deleted here again. The message is then uploaded.
        if !up.exists(self, &link.folder).await? || !up.select(self, &link).await? {
            return Ok(None);
        }
        Ok(Some((mailbox, link)))
    }

    /// Whether an upstream folder is one the account syncs (`folders`, when set, limits it):
    /// folders left out are never touched.
    fn synced(&self, folder: &str) -> bool {
        self.config.syncs(folder)
    }
}

impl Upstream<'_> {
    /// The upstream wire name of a local mailbox (modified UTF-7, the server's delimiter).
    /// The wire name upstream has now for the local mailbox an entry calls `local`. Journal
    /// entries follow a local rename (their names are rewritten to the new one), while
    /// upstream the rename happens only when its own, later entry is written back: until then
    /// the folder has its old name there, so every rename after this entry is undone, the
    /// latest first.
    fn wire_name_at(&self, local: &str, entry: i64) -> String {
        self.wire_name(&self.local_name_at(local, entry))
    }

    /// The local name the mailbox an entry calls `local` had when the entry was made (see
    /// [`Upstream::wire_name_at`]).
    fn local_name_at(&self, local: &str, entry: i64) -> String {
        // A mailbox deleted here before another was renamed to its name: the deleted one's
        // folder, which no rename undone is about (see `store::GONE`).
        // Only the renames before its deletion are that folder's.
        let (local, gone) = crate::store::unmarked(local);
        let until = match gone {
            true => self
                .deletes
                .iter()
                .find(|(id, name)| *id > entry && name == local)
                .map_or(i64::MAX, |(id, _)| *id),
            false => i64::MAX,
        };
        let mut name = local.to_string();
        for (_, from, to) in self
            .renames
            .iter()
            .rev()
            .filter(|(id, _, _)| *id > entry && *id < until)
        {
            if name == *to {
                name = from.clone();
            } else if let Some(rest) = name
                .strip_prefix(to.as_str())
                .filter(|r| r.starts_with('/'))
            {
                name = format!("{from}{rest}");
            }
        }
        name
    }

    /// Whether changes to the local mailbox `local`, upstream `folder`, are written back:
    /// the account syncs the folder and the mailbox has a name upstream of its own.
    fn goes_up(&self, syncer: &Syncer, folder: &str, local: &str) -> bool {
        syncer.synced(folder) && self.representable(syncer, local)
    }

    /// Whether the local mailbox `local` has a name upstream of its own
    /// ([`FolderNames::unrepresentable`]). One that has none stays here, with a warning: its
    /// changes are not written back.
    fn representable(&self, syncer: &Syncer, local: &str) -> bool {
        let why = self.names.unrepresentable(local);
        if let Some(why) = &why {
            tracing::warn!(account = %syncer.name, mailbox = %local,
                "the mailbox has no name upstream ({why}): it stays here, not written back");
        }
        why.is_none()
    }

    fn wire_name(&self, local: &str) -> String {
        self.names.wire(local)
    }

    async fn command(
        &mut self,
        syncer: &Syncer,
        line: &str,
        literal: Option<&[u8]>,
    ) -> Result<Reply, Failure> {
        // The timeout is for the server's answer; a literal also needs its time on the wire
        // (a 30 MB Sent message must not time out on every try, for good).
        let sending = literal.map_or(0, |l| l.len() as u64 / MIN_UPLOAD_BYTES_PER_SEC);
        Ok(within(
            syncer.config.timeout() + std::time::Duration::from_secs(sending),
            command(self.session, line, literal),
        )
        .await?)
    }

    /// A command that must succeed.
    async fn run(
        &mut self,
        syncer: &Syncer,
        line: &str,
        literal: Option<&[u8]>,
    ) -> Result<Reply, Failure> {
        let reply = self.command(syncer, line, literal).await?;
        if !reply.ok {
            return Err(Failure::Entry(format!("{line:.60}: {}", reply.text)));
        }
        Ok(reply)
    }

    /// Whether the selected folder has the message `uid` (a UID FETCH answers it).
    async fn has_uid(&mut self, syncer: &Syncer, uid: u32) -> Result<bool, Failure> {
        let reply = self
            .run(syncer, &format!("UID FETCH {uid} (UID FLAGS)"), None)
            .await?;
        Ok(reply.flags.iter().any(|(u, _)| *u == uid))
    }

    /// Whether the upstream folder `folder` was synced before (it has a mark): one missing
    /// upstream now was renamed or deleted by another client ([`gone_upstream`]).
    async fn synced_before(&self, syncer: &Syncer, folder: &str) -> Result<bool, Failure> {
        let (store, account, f) = (syncer.store.clone(), self.account, folder.to_string());
        Ok(blocking(move || store.sync_folder(account, &f))
            .await??
            .is_some())
    }

    /// A command into `folder`, creating the folder first when the server says TRYCREATE.
    async fn create_and_run(
        &mut self,
        syncer: &Syncer,
        line: &str,
        literal: Option<&[u8]>,
        folder: &str,
    ) -> Result<Reply, Failure> {
        let reply = self.command(syncer, line, literal).await?;
        if reply.ok {
            return Ok(reply);
        }
        if !reply.trycreate {
            return Err(Failure::Entry(format!("{line:.60}: {}", reply.text)));
        }
        // A folder synced before is gone upstream: another client renamed or deleted it. Made
        // again now, it would stand beside the renamed one, which this pass follows here
        // (review: the flag change waiting for it was dropped after ten passes, and its
        // messages were here twice). The change waits; after the pass the mailbox has the new
        // name, or the folder is forgotten and made again at the next one.
        if self.synced_before(syncer, folder).await? {
            return Err(gone_upstream(folder));
        }
        self.run(syncer, &format!("CREATE {}", quote(folder)), None)
            .await?;
        self.run(syncer, line, literal).await
    }

    /// Whether the upstream folder of this (wire) name exists.
    async fn exists(&mut self, syncer: &Syncer, folder: &str) -> Result<bool, Failure> {
        Ok(self
            .listed(syncer, folder)
            .await?
            .iter()
            .any(|n| n == folder))
    }

    /// The (wire) names of the upstream folders LIST "" `pattern` gives.
    async fn listed(&mut self, syncer: &Syncer, pattern: &str) -> Result<Vec<String>, Failure> {
        use futures::TryStreamExt;
        let session = &mut *self.session;
        // async-imap sends the pattern as it is given.
        let pattern = quote(pattern);
        let names: Vec<_> = within(syncer.config.timeout(), async {
            session
                .list(Some(""), Some(&pattern))
                .await?
                .try_collect()
                .await
        })
        .await?;
        Ok(names
            .iter()
            .map(|n| super::upstream::unquoted(n.name()))
            .collect())
    }

    /// Selects the upstream folder of `target`; false when its UIDVALIDITY is no longer the
    /// one the link was made under (the link is stale; the resync re-links by content).
    async fn select(&mut self, syncer: &Syncer, target: &UpstreamRef) -> Result<bool, Failure> {
        let uidvalidity = match &self.selected {
            Some((folder, v)) if *folder == target.folder => *v,
            _ => {
                self.selected = None;
                let reply = self
                    .run(syncer, &format!("SELECT {}", quote(&target.folder)), None)
                    .await?;
                let v = reply.uidvalidity.ok_or_else(|| {
                    Failure::Entry(format!("{}: the server sent no UIDVALIDITY", target.folder))
                })?;
                self.selected = Some((target.folder.clone(), v));
                v
            }
        };
        Ok(uidvalidity == target.uidvalidity)
    }

    /// Leaves the selected state: EXAMINE `folder` (read-only, so the CLOSE after it
    /// expunges nothing), then CLOSE; an EXAMINE that fails leaves no folder selected either
    /// (RFC 3501 §6.3.1).
    async fn deselect(&mut self, syncer: &Syncer, folder: &str) -> Result<(), Failure> {
        self.selected = None;
        let examined = self
            .command(syncer, &format!("EXAMINE {}", quote(folder)), None)
            .await?;
        if examined.ok {
            self.command(syncer, "CLOSE", None).await?;
        }
        Ok(())
    }

    /// Removes one message from the selected folder: \Deleted, then UID EXPUNGE (RFC 4315).
    /// Without UIDPLUS the flag stays: a plain EXPUNGE would remove every message marked
    /// \Deleted, also those another client marked.
    async fn expunge(&mut self, syncer: &Syncer, uid: u32) -> Result<(), Failure> {
        self.run(
            syncer,
            &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"),
            None,
        )
        .await?;
        if self.uidplus {
            self.run(syncer, &format!("UID EXPUNGE {uid}"), None)
                .await?;
        } else {
            tracing::warn!(account = %syncer.name,
                "upstream has no UIDPLUS: message {uid} is marked \\Deleted there, not expunged");
        }
        Ok(())
    }

    /// The SHA-256 of a message of the selected folder as the server sends it (what a resync
    /// after a UIDVALIDITY change matches a link by), about `bytes` long; None when the server
    /// does not send it.
    async fn hash_of(
        &mut self,
        syncer: &Syncer,
        uid: u32,
        bytes: u64,
    ) -> Result<Option<[u8; 32]>, Failure> {
        Ok(self
            .fingerprint(syncer, uid, bytes)
            .await?
            .map(|(_, hash)| hash))
    }

    /// (size, SHA-256) of a message of the selected folder as the server sends it.
    async fn fingerprint(
        &mut self,
        syncer: &Syncer,
        uid: u32,
        bytes: u64,
    ) -> Result<Option<(u64, [u8; 32])>, Failure> {
        // `bytes`: an estimate from the local message.
        let timeout = syncer.config.timeout();
        let raw = super::fetch_one(self.session, &syncer.name, uid, bytes, timeout)
            .await
            .map_err(Failure::Connection)?;
        Ok(raw.map(|raw| (raw.len() as u64, Sha256::digest(&raw).into())))
    }

    /// A message of `folder` not fetched yet (at or past the folder's next UID to fetch) and
    /// linked to nothing, whose bytes have this SHA-256: the original of a move that found it
    /// gone, moved here by another device. (UIDVALIDITY, UID); None when there is none, among
    /// the first 20 such messages.
    async fn find_moved_here(
        &mut self,
        syncer: &Syncer,
        account: AccountId,
        folder: &str,
        hash: [u8; 32],
        estimate: u64,
    ) -> Result<Option<(u32, u32)>, Failure> {
        let (store, f) = (syncer.store.clone(), folder.to_string());
        let known = blocking(move || store.sync_folder(account, &f)).await??;
        let from = known.as_ref().map_or(1, |k| k.next_uid.max(1));
        let Some((v, found)) = self
            .search(syncer, folder, &format!("UID {from}:*"))
            .await?
        else {
            return Ok(None);
        };
        // Another UIDVALIDITY: every message is past the mark.
        let from = if known.is_some_and(|k| k.uidvalidity == v) {
            from
        } else {
            1
        };
        let (store, f) = (syncer.store.clone(), folder.to_string());
        let linked = blocking(move || store.linked_upstream(account, &f, v, 1)).await??;
        let candidates: Vec<u32> = found
            .into_iter()
            .filter(|uid| *uid >= from && linked.binary_search(uid).is_err())
            .take(20)
            .collect();
        for uid in candidates {
            if let Some((_, print)) = self.fingerprint(syncer, uid, estimate).await? {
                if print == hash {
                    return Ok(Some((v, uid)));
                }
            }
        }
        Ok(None)
    }

    /// An earlier try's copy of `original` in `folder`: the newest message there with the
    /// original's size and SHA-256 that no local message stands for; (UIDVALIDITY, UID).
    /// Found by content, as a COPY keeps the bytes: a message with the same Message-ID and
    /// other bytes is not the copy, and a message without a Message-ID is found too. None
    /// when there is no such message, or the original is gone upstream; a stale link when
    /// the original's folder has another UIDVALIDITY now.
    async fn find_copy(
        &mut self,
        syncer: &Syncer,
        account: AccountId,
        original: &UpstreamRef,
        folder: &str,
        estimate: u64,
    ) -> Result<Option<(u32, u32)>, Failure> {
        if !self.select(syncer, original).await? {
            return Err(Failure::Entry(STALE_LINK.into()));
        }
        let Some(print) = self.fingerprint(syncer, original.uid, estimate).await? else {
            return Ok(None);
        };
        self.find_by_fingerprint(syncer, account, folder, print, Some(original))
            .await
    }

    /// The newest message of `folder` with this (size, SHA-256) that no local message stands
    /// for (and that is not `not`): (UIDVALIDITY, UID). The copy a COPY or MOVE made, where the
    /// server says nothing of it (no UIDPLUS).
    async fn find_by_fingerprint(
        &mut self,
        syncer: &Syncer,
        account: AccountId,
        folder: &str,
        (size, hash): (u64, [u8; 32]),
        not: Option<&UpstreamRef>,
    ) -> Result<Option<(u32, u32)>, Failure> {
        // RFC 3501 §6.4.4: LARGER and SMALLER are strict, so these two give the size itself.
        let criteria = format!("LARGER {} SMALLER {}", size.saturating_sub(1), size + 1);
        let Some((v, found)) = self.search(syncer, folder, &criteria).await? else {
            return Ok(None);
        };
        let (store, f) = (syncer.store.clone(), folder.to_string());
        let linked = blocking(move || store.linked_upstream(account, &f, v, 1)).await??;
        let mut candidates: Vec<u32> = found
            .into_iter()
            .filter(|uid| linked.binary_search(uid).is_err())
            .filter(|uid| not.is_none_or(|n| !(folder == n.folder && *uid == n.uid)))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for uid in candidates.into_iter().take(COPY_CANDIDATES) {
            if self.fingerprint(syncer, uid, size).await? == Some((size, hash)) {
                return Ok(Some((v, uid)));
            }
        }
        Ok(None)
    }

    /// An earlier upload by its token: (UIDVALIDITY, UID).
    async fn find_upload(
        &mut self,
        syncer: &Syncer,
        folder: &str,
        tokens: &[String],
    ) -> Result<Option<(u32, u32)>, Failure> {
        for token in tokens {
            let found = self
                .search_header(syncer, folder, UPLOAD_FIELD, token)
                .await?
                .and_then(|(v, found)| found.iter().max().map(|uid| (v, *uid)));
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// (UIDVALIDITY, UIDs) of the messages of `folder` whose `field` contains `value`; None when
    /// the folder cannot be selected.
    async fn search_header(
        &mut self,
        syncer: &Syncer,
        folder: &str,
        field: &str,
        value: &str,
    ) -> Result<Option<(u32, Vec<u32>)>, Failure> {
        self.search(syncer, folder, &format!("HEADER {field} {}", quote(value)))
            .await
    }

    /// (UIDVALIDITY, UIDs) of the messages of `folder` that `UID SEARCH criteria` finds; None
    /// when the folder cannot be selected. The folder stays selected.
    async fn search(
        &mut self,
        syncer: &Syncer,
        folder: &str,
        criteria: &str,
    ) -> Result<Option<(u32, Vec<u32>)>, Failure> {
        self.selected = None;
        let selected = self
            .command(syncer, &format!("SELECT {}", quote(folder)), None)
            .await?;
        let Some(v) = selected.uidvalidity.filter(|_| selected.ok) else {
            return Ok(None);
        };
        self.selected = Some((folder.to_string(), v));
        let found = self
            .run(syncer, &format!("UID SEARCH {criteria}"), None)
            .await?;
        Ok(Some((v, found.search)))
    }
}

/// A change into (or under) `folder`, synced before and gone upstream: another client renamed
/// or deleted it. Made again now, it would stand apart from the renamed folder this pass
/// follows here; the change waits a pass.
fn gone_upstream(folder: &str) -> Failure {
    Failure::Entry(format!(
        "{folder}: the folder is gone upstream (another client renamed or deleted it); waits \
         until this pass has followed that"
    ))
}

/// The flag list as it goes upstream: sealpost's own verdict keywords stay local.
fn upstream_flags<'a>(flags: impl Iterator<Item = &'a str>) -> String {
    flags
        .filter(|f| !f.is_empty() && !is_local_keyword(f))
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The upload token a message carries in its header (put there by [`Syncer::upload`]).
pub(super) fn carried_token(raw: &[u8]) -> Option<&str> {
    let field = UPLOAD_FIELD.as_bytes();
    raw.split(|b| *b == b'\n')
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .find_map(|line| {
            let (name, value) = line.split_at_checked(field.len() + 1)?;
            (name[..field.len()].eq_ignore_ascii_case(field) && name[field.len()] == b':')
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
                .map(str::trim)
        })
}

impl Syncer {
    /// The uploads of journal entries still waiting that an earlier try may have landed
    /// upstream: token → (entry, local mailbox, local UID). A fetch that meets one links it to
    /// its local message and ends the entry, instead of taking it for new mail (a write-back
    /// stopped by a broken connection after the APPEND, say).
    pub(super) async fn landed_uploads(
        &self,
        account: AccountId,
    ) -> Result<HashMap<String, (i64, MailboxId, u32)>, SyncError> {
        let store = self.store.clone();
        let name = self.name.clone();
        blocking(move || {
            let mut out = HashMap::new();
            let secret = store.upload_secret()?;
            for entry in store.journal_tried_uploads(account)? {
                let (mailbox, uid) = match entry.kind.as_str() {
                    "move" => match crate::store::named_message(&entry.detail) {
                        Some((target, uid)) => (target.to_string(), uid),
                        None => continue,
                    },
                    _ => (entry.mailbox.clone(), entry.uid),
                };
                if let Some(local) = store.mailbox(account, &mailbox)? {
                    for token in upload_tokens(secret, &name, local.uidvalidity, uid) {
                        out.insert(token, (entry.id, local.id, uid));
                    }
                }
            }
            Ok::<_, crate::store::StoreError>(out)
        })
        .await?
        .map_err(SyncError::from)
    }
}

/// Whether two reasons an entry waited for are one: alike but for their digits, which a
/// server's reply text changes at every try (Dovecot's "(0.001 + 0.000 secs)", a timestamp;
/// review: the warning came at every pass again).
fn same_reason(a: &str, b: &str) -> bool {
    let words = |s: &str| {
        s.chars()
            .filter(|c| !c.is_ascii_digit())
            .collect::<String>()
    };
    words(a) == words(b)
}

/// The tokens naming one local message (account, UIDVALIDITY, UID) in its upload, without
/// telling any of them: the one an upload carries now, keyed with the store's secret
/// ([`crate::store::Store::upload_secret`]) so that nobody else can make it (review: a
/// message sent with the token of a waiting upload would have been linked in its place),
/// then the one earlier versions wrote, which a retry of an upload they tried must still
/// find. No mailbox name: a UIDVALIDITY is never given to two mailboxes, and a rename keeps
/// it, so a retry after a rename still finds an earlier copy.
fn upload_tokens(secret: i64, account: &str, uidvalidity: u32, uid: u32) -> [String; 2] {
    let hex =
        |digest: &[u8]| -> String { digest[..16].iter().map(|b| format!("{b:02x}")).collect() };
    let keyed = Sha256::digest(format!("{secret}\0{account}\0{uidvalidity}\0{uid}"));
    let earlier = Sha256::digest(format!("{account}\0{uidvalidity}\0{uid}"));
    [hex(&keyed), hex(&earlier)]
}

impl Syncer {
    /// [`upload_tokens`] for a message of this account.
    async fn upload_tokens(&self, uidvalidity: u32, uid: u32) -> Result<[String; 2], Failure> {
        let store = self.store.clone();
        let secret = blocking(move || store.upload_secret()).await??;
        Ok(upload_tokens(secret, &self.name, uidvalidity, uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mailbox: &str, uid: u32, kind: &str, detail: &str) -> JournalEntry {
        JournalEntry {
            id: 0,
            account: "alice".into(),
            mailbox: mailbox.into(),
            uid,
            kind: kind.into(),
            detail: detail.into(),
            attempts: 0,
            last_error: String::new(),
        }
    }

    /// After a change that waits, later changes about the same message or mailbox wait too.
    #[test]
    fn later_changes_wait_for_an_earlier_one_that_failed() {
        let mut held = Held::default();
        // INBOX/7 moved to Archive as UID 3; the server refused the move.
        held.hold(&entry("INBOX", 7, "move", "Archive\t3"), NOW);
        assert!(held.blocks(&entry("Archive", 3, "flags", "\\Seen"), NOW));
        assert!(held.blocks(&entry("Archive", 3, "expunge", ""), NOW));
        assert!(held.blocks(&entry("Lists", 1, "copy", "Archive\t3"), NOW));
        assert!(held.blocks(&entry("Archive", 0, "delete-mailbox", ""), NOW));
        assert!(held.blocks(&entry("INBOX", 0, "rename-mailbox", "Old"), NOW));
        assert!(!held.blocks(&entry("Archive", 4, "flags", "\\Seen"), NOW));
        assert!(!held.blocks(&entry("INBOX", 8, "expunge", ""), NOW));
        // The move an APPEND journals for an expunge (a third field) holds its target too
        // (review: read as naming nothing, the flag change after it went first).
        let mut held = Held::default();
        held.hold(&entry("INBOX", 7, "move", "Archive\t3\texpunged"), NOW);
        assert!(held.blocks(&entry("Archive", 3, "flags", "\\Seen\t\\Deleted"), NOW));
        // A rename that waits holds everything in and under both names.
        let mut held = Held::default();
        held.hold(&entry("Drafts", 0, "rename-mailbox", "Entwürfe"), NOW);
        assert!(held.blocks(&entry("Drafts", 2, "append", ""), NOW));
        assert!(held.blocks(&entry("Entwürfe/Alt", 1, "flags", ""), NOW));
        assert!(!held.blocks(&entry("Draftsman", 1, "flags", ""), NOW));
        // A waiting change to A/B holds back a rename of its parent A.
        let mut held = Held::default();
        held.hold(&entry("A/B", 0, "delete-mailbox", ""), NOW);
        assert!(held.blocks(&entry("A", 0, "rename-mailbox", "C"), NOW));
        assert!(!held.blocks(&entry("AB", 0, "rename-mailbox", "C"), NOW));
        // Old renamed to New (waiting), a new Old made and stored into, then renamed to
        // Old2: the later changes, under Old2 now, were made to Old, which upstream is the
        // folder the rename waits for (review: they went up into it first).
        let mut held = Held::default();
        let mut then = entry("Old", 0, "rename-mailbox", "New");
        then.id = 1;
        held.hold(&then, NOW);
        let old_then = |n: &str| n.replace("Old2", "Old");
        let mut made = entry("Old2", 0, "create-mailbox", "");
        made.id = 2;
        assert!(held.blocks(&made, &old_then));
        assert!(!held.blocks(&made, NOW));
    }

    /// A change's names as they are (no rename after it).
    const NOW: &dyn Fn(&str) -> String = &|n: &str| crate::store::unmarked(n).0.to_string();

    #[test]
    fn verdict_keywords_stay_local() {
        assert_eq!(
            upstream_flags("\\Seen $Sealpost-Encrypted $Label1 \\Recent".split(' ')),
            "\\Seen $Label1"
        );
    }

    #[test]
    fn reasons_alike_but_for_digits_are_one() {
        assert!(super::same_reason(
            "NO [CANNOT] Permission denied (0.001 + 0.000 secs).",
            "NO [CANNOT] Permission denied (0.002 + 0.001 secs)."
        ));
        assert!(!super::same_reason(
            "NO [CANNOT] Permission denied",
            "NO [OVERQUOTA] Quota exceeded"
        ));
    }

    #[test]
    fn upload_tokens_differ_per_message_and_store() {
        let [a, earlier] = upload_tokens(5, "alice", 7, 1);
        assert_eq!(a.len(), 32);
        for other in [
            upload_tokens(5, "alice", 7, 2),
            upload_tokens(5, "alice", 8, 1),
            upload_tokens(5, "bob", 7, 1),
        ] {
            assert_ne!(a, other[0]);
            assert_ne!(earlier, other[1]);
        }
        // Another store's secret, another token; the earlier kind is the secret's alone.
        assert_ne!(a, upload_tokens(6, "alice", 7, 1)[0]);
        assert_eq!(earlier, upload_tokens(6, "alice", 7, 1)[1]);
        assert_ne!(a, earlier);
    }
}
