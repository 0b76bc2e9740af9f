//! The local message store (SQLite through rusqlite).
//!
//! Immutable content is kept once per SHA-256 with its exact bytes and with what IMAP needs of
//! it (ENVELOPE, BODY, BODYSTRUCTURE, part offsets), computed once at insert. Mutable state
//! lives per mailbox: UID, flags and keywords, MODSEQ, INTERNALDATE. Expunges leave tombstones
//! for QRESYNC, and changes made by IMAP clients are journaled for the sync side to write back.
//!
//! One writer connection (behind a mutex, so writes are serialised) and a pool of readers; WAL
//! lets readers go on while the writer commits. `synchronous=FULL`: a message acknowledged to
//! a client survives a crash or power loss. Every method blocks: async callers use
//! `spawn_blocking`. Every committed write bumps a change counter that sessions watch (IDLE).

mod import;
mod schema;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::watch;

use crate::imap::summary::{summarize, PartMap, PartMapError};

pub(crate) use import::info_separator;
pub use import::{
    crlf, import_path, import_path_until, into_crlf, maildir_flags, ImportError, ImportReport,
    Skipped,
};
pub(crate) use import::{days_from_civil, MONTHS};
use sync::journal;
pub use sync::{
    holds_delimiter, is_local_keyword, EntryNow, JournalEntry, SyncFolder, UpstreamRef,
    WrittenBack, HELD_BACK, LOCAL_KEYWORD_PREFIX, UNSEEN_BEFORE_DELETE,
};
pub(crate) use sync::{Fetch, FollowedRename};

pub type AccountId = i64;
pub type MailboxId = i64;

/// Mailboxes every account gets, with their RFC 6154 special-use attribute.
pub const DEFAULT_MAILBOXES: [(&str, Option<SpecialUse>); 6] = [
    ("INBOX", None),
    ("Drafts", Some(SpecialUse::Drafts)),
    ("Sent", Some(SpecialUse::Sent)),
    ("Trash", Some(SpecialUse::Trash)),
    ("Junk", Some(SpecialUse::Junk)),
    ("Archive", Some(SpecialUse::Archive)),
];

impl From<rusqlite::Error> for StoreError {
    fn from(source: rusqlite::Error) -> Self {
        StoreError::Sql { path: None, source }
    }
}

impl StoreError {
    /// Whether trying again later may succeed: the store locked by another process past the
    /// busy timeout, or its disk full (SQLite says "disk I/O error" when it cannot grow the
    /// -shm file there).
    pub fn is_temporary(&self) -> bool {
        use rusqlite::ErrorCode as C;
        let source = match self {
            StoreError::Open { source, .. } | StoreError::Sql { source, .. } => source,
            _ => return false,
        };
        matches!(
            source,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    C::DatabaseBusy | C::DatabaseLocked | C::DiskFull | C::SystemIoFailure
                )
        )
    }

    /// An SQLite error that does not name its store yet names `path`.
    fn in_store(self, path: &Path) -> StoreError {
        match self {
            StoreError::Sql { path: None, source } => StoreError::Sql {
                path: Some(path.to_owned()),
                source,
            },
            other => other,
        }
    }
}

/// The hierarchy delimiter of every mailbox name (RFC 3501 §5.1.1).
pub const DELIMITER: char = '/';

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "cannot open the store {path}: {source}{}",
        file_system_trouble(path, source)
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot migrate the store {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: rusqlite_migration::Error,
    },
    /// SQLite failed on a store already open; `path` is the store's, filled in where the
    /// error leaves the store (its read and write paths), so that a log line names the file.
    #[error(
        "store{}: {source}{}",
        path.as_deref().map_or(String::new(), |p| format!(" {}", p.display())),
        path.as_deref().map_or(String::new(), |p| file_system_trouble(p, source))
    )]
    Sql {
        path: Option<PathBuf>,
        source: rusqlite::Error,
    },
    #[error("store: damaged part map: {0}")]
    PartMap(#[from] PartMapError),
    #[error("no such account {0:?}")]
    NoAccount(String),
    #[error("no such mailbox {0:?}")]
    NoMailbox(String),
    #[error("mailbox {0:?} already exists")]
    MailboxExists(String),
    #[error("mailbox {0:?} has child mailboxes; delete them first")]
    HasChildren(String),
    #[error("INBOX cannot be deleted")]
    InboxDelete,
    #[error("mailbox {0:?} cannot be renamed under itself")]
    RenameUnderItself(String),
    #[error("mailbox {0:?} has used up its 32-bit UID space")]
    UidsExhausted(String),
    #[error("a message may have at most {MAX_KEYWORDS} keywords")]
    TooManyKeywords,
    #[error("store: the writer lock was poisoned by a crash in another thread")]
    Poisoned,
    /// A directory or file mode or owner that would let another user at the decrypted mail,
    /// or a file that is no store: a setting to fix.
    #[error("the store {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
}

/// The most keywords a client may give one message (sealpost's own verdict keywords and the
/// system flags not counted).
pub const MAX_KEYWORDS: usize = 128;

fn keywords_of(flags: &Flags) -> usize {
    flags
        .iter()
        .filter(|f| !f.starts_with('\\') && !is_local_keyword(f))
        .count()
}

/// RFC 6154 special-use attributes sealpost creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialUse {
    Drafts,
    Sent,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    fn parse(text: &str) -> Option<SpecialUse> {
        DEFAULT_MAILBOXES
            .iter()
            .filter_map(|(_, use_)| *use_)
            .find(|u| u.attribute().eq_ignore_ascii_case(text))
    }
}

#[derive(Debug, Clone)]
pub struct Mailbox {
    pub id: MailboxId,
    pub account: AccountId,
    /// The name in UTF-8; the IMAP layer converts to and from modified UTF-7.
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub special_use: Option<SpecialUse>,
    pub subscribed: bool,
}

/// Where a change came from: client changes are journaled for write-back upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Sync,
}

/// INTERNALDATE (RFC 3501 §2.3.3) with the zone it was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalDate {
    pub unix: i64,
    pub tz_minutes: i32,
}

impl InternalDate {
    pub fn now() -> InternalDate {
        InternalDate {
            unix: unix_now(),
            tz_minutes: 0,
        }
    }
}

/// A message's flags and keywords, kept in the order first set, unique case-insensitively
/// (RFC 3501 §2.3.2: flags are case-insensitive). Held as the space-separated column text, so
/// reading a message's flags is one allocation (none when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(String);

impl Flags {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(flags: I) -> Flags {
        let mut out = Flags::default();
        out.extend(flags.into_iter().map(Into::into));
        out
    }

    /// [`Flags::insert`] of each, in time linear in their number (review: one at a time, each
    /// compared with all before it, a message with 25,000 keywords upstream took 32 s).
    fn extend(&mut self, flags: impl Iterator<Item = String>) {
        let mut seen: std::collections::HashSet<String> =
            self.iter().map(str::to_ascii_lowercase).collect();
        for flag in flags {
            if flag.is_empty()
                || flag.contains(' ')
                || flag.eq_ignore_ascii_case("\\Recent")
                || !seen.insert(flag.to_ascii_lowercase())
            {
                continue;
            }
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(&canonical_flag(flag));
        }
    }

    fn from_column(text: &str) -> Flags {
        // The store writes the column in this form; anything else is normalised.
        if text.split(' ').all(|f| !f.is_empty()) || text.is_empty() {
            Flags(text.to_owned())
        } else {
            Flags(
                text.split(' ')
                    .filter(|f| !f.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
    }

    fn to_column(&self) -> String {
        self.0.clone()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ').filter(|f| !f.is_empty())
    }

    pub fn contains(&self, flag: &str) -> bool {
        self.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    pub fn insert(&mut self, flag: String) {
        // \Recent is session state, never stored (RFC 3501 §2.3.2). Flag atoms cannot contain
        // spaces (RFC 3501 atom-specials); the IMAP parser has rejected any that do.
        if flag.is_empty()
            || flag.contains(' ')
            || self.contains(&flag)
            || flag.eq_ignore_ascii_case("\\Recent")
        {
            return;
        }
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(&canonical_flag(flag));
    }

    pub fn remove(&mut self, flag: &str) {
        if self.contains(flag) {
            let kept: Vec<&str> = self
                .iter()
                .filter(|f| !f.eq_ignore_ascii_case(flag))
                .collect();
            self.0 = kept.join(" ");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// [`Flags::apply`] with the flags `kept` selects left as they are: neither added, removed
    /// nor replaced.
    pub fn apply_keeping(&mut self, op: FlagOp, flags: &Flags, kept: fn(&str) -> bool) -> bool {
        let ours: Vec<String> = self.iter().filter(|f| kept(f)).map(str::to_owned).collect();
        let theirs = Flags::new(flags.iter().filter(|f| !kept(f)).map(str::to_owned));
        let before = self.as_set();
        self.apply(op, &theirs);
        self.extend(ours.into_iter());
        before != self.as_set()
    }

    /// Applies a STORE operation; true when anything changed.
    pub fn apply(&mut self, op: FlagOp, flags: &Flags) -> bool {
        let before = self.as_set();
        match op {
            FlagOp::Add => self.extend(flags.iter().map(str::to_owned)),
            FlagOp::Remove => {
                let gone: std::collections::HashSet<String> =
                    flags.iter().map(str::to_ascii_lowercase).collect();
                if self.iter().any(|f| gone.contains(&f.to_ascii_lowercase())) {
                    let kept: Vec<&str> = self
                        .iter()
                        .filter(|f| !gone.contains(&f.to_ascii_lowercase()))
                        .collect();
                    self.0 = kept.join(" ");
                }
            }
            FlagOp::Replace => *self = flags.clone(),
        }
        before != self.as_set()
    }

    /// The flags as a set: lower case (flags and keywords are compared so), sorted.
    fn as_set(&self) -> Vec<String> {
        let mut v: Vec<String> = self.iter().map(str::to_ascii_lowercase).collect();
        v.sort();
        v
    }
}

/// System flags are written in their RFC 3501 spelling whatever case the client used.
fn canonical_flag(flag: String) -> String {
    const SYSTEM: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];
    SYSTEM
        .iter()
        .find(|s| s.eq_ignore_ascii_case(&flag))
        .map_or(flag, |s| (*s).to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    Replace,
}

/// One message's mutable state in one mailbox.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub uid: u32,
    pub content: i64,
    pub flags: Flags,
    pub modseq: u64,
    pub internaldate: InternalDate,
    pub size: u32,
}

/// Which parts of a message's content a FETCH or SEARCH needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Need {
    /// Only UID, flags and MODSEQ are wanted: the content id, INTERNALDATE and size read as
    /// 0 (a FLAGS fetch of a whole mailbox, the commonest resync, reads nothing else).
    pub lean: bool,
    pub raw: bool,
    pub header: bool,
    pub envelope: bool,
    pub body: bool,
    pub bodystructure: bool,
    pub parts: bool,
}

/// The content columns asked for in a [`Need`]; the others are empty.
#[derive(Debug, Clone, Default)]
pub struct ContentData {
    /// Shared with the responses that pass it on (see [`crate::imap::render::Chunk`]).
    pub raw: std::sync::Arc<Vec<u8>>,
    pub header: Vec<u8>,
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
    pub bodystructure: Vec<u8>,
    pub parts: Option<PartMap>,
}

/// What [`Store::fetch_batch`] read: messages in UID order, and the UID up to which the asked
/// set was covered (the last one asked for, unless the byte budget stopped it early).
#[derive(Debug, Default)]
pub struct FetchBatch {
    pub items: Vec<(MessageRow, ContentData)>,
    pub through: u32,
}

/// What a session needs to catch up with other sessions' changes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Messages changed or added after the given MODSEQ, in UID order.
    pub rows: Vec<(u32, Flags, u64)>,
    /// UIDs expunged after the given MODSEQ, ascending.
    pub expunged: Vec<u32>,
    pub highestmodseq: u64,
    pub uidnext: u32,
}

#[derive(Debug, Clone, Default)]
pub struct MailboxStatus {
    pub messages: u32,
    pub recent: u32,
    pub unseen: u32,
    pub uidnext: u32,
    pub uidvalidity: u32,
    pub highestmodseq: u64,
    pub size: u64,
    /// Messages with \\Deleted (RFC 9051 STATUS DELETED).
    pub deleted: u32,
    pub keywords: Vec<String>,
}

impl MailboxStatus {
    /// Adds the keywords of one message's flag column and counts it when it has \\Deleted;
    /// true when it has \\Seen.
    fn count_flags(&mut self, column: &str) -> bool {
        let mut seen = false;
        for flag in column.split(' ').filter(|f| !f.is_empty()) {
            if flag.starts_with('\\') {
                seen |= flag.eq_ignore_ascii_case("\\Seen");
                if flag.eq_ignore_ascii_case("\\Deleted") {
                    self.deleted += 1;
                }
            } else if !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(flag)) {
                self.keywords.push(flag.to_owned());
            }
        }
        seen
    }
}

/// A mailbox as SELECT opens it (see [`Store::select_view`]).
#[derive(Debug, Clone, Default)]
pub struct SelectView {
    pub uids: Vec<u32>,
    pub status: MailboxStatus,
    pub first_unseen: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub uid: u32,
    pub uidvalidity: u32,
    pub modseq: u64,
    /// A synced message that was already here (same content) and was linked, not stored.
    pub linked: bool,
}

/// The outcome of a STORE.
#[derive(Debug, Default)]
pub struct Stored {
    /// Every message the STORE applied to, changed or not: (uid, flags, modseq, changed).
    pub rows: Vec<(u32, Flags, u64, bool)>,
    /// Each row's MODSEQ before this STORE, in the same order.
    pub prior_modseq: Vec<u64>,
    /// Messages left alone because their MODSEQ was above UNCHANGEDSINCE (RFC 7162 §3.1.3).
    pub modified: Vec<u32>,
}

/// Where a batch of synced messages came from: an upstream folder under one UIDVALIDITY, one
/// upstream UID per message, and the next UID to fetch once the batch is stored.
#[derive(Debug, Clone)]
pub struct SyncMark {
    pub folder: String,
    pub uidvalidity: u32,
    pub uids: Vec<u32>,
    /// SHA-256 of each message as the server sent it, parallel to `uids` (empty: not known).
    pub upstream: Vec<[u8; 32]>,
    pub next_uid: u32,
}

/// A message prepared for insertion: hashed and summarised outside the writer lock.
pub struct Prepared {
    sha256: [u8; 32],
    raw: Vec<u8>,
    flags: Flags,
    internaldate: InternalDate,
}

impl Prepared {
    pub fn new(raw: Vec<u8>, flags: Flags, internaldate: InternalDate) -> Prepared {
        Prepared {
            sha256: Sha256::digest(&raw).into(),
            raw,
            flags,
            internaldate,
        }
    }
}

/// The SHA-256 of a message without sealpost's verdict field (removed from every APPEND) and
/// mbsync's `X-TUID` field (added to every message it carries): the same for a stored message
/// and for what a client that fetched it stores again, as mbsync does to move a message.
fn carried_sha256(raw: &[u8]) -> [u8; 32] {
    let (header, body) = crate::inbound::split(raw);
    let header = crate::inbound::strip_field(
        &crate::inbound::strip_field(header, crate::inbound::VERDICT_FIELD),
        "X-TUID",
    );
    // NUL counts as 0x80: FETCH sends it so (a literal holds no NUL), and a client stores
    // again what it fetched (review: a decrypted message with a NUL was not recognised).
    let mut hash = Sha256::new();
    for part in [&header[..], body] {
        for (i, run) in part.split(|&b| b == 0).enumerate() {
            if i > 0 {
                hash.update([0x80]);
            }
            hash.update(run);
        }
    }
    hash.finalize().into()
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    changed: watch::Sender<u64>,
    /// Started by the first `watch()`: notices commits made by other processes.
    watcher: std::sync::Once,
}

/// The directory a database file `path` is in ("." for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A database root has just made in another user's directory (a first `deliver` run as
/// root, say) is given to that user, who owns the store: left root's, every later run as the
/// owner was refused (review: all mail deferred, then bounced). SQLite, run by root, gives
/// the -wal and -shm files the database's owner.
fn given_to_directory_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if crate::queue::current_uid() != 0 {
        return Ok(());
    }
    let dir = directory_of(path);
    let owner = std::fs::metadata(dir)?;
    if owner.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
}

/// Why the store at `path` may not live in its directory: any user may write to it.
pub fn directory_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = directory_of(path);
    let meta = std::fs::metadata(dir).ok()?;
    (meta.mode() & 0o002 != 0).then(|| {
        format!(
            "its directory {} may be written by any user (mode {:04o}): another could put \
             files beside the database that SQLite writes decrypted mail into; give the store \
             a directory of its own",
            dir.display(),
            meta.mode() & 0o7777
        )
    })
}

/// Refuses a store others could read or slip files into, as the queue refuses its own
/// (review: a -wal and -shm another user had made, mode 0666, in a directory anyone may write
/// to were taken over, and that user read the decrypted mail in the -wal): a directory any
/// user may write to, a database that belongs neither to the running user nor to its
/// directory's owner, and a -wal or -shm not owned by the database's owner. A database,
/// -wal or -shm that others may read, its owner's (or opened by root), is made 0600.
fn check_modes(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let unsafe_because = |why: String| StoreError::Unsafe {
        path: path.to_owned(),
        why,
    };
    let dir = directory_of(path);
    let dir_meta = std::fs::metadata(dir).ok();
    if let Some(why) = directory_problem(path) {
        return Err(unsafe_because(why));
    }
    let Ok(database) = std::fs::metadata(path) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    // In a directory its group may write to, another member could have put a database of
    // their own in the store's place, which root would fill with decrypted mail (the checks
    // below only compare the files with the database).
    if let Some(dir_meta) = &dir_meta {
        if database.uid() != me && database.uid() != dir_meta.uid() {
            return Err(unsafe_because(format!(
                "it belongs to uid {}, neither to the user running sealpost (uid {me}) nor to \
                 the owner of its directory (uid {}): remove it if it is no store of theirs",
                database.uid(),
                dir_meta.uid()
            )));
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        // Never followed: a link the store's owner put there would have root's chmod below
        // change any file it names (review: /etc files made 0600 by a root deliver).
        if !meta.file_type().is_file() {
            return Err(unsafe_because(format!(
                "{} is no regular file (a symbolic link?): remove it if no sealpost is running",
                file.display()
            )));
        }
        if meta.uid() != database.uid() {
            return Err(unsafe_because(format!(
                "{} belongs to uid {}, the database to uid {}: remove it if no sealpost is \
                 running",
                file.display(),
                meta.uid(),
                database.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            if me != 0 && me != meta.uid() {
                return Err(unsafe_because(format!(
                    "{} may be read by others (mode {:04o})",
                    file.display(),
                    meta.mode() & 0o7777
                )));
            }
            tracing::warn!(
                "{}: others could read it (mode {:04o}): made the owner's alone (0600)",
                file.display(),
                meta.mode() & 0o7777
            );
            // On the file itself, opened without following a link made meanwhile.
            let cannot = |e: std::io::Error| {
                unsafe_because(format!("{}: cannot make it 0600: {e}", file.display()))
            };
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&file)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
                .map_err(cannot)?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date. The
    /// store holds decrypted mail: a directory it creates is the owner's alone (0700), and so
    /// is a new database (0600; SQLite gives its -wal and -shm files the database's mode),
    /// whatever the umask of the process that first opens it (`deliver` under an MTA's 022).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, true)
    }

    /// Opens the store at `path` only if its database exists: neither its directory nor the
    /// database is made. For work that has nothing to do in a store that is gone (a
    /// background retry after a delivery; in the tests, a directory removed meanwhile came
    /// back).
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let failed = |what: &Path, e: std::io::Error| StoreError::Open {
            path: path.to_owned(),
            source: rusqlite::Error::InvalidPath(PathBuf::from(format!("{}: {e}", what.display()))),
        };
        // A store path that is a symbolic link (to a store on another disk, say) is made,
        // checked and guarded where it leads, where SQLite puts its -wal and -shm (review:
        // the link's own directory was checked instead, and a link to nothing had its
        // database made with the umask's mode).
        let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let real = if linked {
            std::fs::canonicalize(path).map_err(|e| failed(path, e))?
        } else {
            path.to_owned()
        };
        let path = real.as_path();
        if !create {
            // The database must be there; its directory, if gone, is not made again.
            std::fs::File::open(path).map_err(|e| failed(path, e))?;
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| failed(dir, e))?;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {
                    // A file system that refuses chown (NFS with root_squash, vfat) leaves it
                    // root's, as before (review): root's run goes on.
                    if let Err(e) = given_to_directory_owner(path) {
                        tracing::warn!(
                            "{}: made by root, and cannot be given to its directory's owner: \
                             {e}",
                            path.display()
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(path, e)),
            }
        }
        if let Some(why) = not_a_database(path) {
            return Err(StoreError::Unsafe {
                path: path.to_owned(),
                why,
            });
        }
        check_modes(path)?;
        // After the modes (no connection opens it before its -wal and -shm are known to be its
        // owner's), with a connection that changes nothing (the store's own sets WAL mode);
        // one that cannot read it leaves the verdict to the store's own opening.
        if let Some(why) = another_programs_database(path) {
            return Err(StoreError::Unsafe {
                path: path.to_owned(),
                why,
            });
        }
        // One process at a time brings the schema up to date: two `deliver`s into a new store
        // would both find it empty and the second fail on tables the first made. The lock is
        // a file of its own: closing any descriptor of the database file would drop SQLite's
        // own (fcntl) locks on it.
        // Readable by all (it holds nothing; the store's directory is private): made by root,
        // the store's owner can still open it, and flock(2) needs no write access.
        let lock_path = PathBuf::from(format!("{}.migrate-lock", path.display()));
        let lock = match std::fs::File::open(&lock_path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::PermissionsExt;
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&lock_path)
                    .map_err(|e| failed(&lock_path, e))?;
                made.set_permissions(std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| failed(&lock_path, e))?;
                made
            }
            Err(e) => return Err(failed(&lock_path, e)),
        };
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(failed(&lock_path, std::io::Error::last_os_error()));
            }
        }
        let mut writer = open_connection(path, false)?;
        schema::migrations()
            .to_latest(&mut writer)
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        drop(lock);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                changed: watch::channel(0).0,
                watcher: std::sync::Once::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A receiver that sees a new value after every committed write.
    /// Commits by other processes (`sealpost deliver`, `sealpost sync`, `sealpost import`)
    /// count too: they are noticed within half a second.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner
            .watcher
            .call_once(|| self.watch_other_processes());
        self.inner.changed.subscribe()
    }

    /// A thread with its own connection polls `PRAGMA data_version`, which changes when
    /// another connection commits (sqlite.org/pragma.html#pragma_data_version); it ends with
    /// the store.
    fn watch_other_processes(&self) {
        let inner = Arc::downgrade(&self.inner);
        let Ok(conn) = open_connection(&self.inner.path, true) else {
            return;
        };
        let version = |c: &Connection| {
            c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .ok()
        };
        let mut last = version(&conn);
        let spawned = std::thread::Builder::new()
            .name("store-watch".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                let Some(inner) = inner.upgrade() else { return };
                let now = version(&conn);
                if now != last {
                    last = now;
                    inner.changed.send_modify(|n| *n += 1);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("store: cannot watch for other processes' commits: {e}");
        }
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.inner.writer.lock().map_err(|_| StoreError::Poisoned)
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .inner
            .readers
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.inner.path, true)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.inner.readers.lock() {
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
        result.map_err(|e| e.in_store(&self.inner.path))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let written = || {
            let mut conn = self.writer()?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        let value = written().map_err(|e: StoreError| {
            // What a transaction SQLite failed in wrote stays in the -wal until the log starts
            // over, which takes a checkpoint; a passive one waits for nobody and lets the next
            // write start it over and cut it back (see `wal_mode`). Not after a refusal of
            // the store's own (a mailbox that exists already: clients make Sent at every
            // start), which wrote next to nothing.
            if matches!(e, StoreError::Sql { .. }) {
                if let Ok(conn) = self.writer() {
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            }
            e.in_store(&self.inner.path)
        })?;
        self.notify();
        Ok(value)
    }

    // ---- accounts and mailboxes ----

    /// The account's id, creating it with the default mailboxes when it does not exist yet.
    pub fn ensure_account(&self, name: &str) -> Result<AccountId, StoreError> {
        if let Some(id) = self.account(name)? {
            return Ok(id);
        }
        self.write(|tx| {
            tx.execute("INSERT OR IGNORE INTO accounts (name) VALUES (?1)", [name])?;
            let id: AccountId =
                tx.query_row("SELECT id FROM accounts WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?;
            for (mailbox, special_use) in DEFAULT_MAILBOXES {
                if find_mailbox(tx, id, mailbox)?.is_none() {
                    insert_mailbox(tx, id, mailbox, special_use, true)?;
                }
            }
            Ok(id)
        })
    }

    pub fn account(&self, name: &str) -> Result<Option<AccountId>, StoreError> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT id FROM accounts WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    pub fn mailboxes(&self, account: AccountId) -> Result<Vec<Mailbox>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{MAILBOX_COLUMNS} WHERE account = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map([account], mailbox_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn mailbox(&self, account: AccountId, name: &str) -> Result<Option<Mailbox>, StoreError> {
        self.read(|c| find_mailbox(c, account, name))
    }

    pub fn mailbox_by_id(&self, id: MailboxId) -> Result<Mailbox, StoreError> {
        self.read(|c| {
            c.query_row(
                &format!("{MAILBOX_COLUMNS} WHERE id = ?1"),
                [id],
                mailbox_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoMailbox(format!("#{id}")))
        })
    }

    /// A mailbox made here by sealpost (one the sync found upstream, a delivery's target).
    pub fn create_mailbox(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<Mailbox, StoreError> {
        self.create_with(account, name, special_use, Origin::Sync, false)
    }

    /// A mailbox the sync makes for an upstream folder it fetches. The parents made with it
    /// are marked as placeholders: upstream may have them only as names above the folder
    /// (`\Noselect`, as a client's CREATE of `P.Q` makes `P` in Dovecot), and
    /// [`Store::forget_placeholders`] removes them here once they are empty with nothing
    /// under them and upstream has no folder of their name.
    pub fn create_synced_mailbox(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<Mailbox, StoreError> {
        self.create_with(account, name, None, Origin::Sync, true)
    }

    /// A mailbox a client CREATEs: it and the parents made with it are journaled, so that
    /// the write-back makes them upstream too (other clients see an empty folder as well).
    pub fn create_client_mailbox(
        &self,
        account: AccountId,
        name: &str,
    ) -> Result<Mailbox, StoreError> {
        match self.create_with(account, name, None, Origin::Client, false) {
            // The user wants it: a placeholder of that name is theirs now (review: CREATE
            // answered ALREADYEXISTS, and the placeholder went at the next pass).
            Err(StoreError::MailboxExists(existing)) => {
                self.write(|tx| {
                    if let Some(mailbox) = find_mailbox(tx, account, name)? {
                        unmark_placeholder(tx, account, mailbox.id)?;
                    }
                    Ok(())
                })?;
                Err(StoreError::MailboxExists(existing))
            }
            made => made,
        }
    }

    fn create_with(
        &self,
        account: AccountId,
        name: &str,
        special_use: Option<SpecialUse>,
        origin: Origin,
        placeholders: bool,
    ) -> Result<Mailbox, StoreError> {
        self.write(|tx| {
            if find_mailbox(tx, account, name)?.is_some() {
                return Err(StoreError::MailboxExists(name.to_owned()));
            }
            // A client's CREATE of a default mailbox whose special use no mailbox has now (it
            // was deleted) gives it back: with no CREATE-SPECIAL-USE, nothing else could, and
            // clients that find Junk or Trash by it lost the folder for good (review).
            let special_use = match special_use {
                None if origin == Origin::Client => {
                    let default = DEFAULT_MAILBOXES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .and_then(|(_, u)| *u);
                    match default {
                        Some(u) => {
                            let taken: bool = tx.query_row(
                                "SELECT EXISTS (SELECT 1 FROM mailboxes
                                                WHERE account = ?1 AND special_use = ?2)",
                                params![account, u.attribute()],
                                |r| r.get(0),
                            )?;
                            (!taken).then_some(u)
                        }
                        None => None,
                    }
                }
                given => given,
            };
            let parents = create_parents(tx, account, name)?;
            if placeholders {
                mark_placeholders(tx, account, &parents)?;
            }
            let id = insert_mailbox(tx, account, name, special_use, false)?;
            if origin == Origin::Client {
                for made in parents.iter().map(String::as_str).chain([name]) {
                    journal(tx, account, made, 0, "create-mailbox", "")?;
                }
            }
            tx.query_row(
                &format!("{MAILBOX_COLUMNS} WHERE id = ?1"),
                [id],
                mailbox_from_row,
            )
            .map_err(StoreError::from)
        })
    }

    /// RFC 3501 §6.3.4: a mailbox with inferiors is not deleted (sealpost does not keep
    /// \Noselect placeholders). Its messages go, and its UIDVALIDITY is never used again.
    pub fn delete_mailbox(&self, account: AccountId, name: &str) -> Result<(), StoreError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(StoreError::InboxDelete);
        }
        self.write(|tx| {
            let mailbox = find_mailbox(tx, account, name)?
                .ok_or_else(|| StoreError::NoMailbox(name.to_owned()))?;
            let prefix = format!("{}{DELIMITER}", mailbox.name);
            let children: i64 = tx.query_row(
                "SELECT count(*) FROM mailboxes WHERE account = ?1 AND substr(name, 1, ?2) = ?3",
                // SQLite's substr counts characters, not bytes ("Entwürfe/").
                params![account, prefix.chars().count() as i64, prefix],
                |r| r.get(0),
            )?;
            if children > 0 {
                return Err(StoreError::HasChildren(name.to_owned()));
            }
            // An upload waiting to go up from it that was tried (it may have landed before
            // a crash or a lost answer) keeps the mailbox's UIDVALIDITY, by which the
            // write-back finds that copy and takes it back (`WAITING_UPLOAD_OF`).
            tx.execute(
                "UPDATE journal SET detail = ?3
                 WHERE account = ?1 AND mailbox = ?2 AND kind = 'append' AND detail = ''",
                params![
                    account,
                    mailbox.name,
                    format!("{WAITING_UPLOAD_OF}{}", mailbox.uidvalidity)
                ],
            )?;
            let contents = contents_of(tx, mailbox.id, None)?;
            tx.execute("DELETE FROM messages WHERE mailbox = ?1", [mailbox.id])?;
            tx.execute("DELETE FROM expunged WHERE mailbox = ?1", [mailbox.id])?;
            tx.execute("DELETE FROM mailboxes WHERE id = ?1", [mailbox.id])?;
            collect_garbage(tx, &contents)?;
            // Which mailbox of the name went: the write-back expunges upstream what this one
            // held, not what a later one of the name holds (see `deleted_mailbox`).
            let which = format!("{GONE}{}", mailbox.id);
            journal(tx, account, name, 0, "delete-mailbox", &which)?;
            Ok(())
        })
    }

    /// RFC 3501 §6.3.5: renames the mailbox and its inferiors; renaming INBOX moves its
    /// messages into a new mailbox and leaves INBOX empty.
    pub fn rename_mailbox(
        &self,
        account: AccountId,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let source = find_mailbox(tx, account, from)?
                .ok_or_else(|| StoreError::NoMailbox(from.to_owned()))?;
            if find_mailbox(tx, account, to)?.is_some() {
                return Err(StoreError::MailboxExists(to.to_owned()));
            }
            // `a` into `a/b/c`: its inferiors would be renamed under themselves and lost from
            // the hierarchy. (INBOX's messages move; INBOX itself stays, so it may.)
            if source.name != "INBOX"
                && to
                    .strip_prefix(source.name.as_str())
                    .is_some_and(|rest| rest.starts_with(DELIMITER))
            {
                return Err(StoreError::RenameUnderItself(from.to_owned()));
            }
            let parents = create_parents(tx, account, to)?;
            if source.name == "INBOX" {
                let target = insert_mailbox(tx, account, to, None, false)?;
                let uids: Vec<u32> = {
                    let mut stmt =
                        tx.prepare("SELECT uid FROM messages WHERE mailbox = ?1 ORDER BY uid")?;
                    let rows = stmt.query_map([source.id], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                let target = find_mailbox_id(tx, target)?;
                let pairs = copy_rows(tx, &source, &uids, &target)?;
                expunge_rows(tx, &source, &uids)?;
                // Upstream as it was done here: the new folder made and INBOX's messages moved
                // into it. A RENAME of INBOX upstream is refused by servers that do not move
                // its messages (Dovecot: "Renaming INBOX isn't supported"), and waited in the
                // journal for good, every later change to INBOX behind it (review).
                for made in parents.iter().map(String::as_str).chain([to]) {
                    journal(tx, account, made, 0, "create-mailbox", "")?;
                }
                for (old, new) in &pairs {
                    let detail = format!("{to}\t{new}");
                    journal(tx, account, "INBOX", *old, "move", &detail)?;
                }
                return Ok(());
            } else {
                rename_rows(tx, account, &source, to)?;
                // Named by the user now (review: a placeholder renamed here went at the next
                // pass, its rename refused upstream, where it never was).
                unmark_placeholder(tx, account, source.id)?;
                // Parents the rename made are names only upstream too, where the RENAME makes
                // them `\Noselect` (review: `A` of `RENAME C A/X` stayed here, empty, once A.X
                // went upstream).
                mark_placeholders(tx, account, &parents)?;
            }
            journal(tx, account, from, 0, "rename-mailbox", to)?;
            Ok(())
        })
    }

    pub fn set_subscribed(&self, mailbox: MailboxId, subscribed: bool) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE mailboxes SET subscribed = ?2 WHERE id = ?1",
                params![mailbox, subscribed],
            )?;
            Ok(())
        })
    }

    // ---- messages ----

    /// Stores one message in a mailbox; the content is kept once however many mailboxes
    /// hold it. Returns the new UID once it is durable.
    pub fn append(
        &self,
        mailbox: MailboxId,
        message: Prepared,
        origin: Origin,
    ) -> Result<Appended, StoreError> {
        if origin == Origin::Client && keywords_of(&message.flags) > MAX_KEYWORDS {
            return Err(StoreError::TooManyKeywords);
        }
        Ok(self.append_batch(mailbox, vec![message], origin)?[0])
    }

    /// Stores many messages in one transaction (one fsync), in order.
    pub fn append_batch(
        &self,
        mailbox: MailboxId,
        messages: Vec<Prepared>,
        origin: Origin,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(mailbox, messages, origin, None, None)
    }

    /// Stores messages fetched from an upstream folder, and in the same transaction records
    /// where each came from and how far the folder has been read (`mark.next_uid`). `mark.uids`
    /// holds one upstream UID per message.
    pub fn append_synced(
        &self,
        mailbox: MailboxId,
        messages: Vec<Prepared>,
        mark: &SyncMark,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(mailbox, messages, Origin::Sync, Some(mark), None)
    }

    /// Stores messages read from a Maildir source, and in the same transaction links each to
    /// its file's unique name (`names`, one per message) in `folder`.
    pub fn append_files(
        &self,
        mailbox: MailboxId,
        messages: Vec<Prepared>,
        folder: &str,
        names: &[String],
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(mailbox, messages, Origin::Sync, None, Some((folder, names)))
    }

    fn append_with(
        &self,
        mailbox: MailboxId,
        messages: Vec<Prepared>,
        origin: Origin,
        mark: Option<&SyncMark>,
        files: Option<(&str, &[String])>,
    ) -> Result<Vec<Appended>, StoreError> {
        // Summaries are computed before taking the writer lock: parsing is the slow part.
        // So is the carried hash (see [`carried_sha256`]), needed for new content and for a
        // client's APPEND: computed once, here.
        let mut fresh = Vec::with_capacity(messages.len());
        for message in &messages {
            let known = self.read(|c| content_id(c, &message.sha256))?;
            let carried =
                (known.is_none() || origin == Origin::Client).then(|| carried_sha256(&message.raw));
            fresh.push((known.is_none().then(|| summarize(&message.raw)), carried));
        }
        self.write(|tx| {
            let mut mb = find_mailbox_id(tx, mailbox)?;
            let modseq = mb.highestmodseq + 1;
            let mut out = Vec::with_capacity(messages.len());
            // Links under another UIDVALIDITY exist only after an upstream UIDVALIDITY change;
            // two range seeks on the primary key say so once per batch, so the per-message
            // lookup below costs nothing in an ordinary sync.
            let relinking = match mark {
                Some(mark) => tx
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM sync_map
                                        WHERE account = ?1 AND folder = ?2 AND uidvalidity < ?3)
                             OR EXISTS (SELECT 1 FROM sync_map
                                        WHERE account = ?1 AND folder = ?2 AND uidvalidity > ?3)",
                    )?
                    .query_row(params![mb.account, mark.folder, mark.uidvalidity], |r| {
                        r.get::<_, bool>(0)
                    })?,
                None => false,
            };
            for (i, (message, (summary, carried))) in messages.iter().zip(fresh).enumerate() {
                let carried = || carried.unwrap_or_else(|| carried_sha256(&message.raw));
                let known = content_id(tx, &message.sha256)?;
                let existing = match mark {
                    Some(mark) => already_here(tx, &mb, mark, i, relinking, known, message)?,
                    None => None,
                };
                if let Some((uid, old_modseq)) = existing {
                    out.push(Appended {
                        uid,
                        uidvalidity: mb.uidvalidity,
                        modseq: old_modseq as u64,
                        linked: true,
                    });
                    continue;
                }
                let content = match known {
                    Some(id) => id,
                    None => insert_content(
                        tx,
                        message,
                        summary.unwrap_or_else(|| summarize(&message.raw)),
                        &carried(),
                    )?,
                };
                let uid = next_uid(&mut mb)?;
                tx.prepare_cached(
                    "INSERT INTO messages (mailbox, uid, content, flags, modseq, internaldate,
                     tz_minutes, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    mailbox,
                    uid,
                    content,
                    message.flags.to_column(),
                    modseq as i64,
                    message.internaldate.unix,
                    message.internaldate.tz_minutes,
                    message.raw.len() as i64
                ])?;
                if origin == Origin::Client {
                    journal_client_append(tx, &mb, uid, message, &carried())?;
                }
                if let Some(mark) = mark {
                    link_upstream(tx, mb.account, mark, i, mailbox, uid)?;
                }
                if let Some((folder, names)) = files {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO sync_files (account, folder, name, mailbox, uid)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![mb.account, folder, names[i], mailbox, uid])?;
                }
                out.push(Appended {
                    uid,
                    uidvalidity: mb.uidvalidity,
                    modseq,
                    linked: false,
                });
            }
            save_counters(tx, &mb, modseq)?;
            if let Some(mark) = mark {
                tx.prepare_cached(
                    "INSERT INTO sync_folders (account, folder, uidvalidity, next_uid)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account, folder) DO UPDATE SET uidvalidity = ?3, next_uid = ?4",
                )?
                .execute(params![
                    mb.account,
                    mark.folder,
                    mark.uidvalidity,
                    mark.next_uid
                ])?;
            }
            Ok(out)
        })
    }

    /// One FETCH or SEARCH batch from one snapshot: the state of the messages of `uids`
    /// (ascending; expunged ones are left out) with the content `need` names. With `need.raw`,
    /// reading stops once `budget` bytes of messages are in hand (always at least one message),
    /// so memory stays bounded whatever the message sizes; `through` says how far it got.
    pub fn fetch_batch(
        &self,
        mailbox: MailboxId,
        uids: &[u32],
        need: Need,
        budget: u64,
    ) -> Result<FetchBatch, StoreError> {
        let (Some(&lo), Some(&hi)) = (uids.first(), uids.last()) else {
            return Ok(FetchBatch::default());
        };
        let column = |wanted: bool, name: &str| {
            if wanted {
                format!("c.{name}")
            } else {
                "NULL".into()
            }
        };
        // The header alone is read as the first header_len bytes of the blob (the part map
        // knows header_len): a header fetch reads the first pages of a message, not all of it.
        let header_only = need.header && !need.raw;
        let want_parts = need.parts || header_only;
        let summary = need.envelope || need.body || need.bodystructure || want_parts;
        let lean = need.lean && !summary && !need.raw;
        // Lean (FLAGS, UID, MODSEQ only: a client's flag resync over the whole mailbox): three
        // columns, no placeholders. Reading eight more columns per row, though NULL or 0, was
        // a quarter of such a FETCH's time (perf, 50,000 messages).
        let select = if lean {
            "SELECT m.uid, m.flags, m.modseq FROM messages m".to_string()
        } else {
            format!(
                "SELECT m.uid, m.content, m.flags, m.modseq, m.internaldate, m.tz_minutes, \
                 m.size, {}, {}, {}, {} FROM {}",
                column(need.envelope, "envelope"),
                column(need.body, "body"),
                column(need.bodystructure, "bodystructure"),
                column(want_parts, "parts"),
                if summary {
                    "messages m JOIN contents c ON c.id = m.content"
                } else {
                    "messages m"
                },
            )
        };
        // A dense set is read as one UID range; a sparse one (1,50000) message by message.
        let dense = (hi - lo) as usize / 2 < uids.len();
        let sql = if dense {
            format!("{select} WHERE m.mailbox = ?1 AND m.uid BETWEEN ?2 AND ?3 ORDER BY m.uid")
        } else {
            format!("{select} WHERE m.mailbox = ?1 AND m.uid = ?2")
        };
        let read_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(MessageRow, ContentData)> {
            if lean {
                let row = MessageRow {
                    uid: r.get(0)?,
                    content: 0,
                    flags: Flags::from_column(r.get_ref(1)?.as_str()?),
                    modseq: r.get::<_, i64>(2)? as u64,
                    internaldate: InternalDate {
                        unix: 0,
                        tz_minutes: 0,
                    },
                    size: 0,
                };
                return Ok((row, ContentData::default()));
            }
            let row = MessageRow {
                uid: r.get(0)?,
                content: r.get(1)?,
                flags: Flags::from_column(r.get_ref(2)?.as_str()?),
                modseq: r.get::<_, i64>(3)? as u64,
                internaldate: InternalDate {
                    unix: r.get(4)?,
                    tz_minutes: r.get(5)?,
                },
                size: r.get(6)?,
            };
            let blob = |i: usize| -> rusqlite::Result<Vec<u8>> {
                Ok(r.get::<_, Option<Vec<u8>>>(i)?.unwrap_or_default())
            };
            let parts = r.get_ref(10)?.as_blob_or_null()?;
            let content = ContentData {
                envelope: blob(7)?,
                body: blob(8)?,
                bodystructure: blob(9)?,
                parts: parts
                    .map(PartMap::from_bytes)
                    .transpose()
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?,
                ..ContentData::default()
            };
            Ok((row, content))
        };
        self.read(|c| {
            // One read transaction: one snapshot, and one WAL read lock instead of one per
            // statement.
            let tx = c.unchecked_transaction()?;
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut raw_stmt = tx.prepare_cached("SELECT raw FROM content_raw WHERE id = ?1")?;
            let mut batch = FetchBatch {
                items: Vec::with_capacity(uids.len()),
                through: hi,
            };
            let mut bytes = 0u64;
            // One blob handle per batch, moved from message to message (sqlite3_blob_reopen);
            // opening one compiles a statement each time.
            let mut blob: Option<rusqlite::blob::Blob<'_>> = None;
            let mut take = |(row, mut content): (MessageRow, ContentData)| {
                if need.raw && bytes > 0 && bytes + u64::from(row.size) > budget {
                    return Ok::<_, StoreError>(false);
                }
                if need.raw {
                    bytes += u64::from(row.size);
                    content.raw = std::sync::Arc::new(if row.size as usize >= DIRECT_BLOB_MAX {
                        // Read through the blob handle: a query would hold the message twice
                        // (SQLite's copy, then ours).
                        let handle = raw_blob(&mut blob, &tx, row.content)?;
                        let mut raw = vec![0; handle.len()];
                        handle.read_at_exact(&mut raw, 0)?;
                        raw
                    } else {
                        raw_stmt.query_row([row.content], |r| r.get(0))?
                    });
                } else if header_only {
                    let len = content.parts.as_ref().map_or(0, PartMap::header_len);
                    let handle = raw_blob(&mut blob, &tx, row.content)?;
                    content.header = vec![0; len.min(handle.len())];
                    let read = handle.read_at(&mut content.header, 0)?;
                    content.header.truncate(read);
                }
                if !need.parts {
                    content.parts = None;
                }
                batch.items.push((row, content));
                Ok(true)
            };
            let mut stopped = false;
            if dense {
                let mut rows = stmt.query(params![mailbox, lo, hi])?;
                while let Some(r) = rows.next()? {
                    let item = read_row(r)?;
                    if uids.binary_search(&item.0.uid).is_err() {
                        continue;
                    }
                    if !take(item)? {
                        stopped = true;
                        break;
                    }
                }
            } else {
                for &uid in uids {
                    let Some(item) = stmt.query_row(params![mailbox, uid], read_row).optional()?
                    else {
                        continue;
                    };
                    if !take(item)? {
                        stopped = true;
                        break;
                    }
                }
            }
            if stopped {
                batch.through = batch.items.last().map_or(lo, |(row, _)| row.uid);
            }
            Ok(batch)
        })
    }

    /// Everything that changed in a mailbox after `modseq`.
    pub fn changes_since(&self, mailbox: MailboxId, modseq: u64) -> Result<Changes, StoreError> {
        self.read(|c| {
            // One read transaction: the counters, rows and tombstones are one snapshot.
            let c = c.unchecked_transaction()?;
            let c = &*c;
            let mb = find_mailbox_id(c, mailbox)?;
            let mut changes = Changes {
                highestmodseq: mb.highestmodseq,
                uidnext: mb.uidnext,
                ..Changes::default()
            };
            if mb.highestmodseq <= modseq {
                return Ok(changes);
            }
            let mut stmt = c.prepare_cached(
                "SELECT uid, flags, modseq FROM messages WHERE mailbox = ?1 AND modseq > ?2
                 ORDER BY uid",
            )?;
            let rows = stmt.query_map(params![mailbox, modseq as i64], |r| {
                Ok((
                    r.get(0)?,
                    Flags::from_column(&r.get::<_, String>(1)?),
                    r.get::<_, i64>(2)? as u64,
                ))
            })?;
            changes.rows = rows.collect::<Result<_, _>>()?;
            let mut stmt = c.prepare_cached(
                "SELECT uid FROM expunged WHERE mailbox = ?1 AND modseq > ?2 ORDER BY uid",
            )?;
            let rows = stmt.query_map(params![mailbox, modseq as i64], |r| r.get(0))?;
            changes.expunged = rows.collect::<Result<_, _>>()?;
            Ok(changes)
        })
    }

    /// The first `limit` messages of `mailbox` changed after `after` (a MODSEQ, and within it
    /// a UID), as (UID, MODSEQ) in (MODSEQ, UID) order: for a session looking for the first
    /// change it has not heard of, a batch at a time (one STORE gives all its messages one
    /// MODSEQ).
    pub fn changes_after(
        &self,
        mailbox: MailboxId,
        after: (u64, u32),
        limit: usize,
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT uid, modseq FROM messages WHERE mailbox = ?1
                 AND (modseq > ?2 OR (modseq = ?2 AND uid > ?3))
                 ORDER BY modseq, uid LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![mailbox, after.0 as i64, after.1, limit as i64],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64)),
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The UID range `floor..uidnext` no session has claimed as \Recent yet, left unclaimed
    /// (a read-only session's view).
    pub fn recent_range(&self, mailbox: MailboxId) -> Result<(u32, u32), StoreError> {
        self.read(|c| {
            let (floor, uidnext): (u32, i64) = c.query_row(
                "SELECT recent_floor, uidnext FROM mailboxes WHERE id = ?1",
                [mailbox],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((floor, uidnext.min(i64::from(u32::MAX)) as u32))
        })
    }

    /// The lowest MODSEQ of an expunge in `mailbox` after `modseq`, if any: what a session
    /// that holds back EXPUNGE responses must stay below (RFC 7162 §3.2.10).
    pub fn first_expunge_after(
        &self,
        mailbox: MailboxId,
        modseq: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.read(|c| {
            let first: Option<i64> = c.query_row(
                "SELECT MIN(modseq) FROM expunged WHERE mailbox = ?1 AND modseq > ?2",
                params![mailbox, modseq as i64],
                |r| r.get(0),
            )?;
            Ok(first.map(|m| m as u64))
        })
    }

    /// Claims the messages that arrived since the last claim as \Recent for the calling
    /// session (RFC 3501 §2.3.2: \Recent in exactly one session). Returns the UID range
    /// `floor..uidnext` that is recent for the caller.
    pub fn claim_recent(&self, mailbox: MailboxId) -> Result<(u32, u32), StoreError> {
        self.claimed_recent(mailbox)
            .map_err(|e| e.in_store(&self.inner.path))
    }

    fn claimed_recent(&self, mailbox: MailboxId) -> Result<(u32, u32), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (floor, uidnext): (u32, i64) = tx.query_row(
            "SELECT recent_floor, uidnext FROM mailboxes WHERE id = ?1",
            [mailbox],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.execute(
            "UPDATE mailboxes SET recent_floor = ?2 WHERE id = ?1",
            params![mailbox, uidnext],
        )?;
        tx.commit()?;
        Ok((floor, uidnext.min(i64::from(u32::MAX)) as u32))
    }

    /// RFC 3501 §6.4.6 STORE and RFC 7162 §3.1.3 UNCHANGEDSINCE. All changes of one STORE
    /// share one new MODSEQ.
    pub fn store_flags(
        &self,
        mailbox: MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<u64>,
        origin: Origin,
    ) -> Result<Stored, StoreError> {
        self.write(|tx| {
            let mb = find_mailbox_id(tx, mailbox)?;
            let modseq = mb.highestmodseq + 1;
            let mut stored = Stored::default();
            let mut select = tx.prepare_cached(
                "SELECT flags, modseq FROM messages WHERE mailbox = ?1 AND uid = ?2",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE messages SET flags = ?3, modseq = ?4 WHERE mailbox = ?1 AND uid = ?2",
            )?;
            for &uid in uids {
                let Some((current, current_modseq)) = select
                    .query_row(params![mailbox, uid], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                    })
                    .optional()?
                else {
                    continue;
                };
                if unchanged_since.is_some_and(|limit| current_modseq > limit) {
                    stored.modified.push(uid);
                    continue;
                }
                let mut new = Flags::from_column(&current);
                // sealpost's verdict keywords are its own: a client neither sets nor clears
                // them (review: a replacing STORE FLAGS (\Seen) dropped the verdict for good,
                // as no sync brings a local keyword back, and +FLAGS could make one up).
                let changed = match origin {
                    Origin::Client => new.apply_keeping(op, flags, is_local_keyword),
                    _ => new.apply(op, flags),
                };
                // Nothing of the STORE is done (review: 4,000 keywords on 100 messages held
                // the store's one write lock for two minutes, and other accounts' deliveries
                // failed behind it).
                // Only a STORE that adds keywords is refused: a message that came with more
                // (from upstream) can still be marked read.
                let grown = || keywords_of(&new) > keywords_of(&Flags::from_column(&current));
                if origin == Origin::Client
                    && changed
                    && keywords_of(&new) > MAX_KEYWORDS
                    && grown()
                {
                    return Err(StoreError::TooManyKeywords);
                }
                if changed {
                    update.execute(params![mailbox, uid, new.to_column(), modseq as i64])?;
                    if origin == Origin::Client {
                        // The new flags, then the ones they replace: the write-back sends only
                        // what this change added and removed, so a flag set upstream meanwhile
                        // (another client's \Flagged) is not taken away.
                        let detail = format!("{}\t{current}", new.to_column());
                        journal(tx, mb.account, &mb.name, uid, "flags", &detail)?;
                    }
                    stored.rows.push((uid, new, modseq, true));
                } else {
                    stored.rows.push((uid, new, current_modseq, false));
                }
                stored.prior_modseq.push(current_modseq);
            }
            if stored.rows.iter().any(|row| row.3) {
                save_counters(tx, &mb, modseq)?;
            }
            Ok(stored)
        })
    }

    /// RFC 3501 §6.4.7 COPY (RFC 4315 COPYUID): returns (source UID, new UID) pairs.
    pub fn copy(
        &self,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        origin: Origin,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError> {
        self.write(|tx| {
            let source = find_mailbox_id(tx, from)?;
            let target = find_mailbox_id(tx, to)?;
            let pairs = copy_rows(tx, &source, uids, &target)?;
            if origin == Origin::Client {
                for (old, new) in &pairs {
                    let detail = format!("{}\t{old}", source.name);
                    journal(tx, target.account, &target.name, *new, "copy", &detail)?;
                }
            }
            Ok((target.uidvalidity, pairs))
        })
    }

    /// RFC 6851 MOVE: copy and expunge in one transaction, so a crash leaves either the
    /// original or the moved message, never both and never neither.
    pub fn move_messages(
        &self,
        from: MailboxId,
        uids: &[u32],
        to: MailboxId,
        origin: Origin,
    ) -> Result<(u32, Vec<(u32, u32)>), StoreError> {
        self.write(|tx| {
            let source = find_mailbox_id(tx, from)?;
            let target = find_mailbox_id(tx, to)?;
            let pairs = copy_rows(tx, &source, uids, &target)?;
            let moved: Vec<u32> = pairs.iter().map(|(old, _)| *old).collect();
            expunge_rows(tx, &source, &moved)?;
            if origin == Origin::Client {
                for (old, new) in &pairs {
                    let detail = format!("{}\t{new}", target.name);
                    journal(tx, source.account, &source.name, *old, "move", &detail)?;
                }
            }
            Ok((target.uidvalidity, pairs))
        })
    }

    /// RFC 3501 §6.4.3 EXPUNGE (and RFC 4315 UID EXPUNGE with `only`): removes the messages
    /// flagged \Deleted; returns their UIDs, ascending.
    pub fn expunge(
        &self,
        mailbox: MailboxId,
        only: Option<&[u32]>,
        origin: Origin,
    ) -> Result<Vec<u32>, StoreError> {
        self.write(|tx| {
            let mb = find_mailbox_id(tx, mailbox)?;
            let deleted: Vec<u32> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT uid, flags FROM messages WHERE mailbox = ?1 ORDER BY uid",
                )?;
                let rows = stmt.query_map([mailbox], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (uid, flags) = row?;
                    let wanted = only.is_none_or(|set| set.binary_search(&uid).is_ok());
                    if wanted && Flags::from_column(&flags).contains("\\Deleted") {
                        out.push(uid);
                    }
                }
                out
            };
            // What a client's expunge journals names the message's content (its carried
            // SHA-256) and its flags then: mbsync moves a message by an expunge, then an APPEND
            // of the same message elsewhere, which finds the expunge by them ([`moved_by_append`]).
            let mut details = Vec::new();
            if origin == Origin::Client {
                let mut stmt = tx.prepare_cached(
                    "SELECT hex(c.carried_sha256), m.flags FROM messages m
                     JOIN contents c ON c.id = m.content WHERE m.mailbox = ?1 AND m.uid = ?2",
                )?;
                for uid in &deleted {
                    let (carried, flags): (Option<String>, String) =
                        stmt.query_row(params![mailbox, uid], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    details.push(match carried {
                        Some(carried) if !carried.is_empty() => format!("{carried}\t{flags}"),
                        _ => String::new(),
                    });
                }
            }
            expunge_rows(tx, &mb, &deleted)?;
            for (uid, detail) in deleted.iter().zip(&details) {
                journal(tx, mb.account, &mb.name, *uid, "expunge", detail)?;
            }
            Ok(deleted)
        })
    }

    /// What STATUS reports (RFC 3501 §6.3.10, RFC 8438 SIZE), and the keywords in use.
    pub fn status(&self, mailbox: MailboxId) -> Result<MailboxStatus, StoreError> {
        self.read(|c| {
            let c = c.unchecked_transaction()?;
            let mb = find_mailbox_id(&c, mailbox)?;
            let floor: u32 = c.query_row(
                "SELECT recent_floor FROM mailboxes WHERE id = ?1",
                [mailbox],
                |r| r.get(0),
            )?;
            let mut status = MailboxStatus {
                uidnext: mb.uidnext,
                uidvalidity: mb.uidvalidity,
                highestmodseq: mb.highestmodseq,
                ..MailboxStatus::default()
            };
            scan_mailbox(&c, mailbox, |uid, flags, size| {
                status.messages += 1;
                status.size += size;
                if uid >= floor {
                    status.recent += 1;
                }
                if !status.count_flags(flags) {
                    status.unseen += 1;
                }
            })?;
            Ok(status)
        })
    }

    /// What SELECT needs, from one snapshot in one pass over the mailbox: the UIDs, the
    /// counters, the keywords in use and the first message without \\Seen.
    pub fn select_view(&self, mailbox: MailboxId) -> Result<SelectView, StoreError> {
        self.read(|c| {
            let c = c.unchecked_transaction()?;
            let mb = find_mailbox_id(&c, mailbox)?;
            let mut view = SelectView {
                status: MailboxStatus {
                    uidnext: mb.uidnext,
                    uidvalidity: mb.uidvalidity,
                    highestmodseq: mb.highestmodseq,
                    ..MailboxStatus::default()
                },
                ..SelectView::default()
            };
            scan_mailbox(&c, mailbox, |uid, flags, size| {
                view.uids.push(uid);
                view.status.messages += 1;
                view.status.size += size;
                if !view.status.count_flags(flags) {
                    view.status.unseen += 1;
                    view.first_unseen.get_or_insert(uid);
                }
            })?;
            Ok(view)
        })
    }

    /// UIDs expunged after `modseq` (RFC 7162 §3.2.5.2 VANISHED (EARLIER)).
    pub fn vanished_since(&self, mailbox: MailboxId, modseq: u64) -> Result<Vec<u32>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT uid FROM expunged WHERE mailbox = ?1 AND modseq > ?2 ORDER BY uid",
            )?;
            let rows = stmt.query_map(params![mailbox, modseq as i64], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Checks the database file (`PRAGMA integrity_check`); used after a crash in tests and
    /// by `sealpost import` before it writes.
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let found: Vec<String> = rows.collect::<Result<_, _>>()?;
            Ok(found.into_iter().filter(|line| line != "ok").collect())
        })
    }
}

const MAILBOX_COLUMNS: &str = "SELECT id, account, name, uidvalidity, uidnext, highestmodseq,
    special_use, subscribed FROM mailboxes";

fn mailbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Mailbox> {
    Ok(Mailbox {
        id: r.get(0)?,
        account: r.get(1)?,
        name: r.get(2)?,
        uidvalidity: r.get(3)?,
        uidnext: r.get::<_, i64>(4)?.min(u32::MAX as i64) as u32,
        highestmodseq: r.get::<_, i64>(5)? as u64,
        special_use: r
            .get::<_, Option<String>>(6)?
            .as_deref()
            .and_then(SpecialUse::parse),
        subscribed: r.get(7)?,
    })
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(open_error)?;
    if !read_only {
        // Takes effect only when the file is new (before the first table): 16 KiB pages mean
        // a quarter of the page reads of a mailbox scan, and short overflow chains for
        // message bytes.
        conn.pragma_update(None, "page_size", 16384)
            .map_err(open_error)?;
        // WAL: readers never block the writer; FULL: a commit is on disk before it returns.
        wal_mode(&conn).map_err(open_error)?;
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_error)?;
    Ok(conn)
}

/// What SQLite's error for the database at `path` leaves out, as " (...)" to append, when
/// the file system explains it: SQLite says "disk I/O error" when it cannot grow its -shm
/// file on a full file system, and "unable to open database file" when its -wal or -shm file
/// is another user's (review: neither named the cause or the file).
///
/// It opens none of those files: the process may hold the database open, and closing any
/// descriptor of a file drops all of the process's fcntl locks on it, SQLite's included
/// (review: a full disk during an APPEND left the IMAP daemon without its locks on the store,
/// so another process could reset the WAL under its readers). Access is asked of the kernel
/// instead (faccessat with the effective IDs).
pub(crate) fn file_system_trouble(path: &Path, e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    let code = match e {
        rusqlite::Error::SqliteFailure(f, _) => f.code,
        _ => return String::new(),
    };
    if !matches!(
        code,
        C::SystemIoFailure | C::DiskFull | C::ReadOnly | C::CannotOpen
    ) {
        return String::new();
    }
    let dir = directory_of(path);
    let mut why = Vec::new();
    if let Ok(c_dir) =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
    {
        // SAFETY: statvfs writes into the zeroed struct it is given; the path is a valid C
        // string that outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } == 0 {
            if st.f_flag & libc::ST_RDONLY != 0 {
                why.push(format!("{} is on a read-only file system", dir.display()));
            } else if st.f_bavail == 0 {
                why.push(format!(
                    "no space left on the file system of {}",
                    dir.display()
                ));
            }
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let Ok(c_file) =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(file.as_os_str()))
        else {
            continue;
        };
        // SAFETY: faccessat reads the C string, which outlives the call, and opens nothing.
        let denied = unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                c_file.as_ptr(),
                libc::R_OK | libc::W_OK,
                libc::AT_EACCESS,
            ) != 0
        };
        if denied {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                why.push(format!("{}: {e}", PathBuf::from(file).display()));
            }
        }
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}

/// Puts a database in WAL mode. Setting the journal mode does not wait through the busy
/// handler: while another process creates or writes the database it fails at once with
/// "database is locked" (a queue run started while sendmail's runner wrote; deliver while the
/// daemon opens the store). It is tried again for 30 s, as long as a busy write would wait.
///
/// The -wal file is cut back to [`WAL_KEPT_BYTES`] each time it starts over: SQLite reuses it
/// from the start but never shrinks it, so a daemon's -wal stayed as large as the largest
/// transaction it ever wrote, a failed one included (review: 38 MB after one 40 MB APPEND).
pub(crate) fn wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let since = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && since.elapsed() < std::time::Duration::from_secs(30) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
            Ok(()) => break,
        }
    }
    conn.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)
}

/// Why the file at `path` cannot be an SQLite database: one with bytes in it that do not
/// start as SQLite's do. Asked before anything changes the file (review: a `[store] path`
/// naming a mail file had it made 0600 and a lock file put beside it, and only then "file is
/// not a database"). None for an empty or missing file, or one that cannot be read here.
pub(crate) fn not_a_database(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .ok()?
        .take(16)
        .read_to_end(&mut head)
        .ok()?;
    (!head.is_empty() && head != b"SQLite format 3\0").then(|| {
        "it is no SQLite database (a file of something else?): nothing in it was changed; name \
         the database's own file"
            .to_string()
    })
}

/// Why the file at `path` cannot be a store, when it is there: no SQLite database, or another
/// program's (see [`foreign_tables`]). For `sealpost check`, which said such a path was valid
/// while the services refused it (review).
pub fn file_problem(path: &Path) -> Option<String> {
    not_a_database(path).or_else(|| another_programs_database(path))
}

/// Why the SQLite database at `path` is another program's, read with a connection that changes
/// nothing; one that cannot be read leaves the verdict to the store's own opening.
fn another_programs_database(path: &Path) -> Option<String> {
    let foreign = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| foreign_tables(&c))
        .unwrap_or_default();
    (!foreign.is_empty()).then(|| {
        format!(
            "a database of something else (tables {}), not a sealpost store: no table was \
             added to it; name the store's own file",
            foreign.join(", ")
        )
    })
}

/// The tables of a database sealpost's migrations have not set up (user_version 0): another
/// program's (review: a `[store] path` naming the milter's journal had the store's tables,
/// and then mail, added to it).
fn foreign_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != 0 {
        return Ok(Vec::new());
    }
    tables(conn)
}

/// The names of a database's own tables (SQLite's left out), sorted.
pub(crate) fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut tables = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    let names = tables.query_map([], |r| r.get(0))?;
    names.collect()
}

/// Fails unless a write reaches the database's files now: a committed transaction that sets
/// `user_version` to the value it has (SQLite writes its page all the same), without an fsync
/// (only whether the write is taken counts; `synchronous` is FULL again after it). A write
/// rolled back never leaves SQLite's cache, so such a check passed on a database whose -wal
/// file could not be written (an immutable file, a file system gone read-only), and a record
/// made after a copy went failed then (review: a copy more at every retry).
pub(crate) fn write_check(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let written = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()
    })();
    let restored = conn.pragma_update(None, "synchronous", "FULL");
    written.and(restored)
}

/// What a -wal file keeps when it starts over: SQLite's automatic checkpoint comes at 1000
/// pages, 16 MB with the store's 16 KiB pages, so ordinary work never has it cut and grown
/// again; only what a larger transaction added is given back.
pub(crate) const WAL_KEPT_BYTES: i64 = 16 << 20;

fn find_mailbox(
    c: &Connection,
    account: AccountId,
    name: &str,
) -> Result<Option<Mailbox>, StoreError> {
    // INBOX is case-insensitive (RFC 3501 §5.1); every other name is exact.
    let name = if name.eq_ignore_ascii_case("INBOX") {
        "INBOX"
    } else {
        name
    };
    Ok(c.query_row(
        &format!("{MAILBOX_COLUMNS} WHERE account = ?1 AND name = ?2"),
        params![account, name],
        mailbox_from_row,
    )
    .optional()?)
}

/// RFC 3501 §6.3.3: superior names a new mailbox needs are created with it. Returns the
/// names created, the topmost first.
fn create_parents(
    tx: &Connection,
    account: AccountId,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    let mut made = Vec::new();
    let mut end = 0;
    while let Some(i) = name[end..].find(DELIMITER) {
        let parent = &name[..end + i];
        if find_mailbox(tx, account, parent)?.is_none() {
            insert_mailbox(tx, account, parent, None, false)?;
            made.push(parent.to_string());
        }
        end += i + 1;
    }
    Ok(made)
}

/// Marks a mailbox as a placeholder ([`Store::forget_placeholders`]).
fn mark_placeholder(
    tx: &Connection,
    account: AccountId,
    mailbox: MailboxId,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES (?1, 1) ON CONFLICT (key) DO NOTHING",
        [format!("{}{account}:{mailbox}", sync::PLACEHOLDER)],
    )?;
    Ok(())
}

/// Marks the parents the sync made for a folder (`made`, from [`create_parents`]).
fn mark_placeholders(
    tx: &Connection,
    account: AccountId,
    made: &[String],
) -> Result<(), StoreError> {
    for name in made {
        if let Some(mailbox) = find_mailbox(tx, account, name)? {
            mark_placeholder(tx, account, mailbox.id)?;
        }
    }
    Ok(())
}

fn unmark_placeholder(
    tx: &Connection,
    account: AccountId,
    mailbox: MailboxId,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM store_meta WHERE key = ?1",
        [format!("{}{account}:{mailbox}", sync::PLACEHOLDER)],
    )?;
    Ok(())
}

fn find_mailbox_id(c: &Connection, id: MailboxId) -> Result<Mailbox, StoreError> {
    c.query_row(
        &format!("{MAILBOX_COLUMNS} WHERE id = ?1"),
        [id],
        mailbox_from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NoMailbox(format!("#{id}")))
}

/// A new mailbox gets a UIDVALIDITY unique in the store: the current time in seconds, or one
/// more than the highest ever given out, whichever is larger.
fn insert_mailbox(
    tx: &Connection,
    account: AccountId,
    name: &str,
    special_use: Option<SpecialUse>,
    subscribed: bool,
) -> Result<MailboxId, StoreError> {
    // The name is free: changes waiting for a mailbox of this name are a deleted one's.
    mark_gone_in_journal(tx, account, name, None)?;
    let highest: i64 = tx.query_row(
        "SELECT coalesce((SELECT value FROM store_meta WHERE key = 'uidvalidity'), 0)",
        [],
        |r| r.get(0),
    )?;
    let uidvalidity = (unix_now().clamp(1, u32::MAX as i64)).max(highest + 1);
    if uidvalidity > u32::MAX as i64 {
        return Err(StoreError::UidsExhausted(name.to_owned()));
    }
    // An id is never given twice (SQLite would reuse the highest after a DELETE): a session
    // that still has a deleted mailbox selected must not find another in its place and act
    // on that one's messages.
    let id: i64 = tx.query_row(
        "SELECT max(coalesce((SELECT value FROM store_meta WHERE key = 'mailbox-id'), 0),
                    coalesce((SELECT max(id) FROM mailboxes), 0)) + 1",
        [],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO mailboxes (id, account, name, uidvalidity, special_use, subscribed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            account,
            name,
            uidvalidity,
            special_use.map(SpecialUse::attribute),
            subscribed
        ],
    )?;
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES ('mailbox-id', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, ?1)",
        [id],
    )?;
    remember_uidvalidity(tx, uidvalidity)?;
    Ok(id)
}

/// Keeps the highest UIDVALIDITY ever handed out (see the store_meta table).
fn remember_uidvalidity(tx: &Connection, value: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES ('uidvalidity', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, ?1)",
        [value],
    )?;
    Ok(())
}

/// Calls `f(uid, flags column, size)` for every message of a mailbox in UID order.
fn scan_mailbox(
    c: &Connection,
    mailbox: MailboxId,
    mut f: impl FnMut(u32, &str, u64),
) -> Result<(), StoreError> {
    let mut stmt =
        c.prepare_cached("SELECT uid, flags, size FROM messages WHERE mailbox = ?1 ORDER BY uid")?;
    let mut rows = stmt.query([mailbox])?;
    while let Some(row) = rows.next()? {
        let flags = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        f(row.get(0)?, flags, row.get::<_, i64>(2)? as u64);
    }
    Ok(())
}

/// Stores a message's content (its exact bytes and their summary); returns its id.
/// A read handle on content `id`'s raw bytes: the one in `slot` moved there
/// (sqlite3_blob_reopen), or a new one.
fn raw_blob<'s, 'c>(
    slot: &'s mut Option<rusqlite::blob::Blob<'c>>,
    c: &'c Connection,
    id: i64,
) -> rusqlite::Result<&'s mut rusqlite::blob::Blob<'c>> {
    if let Some(handle) = slot {
        handle.reopen(id)?;
        return Ok(handle);
    }
    Ok(slot.insert(c.blob_open(rusqlite::MAIN_DB, "content_raw", "raw", id, true)?))
}

/// Messages smaller than this are bound as a parameter (one statement); larger ones are
/// written into a zeroblob (see `insert_content`).
const DIRECT_BLOB_MAX: usize = 1 << 20;

fn insert_content(
    tx: &Connection,
    message: &Prepared,
    summary: crate::imap::summary::Summary,
    carried: &[u8; 32],
) -> Result<i64, StoreError> {
    tx.prepare_cached(
        "INSERT INTO contents (sha256, size, envelope, body, bodystructure, parts,
           carried_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &message.sha256[..],
        message.raw.len() as i64,
        summary.envelope,
        summary.body,
        summary.bodystructure,
        summary.parts.to_bytes(),
        &carried[..],
    ])?;
    let id = tx.last_insert_rowid();
    if message.raw.len() < DIRECT_BLOB_MAX {
        tx.prepare_cached("INSERT INTO content_raw (id, raw) VALUES (?1, ?2)")?
            .execute(params![id, message.raw])?;
        return Ok(id);
    }
    // A zeroblob of the size, then the bytes written into it: bound as a parameter, a large
    // message was copied twice more inside SQLite (the bound value, then the record): a
    // 40 MB APPEND peaked at 175 MB over the server's idle size, 97 MB this way.
    tx.prepare_cached("INSERT INTO content_raw (id, raw) VALUES (?1, zeroblob(?2))")?
        .execute(params![id, message.raw.len() as i64])?;
    let mut blob = tx.blob_open(rusqlite::MAIN_DB, "content_raw", "raw", id, false)?;
    blob.write_at(&message.raw, 0)?;
    blob.close()?;
    Ok(id)
}

/// Journals a client's APPEND of `uid` to `mb`. A message of the account stored again, as
/// mbsync moves a message (an APPEND of what it fetched, and an expunge of the original,
/// in either order), is written back as a move or copy of the original, so upstream keeps
/// the original's bytes (the sender's ciphertext and signature) rather than getting an upload
/// encrypted to the user. Either way a flag change follows that gives the message upstream
/// the flags the client stored it with: a copy or move takes the original's flags there
/// (review: mbsync's \Deleted on the original went with the filed copy, and the next expunge
/// deleted it everywhere).
fn journal_client_append(
    tx: &Connection,
    mb: &Mailbox,
    uid: u32,
    message: &Prepared,
    carried: &[u8; 32],
) -> Result<(), StoreError> {
    let there = match moved_by_append(tx, mb, uid, carried)? {
        Some(there) => there,
        None => match carried_from(tx, mb.account, carried, (mb.id, uid))? {
            Some((name, from, flags)) => {
                journal(
                    tx,
                    mb.account,
                    &mb.name,
                    uid,
                    "copy",
                    &format!("{name}\t{from}"),
                )?;
                vec![flags]
            }
            None => return journal(tx, mb.account, &mb.name, uid, "append", ""),
        },
    };
    // Every flag the original may have upstream (one a change here set, \Deleted among them)
    // and not the new message's is taken away; every one of the new message's is set.
    let new = &message.flags;
    let mut old = Flags::default();
    let possible = there.iter().flat_map(|f| f.split([' ', '\t']));
    for flag in possible.chain(["\\Deleted"]) {
        if !flag.is_empty() && !new.contains(flag) {
            old.insert(flag.to_string());
        }
    }
    let detail = format!("{}\t{}", new.to_column(), old.to_column());
    journal(tx, mb.account, &mb.name, uid, "flags", &detail)
}

/// The mailbox and UID a move's or copy's journal detail names ("NAME\tUID", a move's
/// possibly followed by "\t" [`MOVED_BY_APPEND`]); None when it names none.
pub fn named_message(detail: &str) -> Option<(&str, u32)> {
    let mut fields = detail.split('\t');
    let name = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    Some((name, uid))
}

/// The detail of a move journaled for an expunge and an APPEND of the same message (mbsync's
/// move): a third field says the original was expunged here, so a move into a folder that
/// does not go upstream still takes the original away there, as the expunge would have.
pub const MOVED_BY_APPEND: &str = "expunged";

/// An expunge of the message `carried` names, not yet written back (nor tried) and linked
/// upstream, becomes its move to the new message (`mb`, `uid`): the expunge entry goes and a
/// move entry is journaled now (a new entry with an id never given before, schema migration
/// 8: a write-back that has the expunge or a flag change removed here in hand removes that by
/// its id when done, and the move stays; review: changed in place, or given the id of an
/// entry removed here, the move was removed with it and the message lost upstream). The flag changes
/// made to the original before it (mbsync's \Deleted among them) are not written back, unless
/// one has been tried (it may have landed). Returns every flag those changes and the original
/// had, for the flag change that follows; None when there is no such expunge.
fn moved_by_append(
    tx: &Connection,
    mb: &Mailbox,
    uid: u32,
    carried: &[u8; 32],
) -> Result<Option<Vec<String>>, StoreError> {
    let carried = carried
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    let found: Option<(i64, String, u32, String)> = tx
        .prepare_cached(
            "SELECT j.id, j.mailbox, j.uid, j.detail FROM journal j
             WHERE j.account = ?1 AND j.kind = 'expunge' AND j.attempts = 0
               AND substr(j.detail, 1, 65) = ?2 || char(9)
               AND EXISTS (SELECT 1 FROM sync_map s JOIN mailboxes b ON b.id = s.mailbox
                           WHERE b.account = ?1 AND b.name = j.mailbox AND s.uid = j.uid)
             ORDER BY j.id DESC LIMIT 1",
        )?
        .query_row(params![mb.account, carried], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((entry, source, source_uid, detail)) = found else {
        return Ok(None);
    };
    let mut there = vec![detail.split_once('\t').map_or("", |(_, f)| f).to_string()];
    let changes: Vec<(i64, u32, String)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, attempts, detail FROM journal
             WHERE account = ?1 AND mailbox = ?2 AND uid = ?3 AND kind = 'flags' AND id < ?4
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![mb.account, source, source_uid, entry], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut drop = tx.prepare_cached("DELETE FROM journal WHERE id = ?1")?;
    let tried = changes.iter().any(|(_, attempts, _)| *attempts > 0);
    for (id, _, flags) in changes {
        if !tried {
            drop.execute([id])?;
        }
        there.push(flags);
    }
    drop.execute([entry])?;
    journal(
        tx,
        mb.account,
        &source,
        source_uid,
        "move",
        &format!("{}\t{uid}\t{MOVED_BY_APPEND}", mb.name),
    )?;
    Ok(Some(there))
}

/// A message of `account` (its mailbox's name, UID and flags) whose content is `carried` (see
/// [`carried_sha256`]), other than the new one (`mailbox`, `uid`): one linked upstream first,
/// then the oldest.
fn carried_from(
    tx: &Connection,
    account: AccountId,
    carried: &[u8; 32],
    (mailbox, uid): (MailboxId, u32),
) -> Result<Option<(String, u32, String)>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT b.name, m.uid, m.flags FROM contents c
             JOIN messages m ON m.content = c.id
             JOIN mailboxes b ON b.id = m.mailbox
             WHERE c.carried_sha256 = ?1 AND b.account = ?2
               AND NOT (m.mailbox = ?3 AND m.uid = ?4)
             ORDER BY EXISTS (SELECT 1 FROM sync_map s
                              WHERE s.mailbox = m.mailbox AND s.uid = m.uid) DESC,
                      m.mailbox, m.uid
             LIMIT 1",
        )?
        .query_row(params![&carried[..], account, mailbox, uid], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?)
}

fn content_id(c: &Connection, sha256: &[u8; 32]) -> Result<Option<i64>, StoreError> {
    Ok(
        c.prepare_cached("SELECT id FROM contents WHERE sha256 = ?1")?
            .query_row([&sha256[..]], |r| r.get(0))
            .optional()?,
    )
}

fn next_uid(mb: &mut Mailbox) -> Result<u32, StoreError> {
    // RFC 3501 §2.3.1.1: UIDs are strictly ascending and never reused; at 2^32-1 the mailbox
    // is full (a new UIDVALIDITY would make every client re-download it).
    if mb.uidnext == u32::MAX {
        return Err(StoreError::UidsExhausted(mb.name.clone()));
    }
    let uid = mb.uidnext;
    mb.uidnext += 1;
    Ok(uid)
}

fn save_counters(tx: &Connection, mb: &Mailbox, modseq: u64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE mailboxes SET uidnext = ?2, highestmodseq = ?3 WHERE id = ?1")?
        .execute(params![mb.id, mb.uidnext, modseq as i64])?;
    Ok(())
}

fn contents_of(
    tx: &Connection,
    mailbox: MailboxId,
    uids: Option<&[u32]>,
) -> Result<Vec<i64>, StoreError> {
    match uids {
        None => {
            let mut stmt =
                tx.prepare("SELECT DISTINCT content FROM messages WHERE mailbox = ?1")?;
            let rows = stmt.query_map([mailbox], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
        Some(uids) => {
            let mut stmt =
                tx.prepare_cached("SELECT content FROM messages WHERE mailbox = ?1 AND uid = ?2")?;
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                if let Some(id) = stmt
                    .query_row(params![mailbox, uid], |r| r.get(0))
                    .optional()?
                {
                    out.push(id);
                }
            }
            Ok(out)
        }
    }
}

/// Drops content no mailbox refers to any more.
fn collect_garbage(tx: &Connection, candidates: &[i64]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM contents WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM messages WHERE content = ?1)",
    )?;
    for id in candidates {
        stmt.execute([id])?;
    }
    Ok(())
}

fn copy_rows(
    tx: &Connection,
    source: &Mailbox,
    uids: &[u32],
    target: &Mailbox,
) -> Result<Vec<(u32, u32)>, StoreError> {
    let mut target = target.clone();
    let modseq = target.highestmodseq + 1;
    let mut select = tx.prepare_cached(
        "SELECT content, flags, internaldate, tz_minutes, size FROM messages
         WHERE mailbox = ?1 AND uid = ?2",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages (mailbox, uid, content, flags, modseq, internaldate, tz_minutes,
         size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut pairs = Vec::with_capacity(uids.len());
    for &uid in uids {
        let Some((content, flags, date, tz, size)) = select
            .query_row(params![source.id, uid], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i32>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?
        else {
            continue;
        };
        let new_uid = next_uid(&mut target)?;
        insert.execute(params![
            target.id,
            new_uid,
            content,
            flags,
            modseq as i64,
            date,
            tz,
            size
        ])?;
        pairs.push((uid, new_uid));
    }
    if !pairs.is_empty() {
        save_counters(tx, &target, modseq)?;
    }
    Ok(pairs)
}

/// Renames `source` and its inferiors to `to` (its parents made already), and the journal
/// entries that name them.
fn rename_rows(
    tx: &Connection,
    account: AccountId,
    source: &Mailbox,
    to: &str,
) -> Result<(), StoreError> {
    mark_gone_in_journal(tx, account, to, Some(&source.name))?;
    let prefix = format!("{}{DELIMITER}", source.name);
    // SQLite's substr counts characters, not bytes ("Entwürfe/").
    let chars = prefix.chars().count() as i64;
    tx.execute(
        "UPDATE mailboxes SET name = ?2 || substr(name, ?3)
         WHERE account = ?1 AND substr(name, 1, ?4) = ?5",
        params![
            account,
            format!("{to}{DELIMITER}"),
            chars + 1,
            chars,
            prefix
        ],
    )?;
    tx.execute(
        "UPDATE mailboxes SET name = ?2 WHERE id = ?1",
        params![source.id, to],
    )?;
    rename_in_journal(tx, account, &source.name, to)
}

/// Before the free name `to` is taken again (a mailbox made, or `from` renamed to it, its
/// children with it): a change waiting in the journal that names it (or, for a rename, a
/// mailbox under it that is not here either) names a mailbox deleted here since, whose
/// deletion waits in the journal too. Marked [`GONE`], it keeps that folder's name upstream
/// and is never taken for the new one (review: a move into the deleted folder went into the
/// renamed one, and a flag set there landed on the renamed folder's message of the same UID;
/// the same with a folder made again, as Thunderbird empties Trash).
fn mark_gone_in_journal(
    tx: &Connection,
    account: AccountId,
    to: &str,
    from: Option<&str>,
) -> Result<(), StoreError> {
    let under = |name: &str, top: &str| {
        name.strip_prefix(top)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(DELIMITER))
    };
    let taken = |name: &str| match from {
        Some(from) => under(name, to) && !under(name, from),
        None => name == to,
    };
    let gone = |name: &str| -> Result<Option<String>, StoreError> {
        Ok((taken(name) && find_mailbox(tx, account, name)?.is_none())
            .then(|| format!("{GONE}{name}")))
    };
    rewrite_journal_names(tx, account, false, gone)
}

/// What begins a journal entry's mailbox name that names a mailbox deleted here, after which
/// another took its name (see `mark_gone_in_journal`): no mailbox name holds a control
/// character, so none is found by it here, and upstream it is the name after the mark
/// ([`unmarked`]).
pub const GONE: char = '\u{1}';

/// What begins the `detail` of an append entry whose mailbox was deleted here: the
/// UIDVALIDITY the mailbox had follows (see [`deleted_uidvalidity`]).
const WAITING_UPLOAD_OF: &str = "deleted mailbox of UIDVALIDITY ";

/// The UIDVALIDITY of the deleted mailbox an append entry's `detail` names.
pub fn deleted_uidvalidity(detail: &str) -> Option<u32> {
    detail.strip_prefix(WAITING_UPLOAD_OF)?.parse().ok()
}

/// The mailbox a delete-mailbox entry's `detail` says it deleted (entries written before it
/// was recorded say nothing).
pub fn deleted_mailbox(detail: &str) -> Option<MailboxId> {
    detail.strip_prefix(GONE)?.parse().ok()
}

/// A journal entry's mailbox name without the [`GONE`] mark, and whether it had one.
pub fn unmarked(name: &str) -> (&str, bool) {
    match name.strip_prefix(GONE) {
        Some(rest) => (rest, true),
        None => (name, false),
    }
}

/// Message changes waiting in the journal follow their mailbox (and its children) to its new
/// name: the write-back finds a message by its local mailbox's current name, and an entry
/// left under the old one would be dropped as done. The mailbox entries (a rename or delete
/// waiting to go up) keep the names upstream has until they are done.
fn rename_in_journal(
    tx: &Connection,
    account: AccountId,
    from: &str,
    to: &str,
) -> Result<(), StoreError> {
    let renamed = |name: &str| -> Option<String> {
        if name == from {
            Some(to.to_string())
        } else {
            name.strip_prefix(from)
                .and_then(|rest| rest.strip_prefix(DELIMITER))
                .map(|rest| format!("{to}{DELIMITER}{rest}"))
        }
    };
    rewrite_journal_names(tx, account, true, |name| Ok(renamed(name)))
}

/// Gives the names in the account's waiting message changes (their mailbox, and a copy's
/// source or a move's target) the new name `new_name` returns for them, if any; with
/// `creations`, those of waiting mailbox creations too.
fn rewrite_journal_names(
    tx: &Connection,
    account: AccountId,
    creations: bool,
    new_name: impl Fn(&str) -> Result<Option<String>, StoreError>,
) -> Result<(), StoreError> {
    let entries: Vec<(i64, String, String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT id, mailbox, kind, detail FROM journal
             WHERE account = ?1
               AND (kind IN ('flags', 'expunge', 'append', 'copy', 'move')
                    OR (?2 AND kind = 'create-mailbox'))",
        )?;
        let rows = stmt.query_map(params![account, creations], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut update = tx.prepare("UPDATE journal SET mailbox = ?2, detail = ?3 WHERE id = ?1")?;
    for (id, mailbox, kind, detail) in entries {
        let new_mailbox = new_name(&mailbox)?;
        // copy: "SOURCE\tUID"; move: "TARGET\tUID".
        let new_detail = match (kind.as_str(), detail.split_once('\t')) {
            ("copy" | "move", Some((name, uid))) => new_name(name)?.map(|n| format!("{n}\t{uid}")),
            _ => None,
        };
        if new_mailbox.is_some() || new_detail.is_some() {
            update.execute(params![
                id,
                new_mailbox.unwrap_or(mailbox),
                new_detail.unwrap_or(detail)
            ])?;
        }
    }
    Ok(())
}

pub(super) fn expunge_rows(tx: &Connection, mb: &Mailbox, uids: &[u32]) -> Result<(), StoreError> {
    if uids.is_empty() {
        return Ok(());
    }
    // Re-read the counters: a copy into the same mailbox may have moved them.
    let current = find_mailbox_id(tx, mb.id)?;
    let modseq = current.highestmodseq + 1;
    let contents = contents_of(tx, mb.id, Some(uids))?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE mailbox = ?1 AND uid = ?2")?;
    let mut tombstone = tx.prepare_cached(
        "INSERT OR REPLACE INTO expunged (mailbox, uid, modseq) VALUES (?1, ?2, ?3)",
    )?;
    for uid in uids {
        delete.execute(params![mb.id, uid])?;
        tombstone.execute(params![mb.id, uid, modseq as i64])?;
    }
    save_counters(tx, &current, modseq)?;
    collect_garbage(tx, &contents)
}

/// For the `i`th message of a synced batch, a local message in the same mailbox that already
/// is it, now linked to it: (local UID, MODSEQ). Two cases:
/// - after an upstream UIDVALIDITY change (`relinking`), the same content linked to this folder
///   under the old UIDVALIDITY is the same message; it keeps its local UID and flags. A link
///   whose local message the user expunged or moved away, the change not yet written back,
///   counts too (its UID is returned; nothing is stored);
/// - the same content linked to no upstream message and not waiting to be uploaded: a local
///   MOVE or COPY written back without COPYUID, or one whose link was lost in a crash or a
///   broken connection between the upstream command and its commit (a COPY tried once may
///   have landed: linked here, it is not new mail, and the retry finds the copy made). An
///   APPEND, or a COPY not tried yet, waits for its own upload or COPY instead.
fn already_here(
    tx: &Connection,
    mb: &Mailbox,
    mark: &SyncMark,
    i: usize,
    relinking: bool,
    known: Option<i64>,
    message: &Prepared,
) -> Result<Option<(u32, i64)>, StoreError> {
    if relinking {
        // The same message as the server sent it; a link from before migration 5 has no
        // such hash, and is matched by the content stored.
        let upstream = mark.upstream.get(i).map(|h| &h[..]);
        // Two lookups, each on an index: by the upstream hash, then by stored content.
        // Among links with the same hash (identical messages), the lowest old upstream UID
        // first, as the server renumbers in order. A link whose local message is gone counts
        // too: expunged or moved away here, the change still waiting to be written back, or
        // expunged without UIDPLUS (the message stays upstream, marked \Deleted). Linked again,
        // it lets the change reach the renumbered message; its message is not stored again,
        // or what the user deleted or moved would come back.
        let by_upstream: Option<(u32, i64)> = match upstream {
            Some(hash) => tx
                .prepare_cached(
                    "SELECT s.uid, coalesce(m.modseq, 0) FROM sync_map s
                     LEFT JOIN messages m ON m.mailbox = s.mailbox AND m.uid = s.uid
                     WHERE s.account = ?1 AND s.folder = ?2 AND s.upstream_sha256 = ?5
                       AND s.uidvalidity != ?3 AND s.mailbox = ?4
                     ORDER BY s.upstream_uid
                     LIMIT 1",
                )?
                .query_row(
                    params![mb.account, mark.folder, mark.uidvalidity, mb.id, hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
            None => None,
        };
        let old: Option<(u32, i64)> = match by_upstream {
            Some(found) => Some(found),
            None => tx
                .prepare_cached(
                    "SELECT s.uid, m.modseq FROM contents c
                     JOIN messages m ON m.content = c.id AND m.mailbox = ?4
                     JOIN sync_map s ON s.mailbox = m.mailbox AND s.uid = m.uid
                     WHERE c.sha256 = ?5 AND s.account = ?1 AND s.folder = ?2
                       AND s.uidvalidity != ?3 AND s.upstream_sha256 IS NULL
                     LIMIT 1",
                )?
                .query_row(
                    params![
                        mb.account,
                        mark.folder,
                        mark.uidvalidity,
                        mb.id,
                        &message.sha256[..]
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
        };
        if let Some((uid, modseq)) = old {
            tx.prepare_cached(
                "UPDATE sync_map SET uidvalidity = ?1, upstream_uid = ?2,
                   upstream_sha256 = coalesce(?7, upstream_sha256)
                 WHERE account = ?3 AND folder = ?4 AND mailbox = ?5 AND uid = ?6",
            )?
            .execute(params![
                mark.uidvalidity,
                mark.uids[i],
                mb.account,
                mark.folder,
                mb.id,
                uid,
                upstream
            ])?;
            return Ok(Some((uid, modseq)));
        }
    }
    let Some(content) = known else {
        return Ok(None);
    };
    let unlinked: Option<(u32, i64)> = tx
        .prepare_cached(
            "SELECT m.uid, m.modseq FROM messages m
             WHERE m.mailbox = ?1 AND m.content = ?2
               AND NOT EXISTS (SELECT 1 FROM sync_map s
                               WHERE s.mailbox = m.mailbox AND s.uid = m.uid)
               AND NOT EXISTS (SELECT 1 FROM journal j
                               WHERE j.account = ?3 AND j.mailbox = ?4 AND j.uid = m.uid
                                 AND (j.kind = 'append' OR (j.kind = 'copy' AND j.attempts = 0)))
             ORDER BY m.uid LIMIT 1",
        )?
        .query_row(params![mb.id, content, mb.account, mb.name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((uid, _)) = unlinked {
        link_upstream(tx, mb.account, mark, i, mb.id, uid)?;
    }
    Ok(unlinked)
}

/// Links the `i`th message of a synced batch (upstream UID `mark.uids[i]`) to a local message.
fn link_upstream(
    tx: &Connection,
    account: AccountId,
    mark: &SyncMark,
    i: usize,
    mailbox: MailboxId,
    uid: u32,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sync_map (account, folder, uidvalidity, upstream_uid, mailbox, uid,
           upstream_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        account,
        mark.folder,
        mark.uidvalidity,
        mark.uids[i],
        mailbox,
        uid,
        mark.upstream.get(i).map(|h| &h[..])
    ])?;
    Ok(())
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
