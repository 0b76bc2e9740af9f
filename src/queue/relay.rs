//! The relay: each copy leaves over SMTP with lettre, TLS always (STARTTLS required, or
//! implicit TLS), the server certificate verified against the system roots or a configured
//! CA, AUTH PLAIN/LOGIN only inside TLS. Plain SMTP is allowed only to a loopback address,
//! the hand-off to a local MTA. One SMTP transaction per copy, one recipient each: a reply
//! concerns exactly one copy.

use std::path::PathBuf;
use std::time::Duration;

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RelayTls {
    /// STARTTLS (RFC 3207), required: no STARTTLS offered → nothing is sent.
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314 §3.3, port 465).
    Implicit,
    /// No TLS: only to a loopback address (a local MTA).
    None,
}

/// `[relay]`: where copies go.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Host name (checked against the certificate) or address. Required to deliver.
    pub host: Option<String>,
    /// Default: 587 (starttls), 465 (implicit), 25 (none).
    pub port: Option<u16>,
    pub tls: RelayTls,
    /// AUTH user; the password is read from `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The EHLO name; default: the host name.
    pub helo_name: Option<String>,
    /// Deadline for connecting, for each of TLS, greeting and AUTH, in seconds; a whole
    /// transaction (MAIL, RCPT, DATA, content) gets four times this.
    pub timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            host: None,
            port: None,
            tls: RelayTls::Starttls,
            username: None,
            password_file: None,
            ca_file: None,
            helo_name: None,
            timeout_secs: 60,
        }
    }
}

impl RelayConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            RelayTls::Starttls => 587,
            RelayTls::Implicit => 465,
            RelayTls::None => 25,
        })
    }

    /// Why this configuration cannot be used, if it cannot (checked when the config loads).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.tls == RelayTls::None {
            let host = self.host.as_deref().unwrap_or("");
            if !crate::net::is_loopback(host) {
                return Some((
                    "tls",
                    "\"none\" is allowed only with a loopback host (127.0.0.0/8, ::1, localhost): mail never crosses a network in clear".into(),
                ));
            }
            if self.username.is_some() {
                return Some((
                    "username",
                    "AUTH needs TLS: set tls = \"starttls\" or \"implicit\"".into(),
                ));
            }
        }
        // Named by the one that is there, so that the error points at its line (review: it
        // named the missing password_file, at line 1).
        match (&self.username, &self.password_file) {
            (Some(_), None) => {
                return Some((
                    "username",
                    "needs password_file (a file holding the password) beside it".into(),
                ))
            }
            (None, Some(_)) => {
                return Some(("password_file", "needs username beside it".into()));
            }
            _ => {}
        }
        if self.timeout_secs == 0 {
            return Some(("timeout_secs", "must be at least 1 (seconds)".into()));
        }
        // Set, it names a relay: an empty one was taken for set, and every copy deferred
        // (review).
        if self.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Some((
                "host",
                "is empty: name the relay (or leave the key out: no relay)".into(),
            ));
        }
        if self.port == Some(0) {
            return Some(("port", "must be a port from 1 to 65535".into()));
        }
        // Sent as it is after EHLO: a line break in it would be commands of its own (review).
        if let Some(name) = self.helo_name.as_deref().filter(|n| !is_helo_name(n)) {
            return Some((
                "helo_name",
                format!(
                    "{name:?} is no host name (letters, digits, '-' and '.') or address \
                     literal ([192.0.2.1])"
                ),
            ));
        }
        for (key, path) in [
            ("password_file", self.password_file.as_ref()),
            ("ca_file", self.ca_file.as_ref()),
        ] {
            if let Some(why) = path.and_then(|p| crate::config::path_problem(p)) {
                return Some((key, why));
            }
        }
        None
    }
}

/// A name EHLO may carry (RFC 5321 §4.1.1.1: a domain or an address literal), as ASCII.
fn is_helo_name(name: &str) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":.-".contains(&b));
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A relay that cannot be set up (configuration, files): exit 78.
#[derive(Debug, thiserror::Error)]
pub enum RelaySetupError {
    /// `in`: the configuration file read, or what was read instead.
    #[error("no relay configured: set [relay] host in {in_}")]
    NoHost { in_: String },
    #[error("[relay] password_file {path}: {reason}")]
    Password { path: String, reason: String },
    #[error("[relay] ca_file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("[relay]: {0}")]
    Tls(String),
}

/// The result of handing one copy to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Accepted: the relay's reply, and whether the relay announced DSN and so took the
    /// recipient's DSN parameters (always false without [`Relay::passing_dsn`]). A relay
    /// without DSN sends no success notice of its own (RFC 3461 §5.2.2).
    Accepted { reply: String, passed_dsn: bool },
    /// Try again later (4xx, connection, TLS, authentication).
    Temporary(String),
    /// The relay refused this copy for good (5xx).
    Permanent(String),
}

/// How a connection gets its TLS, with what each way needs.
enum Protection {
    /// Loopback only (checked when the configuration loads).
    Plain,
    /// Our own STARTTLS (see `starttls`), then our own TLS client.
    Starttls(tokio_rustls::TlsConnector),
    /// Our own TLS client, before the greeting (lettre cannot wrap a socket we opened).
    Implicit(tokio_rustls::TlsConnector),
}

pub struct Relay {
    host: String,
    port: u16,
    protection: Protection,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    /// Connections that just carried a copy, kept for the next one, each with whether its
    /// server announced DSN (asked only with [`Relay::passing_dsn`]).
    idle: Mutex<Vec<(AsyncSmtpConnection, bool, Instant)>>,
    description: String,
    /// Why a new connection failed for a temporary reason (refused, timed out, TLS, AUTH),
    /// once [`Relay::for_one_run`] asked for it: the copies after it are deferred at once with
    /// that reason instead of each trying (and waiting out `timeout_secs` on a relay that
    /// drops packets).
    down: Mutex<Option<String>>,
    breaker: bool,
    /// Set by [`Relay::passing_dsn`]: new connections ask (a second EHLO) whether the server
    /// takes RFC 3461 parameters; the answer stays with the connection.
    pass_dsn: bool,
    /// The SIZE (RFC 1870) the server last announced in that second EHLO: 0 before any,
    /// u64::MAX for none (no limit, or not asked); with when it was announced.
    size_limit: std::sync::atomic::AtomicU64,
    size_heard: Mutex<Option<Instant>>,
    /// Held while one caller asks the server again: the others wait for its answer rather
    /// than each opening a connection (review: a burst of messages opened one each).
    size_asking: tokio::sync::Mutex<()>,
    /// Set by [`Relay::taking_the_mtas_paths`]: a sender or recipient that is no address by
    /// RFC 5321 goes in MAIL FROM or RCPT TO as it is (see [`verbatim_path`]).
    verbatim_paths: bool,
}

/// Whether a path that is no RFC 5321 address can still go in `MAIL FROM:<...>` or
/// `RCPT TO:<...>` as the MTA gave it: nothing that would end the path or the command (CR,
/// LF, NUL, an ASCII blank, an angle bracket), and within the 1,000 octets of a command line
/// (RFC 5321 §4.5.3.1.4). Postfix took it from its client; a stricter test lost the copies of
/// paths it takes (a no-break space in a quoted SMTPUTF8 local part, a DEL, 262 octets:
/// review), since a refused re-injection cannot even be reported to such a sender.
fn verbatim_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 900
        && !path
            .bytes()
            .any(|b| matches!(b, b'\r' | b'\n' | 0 | b' ' | b'\t' | b'<' | b'>'))
}

/// `MAIL FROM:<path>` or `RCPT TO:<path>` with a path sent as it is (see [`verbatim_path`]),
/// and its parameters.
struct Verbatim<'a, P> {
    command: &'static str,
    path: &'a str,
    parameters: &'a [P],
}

impl<P: std::fmt::Display> std::fmt::Display for Verbatim<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:<{}>", self.command, self.path)?;
        for parameter in self.parameters {
            write!(f, " {parameter}")?;
        }
        f.write_str("\r\n")
    }
}

/// The RFC 3461 (DSN) parameters of one recipient's transaction, as the client gave them to
/// the MTA sealpost sits in, with their xtext decoded. What is None is not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    /// Whether that client's MAIL gave SMTPUTF8 (RFC 6531); None when there was no such
    /// client (the queue's own submissions). A copy whose client did not is no SMTPUTF8
    /// message for UTF-8 in its header alone: Postfix then bounced it at a next hop without
    /// SMTPUTF8 (5.6.7), where the original would have gone as 8-bit data (review).
    pub smtputf8: Option<bool>,
    /// MAIL RET= (FULL or HDRS).
    pub ret: Option<String>,
    /// MAIL ENVID=.
    pub envid: Option<String>,
    /// RCPT NOTIFY= (NEVER, or a list of SUCCESS, FAILURE, DELAY).
    pub notify: Option<String>,
    /// RCPT ORCPT= (`rfc822;address`).
    pub orcpt: Option<String>,
}

impl Dsn {
    /// Takes the DSN parameters from ESMTP arguments (`KEYWORD=value`, xtext); others are left,
    /// and so is a value that could not go on as it came (see [`Dsn::keyword_list`],
    /// [`Dsn::text`]; an ORCPT only of type rfc822: Postfix makes one from the address when
    /// there is none).
    pub fn take_mail(&mut self, args: &[String]) {
        self.smtputf8 = Some(args.iter().any(|a| a.eq_ignore_ascii_case("SMTPUTF8")));
        for (keyword, value) in args.iter().filter_map(|a| a.split_once('=')) {
            if keyword.eq_ignore_ascii_case("RET") {
                self.ret = Some(value.to_ascii_uppercase()).filter(|v| v == "FULL" || v == "HDRS");
            } else if keyword.eq_ignore_ascii_case("ENVID") {
                self.envid = Self::text(value);
            }
        }
    }

    /// Like [`Dsn::take_mail`], for the RCPT parameters.
    pub fn take_rcpt(&mut self, args: &[String]) {
        for (keyword, value) in args.iter().filter_map(|a| a.split_once('=')) {
            if keyword.eq_ignore_ascii_case("NOTIFY") {
                self.notify = Self::notify_list(value);
            } else if keyword.eq_ignore_ascii_case("ORCPT") {
                self.orcpt = Self::text(value).filter(|v| {
                    orcpt_ok(v)
                        && v.split_once(';')
                            .is_some_and(|(kind, _)| kind.eq_ignore_ascii_case("rfc822"))
                });
            }
        }
    }

    /// A NOTIFY value as RFC 3461 §4.1 has it: NEVER alone, or some of SUCCESS, FAILURE
    /// and DELAY (any case). Anything else is not passed on (the server's default then
    /// holds): a listener would refuse the recipient, and a list without FAILURE would keep
    /// sealpost's own report from the sender.
    fn notify_list(value: &str) -> Option<String> {
        let value = value.to_ascii_uppercase();
        let words: Vec<&str> = value.split(',').collect();
        let fine = if words.contains(&"NEVER") {
            words.len() == 1
        } else {
            words
                .iter()
                .all(|w| ["SUCCESS", "FAILURE", "DELAY"].contains(w))
        };
        fine.then_some(value)
    }

    /// ENVID and ORCPT values, decoded. lettre encodes them again, but a control character
    /// as `+D` (one digit) and anything past `~` not at all, which a server refuses: only
    /// printable ASCII is passed on.
    fn text(value: &str) -> Option<String> {
        xtext_decode(value).filter(|v| !v.is_empty() && printable(v))
    }

    /// The parameters of one copy whose recipient the client named more than once (two
    /// spellings of one mailbox): MAIL's, the first ORCPT, and the NOTIFY that asks for
    /// every notice any of them asked for. None given by one stands for the default that
    /// Postfix and RFC 3461 §4.1 give it, FAILURE,DELAY; none given by any is none.
    pub fn merged<'a>(all: impl IntoIterator<Item = &'a Dsn>) -> Option<Dsn> {
        let all: Vec<&Dsn> = all.into_iter().collect();
        let first = (*all.first()?).clone();
        let notify = if all.iter().all(|d| d.notify.is_none()) {
            None
        } else {
            let asked: Vec<&str> = ["SUCCESS", "FAILURE", "DELAY"]
                .into_iter()
                .filter(|k| {
                    all.iter().any(|d| {
                        d.notify
                            .as_deref()
                            .unwrap_or("FAILURE,DELAY")
                            .split(',')
                            .any(|w| w == *k)
                    })
                })
                .collect();
            Some(if asked.is_empty() {
                "NEVER".to_string()
            } else {
                asked.join(",")
            })
        };
        let orcpt = all.iter().find_map(|d| d.orcpt.clone());
        Some(Dsn {
            notify,
            orcpt,
            ..first
        })
    }

    /// Whether the client wants to hear of a failure (RFC 3461 §4.1: no NOTIFY is the
    /// server's default, which reports failures).
    pub fn wants_failure(&self) -> bool {
        self.notify
            .as_deref()
            .is_none_or(|n| n.split(',').any(|w| w == "FAILURE"))
    }
}

/// Printable US-ASCII, the space included: what a DSN parameter may hold once decoded.
fn printable(text: &str) -> bool {
    text.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// Whether `orcpt` (decoded) can go on as an ORCPT (RFC 3461 §4.2) and into a report's
/// Original-Recipient field: of [`orcpt_form`], and printable US-ASCII.
pub fn orcpt_ok(orcpt: &str) -> bool {
    printable(orcpt) && orcpt_form(orcpt)
}

/// An ORCPT's form: `type;address`, neither empty, the type an atom, at most 500 characters
/// (RFC 3461's limit for the parameter, which also keeps a report's line within RFC 5322's
/// 998 octets).
pub fn orcpt_form(orcpt: &str) -> bool {
    orcpt.len() <= 500
        && orcpt.split_once(';').is_some_and(|(kind, address)| {
            // addr-type is an atom (RFC 3461 §4.2): "rfc822", "utf-8".
            !kind.is_empty()
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !address.trim().is_empty()
        })
}

/// Whether `id` can be an ENVID (RFC 3461 §4.4): 1 to 100 printable US-ASCII characters,
/// the space among them (decoded; it goes on as xtext).
pub fn envid_ok(id: &str) -> bool {
    (1..=100).contains(&id.len()) && printable(id)
}

/// RFC 3461 §4 xtext: "+", "=", and what is not printable ASCII as "+" and two hex digits
/// (lettre's own writes a control character with one digit).
pub fn xtext_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes RFC 3461 §4 xtext: "+" and two hex digits stand for one octet; None for anything
/// else but printable ASCII, or for what is not UTF-8. As Postfix does, lower-case hex and a
/// bare "=" (which the RFC has encoded) are taken: the value goes on encoded afresh.
pub fn xtext_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = value.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b @ 0x21..=0x7e => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The steps of one SMTP transaction, each with its own time (RFC 5321 §4.5.3.2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Mail,
    Rcpt,
    Data,
    Content,
}

impl Step {
    /// What the step is called and what it must be answered, when `code` (positive, so
    /// lettre took it) is not that: MAIL and RCPT 2xx (RFC 5321 §4.3.2; review: a 354 to RCPT
    /// was taken for the recipient's acceptance), DATA 354 and nothing else, the final "."
    /// only 2xx (§4.1.1.4). Another reply is one meant for an earlier command:
    /// a relay that answered one command twice, whose extra reply the reused connection's
    /// NOOP took, leaves every later reply taken for the wrong command, the final "."
    /// answered by a stale 354 while the relay refused the copy (review: lost, recorded as
    /// sent).
    fn out_of_step(self, code: u16) -> Option<(&'static str, &'static str)> {
        match self {
            Step::Mail if code / 100 != 2 => Some(("MAIL", "2xx")),
            Step::Rcpt if code / 100 != 2 => Some(("RCPT", "2xx")),
            Step::Data if code != 354 => Some(("DATA", "354")),
            Step::Content if code / 100 != 2 => Some(("the end of the data", "2xx")),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Step::Mail => "MAIL",
            Step::Rcpt => "RCPT",
            Step::Data => "DATA",
            Step::Content => "the message's final \".\"",
        }
    }
}

/// How long the reply to the final "." of a message is waited for (RFC 5321 §4.5.3.2.6).
const FINAL_REPLY: Duration = Duration::from_secs(600);

/// The slowest transfer of a message's content that is still waited for.
const MIN_BYTES_PER_SEC: u64 = 10_000;

/// An idle connection older than this is closed rather than reused.
const IDLE_REUSE: Duration = Duration::from_secs(10);
/// At most this many idle connections are kept.
const IDLE_MAX: usize = 8;

/// The relay's stream as lettre's connection reads it (TLS over our own socket, or plain TCP to
/// a loopback MTA), with two repairs to the reply lines lettre's parser would not take:
/// a reply code alone (`250`, which RFC 5321 §4.2 allows: the text is optional) gets the blank
/// lettre expects after it, and a line ended by LF alone gets its CR. lettre failed on the
/// first ("response error") after the relay had taken the message, which then went again at
/// every run (review: four copies in four runs), and waited for a CRLF that never came on the
/// second. After our own STARTTLS it first yields a greeting of ours: lettre's connection
/// reads one, and a server sends none after STARTTLS (the real one came before).
#[derive(Debug)]
struct Replies<S> {
    inner: S,
    peer: std::net::SocketAddr,
    /// Bytes ready for lettre, and how many of them it has.
    out: Vec<u8>,
    given: usize,
    /// A reply line not yet ended.
    line: Vec<u8>,
}

/// A reply line (ended by LF) as lettre's parser takes it: CRLF at its end, and a blank after
/// a reply code that has no text.
fn repair_reply_line(line: &mut Vec<u8>) {
    if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
        line.insert(line.len() - 1, b'\r');
    }
    if line.len() == 5 && line[..3].iter().all(u8::is_ascii_digit) && line.ends_with(b"\r\n") {
        line.insert(3, b' ');
    }
}

/// A reply line longer than this goes to lettre as it is (which refuses it).
const MAX_REPLY_LINE: usize = 64 * 1024;

impl<S> Replies<S> {
    fn new(inner: S, peer: std::net::SocketAddr, greeting: &[u8]) -> Self {
        Replies {
            inner,
            peer,
            out: greeting.to_vec(),
            given: 0,
            line: Vec::new(),
        }
    }

    /// Moves the line read so far to the output, repaired.
    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        repair_reply_line(&mut line);
        self.out.extend_from_slice(&line);
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + std::fmt::Debug>
    AsyncTokioStream for Replies<S>
{
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.peer)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            let this = &mut *self;
            if this.given < this.out.len() {
                let rest = &this.out[this.given..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.given += n;
                if this.given == this.out.len() {
                    this.out.clear();
                    this.given = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 4096];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The end: a line without its end goes as it is, then the end.
                    if this.line.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.out = std::mem::take(&mut this.line);
                }
                Poll::Ready(Ok(())) => {
                    for &b in read.filled() {
                        this.line.push(b);
                        if b == b'\n' {
                            this.end_line();
                        } else if this.line.len() > MAX_REPLY_LINE {
                            this.out.append(&mut this.line);
                        }
                    }
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replies<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Relay {
    pub fn new(config: &RelayConfig, default_helo: &str) -> Result<Relay, RelaySetupError> {
        let host = config.host.clone().ok_or_else(|| RelaySetupError::NoHost {
            in_: "the configuration".into(),
        })?;
        let port = config.port();
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| RelaySetupError::Ca {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let ca_error = |reason: String| RelaySetupError::Ca {
            path: config
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        };
        let protection = match config.tls {
            RelayTls::None => Protection::Plain,
            RelayTls::Starttls => {
                let client =
                    crate::net::tls_client_config(ca.as_deref(), None).map_err(ca_error)?;
                Protection::Starttls(tokio_rustls::TlsConnector::from(client))
            }
            RelayTls::Implicit => {
                let client =
                    crate::net::tls_client_config(ca.as_deref(), None).map_err(ca_error)?;
                Protection::Implicit(tokio_rustls::TlsConnector::from(client))
            }
        };
        let credentials = match (&config.username, &config.password_file) {
            (Some(user), Some(path)) => {
                let password = crate::config::read_password_file(path).map_err(|reason| {
                    RelaySetupError::Password {
                        path: path.display().to_string(),
                        reason,
                    }
                })?;
                Some(Credentials::new(user.clone(), password))
            }
            _ => None,
        };
        Ok(Relay {
            description: format!("{host}:{port}"),
            host,
            port,
            protection,
            credentials,
            hello: ClientId::Domain(
                config
                    .helo_name
                    .clone()
                    .unwrap_or_else(|| default_helo.to_string()),
            ),
            timeout: Duration::from_secs(config.timeout_secs),
            idle: Mutex::new(Vec::new()),
            down: Mutex::new(None),
            breaker: false,
            pass_dsn: false,
            size_limit: std::sync::atomic::AtomicU64::new(0),
            size_heard: Mutex::new(None),
            size_asking: tokio::sync::Mutex::new(()),
            verbatim_paths: false,
        })
    }

    /// Passes the [`Dsn`] parameters given to [`Relay::send_with`] on, to a server that
    /// announces DSN (RFC 3461); to one that does not they are left out.
    pub fn passing_dsn(mut self) -> Relay {
        self.pass_dsn = true;
        self
    }

    /// For the milter's re-injection into the MTA it sits in: the envelope sender is the one
    /// that MTA took from its client, also when it is no address by RFC 5321 (`alice`,
    /// `alice@example.org.`, `taro.@docomo.ne.jp`, which Postfix takes and qualifies). Refused
    /// here, the copies went nowhere and the report to such a sender could not go either
    /// (review: mail lost after 250). So is a recipient (`postmaster`, RFC 5321 §4.5.1).
    pub fn taking_the_mtas_paths(mut self) -> Relay {
        self.verbatim_paths = true;
        self
    }

    /// Where copies go, for the logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Opens a connection: TCP with TCP_NODELAY (lettre writes the message and its final
    /// "." separately; with Nagle the "." waits for the server's delayed ACK, 40 ms a copy),
    /// then TLS (implicit, or STARTTLS required), then AUTH. With it, whether the server
    /// announced DSN (asked only with [`Relay::passing_dsn`]).
    async fn connect(&self) -> Result<(AsyncSmtpConnection, bool), Sent> {
        let deadline = |what: &str| self.timed_out(what, self.timeout);
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| deadline("connecting"))?
        .map_err(|e| Sent::Temporary(format!("relay {}: cannot connect: {e}", self.description)))?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(|e| {
            Sent::Temporary(format!("relay {}: cannot connect: {e}", self.description))
        })?;
        let stream: Box<dyn AsyncTokioStream> = match &self.protection {
            Protection::Implicit(connector) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        Sent::Temporary(format!("relay {}: bad host name: {e}", self.description))
                    })?;
                let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| deadline("TLS handshake"))?
                    .map_err(|e| {
                        Sent::Temporary(format!(
                            "TLS with relay {} failed, nothing was sent: {}",
                            self.description,
                            tls_failure(&e)
                        ))
                    })?;
                Box::new(Replies::new(tls, peer, b""))
            }
            // Each step of it has `timeout` (review: one deadline for all of them deferred
            // every copy to a relay that delays its greeting and is slow to EHLO).
            Protection::Starttls(connector) => {
                let tls = self.starttls(connector, tcp).await?;
                Box::new(Replies::new(
                    tls,
                    peer,
                    b"220 greeting given before STARTTLS\r\n",
                ))
            }
            Protection::Plain => Box::new(Replies::new(tcp, peer, b"")),
        };
        // Nothing before MAIL FROM is about this message: a 5xx greeting, EHLO or AUTH reply
        // defers every copy (as Postfix's smtp_skip_5xx_greeting does) rather than bouncing
        // them all; the reason stays in the queue for the administrator.
        let step = |e: lettre::transport::smtp::Error| match classify(&e, &self.description) {
            Sent::Permanent(text) => Sent::Temporary(text),
            other => other,
        };
        // lettre reads the greeting and sends EHLO in one call: a `timeout` for each (after
        // STARTTLS the greeting is the one read before it).
        let (hello, what) = match self.protection {
            Protection::Starttls(_) => (self.timeout, "EHLO"),
            _ => (self.timeout * 2, "greeting and EHLO"),
        };
        let mut conn = tokio::time::timeout(
            hello,
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await
        .map_err(|_| self.timed_out(what, hello))?
        .map_err(step)?;
        let mut dsn = false;
        if self.pass_dsn {
            // lettre keeps only the EHLO keywords it knows; DSN is not one of them.
            let hello = lettre::transport::smtp::commands::Ehlo::new(self.hello.clone());
            // A server that refuses a second EHLO (503) takes no DSN parameters from us; the
            // connection goes on. One that does not answer, or hangs up, is as before.
            let mut limit = u64::MAX;
            dsn = match tokio::time::timeout(self.timeout, conn.command(hello))
                .await
                .map_err(|_| deadline("EHLO"))?
            {
                Ok(reply) => {
                    let mut dsn = false;
                    for line in reply.message().skip(1) {
                        let mut words = line.split_whitespace();
                        match words.next() {
                            Some(k) if k.eq_ignore_ascii_case("DSN") => dsn = true,
                            // RFC 1870 §4: SIZE 0 (or none given) is no fixed limit.
                            Some(k) if k.eq_ignore_ascii_case("SIZE") => {
                                limit = words
                                    .next()
                                    .and_then(|n| n.parse::<u64>().ok())
                                    .filter(|n| *n > 0)
                                    .unwrap_or(u64::MAX);
                            }
                            _ => {}
                        }
                    }
                    dsn
                }
                Err(e) if e.is_permanent() || e.is_transient() => false,
                Err(e) => return Err(step(e)),
            };
            self.size_limit
                .store(limit, std::sync::atomic::Ordering::Relaxed);
        } else {
            // Not asked: no limit known.
            self.size_limit
                .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        }
        *self.size_heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if let Some(credentials) = &self.credentials {
            tokio::time::timeout(
                self.timeout,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await
            .map_err(|_| deadline("AUTH"))?
            .map_err(step)?;
        }
        Ok((conn, dsn))
    }

    /// A step of connecting that took longer than `limit`.
    fn timed_out(&self, what: &str, limit: Duration) -> Sent {
        Sent::Temporary(format!(
            "relay {}: {what} timed out after {} s",
            self.description,
            limit.as_secs()
        ))
    }

    /// Greeting, EHLO and STARTTLS in plain text, read without any buffering, then the TLS
    /// handshake. lettre's own STARTTLS keeps whatever its reader had buffered past the 220
    /// reply and reads it as if it had come over TLS: a man in the middle could answer the
    /// commands after it ("250 ok" to the message) while the relay never saw them (response
    /// injection, RFC 3207 §6). Here the reply is read byte by byte up to its end, so
    /// anything injected after it goes into the TLS handshake, which fails on it.
    async fn starttls(
        &self,
        connector: &tokio_rustls::TlsConnector,
        mut tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Sent> {
        let failed = |what: String| {
            Sent::Temporary(format!(
                "relay {}: {what}; nothing was sent",
                self.description
            ))
        };
        let io = |e: std::io::Error| failed(format!("before TLS: {e}"));
        let within = |what: &'static str| move |_| self.timed_out(what, self.timeout);
        let greeting = tokio::time::timeout(self.timeout, read_reply(&mut tcp))
            .await
            .map_err(within("greeting"))?
            .map_err(io)?;
        if !greeting.starts_with('2') {
            return Err(failed(format!("greeting {greeting:?}")));
        }
        let hello = format!("EHLO {}\r\n", self.hello);
        tcp.write_all(hello.as_bytes()).await.map_err(io)?;
        let ehlo = tokio::time::timeout(self.timeout, read_reply(&mut tcp))
            .await
            .map_err(within("EHLO"))?
            .map_err(io)?;
        let offers = ehlo.lines().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
        });
        if !ehlo.starts_with("250") || !offers {
            return Err(failed("no STARTTLS offered (TLS is required)".into()));
        }
        tcp.write_all(b"STARTTLS\r\n").await.map_err(io)?;
        let ready = tokio::time::timeout(self.timeout, read_reply(&mut tcp))
            .await
            .map_err(within("STARTTLS"))?
            .map_err(io)?;
        if !ready.starts_with("220") {
            return Err(failed(format!("STARTTLS answered {ready:?}")));
        }
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| failed(format!("bad host name: {e}")))?;
        tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(within("TLS handshake"))?
            .map_err(|e| failed(format!("TLS failed: {}", tls_failure(&e))))
    }

    /// A connection for the next copy: an idle one that still answers NOOP, or a new one.
    /// For one queue run: after a new connection fails for a temporary reason, the rest of
    /// the run is deferred without connecting again. (Not for a daemon such as the milter,
    /// which would never connect again.)
    pub fn for_one_run(mut self) -> Relay {
        self.breaker = true;
        self
    }

    async fn connection(&self) -> Result<(AsyncSmtpConnection, bool), Sent> {
        if let Some(reason) = &*self.down.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Sent::Temporary(format!(
                "{reason} (not tried again in this run)"
            )));
        }
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()
            };
            match idle {
                Some((mut conn, dsn, since)) if since.elapsed() < IDLE_REUSE => {
                    if tokio::time::timeout(self.timeout, conn.test_connected())
                        .await
                        .unwrap_or(false)
                    {
                        return Ok((conn, dsn));
                    }
                }
                Some(_) => continue,
                None => {
                    let connected = self.connect().await;
                    if let (true, Err(Sent::Temporary(reason))) = (self.breaker, &connected) {
                        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                    }
                    return connected;
                }
            }
        }
    }

    /// Sends one copy to one recipient. `sender` "" is the null reverse-path (reports).
    /// MAIL, RCPT and DATA get `timeout` each, the content its time on the wire and the
    /// reply to its final "." the 10 minutes of RFC 5321 §4.5.3.2.6 (given up sooner, a relay
    /// that was only slow to answer has the message, and gets it again at the retry).
    pub async fn send(&self, sender: &str, recipient: &str, message: &[u8]) -> Sent {
        self.send_with(sender, recipient, message, &Dsn::default())
            .await
    }

    /// [`Relay::send`] with the recipient's DSN parameters (see [`Relay::passing_dsn`]).
    pub async fn send_with(
        &self,
        sender: &str,
        recipient: &str,
        message: &[u8],
        dsn: &Dsn,
    ) -> Sent {
        use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
        use lettre::transport::smtp::extension::{
            Extension, MailBodyParameter, MailParameter, RcptParameter,
        };
        if !sender.is_empty()
            && sender.parse::<lettre::Address>().is_err()
            && !(self.verbatim_paths && verbatim_path(sender))
        {
            return Sent::Permanent(format!("sender {sender:?} is not an address"));
        }
        if recipient.parse::<lettre::Address>().is_err()
            && !(self.verbatim_paths && verbatim_path(recipient))
        {
            return Sent::Permanent(format!("recipient {recipient:?} is not an address"));
        }
        let (mut conn, dsn_offered) = match self.connection().await {
            Ok(c) => c,
            Err(sent) => return sent,
        };
        // RFC 6531 and RFC 6152: what the relay does not announce is not sent; a copy that
        // needs it is refused for good at once (5.6.3, 5.6.7) rather than retried for days.
        // An international domain alone needs no SMTPUTF8: its ASCII form (IDNA A-labels,
        // RFC 5890) names the same domain.
        let info = conn.server_info();
        let mut options = Vec::new();
        let (mut sender, mut recipient) = (sender.to_string(), recipient.to_string());
        if !sender.is_ascii() || !recipient.is_ascii() {
            if info.supports_feature(Extension::SmtpUtfEight) {
                options.push(MailParameter::SmtpUtfEight);
            } else {
                match (ascii_domain(&sender), ascii_domain(&recipient)) {
                    (Some(s), Some(r)) => (sender, recipient) = (s, r),
                    _ => {
                        return Sent::Permanent(format!(
                            "5.6.7 relay {} does not take international addresses (no SMTPUTF8)",
                            self.description
                        ))
                    }
                }
            }
        }
        // RFC 6531 §3.4: UTF-8 in header fields (RFC 6532) is an SMTPUTF8 message too, unless
        // the client that sent it did not say so ([`Dsn::smtputf8`]). To a relay without it
        // such a header goes as 8-bit data, as it came to sealpost.
        let header_end = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(message.len());
        if options.is_empty()
            && dsn.smtputf8 != Some(false)
            && !message[..header_end].is_ascii()
            && info.supports_feature(Extension::SmtpUtfEight)
        {
            options.push(MailParameter::SmtpUtfEight);
        }
        let from: Option<lettre::Address> = sender.parse().ok();
        let to: Option<lettre::Address> = recipient.parse().ok();
        if to.is_none() && !(self.verbatim_paths && verbatim_path(&recipient)) {
            return Sent::Permanent(format!("recipient {recipient:?} is not an address"));
        }
        if !message.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Sent::Permanent(format!(
                    "5.6.3 relay {} does not take 8-bit data (no 8BITMIME), which this copy \
                     holds",
                    self.description
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mut rcpt_options = Vec::new();
        if dsn_offered {
            // The parameters given, as (keyword, value) for lettre's `Other`.
            fn given(pairs: [(&str, &Option<String>); 2]) -> Vec<(String, Option<String>)> {
                pairs
                    .into_iter()
                    .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), Some(v))))
                    .collect()
            }
            options.extend(
                given([("RET", &dsn.ret), ("ENVID", &dsn.envid)])
                    .into_iter()
                    .map(|(keyword, value)| MailParameter::Other { keyword, value }),
            );
            rcpt_options.extend(
                given([("NOTIFY", &dsn.notify), ("ORCPT", &dsn.orcpt)])
                    .into_iter()
                    .map(|(keyword, value)| RcptParameter::Other { keyword, value }),
            );
        }
        let transfer = Duration::from_secs(message.len() as u64 / MIN_BYTES_PER_SEC);
        let steps: [(Step, Duration); 4] = [
            (Step::Mail, self.timeout),
            (Step::Rcpt, self.timeout),
            (Step::Data, self.timeout),
            (Step::Content, self.timeout + transfer + FINAL_REPLY),
        ];
        let mut last = None;
        for (step, limit) in steps {
            let answered = match step {
                Step::Mail if from.is_none() && !sender.is_empty() => {
                    let command = Verbatim {
                        command: "MAIL FROM",
                        path: &sender,
                        parameters: &options,
                    };
                    tokio::time::timeout(limit, conn.command(command)).await
                }
                Step::Mail => {
                    let command = Mail::new(from.clone(), options.clone());
                    tokio::time::timeout(limit, conn.command(command)).await
                }
                Step::Rcpt => match &to {
                    Some(to) => {
                        let command = Rcpt::new(to.clone(), rcpt_options.clone());
                        tokio::time::timeout(limit, conn.command(command)).await
                    }
                    None => {
                        let command = Verbatim {
                            command: "RCPT TO",
                            path: &recipient,
                            parameters: &rcpt_options,
                        };
                        tokio::time::timeout(limit, conn.command(command)).await
                    }
                },
                Step::Data => tokio::time::timeout(limit, conn.command(Data)).await,
                // lettre ends the data with CRLF "." CRLF whatever the message ends with: a
                // message's own last CRLF is that first CRLF, or every copy would gain an
                // empty last line.
                Step::Content => {
                    let content = message.strip_suffix(b"\r\n").unwrap_or(message);
                    tokio::time::timeout(limit, conn.message(content)).await
                }
            };
            match answered {
                Ok(Ok(response)) => {
                    // A positive reply lettre takes that does not fit the command (see
                    // `Step::out_of_step`): the connection is out of step, and the copy waits.
                    let code = u16::from(response.code());
                    if let Some((what, wanted)) = step.out_of_step(code) {
                        let _ = tokio::time::timeout(self.timeout, conn.abort()).await;
                        return Sent::Temporary(format!(
                            "relay {} answered {what} with {code} {}, not {wanted}: its \
                             replies are out of step with the commands; the connection is \
                             closed",
                            self.description,
                            response.message().collect::<Vec<_>>().join(" ")
                        ));
                    }
                    last = Some(response);
                }
                Ok(Err(e)) => {
                    // The transaction is over either way; the connection is not reused.
                    let _ = tokio::time::timeout(self.timeout, conn.abort()).await;
                    // RFC 5321 §3.8: 421 closes the session; a relay that limits its rate
                    // answers so to MAIL or RCPT. In a queue run it is down for the rest
                    // of the run, as for a failed connection, and not asked again for each
                    // copy (review: 100 recipients, 100 connections in 1.4 s).
                    if e.status().map(u16::from) == Some(421) && self.breaker {
                        let reason = match classify(&e, &self.description) {
                            Sent::Temporary(r) | Sent::Permanent(r) => r,
                            Sent::Accepted { reply, .. } => reply,
                        };
                        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        return Sent::Temporary(reason);
                    }
                    // RFC 5321 §4.5.3.1.10: 552 to RCPT is taken as 452 (try again later).
                    if step == Step::Rcpt && e.status().map(u16::from) == Some(552) {
                        return Sent::Temporary(format!(
                            "{} (552 to RCPT, taken as 452: RFC 5321 §4.5.3.1.10)",
                            chain(&e)
                        ));
                    }
                    return classify(&e, &self.description);
                }
                Err(_) => {
                    let reason = format!(
                        "relay {}: no reply to {} within {} s",
                        self.description,
                        step.name(),
                        limit.as_secs()
                    );
                    // In a queue run, one relay that stops answering is not waited for again
                    // for every copy after it.
                    if self.breaker {
                        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                    }
                    return Sent::Temporary(reason);
                }
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_MAX {
            idle.push((conn, dsn_offered, Instant::now()));
        }
        let reply = last.map_or_else(String::new, |r| {
            format!(
                "{} {}",
                u16::from(r.code()),
                r.message().collect::<Vec<_>>().join(" ")
            )
        });
        Sent::Accepted {
            reply,
            passed_dsn: dsn_offered,
        }
    }

    /// The largest message the server takes, as its EHLO announced it (RFC 1870 SIZE), asked
    /// with [`Relay::passing_dsn`] only; a connection is made (and kept for the next copy)
    /// when none announced it in the last [`IDLE_REUSE`]: the server's limit may have changed
    /// since (review: after Postfix's message_size_limit was lowered and Postfix reloaded, a
    /// pooled connection's old SIZE let a copy too large for the new one stay in place, and
    /// Postfix refused the whole message after the other copies went). None: no limit
    /// announced, or no answer now.
    pub async fn size_limit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let stale = || {
            self.size_heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|t| t.elapsed() >= IDLE_REUSE)
        };
        if stale() {
            let _asking = self.size_asking.lock().await;
            // Asked by another caller while this one waited: its answer stands.
            if stale() {
                match self.connect().await {
                    Ok((conn, dsn)) => {
                        let spare = {
                            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                            if idle.len() < IDLE_MAX {
                                idle.push((conn, dsn, Instant::now()));
                                None
                            } else {
                                Some(conn)
                            }
                        };
                        if let Some(mut conn) = spare {
                            let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
                        }
                    }
                    // Not reached: no limit known now (the re-injection that follows meets
                    // the same failure); asked again after a while, not by every message.
                    Err(_) => {
                        *self.size_heard.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now());
                        return None;
                    }
                }
            }
        }
        Some(self.size_limit.load(Ordering::Relaxed)).filter(|n| *n != 0 && *n != u64::MAX)
    }

    /// Says QUIT on the idle connections.
    pub async fn close(&self) {
        let idle: Vec<_> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for (mut conn, _, _) in idle {
            let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
        }
    }
}

/// One SMTP reply (all its lines), read a byte at a time so that nothing after its last CRLF
/// is consumed.
async fn read_reply(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut line = Vec::new();
    loop {
        let byte = tcp.read_u8().await?;
        line.push(byte);
        if line.len() > 2048 || reply.len() > 64 * 1024 {
            return Err(std::io::Error::other("reply too long"));
        }
        // A line ended by LF alone counts too, as after TLS (`Replies`).
        if line.ends_with(b"\n") {
            repair_reply_line(&mut line);
            let last = line.get(3) != Some(&b'-');
            reply.append(&mut line);
            if last {
                return Ok(String::from_utf8_lossy(&reply).into_owned());
            }
        }
    }
}

/// Maps a lettre error onto the queue's decision. A refused login (535) or "authentication
/// required" (530) is the relay configuration's fault, not the recipient's: the copy stays
/// queued (as Postfix defers on SASL failures) and the reason says what to fix.
fn classify(e: &lettre::transport::smtp::Error, relay: &str) -> Sent {
    let text = chain(e);
    let code = e.status().map(u16::from);
    // The server's reply as it was ("550 5.1.1 <x>: User unknown"), for logs and reports.
    let reply = match (code, std::error::Error::source(e)) {
        (Some(c), Some(detail)) => format!("{c} {detail}").replace(['\r', '\n'], " "),
        _ => text.clone(),
    };
    // rustls reports a refused certificate as a connection error, not a TLS one (no reply
    // code: a 5xx that mentions a certificate is the server's answer, permanent).
    let tls = e.is_tls() || (code.is_none() && text.contains("certificate"));
    match code {
        Some(535) | Some(534) | Some(530) | Some(538) => Sent::Temporary(format!(
            "relay {relay} refused the login ({reply}): check [relay] username and password_file"
        )),
        _ if tls => Sent::Temporary(format!(
            "TLS with relay {relay} failed, nothing was sent: {text}"
        )),
        _ if e.is_permanent() => Sent::Permanent(reply),
        _ if e.is_transient() => Sent::Temporary(reply),
        _ => Sent::Temporary(format!("relay {relay}: {text}")),
    }
}

/// The error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace(['\r', '\n'], " ")
}

/// `address` with its domain in ASCII (IDNA A-labels), when its local part is ASCII; "" (the
/// null sender) stays "".
fn ascii_domain(address: &str) -> Option<String> {
    if address.is_ascii() {
        return Some(address.to_string());
    }
    let (local, domain) = address.rsplit_once('@')?;
    if !local.is_ascii() {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    Some(format!("{local}@{domain}"))
}

/// A TLS handshake failure in words an administrator can act on: rustls names a refused
/// certificate by its type names (review: `invalid peer certificate:
/// Other(OtherError(CaUsedAsEndEntity))` for a self-signed certificate made as a CA).
fn tls_failure(e: &std::io::Error) -> String {
    use rustls::{CertificateError as C, Error as R};
    let Some(R::InvalidCertificate(c)) = e.get_ref().and_then(|i| i.downcast_ref::<R>()) else {
        return e.to_string();
    };
    let why = match c {
        C::UnknownIssuer | C::BadSignature => {
            "is not signed by a CA trusted here (the system's, or the one [relay] ca_file names)"
                .to_string()
        }
        C::Expired | C::ExpiredContext { .. } => "has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet (or this machine's clock is behind)".into()
        }
        C::Revoked => "is revoked".into(),
        C::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "is a CA certificate, which may not serve as the relay's own (a self-signed one made \
             as a CA, as `openssl req -x509` makes it by default: give it basicConstraints \
             CA:FALSE, or make a CA and sign the relay's certificate with it)"
                .into()
        }
        _ => return format!("the relay's certificate is refused: {c}"),
    };
    format!("the relay's certificate {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before TLS too, a reply line ended by LF alone is a line (it waited for a CR).
    #[tokio::test]
    async fn a_plain_text_reply_may_end_lines_with_lf() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(b"220-hello\n220 ready\n").await.unwrap();
            socket
        });
        let mut tcp = TcpStream::connect(address).await.unwrap();
        let reply = read_reply(&mut tcp).await.unwrap();
        assert_eq!(reply, "220-hello\r\n220 ready\r\n");
        drop(server.await.unwrap());
    }

    #[test]
    fn reply_lines_lettre_would_refuse_are_repaired() {
        let peer = "127.0.0.1:25".parse().unwrap();
        let mut replies = Replies::new((), peer, b"");
        for line in [
            &b"250\r\n"[..],
            b"354\n",
            b"250-first\n",
            b"250 last\r\n",
            b"2500\r\n",
        ] {
            replies.line = line.to_vec();
            replies.end_line();
        }
        assert_eq!(
            replies.out,
            b"250 \r\n354 \r\n250-first\r\n250 last\r\n2500\r\n"
        );
    }

    #[test]
    fn xtext_decoding() {
        let ok = |x: &str| xtext_decode(x).unwrap();
        assert_eq!(ok("bob+2Btag@example.org"), "bob+tag@example.org");
        assert_eq!(ok("rfc822;x+40y"), "rfc822;x@y");
        assert_eq!(ok("a+3Db+20c"), "a=b c");
        // Taken as Postfix takes them.
        assert_eq!(ok("id+2bx"), "id+x");
        assert_eq!(ok("a=b"), "a=b");
        for bad in ["a+2", "a b", "end+", "x+zz", "x+FF", "x+ff"] {
            assert_eq!(xtext_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn dsn_parameters_are_taken_when_they_can_go_on_as_they_came() {
        let mut dsn = Dsn::default();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        dsn.take_mail(&args(&["SIZE=100", "ret=hdrs", "ENVID=q+2B1"]));
        dsn.take_rcpt(&args(&["NOTIFY=success,failure", "ORCPT=rfc822;a+2Bb@x"]));
        assert_eq!(
            dsn,
            Dsn {
                smtputf8: Some(false),
                ret: Some("HDRS".into()),
                envid: Some("q+1".into()),
                notify: Some("SUCCESS,FAILURE".into()),
                orcpt: Some("rfc822;a+b@x".into()),
            }
        );
        for (mail, rcpt) in [
            ("RET=FULL;X", "NOTIFY="),
            ("ENVID=a+0Db", "ORCPT=rfc822;a+0A@x"),
            ("RET=SOME", "NOTIFY=NEVER,SUCCESS"),
            ("RET=", "NOTIFY=FOO"),
            ("RET=FULL,HDRS", "NOTIFY=SUCCESS,,FAILURE"),
        ] {
            let mut odd = Dsn::default();
            odd.take_mail(&args(&[mail]));
            odd.take_rcpt(&args(&[rcpt]));
            let none_taken = Dsn {
                smtputf8: Some(false),
                ..Dsn::default()
            };
            assert_eq!(odd, none_taken, "{mail} {rcpt}");
        }
        let mut declared = Dsn::default();
        declared.take_mail(&args(&["BODY=8BITMIME", "smtputf8"]));
        assert_eq!(declared.smtputf8, Some(true));
        assert!(orcpt_ok("rfc822;bob@example.org"));
        for bad in [
            "rfc822;",
            ";bob@x",
            "bob",
            "rfc822;a\tb",
            " rfc822;bob@x",
            &format!("rfc822;{}", "a".repeat(500)),
        ] {
            assert!(!orcpt_ok(bad), "{bad:?}");
        }
        for orcpt in [
            "ORCPT=rfc822;b+C3+A9@x",
            "ORCPT=utf-8;b\\x{E9}@x",
            "ORCPT=x400;a",
        ] {
            let mut odd = Dsn::default();
            odd.take_rcpt(&args(&[orcpt]));
            assert_eq!(odd.orcpt, None, "{orcpt}");
        }
    }

    #[test]
    fn two_spellings_of_a_recipient_ask_for_what_either_asked() {
        let notify = |n: Option<&str>| Dsn {
            notify: n.map(str::to_string),
            ..Dsn::default()
        };
        let merged = |a: &[Option<&str>]| {
            let all: Vec<Dsn> = a.iter().map(|n| notify(*n)).collect();
            Dsn::merged(&all).unwrap().notify
        };
        assert_eq!(
            merged(&[Some("NEVER"), Some("FAILURE,SUCCESS")]).as_deref(),
            Some("SUCCESS,FAILURE")
        );
        assert_eq!(
            merged(&[Some("NEVER"), Some("NEVER")]).as_deref(),
            Some("NEVER")
        );
        // No NOTIFY is FAILURE,DELAY: a SUCCESS the other asked for is not lost.
        assert_eq!(
            merged(&[None, Some("SUCCESS")]).as_deref(),
            Some("SUCCESS,FAILURE,DELAY")
        );
        assert_eq!(
            merged(&[Some("NEVER"), None]).as_deref(),
            Some("FAILURE,DELAY")
        );
        assert_eq!(merged(&[None, None]), None);
        assert!(Dsn::merged(&[]).is_none());
        assert!(!notify(Some("NEVER")).wants_failure());
        assert!(!notify(Some("SUCCESS,DELAY")).wants_failure());
        assert!(notify(Some("DELAY,FAILURE")).wants_failure());
        assert!(notify(None).wants_failure());
    }

    /// A relay on loopback that refuses connections (a port nothing listens on).
    fn refusing() -> Relay {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = RelayConfig {
            host: Some("127.0.0.1".into()),
            port: Some(closed),
            tls: RelayTls::None,
            timeout_secs: 5,
            ..RelayConfig::default()
        };
        Relay::new(&config, "host.example").unwrap()
    }

    /// Only a queue run's relay stops connecting after a failure; the milter's (a daemon's)
    /// tries each time, or it would never re-inject again.
    #[tokio::test]
    async fn only_a_run_stops_connecting_after_a_failure() {
        for (relay, stops) in [(refusing(), false), (refusing().for_one_run(), true)] {
            for attempt in 0..2 {
                let Sent::Temporary(reason) =
                    relay.send("a@example.org", "b@example.org", b"x").await
                else {
                    panic!("a refused connection is temporary");
                };
                let skipped = reason.contains("not tried again in this run");
                assert_eq!(skipped, stops && attempt == 1, "{reason}");
            }
        }
    }
}
