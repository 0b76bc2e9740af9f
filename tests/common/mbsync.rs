//! mbsync (Debian's isync 1.4) as a real third-party IMAP client: one account, one local
//! Maildir, one channel covering every mailbox. Each instance owns a temp dir under /tmp with
//! its mbsyncrc, the Maildir and mbsync's sync state (`SyncState *` keeps it inside the
//! Maildir folders, so nothing is written to $HOME).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::imap::Tls;

pub const MBSYNC: &str = "/usr/bin/mbsync";

pub struct Mbsync {
    pub rc: PathBuf,
    /// The local Maildir root; INBOX is `Maildir/INBOX`, other mailboxes `Maildir/<name>`.
    pub local: PathBuf,
    dir: tempfile::TempDir,
}

/// Authentication mechanism mbsync offers.
#[derive(Clone, Copy, Debug)]
pub enum Auth {
    /// The IMAP LOGIN command.
    Login,
    /// SASL PLAIN via AUTHENTICATE (mbsync needs its SASL module for this).
    Plain,
}

/// mbsync config strings: double quotes and backslashes escaped, always quoted.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Mbsync {
    pub fn new(host: &str, port: u16, user: &str, password: &str, tls: Tls) -> Mbsync {
        Self::with_auth(host, port, user, password, tls, Auth::Login)
    }

    pub fn with_auth(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        tls: Tls,
        auth: Auth,
    ) -> Mbsync {
        let dir = tempfile::Builder::new()
            .prefix("spmb")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let local = dir.path().join("Maildir");
        std::fs::create_dir(&local).unwrap();
        let (ssl, cert) = match &tls {
            Tls::None => ("None", String::new()),
            Tls::Starttls(ca) => (
                "STARTTLS",
                format!("CertificateFile {}\n", q(&ca.to_string_lossy())),
            ),
            Tls::Implicit(ca) => (
                "IMAPS",
                format!("CertificateFile {}\n", q(&ca.to_string_lossy())),
            ),
        };
        let auth = match auth {
            Auth::Login => "LOGIN",
            Auth::Plain => "PLAIN",
        };
        // Sections end at an empty line. The certificate is a self-signed host certificate:
        // CertificateFile trusts it as is, the system store is not needed.
        let rc = format!(
            "# Written by tests/common/mbsync.rs.\n\
             IMAPAccount upstream\n\
             Host {host}\n\
             Port {port}\n\
             User {user}\n\
             Pass {pass}\n\
             AuthMechs {auth}\n\
             SSLType {ssl}\n\
             {cert}\
             SystemCertificates no\n\
             Timeout 20\n\
             \n\
             IMAPStore far\n\
             Account upstream\n\
             \n\
             MaildirStore near\n\
             Path {path}/\n\
             Inbox {path}/INBOX\n\
             SubFolders Verbatim\n\
             \n\
             Channel mail\n\
             Far :far:\n\
             Near :near:\n\
             Patterns *\n\
             Create Both\n\
             SyncState *\n",
            host = q(host),
            user = q(user),
            pass = q(password),
            path = local.display(),
        );
        let rc_path = dir.path().join("mbsyncrc");
        std::fs::write(&rc_path, rc).unwrap();
        Mbsync {
            rc: rc_path,
            local,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs mbsync on the channel with extra flags. Ok carries what mbsync printed (its
    /// warnings, e.g. about skipped messages, and with `-D` flags its protocol trace); Err
    /// its exit status and output.
    pub fn run(&self, flags: &[&str]) -> Result<String, String> {
        let out = Command::new(MBSYNC)
            .arg("-c")
            .arg(&self.rc)
            .args(flags)
            .arg("mail")
            .stdin(Stdio::null())
            .output()
            .expect("mbsync runs");
        if out.status.success() {
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        } else {
            Err(format!(
                "mbsync {flags:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Server to Maildir only.
    pub fn pull(&self) -> Result<String, String> {
        self.run(&["--pull"])
    }

    /// Maildir to server only.
    pub fn push(&self) -> Result<String, String> {
        self.run(&["--push"])
    }

    /// Both ways.
    pub fn sync(&self) -> Result<String, String> {
        self.run(&[])
    }

    fn folder(&self, mailbox: &str) -> PathBuf {
        self.local.join(mailbox)
    }

    /// (file name, bytes) of every message in the local mailbox, sorted by file name.
    pub fn files(&self, mailbox: &str) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = ["cur", "new"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.folder(mailbox).join(sub)).ok())
            .flatten()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    /// The bytes of every message in the local INBOX, sorted by content.
    pub fn maildir(&self) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = self.files("INBOX").into_iter().map(|(_, b)| b).collect();
        all.sort();
        all
    }

    /// Delivers a message into the local mailbox the way an MDA does (write in tmp/, rename
    /// into new/), for `push` to upload. Returns the file's path.
    pub fn deliver(&self, mailbox: &str, raw: &[u8]) -> PathBuf {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let folder = self.folder(mailbox);
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(folder.join(sub)).unwrap();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let name = format!(
            "{}.P{}Q{}.sealpost-test",
            now.as_secs(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = folder.join("tmp").join(&name);
        std::fs::write(&tmp, raw).unwrap();
        let new = folder.join("new").join(&name);
        std::fs::rename(&tmp, &new).unwrap();
        new
    }
}
