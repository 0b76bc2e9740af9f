//! The drop directory: how any local user hands a message to the queue without being able
//! to read anyone else's. `incoming/` is writable by all but listable by its owner only
//! (mode 1733, like Postfix's maildrop); each submission is one file created there with
//! O_EXCL and mode 0600, written, fsynced and renamed into place, and the directory fsynced,
//! before sendmail answers. The queue runner, the directory's owner, picks files up; the
//! submitter's uid is the file's owner, not anything the file says.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sendmail::flags::Notify;

/// The first line of every spool file; a later format gets a new number.
const MAGIC: &str = "sealpost-spool 1";

/// One message and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The envelope sender; "" is the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    pub notify: Notify,
    pub envid: Option<String>,
    /// What RCPT said for a recipient in a -bs session (RFC 3461 NOTIFY and ORCPT), where it
    /// said something of its own; the others go by `notify`.
    pub recipient_dsn: Vec<RecipientDsn>,
    /// CRLF, complete (From, Date, Message-ID present).
    pub message: Vec<u8>,
}

/// One recipient's own RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDsn {
    /// As in [`Submission::recipients`].
    pub address: String,
    pub notify: Notify,
    /// The ORCPT, xtext decoded (`rfc822;bob@example.org`).
    pub orcpt: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot write to the queue {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Larger than the runner reads ([`crate::queue::QueueConfig::spool_file_limit`]):
    /// refused before it is spooled, so that none is accepted and then set aside.
    #[error(
        "the recipients and the message together pass the queue's limit of {limit} bytes \
         (the message's own limit and 4 MiB for the envelope)"
    )]
    TooLarge { limit: u64 },
    /// The file holds something that is not a submission: set it aside.
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The file could not be read (permissions, I/O): leave it where it is.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A new queue id: seconds (hex) then 32 random bits, so ids sort by arrival.
pub fn new_id(now: i64) -> String {
    let mut random = [0u8; 4];
    // getrandom only fails without any entropy source; the time still keeps ids apart.
    let _ = getrandom::fill(&mut random);
    format!("{:09X}{}", now.max(0), hex::encode_upper(random))
}

/// Whether `id` has the form of a queue id (`new_id`: letters and digits only), so that it
/// can name a file of `incoming` and nothing else: no path, no temporary file.
pub fn is_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Writes `submission` durably into `incoming` under a fresh id, which it returns.
pub fn write(
    incoming: &Path,
    id: &str,
    submission: &Submission,
    limit: u64,
) -> Result<PathBuf, SpoolError> {
    let encoded = encode(submission);
    if encoded.len() as u64 > limit {
        return Err(SpoolError::TooLarge { limit });
    }
    let fail = |path: &Path| {
        let path = path.display().to_string();
        move |source| SpoolError::Write { path, source }
    };
    let temp_name = format!(".tmp.{id}");
    let temp = incoming.join(&temp_name);
    let target = incoming.join(id);
    // Every name below is looked up in this directory, never through a link in its place:
    // the queue's owner controls the names in the queue directory, and root's cron mail must
    // not land where a link put there points (a root-only directory; review).
    let dir = Dir::open(incoming).map_err(fail(incoming))?;
    let mut file = dir.create(&temp_name).map_err(fail(&temp))?;
    // The file that failed is named: the temporary one while it is written (review: a full
    // disk was reported for the final name, which never existed), the final one at the rename.
    let written = file
        .write_all(&encoded)
        .and_then(|()| file.sync_all())
        .map_err(fail(&temp))
        .and_then(|()| dir.rename(&temp_name, id).map_err(fail(&target)));
    if let Err(e) = written {
        let _ = dir.remove(&temp_name);
        return Err(e);
    }
    if let Err(source) = sync_directory(incoming, &file) {
        // The message is in the queue under its name, and would go out. It is taken back
        // before the caller hears of a failure (and submits it again); when it cannot be,
        // its name stays and the caller is told it was accepted: a message reported
        // unqueued must never also be delivered.
        if dir.remove(id).is_ok() {
            return Err(fail(&target)(source));
        }
    }
    Ok(target)
}

/// A directory opened without following a link in its place (O_PATH: only search permission
/// is needed, as the drop directory gives submitters), and names in it.
struct Dir(std::os::fd::OwnedFd);

impl Dir {
    fn open(path: &Path) -> std::io::Result<Dir> {
        use std::os::fd::FromRawFd;
        let path = c_name(path.as_os_str())?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned from here.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Dir(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// A new file `name`, mode 0600 (O_EXCL: never one that is there, link or not).
    fn create(&self, name: &str) -> std::io::Result<File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let name = c_name(name.as_ref())?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (from, to) = (c_name(from.as_ref())?, c_name(to.as_ref())?);
        let fd = self.0.as_raw_fd();
        // SAFETY: a valid directory descriptor and NUL-terminated names.
        if unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let name = c_name(name.as_ref())?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        if unsafe { libc::unlinkat(self.0.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn c_name(name: &std::ffi::OsStr) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// Makes the rename durable. The drop directory of a shared queue is not readable by the
/// submitter (mode 1733), so it cannot be opened to fsync it; syncfs(2) on the file, which
/// flushes the whole file system and with it the directory entry, does the same job there.
fn sync_directory(dir: &Path, file: &File) -> std::io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on a descriptor we own.
            if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Err(e) => Err(e),
    }
}

fn encode(s: &Submission) -> Vec<u8> {
    let mut head = format!(
        "{MAGIC}\nsender {}\nnotify {}\n",
        s.sender,
        s.notify.as_str()
    );
    if let Some(envid) = &s.envid {
        head.push_str(&format!("envid {envid}\n"));
    }
    for r in &s.recipients {
        head.push_str(&format!("rcpt {r}\n"));
    }
    // The address last: it may hold a quoted blank. The ORCPT as xtext (RFC 3461 §4): one
    // word, whatever it holds; "-" for none.
    for d in &s.recipient_dsn {
        let orcpt = d
            .orcpt
            .as_deref()
            .map_or("-".to_string(), super::relay::xtext_encode);
        head.push_str(&format!(
            "rcpt-dsn {} {orcpt} {}\n",
            d.notify.as_str(),
            d.address
        ));
    }
    head.push('\n');
    let mut out = head.into_bytes();
    out.extend_from_slice(&s.message);
    out
}

/// Parses a spool file written by [`write`].
pub fn decode(bytes: &[u8]) -> Result<Submission, String> {
    let end = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no end of envelope")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "envelope is not UTF-8")?;
    let mut lines = head.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("does not start with {MAGIC:?}"));
    }
    let mut s = Submission {
        sender: String::new(),
        recipients: Vec::new(),
        notify: Notify::default(),
        envid: None,
        recipient_dsn: Vec::new(),
        message: bytes[end + 2..].to_vec(),
    };
    let mut sender = None;
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "sender" => sender = Some(value.to_string()),
            "rcpt" => s.recipients.push(value.to_string()),
            "rcpt-dsn" => {
                let mut words = value.splitn(3, ' ');
                let (Some(notify), Some(orcpt), Some(address)) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err("bad rcpt-dsn".into());
                };
                s.recipient_dsn.push(RecipientDsn {
                    address: address.to_string(),
                    notify: Notify::parse(notify).ok_or("bad rcpt-dsn notify")?,
                    // One that cannot go on as it is (a hand-made file) is not passed on.
                    orcpt: (orcpt != "-")
                        .then(|| super::relay::xtext_decode(orcpt))
                        .flatten()
                        .filter(|o| super::relay::orcpt_ok(o)),
                });
            }
            "notify" => s.notify = Notify::parse(value).ok_or("bad notify")?,
            // Written only from a checked -V or ENVID; one from elsewhere that could not go
            // on as it is, is not passed on rather than failing the message.
            "envid" => {
                s.envid = Some(value.to_string()).filter(|v| super::relay::envid_ok(v));
            }
            _ => return Err(format!("unknown envelope line {key:?}")),
        }
    }
    s.sender = sender.ok_or("no sender")?;
    if s.recipients.is_empty() {
        return Err("no recipients".into());
    }
    Ok(s)
}

/// A submission picked up from `incoming`, with the uid of the user who wrote it.
pub struct PickedUp {
    pub id: String,
    pub uid: u32,
    pub path: PathBuf,
    pub submission: Result<Submission, String>,
}

/// Reads one file of `incoming` safely: no symlinks followed, regular files only, at most
/// `limit` bytes. Returns None for names that are not submissions (temporary files).
pub fn read(path: &Path, limit: u64) -> Result<Option<PickedUp>, SpoolError> {
    let Some(id) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    if !is_id(id) {
        return Ok(None);
    }
    let corrupt = |reason: String| SpoolError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    // O_NONBLOCK: a FIFO planted by a user must not hang the runner.
    let unreadable = |source| SpoolError::Unreadable {
        path: path.display().to_string(),
        source,
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink: ELOOP. Nobody's submission; set it aside.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(corrupt("a symbolic link, not a submission".into()))
        }
        Err(e) => return Err(unreadable(e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| corrupt(format!("cannot stat: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(corrupt(format!("larger than {limit} bytes")));
    }
    // The file's owner says who submitted it only for a file sendmail made: one name, mode
    // 0600 at most. A hard link dropped by another user names a file of someone else's
    // (review: delivered as that user's), and a file others may read is one another user
    // made readable for a runner that is not root's service (review: in a personal queue
    // taken for shared, another user's message went out with its owner's key and relay login).
    if meta.nlink() != 1 {
        return Err(corrupt(format!(
            "{} names for one file (a hard link): its owner need not be its submitter",
            meta.nlink()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(corrupt(format!(
            "mode {:04o}: sendmail makes a submission its submitter's alone (0600)",
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(Some(PickedUp {
        id: id.to_string(),
        uid: meta.uid(),
        path: path.to_path_buf(),
        submission: decode(&bytes),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Submission {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
            notify: Notify::parse("failure").unwrap(),
            envid: Some("e1".into()),
            recipient_dsn: vec![
                RecipientDsn {
                    address: "bob@example.org".into(),
                    notify: Notify::parse("never").unwrap(),
                    orcpt: Some("rfc822;b+ob= x@example.org".into()),
                },
                RecipientDsn {
                    address: "\"c l\"@example.org".into(),
                    notify: Notify::parse("success,failure").unwrap(),
                    orcpt: None,
                },
            ],
            message: b"From: a\r\n\r\n\n\nbody\r\n".to_vec(),
        };
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        let null = Submission {
            sender: String::new(),
            envid: None,
            ..s
        };
        assert_eq!(decode(&encode(&null)).unwrap(), null);
        assert!(decode(b"garbage").is_err());
        assert!(
            decode(b"sealpost-spool 1\nsender a\n\nx").is_err(),
            "no recipients"
        );
    }

    #[test]
    fn write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Submission {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.org".into()],
            notify: Notify::default(),
            envid: None,
            recipient_dsn: Vec::new(),
            message: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        };
        let id = new_id(1_700_000_000);
        // Past the runner's limit: refused, nothing left behind (review: spooled, exit 0,
        // then set aside as corrupt by the runner).
        assert!(matches!(
            write(dir.path(), &id, &s, 40),
            Err(SpoolError::TooLarge { limit: 40 })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let path = write(dir.path(), &id, &s, u64::MAX).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let picked = read(&path, 1 << 20).unwrap().unwrap();
        assert_eq!(picked.id, id);
        assert_eq!(picked.submission.unwrap(), s);
        // A symlink is never followed; temporary names are skipped.
        let link = dir.path().join("LINK");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read(&link, 1 << 20).is_err());
        assert!(read(&dir.path().join(".tmp.X"), 1 << 20).unwrap().is_none());
        assert!(read(&path, 10).is_err(), "over the limit");
    }
}
