//! One client connection's I/O: the socket (plain or TLS), a framing scanner that enforces the
//! limits before anything is buffered, and imap-next's server state machine that parses
//! commands (DESIGN.md §4: sealpost drives imap-next with its own I/O loop).
//!
//! The scanner sees every byte first. It splits the input into lines and literals, so that
//! - a line longer than the limit (smaller before login) ends the connection; before login,
//!   input after a complete command waits until that command is done, so commands pipelined
//!   behind LOGIN get the limits of the state LOGIN leaves,
//! - a literal larger than the limit is refused before the client is told to send it
//!   (`NO [TOOBIG]`, and no `+` continuation; RFC 7888 §4), and a non-synchronising one
//!   ends the connection, so memory stays bounded,
//! - a command with too many literals ends the connection,
//! - LIST commands go to sealpost's own LIST-EXTENDED parser (RFC 5258), which imap-codec
//!   does not parse, whole with their literals (the scanner sends the `+` for a synchronising
//!   one); every other line is fed to imap-next in order.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use imap_next::imap_types::auth::AuthenticateData;
use imap_next::imap_types::command::Command;
use imap_next::imap_types::core::{Tag, Text};
use imap_next::imap_types::response::{CommandContinuationRequest, Greeting, Status};
use imap_next::server::{Event, Options, Server};
use imap_next::types::CommandAuthenticate;
use imap_next::{Interrupt, Io, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Limits;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Plain(tcp) => tcp.as_raw_fd(),
            Stream::Tls(tls) => tls.get_ref().0.as_raw_fd(),
        }
    }
}

/// How often a blocked write looks whether the client took anything.
const PROGRESS_CHECK: Duration = Duration::from_secs(1);

/// Whether a client takes what is sent: the bytes the socket still holds (TIOCOUTQ).
struct Progress {
    fd: std::os::fd::RawFd,
    queued: Option<i32>,
    since: tokio::time::Instant,
    /// How long the client may take nothing.
    stall: Duration,
    /// No write waits past this (the login deadline, before login).
    deadline: Option<tokio::time::Instant>,
}

impl Progress {
    fn new(
        fd: std::os::fd::RawFd,
        stall: Duration,
        deadline: Option<tokio::time::Instant>,
    ) -> Progress {
        Progress {
            fd,
            queued: Self::queued(fd),
            since: tokio::time::Instant::now(),
            stall,
            deadline,
        }
    }

    /// Runs a write, or ends it with an error once the client has taken nothing for
    /// `stall`.
    async fn guard<T>(
        &mut self,
        work: impl std::future::Future<Output = io::Result<T>>,
    ) -> Result<T, ConnError> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done?),
                _ = tokio::time::sleep(PROGRESS_CHECK.min(self.stall)) => {
                    if self.stalled_for() >= self.stall {
                        return Err(ConnError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client read nothing for {} s", self.stall.as_secs()),
                        )));
                    }
                }
            }
        }
    }

    fn queued(fd: std::os::fd::RawFd) -> Option<i32> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int; fd is the connection's socket, open while the
        // connection is.
        let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
        (r == 0).then_some(n)
    }

    /// Something was written: the client took enough for the kernel to take more.
    fn moved(&mut self) {
        self.since = tokio::time::Instant::now();
        self.queued = Self::queued(self.fd);
    }

    /// How long the client has taken nothing; past the deadline, as long as any write may
    /// wait, however much it takes.
    fn stalled_for(&mut self) -> Duration {
        if self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            return Duration::MAX;
        }
        let now = Self::queued(self.fd);
        if matches!((now, self.queued), (Some(n), Some(before)) if n < before) {
            self.since = tokio::time::Instant::now();
        }
        self.queued = now;
        self.since.elapsed()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the session gets from the client, in the order the client sent it.
#[derive(Debug)]
pub enum Input {
    Command(Command<'static>),
    Authenticate(CommandAuthenticate),
    AuthenticateData(AuthenticateData<'static>),
    Idle(Tag<'static>),
    IdleDone,
    /// A complete LIST command line, for the LIST-EXTENDED parser.
    List(Vec<u8>),
    /// A STATUS command asking for APPENDLIMIT (RFC 7889), which imap-codec's STATUS grammar
    /// lacks: parsed with MESSAGES in its place; `items` are the items asked, in order, upper
    /// case.
    Status {
        command: Command<'static>,
        items: Vec<String>,
    },
    /// A FETCH with `CHANGEDSINCE 0`, which imap-codec's grammar lacks (RFC 7162 §7 asks for
    /// a positive value; iPhone Mail sends 0, Dovecot takes it): parsed with 1 in its place,
    /// to be run as since 0.
    FetchSinceZero(Command<'static>),
    /// A command imap-codec could not parse; the tag when one could be read.
    Malformed(Option<String>),
    /// A synchronising literal over the limit, already refused by the scanner.
    Refused,
    /// A command over imap-next's size limit.
    TooLong,
    /// A line other than DONE during IDLE (RFC 2177): answered BAD, and the IDLE ends, as
    /// Dovecot does; the line is dropped.
    NotDone,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("line too long")]
    LineTooLong,
    #[error("literal too big")]
    LiteralTooBig,
    #[error("too many literals in one command")]
    TooManyLiterals,
}

pub struct Conn {
    /// None only after STARTTLS took the plain socket, just before this state is replaced.
    stream: Option<Stream>,
    server: Server,
    scanner: Scanner,
    events: VecDeque<Input>,
    pending: VecDeque<Piece>,
    /// The next IdleDoneReceived is of the DONE fed for a line that was not DONE.
    swallow_done: bool,
    out: Vec<u8>,
    read_buf: Box<[u8]>,
    /// How long a write may wait for the client to take some of it.
    write_stall: Duration,
    /// No write waits past this (the login deadline, before login).
    pub write_deadline: Option<tokio::time::Instant>,
}

/// Output is flushed to the socket once this much has accumulated.
const FLUSH_AT: usize = 64 * 1024;

impl Conn {
    pub fn new(stream: Stream, greeting: Greeting<'static>, limits: &Limits) -> Conn {
        let mut conn = Conn {
            stream: Some(stream),
            server: new_server(greeting, limits),
            scanner: Scanner::new(),
            events: VecDeque::new(),
            pending: VecDeque::new(),
            swallow_done: false,
            out: Vec::new(),
            read_buf: vec![0; 16 * 1024].into_boxed_slice(),
            write_stall: Duration::from_secs(limits.write_timeout_secs),
            write_deadline: None,
        };
        // The greeting goes out with the first flush.
        conn.drive();
        conn
    }

    /// The next input already received, if any (no I/O).
    pub fn next_queued(&mut self) -> Option<Input> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let piece = self.pending.pop_front()?;
            self.handle_piece(piece);
        }
    }

    /// Reads once from the socket and scans what came. Cancel-safe: nothing is lost when the
    /// future is dropped before the read completes.
    pub async fn fill(&mut self, limits: &Limits, authenticated: bool) -> Result<(), ConnError> {
        if let Some(pieces) = self.scanner.feed_held(limits, authenticated) {
            self.pending.extend(pieces?);
            return Ok(());
        }
        let stream = self.stream.as_mut().ok_or(ConnError::Closed)?;
        let n = stream.read(&mut self.read_buf).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        let pieces = self
            .scanner
            .feed(&self.read_buf[..n], limits, authenticated)?;
        self.pending.extend(pieces);
        Ok(())
    }

    fn handle_piece(&mut self, piece: Piece) {
        match piece {
            Piece::Feed(bytes) => {
                self.server.enqueue_input(&bytes);
                self.drive();
            }
            Piece::List(line) => self.events.push_back(Input::List(line)),
            Piece::TooBig { tag } => {
                // RFC 7888 §4: refused before the client sends the literal.
                let text =
                    format!("{tag} NO [TOOBIG] Literal is larger than this server accepts\r\n");
                self.out.extend_from_slice(text.as_bytes());
                self.events.push_back(Input::Refused);
            }
            Piece::Continue => self.out.extend_from_slice(b"+ Ready for literal data\r\n"),
            Piece::NotDone => {
                self.events.push_back(Input::NotDone);
                self.swallow_done = true;
            }
        }
    }

    /// Runs imap-next until it needs more input, queueing its events and its output (literal
    /// continuations, AUTHENTICATE and IDLE responses).
    fn drive(&mut self) {
        loop {
            match self.server.next() {
                // The DONE fed in place of a line that was not DONE (see `Piece::NotDone`).
                Ok(Event::IdleDoneReceived) if self.swallow_done => self.swallow_done = false,
                Ok(event) => {
                    if let Some(input) = map_event(event) {
                        self.events.push_back(input);
                    }
                }
                Err(Interrupt::Io(Io::Output(bytes))) => self.out.extend_from_slice(&bytes),
                Err(Interrupt::Io(Io::NeedMoreInput)) => return,
                Err(Interrupt::Error(error)) => {
                    use imap_next::server::Error as E;
                    let input = match error {
                        // Criteria nested deeper than imap-codec reads, written again in
                        // fewer levels (see `search_depth`).
                        E::MalformedMessage { discarded_bytes }
                            if let Some(command) = deeper_search(discarded_bytes.declassify()) =>
                        {
                            Input::Command(command)
                        }
                        E::MalformedMessage { discarded_bytes }
                            if let Some((command, items)) =
                                append_limit_status(discarded_bytes.declassify()) =>
                        {
                            Input::Status { command, items }
                        }
                        E::MalformedMessage { discarded_bytes }
                            if let Some(command) =
                                changed_since_zero(discarded_bytes.declassify()) =>
                        {
                            Input::FetchSinceZero(command)
                        }
                        E::ExpectedCrlfGotLf { discarded_bytes }
                        | E::MalformedMessage { discarded_bytes }
                        | E::LiteralTooLong { discarded_bytes } => {
                            Input::Malformed(tag_of(discarded_bytes.declassify()))
                        }
                        E::CommandTooLong { .. } => Input::TooLong,
                    };
                    self.events.push_back(input);
                }
            }
        }
    }

    /// Queues response bytes; they go out at the next flush (or when the buffer fills). A
    /// piece as large as the buffer goes out at once from where it is (a message's bytes),
    /// after what was queued before it, rather than being copied into the buffer.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        if bytes.len() >= FLUSH_AT {
            self.flush().await?;
            return self.send(bytes).await;
        }
        self.out.extend_from_slice(bytes);
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is buffered. A client that takes none of it for `write_timeout_secs` is
    /// gone (or never reads): the connection ends, rather than holding its slot and its answers in
    /// memory for good.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let out = std::mem::take(&mut self.out);
        let sent = self.send(&out).await;
        self.out = out;
        self.out.clear();
        sent
    }

    /// Writes `data` to the client (see [`Conn::flush`] for the time it may take).
    async fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let stream = self.stream.as_mut().ok_or(ConnError::Closed)?;
        // The time counts from the client's last progress, seen in the socket's send queue:
        // the kernel lets a writer go on only once half its buffer has drained, which for a
        // slow reader can take long while it reads all along.
        let mut watch = Progress::new(stream.raw_fd(), self.write_stall, self.write_deadline);
        let mut sent = 0;
        while sent < data.len() {
            let n = watch.guard(stream.write(&data[sent..])).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            watch.moved();
            sent += n;
        }
        watch.guard(stream.flush()).await
    }

    /// AUTHENTICATE: asks for the (next) client response with an empty challenge.
    pub fn authenticate_continue(&mut self) {
        let request = CommandContinuationRequest::base64(Vec::new());
        let _ = self.server.authenticate_continue(request);
        self.drive();
    }

    /// AUTHENTICATE: the final status; imap-next expects commands again afterwards.
    pub fn authenticate_finish(&mut self, status: Status<'static>) {
        let _ = self.server.authenticate_finish(status);
        self.drive();
    }

    /// IDLE refused (before login, RFC 2177: only in the authenticated states): BAD, and
    /// imap-next expects commands again.
    pub fn idle_reject(&mut self, tag: &str, text: &str) {
        if let Ok(tag) = Tag::try_from(tag.to_owned()) {
            if let Ok(status) = Status::bad(Some(tag), None, text.to_owned()) {
                let _ = self.server.idle_reject(status);
            }
        }
        self.drive();
    }

    pub fn idle_accept(&mut self) {
        if let Ok(request) = CommandContinuationRequest::basic(None, Text::unvalidated("idling")) {
            let _ = self.server.idle_accept(request);
        }
        self.scanner.idling = true;
        self.drive();
    }

    /// STARTTLS (RFC 3501 §6.2.1): the plain socket, for the TLS handshake. Everything
    /// received so far is dropped with the rest of this connection state, so nothing a client
    /// pipelined in plaintext is executed after the handshake.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match self.stream.take() {
            Some(Stream::Plain(tcp)) => Some(tcp),
            other => {
                self.stream = other;
                None
            }
        }
    }

    /// The connection state after a STARTTLS handshake: a fresh protocol state whose greeting
    /// is not sent again (DESIGN.md §4).
    pub fn after_starttls(stream: Stream, greeting: Greeting<'static>, limits: &Limits) -> Conn {
        let mut conn = Conn::new(stream, greeting, limits);
        conn.out.clear();
        conn
    }
}

fn new_server(greeting: Greeting<'static>, limits: &Limits) -> Server {
    let mut options = Options::default();
    options.max_literal_size = limits.max_append;
    options.max_command_size = limits.max_append.saturating_add(limits.max_line as u32 * 2);
    Server::new(options, greeting)
}

fn map_event(event: Event) -> Option<Input> {
    match event {
        Event::GreetingSent { .. } | Event::ResponseSent { .. } => None,
        Event::CommandReceived { command } => Some(Input::Command(command)),
        Event::CommandAuthenticateReceived {
            command_authenticate,
        } => Some(Input::Authenticate(command_authenticate)),
        Event::AuthenticateDataReceived { authenticate_data } => {
            Some(Input::AuthenticateData(authenticate_data))
        }
        Event::IdleCommandReceived { tag } => Some(Input::Idle(tag)),
        Event::IdleDoneReceived => Some(Input::IdleDone),
    }
}

/// A SEARCH command imap-codec refused, parsed again once its criteria are written in fewer
/// levels ([`super::search_depth`]); None when that does not make it one.
fn deeper_search(bytes: &[u8]) -> Option<Command<'static>> {
    use imap_codec::decode::Decoder;
    let again = super::search_depth::rebalanced(bytes)?;
    let (rest, command) = imap_codec::CommandCodec::default()
        .decode_static(&again)
        .ok()?;
    rest.is_empty().then_some(command)
}

/// A STATUS command imap-codec refused because it asks for APPENDLIMIT (RFC 7889 §4: a server
/// that announces APPENDLIMIT takes it as a STATUS item), parsed again with MESSAGES in its
/// place, and the items asked (upper case, in order); None for any other command. The item
/// list is the command's last parenthesis (a mailbox name before it may hold one, quoted).
fn append_limit_status(bytes: &[u8]) -> Option<(Command<'static>, Vec<String>)> {
    use imap_codec::decode::Decoder;
    let body = bytes.strip_suffix(b"\r\n")?;
    let mut words = body.splitn(3, |&b| b == b' ');
    let (_tag, verb) = (words.next()?, words.next()?);
    if !verb.eq_ignore_ascii_case(b"STATUS") {
        return None;
    }
    let open = body.iter().rposition(|&b| b == b'(')?;
    let list = body[open + 1..].strip_suffix(b")")?;
    let items: Vec<String> = std::str::from_utf8(list)
        .ok()?
        .split(' ')
        .map(str::to_ascii_uppercase)
        .collect();
    if !items.iter().any(|i| i == "APPENDLIMIT") {
        return None;
    }
    let mut again = body[..=open].to_vec();
    let parsed: Vec<&str> = items
        .iter()
        .map(|i| if i == "APPENDLIMIT" { "MESSAGES" } else { i })
        .collect();
    again.extend_from_slice(parsed.join(" ").as_bytes());
    again.extend_from_slice(b")\r\n");
    let (rest, command) = imap_codec::CommandCodec::default()
        .decode_static(&again)
        .ok()?;
    rest.is_empty().then_some((command, items))
}

/// A FETCH or UID FETCH imap-codec refused because its modifiers say `CHANGEDSINCE 0`, parsed
/// again with `CHANGEDSINCE 1`; None for any other command. The modifiers are the command's
/// last parenthesis.
fn changed_since_zero(bytes: &[u8]) -> Option<Command<'static>> {
    use imap_codec::decode::Decoder;
    use imap_next::imap_types::command::CommandBody;
    let body = bytes.strip_suffix(b"\r\n")?;
    let open = body.iter().rposition(|&b| b == b'(')?;
    let list = std::str::from_utf8(body[open + 1..].strip_suffix(b")")?).ok()?;
    let mut words: Vec<&str> = list.split(' ').collect();
    let at = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("CHANGEDSINCE"))?;
    let value = words.get_mut(at + 1)?;
    if value.is_empty() || value.bytes().any(|b| b != b'0') {
        return None;
    }
    *value = "1";
    let mut again = body[..=open].to_vec();
    again.extend_from_slice(words.join(" ").as_bytes());
    again.extend_from_slice(b")\r\n");
    let (rest, command) = imap_codec::CommandCodec::default()
        .decode_static(&again)
        .ok()?;
    (rest.is_empty() && matches!(command.body, CommandBody::Fetch { .. })).then_some(command)
}

/// The tag of a discarded command line, when it has a valid one (RFC 3501 §9 tag).
fn tag_of(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == b' ')?;
    let tag = std::str::from_utf8(&bytes[..end]).ok()?;
    Tag::try_from(tag).ok().map(|_| tag.to_owned())
}

/// A piece of scanned input, in client order.
#[derive(Debug)]
enum Piece {
    Feed(Vec<u8>),
    List(Vec<u8>),
    TooBig {
        tag: String,
    },
    /// A synchronising literal of a LIST command was accepted: the client may send it.
    Continue,
    /// A line other than DONE came during IDLE (see [`Input::NotDone`]).
    NotDone,
}

/// Splits input into lines and literals and applies the limits (see the module comment).
struct Scanner {
    line: Vec<u8>,
    literal_left: u64,
    /// Literals in the command being received.
    literals: u32,
    /// The command's first line has been fed; later lines are its continuations.
    continuing: bool,
    /// The command's verb (upper case), from its first line.
    verb: String,
    /// A LIST command with literals, collected whole for the LIST-EXTENDED parser.
    list: Option<Vec<u8>>,
    /// Bytes of the command being received so far, its lines and literals: before login,
    /// `max_line_before_login` bounds them all (review: each literal was held to it on its
    /// own, and a 60 KB ID command of 30 literals passed a limit of 2 KB).
    received: u64,
    /// Input after a complete command received before login, not scanned yet: a client may
    /// pipeline commands behind LOGIN (RFC 3501 §5.5), which are judged by the limits of
    /// the state LOGIN leaves (review: an APPEND literal sent in the same write as LOGIN was
    /// judged by the pre-login limits, and the connection ended).
    held: Vec<u8>,
    /// An IDLE was accepted and its next line not seen yet: it must be DONE.
    idling: bool,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            idling: false,
            line: Vec::new(),
            literal_left: 0,
            literals: 0,
            continuing: false,
            verb: String::new(),
            list: None,
            received: 0,
            held: Vec::new(),
        }
    }

    fn feed(
        &mut self,
        mut bytes: &[u8],
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Vec<Piece>, ConnError> {
        let mut pieces = Vec::new();
        let max_line = if authenticated {
            limits.max_line
        } else {
            limits.max_line_before_login
        };
        while !bytes.is_empty() {
            if self.literal_left > 0 {
                let take = (self.literal_left.min(bytes.len() as u64)) as usize;
                self.pass(&mut pieces, &bytes[..take]);
                self.literal_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            let (chunk, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            bytes = &bytes[chunk.len()..];
            let line_len = self.line.len() + chunk.len();
            if line_len > max_line
                || (!authenticated && self.received + line_len as u64 > max_line as u64)
            {
                return Err(ConnError::LineTooLong);
            }
            self.line.extend_from_slice(chunk);
            if !complete {
                break;
            }
            let line = std::mem::take(&mut self.line);
            self.received += line.len() as u64;
            if !self.continuing {
                self.verb = verb_of(&line);
            }
            match literal_of(&line) {
                Some((size, sync)) => {
                    self.idling = false;
                    self.literals += 1;
                    if self.literals > limits.max_literals {
                        return Err(ConnError::TooManyLiterals);
                    }
                    let limit = if !authenticated {
                        limits.max_line_before_login as u64
                    } else if self.verb == "APPEND" {
                        u64::from(limits.max_append)
                    } else {
                        u64::from(limits.max_literal)
                    };
                    let whole_too_big = !authenticated
                        && self.received.saturating_add(size) > limits.max_line_before_login as u64;
                    if size > limit || whole_too_big {
                        if sync && (!self.continuing || self.list.is_some()) {
                            // Nothing of this command reached imap-next: refuse it whole.
                            let first = self.list.as_deref().unwrap_or(&line);
                            let tag = tag_of(first).unwrap_or_else(|| "*".to_owned());
                            pieces.push(Piece::TooBig { tag });
                            self.reset();
                            if !authenticated {
                                self.held.extend_from_slice(bytes);
                                break;
                            }
                            continue;
                        }
                        return Err(ConnError::LiteralTooBig);
                    }
                    self.literal_left = size;
                    self.received += size;
                    if !self.continuing && self.verb == "LIST" {
                        self.list = Some(Vec::new());
                    }
                    self.continuing = true;
                    self.pass(&mut pieces, &line);
                    if sync && self.list.is_some() {
                        pieces.push(Piece::Continue);
                    }
                }
                // The line after an accepted IDLE: DONE goes on; anything else is answered BAD
                // and the IDLE ends, as Dovecot does (it ended the connection: imap-next
                // waits for DONE and takes nothing else), so DONE goes to imap-next in its
                // place.
                None if self.idling && !self.continuing => {
                    self.idling = false;
                    // DONE in any case, blanks around it taken as lenience, goes on as DONE.
                    if !line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        pieces.push(Piece::NotDone);
                    }
                    push_feed(&mut pieces, b"DONE\r\n");
                    self.reset();
                }
                None => {
                    if let Some(mut whole) = self.list.take() {
                        whole.extend_from_slice(&line);
                        pieces.push(Piece::List(whole));
                    } else if !self.continuing && self.verb == "LIST" {
                        pieces.push(Piece::List(line));
                    } else {
                        push_feed(&mut pieces, &line);
                    }
                    self.reset();
                    if !authenticated {
                        self.held.extend_from_slice(bytes);
                        break;
                    }
                }
            }
        }
        Ok(pieces)
    }

    /// Scans the input held back before login (see [`Scanner::held`]) with the limits of the
    /// state the session is in now; None when nothing is held.
    fn feed_held(
        &mut self,
        limits: &Limits,
        authenticated: bool,
    ) -> Option<Result<Vec<Piece>, ConnError>> {
        if self.held.is_empty() {
            return None;
        }
        let held = std::mem::take(&mut self.held);
        Some(self.feed(&held, limits, authenticated))
    }

    fn reset(&mut self) {
        self.literals = 0;
        self.received = 0;
        self.continuing = false;
        self.verb.clear();
        self.list = None;
    }

    /// Bytes of the command being received: collected when it is a LIST, else fed on.
    fn pass(&mut self, pieces: &mut Vec<Piece>, bytes: &[u8]) {
        match &mut self.list {
            Some(whole) => whole.extend_from_slice(bytes),
            None => push_feed(pieces, bytes),
        }
    }
}

fn push_feed(pieces: &mut Vec<Piece>, bytes: &[u8]) {
    if let Some(Piece::Feed(last)) = pieces.last_mut() {
        last.extend_from_slice(bytes);
    } else {
        pieces.push(Piece::Feed(bytes.to_vec()));
    }
}

/// "tag VERB ..." → "VERB" upper-cased; "tag UID FETCH" → "FETCH". Empty when the tag is
/// not one (RFC 3501 §9: ASTRING-CHARs but "+"): imap-codec answers such a line, which the
/// LIST path, parsed here, took and answered with the bad tag (review: `* LIST ...` was
/// answered `* OK LIST completed`, `+ LIST` with what looked like a continuation request).
fn verb_of(line: &[u8]) -> String {
    let mut words = line
        .split(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .filter(|w| !w.is_empty());
    let tag = words.next().unwrap_or_default();
    let tag_char = |b: &u8| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(b);
    if tag.is_empty() || !tag.iter().all(tag_char) {
        return String::new();
    }
    let mut verb = words.next().unwrap_or_default().to_ascii_uppercase();
    if verb == b"UID" {
        verb = words.next().unwrap_or_default().to_ascii_uppercase();
    }
    String::from_utf8_lossy(&verb).into_owned()
}

/// A line ending in a literal announcement, "{123}" or "{123+}" (RFC 7888), gives its size and
/// whether it is synchronising.
fn literal_of(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Any run of digits is a literal to the parser below, leading zeros and all
    // ("{00000000000000000000067108864}" is 64 MiB): one too long to count is too big.
    let significant = &digits[digits.iter().take_while(|&&b| b == b'0').count()..];
    let n = match significant.len() {
        0 => 0,
        1..=19 => std::str::from_utf8(significant)
            .ok()?
            .parse()
            .unwrap_or(u64::MAX),
        _ => u64::MAX,
    };
    Some((n, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_line: 100,
            max_line_before_login: 40,
            max_literal: 50,
            max_append: 1000,
            max_literals: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_of(b"a APPEND x {12}\r\n"), Some((12, true)));
        assert_eq!(literal_of(b"a APPEND x {12+}\r\n"), Some((12, false)));
        assert_eq!(literal_of(b"a LOGIN {}\r\n"), None);
        assert_eq!(literal_of(b"a NOOP\r\n"), None);
        // Leading zeros count for nothing: this is 64 MiB, not "too long to be a literal".
        assert_eq!(
            literal_of(b"a LOGIN {000000000000000000000067108864}\r\n"),
            Some((67108864, true))
        );
        assert_eq!(
            literal_of(b"a LOGIN {123456789012345678901234567890}\r\n"),
            Some((u64::MAX, true))
        );
        assert_eq!(literal_of(b"a LOGIN {0000}\r\n"), Some((0, true)));
    }

    #[test]
    fn a_literal_with_leading_zeros_before_login_is_too_big() {
        let mut s = Scanner::new();
        let pieces = s
            .feed(b"a1 LOGIN {000000000000000005000}\r\n", &limits(), false)
            .unwrap();
        assert!(
            matches!(&pieces[0], Piece::TooBig { tag } if tag == "a1"),
            "{pieces:?}"
        );
    }

    /// Before login the whole command, its lines and literals, is bounded, not each literal
    /// on its own (review: 30 literals made a 60 KB command past a limit of 2 KB).
    #[test]
    fn before_login_a_command_is_bounded_whole() {
        let sent = b"a1 ID (\"x\" {12+}\r\n123456789012 {12+}\r\n123456789012)\r\n";
        assert!(Scanner::new().feed(sent, &limits(), false).is_err());
        assert!(Scanner::new().feed(sent, &limits(), true).is_ok());
        // A synchronising literal that would take the command past the limit is refused
        // before the client sends it, and the session goes on.
        let pieces = Scanner::new()
            .feed(b"a2 LOGIN {30}\r\n", &limits(), false)
            .unwrap();
        assert!(
            matches!(&pieces[0], Piece::TooBig { tag } if tag == "a2"),
            "{pieces:?}"
        );
    }

    #[test]
    fn commands_behind_a_command_before_login_wait_for_its_outcome() {
        let mut s = Scanner::new();
        let input = b"a1 LOGIN u p\r\na2 APPEND INBOX {500+}\r\n";
        let pieces = s.feed(input, &limits(), false).unwrap();
        assert!(
            matches!(&pieces[..], [Piece::Feed(b)] if b == b"a1 LOGIN u p\r\n"),
            "{pieces:?}"
        );
        // LOGIN taken: the APPEND is judged by the limits after login, and its literal comes.
        let pieces = s.feed_held(&limits(), true).unwrap().unwrap();
        assert!(
            matches!(&pieces[..], [Piece::Feed(b)] if b == b"a2 APPEND INBOX {500+}\r\n"),
            "{pieces:?}"
        );
        assert!(s.feed_held(&limits(), true).is_none());
        // LOGIN refused: the same APPEND is too big for a client not logged in.
        let mut s = Scanner::new();
        s.feed(input, &limits(), false).unwrap();
        assert!(matches!(
            s.feed_held(&limits(), false),
            Some(Err(ConnError::LineTooLong | ConnError::LiteralTooBig))
        ));
    }

    #[test]
    fn oversized_synchronising_literal_is_refused_without_feeding() {
        let mut s = Scanner::new();
        let pieces = s
            .feed(b"a1 APPEND INBOX {5000}\r\nb1 NOOP\r\n", &limits(), true)
            .unwrap();
        assert!(matches!(&pieces[0], Piece::TooBig { tag } if tag == "a1"));
        assert!(matches!(&pieces[1], Piece::Feed(b) if b == b"b1 NOOP\r\n"));
    }

    #[test]
    fn oversized_non_synchronising_literal_ends_the_connection() {
        let mut s = Scanner::new();
        assert!(matches!(
            s.feed(b"a1 APPEND INBOX {5000+}\r\n", &limits(), true),
            Err(ConnError::LiteralTooBig)
        ));
    }

    #[test]
    fn line_limits_depend_on_login() {
        let long = format!("a1 NOOP {}\r\n", "x".repeat(50));
        assert!(Scanner::new()
            .feed(long.as_bytes(), &limits(), true)
            .is_ok());
        assert!(matches!(
            Scanner::new().feed(long.as_bytes(), &limits(), false),
            Err(ConnError::LineTooLong)
        ));
    }

    #[test]
    fn literal_bytes_are_passed_through_and_counted() {
        let mut s = Scanner::new();
        let pieces = s
            .feed(
                b"a1 LOGIN {3}\r\nbob {2}\r\npw\r\nb LIST \"\" *\r\n",
                &limits(),
                false,
            )
            .unwrap();
        assert!(matches!(&pieces[0], Piece::Feed(b) if b == b"a1 LOGIN {3}\r\nbob {2}\r\npw\r\n"));
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        let pieces = s.feed_held(&limits(), false).unwrap().unwrap();
        assert!(matches!(&pieces[0], Piece::List(b) if b == b"b LIST \"\" *\r\n"));
        // A line whose tag is none goes to imap-codec, which answers it.
        for bad in [
            &b"* LIST \"\" *\r\n"[..],
            b"+ LIST \"\" *\r\n",
            b"a%b LIST \"\" *\r\n",
        ] {
            let pieces = Scanner::new().feed(bad, &limits(), true).unwrap();
            assert!(matches!(&pieces[..], [Piece::Feed(_)]), "{bad:?}");
        }
        let mut s = Scanner::new();
        let pieces = s.feed(b"c LIST () {1}\r\n", &limits(), true).unwrap();
        assert!(matches!(&pieces[..], [Piece::Continue]));
        let pieces = s.feed(b"x %\r\nd NOOP\r\n", &limits(), true).unwrap();
        assert!(matches!(&pieces[0], Piece::List(b) if b == b"c LIST () {1}\r\nx %\r\n"));
        assert!(matches!(&pieces[1], Piece::Feed(b) if b == b"d NOOP\r\n"));
        let pieces = s
            .feed(b"e LIST {1+}\r\nx {500}\r\nf NOOP\r\n", &limits(), true)
            .unwrap();
        assert!(matches!(&pieces[0], Piece::TooBig { tag } if tag == "e"));
        assert!(matches!(&pieces[1], Piece::Feed(b) if b == b"f NOOP\r\n"));
        let mut s = Scanner::new();
        assert!(matches!(
            s.feed(b"a1 X {1}\r\na {1}\r\nb {1}\r\nc\r\n", &limits(), true),
            Err(ConnError::TooManyLiterals)
        ));
    }
}
