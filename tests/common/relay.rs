//! A provider-like submission server for the sendmail tests: tests/smtp_relay.py on Debian's
//! aiosmtpd, with STARTTLS (or implicit TLS) required, AUTH, a Maildir, and switches to refuse
//! or hold chosen recipients. Its stdout is read as events (READY, HOLDING, DELIVERED).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

pub const USER: &str = "alice@example.org";
pub const PASSWORD: &str = "relay-secret";

/// A CA and a server certificate for localhost/127.0.0.1 signed by it, as PEM files.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sealpost test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

/// One message the relay accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub from: String,
    pub rcpts: Vec<String>,
    pub bytes: Vec<u8>,
    /// MAIL FROM parameters, upper case (SMTPUTF8, BODY=8BITMIME).
    pub mail_options: Vec<String>,
}

#[derive(Debug)]
pub enum Event {
    Holding(String),
    Delivered(Delivered),
}

pub struct Relay {
    child: Child,
    /// Where `release` writes (see tests/smtp_relay.py).
    control: ChildStdin,
    pub port: u16,
    events: Receiver<Event>,
}

/// Options of one relay.
#[derive(Default)]
pub struct RelayOptions<'a> {
    pub implicit_tls: bool,
    pub reject: &'a [&'a str],
    pub hold_once: &'a [&'a str],
    /// Messages to these get the reply to their final "." after 6 s.
    pub slow_final: &'a [&'a str],
    /// These answer RCPT with 552 (mailbox full).
    pub full: &'a [&'a str],
    /// These answer RCPT with 421 (a rate limit: the relay closes the session).
    pub busy: &'a [&'a str],
    /// These answer RCPT with 354, a reply out of step with the command.
    pub odd_rcpt: &'a [&'a str],
    /// Seconds before the greeting and before each reply to EHLO (STARTTLS relays only).
    pub slow_hello: f64,
    pub port: Option<u16>,
    /// Adds a reply of its own, in plain text, after its 220 to STARTTLS (a man in the
    /// middle's response injection).
    pub inject_after_starttls: bool,
    /// Announces SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// No TLS and no AUTH: a loopback listener as Postfix's re-injection one is.
    pub plain: bool,
    /// Answers 503 to a second EHLO over TLS.
    pub one_ehlo_over_tls: bool,
    /// (address, how) for the final "." of a message to it: "double" (a second, extra
    /// reply), "bare" (`250` without text) or "refuse" (554, nothing delivered).
    pub final_reply: &'a [(&'a str, &'a str)],
}

impl Relay {
    pub fn start(pki: &Pki, maildir: &Path, options: &RelayOptions<'_>) -> Relay {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_relay.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script)
            .arg("--maildir")
            .arg(maildir)
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .args(["--user", USER, "--password", PASSWORD])
            .args(["--port", &options.port.unwrap_or(0).to_string()]);
        if options.implicit_tls {
            cmd.arg("--implicit-tls");
        }
        if options.inject_after_starttls {
            cmd.arg("--inject-after-starttls");
        }
        if options.smtputf8 {
            cmd.arg("--smtputf8");
        }
        if options.plain {
            cmd.arg("--plain");
        }
        if options.one_ehlo_over_tls {
            cmd.arg("--one-ehlo-over-tls");
        }
        for r in options.reject {
            cmd.args(["--reject", r]);
        }
        for r in options.hold_once {
            cmd.args(["--hold-once", r]);
        }
        for r in options.slow_final {
            cmd.args(["--slow-final", r]);
        }
        for r in options.full {
            cmd.args(["--full", r]);
        }
        for r in options.busy {
            cmd.args(["--busy", r]);
        }
        for r in options.odd_rcpt {
            cmd.args(["--odd-rcpt", r]);
        }
        if options.slow_hello > 0.0 {
            cmd.args(["--slow-hello", &options.slow_hello.to_string()]);
        }
        for (address, how) in options.final_reply {
            cmd.args(["--final-reply", &format!("{address}={how}")]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/smtp_relay.py (python3-aiosmtpd)");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (ready_tx, ready_rx) = channel();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let words: Vec<&str> = line.split(' ').collect();
                match words.as_slice() {
                    ["READY", port] => {
                        let _ = ready_tx.send(port.parse::<u16>().unwrap());
                    }
                    ["HOLDING", addr] => {
                        let _ = tx.send(Event::Holding(addr.to_string()));
                    }
                    ["DELIVERED", from, rcpts, path, options] => {
                        let _ = tx.send(Event::Delivered(Delivered {
                            from: from.to_string(),
                            rcpts: rcpts
                                .split(',')
                                .map(|r| {
                                    r.replace("%2C", ",")
                                        .replace("%20", " ")
                                        .replace("%25", "%")
                                })
                                .collect(),
                            bytes: std::fs::read(path).unwrap(),
                            mail_options: options
                                .split(',')
                                .filter(|o| *o != "-")
                                .map(str::to_string)
                                .collect(),
                        }));
                    }
                    _ => panic!("unexpected relay output: {line}"),
                }
            }
        });
        let port = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("relay READY");
        let control = child.stdin.take().unwrap();
        Relay {
            child,
            control,
            port,
            events,
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Ends the hold of `address`'s RCPT (a `hold_once` address): it is answered 451.
    pub fn release(&self, address: &str) {
        (&self.control)
            .write_all(format!("RELEASE {address}\n").as_bytes())
            .expect("relay stdin");
    }

    /// Waits for `n` deliveries (panics after a minute without one).
    pub fn delivered(&self, n: usize) -> Vec<Delivered> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(60)) {
                Some(Event::Delivered(d)) => out.push(d),
                Some(Event::Holding(a)) => panic!("unexpected hold of {a}"),
                None => panic!("only {} of {n} deliveries arrived: {out:?}", out.len()),
            }
        }
        out
    }

    /// Deliveries that arrived so far, without waiting.
    pub fn drain(&self) -> Vec<Delivered> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            if let Event::Delivered(d) = e {
                out.push(d);
            }
        }
        out
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shared with the Postfix and Dovecot harnesses (see ports.rs); unused by the sendmail
/// benchmark, which includes this file too.
#[allow(unused_imports)]
pub use super::ports::free_port;
