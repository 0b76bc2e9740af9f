//! The outgoing queue behind the sendmail drop-in: submissions arrive durably in the drop
//! directory ([`spool`]), the runner moves them into a SQLite queue (synchronous=FULL) and
//! delivers one copy per recipient through the rewrite core and the [`relay`], keeping the
//! state of every recipient: queued (with the last temporary error and the next attempt,
//! exponential backoff), sent, or failed (the sender gets a [`bounce`]).
//!
//! Layout of `[queue] dir`:
//! - `incoming/` — drop directory (mode 1733 on a shared system; see [`spool`]).
//! - `queue.sqlite` — messages and per-recipient state, owned by the runner, mode 0600.
//! - `run.lock` — one runner at a time (flock); a second one waits, then runs. Of the runs
//!   any other does as well (after a submission, the timer's), one waits (`wait.lock`) and
//!   the others leave.
//! - `corrupt/` — drop files that could not be read, kept for the administrator.
//! - `run.log`, `run.log.1` — what the runs sendmail starts in the background print.
//!
//! No loss, no duplicate: a submission enters the database under its drop-file name before the
//! file is removed (a crash in between re-reads the same id and ignores it); a copy is marked
//! sent in its own committed transaction right after the relay's 250, so a crash can at worst
//! repeat the copies that were in flight when the relay had already answered (RFC 1047): one
//! per message in hand, up to `MESSAGES_IN_FLIGHT` (8) at once (review: one kill -9 during a
//! relay's slow final reply gave 8 copies twice).

pub mod bounce;
pub mod relay;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;

use crate::rewrite::{self, Copy, Decision, Envelope, Prepared, Rewriter};
use crate::sendmail::flags::Notify;
use bounce::Recipient;
use relay::{Dsn, Relay, Sent};
use spool::Submission;

/// `[queue]`: the sendmail drop-in's queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub dir: PathBuf,
    /// Larger submissions are refused (exit 65). Postfix's message_size_limit default.
    pub max_message_bytes: usize,
    /// After this long in the queue a recipient is bounced (Postfix: maximal_queue_lifetime).
    pub lifetime_hours: u64,
    /// Backoff between attempts: doubles from min to max (Postfix: minimal/maximal_backoff_time).
    pub min_backoff_secs: u64,
    pub max_backoff_secs: u64,
    /// sendmail starts a queue run in the background after queueing, when it may (it owns the
    /// queue). On a shared system the runner is started by systemd instead (sealpost-queue.path).
    pub run_after_submit: bool,
    /// Domain for From and Message-ID fields sendmail adds; default: the host name.
    pub domain: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            dir: PathBuf::from("/var/spool/sealpost"),
            max_message_bytes: 10_240_000,
            lifetime_hours: 120,
            min_backoff_secs: 300,
            max_backoff_secs: 4000,
            run_after_submit: true,
            domain: None,
        }
    }
}

impl QueueConfig {
    pub fn incoming(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// The drop directory, created when it is missing: owner-only (0700) in a personal queue,
    /// and in a shared one (a queue directory others may search but not read, 0711 as the
    /// package makes it) mode 1733 and the queue directory's owner's, as the package makes it
    /// (review: made 0700 by root's sendmail or the service's first run, every other user's
    /// submission then failed with 77). A personal queue directory made by a plain `mkdir`
    /// (0755) stays personal (review: its drop directory became writable by anyone).
    pub fn ensure_incoming(&self) -> Result<PathBuf, QueueError> {
        self.make_incoming(false)
    }

    /// [`Self::ensure_incoming`] for a submission. The queue directory's owner submitting
    /// (not root) makes its drop directory its own alone whatever the directory's mode: a
    /// user's queue made 0751 by a `mkdir` under umask 026 is no shared queue (review: its
    /// drop directory was made 1733, and another user's message went out with the owner's
    /// key and relay login). A shared queue's drop directory is the package's, or made by
    /// root's submission or by its runner.
    pub fn ensure_incoming_to_submit(&self) -> Result<PathBuf, QueueError> {
        self.make_incoming(true)
    }

    fn make_incoming(&self, submitting: bool) -> Result<PathBuf, QueueError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        self.check_modes()?;
        let incoming = self.incoming();
        let shared = std::fs::metadata(&self.dir)
            .ok()
            .filter(|m| is_shared(m.mode()));
        if let Some(made) = std::fs::metadata(&incoming).ok().filter(|m| m.is_dir()) {
            // A personal queue's drop directory that others may write to (made 1733 by a
            // version that took a 0755 queue for shared: review) is the owner's alone again:
            // otherwise any user's message would go out with the owner's key and relay login.
            // (One in a directory that looks shared stays: it may be the package's. What
            // others drop there is read only as sendmail writes it: see `spool::read`.)
            if shared.is_none() && made.uid() == current_uid() && made.mode() & 0o022 != 0 {
                tracing::warn!(
                    "{}: a personal queue's drop directory others could write to: made the \
                     owner's alone (0700)",
                    incoming.display()
                );
                let _ = std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o700));
            }
            return Ok(incoming);
        }
        let uid = current_uid();
        let shared = shared.filter(|m| !(submitting && uid != 0 && m.uid() == uid));
        let Some(queue_dir) = shared else {
            create_private_dir(&incoming)?;
            return Ok(incoming);
        };
        let io = |source| QueueError::Io {
            path: incoming.display().to_string(),
            source,
        };
        // Made owner-only, then given away and opened up: nobody gets in before it is 1733.
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&incoming)
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(incoming),
            Err(e) => return Err(io(e)),
        }
        if current_uid() != queue_dir.uid() {
            std::os::unix::fs::chown(&incoming, Some(queue_dir.uid()), Some(queue_dir.gid()))
                .map_err(io)?;
        }
        std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o1733)).map_err(io)?;
        Ok(incoming)
    }

    /// Modes that would let other users at queued mail, refused as `postfix check` warns of
    /// them (review: neither was noticed): a queue directory that any user may write to
    /// (anyone could put a -wal file of their own beside the database, which SQLite then
    /// writes queued messages into, or replace the database), and a shared drop directory
    /// that others may write to without the sticky bit (anyone could delete another's message
    /// after sendmail said it was queued).
    pub fn check_modes(&self) -> Result<(), QueueError> {
        use std::os::unix::fs::MetadataExt;
        let unsafe_mode = |path: &Path, mode: u32, why: &str, fix: &str| {
            Err(QueueError::Unsafe(format!(
                "{} has mode {:04o}: {why}; refused until it is {fix}",
                path.display(),
                mode & 0o7777
            )))
        };
        let Ok(queue) = std::fs::metadata(&self.dir) else {
            return Ok(());
        };
        // Group write is left be in a personal queue: with umask 002 (user private groups) a
        // plain mkdir makes one 0775, its group the user's own (review: refused, every
        // submission 75). Not in a shared one (0711: others may enter, not list), whose
        // group may be anyone's (review).
        let writers = if is_shared(queue.mode()) {
            0o022
        } else {
            0o002
        };
        if queue.mode() & writers != 0 {
            return unsafe_mode(
                &self.dir,
                queue.mode(),
                "other users may write to the queue directory, and so replace its files",
                "0711 (shared) or 0700 (personal)",
            );
        }
        let incoming = self.incoming();
        if let Ok(drop) = std::fs::symlink_metadata(&incoming) {
            if drop.is_dir() && drop.mode() & 0o002 != 0 && drop.mode() & 0o1000 == 0 {
                return unsafe_mode(
                    &incoming,
                    drop.mode(),
                    "others may write to the drop directory without the sticky bit, and so \
                     delete anyone's queued message",
                    "1733",
                );
            }
        }
        Ok(())
    }

    /// The largest spool file the runner reads: the message's limit, and 4 MiB for the
    /// envelope on top (one line per recipient: some 50,000 of them; 64 KiB, before, made a
    /// 2,500-recipient submission look corrupt after sendmail had said yes). Submissions
    /// check it before they are spooled, so that none is accepted and then set aside.
    pub fn spool_file_limit(&self) -> u64 {
        self.max_message_bytes as u64 + 4 * 1024 * 1024
    }

    /// The domain of locally made addresses and Message-IDs.
    pub fn domain(&self) -> String {
        self.domain.clone().unwrap_or_else(hostname)
    }

    /// The wait before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> u64 {
        let factor = 1u64 << attempts.saturating_sub(1).min(20);
        self.min_backoff_secs
            .saturating_mul(factor)
            .min(self.max_backoff_secs.max(self.min_backoff_secs))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "queue database {path}: {source}{}",
        crate::store::file_system_trouble(std::path::Path::new(path), source)
    )]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("queue {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no such queue entry: {0}")]
    NotFound(String),
    /// A mode or owner that would let other users at queued mail ([`QueueConfig::check_modes`]).
    #[error("queue: {0}")]
    Unsafe(String),
}

/// Whether a queue directory of this mode is shared (0711, as the package makes it: others
/// may enter, not list) rather than personal.
fn is_shared(mode: u32) -> bool {
    mode & 0o005 == 0o001
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// This host's name (for HELO, Message-IDs and reports).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The login name of `uid` (the passwd entry), or the number.
pub fn user_name(uid: u32) -> String {
    passwd_entry(uid).map_or_else(|| uid.to_string(), |(name, _)| name)
}

/// The login name and home directory of `uid` in the passwd database.
pub fn passwd_entry(uid: u32) -> Option<(String, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; the strings are copied out before buf
    // drops.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name and pw_dir point into buf, NUL-terminated, when getpwuid_r succeeded.
    let (name, dir) = unsafe {
        (
            std::ffi::CStr::from_ptr(pwd.pw_name),
            std::ffi::CStr::from_ptr(pwd.pw_dir),
        )
    };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())),
    ))
}

/// The uid of this process.
pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// One queued message as `queue list` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub size: u64,
    pub arrived: i64,
    pub sender: String,
    /// Recipients still queued, each with the last temporary error.
    pub recipients: Vec<(String, Option<String>)>,
}

/// Which queued recipients a run attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Those whose backoff has passed (the timer's run, the run after a submission).
    Due,
    /// Every queued recipient now (`queue run`, `sendmail -q`: a flush).
    All,
    /// One message (`sendmail -qI ID`).
    One(String),
}

impl Scope {
    /// Recipients whose next attempt is at or before this time are attempted.
    fn horizon(&self, at: i64) -> i64 {
        match self {
            Scope::Due => at,
            Scope::All | Scope::One(_) => i64::MAX,
        }
    }
}

/// What a run did, for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub picked_up: usize,
    pub sent: usize,
    pub deferred: usize,
    pub failed: usize,
    pub bounces: usize,
}

impl RunReport {
    /// Counts what [`Runner::defer`] did: deferred (Some) or failed (None, expired).
    fn count_deferral(&mut self, deferral: Deferral) {
        match deferral {
            Deferral::Until(_) => self.deferred += 1,
            Deferral::Expired => self.failed += 1,
            Deferral::Gone => {}
        }
    }
}

/// What became of a recipient whose copy could not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deferral {
    /// Tried again from then on (Unix seconds).
    Until(i64),
    /// Its lifetime is over: failed, reported.
    Expired,
    /// No longer queued: `queue delete` took the message while its copy was on the way.
    Gone,
}

/// `message` with a trace field naming the local user who submitted it, as Postfix's pickup
/// writes one ("from userid N"): any user may give any envelope sender and From (`-f`, a
/// drop file of their own), and the recipients and the reader of a report can see who did
/// (review: nothing in the mail named the real user). A trace field stays outside the
/// signature and the encryption, as every Received field does.
fn traced(message: &[u8], id: &str, uid: u32, now: i64) -> Vec<u8> {
    let field = format!(
        "Received: by {} (sealpost, from userid {uid})\r\n\tid {id}; {}\r\n",
        hostname(),
        mail_parser::DateTime::from_timestamp(now).to_rfc822()
    );
    let mut traced = Vec::with_capacity(field.len() + message.len());
    traced.extend_from_slice(field.as_bytes());
    traced.extend_from_slice(message);
    traced
}

/// The queue database.
pub struct Queue {
    config: QueueConfig,
    db: Mutex<Connection>,
    db_path: PathBuf,
}

impl Queue {
    /// Opens (creating when missing) the queue under `config.dir`.
    pub fn open(config: &QueueConfig) -> Result<Queue, QueueError> {
        // Before anything is made in it (review: corrupt/ was, then the queue refused).
        config.check_modes()?;
        for dir in [config.dir.clone(), config.dir.join("corrupt")] {
            create_private_dir(&dir)?;
        }
        config.ensure_incoming()?;
        let db_path = config.dir.join("queue.sqlite");
        let db_err = |source| QueueError::Db {
            path: db_path.display().to_string(),
            source,
        };
        // The database holds every queued message: its owner's alone, whoever opens it first
        // (`mailq` or `queue delete` with umask 022 included). SQLite gives its -wal and -shm
        // files the database file's mode.
        private_file(&db_path).map_err(|source| QueueError::Io {
            path: db_path.display().to_string(),
            source,
        })?;
        // Before SQLite opens it: as root, SQLite gives the -wal and -shm files it creates the
        // database file's owner.
        give_to_owner(
            &config.dir,
            &[
                config.incoming(),
                config.dir.join("corrupt"),
                db_path.clone(),
            ],
        )?;
        use std::os::unix::fs::MetadataExt;
        // SQLite opens a -wal or -shm file it finds as it is: one that is not the database
        // owner's (planted while the directory was open to others, say) would be read and
        // written with queued messages (review).
        let owner = std::fs::metadata(&db_path)
            .map_err(|source| QueueError::Io {
                path: db_path.display().to_string(),
                source,
            })?
            .uid();
        for suffix in ["-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", db_path.display()));
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if !meta.is_file() || meta.uid() != owner {
                    return Err(QueueError::Unsafe(format!(
                        "{} is not a file of the database's owner (uid {owner}): refused \
                         until it is removed",
                        path.display()
                    )));
                }
            }
        }
        let conn = Connection::open(&db_path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
        crate::store::wal_mode(&conn).map_err(db_err)?;
        // A message the caller was told is queued survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&conn).map_err(db_err)?;
        Ok(Queue {
            config: config.clone(),
            db: Mutex::new(conn),
            db_path,
        })
    }

    /// Opens the queue database to read it only: `queue list` (mailq) on a file system that
    /// is full or mounted read-only, where [`Queue::open`] cannot write and a listing is what
    /// the administrator needs (review: exit 75 there, nothing shown). Nothing is created,
    /// migrated or picked up.
    ///
    /// SQLite reads a WAL database through its -shm file, which it must create or grow; where
    /// it cannot, the database is read as immutable, but only while its -wal file is missing
    /// or empty: then the database file alone holds every committed change. A -wal with
    /// content (a runner still at work, or a crash) is never skipped; the error stands.
    pub fn open_read_only(config: &QueueConfig) -> Result<Queue, QueueError> {
        use rusqlite::OpenFlags;
        let db_path = config.dir.join("queue.sqlite");
        let db_err = |source| QueueError::Db {
            path: db_path.display().to_string(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // SQLite opens lazily: the first read shows whether the database can be read.
        let readable = |conn: Connection| -> rusqlite::Result<Connection> {
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))?;
            Ok(conn)
        };
        let plain = Connection::open_with_flags(sqlite_uri(&db_path, ""), flags).and_then(readable);
        let conn = match plain {
            Ok(conn) => conn,
            Err(e) => {
                let wal = PathBuf::from(format!("{}-wal", db_path.display()));
                match std::fs::metadata(&wal) {
                    Ok(meta) if meta.len() > 0 => return Err(db_err(e)),
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(db_err(e))
                    }
                    _ => {}
                }
                let immutable =
                    Connection::open_with_flags(sqlite_uri(&db_path, "?immutable=1"), flags);
                match immutable.and_then(readable) {
                    Ok(conn) => conn,
                    // Made on a full file system and never given its tables (an empty file,
                    // or a header alone): it holds no message, and the drop files waiting are
                    // what there is to list (review: 75, and they went unnamed).
                    Err(_) if never_given_tables(&db_path) => {
                        let conn = Connection::open_in_memory().map_err(db_err)?;
                        conn.execute_batch(SCHEMA).map_err(db_err)?;
                        conn
                    }
                    Err(_) => return Err(db_err(e)),
                }
            }
        };
        Ok(Queue {
            config: config.clone(),
            db: Mutex::new(conn),
            db_path,
        })
    }

    fn db_err(&self, source: rusqlite::Error) -> QueueError {
        QueueError::Db {
            path: self.db_path.display().to_string(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every readable submission from the drop directory into the database.
    pub fn pick_up(&self) -> Result<usize, QueueError> {
        let incoming = self.config.incoming();
        let io = |source| QueueError::Io {
            path: incoming.display().to_string(),
            source,
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(&incoming)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let limit = self.config.spool_file_limit();
        let mut count = 0;
        for path in names {
            // A socket, a FIFO, a directory, a link: not something sendmail writes, and one
            // that cannot be opened would stay, keeping the directory non-empty.
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
                if path.exists() || path.is_symlink() {
                    self.set_aside(&path, "not a regular file");
                }
                continue;
            }
            let picked = match spool::read(&path, limit) {
                Ok(Some(p)) => p,
                Ok(None) if is_temp(&path) => {
                    remove_stale_temp(&path);
                    continue;
                }
                Ok(None) => {
                    // A name sendmail never writes (a user's `touch`): left in place it would
                    // keep the directory non-empty, and the path unit starting runs.
                    self.set_aside(&path, "not a submission: a name sendmail does not write");
                    continue;
                }
                Err(e @ spool::SpoolError::Unreadable { .. }) => {
                    // A runner without the right to read users' files (run by hand as the
                    // wrong user): their mail stays for the real runner.
                    tracing::error!("{e}; left in place for a runner that may read it");
                    continue;
                }
                Err(e) => {
                    self.set_aside(&path, &e.to_string());
                    continue;
                }
            };
            let mut submission = match picked.submission {
                Ok(s) => s,
                Err(reason) => {
                    self.set_aside(&path, &reason);
                    continue;
                }
            };
            submission.message = traced(&submission.message, &picked.id, picked.uid, now());
            // Known already: queued by an earlier pick-up that could not remove the file (or
            // one a crash cut short before it did). Not queued or counted again.
            let known = !self.insert(&picked.id, picked.uid, &submission, now())?;
            // `queue list` picks up too: another process may have removed it first. One that
            // cannot be removed (a drop directory made root's by mistake) is queued all the
            // same, once, and stops neither the others nor the run (review: every run ended
            // at it, with exit 77, and delivered nothing). Its record is kept while the file
            // is there (see `purge`), so it is never queued a second time.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::error!(
                    "{}: queued as {}, but cannot be removed from the drop directory ({e}): \
                     remove it by hand",
                    path.display(),
                    picked.id
                ),
                _ => {}
            }
            if known {
                continue;
            }
            tracing::info!(
                "{}: queued from uid {} ({}), sender <{}>, {} recipient(s), {} bytes",
                picked.id,
                picked.uid,
                user_name(picked.uid),
                submission.sender,
                submission.recipients.len(),
                submission.message.len()
            );
            count += 1;
        }
        if count > 0 {
            std::fs::File::open(&incoming)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(count)
    }

    /// Keeps an unreadable drop file for the administrator instead of deleting it.
    fn set_aside(&self, path: &Path, reason: &str) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let corrupt = self.config.dir.join("corrupt");
        // Never over a file kept before (one user's name could otherwise replace another's).
        let target = (0..)
            .map(|n| match n {
                0 => corrupt.join(&*name),
                n => corrupt.join(format!("{name}.{n}")),
            })
            .find(|t| !t.exists() && !t.is_symlink())
            .expect("an unused name");
        match std::fs::rename(path, &target) {
            Ok(()) => tracing::error!(
                "{}: unreadable submission moved to {}: {reason}",
                path.display(),
                target.display()
            ),
            Err(e) => tracing::error!(
                "{}: unreadable submission ({reason}) and cannot move it aside: {e}",
                path.display()
            ),
        }
    }

    /// Adds a message (idempotent: an id already known is ignored, even once finished);
    /// whether it was new.
    fn insert(&self, id: &str, uid: u32, s: &Submission, at: i64) -> Result<bool, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let added = tx
            .execute(
                "INSERT OR IGNORE INTO messages(id, uid, sender, notify, envid, arrived, size, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    uid,
                    s.sender,
                    s.notify.as_str(),
                    s.envid,
                    at,
                    s.message.len() as i64,
                    s.message
                ],
            )
            .map_err(|e| self.db_err(e))?;
        if added == 1 {
            // As the rewrite core names them (no angle brackets, one per address whatever its
            // case): each gets exactly one copy, matched by that name. A second spelling of
            // an address got no copy, was retried every run and bounced after the lifetime.
            for r in crate::rewrite::recipients(&s.recipients) {
                // Its own NOTIFY and ORCPT from a -bs session (the first of its spellings).
                let own = s
                    .recipient_dsn
                    .iter()
                    .find(|d| crate::rewrite::same_recipient(&d.address, &r.address));
                tx.execute(
                    "INSERT OR IGNORE INTO recipients(message, address, state, next_attempt,
                       notify, orcpt)
                     VALUES (?1, ?2, 'queued', ?3, ?4, ?5)",
                    params![
                        id,
                        r.address,
                        at,
                        own.map(|d| d.notify.as_str()),
                        own.and_then(|d| d.orcpt.clone())
                    ],
                )
                .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(added == 1)
    }

    /// The messages with recipients still queued, oldest first.
    pub fn list(&self) -> Result<Vec<Entry>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT m.id, m.size, m.arrived, m.sender, r.address, r.reason
                 FROM messages m JOIN recipients r ON r.message = m.id
                 WHERE r.state = 'queued' ORDER BY m.arrived, m.id, r.rowid",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(|e| self.db_err(e))?;
        let mut entries: Vec<Entry> = Vec::new();
        for row in rows {
            let (id, size, arrived, sender, address, reason) = row.map_err(|e| self.db_err(e))?;
            match entries.last_mut() {
                Some(e) if e.id == id => e.recipients.push((address, reason)),
                _ => entries.push(Entry {
                    id,
                    size: size as u64,
                    arrived,
                    sender,
                    recipients: vec![(address, reason)],
                }),
            }
        }
        Ok(entries)
    }

    /// Drop files not yet picked up (visible to the queue's owner only); one queued already,
    /// whose file could not be removed, is in the queue's list, not here.
    pub fn waiting(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.config.incoming())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .filter(|n| !self.knows(n).unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Removes a message from the queue: nothing more is sent, no report goes out.
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        // Only a queue id may name a file here: `delete /path` or `x/../../queue.sqlite`
        // must not unlink anything.
        if !spool::is_id(id) {
            return Err(QueueError::NotFound(id.to_string()));
        }
        let dropped = self.config.incoming().join(id);
        let in_drop = std::fs::remove_file(&dropped).is_ok();
        let mut conn = self.conn();
        // One transaction: what it changed says whether the id was known.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        if in_drop {
            // A runner may have read the drop file just before it went, and not yet queued
            // it: a finished row under its id, written first, makes that runner's insert a
            // no-op (an id already known is ignored), so the deleted message is never
            // delivered. A runner that queued it before this row is caught below.
            tx.execute(
                "INSERT OR IGNORE INTO messages(id, uid, sender, notify, envid, arrived, size,
                   raw, finished)
                 VALUES (?1, 0, '', 'never', NULL, ?2, 0, x'', ?2)",
                params![id, now()],
            )
            .map_err(|e| self.db_err(e))?;
        }
        let changed = tx
            .execute(
                "UPDATE recipients SET state = 'failed', bounced = 1,
                   reason = 'deleted from the queue by the administrator'
                 WHERE message = ?1 AND state = 'queued'",
                params![id],
            )
            .map_err(|e| self.db_err(e))?;
        // A message with nothing queued but not yet finished (a run was killed before its
        // report) is deleted too, its report with it: it was in the queue all the same.
        let finished = tx
            .execute(
                "UPDATE messages SET raw = x'', finished = ?2 WHERE id = ?1 AND finished IS NULL",
                params![id, now()],
            )
            .map_err(|e| self.db_err(e))?;
        if changed == 0 && finished == 0 && !in_drop {
            return Err(QueueError::NotFound(id.to_string()));
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        // A copy a running queue run is handing to the relay now still goes, and is then
        // recorded as sent (review: "not delivered" was logged for one that went after it).
        tracing::info!(
            "{id}: deleted from the queue ({changed} recipient(s) not delivered yet; a copy a \
             running queue run is handing to the relay now may still go)"
        );
        Ok(())
    }

    /// True when the queue has (or had) a message with this id.
    fn knows(&self, id: &str) -> Result<bool, QueueError> {
        self.conn()
            .query_row("SELECT 1 FROM messages WHERE id = ?1", params![id], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.db_err(e))
    }

    /// Unfinished messages with no recipient left to attempt: a run stopped (crash, kill, a
    /// database error) after a recipient's last result and before the message's report and
    /// finish, which only follow an attempt. Without this the sender would never hear of the
    /// failed recipients. Also those owing a "relayed" notice while other recipients wait
    /// for their retry, so that the notice does not wait with them.
    fn stranded(&self) -> Result<Vec<String>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id FROM messages m WHERE finished IS NULL AND (NOT EXISTS
                 (SELECT 1 FROM recipients r WHERE r.message = m.id AND r.state = 'queued')
                 OR EXISTS (SELECT 1 FROM recipients r WHERE r.message = m.id AND {OWED_NOTICE}))
                 ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.db_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db_err(e));
        ids
    }

    /// Ids of messages with recipients to attempt in this scope, each with its size in bytes.
    fn due(&self, scope: &Scope, at: i64) -> Result<Vec<(String, u64)>, QueueError> {
        let only = match scope {
            Scope::One(id) => Some(id.as_str()),
            Scope::Due | Scope::All => None,
        };
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT m.id, m.size FROM messages m
                 WHERE m.id IN (SELECT message FROM recipients
                     WHERE state = 'queued' AND next_attempt <= ?1
                     AND (?2 IS NULL OR message = ?2))
                 ORDER BY m.id",
            )
            .map_err(|e| self.db_err(e))?;
        let ids = stmt
            .query_map(params![scope.horizon(at), only], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(|e| self.db_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db_err(e));
        ids
    }

    fn load(&self, id: &str, scope: &Scope, at: i64) -> Result<Option<Loaded>, QueueError> {
        let conn = self.conn();
        let message = conn
            .query_row(
                "SELECT sender, notify, envid, arrived, raw, report FROM messages
                 WHERE id = ?1 AND finished IS NULL",
                params![id],
                |r| {
                    Ok(Loaded {
                        id: id.to_string(),
                        report: r.get(5)?,
                        sender: r.get(0)?,
                        notify: Notify::parse(&r.get::<_, String>(1)?).unwrap_or_default(),
                        envid: r.get(2)?,
                        arrived: r.get(3)?,
                        raw: r.get(4)?,
                        due: Vec::new(),
                    })
                },
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        let Some(mut message) = message else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare(
                "SELECT address, attempts, next_attempt, notify, orcpt FROM recipients
                 WHERE message = ?1 AND state = 'queued' ORDER BY rowid",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                    ),
                    (
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ),
                ))
            })
            .map_err(|e| self.db_err(e))?;
        for row in rows {
            let ((address, attempts, next), (notify, orcpt)) = row.map_err(|e| self.db_err(e))?;
            if next <= scope.horizon(at) {
                message.due.push(Due {
                    address,
                    attempts,
                    notify: notify.as_deref().and_then(Notify::parse),
                    orcpt,
                });
            }
        }
        Ok(Some(message))
    }

    /// Whether a recipient of a message still waits to be delivered (not deleted meanwhile).
    fn is_queued(&self, id: &str, rcpt: &str) -> Result<bool, QueueError> {
        self.conn()
            .query_row(
                "SELECT state = 'queued' FROM recipients WHERE message = ?1 AND address = ?2",
                params![id, rcpt],
                |r| r.get(0),
            )
            .optional()
            .map(|queued| queued.unwrap_or(false))
            .map_err(|e| self.db_err(e))
    }

    /// Marks the rows of one mailbox sent, all or none (an older version's twin rows).
    /// Each recipient with whether the sender is owed a "relayed" notice for it (a row then
    /// matches [`OWED_NOTICE`] until [`Self::report_and_finish`] queues it).
    fn mark_sent(&self, id: &str, rcpts: &[(&str, bool)], reply: &str) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        for (rcpt, notice) in rcpts {
            tx.execute(
                "UPDATE recipients SET state = 'sent', reason = ?3, attempts = attempts + 1,
                     status = ?4
                 WHERE message = ?1 AND address = ?2",
                params![id, rcpt, reply, notice.then_some("2.0.0")],
            )
            .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Before copies go to the relay: room to record them ([`crate::reserve`]). An error:
    /// there is none, and nothing may be sent.
    fn ensure_reserve(&self) -> Result<(), QueueError> {
        let reserve = self.reserve();
        reserve.ensure().map_err(|source| QueueError::Io {
            path: reserve.path().display().to_string(),
            source,
        })?;
        give_to_owner(&self.config.dir, &[reserve.path().to_path_buf()])
    }

    /// Before copies go to the relay: the database takes a write now
    /// ([`crate::store::write_check`]), so that a copy the relay takes can be recorded.
    fn ensure_writable(&self) -> Result<(), QueueError> {
        crate::store::write_check(&mut self.conn()).map_err(|e| self.db_err(e))
    }

    /// Folds the WAL back into the database file and empties it, at the end of a run. SQLite
    /// does so on its own as the WAL grows and at the last close, but gives up without a word
    /// when the database file cannot grow: on a full file system the WAL then kept the room a
    /// big message took after it had gone, and every submission failed for want of it (review:
    /// a 608 KB message on a 2 MB file system, then exit 75 for each sendmail, for good). The
    /// reserve is given up for it then, and made again after. An error: the WAL stays as it
    /// is (nothing is lost; the next run tries again).
    pub fn fold_wal(&self) -> Result<(), QueueError> {
        let db = self.conn();
        let checkpoint = || {
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
        };
        let full =
            |e: &rusqlite::Error| e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
        let done = match checkpoint() {
            Err(e) if full(&e) => {
                tracing::warn!(
                    "queue: no room to fold the queue's log into its database ({e}); giving \
                     up the reserve for it"
                );
                self.release_reserve();
                let again = checkpoint();
                if let Err(e) = self.ensure_reserve() {
                    tracing::warn!("queue: the reserve cannot be made again yet: {e}");
                }
                again
            }
            other => other,
        };
        // 1: a reader held part of the log; it is folded at a later run.
        done.map(|_busy| ()).map_err(|source| self.db_err(source))
    }

    /// Frees the reserve for the record of a copy the relay took.
    fn release_reserve(&self) {
        self.reserve().release();
    }

    fn reserve(&self) -> crate::reserve::Reserve {
        crate::reserve::Reserve::new(self.config.dir.join("space.reserve"))
    }

    /// Only a recipient still queued: one deleted meanwhile (`queue delete`) keeps the
    /// administrator's reason.
    /// The recipient waits until the returned time; None when it is no longer queued (the
    /// message deleted while a copy was on the wire).
    fn mark_deferred(
        &self,
        id: &str,
        due: &Due,
        reason: &str,
        at: i64,
    ) -> Result<Option<i64>, QueueError> {
        let next = at + self.config.backoff(due.attempts + 1) as i64;
        let changed = self
            .conn()
            .execute(
                "UPDATE recipients SET reason = ?3, attempts = attempts + 1, next_attempt = ?4
                 WHERE message = ?1 AND address = ?2 AND state = 'queued'",
                params![id, due.address, reason, next],
            )
            .map_err(|e| self.db_err(e))?;
        Ok((changed > 0).then_some(next))
    }

    /// Only a recipient still queued, as [`Self::mark_deferred`].
    fn mark_failed(
        &self,
        id: &str,
        rcpt: &str,
        status: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.conn()
            .execute(
                "UPDATE recipients SET state = 'failed', status = ?3, reason = ?4, attempts = attempts + 1
                 WHERE message = ?1 AND address = ?2 AND state = 'queued'",
                params![id, rcpt, status, reason],
            )
            .map(drop)
            .map_err(|e| self.db_err(e))
    }

    /// Queues the report for the failed, unreported recipients of `m`, and the "relayed"
    /// notice for those sent that are owed one ([`Self::mark_sent`]), and marks them reported,
    /// in one transaction; then finishes `m` when nothing of it is queued. Returns the
    /// reports' queue ids.
    fn report_and_finish(
        &self,
        m: &Loaded,
        hostname: &str,
        domain: &str,
        at: i64,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn();
        // The write lock from the start: a deferred transaction that reads first fails at
        // once (SQLITE_BUSY, no busy timeout) when `mailq` or `queue delete` wrote meanwhile.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let failures: Vec<(Recipient, Option<Notify>)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT address, status, reason, notify, orcpt FROM recipients
                     WHERE message = ?1 AND state = 'failed' AND bounced = 0 ORDER BY rowid",
                )
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map(params![m.id], |r| {
                    let notify: Option<String> = r.get(3)?;
                    Ok((
                        Recipient {
                            recipient: r.get(0)?,
                            status: r
                                .get::<_, Option<String>>(1)?
                                .unwrap_or_else(|| "5.0.0".into()),
                            diagnostic: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                            original: r.get(4)?,
                        },
                        notify.as_deref().and_then(Notify::parse),
                    ))
                })
                .map_err(|e| self.db_err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))?
        };
        // Each recipient's own NOTIFY (a -bs session's RCPT), else the message's, says
        // whether its failure is reported.
        let failed = failures.len();
        let failures: Vec<Recipient> = failures
            .into_iter()
            .filter(|(_, own): &(Recipient, Option<Notify>)| own.unwrap_or(m.notify).failure)
            .map(|(f, _)| f)
            .collect();
        let mut report_ids = Vec::new();
        if failed > 0 {
            // No report about a report (RFC 3464 §2, RFC 5321 §4.5.5), nor when -N (or
            // each recipient's NOTIFY) said no.
            if !m.sender.is_empty() && !failures.is_empty() {
                let id = self.queue_report(
                    &tx,
                    m,
                    hostname,
                    domain,
                    at,
                    bounce::Action::Failed,
                    &failures,
                )?;
                tracing::info!(
                    "{}: non-delivery report {id} to <{}> for {} recipient(s){}",
                    m.id,
                    m.sender,
                    failures.len(),
                    match failed - failures.len() {
                        0 => String::new(),
                        n => format!("; {n} left out (their NOTIFY asked for no report)"),
                    }
                );
                report_ids.push(id);
            } else if m.sender.is_empty() {
                // A report that could not go (its recipient refused by the policy, say: a
                // sender without a key under encrypt-only): no one else will tell that sender
                // (review: said at info level only).
                tracing::warn!(
                    "{}: {failed} recipient(s) failed and the sender is empty (a report, or mail \
                     sent with -f '<>'): no one is told; for a report, the sender of the mail it \
                     reports on never learns of the failure",
                    m.id,
                );
            } else {
                tracing::info!(
                    "{}: {failed} recipient(s) failed; no report (-N or NOTIFY never)",
                    m.id,
                );
            }
            tx.execute(
                "UPDATE recipients SET bounced = 1 WHERE message = ?1 AND state = 'failed'",
                params![m.id],
            )
            .map_err(|e| self.db_err(e))?;
        }
        // RFC 3461 §5.2.2: a recipient whose NOTIFY asked for SUCCESS, handed to a relay
        // without DSN, gets its "relayed" notice from here, as nobody further on sends one.
        let relayed: Vec<Recipient> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT address, reason, orcpt FROM recipients WHERE message = ?1
                     AND {OWED_NOTICE} ORDER BY rowid"
                ))
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map(params![m.id], |r| {
                    let reply = r.get::<_, Option<String>>(1)?.unwrap_or_default();
                    // The relay's own enhanced code when it gave a success one ("250 2.6.0").
                    let status = Some(bounce::status_of(&reply, "2.0.0"))
                        .filter(|s| s.starts_with("2."))
                        .unwrap_or_else(|| "2.0.0".into());
                    Ok(Recipient {
                        recipient: r.get(0)?,
                        status,
                        diagnostic: reply,
                        original: r.get(2)?,
                    })
                })
                .map_err(|e| self.db_err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))?
        };
        if !relayed.is_empty() {
            // Owed only to a real sender (mark_sent's caller checks); a null one would send
            // the notice nowhere.
            if !m.sender.is_empty() {
                let id = self.queue_report(
                    &tx,
                    m,
                    hostname,
                    domain,
                    at,
                    bounce::Action::Relayed,
                    &relayed,
                )?;
                tracing::info!(
                    "{}: success notice {id} to <{}> for {} recipient(s) relayed without DSN",
                    m.id,
                    m.sender,
                    relayed.len(),
                );
                report_ids.push(id);
            }
            tx.execute(
                &format!("UPDATE recipients SET bounced = 1 WHERE message = ?1 AND {OWED_NOTICE}"),
                params![m.id],
            )
            .map_err(|e| self.db_err(e))?;
        }
        let left: i64 = tx
            .query_row(
                "SELECT count(*) FROM recipients WHERE message = ?1 AND state = 'queued'",
                params![m.id],
                |r| r.get(0),
            )
            .map_err(|e| self.db_err(e))?;
        if left == 0 {
            // The row stays (emptied) so that a drop file seen again is recognised.
            tx.execute(
                "UPDATE messages SET raw = x'', finished = ?2 WHERE id = ?1",
                params![m.id, at],
            )
            .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(report_ids)
    }

    /// Queues a report on `recipients` of `m` for its sender, inside `tx`: a message of the
    /// runner's own (null sender, NOTIFY never: no report about a report, RFC 3464 §2).
    /// Returns its queue id.
    #[allow(clippy::too_many_arguments)]
    fn queue_report(
        &self,
        tx: &rusqlite::Transaction<'_>,
        m: &Loaded,
        hostname: &str,
        domain: &str,
        at: i64,
        action: bounce::Action,
        recipients: &[Recipient],
    ) -> Result<String, QueueError> {
        let id = spool::new_id(at);
        let unique = spool::new_id(at);
        let report = bounce::render(&bounce::Report {
            hostname,
            domain,
            queue_id: &m.id,
            sender: &m.sender,
            envid: m.envid.as_deref(),
            arrived: m.arrived,
            now: at,
            unique: &unique,
            original: &m.raw,
            action,
            recipients,
        });
        tx.execute(
            "INSERT INTO messages(id, uid, sender, notify, envid, arrived, size, raw, report)
             VALUES (?1, ?2, '', 'never', NULL, ?3, ?4, ?5, 1)",
            params![id, current_uid(), at, report.len() as i64, report],
        )
        .map_err(|e| self.db_err(e))?;
        tx.execute(
            "INSERT INTO recipients(message, address, state, next_attempt) VALUES (?1, ?2, 'queued', ?3)",
            params![id, m.sender, at],
        )
        .map_err(|e| self.db_err(e))?;
        Ok(id)
    }

    /// Forgets finished messages older than twice the queue lifetime.
    /// Forgets messages finished more than twice the lifetime ago, but not one whose drop file
    /// is still there (it could not be removed): forgotten, it would be queued again, delivered
    /// or deleted already (review: a deleted message was queued again).
    fn purge(&self, at: i64) -> Result<(), QueueError> {
        let horizon = at - 2 * 3600 * self.config.lifetime_hours as i64;
        let incoming = self.config.incoming();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.db_err(e))?;
        let old: Vec<String> = tx
            .prepare("SELECT id FROM messages WHERE finished < ?1")
            .and_then(|mut stmt| {
                stmt.query_map(params![horizon], |r| r.get(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(|e| self.db_err(e))?;
        for id in old {
            if std::fs::symlink_metadata(incoming.join(&id)).is_ok() {
                continue;
            }
            tx.execute("DELETE FROM recipients WHERE message = ?1", params![id])
                .and_then(|_| tx.execute("DELETE FROM messages WHERE id = ?1", params![id]))
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }
}

/// The recipient rows that owe their sender a "relayed" notice (RFC 3461 §5.2.2): sent with
/// status 2.0.0 by [`Queue::mark_sent`], not yet reported.
const OWED_NOTICE: &str = "state = 'sent' AND status = '2.0.0' AND bounced = 0";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages(
    id TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    sender TEXT NOT NULL,
    notify TEXT NOT NULL,
    envid TEXT,
    arrived INTEGER NOT NULL,
    size INTEGER NOT NULL,
    raw BLOB NOT NULL,
    finished INTEGER,
    report INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients(
    message TEXT NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    status TEXT,
    reason TEXT,
    bounced INTEGER NOT NULL DEFAULT 0,
    notify TEXT,
    orcpt TEXT,
    PRIMARY KEY (message, address)
);
CREATE INDEX IF NOT EXISTS recipients_queued ON recipients(state, next_attempt);
";

/// Whether the database at `path` is empty or a database without a single table: what a
/// first open leaves where SQLite could write no more than the header.
fn never_given_tables(path: &Path) -> bool {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return true;
    }
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(sqlite_uri(path, "?immutable=1"), flags)
        .and_then(|conn| crate::store::tables(&conn))
        .is_ok_and(|tables| tables.is_empty())
}

/// An SQLite URI for the file at `path` (RFC 3986 percent-encoding: a path may hold `?`, `#`
/// or `%`), followed by `query`.
fn sqlite_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str(query);
    uri
}

/// Brings a queue made by an earlier version up to [`SCHEMA`]. `messages.report` (added
/// when a user's message with a null sender was found taken for a report): a report is one
/// the runner wrote: a null sender, no notification, and a delivery-status report of
/// sealpost's own (a user's `-f '<>' -N never` message has the first two too).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| {
        conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
    };
    if has("messages", "report")? && has("recipients", "notify")? {
        return Ok(());
    }
    // Looked at again under the write lock: two runners that open an older queue at once
    // would otherwise both add the column, and the second would fail ("duplicate column").
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let changed = (|| {
        if !has("messages", "report")? {
            conn.execute_batch(
                "ALTER TABLE messages ADD COLUMN report INTEGER NOT NULL DEFAULT 0;
                 UPDATE messages SET report = 1 WHERE sender = '' AND notify = 'never'
                     AND instr(raw, CAST('report-type=delivery-status' AS BLOB)) > 0
                     AND instr(raw, CAST('X-Sealpost-Queue-ID: ' AS BLOB)) > 0;",
            )?;
        }
        // `recipients.notify` and `.orcpt`: a -bs recipient's own NOTIFY and ORCPT (NULL:
        // the message's NOTIFY, no ORCPT).
        if !has("recipients", "notify")? {
            conn.execute_batch(
                "ALTER TABLE recipients ADD COLUMN notify TEXT;
                 ALTER TABLE recipients ADD COLUMN orcpt TEXT;",
            )?;
        }
        Ok(())
    })();
    match changed {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A message loaded for delivery, with the recipients this run attempts.
struct Loaded {
    id: String,
    /// A non-delivery report the runner wrote: sent as a report ([`bounce::prepare`]), not
    /// as a user's message. A user's message may have a null sender too (`-f '<>'`).
    report: bool,
    sender: String,
    notify: Notify,
    envid: Option<String>,
    arrived: i64,
    raw: Vec<u8>,
    due: Vec<Due>,
}

struct Due {
    address: String,
    attempts: u32,
    /// The recipient's own NOTIFY, else the message's counts.
    notify: Option<Notify>,
    /// The recipient's ORCPT (decoded).
    orcpt: Option<String>,
}

/// Creates a directory (and parents) readable by its owner only; an existing one is kept
/// as it is (a packaged drop directory has its own mode).
/// The queue's owner when root works on a queue that belongs to another user (the shared
/// queue of the service user): files root creates there must be given to that user, or the
/// service's runner could not open them (a first `mailq` as root made queue.sqlite root's,
/// mode 0600). Root keeps its rights otherwise: it reads the submitters' drop files, which
/// the service user reads only with CAP_DAC_READ_SEARCH.
fn foreign_owner(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let meta = std::fs::metadata(dir).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// Root listing or deleting in a queue another user owns (the shared queue's service user)
/// does it as that user: the owner controls every name in the queue directory, and root
/// following a link planted there would move or write files where the owner may not (review:
/// `corrupt` made a link to a root-only directory, and root's `mailq` moved a drop file into
/// it; `incoming` made one, and it moved root's files out). The process takes the owner's
/// uid, gid and no supplementary groups, for good.
pub fn act_as_owner(dir: &Path) -> Result<(), QueueError> {
    let Some((uid, gid)) = foreign_owner(dir) else {
        return Ok(());
    };
    // What an earlier version, run as root, left root's (mode 0600: the owner could not open
    // it) is given to the owner first (review: root's `mailq` then failed with 77 where it
    // used to repair it).
    for name in [
        "queue.sqlite",
        "queue.sqlite-wal",
        "queue.sqlite-shm",
        "run.lock",
        "wait.lock",
    ] {
        give_back(&dir.join(name), uid, gid);
    }
    let failed = |what: &str| QueueError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::new(
            std::io::Error::last_os_error().kind(),
            format!(
                "cannot act as the queue's owner (uid {uid}): {what}: {}",
                std::io::Error::last_os_error()
            ),
        ),
    };
    // SAFETY: plain system calls with valid arguments; glibc applies set*id to every thread.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(failed("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(failed("setresgid"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(failed("setresuid"));
        }
    }
    Ok(())
}

/// Gives `path` to `uid`:`gid` when it is a root-owned regular file with no other name: opened
/// without following a link, and changed through that descriptor, so that no name the owner
/// put there (a link, a hard link to a file of root's elsewhere) makes root give away another
/// file.
fn give_back(path: &Path, uid: u32, gid: u32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let Ok(meta) = file.metadata() else {
        return;
    };
    if meta.is_file() && meta.uid() == 0 && meta.nlink() == 1 {
        // SAFETY: fchown on a descriptor we own.
        if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
            tracing::warn!(
                "{}: cannot give it to uid {uid}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Gives `paths` that root created in the queue `dir` to the queue's owner (see
/// [`foreign_owner`]); links are not followed.
fn give_to_owner(dir: &Path, paths: &[PathBuf]) -> Result<(), QueueError> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = foreign_owner(dir) else {
        return Ok(());
    };
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.uid() == 0 {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| {
                QueueError::Io {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), QueueError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| QueueError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// Creates `path` with mode 0600 when it is missing; takes group and other access away from an
/// existing one (made by an earlier version with a looser umask). No symlink is followed.
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp."))
}

/// Temporary drop files left by a sendmail that died before its rename: removed after an
/// hour. sendmail writes one only once the whole message is read, and renames it at once, so
/// an hour-old one is abandoned; while it stays, the directory is not empty and the path unit
/// keeps starting runs.
fn remove_stale_temp(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    // By the inode's change time, which no user can set (a modification time in the future,
    // `touch -d 2100-01-01`, would keep the file, and the path unit starting runs, for good).
    let old = std::fs::symlink_metadata(path).is_ok_and(|m| now().saturating_sub(m.ctime()) > 3600);
    if old {
        let _ = std::fs::remove_file(path);
    }
}

/// Holds the queue's run lock (flock) until dropped.
pub struct RunLock(std::fs::File);

impl RunLock {
    /// Waits until no other runner holds the lock.
    pub fn acquire(dir: &Path) -> Result<RunLock, QueueError> {
        let path = dir.join("run.lock");
        let lock = RunLock::acquire_path(&path).map_err(|source| QueueError::Io {
            path: path.display().to_string(),
            source,
        })?;
        give_to_owner(dir, &[path])?;
        Ok(lock)
    }

    /// [`RunLock::acquire`] for a run that any other does as well (the one after a
    /// submission, the timer's): while a run holds the lock, one such run waits for it (in
    /// `wait.lock`) and the others leave at once (None). The one waiting picks up, after the
    /// run in progress, every submission made before it stopped waiting; a later one waits
    /// in its place. Review: 30 submissions while a relay held one message left 30 runs
    /// waiting, 640 MB in all, of which 28 then found nothing to do.
    pub fn acquire_unless_awaited(dir: &Path) -> Result<Option<RunLock>, QueueError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| QueueError::Io { path, source }
        };
        let run = dir.join("run.lock");
        if let Some(lock) = RunLock::try_acquire_path(&run).map_err(io(&run))? {
            give_to_owner(dir, &[run])?;
            return Ok(Some(lock));
        }
        let wait = dir.join("wait.lock");
        let Some(place) = RunLock::try_acquire_path(&wait).map_err(io(&wait))? else {
            return Ok(None);
        };
        give_to_owner(dir, &[wait])?;
        let lock = RunLock::acquire(dir)?;
        drop(place);
        Ok(Some(lock))
    }

    /// Waits for the exclusive lock on `path` (created mode 0600 when missing); held until
    /// the RunLock is dropped.
    pub fn acquire_path(path: &Path) -> std::io::Result<RunLock> {
        Self::lock_path(path, true).map(|lock| lock.expect("a blocking lock is taken"))
    }

    /// The exclusive lock on `path` if no one holds it now; None when someone does.
    pub fn try_acquire_path(path: &Path) -> std::io::Result<Option<RunLock>> {
        Self::lock_path(path, false)
    }

    /// Run by root, gives the lock file to the owner of `file` (a store's database) when it
    /// is not theirs: made 0600 by a root `deliver`, it locked the store's owner out of every
    /// later sync and retry (review).
    pub fn give_to_owner_of(&self, file: &Path) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let owner = std::fs::metadata(file)?;
        let lock = self.0.metadata()?;
        if (lock.uid(), lock.gid()) == (owner.uid(), owner.gid()) {
            return Ok(());
        }
        // SAFETY: fchown on a descriptor we own.
        if unsafe { libc::fchown(self.0.as_raw_fd(), owner.uid(), owner.gid()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn lock_path(path: &Path, wait: bool) -> std::io::Result<Option<RunLock>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        // No link followed: as root in a queue another user owns, a planted run.lock link
        // would otherwise have root open (and lock) a file of the link's choosing. SQLite
        // refuses linked -wal and -shm files itself (checked: "unable to open database file").
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mode = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), mode) } == 0 {
                return Ok(Some(RunLock(file)));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Messages delivered at once: enough that the GnuPG workers stay busy while other messages
/// wait on the relay's replies.
const MESSAGES_IN_FLIGHT: usize = 8;

/// Most bytes of queued messages delivered at once, in MiB: a message in hand takes about
/// ten times its size while its copies are made (review: eight messages of 10 MB took
/// 825 MB, a mixed queue 1.1 GB). A larger message goes alone.
const MIB_IN_FLIGHT: u32 = 32;

/// Delivers what the queue holds: pick up submissions, then per message one rewrite (the
/// core decides per recipient) and one relay transaction per copy, several messages at once.
pub struct Runner {
    pub queue: Arc<Queue>,
    pub rewriter: Arc<Rewriter>,
    /// For non-delivery reports (null sender): signed by the default signer when one is
    /// configured, else unsigned; encrypted when the sender has a key; the sender's policy
    /// decides otherwise, so a report never leaves in clear where that policy forbids it.
    pub reports: Arc<Rewriter>,
    pub relay: Arc<Relay>,
    /// Reporting-MTA of reports.
    pub hostname: String,
    /// MAILER-DAEMON@domain of reports.
    pub domain: String,
    /// Set (by SIGTERM, say) to start no further message; those in hand are finished.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Runner {
    pub async fn run(&self, scope: Scope) -> Result<RunReport, QueueError> {
        let queue = self.queue.clone();
        // New submissions that cannot be taken in (a disk filled, by any local user's drop
        // files say) do not hold up the mail queued before them: it is delivered, and the run
        // still ends in that error (review: one user's submissions stopped everyone's mail).
        let (picked_up, pickup_failed) = match tokio::task::spawn_blocking(move || queue.pick_up())
            .await
            .map_err(|e| QueueError::Io {
                path: "pickup".into(),
                source: std::io::Error::other(e),
            })? {
            Ok(n) => (n, None),
            Err(e) => {
                tracing::warn!(
                    "queue run: new submissions not taken in ({e}); delivering what was \
                     queued before"
                );
                (0, Some(e))
            }
        };
        let mut stranded_reports = 0;
        for id in self.queue.stranded()? {
            if let Some(m) = self.queue.load(&id, &Scope::All, now())? {
                tracing::info!("{id}: finishing what an interrupted run left undone");
                stranded_reports += self
                    .queue
                    .report_and_finish(&m, &self.hostname, &self.domain, now())?
                    .len();
            }
        }
        // Reports queued just above are due now, in this run.
        let ids = self.queue.due(&scope, now())?;
        if let Scope::One(id) = &scope {
            if ids.is_empty() && !self.queue.knows(id)? {
                return Err(QueueError::NotFound(id.clone()));
            }
        }
        let mut report = RunReport {
            picked_up,
            bounces: stranded_reports,
            ..RunReport::default()
        };
        use std::sync::atomic::Ordering;
        let bytes_in_flight = Arc::new(tokio::sync::Semaphore::new(MIB_IN_FLIGHT as usize));
        let mut results = futures::stream::iter(ids)
            .map(|(id, size)| {
                let scope = scope.clone();
                let bytes_in_flight = bytes_in_flight.clone();
                async move {
                    let mib = size.div_ceil(1 << 20).clamp(1, MIB_IN_FLIGHT.into()) as u32;
                    let _room = bytes_in_flight
                        .acquire_many(mib)
                        .await
                        .expect("the semaphore is never closed");
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(RunReport::default());
                    }
                    self.deliver_message(id, scope).await
                }
            })
            .buffer_unordered(MESSAGES_IN_FLIGHT);
        // An error stops new messages but lets those in hand finish: dropping them mid-way
        // could cut a copy off after the relay took it, and it would go again next run.
        let mut failed = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(r) => {
                    report.sent += r.sent;
                    report.deferred += r.deferred;
                    report.failed += r.failed;
                    report.bounces += r.bounces;
                }
                Err(e) => {
                    self.stop.store(true, Ordering::SeqCst);
                    failed.get_or_insert(e);
                }
            }
        }
        let result = match failed.or(pickup_failed) {
            Some(e) => Err(e),
            None => self.queue.purge(now()).map(|()| report),
        };
        if let Err(e) = self.queue.fold_wal() {
            tracing::warn!("queue: the queue's log was not folded into its database: {e}");
        }
        result
    }

    /// Records a copy the relay took. A failure here means the copy goes again in the next
    /// run, so a busy or briefly failing database is given a few more tries first.
    async fn record_sent(
        &self,
        id: &str,
        rows: &[(&str, bool)],
        reply: &str,
    ) -> Result<(), QueueError> {
        let address = rows
            .iter()
            .map(|(address, _)| *address)
            .collect::<Vec<_>>()
            .join(">, <");
        let mut tries = 0;
        loop {
            match self.queue.mark_sent(id, rows, reply) {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!("{id}: to=<{address}> sent, but not recorded yet: {e}");
                    // Out of room, say: the reserve was kept for this.
                    self.queue.release_reserve();
                    tokio::time::sleep(Duration::from_millis(200 << tries)).await;
                }
                Err(e) => {
                    tracing::error!(
                        "{id}: to=<{address}> sent ({reply}) but not recorded: {e}; \
                         the next run sends it again"
                    );
                    return Err(e);
                }
            }
        }
    }

    /// One message, then the report it caused (delivered in the same run).
    async fn deliver_message(&self, id: String, scope: Scope) -> Result<RunReport, QueueError> {
        let mut total = RunReport::default();
        let mut next = vec![(id, scope)];
        while let Some((id, scope)) = next.pop() {
            let at = now();
            let Some(message) = self.queue.load(&id, &scope, at)? else {
                continue;
            };
            if message.due.is_empty() {
                continue;
            }
            let r = self.attempt(&message, at).await?;
            total.sent += r.sent;
            total.deferred += r.deferred;
            total.failed += r.failed;
            for report_id in
                self.queue
                    .report_and_finish(&message, &self.hostname, &self.domain, now())?
            {
                total.bounces += 1;
                next.push((report_id, Scope::All));
            }
        }
        Ok(total)
    }

    /// A temporary failure of `due`: it waits for the next attempt, or, past the queue's
    /// lifetime, fails with 4.4.7 and this failure as the last error. As Postfix's
    /// maximal_queue_lifetime: the attempt after the lifetime is still made, and only its
    /// failure bounces (a laptop offline for longer than the lifetime delivered nothing
    /// when it came back: every recipient bounced unattempted, review). Some(next attempt)
    /// when it waits, None when it failed.
    fn defer(&self, m: &Loaded, due: &Due, reason: &str, at: i64) -> Result<Deferral, QueueError> {
        let lifetime = 3600 * self.queue.config.lifetime_hours as i64;
        if at - m.arrived <= lifetime {
            let next = self.queue.mark_deferred(&m.id, due, reason, at)?;
            if next.is_none() {
                tracing::info!(
                    "{}: to=<{}> not deferred: the message was deleted from the queue \
                     meanwhile ({reason})",
                    m.id,
                    due.address
                );
            }
            return Ok(next.map_or(Deferral::Gone, Deferral::Until));
        }
        let expired = format!(
            "delivery time expired after {} hours in the queue; last error: {reason}",
            self.queue.config.lifetime_hours
        );
        tracing::warn!("{}: to=<{}> expired: {reason}", m.id, due.address);
        self.queue
            .mark_failed(&m.id, &due.address, "4.4.7", &expired)?;
        Ok(Deferral::Expired)
    }

    async fn attempt(&self, m: &Loaded, at: i64) -> Result<RunReport, QueueError> {
        let mut report = RunReport::default();
        // A recipient starting with "-" is an option that came out of place on sendmail's
        // command line, not an address (Postfix's allow_min_user = no: 5.1.3; review:
        // -falice@example.org after the recipients got a copy). Only here: over SMTP, in the
        // milter, Postfix decides.
        let (options, due): (Vec<&Due>, Vec<&Due>) =
            m.due.iter().partition(|d| d.address.starts_with('-'));
        for d in &options {
            let reply = rewrite::plan::bad_address(&d.address);
            self.queue
                .mark_failed(&m.id, &d.address, reply.status, &reply.to_string())?;
            report.failed += 1;
        }
        if due.is_empty() {
            return Ok(report);
        }
        let envelope = Envelope {
            id: m.id.clone(),
            sender: m.sender.clone(),
            recipients: due.iter().map(|d| d.address.clone()).collect(),
        };
        let prepared = if m.report {
            bounce::prepare(&self.reports, &envelope, m.raw.clone()).await
        } else {
            self.rewriter.prepare(&envelope, m.raw.clone()).await
        };
        let mut planned = match prepared {
            Ok(Prepared::Copies(planned)) => planned,
            Ok(Prepared::Refused(reply)) => {
                for d in &due {
                    self.queue
                        .mark_failed(&m.id, &d.address, reply.status, &reply.to_string())?;
                    report.failed += 1;
                }
                return Ok(report);
            }
            Err(e) => {
                for d in &due {
                    self.queue.mark_failed(
                        &m.id,
                        &d.address,
                        "5.6.0",
                        &format!("invalid message: {e}"),
                    )?;
                    report.failed += 1;
                }
                return Ok(report);
            }
        };
        // A batch of copies at a time: a large message to many recipients never has every
        // copy in memory.
        // The due rows by mailbox: a copy counts for each row of its recipient's mailbox.
        let mut by_mailbox: std::collections::HashMap<String, Vec<&Due>> = Default::default();
        for d in &due {
            by_mailbox
                .entry(rewrite::mailbox(&d.address))
                .or_default()
                .push(d);
        }
        if let Err(e) = self.queue.ensure_reserve() {
            tracing::error!(
                "{}: nothing sent: no room to record what the relay takes: {e}",
                m.id
            );
            return Err(e);
        }
        if let Err(e) = self.queue.ensure_writable() {
            tracing::error!(
                "{}: nothing sent: the queue cannot record what the relay takes: {e}",
                m.id
            );
            return Err(e);
        }
        let mut covered = std::collections::HashSet::new();
        while let Some(copies) = planned.next_batch().await {
            covered.extend(copies.iter().map(|c| rewrite::mailbox(&c.recipient)));
            self.relay_batch(m, &by_mailbox, at, copies, &mut report)
                .await?;
        }
        // Every due recipient is accounted for: one the core made no copy for waits with the
        // reason, instead of being retried every run unrecorded.
        let uncovered = |d: &&Due| !covered.contains(&rewrite::mailbox(&d.address));
        for d in due.iter().copied().filter(uncovered) {
            let reason = "internal error: no copy was built for this recipient";
            tracing::error!("{}: to=<{}> {reason}", m.id, d.address);
            report.count_deferral(self.defer(m, d, reason, at)?);
        }
        Ok(report)
    }

    /// Sends each copy of one batch and records what became of it. A copy goes to its
    /// recipient as the core names it, once, and counts for every queued recipient that is
    /// that mailbox (rows an older version wrote as `<bob@x>`, `"bob"@x`, or twice in two
    /// cases).
    async fn relay_batch(
        &self,
        m: &Loaded,
        by_mailbox: &std::collections::HashMap<String, Vec<&Due>>,
        at: i64,
        copies: Vec<Copy>,
        report: &mut RunReport,
    ) -> Result<(), QueueError> {
        for copy in copies {
            let Some(dues) = by_mailbox.get(&rewrite::mailbox(&copy.recipient)) else {
                continue;
            };
            let bytes = match (&copy.decision, &copy.message) {
                (Decision::Rejected { reply }, _) => {
                    for due in dues {
                        self.queue.mark_failed(
                            &m.id,
                            &due.address,
                            reply.status,
                            &reply.to_string(),
                        )?;
                        tracing::info!("{}: to=<{}> rejected: {reply}", m.id, due.address);
                        report.failed += 1;
                    }
                    continue;
                }
                (Decision::Deferred { reply }, _) => {
                    for due in dues {
                        let next = self.defer(m, due, &reply.to_string(), at)?;
                        if let Deferral::Until(next) = next {
                            tracing::warn!(
                                "{}: to=<{}> deferred until {next}: {reply}",
                                m.id,
                                due.address
                            );
                        }
                        report.count_deferral(next);
                    }
                    continue;
                }
                (_, None) => {
                    // The core produces bytes for every other decision; never send without.
                    let reason = "internal error: no copy was built";
                    for due in dues {
                        tracing::error!("{}: to=<{}> {reason}", m.id, due.address);
                        report.count_deferral(self.defer(m, due, reason, at)?);
                    }
                    continue;
                }
                (_, Some(bytes)) => bytes,
            };
            let mut still = Vec::with_capacity(dues.len());
            for due in dues {
                if self.queue.is_queued(&m.id, &due.address)? {
                    still.push(due);
                } else {
                    // `queue delete` during this run: nothing more of the message goes.
                    tracing::info!("{}: to=<{}> not sent: deleted meanwhile", m.id, due.address);
                }
            }
            if still.is_empty() {
                continue;
            }
            let decision = copy.decision.name();
            // -N and -V go on to a relay that announces DSN, so that its own notices follow
            // them (NEVER: none); they return the header only, as sealpost's reports do.
            let own = still
                .iter()
                .find(|d| d.notify.is_some() || d.orcpt.is_some());
            let notify = own.and_then(|d| d.notify).unwrap_or(m.notify);
            let dsn = Dsn {
                // The queue's own submissions: UTF-8 in the header makes an SMTPUTF8 message,
                // as Postfix's smtputf8_autodetect_classes has it for sendmail submissions.
                smtputf8: None,
                ret: Some("HDRS".into()),
                envid: m.envid.clone(),
                notify: Some(notify.as_str().to_ascii_uppercase()),
                // Passed on as given (RFC 3461 §5.2.1), but an rfc822 one that names no address:
                // a relay may refuse the recipient for it (Dovecot answers 501), which would
                // fail that recipient for good. The report still quotes it.
                orcpt: own.and_then(|d| d.orcpt.clone()).filter(|o| {
                    o.split_once(';').is_some_and(|(kind, address)| {
                        !kind.eq_ignore_ascii_case("rfc822")
                            || address.parse::<lettre::Address>().is_ok()
                    })
                }),
            };
            match self
                .relay
                .send_with(&m.sender, &copy.recipient, bytes, &dsn)
                .await
            {
                Sent::Accepted { reply, passed_dsn } => {
                    // RFC 3461 §5.2.2: past a relay without DSN, a SUCCESS the sender asked
                    // for is ours to give ("relayed"). Reports themselves ask for nothing.
                    let rows: Vec<(&str, bool)> = still
                        .iter()
                        .map(|d| {
                            let notice = !passed_dsn
                                && !m.report
                                && !m.sender.is_empty()
                                && d.notify.unwrap_or(m.notify).success;
                            (d.address.as_str(), notice)
                        })
                        .collect();
                    self.record_sent(&m.id, &rows, &reply).await?;
                    for due in &still {
                        tracing::info!(
                            "{}: to=<{}> relay={} {decision} sent ({reply})",
                            m.id,
                            due.address,
                            self.relay.description(),
                        );
                        report.sent += 1;
                    }
                }
                Sent::Temporary(reason) => {
                    for due in &still {
                        let next = self.defer(m, due, &reason, now())?;
                        if let Deferral::Until(next) = next {
                            tracing::warn!(
                                "{}: to=<{}> deferred (attempt {}, next in {} s): {reason}",
                                m.id,
                                due.address,
                                due.attempts + 1,
                                next - now()
                            );
                        }
                        report.count_deferral(next);
                    }
                }
                Sent::Permanent(reason) => {
                    let status = bounce::status_of(&reason, "5.0.0");
                    for due in &still {
                        self.queue
                            .mark_failed(&m.id, &due.address, &status, &reason)?;
                        tracing::warn!(
                            "{}: to=<{}> refused by the relay: {reason}",
                            m.id,
                            due.address
                        );
                        report.failed += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_uris_escape_what_a_uri_would_read() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(
            b"/q/a b?c#d%e\xff/queue.sqlite",
        ));
        assert_eq!(
            sqlite_uri(path, "?immutable=1"),
            "file:/q/a%20b%3Fc%23d%25e%FF/queue.sqlite?immutable=1"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let c = QueueConfig::default();
        assert_eq!(c.backoff(1), 300);
        assert_eq!(c.backoff(2), 600);
        assert_eq!(c.backoff(4), 2400);
        assert_eq!(c.backoff(5), 4000);
        assert_eq!(c.backoff(60), 4000);
    }

    fn submission(rcpts: &[&str]) -> Submission {
        Submission {
            sender: "alice@example.org".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            notify: Notify::default(),
            envid: None,
            recipient_dsn: Vec::new(),
            message: b"From: alice@example.org\r\nSubject: s\r\n\r\nbody\r\n".to_vec(),
        }
    }

    /// A new queue in `dir`, and its configuration.
    fn new_queue(dir: &Path) -> (QueueConfig, Queue) {
        let config = QueueConfig {
            dir: dir.join("q"),
            ..QueueConfig::default()
        };
        let queue = Queue::open(&config).unwrap();
        (config, queue)
    }

    /// A queue directory whose database was made with `schema`, and the connection to it.
    fn older_queue(dir: &Path, schema: &str) -> (QueueConfig, Connection) {
        let config = QueueConfig {
            dir: dir.join("q"),
            ..QueueConfig::default()
        };
        std::fs::create_dir_all(&config.dir).unwrap();
        let old = Connection::open(config.dir.join("queue.sqlite")).unwrap();
        old.execute_batch(schema).unwrap();
        (config, old)
    }

    #[test]
    fn an_older_queue_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        // Before `messages.report`, and before `recipients.notify` and `.orcpt`.
        let older = SCHEMA
            .replace(",\n    report INTEGER NOT NULL DEFAULT 0", "")
            .replace("    notify TEXT,\n    orcpt TEXT,\n", "");
        assert!(!older.contains("orcpt") && !older.contains("report"));
        let (config, old) = older_queue(dir.path(), &older);
        let report = b"Content-Type: multipart/report; report-type=delivery-status;\r\n\r\n\
            X-Sealpost-Queue-ID: Q1\r\n";
        for (id, sender, notify, raw) in [
            ("R1", "", "never", &report[..]),
            ("U1", "", "failure", b"Subject: away\r\n\r\nx\r\n"),
            ("U2", "", "never", b"Subject: away\r\n\r\nx\r\n"),
        ] {
            old.execute(
                "INSERT INTO messages(id, uid, sender, notify, arrived, size, raw)
                 VALUES (?1, 0, ?2, ?3, 0, 1, ?4)",
                params![id, sender, notify, raw],
            )
            .unwrap();
        }
        drop(old);
        let queue = Queue::open(&config).unwrap();
        let reports: Vec<String> = queue
            .conn()
            .prepare("SELECT id FROM messages WHERE report = 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(reports, ["R1"]);
        let added: i64 = queue
            .conn()
            .query_row(
                "SELECT count(*) FROM pragma_table_info('recipients')
                 WHERE name IN ('notify', 'orcpt')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(added, 2);
        // Opened again: nothing more to do.
        drop(queue);
        Queue::open(&config).unwrap();
    }

    /// Runners that open an older queue at the same moment each get it open: the columns are
    /// added once, under the write lock.
    #[test]
    fn an_older_queue_opened_by_several_runners_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let older = SCHEMA.replace("    notify TEXT,\n    orcpt TEXT,\n", "");
        let (config, old) = older_queue(dir.path(), &older);
        drop(old);
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        Queue::open(&config).map(drop)
                    })
                })
                .collect();
            for o in opened {
                o.join().unwrap().unwrap();
            }
        });
    }

    #[test]
    fn pickup_is_idempotent_and_finished_ids_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let (config, queue) = new_queue(dir.path());
        let s = submission(&["bob@example.org", "carol@example.org"]);
        spool::write(&config.incoming(), "AAA1", &s, u64::MAX).unwrap();
        assert_eq!(queue.pick_up().unwrap(), 1);
        assert!(queue.waiting().is_empty());
        let list = queue.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].recipients.len(), 2);
        // The same drop file again (a crash between commit and unlink) adds nothing, is not
        // counted as picked up, and goes.
        spool::write(&config.incoming(), "AAA1", &s, u64::MAX).unwrap();
        assert_eq!(queue.pick_up().unwrap(), 0);
        assert!(!config.incoming().join("AAA1").exists());
        assert_eq!(queue.list().unwrap()[0].recipients.len(), 2);
        // Finished (deleted) messages stay known.
        queue.delete("AAA1").unwrap();
        assert!(queue.list().unwrap().is_empty());
        spool::write(&config.incoming(), "AAA1", &s, u64::MAX).unwrap();
        queue.pick_up().unwrap();
        assert!(queue.list().unwrap().is_empty());
        assert!(matches!(queue.delete("NOPE"), Err(QueueError::NotFound(_))));
        // A file that is not a submission is set aside, not lost.
        std::fs::write(config.incoming().join("BAD1"), b"garbage").unwrap();
        queue.pick_up().unwrap();
        assert!(config.dir.join("corrupt/BAD1").exists());
    }

    /// A drop file that cannot be removed (immutable here; a drop directory made root's in
    /// practice) is queued once and stops neither the others nor the run (review: the run
    /// ended there and delivered nothing).
    #[test]
    fn a_drop_file_that_cannot_be_removed_stops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (config, queue) = new_queue(dir.path());
        let s = submission(&["bob@example.org"]);
        spool::write(&config.incoming(), "AAA1", &s, u64::MAX).unwrap();
        spool::write(&config.incoming(), "AAA2", &s, u64::MAX).unwrap();
        let stuck = config.incoming().join("AAA1");
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(&stuck)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            eprintln!("skipped: chattr +i needs root and a file system that has it");
            return;
        }
        let picked = queue.pick_up();
        // Picked up once only, shown once, and never forgotten while its file is there: a
        // deleted message forgotten would be queued again (review).
        let again = queue.pick_up();
        let waiting = queue.waiting();
        queue.delete("AAA1").unwrap();
        queue
            .purge(now() + 3 * 3600 * config.lifetime_hours as i64)
            .unwrap();
        let after_purge = queue.pick_up();
        let known = queue.knows("AAA1");
        chattr("-i");
        assert_eq!(picked.unwrap(), 2);
        assert_eq!(again.unwrap(), 0);
        assert!(waiting.is_empty(), "{waiting:?}");
        assert_eq!(after_purge.unwrap(), 0);
        assert!(known.unwrap(), "its record is kept while the file is there");
        assert!(queue.list().unwrap().iter().all(|e| e.id != "AAA1"));
        assert!(!config.incoming().join("AAA2").exists());
    }

    /// What a killed run leaves: bob sent with a "relayed" notice owed (mark_sent), carol
    /// still queued for a later retry. The next run's stranded pass takes the message at once
    /// (the notice does not wait for carol's retry); `queue delete` of a message with nothing
    /// queued still deletes it and says so (review: it answered "no such queue entry", exit
    /// 69, and deleted it all the same).
    #[test]
    fn owed_notices_are_taken_up_at_once_and_a_stranded_message_can_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (config, queue) = new_queue(dir.path());
        let s = submission(&["bob@example.org", "carol@example.org"]);
        spool::write(&config.incoming(), "AAA2", &s, u64::MAX).unwrap();
        queue.pick_up().unwrap();
        assert!(queue.stranded().unwrap().is_empty());
        queue
            .mark_sent("AAA2", &[("bob@example.org", true)], "250 2.0.0 Ok")
            .unwrap();
        assert_eq!(queue.stranded().unwrap(), ["AAA2"]);
        // Sent without a notice owed: nothing to take up.
        spool::write(
            &config.incoming(),
            "AAA3",
            &submission(&["bob@example.org"]),
            u64::MAX,
        )
        .unwrap();
        queue.pick_up().unwrap();
        queue
            .mark_sent("AAA3", &[("bob@example.org", false)], "250 2.0.0 Ok")
            .unwrap();
        assert_eq!(queue.stranded().unwrap(), ["AAA2", "AAA3"]);
        let m = queue.load("AAA3", &Scope::All, now()).unwrap().unwrap();
        assert!(queue
            .report_and_finish(&m, "host.example", "example.org", now())
            .unwrap()
            .is_empty());
        assert_eq!(queue.stranded().unwrap(), ["AAA2"]);

        // Nothing queued, the notice owed: `queue delete` drops it (no report goes out, as
        // documented) and succeeds.
        queue.delete("AAA2").unwrap();
        queue
            .conn()
            .execute(
                "UPDATE recipients SET state = 'sent', status = '2.0.0', bounced = 0
                 WHERE message = 'AAA2'",
                [],
            )
            .unwrap();
        queue
            .conn()
            .execute("UPDATE messages SET finished = NULL WHERE id = 'AAA2'", [])
            .unwrap();
        queue.delete("AAA2").unwrap();
        assert!(queue.stranded().unwrap().is_empty());
        assert!(matches!(queue.delete("AAA2"), Err(QueueError::NotFound(_))));
    }
}
