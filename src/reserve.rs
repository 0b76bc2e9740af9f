//! Room kept on a file system for a record that must not fail for want of it.
//!
//! The queue and the milter journal send a copy first and record it after: a record that
//! fails leaves the copy to go again at the next try. On a full disk every try would then
//! send the same copy again. So a file of [`RESERVE_BYTES`] is kept beside the database: no
//! copy goes while it cannot be made, and a record that fails frees it and tries again.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Many times what recording a batch of copies takes (a few WAL frames).
pub const RESERVE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    pub fn new(path: PathBuf) -> Reserve {
        Reserve { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the reserve when it is missing or short. An error: there is no room for it.
    pub fn ensure(&self) -> std::io::Result<()> {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
            return Ok(());
        }
        self.remove_orphans();
        // A name of its own per attempt: two messages at once each make one, and the second
        // rename just puts an equal file in place.
        static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut made = self.path.clone().into_os_string();
        made.push(format!(".tmp.{}.{attempt}", std::process::id()));
        let made = PathBuf::from(made);
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&made)?;
            // Bytes no file system compresses or shares away.
            let mut bytes = vec![0u8; RESERVE_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&made, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&made);
        }
        result
    }

    /// Removes what a process killed while making the reserve left: `NAME.tmp.PID.N` files of
    /// processes that are gone (each would hold up to [`RESERVE_BYTES`] for good).
    fn remove_orphans(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let mut prefix = name.to_os_string();
        prefix.push(".tmp.");
        let prefix = prefix.as_encoded_bytes();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(rest) = file.as_encoded_bytes().strip_prefix(prefix) else {
                continue;
            };
            let pid = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.parse::<libc::pid_t>().ok());
            let Some(pid) = pid.filter(|&p| p > 0 && p as u32 != std::process::id()) else {
                continue;
            };
            // SAFETY: signal 0 only asks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Frees the room for the record at hand.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reserve half made by a process that was killed is removed when the reserve is made
    /// next; one of a process still running is left to it.
    #[test]
    fn orphans_of_gone_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path().join("space.reserve"));
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let mut alive = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let orphan = dir.path().join(format!("space.reserve.tmp.{gone_pid}.3"));
        let busy = dir
            .path()
            .join(format!("space.reserve.tmp.{}.0", alive.id()));
        let other = dir.path().join(format!("journal.reserve.tmp.{gone_pid}.0"));
        for path in [&orphan, &busy, &other] {
            std::fs::write(path, b"partial").unwrap();
        }
        reserve.ensure().unwrap();
        let _ = alive.kill();
        let _ = alive.wait();
        assert!(!orphan.exists());
        assert!(busy.exists(), "its process may still rename it");
        assert!(other.exists(), "another reserve's");
        assert_eq!(
            std::fs::metadata(reserve.path()).unwrap().len(),
            RESERVE_BYTES as u64
        );
    }
}
