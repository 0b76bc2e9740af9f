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

    /// Frees the room for the record at hand.
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
