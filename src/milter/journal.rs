//! The re-injection journal: which recipients of which message already got their copy through
//! the re-injection path. A copy is recorded right after the re-injection listener accepted
//! it and before that recipient is deleted from the original; a retry of the same message
//! (after a TEMPFAIL or a crash, Postfix keeps the original queued) skips recorded recipients:
//! no duplicate, and none dropped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::rewrite::policy::canonical_address;

#[derive(Debug, thiserror::Error)]
#[error("milter journal {path}: {source}")]
pub struct JournalError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

pub struct Journal {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Room for the records of copies sent ([`crate::reserve`]), beside the database.
    reserve: crate::reserve::Reserve,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let err = |source| JournalError {
            path: path.display().to_string(),
            source,
        };
        // It names every recipient re-injected: its user's alone (review: 0644 in a 0755
        // directory outside the systemd unit, whose UMask=0077 made it so there). SQLite
        // gives its -wal and -shm files the database file's mode.
        let invalid = |at: &Path, e: std::io::Error| {
            err(rusqlite::Error::InvalidPath(
                format!("{}: {e}", at.display()).into(),
            ))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Its own error, not the file's "No such file or directory" after it (review).
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .recursive(true)
                .create(dir)
                .map_err(|e| invalid(dir, e))?;
        }
        if let Some(why) = crate::store::not_a_database(path) {
            return Err(invalid(path, std::io::Error::other(why)));
        }
        crate::queue::private_file(path).map_err(|e| invalid(path, e))?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // Another program's database (the store, say) does not become the journal too.
        let mut tables = crate::store::tables(&conn).map_err(err)?;
        tables.retain(|t| t != "reinjected");
        if !tables.is_empty() {
            return Err(invalid(
                path,
                std::io::Error::other(format!(
                    "a database of something else (tables {}), not the milter's journal",
                    tables.join(", ")
                )),
            ));
        }
        crate::store::wal_mode(&conn).map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS reinjected(
                 identity TEXT NOT NULL,
                 recipient TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (identity, recipient)
             );",
        )
        .map_err(err)?;
        let mut reserve = path.as_os_str().to_owned();
        reserve.push(".reserve");
        let journal = Journal {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            reserve: crate::reserve::Reserve::new(reserve.into()),
        };
        journal.ensure_writable()?;
        Ok(journal)
    }

    /// Fails unless a record can be written now ([`crate::store::write_check`]). A journal
    /// that can be read but not written (left root's after a run as root, a read-only file)
    /// took no record after each copy went, and every retry of the message sent the copies
    /// again (review: three copies for three tries).
    pub fn ensure_writable(&self) -> Result<(), JournalError> {
        crate::store::write_check(&mut self.conn()).map_err(|e| self.err(e))
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `recipient`'s copy of message `identity` was re-injected already (the
    /// address compared as a mailbox: ASCII case and the form of an IDN domain set aside).
    pub fn contains(&self, identity: &str, recipient: &str) -> Result<bool, JournalError> {
        // Entries written before the canonical form kept an international domain as given,
        // in ASCII lower case: looked up too while they may still be in the journal.
        let canonical = canonical_address(recipient);
        let earlier = recipient.to_ascii_lowercase();
        self.conn()
            .query_row(
                "SELECT 1 FROM reinjected WHERE identity = ?1 AND recipient IN (?2, ?3)",
                params![identity, canonical, earlier],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Before a copy is re-injected: room to record it ([`crate::reserve`]). An error: there
    /// is none, and the copy must not go (every retry of the message would send it again).
    pub fn ensure_reserve(&self) -> std::io::Result<()> {
        self.reserve.ensure()
    }

    /// Records a re-injected copy (durably: synchronous=FULL). A first failure frees the
    /// reserve and tries once more: the copy went, and an unrecorded one goes again.
    pub fn record(&self, identity: &str, recipient: &str, at: i64) -> Result<(), JournalError> {
        let insert = || {
            self.conn()
                .execute(
                    "INSERT OR IGNORE INTO reinjected(identity, recipient, at) VALUES (?1, ?2, ?3)",
                    params![identity, canonical_address(recipient), at],
                )
                .map(drop)
                .map_err(|e| self.err(e))
        };
        insert().or_else(|_| {
            self.reserve.release();
            insert()
        })
    }

    /// Forgets one entry (an error only logged by callers: the entry then lasts its time).
    pub fn forget(&self, identity: &str, recipient: &str) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "DELETE FROM reinjected WHERE identity = ?1 AND recipient = ?2",
                params![identity, canonical_address(recipient)],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Forgets entries older than `max_age` (Postfix gives up on a message after 5 days).
    pub fn purge(&self, now: i64, max_age: Duration) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "DELETE FROM reinjected WHERE at < ?1",
                params![now - max_age.as_secs() as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal path that names something else, a mail file or the store, is refused before
    /// anything is added to it (review: the store got the journal's table).
    #[test]
    fn a_file_that_is_no_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("m.eml");
        std::fs::write(&mail, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let e = Journal::open(&mail).err().expect("refused").to_string();
        assert!(e.contains("no SQLite database"), "{e}");
        let store = dir.path().join("store.sqlite");
        drop(crate::store::Store::open(&store).unwrap());
        let e = Journal::open(&store).err().expect("refused").to_string();
        assert!(e.contains("not the milter's journal"), "{e}");
        let has_journal_table: i64 = Connection::open(&store)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'reinjected'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_journal_table, 0);
    }

    /// A journal that cannot take a record is found out before a copy goes (here by
    /// SQLite's query_only: as root, file modes do not stop a write).
    #[test]
    fn a_journal_that_cannot_be_written_is_found_out() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
        j.ensure_writable().unwrap();
        j.conn().pragma_update(None, "query_only", true).unwrap();
        let e = j.ensure_writable().unwrap_err().to_string();
        assert!(e.contains("j.sqlite"), "{e}");
        j.conn().pragma_update(None, "query_only", false).unwrap();
        j.record("id", "bob@example.org", 1).unwrap();
        // A -wal file that takes no write (review: a check rolled back never wrote, and
        // passed), as on a file system gone read-only. chattr +i stops root too.
        let wal = dir.path().join("j.sqlite-wal");
        let immutable = |on: bool| {
            let flag = if on { "+i" } else { "-i" };
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(&wal)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(immutable(true), "chattr +i {}", wal.display());
        let checked = j.ensure_writable();
        let recorded = j.record("id", "carol@example.org", 1);
        assert!(immutable(false));
        assert!(
            checked.is_err() && recorded.is_err(),
            "{checked:?} {recorded:?}"
        );
        j.ensure_writable().unwrap();
        // The check changes nothing, and leaves synchronous=FULL.
        assert!(j.contains("id", "bob@example.org").unwrap());
        assert!(!j.contains("id", "carol@example.org").unwrap());
        let synchronous: i64 = j
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
    }

    /// The journal names every recipient re-injected: its files and a directory made for it
    /// are its user's alone, whatever the umask.
    #[test]
    fn the_journal_is_its_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made").join("j.sqlite");
        // SAFETY: umask only; the old one is put back.
        let old = unsafe { libc::umask(0o022) };
        let j = Journal::open(&path);
        unsafe { libc::umask(old) };
        let j = j.unwrap();
        j.record("id", "bob@example.org", 1).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let wal = dir.path().join("made").join("j.sqlite-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let j = Journal::open(&path).unwrap();
        assert!(!j.contains("m1", "bob@example.org").unwrap());
        j.record("m1", "Bob@Example.org", 100).unwrap();
        j.record("m1", "bob@example.org", 100).unwrap();
        j.record("m1", "x@xn--bcher-kva.de", 100).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.contains("m1", "bob@example.org").unwrap());
        assert!(!j.contains("m2", "bob@example.org").unwrap());
        assert!(j.contains("m1", "X@Bücher.de").unwrap());
        // As an earlier version wrote it.
        j.conn()
            .execute(
                "INSERT INTO reinjected(identity, recipient, at) VALUES ('m3', 'y@bücher.de', 100)",
                [],
            )
            .unwrap();
        assert!(j.contains("m3", "Y@bücher.de").unwrap());
        j.purge(100 + 10, Duration::from_secs(5)).unwrap();
        assert!(!j.contains("m1", "bob@example.org").unwrap());
    }
}
