//! The upstream IMAP account: its configuration (`[accounts.upstream]`) and the connection —
//! TCP, then implicit TLS or STARTTLS with certificate verification (cleartext only to a
//! loopback host), then LOGIN or AUTHENTICATE PLAIN — as an async-imap session.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::SyncError;

/// `[accounts.upstream]`: where the account's mail comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: String,
    /// Default: 993 with implicit TLS, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: UpstreamTls,
    pub username: String,
    /// A file holding the password (one line); keep it mode 0600.
    pub password_file: PathBuf,
    /// PEM certificates to trust instead of the system's CA store.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// Folders to sync (upstream names); empty: every selectable folder.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Daemon mode: seconds between full syncs (IDLE on INBOX wakes it sooner).
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// Daemon mode: wait in IDLE on INBOX between polls when the server offers it.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Run after a sync that found new mail, with the counts in SEALPOST_NEW (total) and
    /// SEALPOST_NEW_BY_MAILBOX ("INBOX=3 Lists/rust=1"). Run through /bin/sh -c.
    pub notify_command: Option<String>,
    /// Seconds for connecting and for each command.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The account's own address: what the MUA stores (Sent, Drafts, copies into other
    /// folders) goes upstream encrypted to this address's key, never in clear. Default: the
    /// username, when it is an address.
    pub address: Option<String>,
}

fn default_poll() -> u64 {
    300
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// TLS from the first byte (IMAPS, RFC 8314).
    #[default]
    Implicit,
    /// STARTTLS (RFC 3501 §6.2.1); the connection fails when the server does not offer it.
    Starttls,
    /// Cleartext: only to a loopback host.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// LOGIN (RFC 3501 §6.2.3).
    #[default]
    Login,
    /// AUTHENTICATE PLAIN (RFC 4616).
    Plain,
}

impl UpstreamConfig {
    /// Whether the upstream folder `folder` is synced: every one when `folders` is empty.
    pub fn syncs(&self, folder: &str) -> bool {
        self.folders.is_empty() || self.folders.iter().any(|f| f == folder)
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            UpstreamTls::Implicit => 993,
            _ => 143,
        })
    }

    /// The address whose key encrypts uploads.
    pub fn own_address(&self) -> Option<&str> {
        self.address.as_deref().or_else(|| {
            self.username
                .contains('@')
                .then_some(self.username.as_str())
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// Why this configuration cannot be used, if it cannot (checked when the config loads).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.tls == UpstreamTls::None && !crate::net::is_loopback(&self.host) {
            return Some((
                "tls",
                "\"none\" is allowed only with a loopback host: a password and mail never cross a network in clear".into(),
            ));
        }
        if self.timeout_secs == 0 {
            return Some(("timeout_secs", "must be at least 1 (seconds)".into()));
        }
        if self.poll_secs == 0 {
            return Some(("poll_secs", "must be at least 1 (seconds)".into()));
        }
        for (key, path) in [
            ("password_file", Some(&self.password_file)),
            ("ca_file", self.ca_file.as_ref()),
        ] {
            if let Some(why) = path.and_then(|p| crate::config::path_problem(p)) {
                return Some((key, why));
            }
        }
        None
    }
}

/// The connection under the IMAP session: cleartext (loopback, or before STARTTLS) or TLS,
/// with a count of the bytes read from it (see [`Stream::received`]).
#[derive(Debug)]
pub struct Stream {
    io: Io,
    received: Arc<AtomicU64>,
    /// Reading past this many bytes in all fails (see [`Stream::limit`]).
    limit: Arc<AtomicU64>,
    /// What the server sent, less the untagged responses left out ([`Unknown`]), not read
    /// by async-imap yet.
    ready: Vec<u8>,
    unknown: Unknown,
    /// Where a read lands before the filter.
    scratch: Vec<u8>,
}

/// Leaves out untagged responses of a kind the IMAP parser under async-imap (imap-proto)
/// does not know, whole with their literals, as RFC 3501 §7 asks a client to take any
/// response at any time: it failed on them, and with the bytes still in its buffer the
/// session could not go on (review: `* XWEIRD ...` in an EXAMINE left the folder out of
/// every pass; `* 2 XNONSENSE` among the FETCH answers broke the fetch of the next message
/// at every pass, until it was passed over). Only the kinds named in [`KNOWN`] and
/// [`KNOWN_NUMBERED`] go on, tagged answers and continuations always.
#[derive(Debug, Default)]
struct Unknown {
    /// The start of a response, held until its kind is known.
    head: Vec<u8>,
    /// Inside a response (None: at the start of one), and whether it goes on.
    part: Option<(Part, bool)>,
    /// The last bytes of the current line: a literal's announcement ends it.
    tail: Vec<u8>,
    /// Responses left out (each is logged as it goes).
    dropped: u64,
}

#[derive(Debug, Clone, Copy)]
enum Part {
    Line,
    Literal(u64),
}

/// Untagged responses by their name (RFC 3501; ESEARCH 4731, ENABLED 5161, SORT and THREAD
/// 5256, METADATA 5464, VANISHED 7162, QUOTA 2087, NAMESPACE 2342, ID 2971, and Gmail's
/// XLIST): these go on.
const KNOWN: [&str; 22] = [
    "OK",
    "NO",
    "BAD",
    "BYE",
    "PREAUTH",
    "CAPABILITY",
    "LIST",
    "LSUB",
    "STATUS",
    "SEARCH",
    "ESEARCH",
    "FLAGS",
    "NAMESPACE",
    "ENABLED",
    "ID",
    "QUOTA",
    "QUOTAROOT",
    "METADATA",
    "VANISHED",
    "SORT",
    "THREAD",
    "XLIST",
];

/// Untagged responses after a number (RFC 3501 §7.3, §7.4).
const KNOWN_NUMBERED: [&str; 4] = ["EXISTS", "RECENT", "EXPUNGE", "FETCH"];

/// Whether a response that starts with `head` goes on: Some once its kind can be told.
fn goes_on(head: &[u8]) -> Option<bool> {
    if head.first().is_some_and(|b| *b != b'*') {
        return Some(true);
    }
    let ended = |b: &u8| matches!(b, b' ' | b'\r' | b'\n' | b'[' | b'(');
    let Some(rest) = head.strip_prefix(b"* ") else {
        // "*" alone so far, or "*" then something other than a blank: as it came.
        return (head.len() >= 2).then_some(true);
    };
    let word = |from: &[u8]| -> Option<String> {
        let end = from.iter().position(ended)?;
        Some(String::from_utf8_lossy(&from[..end]).to_ascii_uppercase())
    };
    if head.len() > 64 {
        return Some(true);
    }
    let first = word(rest)?;
    if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) {
        let second = word(rest.get(first.len() + 1..)?)?;
        return Some(KNOWN_NUMBERED.contains(&second.as_str()));
    }
    Some(KNOWN.contains(&first.as_str()))
}

impl Unknown {
    /// Appends to `out` what of `input` goes on.
    fn filter(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let Some((part, keep)) = self.part else {
                self.head.push(input[0]);
                input = &input[1..];
                if let Some(keep) = goes_on(&self.head) {
                    if !keep {
                        self.dropped += 1;
                        tracing::warn!(
                            "upstream: left out a response of a kind not known here: {:?}",
                            String::from_utf8_lossy(&self.head)
                        );
                    }
                    self.part = Some((Part::Line, keep));
                    let head = std::mem::take(&mut self.head);
                    self.filter(&head, out);
                }
                continue;
            };
            match part {
                Part::Literal(left) => {
                    let take = left.min(input.len() as u64) as usize;
                    if keep {
                        out.extend_from_slice(&input[..take]);
                    }
                    input = &input[take..];
                    self.part = Some(match left - take as u64 {
                        0 => (Part::Line, keep),
                        more => (Part::Literal(more), keep),
                    });
                }
                Part::Line => {
                    let end = input.iter().position(|&b| b == b'\n');
                    let line = &input[..end.map_or(input.len(), |e| e + 1)];
                    if keep {
                        out.extend_from_slice(line);
                    }
                    self.tail.extend_from_slice(line);
                    let cut = self.tail.len().saturating_sub(32);
                    self.tail.drain(..cut);
                    input = &input[line.len()..];
                    if end.is_some() {
                        let announced = literal_size(self.tail.trim_ascii_end());
                        self.tail.clear();
                        self.part = announced.map(|n| (Part::Literal(n as u64), keep));
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn new(io: Io) -> Stream {
        Stream {
            io,
            received: Arc::default(),
            limit: Arc::new(AtomicU64::new(u64::MAX)),
            ready: Vec::new(),
            unknown: Unknown::default(),
            scratch: Vec::new(),
        }
    }

    /// The most bytes that may have been read in all: a read past it fails, and the session
    /// is broken. A fetch sets it from the sizes the server announced, so that a server that
    /// sends far more is cut off before it is all in memory.
    pub fn limit(&self) -> Arc<AtomicU64> {
        self.limit.clone()
    }

    /// The bytes read so far, counted as they come: a fetch whose server sends nothing for a
    /// while, or far more than it announced, is cut off by it.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // What the filter let through (`ready`) first; a read only when none is left, and
        // again while what came was all left out (an empty read would be the end).
        while this.ready.is_empty() {
            this.scratch.resize(buf.remaining().clamp(1, 64 * 1024), 0);
            let mut into = ReadBuf::new(&mut this.scratch);
            let read = match &mut this.io {
                Io::Plain(s) => Pin::new(s).poll_read(cx, &mut into),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut into),
            };
            match read {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = into.filled().len();
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
            let total = this.received.fetch_add(got as u64, Ordering::Relaxed) + got as u64;
            if total > this.limit.load(Ordering::Relaxed) {
                return Poll::Ready(Err(std::io::Error::other(
                    "the server sent far more than the sizes it announced (RFC822.SIZE)",
                )));
            }
            this.unknown.filter(into.filled(), &mut this.ready);
        }
        let n = this.ready.len().min(buf.remaining());
        buf.put_slice(&this.ready[..n]);
        this.ready.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Session = async_imap::Session<Stream>;

/// RFC 4616 PLAIN: authorization identity empty, then the login and the password.
struct Plain<'a> {
    user: &'a str,
    password: &'a str,
}

impl async_imap::Authenticator for Plain<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        format!("\0{}\0{}", self.user, self.password).into_bytes()
    }
}

/// Connects, secures and logs in; every step under the configured timeout.
pub async fn connect(config: &UpstreamConfig) -> Result<Session, SyncError> {
    let at = format!("{}:{}", config.host, config.port());
    tokio::time::timeout(config.timeout(), connect_inner(config, &at))
        .await
        .map_err(|_| SyncError::Connect(at.clone(), "timed out".into()))?
}

async fn connect_inner(config: &UpstreamConfig, at: &str) -> Result<Session, SyncError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        SyncError::Connect(at.into(), format!("{what}: {e}"))
    };
    let password = password(config)?;
    let password = password.as_str();
    // The TLS settings first, before the network: a ca_file that cannot be read or a host
    // that is no server name is the configuration's fault (78) whether the server answers or
    // not (review: with the upstream down, both were "try again later"). Not for a cleartext
    // loopback upstream, which needs none of them (review: a host without CA certificates
    // then failed with 78).
    let tls = match config.tls {
        UpstreamTls::None => None,
        UpstreamTls::Implicit | UpstreamTls::Starttls => Some(tls_settings(config)?),
    };
    let tcp = TcpStream::connect((config.host.as_str(), config.port()))
        .await
        .map_err(|e| failed("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    let mut client = match config.tls {
        UpstreamTls::Implicit => {
            let (connector, name) = tls.expect("made for TLS above");
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| failed("TLS", &e))?;
            async_imap::Client::new(Stream::new(Io::Tls(Box::new(stream))))
        }
        UpstreamTls::Starttls => {
            let mut plain = async_imap::Client::new(Stream::new(Io::Plain(tcp)));
            greeting(&mut plain, at).await?;
            plain
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| failed("STARTTLS refused (nothing was sent in clear)", &e))?;
            // Anything the server sent after its OK stays unread: only TLS data counts
            // (RFC 3501 §6.2.1).
            let Io::Plain(tcp) = plain.into_inner().io else {
                unreachable!("the STARTTLS stream is cleartext")
            };
            let (connector, name) = tls.expect("made for TLS above");
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| failed("TLS", &e))?;
            // No greeting after STARTTLS.
            let session = login(
                async_imap::Client::new(Stream::new(Io::Tls(Box::new(stream)))),
                config,
                password,
                at,
            )
            .await?;
            return Ok(session);
        }
        UpstreamTls::None => async_imap::Client::new(Stream::new(Io::Plain(tcp))),
    };
    greeting(&mut client, at).await?;
    login(client, config, password, at).await
}

/// The password, from `password_file` ([`crate::config::read_password_file`]: a second line
/// is an error naming the file; review: it went to the server, and came back as "validate:
/// invalid character" over two lines of the log, a temporary failure).
fn password(config: &UpstreamConfig) -> Result<String, SyncError> {
    crate::config::read_password_file(&config.password_file).map_err(|e| {
        SyncError::Config(format!(
            "password_file {}: {e}",
            config.password_file.display()
        ))
    })
}

/// What [`connect`] reads before it goes to the network (the password file, the TLS
/// settings), read the same way, for `sealpost check`.
pub fn check_settings(config: &UpstreamConfig) -> Result<(), SyncError> {
    password(config)?;
    if !matches!(config.tls, UpstreamTls::None) {
        tls_settings(config)?;
    }
    Ok(())
}

/// The connector and the name to verify the upstream's certificate by: `ca_file`'s
/// certificates, or the system's when it is unset.
fn tls_settings(
    config: &UpstreamConfig,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    SyncError,
> {
    let ca = match &config.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| SyncError::Config(format!("ca_file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    // ALPACA: a server that checks ALPN sees that this client speaks IMAP.
    let alpn = Some(crate::imap::tls::ALPN_IMAP);
    let client = crate::net::tls_client_config(ca.as_deref(), alpn).map_err(|e| {
        SyncError::Config(match &config.ca_file {
            Some(path) => format!("ca_file {}: {e}", path.display()),
            None => format!("no ca_file, and the system's CA certificates: {e}"),
        })
    })?;
    let name = rustls::pki_types::ServerName::try_from(config.host.clone())
        .map_err(|e| SyncError::Config(format!("host {}: {e}", config.host)))?;
    Ok((tokio_rustls::TlsConnector::from(client), name))
}

async fn greeting(client: &mut async_imap::Client<Stream>, at: &str) -> Result<(), SyncError> {
    match client.read_response().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(SyncError::Connect(
            at.into(),
            "closed before the greeting".into(),
        )),
        Err(e) => Err(SyncError::Connect(at.into(), format!("greeting: {e}"))),
    }
}

async fn login(
    client: async_imap::Client<Stream>,
    config: &UpstreamConfig,
    password: &str,
    at: &str,
) -> Result<Session, SyncError> {
    let result = match config.auth {
        UpstreamAuth::Login => client.login(&config.username, password).await,
        UpstreamAuth::Plain => {
            client
                .authenticate(
                    "PLAIN",
                    Plain {
                        user: &config.username,
                        password,
                    },
                )
                .await
        }
    };
    result.map_err(|(e, _)| {
        SyncError::Login(format!("{at} as {}: {}", config.username, server_said(&e)))
    })
}

/// An error of async-imap in words: one that its parser refused is said with the start of
/// what the server sent, not the whole input as numbers (review: a line of hundreds of
/// decimal bytes in the log, and on stderr).
pub fn readable(e: &async_imap::error::Error) -> String {
    const SHOWN: usize = 160;
    let text = e.to_string();
    let Some((_, input)) = text.split_once(" during parsing of ") else {
        return text;
    };
    let mut shown: String = input.chars().take(SHOWN).collect();
    if input.chars().count() > SHOWN {
        shown.push_str("...");
    }
    format!("the server sent a response sealpost cannot read: {shown}")
}

/// An error as the server worded it: async-imap keeps a NO or BAD answer's text in a debug
/// rendering ("code: None, info: Some(\"[AUTHENTICATIONFAILED] ...\")").
fn server_said(e: &async_imap::error::Error) -> String {
    use async_imap::error::Error;
    let (kind, text) = match e {
        Error::No(text) => ("NO", text),
        Error::Bad(text) => ("BAD", text),
        other => return readable(other),
    };
    let info = text
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map(|(info, _)| info.replace("\\\"", "\"").replace("\\\\", "\\"));
    match info {
        Some(info) => format!("the server answered {kind} {info}"),
        None => format!("the server answered {kind} ({text})"),
    }
}

/// A name or delimiter of a LIST response as the server meant it: imap-proto hands over a
/// quoted string with its escapes (`\"`, `\\`) still in it (RFC 3501 §9, quoted-specials).
/// Taken as it came, a folder called `Q"uote` was asked for as `Q\"uote`, and refused at
/// every pass.
pub fn unquoted(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('\\' | '"'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// What a command's responses said that async-imap does not hand back: the RFC 4315 UIDPLUS
/// codes, TRYCREATE, and a selected folder's UIDVALIDITY.
#[derive(Debug, Default)]
pub struct Reply {
    pub ok: bool,
    /// The completion's text (for NO and BAD).
    pub text: String,
    /// RFC 3501 §6.3.11: the target folder does not exist and may be created.
    pub trycreate: bool,
    /// APPENDUID: (UIDVALIDITY, UID) of the appended message.
    pub appenduid: Option<(u32, u32)>,
    /// COPYUID: (UIDVALIDITY, source UIDs, target UIDs), for UID COPY and UID MOVE (RFC 6851
    /// sends it in an untagged OK).
    pub copyuid: Option<(u32, Vec<u32>, Vec<u32>)>,
    pub uidvalidity: Option<u32>,
    pub uidnext: Option<u32>,
    pub exists: Option<u32>,
    pub highestmodseq: Option<u64>,
    /// UIDs of an untagged SEARCH response.
    pub search: Vec<u32>,
    /// (UID, flags) of untagged FETCH responses that carry both.
    pub flags: Vec<(u32, Vec<String>)>,
    /// (UID, RFC822.SIZE) of untagged FETCH responses that carry both.
    pub sizes: Vec<(u32, u32)>,
}

impl Reply {
    /// Whether this answer to EXAMINE says the folder does not exist: NO with [NONEXISTENT]
    /// (RFC 5530), or with no response code from a server that has none. Any other code
    /// ([UNAVAILABLE], [SERVERBUG], [INUSE]) says nothing of that.
    pub fn says_gone(&self) -> bool {
        let text = self.text.trim_start();
        !self.ok && (!text.starts_with('[') || text.starts_with("[NONEXISTENT]"))
    }
}

/// Runs one command on the session and reads its responses up to the completion. With a
/// `literal`, the command line must end in `{N}` with N its length: the literal is sent after
/// the server's continuation (RFC 3501 §4.3, a synchronizing literal).
pub async fn command(
    session: &mut Session,
    line: &str,
    literal: Option<&[u8]>,
) -> Result<Reply, SyncError> {
    use async_imap::imap_proto::{MailboxDatum, Response, ResponseCode, Status};
    use tokio::io::AsyncWriteExt;

    let tag = session.run_command(line).await?;
    let mut reply = Reply::default();
    let mut literal = literal;
    loop {
        let Some(response) = session
            .read_response()
            .await
            .map_err(async_imap::error::Error::from)?
        else {
            return Err(async_imap::error::Error::ConnectionLost.into());
        };
        let (outcome, done) = match response.parsed() {
            Response::Continue(_) => {
                let Some(bytes) = literal.take() else {
                    return Err(SyncError::Folder(
                        line.into(),
                        "the server asked for data the command does not have".into(),
                    ));
                };
                let stream = session.get_mut();
                let sent = async {
                    stream.write_all(bytes).await?;
                    stream.write_all(b"\r\n").await?;
                    stream.flush().await
                };
                sent.await.map_err(async_imap::error::Error::from)?;
                continue;
            }
            Response::MailboxData(MailboxDatum::Exists(n)) => {
                reply.exists = Some(*n);
                continue;
            }
            Response::MailboxData(MailboxDatum::Search(uids)) => {
                reply.search.extend(uids);
                continue;
            }
            // STATUS (UIDVALIDITY): an untagged STATUS, no response code (it was left unread,
            // and a check of two folders' UIDVALIDITY never saw one).
            Response::MailboxData(MailboxDatum::Status { status, .. }) => {
                for attribute in status {
                    if let async_imap::imap_proto::StatusAttribute::UidValidity(v) = attribute {
                        reply.uidvalidity = Some(*v);
                    }
                }
                continue;
            }
            Response::Fetch(_, attributes) => {
                use async_imap::imap_proto::AttributeValue;
                let uid = attributes.iter().find_map(|a| match a {
                    AttributeValue::Uid(uid) => Some(*uid),
                    _ => None,
                });
                let flags = attributes.iter().find_map(|a| match a {
                    AttributeValue::Flags(flags) => {
                        Some(flags.iter().map(|f| f.to_string()).collect::<Vec<_>>())
                    }
                    _ => None,
                });
                let size = attributes.iter().find_map(|a| match a {
                    AttributeValue::Rfc822Size(size) => Some(*size),
                    _ => None,
                });
                if let (Some(uid), Some(size)) = (uid, size) {
                    reply.sizes.push((uid, size));
                }
                if let (Some(uid), Some(flags)) = (uid, flags) {
                    reply.flags.push((uid, flags));
                }
                continue;
            }
            Response::Data { status, outcome } => {
                if *status != Status::Ok {
                    continue;
                }
                (outcome, None)
            }
            Response::Done {
                tag: done,
                status,
                outcome,
            } if *done == tag => (outcome, Some(*status == Status::Ok)),
            _ => continue,
        };
        match &outcome.code {
            Some(ResponseCode::TryCreate) => reply.trycreate = true,
            Some(ResponseCode::UidValidity(v)) => reply.uidvalidity = Some(*v),
            Some(ResponseCode::UidNext(n)) => reply.uidnext = Some(*n),
            Some(ResponseCode::HighestModSeq(m)) => reply.highestmodseq = Some(*m),
            Some(ResponseCode::AppendUid(v, uids)) => {
                reply.appenduid = uid_set(uids).first().map(|uid| (*v, *uid));
            }
            Some(ResponseCode::CopyUid(v, from, to)) => {
                reply.copyuid = Some((*v, uid_set(from), uid_set(to)));
            }
            _ => {}
        }
        if let Some(ok) = done {
            reply.ok = ok;
            reply.text = outcome.information.as_deref().unwrap_or("").to_string();
            return Ok(reply);
        }
    }
}

/// The longest NAMESPACE exchange read: a server's answer is a line or two.
const MAX_NAMESPACE_REPLY: usize = 64 * 1024;

/// The personal namespace's prefix (RFC 2342): "INBOX." on Courier and Cyrus, where every
/// folder but INBOX is named under it; empty where the server has none or names none.
///
/// imap-proto cannot parse a NAMESPACE response (and an untagged response it cannot parse
/// leaves async-imap's reader stuck), so the command goes over the stream below async-imap.
/// That is safe between commands: after a completed command async-imap has read nothing
/// ahead, and this reads exactly up to its own completion (literals included).
pub async fn personal_prefix(session: &mut Session) -> Result<Option<String>, SyncError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TAG: &str = "sealpost-ns";
    let stream = session.get_mut();
    let broken = |e: std::io::Error| SyncError::Imap(async_imap::error::Error::from(e));
    stream
        .write_all(format!("{TAG} NAMESPACE\r\n").as_bytes())
        .await
        .map_err(broken)?;
    stream.flush().await.map_err(broken)?;
    let mut line = Vec::new();
    let mut read = 0usize;
    // None until an answer that can be read: one this does not read (a literal) names no
    // prefix.
    let mut prefix = None;
    loop {
        // One response line: up to CRLF, with the literals it announces ({N}) read into it.
        line.clear();
        loop {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.map_err(broken)? == 0 {
                return Err(async_imap::error::Error::ConnectionLost.into());
            }
            read += 1;
            if read > MAX_NAMESPACE_REPLY {
                return Err(SyncError::Folder(
                    "NAMESPACE".into(),
                    "the answer is too long".into(),
                ));
            }
            line.push(byte[0]);
            if !line.ends_with(b"\r\n") {
                continue;
            }
            match literal_size(&line[..line.len() - 2]) {
                Some(n) if read + n <= MAX_NAMESPACE_REPLY => {
                    let at = line.len();
                    line.resize(at + n, 0);
                    stream.read_exact(&mut line[at..]).await.map_err(broken)?;
                    read += n;
                }
                Some(_) => {
                    return Err(SyncError::Folder(
                        "NAMESPACE".into(),
                        "the answer is too long".into(),
                    ))
                }
                None => break,
            }
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(rest) = text.strip_prefix(TAG) {
            if !rest
                .trim_start()
                .get(..2)
                .is_some_and(|s| s.eq_ignore_ascii_case("OK"))
            {
                // Refused (NO [UNAVAILABLE], say): the names cannot be decided now.
                return Err(SyncError::Folder(
                    "NAMESPACE".into(),
                    format!("the server answered {}", rest.trim()),
                ));
            }
            return Ok(prefix);
        }
        let upper = text.to_ascii_uppercase();
        if let Some(at) = upper
            .strip_prefix("* NAMESPACE ")
            .map(|r| text.len() - r.len())
        {
            let data = &text[at..];
            prefix = if data
                .trim_start()
                .get(..3)
                .is_some_and(|n| n.eq_ignore_ascii_case("NIL"))
            {
                Some(String::new())
            } else {
                first_personal_prefix(data)
            };
        }
    }
}

/// N of a line that ends in a literal's announcement `{N}` or `{N+}`.
fn literal_size(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|b| *b == b'{')?;
    let digits = body[open + 1..]
        .strip_suffix(b"+")
        .unwrap_or(&body[open + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The prefix of the first personal namespace in a NAMESPACE response's data:
/// `(("INBOX." ".")) NIL NIL` gives "INBOX.", and so does the prefix as a literal. None for
/// NIL or a form this does not read.
fn first_personal_prefix(data: &str) -> Option<String> {
    let rest = data.trim_start().strip_prefix("((")?.trim_start();
    // A literal: {N} (or {N+}), CRLF, then N octets.
    if let Some(literal) = rest.strip_prefix('{') {
        let (size, after) = literal.split_once('}')?;
        let n: usize = size.trim_end_matches('+').parse().ok()?;
        return after
            .strip_prefix("\r\n")?
            .as_bytes()
            .get(..n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string);
    }
    let rest = rest.strip_prefix('"')?;
    let mut prefix = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(prefix),
            '\\' => prefix.push(chars.next()?),
            c => prefix.push(c),
        }
    }
    None
}

/// The UIDs of a UID set from a server's reply, at most [`MAX_UID_SET`] of them: a range
/// like 1:4294967295 in an APPENDUID must not cost 16 GB.
fn uid_set(members: &[async_imap::imap_proto::rfc4315::UidSetMember]) -> Vec<u32> {
    use async_imap::imap_proto::rfc4315::UidSetMember;
    let mut out = Vec::new();
    for member in members {
        let room = MAX_UID_SET.saturating_sub(out.len());
        match member {
            UidSetMember::Uid(uid) if room > 0 => out.push(*uid),
            UidSetMember::UidRange(range) => out.extend(range.clone().take(room)),
            UidSetMember::Uid(_) => {}
        }
    }
    out
}

/// The most UIDs taken from one UID set; sealpost copies and moves one message at a time.
const MAX_UID_SET: usize = 10_000;

/// An IMAP quoted string (RFC 3501 §4.3).
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_of_unknown_kinds_are_left_out_whole() {
        let server: &[u8] = b"* OK [CAPABILITY IMAP4rev1] hi\r\n\
            * XWEIRD (foo bar) {3}\r\nabc more {2+}\r\nxy\r\n\
            * 2 XNONSENSE stuff\r\n\
            * 2 FETCH (UID 2 BODY[] {12}\r\n* XINSIDE\r\n\r\n)\r\n\
            * LIST (\\HasNoChildren) \"/\" {5}\r\nINBOX\r\n\
            *\r\n+ go on\r\n* 3 EXISTS\r\nA1 OK done\r\n";
        let expected: &[u8] = b"* OK [CAPABILITY IMAP4rev1] hi\r\n\
            * 2 FETCH (UID 2 BODY[] {12}\r\n* XINSIDE\r\n\r\n)\r\n\
            * LIST (\\HasNoChildren) \"/\" {5}\r\nINBOX\r\n\
            *\r\n+ go on\r\n* 3 EXISTS\r\nA1 OK done\r\n";
        // Whole, and a byte at a time: the same.
        let mut whole = Unknown::default();
        let mut out = Vec::new();
        whole.filter(server, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(whole.dropped, 2);
        let mut bytewise = Unknown::default();
        let mut out = Vec::new();
        for b in server {
            bytewise.filter(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn a_response_the_parser_refused_is_said_in_words() {
        let input = format!("* XWEIRD (foo bar)\r\n{}", "x".repeat(1000));
        let e = async_imap::error::Error::Io(std::io::Error::other(format!(
            "Error(Error {{ input: [42, 32, 88], code: TakeWhile1 }}) during parsing of {:?}",
            input
        )));
        let said = readable(&e);
        assert!(
            said.starts_with(
                "the server sent a response sealpost cannot read: \"* XWEIRD (foo bar)\\r\\n"
            ) && said.ends_with("...")
                && said.len() < 260
                && !said.contains("42, 32"),
            "{said}"
        );
        let other = async_imap::error::Error::Io(std::io::Error::other("broken pipe"));
        assert_eq!(readable(&other), other.to_string());
    }

    #[test]
    fn the_personal_namespace_prefix_is_read() {
        assert_eq!(
            first_personal_prefix("((\"INBOX.\" \".\")) NIL NIL").as_deref(),
            Some("INBOX.")
        );
        assert_eq!(
            first_personal_prefix("((\"\" \"/\")(\"#mh/\" \"/\")) NIL NIL").as_deref(),
            Some("")
        );
        assert_eq!(first_personal_prefix("NIL NIL NIL"), None);
        assert_eq!(
            first_personal_prefix("(({6}\r\nINBOX. \".\")) NIL NIL").as_deref(),
            Some("INBOX.")
        );
        assert_eq!(
            first_personal_prefix("(({60}\r\nINBOX. \".\")) NIL NIL"),
            None
        );
        assert_eq!(literal_size(b"* NAMESPACE (({6}"), Some(6));
        assert_eq!(literal_size(b"* NAMESPACE (({6+}"), Some(6));
        assert_eq!(literal_size(b"* NAMESPACE NIL NIL NIL"), None);
    }

    #[test]
    fn the_password_is_the_files_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let config: UpstreamConfig = toml::from_str(&format!(
            "host = \"127.0.0.1\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        for (text, read) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n\n", "s3cret"),
            ("s 3", "s 3"),
        ] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(password(&config).unwrap(), read);
        }
        std::fs::write(&file, "s3cret\nmore\n").unwrap();
        let e = password(&config).unwrap_err().to_string();
        assert!(
            e.contains("more than one line") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn the_upstream_connection_names_imap_as_its_protocol() {
        // The IMAP server's own acceptor stands in for an upstream that checks ALPN.
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        crate::imap::tls::generate(&cert, &key).unwrap();
        let acceptor = crate::imap::tls::acceptor(Some(&cert), Some(&key), dir.path()).unwrap();
        let config: UpstreamConfig = toml::from_str(&format!(
            "host = \"127.0.0.1\"\nusername = \"u\"\npassword_file = \"/nonexistent\"\n\
             ca_file = \"{}\"\n",
            cert.display()
        ))
        .unwrap();
        let (connector, name) = tls_settings(&config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = async { acceptor.accept(listener.accept().await.unwrap().0).await };
            let client = async {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                connector.connect(name, tcp).await
            };
            let (server, client) = tokio::join!(server, client);
            client.unwrap();
            let server = server.unwrap();
            assert_eq!(server.get_ref().1.alpn_protocol(), Some(&b"imap"[..]));
        });
    }

    #[test]
    fn a_refusal_is_given_as_the_server_worded_it() {
        let e = async_imap::error::Error::No(
            "code: None, info: Some(\"[AUTHENTICATIONFAILED] Authentication \\\"failed\\\".\")"
                .into(),
        );
        assert_eq!(
            server_said(&e),
            "the server answered NO [AUTHENTICATIONFAILED] Authentication \"failed\"."
        );
    }
}
