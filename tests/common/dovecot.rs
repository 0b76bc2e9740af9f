//! A throwaway Dovecot (Debian's dovecot-imapd 2.3) on 127.0.0.1: the reference IMAP server
//! sealpost's server is compared with, and the upstream account the sync code talks to.
//!
//! Each instance owns a short temp dir under /tmp holding its dovecot.conf, passwd file,
//! base_dir (sockets, master.pid), state_dir, log and Maildir, and its own port. It never uses
//! the system instance's /etc/dovecot, /run/dovecot or ports 143/993, so it does not care
//! whether Debian's postinst started the system dovecot (the package's service may or may
//! not be running; the harness neither needs nor touches it).
//!
//! Dovecot 2.3 has no config variables: every path in the config is written out literally.
//! The master runs in the foreground (`-F`) as our child, so its exit can be waited on.
//!
//! Root or not: started by root, the master keeps Debian's `dovecot`/`dovenull` service users
//! and the mail user is `nobody` (Dovecot refuses mail access as uid 0), so the temp dir is
//! made world-traversable and the Maildir is chowned to `nobody`. Started by anyone else,
//! every service runs as that user and chroots are switched off (they need root).

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOVECOT: &str = "/usr/sbin/dovecot";

/// How long `start` waits for the greeting, and `Drop` for the master to exit.
const DEADLINE: Duration = Duration::from_secs(20);

pub struct Dovecot {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The account's Maildir (INBOX is its root; other mailboxes are `.Name` Maildir++
    /// folders). Files are stored with CRLF line ends (`mail_save_crlf = yes`), so a file's
    /// bytes are what BODY[] returns.
    pub maildir: PathBuf,
    pub log: PathBuf,
    /// With `start_tls`: the implicit-TLS (IMAPS) port; the plain port then offers STARTTLS.
    pub tls_port: Option<u16>,
    /// With `start_tls`: the self-signed certificate (PEM), the clients' trust anchor.
    pub cert: Option<PathBuf>,
    master: Child,
    base_dir: PathBuf,
    dir: tempfile::TempDir,
}

/// Who the services and the mail user run as.
struct Identity {
    internal_user: String,
    internal_group: String,
    login_user: String,
    mail_uid: u32,
    mail_gid: u32,
    root: bool,
}

fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("id runs");
    assert!(out.status.success(), "id {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Identity {
    fn current() -> Self {
        if id(&["-u"]) == "0" {
            Identity {
                internal_user: "dovecot".into(),
                internal_group: "dovecot".into(),
                login_user: "dovenull".into(),
                mail_uid: id(&["-u", "nobody"]).parse().unwrap(),
                mail_gid: id(&["-g", "nobody"]).parse().unwrap(),
                root: true,
            }
        } else {
            let name = id(&["-un"]);
            Identity {
                internal_group: id(&["-gn"]),
                login_user: name.clone(),
                internal_user: name,
                mail_uid: id(&["-u"]).parse().unwrap(),
                mail_gid: id(&["-g"]).parse().unwrap(),
                root: false,
            }
        }
    }
}

use super::ports::free_port;

fn config(dir: &Path, port: u16, tls_port: Option<u16>, who: &Identity, extra: &str) -> String {
    let d = dir.display();
    let (ssl, imaps) = match tls_port {
        None => ("ssl = no".to_string(), "port = 0".to_string()),
        Some(p) => (
            format!("ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem"),
            format!("address = 127.0.0.1\n    port = {p}\n    ssl = yes"),
        ),
    };
    // chroot() needs root; anvil is the one service left that chroots by default
    // (imap-login's chroot is switched off for both cases below).
    let anvil_chroot = if who.root { "" } else { "chroot =" };
    format!(
        r#"# Throwaway Dovecot for sealpost's tests; written by tests/common/dovecot.rs.
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = sealpost-test-{port}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
# INTERNALDATE lives in Maildir file mtimes, so its zone is the server's: pin it.
import_environment = TZ=UTC
default_internal_user = {iu}
default_internal_group = {ig}
default_login_user = {lu}
# Loopback only, so plaintext logins are allowed even where TLS is offered.
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
# Failed logins answer on the next tick of the auth failure timer (~0.5 s), not after 2 s.
auth_failure_delay = 0
# The static userdb's uid may be a system uid (nobody is 65534, a non-root tester maybe 100).
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{d}/Maildir
# Maildir files hold exactly the bytes IMAP serves (CRLF); the default stores LF.
mail_save_crlf = yes
# Tests open many connections from 127.0.0.1 at once (default 10).
mail_max_userip_connections = 1000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home
}}
{extra}
# Dovecot delays every login attempt from an IP with recent failures (2 s, 4 s, ... 15 s,
# via anvil); comparison tests fail logins on purpose. With this socket unusable the auth
# process turns the penalty off. A failed login still answers after ~0.5 s.
service anvil {{
  {anvil_chroot}
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
"#,
        iu = who.internal_user,
        ig = who.internal_group,
        lu = who.login_user,
        uid = who.mail_uid,
        gid = who.mail_gid,
    )
}

/// Connects and reads the first line; Some(line) once the server greets.
fn greeting(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Dovecot {
    /// Starts an instance with one account (`alice` / a fresh password) and an empty
    /// INBOX, plaintext only (`ssl = no`); returns once the port answers with the `* OK`
    /// greeting.
    pub fn start() -> Dovecot {
        Self::start_with(false, "")
    }

    /// Like `start`, plus STARTTLS on `port` and implicit TLS on `tls_port`, with a
    /// self-signed certificate for `localhost` and `127.0.0.1` made by rcgen (`cert`).
    pub fn start_tls() -> Dovecot {
        Self::start_with(true, "")
    }

    /// Like `start_tls`, announcing after login only the capabilities in `capabilities`
    /// (Dovecot's `imap_capability`): a server without UIDPLUS or MOVE, say. Dovecot still
    /// runs the commands it no longer announces; a well-behaved client does not send them.
    pub fn start_tls_announcing(capabilities: &str) -> Dovecot {
        Self::start_with(true, &format!("imap_capability = {capabilities}"))
    }

    /// Like `start_tls`, with `extra` added to the configuration (a namespace, say).
    pub fn start_tls_configured(extra: &str) -> Dovecot {
        Self::start_with(true, extra)
    }

    fn start_with(tls: bool, extra: &str) -> Dovecot {
        let who = Identity::current();
        let dir = tempfile::Builder::new()
            .prefix("spdc")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        if who.root {
            // The login and mail users must reach base_dir and the Maildir inside.
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let user = "alice".to_string();
        let password = format!("pw-{}", root.file_name().unwrap().to_string_lossy());
        std::fs::write(root.join("passwd"), format!("{user}:{password}::::::\n")).unwrap();
        let maildir = root.join("Maildir");
        let home = root.join("home");
        for d in [&maildir, &home] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(who.mail_uid), Some(who.mail_gid)).unwrap();
        }
        let conf = root.join("dovecot.conf");
        let log = root.join("dovecot.log");
        let stderr_path = root.join("dovecot.stderr");
        let cert = tls.then(|| {
            let made = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .expect("rcgen certificate");
            std::fs::write(root.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
            let cert = root.join("cert.pem");
            std::fs::write(&cert, made.cert.pem()).unwrap();
            cert
        });

        // The port is free when we look; another process may take it before dovecot binds
        // it, so a bind failure means: pick another port and start again.
        let mut failures = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let tls_port = tls.then(free_port).filter(|p| *p != port);
            if tls && tls_port.is_none() {
                continue;
            }
            std::fs::write(&conf, config(&root, port, tls_port, &who, extra)).unwrap();
            let mut master = Command::new(DOVECOT)
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .expect("dovecot runs");
            let deadline = Instant::now() + DEADLINE;
            let mut last = String::new();
            let started = loop {
                if let Some(status) = master.try_wait().unwrap() {
                    last = format!("master exited: {status}");
                    break false;
                }
                if let Some(line) = greeting(port) {
                    if line.starts_with("* OK") {
                        break true;
                    }
                    last = format!("greeting: {line}");
                }
                if Instant::now() > deadline {
                    last = format!("no greeting within {DEADLINE:?}");
                    let _ = master.kill();
                    let _ = master.wait();
                    break false;
                }
                // Poll for the listener; this waits on an event (the port answering) with
                // a short interval, not for a fixed time.
                std::thread::sleep(Duration::from_millis(20));
            };
            if started {
                return Dovecot {
                    port,
                    user,
                    password,
                    maildir,
                    log,
                    tls_port,
                    cert,
                    master,
                    base_dir: root.join("run"),
                    dir,
                };
            }
            let stderr = read_or_empty(&stderr_path);
            let log_text = read_or_empty(&log);
            failures += &format!("--- port {port}: {last}\nstderr:\n{stderr}\nlog:\n{log_text}\n");
            if !(stderr.contains("Address already in use")
                || log_text.contains("Address already in use"))
            {
                break;
            }
            let _ = std::fs::remove_file(&log);
        }
        panic!(
            "dovecot did not start (config {}):\n{failures}",
            conf.display()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        read_or_empty(&self.log)
    }

    /// The message files of one mailbox ("INBOX" or a folder name), sorted by file name.
    pub fn mailbox_files(&self, mailbox: &str) -> Vec<PathBuf> {
        let root = if mailbox.eq_ignore_ascii_case("INBOX") {
            self.maildir.clone()
        } else {
            self.maildir.join(format!(".{mailbox}"))
        };
        let mut files: Vec<PathBuf> = ["cur", "new"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(root.join(sub)).ok())
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }
}

impl Dovecot {
    /// Stops the server as `drop` does but keeps its mail, configuration and ports, for
    /// `restart`: the upstream "goes down".
    pub fn stop(&mut self) {
        self.halt();
    }

    /// Starts the stopped server again on the same ports with the same mail; returns once it
    /// greets.
    pub fn restart(&mut self) {
        let conf = self.dir.path().join("dovecot.conf");
        let stderr = std::fs::File::create(self.dir.path().join("dovecot.stderr")).unwrap();
        self.master = Command::new(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("dovecot runs");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if greeting(self.port).is_some_and(|l| l.starts_with("* OK")) {
                return;
            }
            assert!(
                self.master.try_wait().unwrap().is_none(),
                "dovecot did not come back: {}",
                read_or_empty(&self.dir.path().join("dovecot.stderr"))
            );
            assert!(Instant::now() < deadline, "dovecot did not greet again");
            // Waits on the port answering, polled.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn halt(&mut self) {
        if matches!(self.master.try_wait(), Ok(Some(_))) {
            return;
        }
        // master.pid names our child (-F keeps it in the foreground); SIGTERM makes the
        // master stop its services before it exits.
        let pid = std::fs::read_to_string(self.base_dir.join("master.pid"))
            .ok()
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| self.master.id().to_string());
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.master.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.master.kill();
                    let _ = self.master.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = std::fs::remove_file(self.base_dir.join("master.pid"));
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.halt();
        // The TempDir field removes the directory after this.
    }
}
