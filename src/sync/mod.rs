//! The incoming sync: an account's upstream IMAP folders are read incrementally (by
//! UIDVALIDITY and UID), each new message is decrypted and verified ([`crate::inbound`]) and
//! stored in the local mailbox of the same name.
//!
//! Never twice, never lost: each batch of messages is stored in one transaction together with
//! the upstream (folder, UIDVALIDITY, UID) of every message and the next UID to fetch
//! ([`Store::append_synced`]). A crash before the commit leaves the batch to the next run; a
//! crash after it leaves nothing to redo. When GnuPG fails for a temporary reason on every
//! message of a batch (agent gone), the account's pass ends there and the batch is fetched
//! again next time; a message it fails on alone while others go through is held (the folder's
//! mark stays below it, the others are stored) and after several passes over an hour kept as
//! it came, marked undecryptable ([`settle`]). A message that cannot be decrypted for good
//! is stored as it came, with its verdict.
//!
//! An upstream UIDVALIDITY change (RFC 3501 §2.3.1.1) starts the folder over; a message whose
//! stored content is already in the local mailbox under the old UIDVALIDITY is re-linked
//! rather than stored again, so it keeps its local UID and flags.
//!
//! Fetching changes nothing upstream: EXAMINE and BODY.PEEK (no \Seen set, no \Recent
//! taken). With CONDSTORE (RFC 7162) flag changes made upstream are fetched too (CHANGEDSINCE
//! the folder's last HIGHESTMODSEQ). What the user changes locally is written back first, at
//! the start of every sync ([`writeback`]).

pub mod maildir;
mod names;
pub mod upstream;
mod writeback;
pub use writeback::UPLOAD_FIELD;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::inbound::InboundError;
use crate::keys::{KeyError, KeyService};
use crate::rewrite::Policy;
use crate::store::{
    AccountId, Fetch, Flags, InternalDate, Prepared, SpecialUse, Store, StoreError, SyncMark,
};
use names::{FolderNames, Listed};
use upstream::{command, quote, Session, UpstreamConfig};

/// Messages fetched and stored per transaction.
const BATCH: usize = 50;

/// Bytes fetched per batch at most (a bigger message comes alone): memory holds a batch a few
/// times over (raw, CRLF, decrypted) while the next one arrives.
const BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// The size assumed for a message whose size the server did not tell.
const UNKNOWN_SIZE: u32 = 1024 * 1024;

/// The slowest link a fetch is given time for, on top of the command timeout.
const MIN_FETCH_BYTES_PER_SEC: u64 = 64 * 1024;

/// Passes in which the server may fail to send a message before it is passed over, and the
/// time those must span at least.
pub(crate) const FETCH_TRIES: i64 = 5;
pub(crate) const FETCH_GIVE_UP_SECS: i64 = 3600;

/// Messages handed to the GnuPG workers at once (they queue there).
const DECRYPTS_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("upstream {0}: {1}")]
    Connect(String, String),
    #[error("upstream login {0}")]
    Login(String),
    #[error("upstream: {}", upstream::readable(.0))]
    Imap(#[from] async_imap::error::Error),
    #[error("upstream folder {0}: {1}")]
    Folder(String, String),
    #[error("[accounts.upstream] {0}")]
    Config(String),
    /// A Maildir source that cannot be read now (not mounted yet, say): tried again.
    #[error("[accounts.maildir] {0}")]
    Maildir(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("GnuPG unavailable, will retry: {0}")]
    Keys(String),
    #[error("{0}")]
    Task(String),
    /// A pass that broke off after it stored mail: the error, and what the pass did before.
    #[error("{error}")]
    Broke {
        error: Box<SyncError>,
        report: Box<SyncReport>,
    },
}

/// What one sync brought: new messages per local mailbox, flag changes taken from upstream,
/// and local changes written back (and still waiting).
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub new: BTreeMap<String, usize>,
    pub flags_changed: usize,
    /// Local messages expunged because upstream no longer has them.
    pub expunged: usize,
    /// Messages kept undecryptable that a changed keyring now decrypts.
    pub redecrypted: usize,
    pub written_back: usize,
    pub waiting: usize,
    /// Why the latest change that waits did (its last try's reason), when one does.
    pub waiting_reason: Option<String>,
    /// One of the changes waiting waits for GnuPG (gpg-agent not reachable, a deadline).
    pub gnupg_waits: bool,
    /// INBOX's UIDNEXT when the pass looked at it: mail that came after it, while the pass
    /// went through the other folders, starts the next pass at once.
    pub inbox_uidnext: Option<u32>,
    /// Folders the connection broke in (left out, or cut short), and "the write-back" when it
    /// broke there: their mail or changes wait for the next pass, so the pass did not go
    /// through (`sync --once` exits 75).
    pub broken_off: Vec<String>,
    /// The pass ended early, in the last of `broken_off`: the link broke twice.
    pub ended_early: bool,
}

impl SyncReport {
    pub fn total(&self) -> usize {
        self.new.values().sum()
    }
}

/// What one folder's pass did.
struct FolderPass {
    stored: usize,
    flags_changed: usize,
    /// The folder's UIDNEXT at its EXAMINE.
    uidnext: Option<u32>,
    expunged: usize,
    /// The connection broke or timed out while new mail came: what came is stored, the
    /// session is unusable.
    cut_short: Option<SyncError>,
}

/// One account's sync: its upstream, its local store account and the keys that decrypt.
pub struct Syncer {
    pub name: String,
    pub config: UpstreamConfig,
    pub store: Store,
    pub keys: Arc<KeyService>,
    /// The outgoing policy: uploads are encrypted in its form ([`Policy::upload`]).
    pub policy: Policy,
    /// Warnings given in an earlier pass of this process (see [`Told`]).
    pub told: Told,
}

/// What a daemon's passes said already. A folder whose name cannot be stored here is left out
/// of every pass, every `poll_secs`: it is a warning at the first, then at debug level, not
/// a line in the log each time.
#[derive(Debug, Default)]
pub struct Told(std::sync::Mutex<std::collections::HashSet<String>>);

impl Told {
    /// Whether `what` is said for the first time; remembers it.
    pub fn first(&self, what: &str) -> bool {
        match self.0.lock() {
            Ok(mut said) => said.insert(what.to_string()),
            Err(_) => true,
        }
    }
}

impl Syncer {
    /// One full pass over every folder.
    pub async fn sync_once(&self) -> Result<SyncReport, SyncError> {
        let lock = sync_lock(&self.store).await?;
        let mut session = upstream::connect(&self.config).await?;
        let mut report = SyncReport::default();
        let result = self.sync_session(&mut session, &mut report).await;
        let _ = tokio::time::timeout(self.config.timeout(), session.logout()).await;
        // The notify command runs without the lock: however long it takes, other passes
        // and deliveries' retries go on. A pass that broke off tells of what it stored before
        // (review: the mail it stored came without a word).
        drop(lock);
        log_and_notify(&self.name, self.config.notify_command.as_deref(), &report).await;
        // Its report too, for `sync --once` to print (review: 75 and nothing on stdout after
        // 150 messages were stored).
        match result {
            Ok(()) => Ok(report),
            Err(error) if report.total() == 0 => Err(error),
            Err(error) => Err(SyncError::Broke {
                error: Box::new(error),
                report: Box::new(report),
            }),
        }
    }

    /// The pass over an open session; `report` holds what it did, also when it breaks off.
    async fn sync_session(
        &self,
        session: &mut Session,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let store = self.store.clone();
        let name = self.name.clone();
        let account = blocking(move || {
            let account = store.ensure_account(&name)?;
            store.set_write_back(account, true)?;
            Ok::<_, StoreError>(account)
        })
        .await??;
        let capabilities = within(self.config.timeout(), session.capabilities()).await?;
        let prefix = self.decided_prefix(session, &capabilities, account).await?;
        // Local changes first: a message moved or expunged here must not come back (a fetch
        // leaves alone messages with changes still waiting, so new mail can come down
        // whatever became of the write-back).
        match self
            .write_back(session, &capabilities, &prefix, account)
            .await
        {
            Ok(counts) => {
                (report.written_back, report.waiting) = (counts.done, counts.waiting);
                report.gnupg_waits = counts.gnupg_waits;
                if report.waiting > 0 {
                    // Warned of once per reason: a run that only counts them still says why.
                    let store = self.store.clone();
                    report.waiting_reason =
                        blocking(move || store.journal_backlog(account)).await??.1;
                }
            }
            Err(e @ (SyncError::Store(_) | SyncError::Task(_))) => return Err(e),
            Err(e) => {
                // The connection broke or timed out mid-change (one change the server never
                // answers in time would otherwise hold up all new mail, for good). The change
                // stays for the next pass; new mail comes down over a fresh connection.
                tracing::warn!(account = %self.name, "write-back stopped: {e}; fetching anyway");
                // The pass does not go through (review: 0).
                report.broken_off.push("the write-back".into());
                let store = self.store.clone();
                report.waiting = blocking(move || store.journal_backlog(account)).await??.0;
                *session = upstream::connect(&self.config).await?;
            }
        }
        let condstore = capabilities.has_str("CONDSTORE");
        let mut reconnected = false;
        let (names, listed) = self
            .folder_names(session, &capabilities, &prefix, account)
            .await?;
        // Before any folder is fetched: one another client renamed would come down again.
        if let Err(e) = self.follow_renames(session, account, &listed, &names).await {
            match e {
                SyncError::Store(_) | SyncError::Task(_) => return Err(e),
                e => tracing::warn!(account = %self.name,
                    "folders renamed upstream not looked for in this pass: {e}"),
            }
        }
        // For the IMAP server: no local name may hold the delimiter (see writeback).
        let delimiter = names.delimiter.chars().next();
        let store = self.store.clone();
        blocking(move || store.set_upstream_delimiter(account, delimiter)).await??;
        let mut every_folder = true;
        // Listed but refused at EXAMINE: Dovecot keeps listing a folder another client
        // deleted while it has subfolders (without \Noselect), and says it does not exist.
        let mut refused = Vec::new();
        let store = self.store.clone();
        let departures = blocking(move || store.waiting_departures(account, None)).await??;
        for Listed { wire: folder, .. } in listed.iter() {
            // A folder that cannot be synced (a name sealpost cannot store, EXAMINE refused)
            // is left out with a warning; the folders after it still are.
            let local = match names.local(folder) {
                Ok(local) => local,
                Err(e) => {
                    let line = format!("upstream folder {folder:?} left out: {e}");
                    if self.told.first(&line) {
                        tracing::warn!(account = %self.name, "{line}");
                    } else {
                        tracing::debug!(account = %self.name, "{line}");
                    }
                    continue;
                }
            };
            match departures.keeps_out(&local) {
                Fetch::Taken => {}
                Fetch::Departed => {
                    tracing::info!(account = %self.name, %folder,
                        "deleted or renamed here, not upstream yet: not fetched in this pass");
                    continue;
                }
                Fetch::UnderRenamedUnlessHere => {
                    let (store, name) = (self.store.clone(), local.clone());
                    if blocking(move || store.mailbox(account, &name))
                        .await??
                        .is_none()
                    {
                        tracing::info!(account = %self.name, %folder,
                            "under a folder renamed here, not upstream yet: not fetched in this pass");
                        continue;
                    }
                }
            }
            let done = match self
                .sync_folder(session, account, folder, &local, condstore)
                .await
            {
                Ok(done) => done,
                // A command the server refused (NO, BAD) leaves the connection usable: the
                // pass goes on over it, and the one reconnect is kept for a broken link.
                Err(
                    e @ (SyncError::Folder(..)
                    | SyncError::Imap(
                        async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_),
                    )),
                ) => {
                    // Once per process and reason (digits aside: Dovecot's answers carry
                    // timings), not at every poll of a daemon.
                    let line = format!("{folder}: {e}").replace(|c: char| c.is_ascii_digit(), "");
                    if self.told.first(&line) {
                        tracing::warn!(account = %self.name, %folder,
                            "{e}: folder left out of this pass");
                    } else {
                        tracing::debug!(account = %self.name, %folder,
                            "{e}: folder left out of this pass");
                    }
                    refused.push(folder.clone());
                    continue;
                }
                // The connection broke or a command timed out in this folder (a message too
                // big for the link, say): the folders after it still get their new mail, over
                // a fresh connection. A second time in one pass, the server is taken to be
                // unwell and the pass ends.
                Err(e @ (SyncError::Connect(..) | SyncError::Imap(_))) if !reconnected => {
                    tracing::warn!(account = %self.name, %folder,
                        "{e}: folder left out of this pass; reconnecting for the others");
                    report.broken_off.push(folder.to_string());
                    *session = upstream::connect(&self.config).await?;
                    reconnected = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if folder.eq_ignore_ascii_case("INBOX") {
                report.inbox_uidnext = done.uidnext;
            }
            // Two upstream folders may come to one local mailbox: both count.
            *report.new.entry(local).or_default() += done.stored;
            report.flags_changed += done.flags_changed;
            report.expunged += done.expunged;
            // What came before the connection broke is stored and counted; the rest of the
            // folder waits for the next pass, the other folders get a fresh connection.
            if let Some(e) = done.cut_short {
                report.broken_off.push(folder.to_string());
                if reconnected {
                    // Twice in one pass: the server is taken to be unwell. What came is
                    // reported; the folders left wait for the next pass.
                    tracing::warn!(account = %self.name, %folder,
                        "{e}: folder cut short; the pass ends here");
                    every_folder = false;
                    report.ended_early = true;
                    break;
                }
                tracing::warn!(account = %self.name, %folder,
                    "{e}: folder cut short in this pass; reconnecting for the others");
                *session = upstream::connect(&self.config).await?;
                reconnected = true;
            }
        }
        if every_folder {
            // New mail is stored by now: a failure here is no reason to lose the pass's report
            // (its notify_command, its "N new").
            match self
                .vanished_folders(session, account, &listed, &refused, &names)
                .await
            {
                Ok(n) => report.expunged += n,
                Err(e @ (SyncError::Store(_) | SyncError::Task(_))) => return Err(e),
                Err(e) => tracing::warn!(account = %self.name,
                    "folders gone upstream not looked for in this pass: {e}"),
            }
            let upstream: Vec<String> = listed
                .iter()
                .filter(|l| !refused.contains(&l.wire))
                .filter_map(|l| names.local(&l.wire).ok())
                .collect();
            let store = self.store.clone();
            for name in blocking(move || store.forget_placeholders(account, &upstream)).await?? {
                tracing::info!(account = %self.name, mailbox = %name,
                    "a parent of folders gone upstream, empty here: removed");
            }
        }
        report.redecrypted = retry_undecryptable(&self.store, &self.keys, account).await?;
        Ok(())
    }

    /// Folders another client renamed upstream, followed here before anything is fetched: a
    /// folder synced before that LIST leaves out and EXAMINE finds gone, and a listed folder
    /// not synced yet with its UIDVALIDITY (a rename keeps it, as Dovecot's does) are one
    /// folder. Its local mailbox takes the new name with its messages, flags and UIDs
    /// ([`Store::follow_upstream_rename`]): nothing is fetched or decrypted again, no "new"
    /// mail is counted, and local changes waiting for it go to it under the new name (before:
    /// its messages were expunged here and came down again as new mail, and a flag change
    /// waiting for one was dropped). Parents before their children; a folder the store cannot
    /// follow is left to be forgotten and fetched again, as before. One STATUS per new folder,
    /// and only when a synced folder is missing from the list.
    async fn follow_renames(
        &self,
        session: &mut Session,
        account: AccountId,
        listed: &[Listed],
        names: &names::FolderNames,
    ) -> Result<(), SyncError> {
        let store = self.store.clone();
        let synced = blocking(move || store.synced_folders(account)).await??;
        let mut gone = Vec::new();
        for folder in synced {
            if listed.iter().any(|l| l.wire == folder) || !self.config.syncs(&folder) {
                continue;
            }
            let (store, f) = (self.store.clone(), folder.clone());
            if let Some(mark) = blocking(move || store.sync_folder(account, &f)).await?? {
                gone.push((folder, mark.uidvalidity));
            }
        }
        // A folder renamed here, the rename waiting to go up, whose name upstream is another
        // folder's now (its UIDVALIDITY changed): another client renamed it too and made a new
        // folder of the old name. Gone as well, so the same rename here is followed (review:
        // the rename waited for good, behind a change to the folder made before it, and the
        // folder's messages came down a second time under the new name).
        let mut made_again = Vec::new();
        let store = self.store.clone();
        for (_, from, _) in blocking(move || store.journal_renames(account)).await?? {
            let folder = names.wire(&from);
            if !listed.iter().any(|l| l.wire == folder) || gone.iter().any(|(f, _)| *f == folder) {
                continue;
            }
            let (store, f) = (self.store.clone(), folder.clone());
            let Some(mark) = blocking(move || store.sync_folder(account, &f)).await?? else {
                continue;
            };
            let line = format!("STATUS {} (UIDVALIDITY)", quote(&folder));
            let status = within(self.config.timeout(), command(session, &line, None)).await?;
            if status.ok && status.uidvalidity.is_some_and(|v| v != mark.uidvalidity) {
                gone.push((folder.clone(), mark.uidvalidity));
                made_again.push(folder);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let mut fresh = Vec::new();
        for Listed { wire, .. } in listed {
            let (store, f) = (self.store.clone(), wire.clone());
            if self.config.syncs(wire)
                && blocking(move || store.sync_folder(account, &f))
                    .await??
                    .is_none()
            {
                fresh.push(wire.clone());
            }
        }
        fresh.sort_by_key(|w| w.chars().count());
        let timeout = self.config.timeout();
        for to in fresh {
            let Ok(local_to) = names.local(&to) else {
                continue;
            };
            let line = format!("STATUS {} (UIDVALIDITY)", quote(&to));
            let status = within(timeout, command(session, &line, None)).await?;
            let Some(uidvalidity) = status.uidvalidity.filter(|_| status.ok) else {
                continue;
            };
            let mut same = gone.iter().filter(|(_, v)| *v == uidvalidity);
            let (Some((from, _)), None) = (same.next(), same.next()) else {
                continue;
            };
            let from = from.clone();
            // A folder listed under the old name still: upstream's rename did not take it (made
            // there since, by a rename here into the folder, say), and the follow here would
            // carry its mailbox to the new name (review: the two sides kept it under different
            // names). Not followed: the folder's messages come down again under the new name.
            let under = format!("{from}{}", names.delimiter);
            if listed.iter().any(|l| l.wire.starts_with(&under)) {
                continue;
            }
            // Gone for certain, as for a folder forgotten (see `vanished_folders`), unless the
            // name is another folder's now.
            if !made_again.contains(&from) {
                let line = format!("EXAMINE {}", quote(&from));
                if !within(timeout, command(session, &line, None))
                    .await?
                    .says_gone()
                {
                    continue;
                }
            }
            // The same folder, by its content too: a server may give two folders one
            // UIDVALIDITY (RFC 3501 allows it; review: a folder made anew was taken for the
            // one deleted, and the user's expunge took a message they never saw). The newest
            // message linked to the old folder that the new one still has must be there byte
            // for byte (the newest may have been expunged before the rename: review).
            let (store, f) = (self.store.clone(), from.clone());
            let samples =
                blocking(move || store.sample_links(account, &f, uidvalidity, RENAME_SAMPLES))
                    .await??;
            if samples.is_empty() {
                continue;
            }
            let line = format!("EXAMINE {}", quote(&to));
            if !within(timeout, command(session, &line, None)).await?.ok {
                continue;
            }
            let mut same = false;
            for (uid, hash) in samples {
                // Not there (expunged): the next one tells.
                let raw = fetch_one(session, &self.name, uid, MAX_SAMPLE_BYTES, timeout).await?;
                if let Some(raw) = raw {
                    same = Sha256::digest(&raw)[..] == hash[..];
                    break;
                }
            }
            if !same {
                continue;
            }
            let Ok(local_from) = names.local(&from) else {
                continue;
            };
            let (store, f, t, l) = (
                self.store.clone(),
                from.clone(),
                to.clone(),
                local_to.clone(),
            );
            // The name another folder's now: only the renamed one's links follow.
            let only = made_again.contains(&from).then_some(uidvalidity);
            let followed = blocking(move || {
                store.follow_upstream_rename(account, &f, &t, &local_from, &l, only)
            })
            .await??;
            match followed {
                crate::store::FollowedRename::No => {}
                crate::store::FollowedRename::Renamed(old) => {
                    tracing::info!(account = %self.name, %from, %to, local = %old,
                        new = %local_to, "renamed upstream: the mailbox here follows");
                    gone.retain(|(f, _)| *f != from);
                }
                crate::store::FollowedRename::Relinked => {
                    tracing::info!(account = %self.name, %from, %to,
                        "renamed upstream with its parent: followed");
                    gone.retain(|(f, _)| *f != from);
                }
                crate::store::FollowedRename::AlsoHere => {
                    tracing::info!(account = %self.name, %from, %to,
                        "renamed here and upstream alike: the rename here is taken as done");
                    gone.retain(|(f, _)| *f != from);
                }
                crate::store::FollowedRename::Carried => {
                    tracing::info!(account = %self.name, %from, %to,
                        "renamed here and, by another client, upstream to another name: the \
                         rename here goes up from the name upstream has now");
                    gone.retain(|(f, _)| *f != from);
                }
            }
        }
        Ok(())
    }

    /// Folders synced before that are gone upstream (another client deleted or renamed
    /// them): their messages are expunged here, as expunges upstream are, and their sync
    /// state goes (a renamed folder's messages come down under its new name). A folder counts
    /// as gone only when LIST leaves it out, or this pass's EXAMINE of it was `refused`, and
    /// the server says it does not exist at EXAMINE; one that `folders` leaves out now is not
    /// synced, not gone. Returns how many messages went.
    async fn vanished_folders(
        &self,
        session: &mut Session,
        account: AccountId,
        listed: &[Listed],
        refused: &[String],
        names: &names::FolderNames,
    ) -> Result<usize, SyncError> {
        let store = self.store.clone();
        let synced = blocking(move || store.synced_folders(account)).await??;
        let mut expunged = 0;
        for folder in synced {
            if (listed.iter().any(|l| l.wire == folder) && !refused.contains(&folder))
                || !self.config.syncs(&folder)
            {
                continue;
            }
            let line = format!("EXAMINE {}", quote(&folder));
            let reply = within(self.config.timeout(), command(session, &line, None)).await?;
            if !reply.says_gone() {
                continue;
            }
            let (store, f) = (self.store.clone(), folder.clone());
            let local = names.local(&folder).ok();
            let n = blocking(move || store.forget_vanished_folder(account, &f, local.as_deref()))
                .await??;
            tracing::info!(account = %self.name, %folder,
                "the folder is gone upstream ({}): {n} messages expunged here", reply.text);
            expunged += n;
        }
        Ok(expunged)
    }

    /// The personal namespace prefix the account's names use ([`names`]): decided at its
    /// first pass from the server's NAMESPACE (RFC 2342) and kept; an account synced before
    /// without one keeps its names as they are.
    async fn decided_prefix(
        &self,
        session: &mut Session,
        capabilities: &async_imap::types::Capabilities,
        account: AccountId,
    ) -> Result<String, SyncError> {
        let key = format!("upstream-prefix:{account}:");
        let store = self.store.clone();
        let (decided, key) = blocking(move || {
            let kept = store.meta_prefixed(&key)?;
            Ok::<_, StoreError>((kept.first().map(|(k, _)| k[key.len()..].to_string()), key))
        })
        .await??;
        if let Some(prefix) = decided {
            return Ok(prefix);
        }
        let store = self.store.clone();
        let synced = blocking(move || store.synced_folders(account)).await??;
        let prefix = if !synced.is_empty() || !capabilities.has_str("NAMESPACE") {
            String::new()
        } else {
            // A refused NAMESPACE ends the pass before anything is synced: the names are
            // decided once it answers.
            match within(self.config.timeout(), upstream::personal_prefix(session)).await? {
                Some(prefix) => prefix,
                None => {
                    tracing::warn!(account = %self.name,
                        "the server's NAMESPACE answer could not be read: folders are taken \
                         as named");
                    String::new()
                }
            }
        };
        let (store, kept) = (self.store.clone(), format!("{key}{prefix}"));
        blocking(move || store.set_meta(&kept, 1)).await??;
        if !prefix.is_empty() {
            tracing::info!(account = %self.name, %prefix,
                "upstream names folders under a namespace prefix: left out here");
        }
        Ok(prefix)
    }

    /// The upstream folders to sync and their names here ([`names`]); special-use choices
    /// made now are kept.
    async fn folder_names(
        &self,
        session: &mut Session,
        capabilities: &async_imap::types::Capabilities,
        prefix: &str,
        account: AccountId,
    ) -> Result<(FolderNames, Vec<Listed>), SyncError> {
        let listed = self.folders(session, capabilities).await?;
        let key = format!("upstream-alias:{account}:");
        let store = self.store.clone();
        let (kept, synced) = blocking(move || {
            let kept: Vec<(String, String)> = store
                .meta_prefixed(&key)?
                .into_iter()
                .filter_map(|(k, _)| {
                    let (local, wire) = k[key.len()..].split_once('\t')?;
                    Some((local.to_string(), wire.to_string()))
                })
                .collect();
            Ok::<_, StoreError>((kept, store.synced_folders(account)?))
        })
        .await??;
        let (names, made) = FolderNames::new(prefix, &listed, &kept, &synced);
        for (local, wire) in made {
            tracing::info!(account = %self.name, %wire, %local,
                "the upstream special-use folder is the local one");
            let (store, key) = (
                self.store.clone(),
                format!("upstream-alias:{account}:{local}\t{wire}"),
            );
            blocking(move || store.set_meta(&key, 1)).await??;
        }
        Ok((names, listed))
    }

    /// The upstream folders to sync, INBOX first. Special-use attributes (RFC 6154) come
    /// with a plain LIST from most servers; one that announces SPECIAL-USE and LIST-EXTENDED
    /// is asked for them.
    async fn folders(
        &self,
        session: &mut Session,
        capabilities: &async_imap::types::Capabilities,
    ) -> Result<Vec<Listed>, SyncError> {
        let timeout = self.config.timeout();
        let pattern =
            if capabilities.has_str("SPECIAL-USE") && capabilities.has_str("LIST-EXTENDED") {
                "\"*\" RETURN (SPECIAL-USE)"
            } else {
                "*"
            };
        let names: Vec<_> = within(timeout, async {
            session
                .list(Some(""), Some(pattern))
                .await?
                .try_collect()
                .await
        })
        .await?;
        let mut folders: Vec<Listed> = names
            .iter()
            .filter(|n| {
                // \NoSelect (RFC 3501 §7.2.2); \NonExistent (RFC 5258) implies it.
                !n.attributes().iter().any(|a| match a {
                    async_imap::types::NameAttribute::NoSelect => true,
                    async_imap::types::NameAttribute::Extension(x) => {
                        x.eq_ignore_ascii_case("\\NonExistent")
                    }
                    _ => false,
                })
            })
            .map(|n| {
                use async_imap::types::NameAttribute as A;
                let special_use = n.attributes().iter().find_map(|a| match a {
                    A::Sent => Some(SpecialUse::Sent),
                    A::Drafts => Some(SpecialUse::Drafts),
                    A::Trash => Some(SpecialUse::Trash),
                    A::Junk => Some(SpecialUse::Junk),
                    A::Archive => Some(SpecialUse::Archive),
                    _ => None,
                });
                Listed {
                    wire: upstream::unquoted(n.name()),
                    delimiter: n.delimiter().map(upstream::unquoted),
                    special_use,
                }
            })
            .filter(|l| self.config.syncs(&l.wire))
            .collect();
        // INBOX first: that is where new mail is awaited.
        folders.sort_by_key(|l| (!l.wire.eq_ignore_ascii_case("INBOX"), l.wire.clone()));
        Ok(folders)
    }

    /// Syncs one folder: upstream flag changes (CONDSTORE), new messages, then expunges made
    /// upstream.
    async fn sync_folder(
        &self,
        session: &mut Session,
        account: AccountId,
        folder: &str,
        local: &str,
        condstore: bool,
    ) -> Result<FolderPass, SyncError> {
        forget_unsolicited(session);
        let timeout = self.config.timeout();
        let line = if condstore {
            format!("EXAMINE {} (CONDSTORE)", quote(folder))
        } else {
            format!("EXAMINE {}", quote(folder))
        };
        let selected = within(timeout, command(session, &line, None)).await?;
        if !selected.ok {
            return Err(SyncError::Folder(folder.into(), selected.text));
        }
        let uidvalidity = selected.uidvalidity.ok_or_else(|| {
            SyncError::Folder(folder.into(), "the server sent no UIDVALIDITY".into())
        })?;
        let (store, f, l) = (self.store.clone(), folder.to_string(), local.to_string());
        // Whether any message of the folder has a failure count (see `retry_due` below).
        let counts = format!("{UNFETCHED}{account}:{folder}:{uidvalidity}:");
        let made = blocking(move || {
            let mailbox = match store.mailbox(account, &l)? {
                Some(m) => m,
                // Not here: new upstream, unless a client renamed or deleted it here after
                // the pass read what waits to go up (review: renamed during the pass, it came
                // back here empty, for good). Its rename or deletion waits for the next pass.
                None => match store.waiting_departures(account, None)?.keeps_out(&l) {
                    Fetch::Taken => store.create_synced_mailbox(account, &l)?,
                    Fetch::Departed | Fetch::UnderRenamedUnlessHere => return Ok(None),
                },
            };
            let counted = store.has_meta_prefixed(&counts)?;
            Ok::<_, StoreError>(Some((mailbox, store.sync_folder(account, &f)?, counted)))
        })
        .await??;
        let Some((mailbox, known, counted)) = made else {
            tracing::info!(account = %self.name, %folder,
                "deleted or renamed here during this pass, not upstream yet: not fetched");
            return Ok(FolderPass {
                stored: 0,
                flags_changed: 0,
                uidnext: None,
                expunged: 0,
                cut_short: None,
            });
        };
        let renumbered = known.as_ref().is_some_and(|k| k.uidvalidity != uidvalidity);
        let (mut next_uid, synced_modseq) = match known {
            Some(k) if k.uidvalidity == uidvalidity => (k.next_uid, k.highestmodseq),
            Some(k) => {
                tracing::warn!(account = %self.name, %folder, old = k.uidvalidity,
                    new = uidvalidity, "upstream UIDVALIDITY changed: resyncing the folder");
                let (store, f) = (self.store.clone(), folder.to_string());
                blocking(move || store.reset_sync_folder(account, &f, uidvalidity)).await??;
                (1, 0)
            }
            None => (1, 0),
        };
        let mut highestmodseq = selected.highestmodseq.unwrap_or(0);
        let mut flags_changed = 0;
        // No flag sync of the folder yet (new here, or renumbered upstream), but messages
        // linked to it already: moved or copied into it from here, or linked again after a
        // UIDVALIDITY change. Their upstream flags come down once, all of them (review: flags
        // set upstream on them meanwhile never reached them).
        let unsynced_links = synced_modseq == 0 && highestmodseq > 0 && {
            let (store, f) = (self.store.clone(), folder.to_string());
            blocking(move || store.linked_count(account, &f, uidvalidity)).await?? > 0
        };
        if (synced_modseq > 0 && highestmodseq > synced_modseq) || unsynced_links {
            match self
                .flag_changes(session, account, folder, uidvalidity, synced_modseq)
                .await
            {
                // A change left for one waiting here is asked for again next pass (the mark
                // stays): once that one is written back, upstream's flags are both sides'.
                // Moved past it, it would never come down.
                Ok((n, left)) => {
                    flags_changed = n;
                    if left {
                        highestmodseq = synced_modseq;
                    }
                }
                // Refused: asked again next pass (the mark stays), new mail comes down now.
                Err(e @ SyncError::Folder(..)) => {
                    tracing::warn!(account = %self.name, "{e}");
                    highestmodseq = synced_modseq;
                }
                Err(e) => return Err(e),
            }
        }
        // Nothing new: one EXAMINE (and a look at the failure counts) is the whole cost of an
        // unchanged folder; a message passed over a day ago is asked for again.
        let retry_due = counted
            && Strikes::load(&self.store, account, folder, uidvalidity)
                .await?
                .retry_due(next_uid);
        let nothing_new = selected.exists == Some(0)
            || (selected.uidnext.is_some_and(|n| n <= next_uid) && !retry_due);
        let (stored, cut_short) = if nothing_new {
            (0, None)
        } else {
            self.fetch_new(
                session,
                account,
                folder,
                local,
                mailbox.id,
                uidvalidity,
                selected.uidnext,
                &mut next_uid,
            )
            .await?
        };

        // Renumbered upstream: the messages the fetch linked again keep their local flags;
        // upstream's come down now, once, as for a folder with links and no flag sync yet.
        if renumbered && cut_short.is_some() {
            // Next pass, which finds links and no flag sync yet.
            highestmodseq = 0;
        } else if renumbered && highestmodseq > 0 {
            match self
                .flag_changes(session, account, folder, uidvalidity, 0)
                .await
            {
                Ok((n, left)) => {
                    flags_changed += n;
                    if left {
                        highestmodseq = 0;
                    }
                }
                Err(e @ SyncError::Folder(..)) => {
                    tracing::warn!(account = %self.name, "{e}");
                    highestmodseq = 0;
                }
                Err(e) => return Err(e),
            }
        }
        if highestmodseq != synced_modseq || !nothing_new {
            let (store, f) = (self.store.clone(), folder.to_string());
            blocking(move || {
                store.advance_sync_folder(account, &f, uidvalidity, next_uid, highestmodseq)
            })
            .await??;
        }
        if cut_short.is_some() {
            return Ok(FolderPass {
                stored,
                flags_changed,
                uidnext: selected.uidnext,
                expunged: 0,
                cut_short,
            });
        }
        // Every message there is has been read: a resync is complete, and what it did not
        // link again is not upstream any more. Its local messages go too, but only when every
        // message upstream is linked (EXISTS at EXAMINE): one passed over or held is upstream
        // and not read, and could be one of them, however long ago its failure count went.
        let mut resync_expunged = 0;
        let complete = nothing_new || selected.uidnext.is_some_and(|n| n <= next_uid);
        let (store, f) = (self.store.clone(), folder.to_string());
        if complete && blocking(move || store.has_stale_links(account, &f, uidvalidity)).await?? {
            let (store, f) = (self.store.clone(), folder.to_string());
            let linked = blocking(move || store.linked_count(account, &f, uidvalidity)).await??;
            let expunge = selected.exists.is_some_and(|n| n as usize == linked);
            let (store, f) = (self.store.clone(), folder.to_string());
            resync_expunged =
                blocking(move || store.forget_unmatched_links(account, &f, uidvalidity, expunge))
                    .await??;
            if resync_expunged > 0 {
                tracing::info!(account = %self.name, %folder,
                    "{resync_expunged} messages not found upstream again after its UIDVALIDITY \
                     changed: expunged here");
            }
        }
        let expunged = resync_expunged
            + self
                .upstream_expunges(
                    session,
                    account,
                    folder,
                    uidvalidity,
                    next_uid,
                    selected.exists,
                )
                .await?;
        Ok(FolderPass {
            stored,
            flags_changed,
            uidnext: selected.uidnext,
            expunged,
            cut_short: None,
        })
    }

    /// Expunges made upstream since the last pass, mirrored here. Looked for only when the
    /// folder (EXISTS at EXAMINE) does not hold exactly the messages linked to it: then one
    /// `UID SEARCH ALL` says which are left. Not only when it holds fewer: without UIDPLUS a
    /// local expunge leaves a \Deleted message upstream, linked to nothing, which would hide
    /// an expunge made by another client (such a folder pays one search per pass). A folder
    /// whose messages are all linked costs nothing more. A message held for the next pass or
    /// passed over (one with a failure count) is upstream and not linked: with one, EXISTS
    /// can equal the linked count while another message was expunged, so the search is made
    /// then too.
    async fn upstream_expunges(
        &self,
        session: &mut Session,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        next_uid: u32,
        exists: Option<u32>,
    ) -> Result<usize, SyncError> {
        let (store, f) = (self.store.clone(), folder.to_string());
        let linked = blocking(move || store.linked_count(account, &f, uidvalidity)).await??;
        if linked == 0 {
            return Ok(0);
        }
        if exists.is_some_and(|n| n as usize == linked) {
            let store = self.store.clone();
            let tail = format!("{account}:{folder}:{uidvalidity}:");
            let counted = blocking(move || {
                [UNFETCHED, UNDECRYPTED]
                    .iter()
                    .try_fold(false, |any, kind| {
                        Ok::<_, StoreError>(
                            any || store.has_meta_prefixed(&format!("{kind}{tail}"))?,
                        )
                    })
            })
            .await??;
            if !counted {
                return Ok(0);
            }
        }
        let found = within(self.config.timeout(), session.uid_search("ALL")).await?;
        if found.is_empty() && exists.is_some_and(|n| n > 0) {
            // The folder's answers contradict each other: leave the local messages alone.
            tracing::warn!(account = %self.name, %folder,
                "upstream EXISTS and UID SEARCH ALL disagree: expunges not mirrored this time");
            return Ok(0);
        }
        let mut present: Vec<u32> = found.into_iter().collect();
        present.sort_unstable();
        let (store, f) = (self.store.clone(), folder.to_string());
        let expunged = blocking(move || {
            store.apply_upstream_expunges(account, &f, uidvalidity, next_uid, &present)
        })
        .await??;
        if expunged > 0 {
            tracing::info!(account = %self.name, %folder, "{expunged} messages expunged upstream");
        }
        Ok(expunged)
    }

    /// Flag changes made upstream since `since` (RFC 7162 CHANGEDSINCE) on messages already
    /// fetched, taken into the linked local messages. Returns how many changed, and whether
    /// any was left for a local change still waiting to be written back.
    async fn flag_changes(
        &self,
        session: &mut Session,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        since: u64,
    ) -> Result<(usize, bool), SyncError> {
        // Through `command`, which reads the completion: a CHANGEDSINCE refused (NO) must
        // not count as "no changes", or the folder's HIGHESTMODSEQ would move past them.
        // Every UID, not only those below the folder's mark: messages stored past a held one
        // are linked above it (messages not linked yet are left alone).
        let line = if since > 0 {
            format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {since})")
        } else {
            "UID FETCH 1:* (UID FLAGS)".to_string()
        };
        let reply = within(self.config.timeout(), command(session, &line, None)).await?;
        if !reply.ok {
            return Err(SyncError::Folder(
                folder.into(),
                format!("flag changes not fetched: {}", reply.text),
            ));
        }
        let changes: Vec<(u32, Flags)> = reply
            .flags
            .into_iter()
            .map(|(uid, names)| (uid, flags_named(&names)))
            .collect();
        let (store, f) = (self.store.clone(), folder.to_string());
        let (changed, left) =
            blocking(move || store.apply_upstream_flags(account, &f, uidvalidity, &changes))
                .await??;
        if changed > 0 {
            tracing::info!(account = %self.name, %folder, "{changed} flag changes from upstream");
        }
        Ok((changed, left > 0))
    }

    /// Fetches, decrypts and stores the messages from `next_uid` on; moves `next_uid` on as
    /// batches are stored. Upstream messages already linked (this side's own uploads and
    /// moves) are passed over.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_new(
        &self,
        session: &mut Session,
        account: AccountId,
        folder: &str,
        local: &str,
        mailbox: crate::store::MailboxId,
        uidvalidity: u32,
        uidnext: Option<u32>,
        next_uid: &mut u32,
    ) -> Result<(usize, Option<SyncError>), SyncError> {
        let timeout = self.config.timeout();
        // The mark never passes the UIDNEXT the server gave at EXAMINE (nor goes back below
        // where it was): a server that answered the FETCH of sizes for a UID it does not hold
        // moved it past that UID, and the mail after was never fetched (review). Messages
        // that came during the pass are fetched all the same, and linked: the next pass lists
        // them again and fetches nothing.
        let cap = uidnext.map_or(u32::MAX, |n| n.max(*next_uid));
        let strikes = Strikes::load(&self.store, account, folder, uidvalidity).await?;
        // Messages passed over below the mark whose day is up: asked for again (the server
        // may serve them now), and passed over again if it still does not.
        let retry: Vec<u32> = strikes.retries(*next_uid).collect();
        let asked = |start: u32| {
            if retry.is_empty() {
                format!("{start}:*")
            } else {
                format!("{},{start}:*", uid_list(&retry))
            }
        };
        let (found, linked) = {
            let start = *next_uid;
            // The sizes come along, so that batches and their deadlines follow the bytes.
            let line = format!("UID FETCH {} (UID RFC822.SIZE)", asked(start));
            let reply = within(timeout, command(session, &line, None)).await?;
            let mut sizes = reply.sizes;
            if !reply.ok {
                // A server may need the message to tell its size, and refuse for one it cannot
                // read: the UIDs come from a search then, each one without a size counted as
                // 1 MiB (if the server refuses it again in its batch, it is held).
                tracing::warn!(account = %self.name, %folder,
                    "sizes not all sent ({}); taking the UIDs from a search", reply.text);
                let line = format!("UID SEARCH UID {}", asked(start));
                let search = within(timeout, command(session, &line, None)).await?;
                if !search.ok {
                    return Err(SyncError::Folder(folder.into(), search.text));
                }
                let sized: std::collections::HashSet<u32> = sizes.iter().map(|s| s.0).collect();
                for uid in search.search {
                    if !sized.contains(&uid) {
                        sizes.push((uid, UNKNOWN_SIZE));
                    }
                }
            }
            let (store, f) = (self.store.clone(), folder.to_string());
            let from = retry.first().map_or(start, |r| start.min(*r));
            let linked =
                blocking(move || store.linked_upstream(account, &f, uidvalidity, from)).await??;
            (sizes, linked)
        };
        // Retried messages the server no longer has (expunged meanwhile), or stored already
        // (a stop between storing one and clearing its count): their counts go, instead of
        // asking for them at every pass until the counts are old enough to be purged.
        let settled_retries: Vec<u32> = retry
            .iter()
            .copied()
            .filter(|u| !found.iter().any(|f| f.0 == *u) || linked.binary_search(u).is_ok())
            .collect();
        if !settled_retries.is_empty() {
            strikes.clear(&self.store, &settled_retries).await?;
        }
        let retry: Vec<u32> = retry
            .into_iter()
            .filter(|u| settled_retries.binary_search(u).is_err())
            .collect();
        let top = found.iter().map(|f| f.0).filter(|u| *u >= *next_uid).max();
        let mut wanted: Vec<(u32, u32)> = found
            .into_iter()
            .filter(|(u, _)| {
                (*u >= *next_uid && linked.binary_search(u).is_err())
                    || retry.binary_search(u).is_ok()
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup_by_key(|w| w.0);
        // One passed over is not fetched again for a day (it stays upstream).
        wanted.retain(|(uid, _)| !strikes.given_up(*uid));
        let mut uploads = self.landed_uploads(account).await?;
        let progress = Progress::new(local, wanted.len());
        let mut stored = 0;
        // The lowest UID held for the next pass (not sent by the server, or GnuPG failed on
        // it): the folder's mark stays at or below it while the messages after it are stored
        // (linked, so the next pass fetches only what is missing).
        let mut hold: Option<u32> = None;
        // A message the connection broke on before comes last, alone, the others first; with
        // more time at each try (a link slower than MIN_FETCH_BYTES_PER_SEC).
        // Messages asked for again after a day come after all of them: one that breaks the
        // connection again must not hold up the new mail.
        let (retried, wanted): (Vec<_>, Vec<_>) = wanted
            .iter()
            .copied()
            .partition(|(uid, _)| retry.binary_search(uid).is_ok());
        let (again, first): (Vec<_>, Vec<_>) = wanted
            .iter()
            .copied()
            .partition(|(uid, _)| strikes.broke_on(*uid).is_some());
        let mut chunks = batches(&first);
        chunks.extend(again.iter().map(|&(uid, size)| {
            Batch {
                uids: vec![uid],
                bytes: u64::from(size)
                    .saturating_mul(1 + strikes.broke_on(uid).unwrap_or(0).clamp(0, 8) as u64),
                sized: size != UNKNOWN_SIZE,
            }
        }));
        chunks.extend(batches(&retried));
        // The first UID of the batches after one, for the mark: not a retried one (below the
        // mark already, and passed over again when it fails).
        let later = |i: usize| {
            chunks[i + 1..]
                .iter()
                .map(|c| c.uids[0])
                .filter(|u| retry.binary_search(u).is_err())
                .min()
        };
        let mut fetched = match chunks.first() {
            Some(chunk) => fetch_chunk(session, &self.name, chunk, timeout).await,
            None => Fetched::default(),
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let Fetched {
                mut messages,
                broken,
            } = std::mem::take(&mut fetched);
            let got: Vec<u32> = messages.iter().map(|m| m.0).collect();
            if !uploads.is_empty() {
                let at = (folder, uidvalidity, mailbox);
                self.link_landed(account, at, &mut uploads, &mut messages)
                    .await?;
            }
            // The next batch comes over the network while this one is decrypted (not over a
            // connection that broke).
            let next = chunks.get(i + 1).filter(|_| broken.is_none());
            // Each message with the hash of its bytes as the server sent them: what a resync
            // after a UIDVALIDITY change matches it by.
            let keyed: Vec<_> = messages
                .into_iter()
                .map(|(uid, flags, date, raw)| {
                    let hash: [u8; 32] = Sha256::digest(&raw).into();
                    ((uid, hash), flags, date, raw)
                })
                .collect();
            let strike_key = |k: &(u32, [u8; 32])| {
                format!("{UNDECRYPTED}{account}:{folder}:{uidvalidity}:{}", k.0)
            };
            let (settled, next_fetched) = tokio::join!(
                decrypt(&self.store, &self.keys, &self.name, keyed, strike_key),
                async {
                    match next {
                        Some(chunk) => Some(fetch_chunk(session, &self.name, chunk, timeout).await),
                        None => None,
                    }
                }
            );
            let settled = settled?;
            // A UID asked for and not sent: expunged meanwhile (passed over), or refused (a
            // FETCH answered NO, a message the server could not read), which must not be
            // passed over, or it would never be fetched.
            let missing: Vec<u32> = chunk
                .uids
                .iter()
                .copied()
                .filter(|u| !got.contains(u))
                .collect();
            let unsent = if missing.is_empty() {
                None
            } else if broken.is_some() {
                self.cut_off(account, folder, uidvalidity, &missing, &got, &retry)
                    .await?
            } else if next_fetched.as_ref().is_some_and(|f| f.broken.is_some()) {
                // The next batch's fetch broke the connection: no lookup over it. Held, they
                // are looked up at the next pass.
                missing.first().copied()
            } else {
                self.unfetched(session, account, folder, uidvalidity, &missing, &retry)
                    .await?
            };
            // Not a retried message: passed over again when it fails, it holds nothing (the
            // folder's mark is past it already).
            hold = hold
                .into_iter()
                .chain(unsent)
                .chain(settled.held.iter().map(|k| k.0))
                .filter(|u| retry.binary_search(u).is_err())
                .min();
            let (done, upstream): (Vec<u32>, Vec<[u8; 32]>) = settled.done.into_iter().unzip();
            if let Some(&last) = done.last() {
                // Upstream UIDs in a gap of this chunk (expunged meanwhile) are passed too.
                // UID 4294967295 is the last there can be: the mark stays on it (fetched again,
                // it is linked, not stored twice).
                *next_uid = (*next_uid)
                    .max(chunk.uids[chunk.uids.len() - 1].max(last).saturating_add(1))
                    .min(cap);
                // A batch still to come may hold a lower UID (one moved to the end).
                if let Some(floor) = hold.into_iter().chain(later(i)).min() {
                    *next_uid = (*next_uid).min(floor);
                }
                let mark = SyncMark {
                    folder: folder.to_string(),
                    uidvalidity,
                    uids: done.clone(),
                    upstream,
                    next_uid: *next_uid,
                };
                let store = self.store.clone();
                let id = mailbox;
                let messages = settled.messages;
                let appended = blocking(move || store.append_synced(id, messages, &mark)).await??;
                let n = appended.iter().filter(|a| !a.linked).count();
                stored += n;
                progress.show(stored);
                strikes.clear(&self.store, &done).await?;
            }
            if let Some(e) = settled.failure {
                return Err(e);
            }
            if let Some(e) = broken {
                // The batch is settled but what is held (a message passed over is settled);
                // the batches after it were not fetched.
                progress.finish(stored);
                let last = chunk.uids[chunk.uids.len() - 1];
                *next_uid = (*next_uid).max(last.saturating_add(1)).min(cap);
                if let Some(floor) = hold.into_iter().chain(later(i)).min() {
                    *next_uid = (*next_uid).min(floor);
                }
                return Ok((stored, Some(e)));
            }
            if let Some(next) = next_fetched {
                fetched = next;
            }
        }
        progress.finish(stored);
        match hold {
            // The next pass starts there; what this one stored after it is linked.
            Some(held) => {
                *next_uid = (*next_uid).min(held);
                tracing::warn!(account = %self.name, %folder,
                    "UID {held} held for the next pass; the messages after it are stored");
            }
            // Linked messages after the last one fetched need no fetch either.
            None => {
                if let Some(top) = top {
                    *next_uid = (*next_uid).max(top.saturating_add(1)).min(cap);
                }
            }
        }
        Ok((stored, None))
    }

    /// Takes out of `messages`, fetched from `folder` (UIDVALIDITY, its local mailbox), the
    /// uploads of changes still waiting ([`Self::landed_uploads`]) into that mailbox: each is
    /// linked to its local message and its journal entry ends, as the write-back's retry would
    /// have done. Not new mail: the local message is there already. An upload met in another
    /// folder (a server's "All Mail" view, a move by another client), or whose local message
    /// is gone or linked already, is left to the write-back.
    async fn link_landed(
        &self,
        account: AccountId,
        (folder, uidvalidity, local): (&str, u32, crate::store::MailboxId),
        uploads: &mut HashMap<String, (i64, crate::store::MailboxId, u32)>,
        messages: &mut Vec<(u32, Flags, InternalDate, Vec<u8>)>,
    ) -> Result<(), SyncError> {
        let mut kept = Vec::with_capacity(messages.len());
        for m in messages.drain(..) {
            let found = writeback::carried_token(&m.3)
                .and_then(|token| uploads.get(token).map(|u| (token.to_string(), *u)))
                .filter(|(_, (_, mailbox, _))| *mailbox == local);
            let Some((token, (entry, mailbox, uid))) = found else {
                kept.push(m);
                continue;
            };
            let store = self.store.clone();
            let unlinked = blocking(move || {
                Ok::<_, StoreError>(
                    store.raw_message(mailbox, uid)?.is_some()
                        && store.upstream_of(mailbox, uid)?.is_none(),
                )
            })
            .await??;
            if !unlinked {
                kept.push(m);
                continue;
            }
            uploads.remove(&token);
            let done = crate::store::WrittenBack {
                link: Some((
                    mailbox,
                    uid,
                    crate::store::UpstreamRef {
                        folder: folder.to_string(),
                        uidvalidity,
                        uid: m.0,
                    },
                )),
                link_hash: Some(Sha256::digest(&m.3).into()),
                ..Default::default()
            };
            let store = self.store.clone();
            blocking(move || store.writeback_done(account, entry, &done)).await??;
            tracing::info!(account = %self.name, %folder, uid = m.0,
                "an upload of a local change still waiting is upstream: linked, not new mail");
        }
        *messages = kept;
        Ok(())
    }

    /// The UIDs of a batch the server had not sent when the connection broke or timed out.
    /// The first above the last one it did send is taken for the cause (a message the server
    /// dies on, or too big for the link in time) and counts a failed pass: later passes fetch
    /// it alone, after the others, with more time at each try, until it comes, or pass it over
    /// after [`FETCH_TRIES`] passes spanning [`FETCH_GIVE_UP_SECS`]. Missing UIDs below the
    /// last one sent (refused, or expunged meanwhile) are only held: the next pass looks them
    /// up. Returns the UID to hold.
    async fn cut_off(
        &self,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        missing: &[u32],
        got: &[u32],
        retry: &[u32],
    ) -> Result<Option<u32>, SyncError> {
        let last_sent = got.iter().max().copied().unwrap_or(0);
        let skipped = missing.iter().copied().filter(|u| *u < last_sent).min();
        let Some(uid) = missing.iter().copied().find(|u| *u > last_sent) else {
            return Ok(skipped);
        };
        let key = unfetched_key(account, folder, uidvalidity, uid);
        let strike = strike_unfetched(&self.store, key, retry.binary_search(&uid).is_ok()).await?;
        if !strike.give_up {
            tracing::warn!(account = %self.name, %folder, uid,
                "the connection broke while the server sent this message (pass {}; passed \
                 over after {FETCH_TRIES} passes and {FETCH_GIVE_UP_SECS} s): next time it \
                 comes alone, after the others", strike.tries);
            return Ok(Some(skipped.map_or(uid, |s| s.min(uid))));
        }
        tracing::error!(account = %self.name, %folder, uid,
            "the connection broke while the server sent this message, in {} passes since {}: \
             passed over; it stays upstream", strike.tries, strike.since);
        Ok(missing.iter().copied().filter(|u| *u != uid).min())
    }

    /// Of the UIDs a FETCH did not answer for, the lowest that is still upstream and has not
    /// yet failed [`FETCH_TRIES`] passes: the fetch must not pass it. One that failed that
    /// often (a message the server cannot read) is passed over with an error in the log; it
    /// stays upstream. None when every one was expunged meanwhile or given up.
    async fn unfetched(
        &self,
        session: &mut Session,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
        missing: &[u32],
        retry: &[u32],
    ) -> Result<Option<u32>, SyncError> {
        let line = format!("UID SEARCH UID {}", uid_list(missing));
        let reply = within(self.config.timeout(), command(session, &line, None)).await?;
        if !reply.ok {
            return Err(SyncError::Folder(folder.into(), reply.text));
        }
        let mut there: Vec<u32> = reply.search;
        // Only what was asked about: a stray UID (one stored already) must not be counted.
        there.retain(|uid| missing.contains(uid));
        there.sort_unstable();
        for uid in there {
            let key = unfetched_key(account, folder, uidvalidity, uid);
            let strike =
                strike_unfetched(&self.store, key, retry.binary_search(&uid).is_ok()).await?;
            if strike.give_up {
                tracing::error!(account = %self.name, %folder, uid,
                    "the server did not send this message in {} passes since {}: \
                     passed over; it stays upstream", strike.tries, strike.since);
                continue;
            }
            tracing::warn!(account = %self.name, %folder, uid,
                "the server did not send this message (pass {}; passed over after \
                 {FETCH_TRIES} passes and {FETCH_GIVE_UP_SECS} s)", strike.tries);
            return Ok(Some(uid));
        }
        Ok(None)
    }

    /// Daemon mode: sync, then wait (IDLE on INBOX, or the poll interval) until upstream has
    /// news, the user changes something locally (the journal has entries to write back), or
    /// `shutdown`. Failures are logged and retried after the poll interval; the local store
    /// keeps serving meanwhile.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let poll = Duration::from_secs(self.config.poll_secs);
        let mut local = self.store.watch();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Local changes from this second on wake the next pass; older ones this pass saw
            // (one that waits for the server wakes nothing: it is retried at the next poll).
            let started = crate::store::unix_now();
            // Told to stop, the pass ends where it is, as after a crash (which it is made to
            // survive): what it stored stays, a change whose answer it did not read is
            // retried, the rest waits for the next start.
            let synced = tokio::select! {
                synced = self.sync_once() => synced,
                _ = shutdown.changed() => {
                    tracing::info!(account = %self.name, "stopping in the middle of a pass");
                    return;
                }
            };
            local.borrow_and_update();
            // After a failed pass only a change made from the next second on starts another
            // at once: one of this second woke pass after failing pass while the upstream was
            // down (review: six passes and warnings in 1.3 ms).
            let wake_since = if synced.is_err() {
                crate::store::unix_now() + 1
            } else {
                started
            };
            let waited = match synced {
                Ok(report) => {
                    if report.waiting > 0 {
                        tracing::info!(account = %self.name, waiting = report.waiting,
                            "local changes not yet written back; retrying at the next poll");
                    }
                    if self.config.idle {
                        let seen = report.inbox_uidnext;
                        self.idle(poll, &mut shutdown, &mut local, started, seen)
                            .await
                    } else {
                        Err(None)
                    }
                }
                Err(e) => {
                    tracing::warn!(account = %self.name, "sync failed: {e}");
                    Err(None)
                }
            };
            if let Err(problem) = waited {
                if let Some(e) = problem {
                    tracing::info!(account = %self.name, "IDLE unavailable, polling: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => {}
                    _ = self.local_change(&mut local, wake_since) => {}
                }
            }
        }
    }

    /// Resolves once the account has local changes made since `since` (Unix seconds) to
    /// write back (the store's commits are watched, also those of other processes). Entries
    /// that were there before do not count: an entry the server keeps refusing would
    /// otherwise start a pass at every commit, the sync's own included.
    /// A change made during the pass, after its write-back, counts at once: its commit's
    /// notice was taken before the pass ended.
    async fn local_change(&self, local: &mut tokio::sync::watch::Receiver<u64>, since: i64) {
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) && local.changed().await.is_err() {
                return std::future::pending().await;
            }
            let (store, name) = (self.store.clone(), self.name.clone());
            let news = blocking(move || match store.account(&name)? {
                Some(account) => store.journal_since(account, since),
                None => Ok::<_, StoreError>(false),
            })
            .await;
            if matches!(news, Ok(Ok(true))) {
                return;
            }
        }
    }

    /// Waits in IDLE on INBOX until the server reports a change, `poll` passes, the user
    /// changes something locally, or shutdown. Err(None): the server has no IDLE (poll
    /// instead).
    async fn idle(
        &self,
        poll: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        local: &mut tokio::sync::watch::Receiver<u64>,
        since: i64,
        inbox_uidnext: Option<u32>,
    ) -> Result<(), Option<SyncError>> {
        let mut session = upstream::connect(&self.config).await.map_err(Some)?;
        let capabilities = within(self.config.timeout(), session.capabilities())
            .await
            .map_err(Some)?;
        let timeout = self.config.timeout();
        if !capabilities.has_str("IDLE") {
            let _ = tokio::time::timeout(timeout, session.logout()).await;
            return Err(None);
        }
        let inbox = within(timeout, session.examine("INBOX"))
            .await
            .map_err(Some)?;
        // IDLE tells of mail that comes from now on: mail that came while the pass went
        // through the folders after INBOX would wait for the poll.
        if let (Some(now), Some(seen)) = (inbox.uid_next, inbox_uidnext) {
            if now > seen {
                tracing::debug!(account = %self.name, "new mail in INBOX since the pass read it");
                let _ = tokio::time::timeout(timeout, session.logout()).await;
                return Ok(());
            }
        }
        let mut idle = session.idle();
        within(timeout, idle.init()).await.map_err(Some)?;
        {
            // The wait's own timeout starts again at every response, "* OK Still here"
            // included (Dovecot sends one every 2 minutes): the poll interval is kept here.
            let (wait, _stop) = idle.wait_with_timeout(poll);
            tokio::select! {
                _ = wait => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
                _ = self.local_change(local, since) => {}
            }
        }
        if let Ok(Ok(mut session)) = tokio::time::timeout(timeout, idle.done()).await {
            let _ = tokio::time::timeout(timeout, session.logout()).await;
        }
        Ok(())
    }
}

/// UIDs as an IMAP sequence set ("4,7,9").
fn uid_list(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Drops what async-imap kept of the responses the server sent during its commands (a
/// FETCH of a message during CAPABILITY, say): nothing here reads them, and each held its
/// whole buffer until the session ended.
fn forget_unsolicited(session: &mut Session) {
    while session.unsolicited_responses.try_recv().is_ok() {}
}

/// The largest message that could be decrypted: gnupg.max_plaintext_bytes at most, armored.
const LARGEST_ARMORED: u64 = 512 * 1024 * 1024 * 4 / 3;

/// What a batch may bring beyond twice the bytes the server announced for it (and 4 KiB per
/// message for the response around it).
const FETCH_SLACK_BYTES: u64 = 16 * 1024 * 1024;

/// How often a fetch's progress is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// UIDs fetched together, and their bytes (RFC822.SIZE).
struct Batch {
    uids: Vec<u32>,
    bytes: u64,
    /// Every size is the server's answer (none taken as [`UNKNOWN_SIZE`]): only then does
    /// the fetch hold the server to it.
    sized: bool,
}

/// Upstream messages (UID, size) in batches of at most [`BATCH`] messages and
/// [`BATCH_BYTES`] (a bigger message is a batch of its own).
fn batches(wanted: &[(u32, u32)]) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for &(uid, size) in wanted {
        match out.last_mut() {
            Some(b) if b.uids.len() < BATCH && b.bytes + u64::from(size) <= BATCH_BYTES => {
                b.uids.push(uid);
                b.bytes += u64::from(size);
                b.sized &= size != UNKNOWN_SIZE;
            }
            _ => out.push(Batch {
                uids: vec![uid],
                bytes: u64::from(size),
                sized: size != UNKNOWN_SIZE,
            }),
        }
    }
    out
}

/// One batch as the server sent it ([`fetch_chunk`]).
#[derive(Default)]
struct Fetched {
    /// (UID, flags, INTERNALDATE, bytes), in UID order.
    messages: Vec<(u32, Flags, InternalDate, Vec<u8>)>,
    /// The connection broke or timed out before the server had sent the whole batch: what it
    /// did send is kept, and the session is unusable.
    broken: Option<SyncError>,
}

/// One batch of upstream messages by UID. The deadline is the command timeout plus time for
/// the batch's bytes at [`MIN_FETCH_BYTES_PER_SEC`]: a big message on a slow link must not
/// time out on every pass. The responses are read here, not through async-imap's fetch stream,
/// which ends the same way whether the server finished (OK or NO) or hung up.
/// The bytes of the message `uid` of the selected folder as the server sends them (at most
/// `bytes` of them expected); None when the folder has no such message.
async fn fetch_one(
    session: &mut Session,
    account: &str,
    uid: u32,
    bytes: u64,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, SyncError> {
    let chunk = Batch {
        uids: vec![uid],
        bytes,
        // An estimate or a bound, not the server's word: no limit from it.
        sized: false,
    };
    let fetched = fetch_chunk(session, account, &chunk, timeout).await;
    if let Some(e) = fetched.broken {
        return Err(e);
    }
    Ok(fetched
        .messages
        .into_iter()
        .find(|m| m.0 == uid)
        .map(|m| m.3))
}

async fn fetch_chunk(
    session: &mut Session,
    account: &str,
    chunk: &Batch,
    timeout: Duration,
) -> Fetched {
    use async_imap::imap_proto::{Response, Status};
    let set = uid_list(&chunk.uids);
    // The sizes are the server's word: the extra time is capped at the largest message that
    // could be decrypted (gnupg.max_plaintext_bytes at most, armored: 4/3 of it).
    let bytes = chunk.bytes.min(LARGEST_ARMORED);
    let idle = timeout;
    let timeout = timeout + Duration::from_secs(bytes / MIN_FETCH_BYTES_PER_SEC);
    let mut messages = Vec::new();
    let line = format!("UID FETCH {set} (UID FLAGS INTERNALDATE BODY.PEEK[])");
    let received = session.get_ref().received();
    let start = received.load(std::sync::atomic::Ordering::Relaxed);
    let limit = session.get_ref().limit();
    // With a size guessed, the largest message that could be decrypted counts for each.
    let announced = match chunk.sized {
        true => chunk.bytes.saturating_mul(2),
        false => LARGEST_ARMORED.saturating_mul(chunk.uids.len() as u64),
    };
    limit.store(
        start
            .saturating_add(announced)
            .saturating_add(FETCH_SLACK_BYTES)
            .saturating_add(4096 * chunk.uids.len() as u64),
        std::sync::atomic::Ordering::Relaxed,
    );
    let work = async {
        let tag = session.run_command(&line).await?;
        loop {
            let Some(response) = session.read_response().await? else {
                return Err(async_imap::error::Error::ConnectionLost);
            };
            match response.parsed() {
                Response::Fetch(_, attributes) => messages.extend(fetched_message(attributes)),
                // Refused (NO, BAD: a message the server cannot read, RFC 3501 §7.1.2): what
                // it did send is kept, and the messages it left out are held for the next pass
                // by the caller, one by one. Thrown away with them, one broken message would
                // stop its whole batch on every pass.
                Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => {
                    if *status != Status::Ok {
                        tracing::warn!(%account, uids = %set,
                            "the server refused part of a fetch: {}",
                            outcome.information.as_deref().unwrap_or(""));
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
    };
    // The sizes are the server's word, so the bytes are watched as they come: far more than
    // announced (each message is held whole in memory) fails the read (the stream's limit,
    // set above), and nothing for the command timeout (a server that announced 4 GB and
    // stalled waited out the deadline of all of them) breaks the connection.
    let watchdog = async {
        let (mut last, mut since) = (start, tokio::time::Instant::now());
        let mut ticked = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            // A tick long overdue: this task was busy (decrypting the batch before, in the
            // same task), and nothing here was read meanwhile; that is no silence.
            if ticked.elapsed() > WATCH_EVERY * 4 {
                since = tokio::time::Instant::now();
            }
            ticked = tokio::time::Instant::now();
            let now = received.load(std::sync::atomic::Ordering::Relaxed);
            if now != last {
                (last, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= idle {
                return SyncError::Connect(
                    "fetch".into(),
                    format!("nothing came for {} s", idle.as_secs()),
                );
            }
        }
    };
    let broken = tokio::select! {
        done = within(timeout, work) => done.err(),
        stalled = watchdog => Some(stalled),
    };
    limit.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    forget_unsolicited(session);
    // Only what was asked for: a stray UID must not move the folder's mark.
    messages.retain(|m| chunk.uids.contains(&m.0));
    messages.sort_by_key(|m| m.0);
    messages.dedup_by_key(|m| m.0);
    Fetched { messages, broken }
}

/// (UID, flags, INTERNALDATE, bytes) of one FETCH response, when it has the UID and the
/// message (a server may also send FETCH responses of its own, with flags alone).
fn fetched_message(
    attributes: &[async_imap::imap_proto::AttributeValue],
) -> Option<(u32, Flags, InternalDate, Vec<u8>)> {
    use async_imap::imap_proto::AttributeValue;
    let (mut uid, mut flags, mut date, mut body) = (None, Vec::new(), None, None);
    for attribute in attributes {
        match attribute {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Flags(names) => flags = names.iter().map(|f| f.to_string()).collect(),
            AttributeValue::InternalDate(d) => {
                date = chrono::DateTime::parse_from_str(d, "%d-%b-%Y %H:%M:%S %z").ok();
            }
            AttributeValue::BodySection {
                section: None,
                data: Some(data),
                ..
            }
            | AttributeValue::Rfc822(Some(data)) => body = Some(data.to_vec()),
            _ => {}
        }
    }
    let date = match date {
        Some(d) => InternalDate {
            unix: d.timestamp(),
            tz_minutes: d.offset().local_minus_utc() / 60,
        },
        None => InternalDate::now(),
    };
    Some((uid?, flags_named(&flags), date, body?))
}

/// One sync at a time per store (the daemons inside `sealpost imap` and a manual `sealpost
/// sync --once` take turns): a lock file beside the store.
pub(crate) async fn sync_lock(store: &Store) -> Result<crate::queue::RunLock, SyncError> {
    let path = sync_lock_path(store);
    let database = store.path().to_path_buf();
    blocking(move || {
        let lock = crate::queue::RunLock::acquire_path(&path)?;
        lock.give_to_owner_of(&database)?;
        Ok::<_, std::io::Error>(lock)
    })
    .await?
    .map_err(|e| SyncError::Task(format!("sync lock: {e}")))
}

/// The place of the one retry of `account`'s undecryptable messages that waits for the sync
/// lock (see `incoming::retry_in_background`), when no other waits now; None when one does.
/// One per account: a retry tries one account's messages (review: with one for the store,
/// bob's retry was turned away by alice's, which did not try bob's).
pub(crate) async fn try_retry_wait(
    store: &Store,
    account: AccountId,
) -> Result<Option<crate::queue::RunLock>, SyncError> {
    let path = std::path::PathBuf::from(format!("{}.retry-lock.{account}", store.path().display()));
    let database = store.path().to_path_buf();
    blocking(move || {
        let lock = crate::queue::RunLock::try_acquire_path(&path)?;
        if let Some(lock) = &lock {
            lock.give_to_owner_of(&database)?;
        }
        Ok::<_, std::io::Error>(lock)
    })
    .await?
    .map_err(|e| SyncError::Task(format!("retry lock: {e}")))
}

fn sync_lock_path(store: &Store) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.sync-lock", store.path().display()))
}

/// Logs "N new messages" per mailbox and runs the account's notify_command, when set and
/// there is new mail, with the counts in its environment.
async fn log_and_notify(account: &str, command: Option<&str>, report: &SyncReport) {
    for (mailbox, n) in report.new.iter().filter(|(_, n)| **n > 0) {
        tracing::info!(%account, %mailbox, new = n, "{n} new messages");
    }
    let Some(command) = command.filter(|_| report.total() > 0) else {
        return;
    };
    let by_mailbox = report
        .new
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(m, n)| format!("{m}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    // Given NOTIFY_SECS, then killed; killed too when the daemon stops (kill_on_drop), so
    // that a command that hangs neither holds up the next pass for good nor outlives it.
    // Its own process group, which the kill reaches whole: killing the shell alone left
    // what it ran (`sleep 100; ...`) behind, holding sync's output (review). Its output goes
    // to stderr, not into sync's "N new" lines that scripts read.
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("SEALPOST_ACCOUNT", account)
        .env("SEALPOST_NEW", report.total().to_string())
        .env("SEALPOST_NEW_BY_MAILBOX", by_mailbox)
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(%account, "notify_command: {e}");
            return;
        }
    };
    match tokio::time::timeout(Duration::from_secs(NOTIFY_SECS), child.wait()).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => tracing::warn!(%account, "notify_command exited with {s}"),
        Ok(Err(e)) => tracing::warn!(%account, "notify_command: {e}"),
        Err(_) => {
            tracing::warn!(%account, "notify_command still running after {NOTIFY_SECS} s: killed");
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: killpg has no memory effects; the group is the command's own.
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
        }
    }
}

/// How long a notify_command may run.
const NOTIFY_SECS: u64 = 60;

/// An account's source: an upstream IMAP account or a Maildir.
pub enum Source {
    Imap(Box<Syncer>),
    Maildir(maildir::MaildirSync),
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Imap(s) => &s.name,
            Source::Maildir(s) => &s.name,
        }
    }

    pub async fn sync_once(&self) -> Result<SyncReport, SyncError> {
        match self {
            Source::Imap(s) => s.sync_once().await,
            Source::Maildir(s) => s.sync_once().await,
        }
    }

    pub async fn run(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        match self {
            Source::Imap(s) => s.run(shutdown).await,
            Source::Maildir(s) => s.run(shutdown).await,
        }
    }
}

/// The most bytes of the message fetched to tell a renamed folder by its content.
const MAX_SAMPLE_BYTES: u64 = 64 * 1024 * 1024;

/// How many of the newest messages linked to a folder are looked for in one taken for it
/// renamed, until one is found.
const RENAME_SAMPLES: usize = 3;

/// How often messages kept undecryptable are tried again when the keyring has not changed.
const RETRY_UNDECRYPTABLE_SECS: i64 = 86_400;

/// What a retry of undecryptable messages ([`retry_undecryptable`]) records as tried, read
/// before it lists the messages waiting: the keyring's state, and how many times a message
/// was stored undecryptable while the keyring changed ([`retry_due_again`]).
pub(crate) struct RetryMark {
    state: i64,
    stored: Option<i64>,
}

/// The [`RetryMark`] of `account` now.
async fn retry_mark(
    store: &Store,
    keys: &KeyService,
    account: AccountId,
) -> Result<RetryMark, SyncError> {
    let state = keys.keyring_state();
    let (s, k) = (store.clone(), stored_key(account));
    let stored = blocking(move || s.meta(&k)).await??;
    Ok(RetryMark { state, stored })
}

/// Records a retry of `account` as done with `mark`, read before its list of messages: a
/// message stored meanwhile, or a key imported, makes the next one due.
async fn record_retry(
    store: &Store,
    account: AccountId,
    mark: RetryMark,
    now: i64,
) -> Result<(), SyncError> {
    let s = store.clone();
    blocking(move || record_retry_with(&s, account, &mark, now)).await??;
    Ok(())
}

fn record_retry_with(
    store: &Store,
    account: AccountId,
    mark: &RetryMark,
    now: i64,
) -> Result<(), StoreError> {
    let [key, at_key, stored_key] = tried_keys(account);
    store.set_meta(&key, mark.state)?;
    store.set_meta(&at_key, now)?;
    match mark.stored {
        Some(n) => store.set_meta(&stored_key, n),
        None => store.delete_meta(&[stored_key]),
    }
}

/// A due [`retry_undecryptable`] of `account` that found nothing waiting, done without
/// reading the messages again: stale failure counts forgotten and the try recorded with the
/// mark read before the list was (review: read after it, a message stored and a key imported
/// in between were taken as tried). A message stored meanwhile is the next due retry's
/// (review: `deliver` ran the whole retry, which would have decrypted such a message in the
/// delivery's process, outside the sync lock).
pub(crate) async fn record_empty_retry(
    store: &Store,
    account: AccountId,
    mark: RetryMark,
) -> Result<(), SyncError> {
    let now = crate::store::unix_now();
    let s = store.clone();
    blocking(move || {
        purge_stale_counts(&s, now)?;
        record_retry_with(&s, account, &mark, now)
    })
    .await??;
    Ok(())
}

/// Makes the next [`retry_undecryptable`] of `account` due: a message stored undecryptable
/// while the keyring changed may have come after a retry had listed the messages with the
/// new keyring, which would otherwise not try it for a day. A count, not a deletion of the
/// last try's record: a retry still running when this is called records the count it read
/// before its list, so it cannot undo this (review: it recorded its try after the deletion,
/// and the message waited a day).
pub(crate) async fn retry_due_again(store: &Store, account: AccountId) -> Result<(), SyncError> {
    let (s, key) = (store.clone(), stored_key(account));
    blocking(move || s.bump_meta(&key)).await??;
    Ok(())
}

/// The store's records of the last [`retry_undecryptable`] of `account`: the keyring's state
/// then, when, and the [`stored_key`] count then.
fn tried_keys(account: AccountId) -> [String; 3] {
    [
        format!("undecryptable-tried:{account}"),
        format!("undecryptable-tried-at:{account}"),
        format!("undecryptable-tried-stored:{account}"),
    ]
}

/// How many times a message of `account` was stored undecryptable while the keyring changed.
fn stored_key(account: AccountId) -> String {
    format!("undecryptable-stored:{account}")
}

/// Whether [`retry_undecryptable`] would try `account`'s messages now: the keyring changed
/// since its last try, a message was stored undecryptable while it changed
/// ([`retry_due_again`]), or a day has passed (a key that could not be used then, its agent
/// broken or its card out, may be usable now without any keyring file changing). When it
/// would, the [`RetryMark`] read for it, which a try that lists the messages after this
/// records.
pub(crate) async fn undecryptable_retry_due(
    store: &Store,
    keys: &KeyService,
    account: AccountId,
) -> Result<Option<RetryMark>, SyncError> {
    let mark = retry_mark(store, keys, account).await?;
    let now = crate::store::unix_now();
    let s = store.clone();
    Ok(
        blocking(move || retry_due_with(&s, account, &mark, now).map(|due| due.then_some(mark)))
            .await??,
    )
}

/// Whether a retry is due when the [`RetryMark`] is `mark` now.
fn retry_due_with(
    store: &Store,
    account: AccountId,
    mark: &RetryMark,
    now: i64,
) -> Result<bool, StoreError> {
    let [k, a, st] = tried_keys(account);
    let (tried, tried_at, tried_stored) = (store.meta(&k)?, store.meta(&a)?, store.meta(&st)?);
    Ok(tried != Some(mark.state)
        || tried_stored != mark.stored
        || tried_at.is_none_or(|at| now - at >= RETRY_UNDECRYPTABLE_SECS))
}

/// Messages kept undecryptable are decrypted again once the keyring has changed since the
/// last try (a key imported or restored), or a day has passed since it: each one that now
/// decrypts replaces its ciphertext under a new UID, with its flags and its upstream link
/// ([`Store::replace_content`]). An unchanged keyring costs a few `stat` calls and one read.
/// A deadline on one message has that message wait a day, and the others are tried; another
/// temporary GnuPG failure on one (its agent not reachable) leaves the try unrecorded after
/// the others were tried (an error), and the next retry tries it again. Returns how many were
/// decrypted.
pub(crate) async fn retry_undecryptable(
    store: &Store,
    keys: &KeyService,
    account: AccountId,
) -> Result<usize, SyncError> {
    use crate::inbound::keyword::UNDECRYPTABLE;
    // Read before the list: what changes after it makes the next retry due.
    let Some(mark) = undecryptable_retry_due(store, keys, account).await? else {
        return Ok(0);
    };
    let now = crate::store::unix_now();
    let s = store.clone();
    blocking(move || purge_stale_counts(&s, now)).await??;
    let s = store.clone();
    let waiting = blocking(move || s.with_keyword(account, UNDECRYPTABLE)).await??;
    let mut decrypted = 0;
    let mut deadlines = 0;
    let mut cut_short = false;
    let mut passing_failure: Option<String> = None;
    for (mailbox, uid) in waiting {
        // One GnuPG took too long on lately waits a day, so that it never starves the ones
        // after it (they come in the same order every time).
        let slow_key = format!("{RETRY_DEADLINE}{mailbox}:{uid}");
        let (s, k) = (store.clone(), slow_key.clone());
        let slow_before = blocking(move || s.meta(&k)).await??;
        if slow_before.is_some_and(|at| now - at < RETRY_UNDECRYPTABLE_SECS) {
            continue;
        }
        let s = store.clone();
        let Some(raw) = blocking(move || s.raw_message(mailbox, uid)).await?? else {
            continue;
        };
        let processed = match crate::inbound::process(keys, &raw).await {
            Ok(p) => p,
            // GnuPG worked past the deadline on it (perhaps why it was kept): tried again in
            // a day, not at every pass; the others are tried now. Two such that were not slow
            // before, and GnuPG is slow for all: the rest waits for the next try too.
            Err(InboundError::Temporary(KeyError::Deadline { .. })) => {
                let s = store.clone();
                blocking(move || s.set_meta(&slow_key, now)).await??;
                if slow_before.is_none() {
                    deadlines += 1;
                    if deadlines >= 2 {
                        // Not recorded as a try: the next pass tries the others (these two
                        // wait their day).
                        cut_short = true;
                        break;
                    }
                }
                continue;
            }
            // Another temporary failure (gpg-agent not reachable, or not yet able to use a key
            // just imported: "No secret key, though the secret key file is there"): this
            // message is tried at the next retry, not in a day, and the others now (review:
            // the retry stopped at it, and the messages after it were never tried). The try
            // is not recorded, so the next one is due. (Put off a day, as a deadline is, a
            // message that met the agent as its key came in waited that day: seen in the
            // tests.)
            Err(e) => {
                tracing::info!(%uid, "retry of an undecryptable message: {e}; tried again at the next retry");
                passing_failure.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        let keywords = processed.verdict.keywords();
        if keywords.contains(&UNDECRYPTABLE) {
            continue;
        }
        // The INTERNALDATE stays the old message's; this one is not used.
        let prepared = Prepared::new(processed.message, Flags::new(keywords), InternalDate::now());
        let s = store.clone();
        if blocking(move || s.replace_content(mailbox, uid, prepared))
            .await??
            .is_some()
        {
            decrypted += 1;
        }
    }
    if decrypted > 0 {
        tracing::info!(
            "{decrypted} message(s) kept undecryptable are decrypted now (the keyring changed)"
        );
    }
    if cut_short {
        return Ok(decrypted);
    }
    if let Some(e) = passing_failure {
        return Err(SyncError::Keys(e));
    }
    record_retry(store, account, mark, now).await?;
    Ok(decrypted)
}

/// Decrypts and verifies fetched messages, in order, several at once on the GnuPG workers, so
/// that a worker never waits for an earlier message to finish on the other one; then
/// [`settle`]s them.
pub(crate) async fn decrypt<K: Send>(
    store: &Store,
    keys: &KeyService,
    account: &str,
    fetched: Vec<(K, Flags, InternalDate, Vec<u8>)>,
    strike_key: impl Fn(&K) -> String,
) -> Result<Settled<K>, SyncError> {
    let processed: Vec<_> = futures::stream::iter(fetched)
        .map(|(key, flags, date, raw)| async move {
            let raw = crate::store::crlf(&raw);
            let result = crate::inbound::process(keys, &raw).await;
            (key, flags, date, raw, result)
        })
        .buffered(DECRYPTS_IN_FLIGHT)
        .collect()
        .await;
    settle(store, keys, account, processed, strike_key).await
}

/// One message after [`crate::inbound::process`]: its key, flags, date and bytes, and the
/// result.
type Outcome<K> = (
    K,
    Flags,
    InternalDate,
    Vec<u8>,
    Result<crate::inbound::Processed, InboundError>,
);

/// What became of a batch of messages ([`settle`]).
pub(crate) struct Settled<K> {
    /// To store, in order, with the keys they came with (`done`).
    pub messages: Vec<Prepared>,
    pub done: Vec<K>,
    /// Held for the next pass: GnuPG failed on them for a temporary reason.
    pub held: Vec<K>,
    /// GnuPG failed for a temporary reason on every message (agent gone, say): the batch
    /// waits, nothing is stored.
    pub failure: Option<SyncError>,
}

/// Sorts processed messages into those to store and those to hold. A temporary failure on
/// every message of a batch of several is GnuPG's (agent gone, every deadline passed): they
/// all wait for the next pass. A message that fails while others go through is tried again
/// alone (it may only have waited behind a slow one past its deadline); failing again, it is
/// more likely the message's own fault (GnuPG working through it past the deadline every
/// time): it becomes a suspect and is held, so that it holds up nothing else. A message alone
/// in its batch is a suspect at once. Either way only when GnuPG works ([`gnupg_works`]: the
/// others going through do not show it, plaintext needs no secret key); one that fails
/// because gpg-agent cannot be reached waits as a failed batch does, and counts nothing. A
/// suspect counts a failed pass also when it is the only message left to fetch; after
/// [`FETCH_TRIES`] passes spanning
/// [`FETCH_GIVE_UP_SECS`] it is stored as it came, marked undecryptable with the reason, and
/// the retry of undecryptable messages tries it again later. `strike_key` names a message's
/// failure count in the store's meta table.
async fn settle<K>(
    store: &Store,
    keys: &KeyService,
    account: &str,
    processed: Vec<Outcome<K>>,
    strike_key: impl Fn(&K) -> String,
) -> Result<Settled<K>, SyncError> {
    let any_done = processed.iter().any(|p| p.4.is_ok());
    // A message GnuPG fails on alone is counted against itself too (when GnuPG works
    // otherwise: [`gnupg_works`]): held rather than failing the batch, it cannot end
    // every pass (and hold up the folders after it) while no other message comes to show
    // GnuPG working.
    let alone = processed.len() == 1;
    let mut works = None;
    let mut settled = Settled {
        messages: Vec::with_capacity(processed.len()),
        done: Vec::with_capacity(processed.len()),
        held: Vec::new(),
        failure: None,
    };
    for (key, mut flags, date, raw, result) in processed {
        let result = match result {
            Err(_) if any_done => crate::inbound::process(keys, &raw).await,
            result => result,
        };
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                let name = strike_key(&key);
                // An agent that cannot be reached fails every message at once, and says
                // nothing about this one: it counts no pass, even against a message that
                // failed before. Others stored in the same batch do not show GnuPG working:
                // plaintext and signed-only mail go through without the secret key.
                let suspect = (any_done || alone || {
                    let (s, k) = (store.clone(), name.clone());
                    blocking(move || s.meta(&k)).await??.is_some()
                }) && gnupg_works(keys, &mut works).await;
                if !suspect {
                    settled
                        .failure
                        .get_or_insert(SyncError::Keys(e.to_string()));
                    settled.held.push(key);
                    continue;
                }
                let strike = strike(store, name.clone()).await?;
                if !strike.give_up {
                    tracing::warn!(account, message = %name,
                        "GnuPG failed on this message, also alone, while it worked for others: \
                         {e} (pass {}; kept undecryptable after {FETCH_TRIES} passes and \
                         {FETCH_GIVE_UP_SECS} s)", strike.tries);
                    settled.held.push(key);
                    continue;
                }
                tracing::error!(account, message = %name,
                    "GnuPG failed on this message in {} passes since {}: {e}; stored as it \
                     came, marked undecryptable", strike.tries, strike.since);
                crate::inbound::unprocessed(
                    &raw,
                    &format!("GnuPG failed on it in {} passes: {e}", strike.tries),
                )
            }
        };
        for k in p.verdict.keywords() {
            flags.insert(k.to_string());
        }
        settled.messages.push(Prepared::new(p.message, flags, date));
        settled.done.push(key);
    }
    Ok(settled)
}

/// Whether GnuPG works: its secret keyring can be read through gpg-agent. A temporary
/// failure on one message (GnuPG past the deadline on it, a worker or gpg that died on it)
/// while GnuPG works is likely the message's own; with an agent that cannot be reached it
/// says nothing about the message (gpg may also spend past the deadline trying to reach it,
/// once per session key packet). `known` keeps the answer of the one check a batch needs.
pub(crate) async fn gnupg_works(keys: &KeyService, known: &mut Option<bool>) -> bool {
    if let Some(answer) = *known {
        return answer;
    }
    let (home, deadline) = (keys.home().to_path_buf(), keys.deadline());
    let answer = blocking(move || crate::keys::home::secret_keyring_problem(Some(&home), deadline))
        .await
        .map(|problem| problem.is_none())
        .unwrap_or(false);
    *known = Some(answer);
    answer
}

/// The failure count (store meta) of an upstream message the server did not send.
fn unfetched_key(account: AccountId, folder: &str, uidvalidity: u32, uid: u32) -> String {
    format!("{UNFETCHED}{account}:{folder}:{uidvalidity}:{uid}")
}

const UNFETCHED: &str = "unfetched:";
const UNDECRYPTED: &str = "undecrypted:";

/// The failure counts on record for one folder's messages ([`strike`]): which messages the
/// server did not send before (and which of those are passed over), and the keys to remove
/// once a message is stored.
struct Strikes {
    /// UID → its keys (the count and its `:since` and `:last` stamps, both kinds).
    keys: BTreeMap<u32, Vec<String>>,
    /// UIDs the server did not send in an earlier pass → their failed passes so far.
    unfetched: BTreeMap<u32, i64>,
    /// Of those, the ones given up: passed over, not fetched again.
    given_up: std::collections::BTreeSet<u32>,
}

impl Strikes {
    async fn load(
        store: &Store,
        account: AccountId,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Strikes, SyncError> {
        let store = store.clone();
        let tail = format!("{account}:{folder}:{uidvalidity}:");
        let now = crate::store::unix_now();
        blocking(move || {
            let mut strikes = Strikes {
                keys: BTreeMap::new(),
                unfetched: BTreeMap::new(),
                given_up: Default::default(),
            };
            // UID → (tries, since, last) of the unfetched counts.
            let mut counts: BTreeMap<u32, (i64, i64, i64)> = BTreeMap::new();
            for kind in [UNFETCHED, UNDECRYPTED] {
                let prefix = format!("{kind}{tail}");
                for (key, value) in store.meta_prefixed(&prefix)? {
                    // "{uid}", "{uid}:since" or "{uid}:last" (not a folder whose name goes on
                    // past this one's with a colon).
                    let rest = &key[prefix.len()..];
                    let (uid, stamp) = rest.split_once(':').unwrap_or((rest, ""));
                    let Ok(uid) = uid.parse::<u32>() else {
                        continue;
                    };
                    if kind == UNFETCHED {
                        let count = counts.entry(uid).or_default();
                        match stamp {
                            "" => count.0 = value,
                            "since" => count.1 = value,
                            "last" => count.2 = value,
                            _ => continue,
                        }
                    } else if !matches!(stamp, "" | "since" | "last") {
                        continue;
                    }
                    strikes.keys.entry(uid).or_default().push(key);
                }
            }
            for (uid, (tries, since, last)) in counts {
                strikes.unfetched.insert(uid, tries);
                if given_up(tries, since, last, now) {
                    strikes.given_up.insert(uid);
                }
            }
            Ok::<_, StoreError>(strikes)
        })
        .await?
        .map_err(SyncError::from)
    }

    /// Messages below the folder's mark `next_uid` that the server did not send, passed over
    /// more than a day ago: to be asked for again.
    fn retries(&self, next_uid: u32) -> impl Iterator<Item = u32> + '_ {
        self.unfetched
            .iter()
            .filter(move |(uid, tries)| {
                **uid < next_uid && **tries >= FETCH_TRIES && !self.given_up(**uid)
            })
            .map(|(uid, _)| *uid)
    }

    fn retry_due(&self, next_uid: u32) -> bool {
        self.retries(next_uid).next().is_some()
    }

    /// The failed passes of a message the server did not send before; None if it never failed.
    fn broke_on(&self, uid: u32) -> Option<i64> {
        self.unfetched.get(&uid).copied()
    }

    fn given_up(&self, uid: u32) -> bool {
        self.given_up.contains(&uid)
    }

    /// Forgets the counts of messages now stored.
    async fn clear(&self, store: &Store, stored: &[u32]) -> Result<(), SyncError> {
        let keys: Vec<String> = stored
            .iter()
            .filter_map(|uid| self.keys.get(uid))
            .flatten()
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let store = store.clone();
        blocking(move || store.delete_meta(&keys)).await??;
        Ok(())
    }
}

/// How long a failure count ([`strike`]) or a retry's deadline mark is kept after its last
/// failure. Both mean nothing after a day (a streak ends, the retry is due again); kept a
/// while longer for `sealpost` readers of the store, then forgotten, so that the counts of
/// messages that went away (expunged upstream, a UIDVALIDITY that changed, a delivery the
/// MTA gave up) do not pile up.
const STALE_COUNT_SECS: i64 = 7 * 86_400;

/// The prefixes of failure counts in the store's meta table: each count is `KEY`,
/// `KEY:since` and `KEY:last`.
const COUNT_PREFIXES: [&str; 4] = [
    UNFETCHED,
    UNDECRYPTED,
    maildir::STRUCK_PREFIX,
    crate::incoming::DELIVER_STRUCK_PREFIX,
];

/// Forgets failure counts whose last failure is older than [`STALE_COUNT_SECS`], and the
/// retry's deadline marks as old.
fn purge_stale_counts(store: &Store, now: i64) -> Result<(), StoreError> {
    let before = now - STALE_COUNT_SECS;
    let mut stale = Vec::new();
    for prefix in COUNT_PREFIXES {
        for (key, last) in store.meta_prefixed(prefix)? {
            if let Some(base) = key.strip_suffix(":last").filter(|_| last < before) {
                stale.push(base.to_string());
                stale.push(format!("{base}:since"));
                stale.push(key);
            }
        }
    }
    for (key, at) in store.meta_prefixed(RETRY_DEADLINE)? {
        if at < before {
            stale.push(key);
        }
    }
    if !stale.is_empty() {
        tracing::info!("{} stale failure count entries forgotten", stale.len());
        store.delete_meta(&stale)?;
    }
    Ok(())
}

/// The mark of a message the retry of undecryptable messages found GnuPG slow on:
/// `retry-deadline:{mailbox}:{uid}`, the time.
const RETRY_DEADLINE: &str = "retry-deadline:";

/// A count ([`strike`]) that has given up: [`FETCH_TRIES`] failed passes spanning
/// [`FETCH_GIVE_UP_SECS`], the last one less than a day ago (a streak).
fn given_up(tries: i64, since: i64, last: i64, now: i64) -> bool {
    tries >= FETCH_TRIES && now - since >= FETCH_GIVE_UP_SECS && now - last < 86_400
}

/// One more failed pass for whatever `key` names (in the store's meta table).
pub(crate) struct Strike {
    pub tries: i64,
    pub since: i64,
    /// [`FETCH_TRIES`] passes spanning [`FETCH_GIVE_UP_SECS`]: stop trying.
    pub give_up: bool,
}

/// Counts one more failed pass under `key`. A streak: a failure more than a day after the one
/// before starts counting again. Given up only after several passes over some time, so that
/// an outage of a few minutes (the daemon may pass often) gives up on nothing.
pub(crate) async fn strike(store: &Store, key: String) -> Result<Strike, SyncError> {
    strike_over(store, key, FETCH_GIVE_UP_SECS).await
}

/// [`strike`] for a message the server did not send. One `retried` (asked for again a day
/// after it was passed over) goes on with its streak, however long ago the last failure was,
/// so that failing again it is passed over again at once instead of holding the folder for
/// another hour of passes.
async fn strike_unfetched(store: &Store, key: String, retried: bool) -> Result<Strike, SyncError> {
    count_strike(store, key, FETCH_GIVE_UP_SECS, retried).await
}

/// [`strike`], giving up after [`FETCH_TRIES`] passes spanning `span` seconds.
pub(crate) async fn strike_over(
    store: &Store,
    key: String,
    span: i64,
) -> Result<Strike, SyncError> {
    count_strike(store, key, span, false).await
}

async fn count_strike(
    store: &Store,
    key: String,
    span: i64,
    continued: bool,
) -> Result<Strike, SyncError> {
    let now = crate::store::unix_now();
    let store = store.clone();
    blocking(move || {
        let since_key = format!("{key}:since");
        let last_key = format!("{key}:last");
        let (tries, since) = match (
            store.meta(&key)?,
            store.meta(&since_key)?,
            store.meta(&last_key)?,
        ) {
            (Some(t), Some(s), Some(l)) if continued || now - l < 86_400 => (t + 1, s),
            _ => (1, now),
        };
        let give_up = tries >= FETCH_TRIES && now - since >= span;
        // Also once given up: it stays given up while it keeps failing, day after day.
        store.set_meta(&key, tries)?;
        store.set_meta(&since_key, since)?;
        store.set_meta(&last_key, now)?;
        Ok::<_, StoreError>(Strike {
            tries,
            since,
            give_up,
        })
    })
    .await?
    .map_err(SyncError::from)
}

/// The upstream flags that carry over, from their names as the server wrote them: system
/// flags but \Recent, and keywords but sealpost's own verdict keywords (whoever can set flags
/// upstream could make a message look signed).
fn flags_named(names: &[String]) -> Flags {
    Flags::new(names.iter().filter_map(|name| {
        let system = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];
        if let Some(flag) = system.iter().find(|f| f.eq_ignore_ascii_case(name)) {
            return Some(flag.to_string());
        }
        // \Recent and anything else with a backslash is the server's own; sealpost's keywords
        // are for sealpost alone.
        (!name.starts_with('\\') && !crate::store::is_local_keyword(name)).then(|| name.clone())
    }))
}

async fn within<T, E: Into<SyncError>>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SyncError> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(SyncError::Connect(
            "command".into(),
            format!("no answer within {} s", limit.as_secs()),
        )),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Task(e.to_string()))
}

/// Progress of a big first sync on a terminal (counts and rate); silent otherwise (systemd).
struct Progress {
    mailbox: String,
    total: usize,
    started: Instant,
    terminal: bool,
}

impl Progress {
    fn new(mailbox: &str, total: usize) -> Progress {
        Progress {
            mailbox: mailbox.to_string(),
            total,
            started: Instant::now(),
            terminal: total >= BATCH && std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, done: usize) {
        if self.terminal {
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r{}: {done}/{} messages ({rate:.0}/s)  ",
                self.mailbox, self.total
            );
        }
    }

    fn finish(&self, done: usize) {
        if self.terminal && done > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_given_once_per_process() {
        let told = Told::default();
        assert!(told.first("upstream folder \"a\" left out: x"));
        assert!(!told.first("upstream folder \"a\" left out: x"));
        // Another folder, or the same for another reason, is news.
        assert!(told.first("upstream folder \"b\" left out: x"));
        assert!(told.first("upstream folder \"a\" left out: y"));
    }

    #[test]
    fn failure_counts_a_week_old_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let now = 10 * 86_400 * 365;
        let old = now - STALE_COUNT_SECS - 1;
        let recent = now - 86_400;
        let count = |base: &str, last: i64| {
            store.set_meta(base, 3).unwrap();
            store
                .set_meta(&format!("{base}:since"), last - 100)
                .unwrap();
            store.set_meta(&format!("{base}:last"), last).unwrap();
        };
        count("unfetched:1:INBOX:7:12", old);
        count("undecrypted:1:INBOX:7:13", recent);
        count("deliver-undecrypted:alice:00ff", old);
        count("undecrypted-file:1:INBOX:1700.M1.host", old);
        store.set_meta("retry-deadline:1:5", old).unwrap();
        store.set_meta("retry-deadline:1:6", recent).unwrap();
        store.set_meta("undecryptable-tried-at:1", old).unwrap();
        purge_stale_counts(&store, now).unwrap();
        let left: Vec<String> = store
            .meta_prefixed("")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with("schema"))
            .collect();
        assert_eq!(
            left,
            [
                "retry-deadline:1:6",
                "undecryptable-tried-at:1",
                "undecrypted:1:INBOX:7:13",
                "undecrypted:1:INBOX:7:13:last",
                "undecrypted:1:INBOX:7:13:since",
            ]
        );
    }

    /// A message stored undecryptable while the keyring changed makes the next retry due,
    /// also when a retry that had listed the messages before it records its try after it
    /// (review: deliver deleted the last try's record, the running retry wrote it again,
    /// and the message waited a day).
    #[test]
    fn a_retry_recorded_late_leaves_the_next_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let (account, now, state) = (1, 1_800_000_000, 42);
        let mark = |store: &Store| RetryMark {
            state,
            stored: store.meta(&stored_key(account)).unwrap(),
        };
        // A retry reads its mark and lists the messages; deliver stores one and says so.
        let listed = mark(&store);
        store.bump_meta(&stored_key(account)).unwrap();
        record_retry_with(&store, account, &listed, now).unwrap();
        assert!(retry_due_with(&store, account, &mark(&store), now + 1).unwrap());
        // The next retry, which saw that message, records it: nothing is due until the
        // keyring changes, another such message comes, or a day passes.
        record_retry_with(&store, account, &mark(&store), now + 1).unwrap();
        assert!(!retry_due_with(&store, account, &mark(&store), now + 2).unwrap());
        let other_keyring = RetryMark {
            state: state + 1,
            ..mark(&store)
        };
        assert!(retry_due_with(&store, account, &other_keyring, now + 2).unwrap());
        let a_day_later = now + 1 + RETRY_UNDECRYPTABLE_SECS;
        assert!(retry_due_with(&store, account, &mark(&store), a_day_later).unwrap());
        // Another account's count is its own.
        store.bump_meta(&stored_key(account + 1)).unwrap();
        assert!(!retry_due_with(&store, account, &mark(&store), now + 2).unwrap());
    }

    /// One retry waits per account, and the lock files a root process makes are the store
    /// owner's (review: bob's retry was turned away by alice's; a lock made by root's
    /// deliver locked the owner out of every later retry).
    #[tokio::test]
    async fn retry_locks_are_per_account_and_the_store_owners() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path).unwrap();
        let alice = try_retry_wait(&store, 1).await.unwrap();
        assert!(alice.is_some());
        assert!(try_retry_wait(&store, 1).await.unwrap().is_none());
        assert!(try_retry_wait(&store, 2).await.unwrap().is_some());
        drop(alice);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // giving files to another user needs root
        }
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        drop(sync_lock(&store).await.unwrap());
        drop(try_retry_wait(&store, 1).await.unwrap());
        for lock in ["sync-lock", "retry-lock.1"] {
            let meta = std::fs::metadata(dir.path().join(format!("s.sqlite.{lock}"))).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{lock}");
        }
    }

    #[test]
    fn batches_follow_count_and_bytes() {
        let small: Vec<(u32, u32)> = (1..=120).map(|u| (u, 1000)).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.uids.len()).collect();
        assert_eq!(sizes, [50, 50, 20]);
        let mb = 1024 * 1024;
        let big = [(1, 10 * mb), (2, 10 * mb), (3, 40 * mb), (4, 1)];
        let uids: Vec<Vec<u32>> = batches(&big).into_iter().map(|b| b.uids).collect();
        assert_eq!(uids, [vec![1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn flags_from_the_server_keep_system_flags_and_foreign_keywords() {
        let names: Vec<String> = ["\\SEEN", "\\Recent", "$Label1", "$sealpost-signed", "\\X"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flags_named(&names), Flags::new(["\\Seen", "$Label1"]));
    }
}
