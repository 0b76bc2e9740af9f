//! One IMAP session: the state (RFC 3501 §3) as an enum that carries its data, one gate that
//! says which commands each state allows, the command loop, and the mapping of every error onto
//! OK/NO/BAD/BYE in one place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::{Command, CommandBody};
use imap_next::imap_types::core::Text;
use imap_next::imap_types::response::{Greeting, Status};
use imap_next::imap_types::secret::Secret;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::{Conn, ConnError, Input, Stream};
use super::names::NameError;
use super::render::Out;
use super::{auth, Shared, TlsMode};
use crate::store::{AccountId, Mailbox, StoreError};

// One State per connection, most of them Selected: boxing the large variant would save
// nothing and cost an allocation per SELECT.
#[allow(clippy::large_enum_variant)]
pub(super) enum State {
    NotAuthenticated,
    Authenticated(User),
    Selected(User, Selected),
    Logout,
}

#[derive(Clone)]
pub(super) struct User {
    pub name: String,
    pub account: AccountId,
}

/// The selected mailbox as this session sees it.
pub(super) struct Selected {
    pub mailbox: Mailbox,
    pub read_only: bool,
    /// The session's UIDs in sequence-number order (RFC 3501 §2.3.1.2).
    pub uids: Vec<u32>,
    /// UID ranges this session claimed as \Recent.
    pub recent: Vec<(u32, u32)>,
    /// The highest MODSEQ the session has been told about.
    pub modseq: u64,
    /// Changes this session made itself and already reported: uid → modseq.
    pub own: HashMap<u32, u64>,
    /// Every change from `modseq` up to this one is in `own`: where the search for a change
    /// the session has not heard of starts, so that one over 50,000 own changes is not made
    /// again at every command ([`Session::catch_up`]).
    pub own_through: u64,
    /// The keywords the session's last FLAGS response named.
    pub keywords: Vec<String>,
}

impl Selected {
    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|(lo, hi)| (*lo..*hi).contains(&uid))
    }

    /// Adds a UID range to the \Recent ones, joined to the last when they meet (claims follow
    /// each other): a session that sees new mail all day keeps one range, not one per
    /// delivery, each of which every FETCH would have to look through.
    pub fn add_recent(&mut self, range: (u32, u32)) {
        add_range(&mut self.recent, range);
    }

    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }

    /// Adds the keywords among `flags` the session's FLAGS did not name; true when there
    /// was one (new FLAGS and PERMANENTFLAGS are due).
    pub fn learn_keywords<'a>(&mut self, flags: impl Iterator<Item = &'a str>) -> bool {
        let mut fresh = false;
        for flag in flags {
            if !flag.starts_with('\\')
                && !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(flag))
            {
                self.keywords.push(flag.to_string());
                fresh = true;
            }
        }
        fresh
    }
}

/// Changed messages read per round trip while looking for one the session has not heard of.
const CHANGE_ROWS: usize = 4096;

/// How a command ended, before it is rendered as a tagged response.
pub(super) enum Done {
    Ok { code: Option<String>, text: String },
}

impl Done {
    pub fn ok(text: impl Into<String>) -> Done {
        Done::Ok {
            code: None,
            text: text.into(),
        }
    }

    pub fn ok_code(code: impl Into<String>, text: impl Into<String>) -> Done {
        Done::Ok {
            code: Some(code.into()),
            text: text.into(),
        }
    }
}

/// Every way a command can fail; mapped onto NO/BAD/BYE in [`Session::finish`].
#[derive(Debug, Error)]
pub(super) enum CmdError {
    #[error("{text}")]
    No {
        code: Option<&'static str>,
        text: String,
    },
    #[error("{0}")]
    Bad(String),
    #[error("mailbox does not exist")]
    NoMailbox,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl CmdError {
    pub fn no(code: Option<&'static str>, text: impl Into<String>) -> CmdError {
        CmdError::No {
            code,
            text: text.into(),
        }
    }

    pub fn bad(text: impl Into<String>) -> CmdError {
        CmdError::Bad(text.into())
    }
}

pub(super) type CmdResult = Result<Done, CmdError>;

pub(super) struct Session {
    /// When a connection that has not logged in is closed.
    pub login_deadline: tokio::time::Instant,
    pub shared: Arc<Shared>,
    pub conn: Conn,
    pub state: State,
    pub mode: TlsMode,
    pub tls: bool,
    pub loopback: bool,
    pub peer: SocketAddr,
    pub bad_commands: u32,
    pub auth_failures: u32,
    pub condstore: bool,
    pub qresync: bool,
    /// The items of a STATUS command with APPENDLIMIT, which imap-codec does not parse (see
    /// `Input::Status`), while that command runs.
    pub status_items: Option<Vec<String>>,
    /// The FETCH running said `CHANGEDSINCE 0` (see `Input::FetchSinceZero`).
    pub since_zero: bool,
    /// Turns true when the server stops: an IDLE in hand ends with BYE at once.
    pub shutdown: watch::Receiver<bool>,
}

fn greeting(text: &'static str) -> Greeting<'static> {
    Greeting::ok(None, text).unwrap_or_else(|_| {
        Greeting::ok(None, "sealpost ready").expect("a plain ASCII greeting is valid")
    })
}

/// Answers a connection over the limit with BYE (RFC 3501 §7.1.5) and closes it.
pub(super) async fn refuse(tcp: TcpStream, mode: TlsMode, shared: Arc<Shared>) {
    use tokio::io::AsyncWriteExt;
    let line = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
    match mode {
        TlsMode::Starttls => {
            let mut tcp = tcp;
            let _ = tcp.write_all(line).await;
        }
        TlsMode::Implicit => {
            let handshake = tokio::time::timeout(Duration::from_secs(10), shared.tls.accept(tcp));
            if let Ok(Ok(mut tls)) = handshake.await {
                let _ = tls.write_all(line).await;
                let _ = tls.shutdown().await;
            }
        }
    }
}

/// The longest a TLS handshake may take (within the time to log in).
const HANDSHAKE_TIME: Duration = Duration::from_secs(30);

pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    mode: TlsMode,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    // From the connection on: a TLS handshake dribbled out counts against the time to log in
    // (review: it came before, and a connection held a place for 90 s without logging in).
    let login_deadline =
        tokio::time::Instant::now() + Duration::from_secs(shared.config.limits.login_timeout_secs);
    let stream = match mode {
        TlsMode::Starttls => Stream::Plain(tcp),
        TlsMode::Implicit => {
            let handshake = tokio::time::timeout_at(
                login_deadline.min(tokio::time::Instant::now() + HANDSHAKE_TIME),
                shared.tls.accept(tcp),
            );
            match handshake.await {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "imap: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let tls = matches!(stream, Stream::Tls(_));
    let conn = Conn::new(
        stream,
        greeting("sealpost IMAP ready"),
        &shared.config.limits,
    );
    let mut session = Session {
        login_deadline,
        loopback: peer.ip().is_loopback(),
        shared,
        conn,
        state: State::NotAuthenticated,
        mode,
        tls,
        peer,
        bad_commands: 0,
        auth_failures: 0,
        condstore: false,
        qresync: false,
        status_items: None,
        since_zero: false,
        shutdown: shutdown.clone(),
    };
    session.conn.write_deadline = Some(session.login_deadline);
    tracing::debug!(%peer, "imap: connected");
    match session.run(shutdown).await {
        Ok(()) | Err(ConnError::Closed) => {}
        Err(error) => tracing::info!(%peer, %error, "imap: connection ended"),
    }
}

impl Session {
    fn authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_) | State::Selected(..))
    }

    /// LOGINDISABLED (RFC 3501 §6.2.3): no password over plaintext, except on loopback when
    /// the configuration allows it.
    pub fn login_allowed(&self) -> bool {
        self.tls || (self.loopback && self.shared.config.allow_plaintext_loopback)
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), ConnError> {
        loop {
            if matches!(self.state, State::Logout) {
                self.conn.flush().await?;
                return Ok(());
            }
            // Commands already read count against the login time too (a client that sent
            // thousands at once).
            if !self.authenticated() && tokio::time::Instant::now() >= self.login_deadline {
                self.bye("Autologout; not logged in in time").await;
                return Ok(());
            }
            let input = match self.conn.next_queued() {
                Some(input) => input,
                None => {
                    self.conn.flush().await?;
                    let limits = &self.shared.config.limits;
                    // Once logged in, the time since the last input; before, the time since
                    // the connection came, however busy the client keeps it (a NOOP every
                    // few seconds would hold a connection slot for good).
                    let authenticated = self.authenticated();
                    let until = if authenticated {
                        tokio::time::Instant::now() + Duration::from_secs(limits.autologout_secs)
                    } else {
                        self.login_deadline
                    };
                    if !authenticated && tokio::time::Instant::now() >= until {
                        self.bye("Autologout; not logged in in time").await;
                        return Ok(());
                    }
                    tokio::select! {
                        filled = self.conn.fill(limits, authenticated) => {
                            if let Err(error) = filled {
                                return self.fatal(error).await;
                            }
                        }
                        _ = shutdown.changed() => {
                            self.bye("Server shutting down").await;
                            return Ok(());
                        }
                        _ = tokio::time::sleep_until(until) => {
                            self.bye(if authenticated {
                                "Autologout; idle for too long"
                            } else {
                                "Autologout; not logged in in time"
                            })
                            .await;
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            self.input(input).await?;
        }
    }

    /// Limits broken while reading end the connection with a BYE that says which.
    async fn fatal(&mut self, error: ConnError) -> Result<(), ConnError> {
        let text = match &error {
            ConnError::LineTooLong => "[TOOBIG] Command line too long",
            ConnError::LiteralTooBig => "[TOOBIG] Literal too big",
            ConnError::TooManyLiterals => "Too many literals in one command",
            ConnError::Closed | ConnError::Io(_) => return Err(error),
        };
        tracing::info!(peer = %self.peer, %error, "imap: closing connection");
        self.bye(text).await;
        Ok(())
    }

    pub(super) async fn bye(&mut self, text: &str) {
        let mut out = Out::default();
        out.text("* BYE ").text(text).crlf();
        let _ = self.conn.write(&out.bytes).await;
        let _ = self.conn.flush().await;
        self.state = State::Logout;
    }

    async fn input(&mut self, input: Input) -> Result<(), ConnError> {
        match input {
            Input::Command(command) => self.command(command).await,
            Input::Status { command, items } => {
                self.status_items = Some(items);
                let done = self.command(command).await;
                self.status_items = None;
                done
            }
            Input::FetchSinceZero(command) => {
                self.since_zero = true;
                let done = self.command(command).await;
                self.since_zero = false;
                done
            }
            Input::List(line) => {
                let tag = super::list::tag(&line);
                let result = self.list_line(&line).await;
                self.finish(&tag, result, true).await
            }
            Input::Authenticate(request) => {
                let tag = request.tag.inner().to_owned();
                self.authenticate(tag, request.mechanism, request.initial_response)
                    .await
            }
            Input::AuthenticateData(_) | Input::IdleDone | Input::NotDone => {
                // Only expected inside AUTHENTICATE or IDLE, which read them themselves.
                self.count_bad().await
            }
            Input::Idle(tag) if !self.authenticated() => {
                // RFC 2177: IDLE only after login; accepted, it would hold a connection slot
                // past the login timeout.
                self.conn.idle_reject(tag.inner(), "Log in first");
                self.count_bad().await
            }
            Input::Idle(tag) => self.idle(tag.inner().to_owned()).await,
            Input::Malformed(tag) => {
                let mut out = Out::default();
                out.status(tag.as_deref().unwrap_or("*"), "BAD", None, "Syntax error");
                self.conn.write(&out.bytes).await?;
                self.count_bad().await
            }
            Input::Refused => Ok(()),
            Input::TooLong => self.fatal(ConnError::LineTooLong).await,
        }
    }

    /// Before login, repeated bad commands end the connection (a scanner or a confused peer).
    async fn count_bad(&mut self) -> Result<(), ConnError> {
        if !self.authenticated() {
            self.bad_commands += 1;
            if self.bad_commands > self.shared.config.limits.max_bad_commands {
                self.bye("Too many bad commands").await;
            }
        }
        Ok(())
    }

    async fn command(&mut self, command: Command<'static>) -> Result<(), ConnError> {
        let tag = command.tag.inner().to_owned();
        let name = command.body.name();
        tracing::trace!(peer = %self.peer, %tag, command = name, "imap: command");
        // One sealpost does not implement is that in any state once logged in (review: SORT
        // was "not allowed without a selected mailbox", and after a SELECT "not supported").
        if self.authenticated() && !implemented(&command.body) {
            let result = Err(CmdError::bad(format!("{name} is not supported")));
            return self.finish(&tag, result, false).await;
        }
        if !self.allowed(&command.body) {
            let state = match (&self.state, &command.body) {
                (State::NotAuthenticated, _) => "before login",
                // LOGIN, AUTHENTICATE and STARTTLS: once logged in, whatever is selected.
                (
                    _,
                    CommandBody::Login { .. }
                    | CommandBody::Authenticate { .. }
                    | CommandBody::StartTLS,
                ) => "after login",
                (State::Authenticated(_), _) => "without a selected mailbox",
                _ => "in this state",
            };
            let result = Err(CmdError::bad(format!("{name} is not allowed {state}")));
            return self.finish(&tag, result, false).await;
        }
        // Non-UID FETCH, STORE and SEARCH must not be answered with EXPUNGE (RFC 3501 §7.4.1).
        let expunges_allowed = !matches!(
            command.body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
        );
        if let CommandBody::StartTLS = command.body {
            return self.starttls(tag).await;
        }
        let result = self.dispatch(&tag, command.body).await;
        self.finish(&tag, result, expunges_allowed).await
    }

    /// The gate: which commands each state allows (RFC 3501 §6).
    fn allowed(&self, body: &CommandBody<'_>) -> bool {
        if any_state(body) {
            return true;
        }
        let not_authenticated = not_authenticated(body);
        match self.state {
            State::NotAuthenticated => not_authenticated,
            State::Authenticated(_) => authenticated(body),
            State::Selected(..) => !not_authenticated,
            State::Logout => false,
        }
    }

    async fn dispatch(&mut self, tag: &str, body: CommandBody<'static>) -> CmdResult {
        use CommandBody as C;
        match body {
            C::Capability => {
                let line = format!("* CAPABILITY {}\r\n", self.capabilities());
                self.conn.write(line.as_bytes()).await?;
                Ok(Done::ok("CAPABILITY completed"))
            }
            C::Noop | C::Check => Ok(Done::ok(format!("{} completed", body.name()))),
            C::Logout => {
                self.conn.write(b"* BYE Logging out\r\n").await?;
                let mut out = Out::default();
                out.status(tag, "OK", None, "LOGOUT completed");
                self.conn.write(&out.bytes).await?;
                self.state = State::Logout;
                Err(CmdError::Conn(ConnError::Closed))
            }
            C::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let password = password.declassify().as_ref().to_vec();
                self.login(&user, &password).await
            }
            C::Id { .. } => {
                let version = env!("CARGO_PKG_VERSION");
                let line = format!("* ID (\"name\" \"sealpost\" \"version\" \"{version}\")\r\n");
                self.conn.write(line.as_bytes()).await?;
                Ok(Done::ok("ID completed"))
            }
            C::Enable { capabilities } => self.enable(capabilities.as_ref()).await,
            C::Namespace => {
                self.conn
                    .write(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n")
                    .await?;
                Ok(Done::ok("NAMESPACE completed"))
            }
            C::Select {
                mailbox,
                parameters,
            } => self.select(mailbox, parameters, false).await,
            C::Examine {
                mailbox,
                parameters,
            } => self.select(mailbox, parameters, true).await,
            C::Create { mailbox } => self.create(mailbox).await,
            C::Delete { mailbox } => self.delete(mailbox).await,
            C::Rename { from, to } => self.rename(from, to).await,
            C::Subscribe { mailbox } => self.subscribe(mailbox, true).await,
            C::Unsubscribe { mailbox } => self.subscribe(mailbox, false).await,
            C::List {
                reference,
                mailbox_wildcard,
            } => self.list_basic(reference, mailbox_wildcard, false).await,
            C::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list_basic(reference, mailbox_wildcard, true).await,
            C::Status {
                mailbox,
                item_names,
            } => self.status(mailbox, item_names.as_ref()).await,
            C::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(mailbox, flags, date, message).await,
            C::Unselect => {
                self.close(false).await;
                Ok(Done::ok("UNSELECT completed"))
            }
            C::Close => {
                // RFC 3501 §6.4.2 allows no NO: a failed expunge is said in an untagged NO
                // (as Dovecot does), and the mailbox is closed all the same.
                if let Some(error) = self.close(true).await {
                    let (_, code, text) = describe(&CmdError::Store(error));
                    let mut out = Out::default();
                    out.status("*", "NO", code, &format!("Messages not expunged: {text}"));
                    self.conn.write(&out.bytes).await?;
                }
                Ok(Done::ok("CLOSE completed"))
            }
            C::Expunge => self.expunge(None).await,
            C::ExpungeUid { sequence_set } => self.expunge(Some(sequence_set)).await,
            C::Search {
                charset,
                criteria,
                uid,
            } => self.search(charset, criteria, uid).await,
            C::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(sequence_set, macro_or_item_names, uid, modifiers)
                    .await
            }
            C::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store(sequence_set, kind, response, flags, uid, modifiers)
                    .await
            }
            C::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(sequence_set, mailbox, uid, false).await,
            C::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(sequence_set, mailbox, uid, true).await,
            C::StartTLS | C::Authenticate { .. } | C::Idle => {
                Err(CmdError::bad("unexpected command"))
            }
            other => Err(CmdError::bad(format!("{} is not supported", other.name()))),
        }
    }

    /// The tagged response, after the untagged updates the session owes the client.
    pub(super) async fn finish(
        &mut self,
        tag: &str,
        result: CmdResult,
        expunges_allowed: bool,
    ) -> Result<(), ConnError> {
        if let Err(CmdError::Conn(error)) = result {
            if matches!(self.state, State::Logout) {
                self.conn.flush().await?;
                return Ok(());
            }
            return Err(error);
        }
        // The selected mailbox deleted by another session: the client is told and the
        // connection ends after this answer, as Dovecot does, rather than answering every
        // later command with nothing.
        let mut deleted = false;
        let mut held_back = None;
        match self.catch_up(expunges_allowed).await {
            Ok(highest) => held_back = highest,
            Err(CmdError::Store(StoreError::NoMailbox(_))) => deleted = true,
            Err(error) => {
                tracing::warn!(peer = %self.peer, %error, "imap: cannot read mailbox changes")
            }
        }
        let mut out = Out::default();
        // The held-back HIGHESTMODSEQ goes in the tagged OK, or, where that has a code of its
        // own ([MODIFIED], [EXPUNGEISSUED]) or the command failed, in an untagged OK before it.
        let tagged_free = matches!(&result, Ok(Done::Ok { code: None, .. }));
        if let (Some(m), false) = (held_back, tagged_free) {
            out.text("* OK [HIGHESTMODSEQ ")
                .num(m)
                .text("] Some changes are not reported yet")
                .crlf();
        }
        match result {
            Ok(Done::Ok { code, text }) => {
                let code = code.or_else(|| held_back.map(|m| format!("HIGHESTMODSEQ {m}")));
                out.status(tag, "OK", code.as_deref(), &text);
            }
            Err(error) => {
                let (kind, code, text) = describe(&error);
                if kind == "BAD" {
                    self.count_bad().await?;
                }
                // The store failing (SERVERBUG, a full disk, a mailbox out of UIDs) is the
                // administrator's to see; a client's own mistake answered from the store (a
                // mailbox that exists already or not at all, the keyword limit) is not
                // (review: clients create Sent, Drafts and Trash at every start, each an ERROR
                // line naming the mailbox).
                if matches!(error, CmdError::Store(_) | CmdError::Join(_)) {
                    let user = self.user().map(|u| u.name.clone()).unwrap_or_default();
                    let admin = matches!(code, Some("SERVERBUG" | "OVERQUOTA"))
                        || matches!(error, CmdError::Store(StoreError::UidsExhausted(_)));
                    if admin {
                        tracing::error!(peer = %self.peer, %user, %error, "imap: command failed");
                    } else if code == Some("INUSE") {
                        tracing::warn!(peer = %self.peer, %user, %error, "imap: command waited");
                    } else {
                        tracing::debug!(peer = %self.peer, %user, %error, "imap: command refused");
                    }
                }
                out.status(tag, kind, code, &text);
            }
        }
        self.conn.write(&out.bytes).await?;
        if deleted {
            self.bye_mailbox_deleted().await;
        }
        Ok(())
    }

    /// The selected mailbox was deleted by another session: the client is told and the
    /// connection ends, as with Dovecot.
    pub(super) async fn bye_mailbox_deleted(&mut self) {
        tracing::info!(peer = %self.peer, "imap: the selected mailbox was deleted");
        self.bye("Selected mailbox was deleted, have to disconnect")
            .await;
    }

    /// Tells the client what other sessions (and the sync) changed in the selected mailbox:
    /// EXPUNGE (or VANISHED with QRESYNC), EXISTS and RECENT, FETCH FLAGS — in that order,
    /// so sequence numbers stay right in both sessions.
    ///
    /// Where expunges may not be reported (non-UID FETCH, STORE, SEARCH), nothing is, and it
    /// returns the HIGHESTMODSEQ the tagged OK must carry when a change is held back and
    /// CONDSTORE is on: MODSEQ values above it may have gone out, and a client that took the
    /// highest of them for its mark would never learn of the expunge or the flag change
    /// (RFC 7162 §3.2.10).
    pub(super) async fn catch_up(
        &mut self,
        expunges_allowed: bool,
    ) -> Result<Option<u64>, CmdError> {
        let State::Selected(_, selected) = &self.state else {
            return Ok(None);
        };
        if !expunges_allowed {
            if !self.condstore {
                return Ok(None);
            }
            let (mailbox, known) = (selected.mailbox.id, selected.modseq);
            // Other sessions' flag changes (and new messages) wait for the next catch-up too,
            // while this command may show MODSEQs above them (review: a client that kept the
            // highest MODSEQ it saw never heard of a \Flagged set by another session). Only
            // the first of them is looked for, past the session's own (review: every changed
            // row read, 50 ms a command after 50,000 changes, another session's or its own).
            let store = self.shared.store.clone();
            let first_expunge =
                tokio::task::spawn_blocking(move || store.first_expunge_after(mailbox, known))
                    .await??;
            let mut first_change = None;
            let mut cursor = (selected.own_through.max(known), u32::MAX);
            loop {
                let store = self.shared.store.clone();
                let rows = tokio::task::spawn_blocking(move || {
                    store.changes_after(mailbox, cursor, CHANGE_ROWS)
                })
                .await??;
                let State::Selected(_, selected) = &mut self.state else {
                    return Ok(None);
                };
                // One STORE gives all its messages one MODSEQ, some of them perhaps not the
                // session's own (a .SILENT STORE on a message another session had changed):
                // own_through passes a MODSEQ only once all of its messages were seen own
                // (review: it passed one at its first own message, and the other session's
                // change at that MODSEQ was never capped).
                for &(uid, modseq) in &rows {
                    if selected.own.get(&uid) == Some(&modseq) {
                        selected.own_through = selected.own_through.max(modseq - 1);
                    } else {
                        first_change = Some(modseq);
                        break;
                    }
                }
                let Some(&(last_uid, last_modseq)) = rows.last() else {
                    break;
                };
                if first_change.is_some() {
                    break;
                }
                if rows.len() < CHANGE_ROWS {
                    selected.own_through = selected.own_through.max(last_modseq);
                    break;
                }
                cursor = (last_modseq, last_uid);
            }
            return Ok(first_expunge
                .into_iter()
                .chain(first_change)
                .min()
                .map(|m| m - 1));
        }
        let store = self.shared.store.clone();
        let (mailbox, known, read_only) =
            (selected.mailbox.id, selected.modseq, selected.read_only);
        let changes =
            tokio::task::spawn_blocking(move || store.changes_since(mailbox, known)).await??;
        if changes.highestmodseq <= known {
            return Ok(None);
        }
        let claimed = if read_only {
            let store = self.shared.store.clone();
            Some(tokio::task::spawn_blocking(move || store.recent_range(mailbox)).await??)
        } else if changes
            .rows
            .iter()
            .any(|(uid, ..)| Some(uid) > self.view_last().as_ref())
        {
            let store = self.shared.store.clone();
            Some(tokio::task::spawn_blocking(move || store.claim_recent(mailbox)).await??)
        } else {
            None
        };
        let State::Selected(_, selected) = &mut self.state else {
            return Ok(None);
        };
        let mut out = Out::default();
        // Expunges first, each numbered against the view as it is at that moment.
        let gone: Vec<u32> = changes
            .expunged
            .iter()
            .copied()
            .filter(|u| selected.uids.binary_search(u).is_ok())
            .collect();
        if self.qresync && !gone.is_empty() {
            out.text("* VANISHED ")
                .text(&super::render::sequence_set(&gone))
                .crlf();
            selected.uids.retain(|u| gone.binary_search(u).is_err());
        } else {
            for uid in &gone {
                if let Ok(i) = selected.uids.binary_search(uid) {
                    out.text("* ").num(i + 1).text(" EXPUNGE").crlf();
                    selected.uids.remove(i);
                }
            }
        }
        let last = selected.uids.last().copied().unwrap_or(0);
        let new: Vec<u32> = changes
            .rows
            .iter()
            .map(|r| r.0)
            .filter(|&u| u > last)
            .collect();
        if let Some(range) = claimed {
            selected.add_recent(range);
        }
        if !new.is_empty() {
            selected.uids.extend(&new);
            let recent = selected
                .uids
                .iter()
                .filter(|&&u| selected.is_recent(u))
                .count();
            out.text("* ")
                .num(selected.uids.len())
                .text(" EXISTS")
                .crlf();
            out.text("* ").num(recent).text(" RECENT").crlf();
        }
        // A keyword new to the mailbox (set here or by another session) comes with new FLAGS
        // and PERMANENTFLAGS before the messages that carry it (RFC 3501 §7.2.6): clients
        // build their list of tags from them.
        if selected.learn_keywords(changes.rows.iter().flat_map(|(_, flags, _)| flags.iter())) {
            out.flags_lists(&selected.keywords, read_only);
        }
        for (uid, flags, modseq) in &changes.rows {
            if *uid > last || selected.own.get(uid) == Some(modseq) {
                continue;
            }
            let Some(seq) = selected.seq_of(*uid) else {
                continue;
            };
            let recent = selected.is_recent(*uid).then_some("\\Recent");
            let modseq = self.condstore.then_some(*modseq);
            out.flags_fetch(seq, *uid, flags.iter().chain(recent), modseq);
        }
        selected.own.clear();
        selected.modseq = changes.highestmodseq;
        selected.own_through = changes.highestmodseq;
        self.conn.write(&out.bytes).await?;
        Ok(None)
    }

    fn view_last(&self) -> Option<u32> {
        match &self.state {
            State::Selected(_, s) => Some(s.uids.last().copied().unwrap_or(0)),
            _ => None,
        }
    }

    pub(super) fn user(&self) -> Option<&User> {
        match &self.state {
            State::Authenticated(user) | State::Selected(user, _) => Some(user),
            _ => None,
        }
    }

    pub(super) fn selected(&mut self) -> Result<&mut Selected, CmdError> {
        match &mut self.state {
            State::Selected(_, selected) => Ok(selected),
            _ => Err(CmdError::bad("no mailbox selected")),
        }
    }

    /// Leaves the selected mailbox; CLOSE also expunges (RFC 3501 §6.4.2) silently. Returns
    /// why the expunge failed, if it did.
    async fn close(&mut self, expunge: bool) -> Option<StoreError> {
        let State::Selected(user, selected) = std::mem::replace(&mut self.state, State::Logout)
        else {
            return None;
        };
        let mut failed = None;
        if expunge && !selected.read_only {
            let store = self.shared.store.clone();
            let id = selected.mailbox.id;
            // As EXPUNGE: only the messages this session knows of (review: CLOSE removed one
            // another session had just stored with \Deleted).
            let known = selected.uids.clone();
            let expunged = tokio::task::spawn_blocking(move || {
                store.expunge(id, Some(&known), crate::store::Origin::Client)
            })
            .await;
            if let Ok(Err(error)) = expunged {
                tracing::warn!(%error, "imap: CLOSE could not expunge");
                failed = Some(error);
            }
        }
        self.state = State::Authenticated(user);
        failed
    }

    pub fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"];
        if !self.authenticated() {
            if !self.tls && self.mode == TlsMode::Starttls {
                caps.push("STARTTLS");
            }
            caps.push(if self.login_allowed() {
                "AUTH=PLAIN"
            } else {
                "LOGINDISABLED"
            });
            return caps.join(" ");
        }
        caps.extend([
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "CONDSTORE",
            "QRESYNC",
            "STATUS=SIZE",
        ]);
        format!(
            "{} APPENDLIMIT={}",
            caps.join(" "),
            self.shared.config.limits.max_append
        )
    }

    async fn starttls(&mut self, tag: String) -> Result<(), ConnError> {
        if self.tls || self.mode != TlsMode::Starttls || self.authenticated() {
            let result = Err(CmdError::bad("STARTTLS is not available here"));
            return self.finish(&tag, result, false).await;
        }
        let mut out = Out::default();
        out.status(&tag, "OK", None, "Begin TLS negotiation now");
        self.conn.write(&out.bytes).await?;
        self.conn.flush().await?;
        let limits = self.shared.config.limits.clone();
        let Some(tcp) = self.conn.take_plain() else {
            return Err(ConnError::Closed);
        };
        // Within the time to log in too (review: a STARTTLS at 55 s held its place to 85 s).
        let until = self
            .login_deadline
            .min(tokio::time::Instant::now() + HANDSHAKE_TIME);
        let tls = tokio::time::timeout_at(until, self.shared.tls.accept(tcp))
            .await
            .map_err(|_| ConnError::Closed)??;
        self.conn = Conn::after_starttls(Stream::Tls(Box::new(tls)), greeting("unused"), &limits);
        self.conn.write_deadline = Some(self.login_deadline);
        self.tls = true;
        Ok(())
    }

    async fn login(&mut self, user: &str, password: &[u8]) -> CmdResult {
        if !self.login_allowed() {
            return Err(CmdError::no(
                Some("PRIVACYREQUIRED"),
                "LOGIN is disabled before TLS; use STARTTLS or the TLS port",
            ));
        }
        // Earlier failures from this address, on any connection, make this one wait first.
        let ip = self.peer.ip();
        let penalty = self.shared.penalties.wait(ip);
        if !penalty.is_zero() {
            tokio::time::sleep(penalty).await;
        }
        let accounts = self.shared.accounts.clone();
        let (user_owned, password) = (user.to_owned(), password.to_vec());
        let found = auth::check_in_turn(accounts, user_owned, password).await;
        match found {
            Some(name) => {
                let store = self.shared.store.clone();
                let account_name = name.clone();
                let account =
                    tokio::task::spawn_blocking(move || store.ensure_account(&account_name))
                        .await??;
                tracing::info!(peer = %self.peer, user = %name, "imap: logged in");
                self.state = State::Authenticated(User { name, account });
                self.conn.write_deadline = None;
                Ok(Done::ok_code(
                    format!("CAPABILITY {}", self.capabilities()),
                    "Logged in",
                ))
            }
            None => {
                self.auth_failures += 1;
                self.shared.penalties.failed(ip);
                // An account's name as it is; any other name is not written down: a password
                // typed into the name field would be (review: LOGIN with the two swapped put
                // the password in the log). Its length says what was tried.
                let shown = if self.shared.accounts.iter().any(|a| a.name == user) {
                    user.to_owned()
                } else {
                    format!("(no such account: {} characters)", user.chars().count())
                };
                tracing::info!(peer = %self.peer, user = ?shown, "imap: authentication failed");
                // The same delay and answer for an unknown user and a wrong password.
                let delay = self.shared.config.limits.auth_failure_delay_ms;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if self.auth_failures >= self.shared.config.limits.max_auth_failures {
                    self.conn.write(b"* BYE Too many failed logins\r\n").await?;
                    self.state = State::Logout;
                }
                Err(CmdError::no(
                    Some("AUTHENTICATIONFAILED"),
                    "Authentication failed",
                ))
            }
        }
    }

    async fn authenticate(
        &mut self,
        tag: String,
        mechanism: AuthMechanism<'static>,
        initial: Option<Secret<std::borrow::Cow<'static, [u8]>>>,
    ) -> Result<(), ConnError> {
        // RFC 3501 §6.2.2: only in the not-authenticated state (review: after LOGIN it was
        // taken, and switched the session to another user).
        let response = if !matches!(self.state, State::NotAuthenticated) {
            Err(CmdError::bad("Already logged in"))
        } else if !matches!(mechanism, AuthMechanism::Plain) {
            Err(CmdError::no(None, "Unsupported mechanism; use PLAIN"))
        } else if !self.login_allowed() {
            Err(CmdError::no(
                Some("PRIVACYREQUIRED"),
                "AUTHENTICATE is disabled before TLS",
            ))
        } else {
            let message = match initial {
                Some(initial) => Ok(initial.declassify().to_vec()),
                None => {
                    self.conn.authenticate_continue();
                    self.read_auth_data().await?
                }
            };
            match message.as_deref().map(auth::parse_plain) {
                Err(why) => Err(CmdError::bad(*why)),
                // Well formed, but for another identity than the one logging in: a failed
                // authentication (RFC 4616 §2), not a syntax error.
                Ok(None) if plain_with_other_authzid(message.as_deref().unwrap_or_default()) => {
                    Err(CmdError::no(
                        Some("AUTHORIZATIONFAILED"),
                        "Authorization as another user is not supported",
                    ))
                }
                // A SASL exchange that fails is a failed authentication, NO (RFC 3501 §6.2.2,
                // RFC 4616 §2), not a syntax error (review: BAD, where Dovecot says NO).
                Ok(None) => Err(CmdError::no(
                    Some("AUTHENTICATIONFAILED"),
                    "Malformed PLAIN message",
                )),
                Ok(Some((user, password))) => self.login(&user, &password).await,
            }
        };
        // imap-next must see the final status to expect commands again.
        let text = match &response {
            Ok(Done::Ok { text, .. }) => text.clone(),
            Err(error) => describe(error).2,
        };
        let text = Text::try_from(text).unwrap_or_else(|_| Text::unvalidated("done"));
        // The response code of a NO (RFC 5530: AUTHENTICATIONFAILED, PRIVACYREQUIRED), as
        // LOGIN gives it.
        let code = match &response {
            Err(error) => describe(error).1.map(|code| {
                imap_next::imap_types::response::Code::Other(
                    imap_next::imap_types::response::CodeOther::unvalidated(code.as_bytes()),
                )
            }),
            Ok(_) => None,
        };
        let status = match &response {
            Ok(_) => Status::ok(Some(tag_of(&tag)), None, text),
            Err(error) if describe(error).0 == "BAD" => Status::bad(Some(tag_of(&tag)), None, text),
            Err(_) => Status::no(Some(tag_of(&tag)), code, text),
        };
        let Ok(status) = status;
        self.conn.authenticate_finish(status);
        if matches!(response, Err(CmdError::Bad(_))) {
            self.count_bad().await?;
        }
        Ok(())
    }

    /// The client's answer to the continuation: the decoded data, or the text of the BAD that
    /// ends the exchange (the client's `*`, or a line that is no base64: RFC 3501 §6.2.2).
    async fn read_auth_data(&mut self) -> Result<Result<Vec<u8>, &'static str>, ConnError> {
        loop {
            if let Some(input) = self.conn.next_queued() {
                return Ok(match input {
                    Input::AuthenticateData(AuthenticateData::Continue(data)) => {
                        Ok(data.declassify().to_vec())
                    }
                    // Said as such (review: "AUTHENTICATE cancelled", as for `*`).
                    Input::Malformed(_) => Err("AUTHENTICATE data is not valid base64"),
                    _ => Err("AUTHENTICATE cancelled"),
                });
            }
            self.conn.flush().await?;
            let limits = &self.shared.config.limits;
            tokio::time::timeout_at(self.login_deadline, self.conn.fill(limits, false))
                .await
                .map_err(|_| ConnError::Closed)??;
        }
    }

    async fn enable(
        &mut self,
        capabilities: &[imap_next::imap_types::extensions::enable::CapabilityEnable<'_>],
    ) -> CmdResult {
        let mut enabled = Vec::new();
        for capability in capabilities {
            let name = capability.to_string().to_ascii_uppercase();
            match name.as_str() {
                "CONDSTORE" => {
                    self.enable_condstore().await?;
                    enabled.push("CONDSTORE");
                }
                "QRESYNC" => {
                    self.enable_condstore().await?;
                    self.qresync = true;
                    enabled.push("QRESYNC");
                }
                _ => {}
            }
        }
        // RFC 5161 §4: "ENABLED" *(SP capability); nothing enabled, no trailing blank.
        let line: String = std::iter::once("* ENABLED")
            .chain(enabled.iter().flat_map(|c| [" ", *c]))
            .chain(["\r\n"])
            .collect();
        self.conn.write(line.as_bytes()).await?;
        Ok(Done::ok("ENABLE completed"))
    }

    /// Turns CONDSTORE on for the session. RFC 7162 §3.1: the first CONDSTORE enabling
    /// command other than SELECT or EXAMINE, with a mailbox selected, tells the HIGHESTMODSEQ
    /// (the one this session has been told about: changes not yet reported stay above it).
    pub(super) async fn enable_condstore(&mut self) -> Result<(), CmdError> {
        if std::mem::replace(&mut self.condstore, true) {
            return Ok(());
        }
        if let State::Selected(_, selected) = &self.state {
            let line = format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", selected.modseq);
            self.conn.write(line.as_bytes()).await?;
        }
        Ok(())
    }

    /// The mailbox a command names, in the session's account.
    pub(super) async fn find_mailbox(&self, wire: &[u8]) -> Result<Mailbox, CmdError> {
        let name = super::names::validate(wire)?;
        let account = self
            .user()
            .ok_or_else(|| CmdError::bad("not logged in"))?
            .account;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.mailbox(account, &name))
            .await??
            .ok_or(CmdError::NoMailbox)
    }
}

fn tag_of(tag: &str) -> imap_next::imap_types::core::Tag<'static> {
    imap_next::imap_types::core::Tag::try_from(tag.to_owned())
        .unwrap_or_else(|_| imap_next::imap_types::core::Tag::unvalidated("x"))
}

/// A PLAIN message that is well formed but names an authorization identity other than the
/// authentication identity.
fn plain_with_other_authzid(message: &[u8]) -> bool {
    let fields: Vec<&[u8]> = message.split(|&b| b == 0).collect();
    matches!(fields.as_slice(), [authzid, authcid, _] if !authzid.is_empty() && !authcid.is_empty() && authzid != authcid)
}

/// Adds `lo..hi` to `ranges`, joined to the last one when they meet or overlap.
fn add_range(ranges: &mut Vec<(u32, u32)>, (lo, hi): (u32, u32)) {
    if lo >= hi {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.1 >= lo && last.0 <= hi => *last = (last.0.min(lo), last.1.max(hi)),
        _ => ranges.push((lo, hi)),
    }
}

/// The one place errors become protocol answers: (kind, response code, text).
fn describe(error: &CmdError) -> (&'static str, Option<&'static str>, String) {
    match error {
        CmdError::No { code, text } => ("NO", *code, text.clone()),
        CmdError::Bad(text) => ("BAD", None, text.clone()),
        CmdError::NoMailbox => ("NO", Some("NONEXISTENT"), "No such mailbox".into()),
        CmdError::Name(e) => ("NO", Some("CANNOT"), e.to_string()),
        CmdError::Store(StoreError::NoMailbox(_)) => {
            ("NO", Some("NONEXISTENT"), "No such mailbox".into())
        }
        CmdError::Store(StoreError::MailboxExists(_)) => {
            ("NO", Some("ALREADYEXISTS"), "Mailbox already exists".into())
        }
        // RFC 9051 §6.3.4: a server that does not delete a name with inferiors says so with
        // HASCHILDREN (§7.1); a client that does not know the code reads a plain NO.
        CmdError::Store(e @ StoreError::HasChildren(_)) => {
            ("NO", Some("HASCHILDREN"), e.to_string())
        }
        CmdError::Store(e @ (StoreError::InboxDelete | StoreError::RenameUnderItself(_))) => {
            ("NO", Some("CANNOT"), e.to_string())
        }
        CmdError::Store(e @ (StoreError::UidsExhausted(_) | StoreError::TooManyKeywords)) => {
            ("NO", Some("LIMIT"), e.to_string())
        }
        // As Dovecot answers a full disk (RFC 5530 has no closer code); nothing was stored.
        CmdError::Store(StoreError::Sql {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        }) if f.code == rusqlite::ErrorCode::DiskFull => (
            "NO",
            Some("OVERQUOTA"),
            "Not enough disk space for the store".into(),
        ),
        // Another process held the store's write lock past the busy timeout (a long import,
        // say): the client may try again (review: SERVERBUG for a SELECT, which marks \Recent).
        CmdError::Store(StoreError::Sql {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        }) if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        ) =>
        {
            (
                "NO",
                Some("INUSE"),
                "The store is in use by another process; try again".into(),
            )
        }
        CmdError::Store(_) | CmdError::Join(_) => (
            "NO",
            Some("SERVERBUG"),
            "Internal error in the store; the error is logged".into(),
        ),
        CmdError::Conn(e) => ("NO", None, e.to_string()),
    }
}

/// Commands allowed in any state.
fn any_state(body: &CommandBody<'_>) -> bool {
    use CommandBody as C;
    matches!(body, C::Capability | C::Noop | C::Logout | C::Id { .. })
}

/// Commands allowed only before login.
fn not_authenticated(body: &CommandBody<'_>) -> bool {
    use CommandBody as C;
    matches!(body, C::StartTLS | C::Login { .. } | C::Authenticate { .. })
}

/// Commands allowed once logged in, with a mailbox selected or not.
fn authenticated(body: &CommandBody<'_>) -> bool {
    use CommandBody as C;
    matches!(
        body,
        C::Select { .. }
            | C::Examine { .. }
            | C::Create { .. }
            | C::Delete { .. }
            | C::Rename { .. }
            | C::Subscribe { .. }
            | C::Unsubscribe { .. }
            | C::List { .. }
            | C::Lsub { .. }
            | C::Status { .. }
            | C::Append { .. }
            | C::Namespace
            | C::Idle
            // RFC 5161 §3.1: only once authenticated.
            | C::Enable { .. }
    )
}

/// The commands [`Session::dispatch`] (and the session loop, for STARTTLS, AUTHENTICATE and
/// IDLE) carry out; others are answered "not supported".
fn implemented(body: &CommandBody<'_>) -> bool {
    use CommandBody as C;
    any_state(body)
        || not_authenticated(body)
        || authenticated(body)
        || matches!(
            body,
            C::Check
                | C::Unselect
                | C::Close
                | C::Expunge
                | C::ExpungeUid { .. }
                | C::Search { .. }
                | C::Fetch { .. }
                | C::Store { .. }
                | C::Copy { .. }
                | C::Move { .. }
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ranges_are_joined() {
        let mut recent = Vec::new();
        for range in [(1, 5), (5, 5), (5, 9), (9, 12)] {
            add_range(&mut recent, range);
        }
        assert_eq!(recent, [(1, 12)]);
        add_range(&mut recent, (20, 21));
        assert_eq!(recent, [(1, 12), (20, 21)]);
    }

    #[test]
    fn a_full_disk_is_answered_as_dovecot_does() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let (kind, code, _) = describe(&CmdError::Store(StoreError::from(full)));
        assert_eq!((kind, code), ("NO", Some("OVERQUOTA")));
    }

    /// A write while another connection holds the write lock: SQLite's own busy error.
    #[test]
    fn a_store_locked_by_another_process_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        let busy = other.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        let (kind, code, text) = describe(&CmdError::Store(StoreError::from(busy)));
        assert_eq!((kind, code), ("NO", Some("INUSE")), "{text}");
        assert!(text.contains("try again"), "{text}");
    }
}
