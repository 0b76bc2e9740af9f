//! `sealpost import`: messages from an mbox file, a Maildir, a directory of message files or
//! one message file, into one mailbox of the store.
//!
//! Line endings are made CRLF on the way in (IMAP serves CRLF, RFC 3501 §2.3.4; storing the
//! served form means the bytes served are the bytes stored). mbox files are split at "From "
//! lines and ">From " quoting is undone one level (mboxrd). Maildir flags from the ":2," info
//! and file times become IMAP flags and INTERNALDATE.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use thiserror::Error;

use super::{Flags, InternalDate, MailboxId, Origin, Prepared, Store, StoreError};

/// Messages are committed in batches: one fsync per batch, and an interrupted import keeps
/// every batch it committed.
const BATCH: usize = 500;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SIGINT, SIGTERM or SIGHUP: the batch in hand was stored, nothing after it.
    #[error("interrupted")]
    Interrupted,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    /// What was found and not imported, each with why: said, so nothing is left out unseen.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: &'static str,
}

const EMPTY: &str = "empty";
const NOT_A_MESSAGE: &str = "not a message: its first line is no header field";

/// Whether `bytes` begins as a message does: with a header field (`Name:`, RFC 5322 §2.2; a
/// blank before the colon as the obsolete syntax allows, 8-bit bytes in the name as some
/// mail has them), or with the blank line of an empty header. A README or a note in a
/// directory of message files does not (review: imported as a blank message, without a
/// word); one whose first line happens to read `Word: ...` cannot be told from a message.
fn begins_as_a_message(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return true;
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    !name.is_empty() && name.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Imports `path` (mbox, Maildir, directory of messages or one message) into `mailbox`.
pub fn import_path(
    store: &Store,
    mailbox: MailboxId,
    path: &Path,
) -> Result<ImportReport, ImportError> {
    import_path_until(store, mailbox, path, &AtomicBool::new(false))
}

/// [`import_path`], stopping with [`ImportError::Interrupted`] once `stop` is set: what was
/// read before is stored first, and said (review: a 100,000-message import stopped by ^C
/// kept 20,500 without a word, and a second run stored them again).
pub fn import_path_until(
    store: &Store,
    mailbox: MailboxId,
    path: &Path,
    stop: &AtomicBool,
) -> Result<ImportReport, ImportError> {
    let read_error = |source| ImportError::Read {
        path: path.to_owned(),
        source,
    };
    let mut batch = Batch {
        store,
        mailbox,
        pending: Vec::new(),
        report: ImportReport::default(),
        separator: ':',
        stop,
    };
    // What was committed before an error stays; said, since importing the same source
    // again stores it again (review: 500 of 1,200 in, then "disk is full", and a second run
    // made them 1,700).
    let filled = fill(&mut batch, path, read_error).and_then(|()| batch.flush());
    if let Err(e) = &filled {
        if batch.report.imported > 0 {
            tracing::error!(
                "{e}: {} messages of {} were stored before it; importing it again stores \
                 them again",
                batch.report.imported,
                path.display()
            );
        }
    }
    filled.map(|()| batch.report)
}

/// Reads `path` into `batch` (see [`import_path`]).
fn fill(
    batch: &mut Batch<'_>,
    path: &Path,
    read_error: impl Fn(std::io::Error) -> ImportError,
) -> Result<(), ImportError> {
    let meta = fs::metadata(path).map_err(read_error)?;
    if meta.is_dir() {
        if path.join("cur").is_dir() || path.join("new").is_dir() {
            // Both listed first, each message once by its unique name (the part before ':'):
            // a mail client may move a file from new/ to cur/ (adding flags) while the import
            // runs (review: listed one after the other, such a file was imported twice, or
            // its old name was not found and the import stopped half-way).
            note_unread_entries(&mut batch.report, path, true)?;
            let mut files: Vec<PathBuf> = sorted_files(&path.join("new"))?;
            files.extend(sorted_files(&path.join("cur"))?);
            batch.separator = info_separator(
                files
                    .iter()
                    .filter_map(|f| f.file_name())
                    .map(|n| n.to_os_string()),
            );
            let mut seen = std::collections::HashSet::new();
            for file in files {
                if !seen.insert(maildir_unique(&file, batch.separator)) {
                    continue;
                }
                let gone = |e: &ImportError| {
                    matches!(e, ImportError::Read { source, .. }
                        if source.kind() == std::io::ErrorKind::NotFound)
                };
                match batch.maildir_file(&file) {
                    // Moved since the listing: read where it is now (removed: nothing to
                    // import). Moved once more meanwhile, it is left out with a word rather
                    // than the import stopped (review: a client renaming files twice).
                    Err(e) if gone(&e) => {
                        if let Some(moved) = moved_maildir_file(path, &file, batch.separator)? {
                            match batch.maildir_file(&moved) {
                                Err(e) if gone(&e) => batch.report.skipped.push(Skipped {
                                    path: moved,
                                    why: "renamed again during the import; import it again",
                                }),
                                other => other?,
                            }
                        }
                    }
                    other => other?,
                }
            }
        } else {
            note_unread_entries(&mut batch.report, path, false)?;
            for file in sorted_files(path)? {
                batch.file(&file, Flags::default())?;
            }
        }
    } else {
        batch.file(path, Flags::default())?;
    }
    Ok(())
}

/// A file's modification time as an internal date; now when it cannot be read.
fn modified(path: &Path) -> InternalDate {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(InternalDate::now, |d| InternalDate {
            unix: d.as_secs() as i64,
            tz_minutes: 0,
        })
}

struct Batch<'a> {
    store: &'a Store,
    mailbox: MailboxId,
    pending: Vec<Prepared>,
    report: ImportReport,
    /// The info separator of the Maildir being read ([`info_separator`]).
    separator: char,
    /// Set: store what is pending and stop.
    stop: &'a AtomicBool,
}

impl Batch<'_> {
    /// A Maildir file: one message, whatever its first line (a postmark some delivery agents
    /// put there is dropped, as the Maildir sync drops it), with the flags its name holds.
    /// Read as an mbox, one starting with a postmark was split at its body's "From " lines,
    /// its flags lost (review).
    fn maildir_file(&mut self, path: &Path) -> Result<(), ImportError> {
        let mut bytes = fs::read(path).map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })?;
        crate::message::parse::drop_postmark(&mut bytes);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            self.report.skip(path, EMPTY);
            return Ok(());
        }
        let date = modified(path);
        let flags = maildir_flags(path, self.separator);
        self.push(Prepared::new(unverified(&bytes), flags, date))
    }

    fn file(&mut self, path: &Path, flags: Flags) -> Result<(), ImportError> {
        let read_error = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = fs::read(path).map_err(read_error)?;
        let date = modified(path);
        // An mbox begins with a postmark ("From sender date"); a message whose first field is
        // written "From :" does not (review: it was split as an mbox, its From field taken
        // for a postmark and a body line "From ..." for the next message).
        // Some exports put a UTF-8 byte order mark or blank lines before the first postmark:
        // still an mbox (review: stored whole as one message).
        let without_bom = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
        let first = without_bom
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(without_bom.len());
        let mbox = match &without_bom[first..] {
            from if crate::message::parse::is_postmark(from) => from,
            _ => &bytes[..],
        };
        if crate::message::parse::is_postmark(mbox) {
            let mut any = false;
            for (postmark, message) in split_mbox(mbox) {
                if message.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                any = true;
                let date = postmark_date(postmark).unwrap_or(date);
                self.push(Prepared::new(unverified(&message), Flags::default(), date))?;
            }
            if !any {
                self.report.skip(path, EMPTY);
            }
        } else if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            self.report.skip(path, EMPTY);
        } else if !begins_as_a_message(without_bom) {
            self.report.skip(path, NOT_A_MESSAGE);
        } else {
            self.push(Prepared::new(unverified(&bytes), flags, date))?;
        }
        Ok(())
    }

    fn push(&mut self, message: Prepared) -> Result<(), ImportError> {
        self.pending.push(message);
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        if self.stop.load(Ordering::SeqCst) {
            self.flush()?;
            return Err(ImportError::Interrupted);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ImportError> {
        let pending = std::mem::take(&mut self.pending);
        let count = pending.len();
        if count > 0 {
            self.store
                .append_batch(self.mailbox, pending, Origin::Sync)?;
            self.report.imported += count;
        }
        Ok(())
    }
}

/// A Maildir file's unique name, as the Maildir source knows it.
fn maildir_unique(file: &Path, separator: char) -> String {
    crate::sync::maildir::unique_name(file.file_name().unwrap_or_default(), separator)
}

/// Where `file` (listed, then gone) is now: the file in new/ or cur/ with its unique name.
fn moved_maildir_file(
    maildir: &Path,
    file: &Path,
    separator: char,
) -> Result<Option<PathBuf>, ImportError> {
    let unique = maildir_unique(file, separator);
    for sub in ["cur", "new"] {
        if let Some(found) = sorted_files(&maildir.join(sub))?
            .into_iter()
            .find(|f| maildir_unique(f, separator) == unique)
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

impl ImportReport {
    fn skip(&mut self, path: &Path, why: &'static str) {
        self.skipped.push(Skipped {
            path: path.to_owned(),
            why,
        });
    }
}

/// Notes the entries of the directory `dir` that the import does not read: a Maildir's
/// Maildir++ folders (`.Sent/`, each a mailbox of its own that `--mailbox` does not name),
/// and any other directory or special file (review: left out without a word). A Maildir's
/// own `cur/`, `new/`, `tmp/` and its dot files (Dovecot's index files...) are no messages.
fn note_unread_entries(
    report: &mut ImportReport,
    dir: &Path,
    maildir: bool,
) -> Result<(), ImportError> {
    let read_error = |source| ImportError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut notes = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type().map_err(read_error)?;
        let path = entry.path();
        if maildir && matches!(name.as_ref(), "cur" | "new" | "tmp") {
            continue;
        }
        let is_maildir = kind.is_dir() && (path.join("cur").is_dir() || path.join("new").is_dir());
        let why = if name.starts_with('.') {
            if !maildir || !is_maildir {
                continue;
            }
            "a Maildir++ folder: import it on its own, with its own --mailbox"
        } else if is_maildir {
            "a Maildir: import it on its own, with its own --mailbox"
        } else if kind.is_dir() {
            if maildir {
                continue;
            }
            "a directory: import it on its own"
        } else if !kind.is_file() {
            "not a regular file"
        } else {
            continue;
        };
        notes.push(Skipped { path, why });
    }
    notes.sort_by(|a, b| a.path.cmp(&b.path));
    report.skipped.extend(notes);
    Ok(())
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let read_error = |source| ImportError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        // Maildir's tmp/ files and dot files are not messages.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(read_error)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Maildir info flags (https://cr.yp.to/proto/maildir.html): ":2," then letters in ASCII order;
/// `separator` is the Maildir's ([`info_separator`]).
pub fn maildir_flags(path: &Path, separator: char) -> Flags {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((_, info)) = name.rsplit_once(&format!("{separator}2,")) else {
        return Flags::default();
    };
    Flags::new(info.chars().filter_map(|c| match c {
        'S' => Some("\\Seen"),
        'R' => Some("\\Answered"),
        'F' => Some("\\Flagged"),
        'T' => Some("\\Deleted"),
        'D' => Some("\\Draft"),
        _ => None,
    }))
}

/// The info separator of a Maildir whose files have these names: ":", or, on file systems
/// without ":" in names, ";" or "!" (Dovecot's maildir_info_separator), as the names show it.
/// One Maildir uses one: a name "1700000000.M1P2.host;2,S" in a Maildir of ";" was stored
/// again at each flag change, under its new name, taken whole; and in a Maildir of ":", a
/// ";2," inside a unique name is no info (review: split there, two messages were one).
pub(crate) fn info_separator(names: impl IntoIterator<Item = std::ffi::OsString>) -> char {
    let mut seen = None;
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.contains(":2,") {
            return ':';
        }
        for separator in [';', '!'] {
            if seen.is_none() && name.contains(&format!("{separator}2,")) {
                seen = Some(separator);
            }
        }
    }
    seen.unwrap_or(':')
}

/// Splits an mbox at its "From " postmark lines; returns (postmark line, message) pairs with
/// mboxrd quoting (">From ", ">>From " …) undone one level.
fn split_mbox(bytes: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out: Vec<(&[u8], Vec<u8>)> = Vec::new();
    let mut previous_blank = true;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if previous_blank && line.starts_with(b"From ") {
            // The blank line before a postmark belongs to the mbox format, not the message.
            if let Some((_, message)) = out.last_mut() {
                trim_one_blank_line(message);
            }
            out.push((line, Vec::new()));
            previous_blank = false;
            continue;
        }
        previous_blank = line == b"\n" || line == b"\r\n";
        if let Some((_, message)) = out.last_mut() {
            let quoted = line.iter().take_while(|&&b| b == b'>').count();
            if quoted > 0 && line[quoted..].starts_with(b"From ") {
                message.extend_from_slice(&line[1..]);
            } else {
                message.extend_from_slice(line);
            }
        }
    }
    // mbox writers end every message with a blank line, the last one too (review: the last
    // message kept it).
    if let Some((_, message)) = out.last_mut() {
        trim_one_blank_line(message);
    }
    out
}

fn trim_one_blank_line(message: &mut Vec<u8>) {
    if message.ends_with(b"\r\n\r\n") {
        message.truncate(message.len() - 2);
    } else if message.ends_with(b"\n\n") {
        message.truncate(message.len() - 1);
    }
}

/// The date of an mbox postmark, "From sender Thu Nov 19 10:00:00 2026" (asctime, UTC).
fn postmark_date(line: &[u8]) -> Option<InternalDate> {
    let text = std::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    // From, sender, weekday, month, day, time, year
    let [.., month, day, time, year] = fields.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>());
    let (h, m, s) = (
        hms.next()?.ok()?,
        hms.next()?.ok()?,
        hms.next().unwrap_or(Ok(0)).ok()?,
    );
    Some(InternalDate {
        unix: days_from_civil(year, month, day)? * 86_400 + h * 3600 + m * 60 + s,
        tz_minutes: 0,
    })
}

pub(crate) const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The message as stored: CRLF line ends, and no verdict field (sealpost did not verify it;
/// see [`crate::inbound::without_verdict`]).
fn unverified(bytes: &[u8]) -> Vec<u8> {
    crate::inbound::without_verdict(&crlf(bytes))
}

/// [`crlf`] for bytes held whole: returned as they are (no copy) when no line ends in a bare
/// LF.
pub fn into_crlf(bytes: Vec<u8>) -> Vec<u8> {
    let bare = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
    if bare {
        crlf(&bytes)
    } else {
        bytes
    }
}

/// Bare LF becomes CRLF; existing CRLF is kept.
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split_undoes_one_level_of_quoting_and_drops_the_separator_line() {
        let mbox = b"From a@b Thu Nov 19 10:00:00 2026\nSubject: one\n\n>From here\n>>From there\n\nFrom c@d Fri Nov 20 11:30:15 2026\nSubject: two\n\nbody\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].1, b"Subject: one\n\nFrom here\n>From there\n");
        assert_eq!(messages[1].1, b"Subject: two\n\nbody\n");
        let date = postmark_date(messages[1].0).unwrap();
        assert_eq!(date.unix, 1_795_174_215);
    }

    /// The mbox's blank line after the last message is the format's too; a message whose
    /// first field is written "From :" is one message, not an mbox (review: its From field
    /// was dropped as a postmark and a body line "From the desk" became another message).
    #[test]
    fn an_mbox_ends_without_its_last_blank_line_and_from_colon_is_no_mbox() {
        let mbox = b"From a@b Thu Nov 19 10:00:00 2026\nSubject: one\n\nx\n\n\
From c@d Fri Nov 20 11:30:15 2026\nSubject: two\n\nbody\n\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages[0].1, b"Subject: one\n\nx\n");
        assert_eq!(messages[1].1, b"Subject: two\n\nbody\n");

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let account = store.ensure_account("bob").unwrap();
        let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
        let file = dir.path().join("m.eml");
        std::fs::write(
            &file,
            b"From : alice@example.org\nSubject: obs\n\nHi\n\nFrom the desk of Alice\n",
        )
        .unwrap();
        let report = import_path(&store, inbox.id, &file).unwrap();
        assert_eq!(report.imported, 1);
        let stored = store
            .fetch_batch(
                inbox.id,
                &[1],
                crate::store::Need {
                    raw: true,
                    ..Default::default()
                },
                u64::MAX,
            )
            .unwrap();
        let raw = stored.items[0].1.raw.to_vec();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("From : alice@example.org\r\n"), "{text}");
        assert!(text.ends_with("\r\nFrom the desk of Alice\r\n"), "{text}");
    }

    /// A file in a directory of message files that does not begin as a message (a README) is
    /// left out and said so (review: imported as a blank message without a word); an empty
    /// header, an obsolete `Name :` and a BOM still begin one.
    #[test]
    fn a_file_that_is_no_message_is_left_out_with_a_word() {
        let dir = tempfile::tempdir().unwrap();
        let messages = dir.path().join("m");
        std::fs::create_dir(&messages).unwrap();
        let files: [(&str, &[u8]); 7] = [
            ("README.md", b"# The test corpus\n\nOne message per file.\n"),
            ("a.eml", b"Subject: a\r\n\r\nbody\r\n"),
            ("b.eml", b"\xef\xbb\xbfFrom: b@example.org\n\nbody\n"),
            ("c.eml", b"Subject : c\n\nbody\n"),
            ("d.eml", b"\nno header at all\n"),
            ("e.eml", b" \t\r\nbody after a blank first line\n"),
            ("f.eml", b"X-Gr\xc3\xbc\xc3\x9fe: 8-bit name\n\nbody\n"),
        ];
        for (name, bytes) in files {
            std::fs::write(messages.join(name), bytes).unwrap();
        }
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let account = store.ensure_account("bob").unwrap();
        let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
        let report = import_path(&store, inbox.id, &messages).unwrap();
        assert_eq!(report.imported, 6);
        assert_eq!(
            report.skipped,
            [Skipped {
                path: messages.join("README.md"),
                why: NOT_A_MESSAGE
            }]
        );
    }

    /// A message a mail client moves from new/ to cur/ during the import is imported once,
    /// from wherever it is when read (review: twice, or the import stopped on its old name).
    #[test]
    fn a_maildir_message_moved_during_the_import_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("md");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        // Seen in both listings: the move happened between them.
        let message = b"From: a@example.org\nSubject: moved\n\nbody\n";
        std::fs::write(maildir.join("new/1700000001.M1.host"), message).unwrap();
        std::fs::write(maildir.join("cur/1700000001.M1.host:2,S"), message).unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let account = store.ensure_account("bob").unwrap();
        let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
        assert_eq!(import_path(&store, inbox.id, &maildir).unwrap().imported, 1);
        // Listed in new/, gone from there by the time it is read.
        std::fs::remove_file(maildir.join("new/1700000001.M1.host")).unwrap();
        assert_eq!(
            moved_maildir_file(&maildir, &maildir.join("new/1700000001.M1.host"), ':').unwrap(),
            Some(maildir.join("cur/1700000001.M1.host:2,S"))
        );
        assert_eq!(
            moved_maildir_file(&maildir, &maildir.join("new/1700000009.M9.host"), ':').unwrap(),
            None
        );
    }

    /// A Maildir file that starts with a postmark is one message with its flags, the
    /// postmark dropped: not an mbox split at its body's "From " line (review).
    #[test]
    fn a_maildir_file_with_a_postmark_is_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("md");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        std::fs::write(
            maildir.join("cur/1700000005.M1P1.h:2,FS"),
            b"From MAILER-DAEMON Thu Nov 19 10:00:00 2026\nSubject: s5\n\npara\n\nFrom the desk of Bob\nmore\n",
        )
        .unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let account = store.ensure_account("bob").unwrap();
        let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
        assert_eq!(import_path(&store, inbox.id, &maildir).unwrap().imported, 1);
        let need = crate::store::Need {
            raw: true,
            ..Default::default()
        };
        let batch = store.fetch_batch(inbox.id, &[1], need, u64::MAX).unwrap();
        let (row, content) = &batch.items[0];
        assert_eq!(
            &content.raw[..],
            b"Subject: s5\r\n\r\npara\r\n\r\nFrom the desk of Bob\r\nmore\r\n"
        );
        assert!(row.flags.contains("\\Seen") && row.flags.contains("\\Flagged"));
    }

    /// An mbox after a byte order mark or blank lines is split all the same (review: it was
    /// stored whole as one message).
    #[test]
    fn an_mbox_after_a_bom_or_blank_lines_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let account = store.ensure_account("bob").unwrap();
        let inbox = store.mailbox(account, "INBOX").unwrap().unwrap();
        for prefix in [&b"\xef\xbb\xbf"[..], b"\n\n", b"\xef\xbb\xbf\r\n"] {
            let mut mbox = prefix.to_vec();
            mbox.extend_from_slice(
                b"From a@x Thu Nov 19 10:00:00 2026\nSubject: 1\n\none\n\n\
                  From a@x Thu Nov 19 10:00:01 2026\nSubject: 2\n\ntwo\n\n",
            );
            let file = dir.path().join("m.mbox");
            std::fs::write(&file, &mbox).unwrap();
            assert_eq!(import_path(&store, inbox.id, &file).unwrap().imported, 2);
        }
    }

    #[test]
    fn maildir_info_flags() {
        let flags = maildir_flags(Path::new("/x/cur/123.host:2,FRST"), ':');
        assert_eq!(
            flags.iter().collect::<Vec<_>>(),
            ["\\Flagged", "\\Answered", "\\Seen", "\\Deleted"]
        );
        assert!(maildir_flags(Path::new("/x/new/123.host"), ':').is_empty());
        // The info separators of file systems without ":" (Dovecot's maildir_info_separator).
        for (name, separator) in [("/x/cur/123.host;2,FS", ';'), ("/x/cur/123.host!2,FS", '!')] {
            let flags = maildir_flags(Path::new(name), separator);
            assert!(
                flags.contains("\\Seen") && flags.contains("\\Flagged"),
                "{name}"
            );
        }
        use crate::sync::maildir::unique_name;
        for (name, separator) in [
            ("123.host:2,S", ':'),
            ("123.host;2,FS", ';'),
            ("123.host!2,", '!'),
            ("123.host", ';'),
        ] {
            assert_eq!(unique_name(name.as_ref(), separator), "123.host", "{name}");
        }
        // One Maildir, one separator: a ";2," in a unique name of a Maildir of ":" is no info.
        let names = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(info_separator(names(&["1.a;2,x", "2.b:2,S"])), ':');
        assert_eq!(info_separator(names(&["1.a", "2.b;2,S"])), ';');
        assert_eq!(info_separator(names(&["1.a", "2.b"])), ':');
        assert_eq!(unique_name("1.a;2,x".as_ref(), ':'), "1.a;2,x");
        assert_eq!(unique_name("1.c;2,d:2,S".as_ref(), ':'), "1.c;2,d");
    }

    #[test]
    fn crlf_only_touches_bare_lf() {
        assert_eq!(crlf(b"a\nb\r\nc\r"), b"a\r\nb\r\nc\r");
        for bytes in [&b"a\nb\r\nc\r"[..], b"\nx", b"a\r\nb\r\n", b"", b"\r\n\n"] {
            assert_eq!(into_crlf(bytes.to_vec()), crlf(bytes), "{bytes:?}");
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2026, 13, 1), None);
    }
}
