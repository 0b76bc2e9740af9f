//! A Maildir as an account's source (`[accounts.maildir]`): the mail an MTA or an LDA has
//! delivered there (`new/` and `cur/` of the root, INBOX, and of each Maildir++ folder
//! `.Name`) is decrypted, verified and stored in the local mailbox of the same name.
//!
//! The Maildir is only read: files stay where they are, so mutt or another reader can go on
//! using it. Each file is imported once, by its unique name (the file name up to the `:2,`
//! info, which a reader may change when it moves the file from `new/` to `cur/` or sets
//! flags); the names are stored in the same transaction as the messages, so a crash imports
//! nothing twice and loses nothing. Flags in the info (`S`, `R`, `F`, `T`, `D`) become the
//! local message's flags; the file's modification time its INTERNALDATE.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::names::FolderNames;
use super::{batches, blocking, decrypt, sync_lock, Progress, SyncError, SyncReport};
use crate::keys::KeyService;
use crate::store::{maildir_flags, AccountId, Flags, InternalDate, Store, StoreError};

/// The failure counts of Maildir files GnuPG worked on past the deadline:
/// `undecrypted-file:{account}:{folder}:{unique name}`.
pub(crate) const STRUCK_PREFIX: &str = "undecrypted-file:";

/// `[accounts.maildir]`: a Maildir that mail is delivered into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirConfig {
    /// The Maildir's root (with `cur/`, `new/` and `tmp/`).
    pub path: PathBuf,
    /// Folders to read: "INBOX" and Maildir++ names without the leading dot ("Lists.rust");
    /// empty: all of them.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Daemon mode: seconds between scans.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// As for an upstream account: run after a scan that found new mail.
    pub notify_command: Option<String>,
}

fn default_poll() -> u64 {
    30
}

impl MaildirConfig {
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.poll_secs == 0 {
            return Some(("poll_secs", "must be at least 1 (seconds)".into()));
        }
        if let Some(why) = crate::config::path_problem(&self.path) {
            return Some(("path", why));
        }
        None
    }
}

/// One account's Maildir source.
pub struct MaildirSync {
    pub name: String,
    pub config: MaildirConfig,
    pub store: Store,
    pub keys: Arc<KeyService>,
    /// Larger files are left out with an error in the log (`imap.limits.max_append`, the
    /// largest message the store takes from a client or `deliver`).
    pub max_bytes: u64,
}

/// One file not imported yet.
struct Pending {
    unique: String,
    path: PathBuf,
    flags: Flags,
    size: u64,
}

impl MaildirSync {
    /// One scan of every folder.
    pub async fn sync_once(&self) -> Result<SyncReport, SyncError> {
        let lock = sync_lock(&self.store).await?;
        let (store, name) = (self.store.clone(), self.name.clone());
        let account = blocking(move || store.ensure_account(&name)).await??;
        let mut report = SyncReport::default();
        for (folder, dir) in self.folders()? {
            let local = if folder == "INBOX" {
                folder.clone()
            } else {
                match FolderNames::flat(".").local(&folder) {
                    Ok(local) => local,
                    Err(e) => {
                        tracing::warn!(account = %self.name, "Maildir folder {folder:?} left out: {e}");
                        continue;
                    }
                }
            };
            match self.sync_folder(account, &folder, &dir, &local).await {
                Ok(new) => {
                    *report.new.entry(local).or_default() += new;
                }
                // One folder that cannot be read is left out; the others are still synced.
                Err(e @ SyncError::Folder(..)) => {
                    tracing::warn!(account = %self.name, "{e}: folder left out of this scan");
                }
                Err(e) => return Err(e),
            }
        }
        report.redecrypted = super::retry_undecryptable(&self.store, &self.keys, account).await?;
        // The notify command runs without the lock (see the IMAP sync).
        drop(lock);
        super::log_and_notify(&self.name, self.config.notify_command.as_deref(), &report).await;
        Ok(report)
    }

    /// Daemon mode: a scan every `poll_secs` until `shutdown`.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let poll = Duration::from_secs(self.config.poll_secs);
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Told to stop, the pass ends where it is (each file is stored and recorded in
            // one transaction): the rest waits for the next start.
            tokio::select! {
                synced = self.sync_once() => if let Err(e) = synced {
                    tracing::warn!(account = %self.name, "maildir sync failed: {e}");
                },
                _ = shutdown.changed() => {
                    tracing::info!(account = %self.name, "stopping in the middle of a pass");
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// (folder name, directory): INBOX is the root, each `.Name` with a `cur/` a folder.
    fn folders(&self) -> Result<Vec<(String, PathBuf)>, SyncError> {
        let root = &self.config.path;
        let unreadable =
            |e: std::io::Error| SyncError::Maildir(format!("path {}: {e}", root.display()));
        for sub in ["cur", "new"] {
            std::fs::metadata(root.join(sub)).map_err(|e| {
                SyncError::Maildir(format!(
                    "path {}: not a Maildir (no {sub}/): {e}",
                    root.display()
                ))
            })?;
        }
        let mut folders = vec![("INBOX".to_string(), root.clone())];
        for entry in std::fs::read_dir(root).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(folder) = name.strip_prefix('.') else {
                continue;
            };
            if folder.is_empty() || folder == "." || !entry.path().join("cur").is_dir() {
                continue;
            }
            folders.push((folder.to_string(), entry.path()));
        }
        let wanted = &self.config.folders;
        folders.retain(|(name, _)| wanted.is_empty() || wanted.iter().any(|w| w == name));
        folders.sort();
        Ok(folders)
    }

    async fn sync_folder(
        &self,
        account: AccountId,
        folder: &str,
        dir: &Path,
        local: &str,
    ) -> Result<usize, SyncError> {
        let (store, f, l) = (self.store.clone(), folder.to_string(), local.to_string());
        let (mailbox, known) = blocking(move || {
            let mailbox = match store.mailbox(account, &l)? {
                Some(m) => m,
                None => store.create_mailbox(account, &l, None)?,
            };
            Ok::<_, StoreError>((mailbox.id, store.file_links(account, &f)?))
        })
        .await??;
        let mut pending = pending_files(dir, &known)
            .map_err(|e| SyncError::Folder(folder.into(), format!("{}: {e}", dir.display())))?;
        drop(known);
        pending.retain(|file| {
            let fits = file.size <= self.max_bytes;
            if !fits {
                tracing::error!(account = %self.name, %folder,
                    "{}: {} bytes, larger than imap.limits.max_append ({}): left out",
                    file.path.display(), file.size, self.max_bytes);
            }
            fits
        });
        let struck_prefix = format!("{STRUCK_PREFIX}{account}:{folder}:");
        let (store, prefix) = (self.store.clone(), struck_prefix.clone());
        let struck: std::collections::HashSet<String> =
            blocking(move || store.meta_prefixed(&prefix))
                .await??
                .into_iter()
                .map(|(key, _)| key)
                .collect();
        let progress = Progress::new(local, pending.len());
        let mut stored = 0;
        // Batches of files by count and bytes, as for an upstream folder: a few large files
        // are never all in memory at once.
        let sized: Vec<(u32, u32)> = (0..pending.len())
            .map(|i| (i as u32, pending[i].size.min(u64::from(u32::MAX)) as u32))
            .collect();
        for batch in batches(&sized) {
            let chunk: Vec<&Pending> = batch.uids.iter().map(|i| &pending[*i as usize]).collect();
            let mut read = Vec::with_capacity(chunk.len());
            for file in chunk {
                // No more than it was listed with (a file that grew since, or was swapped for
                // a link to something large, is not read whole), and never a FIFO's open,
                // which blocks (O_NONBLOCK; the file is checked to be a regular one).
                match read_regular(&file.path, self.max_bytes) {
                    // Empty (or blank) is no message yet: a writer that does not go through
                    // tmp/ may not have written it. Left for the next scan (review: stored as
                    // an empty message and never read again).
                    Ok(raw) if raw.iter().all(|b| b.is_ascii_whitespace()) => {
                        tracing::warn!(account = %self.name, %folder,
                            "{}: empty; left for the next scan", file.path.display());
                    }
                    Ok(mut raw) => {
                        // A postmark some delivery agents put on the first line is no field of
                        // the message; deliver drops it too.
                        crate::message::parse::drop_postmark(&mut raw);
                        let date = std::fs::metadata(&file.path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map_or_else(InternalDate::now, |d| InternalDate {
                                unix: d.as_secs() as i64,
                                tz_minutes: 0,
                            });
                        read.push((file.unique.clone(), file.flags.clone(), date, raw));
                    }
                    // Moved by a reader (new/ → cur/) or removed since the listing: the next
                    // scan finds it under its new name, or it is gone.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Files are imported by name, in no order: one that cannot be read now
                    // (its mode, a directory where a file should be) waits for the next scan
                    // without holding up the others.
                    Err(e) => {
                        tracing::warn!(account = %self.name, %folder,
                            "{}: {e}; left for the next scan", file.path.display());
                    }
                }
            }
            // A file GnuPG fails on while others go through stays pending (in no order, it
            // holds up nothing) until it is kept undecryptable; see `settle`.
            let strike_key = |unique: &String| format!("{struck_prefix}{unique}");
            let settled = decrypt(&self.store, &self.keys, &self.name, read, strike_key).await?;
            let (messages, names) = (settled.messages, settled.done);
            if !messages.is_empty() {
                // The failure counts of files now stored go with them.
                let forget: Vec<String> = names
                    .iter()
                    .flat_map(|n| {
                        let key = strike_key(n);
                        [format!("{key}:since"), format!("{key}:last"), key]
                    })
                    .filter(|k| struck.contains(k))
                    .collect();
                let (store, f) = (self.store.clone(), folder.to_string());
                let appended = blocking(move || {
                    let appended = store.append_files(mailbox, messages, &f, &names)?;
                    store.delete_meta(&forget)?;
                    Ok::<_, StoreError>(appended)
                })
                .await??;
                stored += appended.len();
                progress.show(stored);
            }
            if let Some(e) = settled.failure {
                return Err(e);
            }
        }
        progress.finish(stored);
        Ok(stored)
    }
}

/// The files of `new/` and `cur/` not imported yet, oldest first (Maildir unique names
/// start with the delivery time).
fn pending_files(
    dir: &Path,
    known: &std::collections::HashSet<String>,
) -> std::io::Result<Vec<Pending>> {
    let mut out = Vec::new();
    let mut listed = Vec::new();
    for sub in ["new", "cur"] {
        // A Maildir++ folder some clients make with cur/ alone has nothing new to read.
        let entries = match std::fs::read_dir(dir.join(sub)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sub == "new" => continue,
            entries => entries?,
        };
        for entry in entries {
            listed.push(entry?);
        }
    }
    let separator = crate::store::info_separator(listed.iter().map(|e| e.file_name()));
    for entry in listed {
        use std::os::unix::ffi::OsStrExt;
        if entry.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        let unique = unique_name(&entry.file_name(), separator);
        if known.contains(&unique) {
            continue;
        }
        // What a link points to, and only a regular file: reading a FIFO blocked the sync
        // (and every other sync of the store, behind its lock) for good, and a link's own
        // size let a large file past the size check (review). Gone since the listing: the
        // next scan sees.
        let Ok(metadata) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !metadata.is_file() {
            tracing::warn!("{}: not a regular file; left out", entry.path().display());
            continue;
        }
        out.push(Pending {
            unique,
            path: entry.path(),
            flags: maildir_flags(&entry.path(), separator),
            size: metadata.len(),
        });
    }
    out.sort_by(|a, b| a.unique.cmp(&b.unique));
    // A file a reader moved from new/ to cur/ between the two listings appears twice.
    out.dedup_by(|a, b| a.unique == b.unique);
    Ok(out)
}

/// A regular file's bytes, at most `limit` (more: an error). Opened without blocking, so a
/// FIFO put in its place since the listing cannot hold the sync.
fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut raw = Vec::with_capacity(metadata.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than imap.limits.max_append ({limit} bytes)"
        )));
    }
    Ok(raw)
}

/// A Maildir file's unique name: its name ([`unique_text`]) up to the info part (":2,FLAGS",
/// with the Maildir's `separator`: [`crate::store::info_separator`]), the same whether the
/// file is in new/ or, flagged, in cur/.
pub(crate) fn unique_name(file_name: &std::ffi::OsStr, separator: char) -> String {
    let name = unique_text(file_name);
    match name.split_once(separator) {
        Some((unique, _)) => unique.to_string(),
        None => name,
    }
}

/// A file name as the text it is known by: itself when it is UTF-8; else "/" (which no file
/// name holds) and its bytes with the non-ASCII ones escaped, so that two names that differ
/// only in bytes that are not UTF-8 stay two files (a lossy conversion made them one, and the
/// second was taken for the first and never read).
fn unique_text(name: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    match name.to_str() {
        Some(text) => text.to_string(),
        None => format!("/{}", name.as_bytes().escape_ascii()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_that_are_not_utf8_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        use std::os::unix::ffi::OsStrExt;
        for name in [
            &b"1700000001.M1P1.h\xff\xfe"[..],
            b"1700000001.M1P1.h\xfd\xfc",
        ] {
            let path = dir
                .path()
                .join("new")
                .join(std::ffi::OsStr::from_bytes(name));
            std::fs::write(path, b"Subject: x\r\n\r\nx\r\n").unwrap();
        }
        let pending = pending_files(dir.path(), &Default::default()).unwrap();
        assert_eq!(
            pending.len(),
            2,
            "{:?}",
            pending.iter().map(|p| &p.unique).collect::<Vec<_>>()
        );
        assert_ne!(pending[0].unique, pending[1].unique);
    }

    #[test]
    fn a_file_moved_to_cur_is_one_pending_file_and_known_ones_are_left() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("new/200.M1.host"), "a").unwrap();
        std::fs::write(dir.path().join("cur/200.M1.host:2,S"), "a").unwrap();
        std::fs::write(dir.path().join("cur/100.M1.host:2,"), "b").unwrap();
        std::fs::write(dir.path().join("cur/300.M1.host:2,F"), "c").unwrap();
        let known = ["300.M1.host".to_string()].into_iter().collect();
        let pending = pending_files(dir.path(), &known).unwrap();
        let names: Vec<&str> = pending.iter().map(|p| p.unique.as_str()).collect();
        assert_eq!(names, ["100.M1.host", "200.M1.host"]);
    }
}
