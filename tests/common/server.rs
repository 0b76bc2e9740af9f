//! sealpost's IMAP server as the tests see it: the real binary (`sealpost imap`) in its own temp
//! dir with its own store, on ports it picked itself (port 0; it prints the bound addresses,
//! which the fixture reads, so nothing waits on a timer), plus a raw line-level IMAP client for
//! what imaplib cannot do (pipelining, two interleaved sessions, oversized literals).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";
/// The configured delay after a failed login, in milliseconds.
pub const AUTH_DELAY_MS: u64 = 300;

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub starttls_port: u16,
    pub tls_port: u16,
}

pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| sealpost::imap::auth::hash_password(PASSWORD.as_bytes()).unwrap())
}

impl Server {
    /// A new server with an empty store.
    pub fn start() -> Server {
        Self::start_with("")
    }

    /// Like `start`, with `imap` (lines of `key = value`) added to the `[imap]` table.
    pub fn start_with(imap: &str) -> Server {
        Self::start_config(imap, "")
    }

    /// Like `start_with`, with `tables` (whole TOML tables) appended to the configuration.
    pub fn start_config(imap: &str, tables: &str) -> Server {
        Self::start_limits(imap, "", tables)
    }

    /// Like `start_config`, with `limits` lines added to `[imap.limits]`.
    pub fn start_limits(imap: &str, limits: &str, tables: &str) -> Server {
        Self::start_store(imap, limits, tables, None)
    }

    /// Like `start_limits`, with the store at `store` (its own file system, say) instead of
    /// in the server's directory.
    pub fn start_store(imap: &str, limits: &str, tables: &str, store: Option<&Path>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("spimap")
            .tempdir_in("/tmp")
            .unwrap();
        let store = store
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("store.sqlite"));
        // 1 MiB unless `limits` sets it.
        let append = if limits.contains("max_append") {
            ""
        } else {
            "max_append = 1048576\n"
        };
        let config = format!(
            "[store]\npath = \"{store}\"\n\n[imap]\nallow_plaintext_loopback = true\n{imap}\n\n\
             [imap.limits]\nauth_failure_delay_ms = {AUTH_DELAY_MS}\nmax_literal = 4096\n\
             {append}max_line_before_login = 2048\n{limits}\n\n\
             [[accounts]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n\n{tables}\n",
            store = store.display(),
            hash = password_hash(),
        );
        std::fs::write(dir.path().join("sealpost.toml"), config).unwrap();
        let mut server = Server {
            child: None,
            dir,
            starttls_port: 0,
            tls_port: 0,
        };
        server.spawn();
        server
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("sealpost.toml")
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store.sqlite")
    }

    /// The self-signed certificate the server generated at its first start.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("imap-cert.pem")
    }

    /// Starts (or restarts) the daemon on the same store and waits for its listeners.
    pub fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--config")
            .arg(self.config())
            .args(["imap", "--starttls", "127.0.0.1:0", "--tls", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(self.log_file())
            .spawn()
            .expect("start sealpost imap");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..2 {
            let line = lines
                .next()
                .expect("sealpost imap exited before listening")
                .unwrap();
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some("listening"), "{line}");
            let mode = words.next().unwrap().to_owned();
            let port: u16 = words
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            match mode.as_str() {
                "tls" => self.tls_port = port,
                _ => self.starttls_port = port,
            }
        }
        self.child = Some(child);
    }

    /// The daemon's standard error (its log), appended to across restarts.
    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap()
    }

    /// What the daemon has logged so far: written before the answer it goes with.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Imports files into a mailbox with `sealpost import`.
    /// Waits for the server process to exit (after a signal the test sent it).
    pub fn wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    pub fn import(&self, mailbox: &str, path: &Path) -> std::process::Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--config")
            .arg(self.config())
            .args(["import", "--account", USER, "--mailbox", mailbox])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn raw(&self) -> Raw<TcpStream> {
        Raw::connect(self.starttls_port)
    }

    /// A logged-in raw session (plaintext on loopback, as the test config allows).
    pub fn login(&self) -> Raw<TcpStream> {
        let mut raw = self.raw();
        raw.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
        raw
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets sessions finish; then reap it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        // A delivery's retry of undecryptable messages runs on, detached, after the delivery
        // the test waited for: its directory is removed only once no process names it on its
        // command line (`--config DIR/...`), or the retry writes the store's files into a
        // directory being removed, and it stays behind in /tmp.
        let dir = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline && process_naming(&dir) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Whether a process has `text` in its command line.
fn process_naming(text: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(text.len()).any(|w| w == text))
    })
}

/// A raw IMAP client: sends lines, reads responses with literals inlined.
pub struct Raw<S: Read + Write> {
    pub stream: BufReader<S>,
    counter: u32,
    /// The greeting line.
    pub greeting: String,
}

impl Raw<TcpStream> {
    pub fn connect(port: u16) -> Raw<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut raw = Raw {
            stream: BufReader::new(tcp),
            counter: 0,
            greeting: String::new(),
        };
        raw.greeting = raw.line().expect("greeting");
        raw
    }
}

impl<S: Read + Write> Raw<S> {
    pub fn wrap(stream: S) -> Raw<S> {
        Raw {
            stream: BufReader::new(stream),
            counter: 100,
            greeting: String::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).unwrap();
        self.stream.get_mut().flush().unwrap();
    }

    /// One response line with any literals it announces inlined; None at EOF.
    pub fn line(&mut self) -> Option<String> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.stream.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    return if out.is_empty() {
                        None
                    } else {
                        Some(latin1(&out))
                    }
                }
                Ok(_) => {}
            }
            out.extend_from_slice(&line);
            let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if let Some(n) = literal_size(trimmed) {
                let mut literal = vec![0; n];
                self.stream.read_exact(&mut literal).unwrap();
                out.extend_from_slice(&literal);
                continue;
            }
            let end = out.len() - if out.ends_with(b"\r\n") { 2 } else { 0 };
            return Some(latin1(&out[..end]));
        }
    }

    /// Sends a tagged command and returns (untagged lines, tagged line).
    pub fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.counter += 1;
        let tag = format!("t{}", self.counter);
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.until(&tag)
    }

    /// Reads until the tagged response for `tag`.
    pub fn until(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        loop {
            let line = self
                .line()
                .unwrap_or_else(|| panic!("connection closed waiting for {tag}: {untagged:?}"));
            if line.starts_with(&format!("{tag} ")) {
                return (untagged, line);
            }
            untagged.push(line);
        }
    }

    /// A command that must succeed; returns its untagged lines.
    pub fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, tagged) = self.cmd(command);
        assert!(
            tagged.split_whitespace().nth(1) == Some("OK"),
            "{command} → {tagged} {untagged:?}"
        );
        untagged
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

fn literal_size(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&inner[open + 1..]).ok()?.parse().ok()
}

/// A rustls client configuration that trusts exactly the server's self-signed certificate.
pub fn tls_client(cert: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Completes a TLS handshake over `tcp` as a client of 127.0.0.1.
pub fn tls_connect(
    tcp: TcpStream,
    cert: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(tls_client(cert), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}
