//! `sealpost milter`: the outgoing core inside Postfix (or Sendmail) through the milter
//! protocol (indymilter). A milter cannot create messages, so at end of message:
//!
//! - one recipient: the message is rewritten in place (header fields and body replaced);
//! - several: the first recipient with a copy keeps the original, rewritten in place; every
//!   other recipient's copy is re-injected over SMTP into a Postfix listener that runs no
//!   milter (loop-proof), recorded in the [`journal`], and only then that recipient is deleted
//!   from the original. A retry after a TEMPFAIL or a crash skips journaled recipients.
//! - anything that fails before the end (GnuPG, the re-injection listener, the deadline) is a
//!   TEMPFAIL: Postfix keeps the original queued and nothing is lost.
//!
//! Recipients refused by policy (encrypt-only without a key) are refused at RCPT over SMTP
//! (550 5.7.1). On Postfix's sendmail path a milter may not refuse single recipients, so they
//! are deleted from the original and the sender gets a report naming each (re-injected from
//! the null sender); when no recipient is left, or under all-or-nothing, the message is
//! rejected with the reason.
//!
//! Inbound (MX) mode, for the services named in `inbound_daemon_names` or for unauthenticated
//! mail to `local_domains`: each local recipient's copy is encrypted to that recipient's key
//! and not signed ([`Policy::inbound`]); mail without a key is delivered as it came or held in
//! Postfix's hold queue; mail already encrypted is passed on, never wrapped again; and every
//! sender-supplied `Sealpost-Verdict` field is removed first, so that nothing downstream can
//! mistake a forged verdict for sealpost's.

pub mod journal;

use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, Status,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::inbound::{strip_field, VERDICT_FIELD};
use crate::keys::Resolution;
use crate::queue::bounce;
use crate::queue::relay::{Dsn, Relay, RelayConfig, RelayTls, Sent};
use crate::rewrite::policy::canonical_domain;
use crate::rewrite::{Copy, Decision, Envelope, Lookup, Mode, Policy, Prepared, Reply, Rewriter};
use journal::Journal;

/// `[milter]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilterConfig {
    /// "inet:HOST:PORT" or "unix:PATH", as in Postfix's smtpd_milters.
    pub listen: String,
    pub max_connections: usize,
    /// The re-injection listener (a Postfix smtpd with `-o smtpd_milters=`), on loopback.
    pub reinject_host: String,
    pub reinject_port: u16,
    /// The journal of re-injected copies.
    pub journal: std::path::PathBuf,
    /// Deadline for the work at end of message, in seconds: under Postfix's
    /// milter_content_timeout (300 s), so that a slow GnuPG is our TEMPFAIL, not Postfix's.
    pub deadline_secs: u64,
    /// The largest message (header and body as the MTA passes them) the milter takes in; a
    /// larger one is refused (552 5.3.4) as its body comes. The milter holds each message in
    /// memory, several times over while it makes the copies.
    pub max_message_bytes: u64,
    /// When the MTA passes an authenticated user ({auth_authen}), the From address must be
    /// that user's: equal to the login when it is an address, else its local part equal to
    /// the login (the seed's validateFrom). Mail without authentication is not affected.
    pub require_auth_from: bool,
    /// Postfix services whose mail is inbound (MX mode) for every recipient: the value of
    /// `milter_macro_daemon_name` given to that service in master.cf.
    pub inbound_daemon_names: Vec<String>,
    /// Domains this host delivers to: unauthenticated mail for a recipient in one of them is
    /// inbound for that recipient.
    pub local_domains: Vec<String>,
    /// Inbound mail for a local recipient without a usable key: delivered as it came, or held
    /// in Postfix's hold queue (`postsuper -H` releases it).
    pub inbound_without_key: WithoutKey,
}

/// `[milter] inbound_without_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WithoutKey {
    #[default]
    Deliver,
    Hold,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: "inet:127.0.0.1:8895".into(),
            max_connections: 100,
            reinject_host: "127.0.0.1".into(),
            reinject_port: 10026,
            journal: "/var/lib/sealpost/milter-journal.sqlite".into(),
            deadline_secs: 240,
            max_message_bytes: 64 << 20,
            require_auth_from: false,
            inbound_daemon_names: Vec::new(),
            local_domains: Vec::new(),
            inbound_without_key: WithoutKey::Deliver,
        }
    }
}

/// What the milter collects during one SMTP transaction.
#[derive(Default)]
struct Transaction {
    sender: String,
    /// {auth_authen}: the SASL login, when the client authenticated.
    login: Option<String>,
    /// {daemon_name}: the Postfix service (milter_macro_daemon_name) the mail came through.
    daemon: Option<String>,
    recipients: Vec<String>,
    /// The DSN parameters of MAIL (RET, ENVID).
    mail_dsn: Dsn,
    /// Each recipient's DSN parameters (MAIL's and its own NOTIFY, ORCPT), for its
    /// re-injected copy.
    dsn: Vec<(String, Dsn)>,
    /// Postfix passed {rcpt_mailer} with a recipient, which it does over SMTP only: a client
    /// is there to hear a rejection.
    smtp: bool,
    header: Vec<u8>,
    /// The header fields as Postfix passed them: (name, occurrence) for deletion.
    names: Vec<String>,
    body: Vec<u8>,
}

/// A milter connection's data: whether Postfix waits for our answer to the steps that never
/// refuse anything, and the message in hand.
#[derive(Default)]
struct Session {
    /// Postfix takes no answer to MAIL, each header and the end of the header (negotiated
    /// when it offers that; libmilter's SMFIP_NR_*): one round trip per header fewer, for
    /// smtpd, cleanup and the milter. Body chunks are still answered: an MTA may send the
    /// last one with the end of the message, and indymilter takes a body step's "no answer"
    /// there as final, so the end of the message would never be answered.
    quiet: bool,
    message: Option<Transaction>,
}

impl Session {
    /// The answer to a step that went on: none when Postfix waits for none.
    fn went_on(&self) -> Status {
        if self.quiet {
            Status::Noreply
        } else {
            Status::Continue
        }
    }
}

/// The steps answered with nothing when the MTA offers all of them (see [`Session::quiet`]).
const QUIET_STEPS: ProtoOpts = ProtoOpts::NOREPLY_MAIL
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH);

impl Transaction {
    /// The DSN parameters of the copy for `recipient` (see [`Dsn::merged`]).
    fn dsn_of(&self, recipient: &str) -> Dsn {
        let named = self
            .dsn
            .iter()
            .filter(|(r, _)| crate::rewrite::same_recipient(r, recipient))
            .map(|(_, d)| d);
        let mut dsn = Dsn::merged(named).unwrap_or_else(|| self.mail_dsn.clone());
        // Postfix's sendmail path passes MAIL without parameters: whether the message is an
        // SMTPUTF8 one is Postfix's to tell by its header (smtputf8_autodetect_classes), as
        // for the copy it keeps in place (review: the re-injected copies lost SMTPUTF8 there).
        if !self.smtp {
            dsn.smtputf8 = None;
        }
        dsn
    }
}

/// Shared by all sessions.
pub struct Milter {
    rewriter: Arc<Rewriter>,
    /// The core with the inbound policy, over the same keys.
    inbound: Rewriter,
    /// The core for reports to the sender ([`Policy::reports`]).
    reports: Rewriter,
    inbound_daemon_names: Vec<String>,
    local_domains: Vec<String>,
    hold_without_key: bool,
    reinject: Relay,
    journal: Journal,
    /// When the journal last forgot old entries (Unix seconds).
    purged_at: std::sync::atomic::AtomicI64,
    deadline: Duration,
    max_message_bytes: usize,
    hostname: String,
    domain: String,
    require_auth_from: bool,
}

impl Milter {
    pub fn new(
        rewriter: Arc<Rewriter>,
        config: &MilterConfig,
        domain: String,
    ) -> Result<Milter, MilterError> {
        let hostname = crate::queue::hostname();
        let reinject = Relay::new(
            &RelayConfig {
                host: Some(config.reinject_host.clone()),
                port: Some(config.reinject_port),
                tls: RelayTls::None,
                ..RelayConfig::default()
            },
            &hostname,
        )
        .map_err(|e| MilterError::Setup(e.to_string()))?
        .passing_dsn()
        .taking_the_mtas_paths();
        let journal =
            Journal::open(&config.journal).map_err(|e| MilterError::Setup(e.to_string()))?;
        Ok(Milter {
            inbound: rewriter.with_policy(Policy::inbound(rewriter.policy())),
            reports: rewriter.with_policy(rewriter.policy().reports()),
            rewriter,
            inbound_daemon_names: config.inbound_daemon_names.clone(),
            local_domains: config
                .local_domains
                .iter()
                .map(|d| canonical_domain(d))
                .collect(),
            hold_without_key: config.inbound_without_key == WithoutKey::Hold,
            reinject,
            journal,
            purged_at: std::sync::atomic::AtomicI64::new(0),
            deadline: Duration::from_secs(config.deadline_secs),
            max_message_bytes: usize::try_from(config.max_message_bytes).unwrap_or(usize::MAX),
            require_auth_from: config.require_auth_from,
            hostname,
            domain,
        })
    }

    /// Forgets journal entries older than [`JOURNAL_KEEP`], at most once an hour: a retry
    /// comes within Postfix's queue lifetime (5 days by default), and an old entry could only
    /// make a later identical message skip a recipient.
    fn purge_journal(&self, now: i64) {
        use std::sync::atomic::Ordering;
        let last = self.purged_at.load(Ordering::Relaxed);
        if now - last < 3600
            || self
                .purged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.journal.purge(now, JOURNAL_KEEP) {
            tracing::warn!("journal: cannot forget old entries: {e}");
        }
    }

    /// Whether `recipient` gets the inbound (MX) treatment in this transaction.
    fn is_inbound(&self, t: &Transaction, recipient: &str) -> bool {
        let service = t
            .daemon
            .as_deref()
            .is_some_and(|d| self.inbound_daemon_names.iter().any(|n| n == d));
        let local = local_recipient(&self.local_domains, recipient);
        inbound_rule(service, t.login.is_some(), local)
    }

    /// The seed's validateTo: an encrypt-only recipient without a usable key is refused at
    /// RCPT. Only a definite "no key" refuses; a failed lookup is left to the end of message,
    /// which defers.
    async fn refusal_at_rcpt(&self, recipient: &str) -> Option<Reply> {
        if self.rewriter.policy().mode_for(recipient) != Mode::EncryptOnly {
            return None;
        }
        match self.rewriter.lookup(recipient).await {
            Lookup::Found(none @ Resolution::NoKey { .. }) => Some(Reply::new(
                550,
                "5.7.1",
                format!("encryption required, {}", none.reason()),
            )),
            _ => None,
        }
    }
}

/// Whether `recipient` is local: in one of `local_domains`, or a plain name without a domain,
/// which is this host's own: RFC 5321 §4.5.1's `<postmaster>`, or a name Postfix completes
/// with $myorigin (review: `<postmaster>` on an MX with local domains got the outgoing
/// treatment, signed by the default signer with the sender's forged verdict field in it, or
/// refused as keyless under encrypt-only). A name without `@` that routes elsewhere
/// (`host!user`, `user%host`, which Postfix rewrites to remote addresses after the milter saw
/// them, or a quoted one) is not local (review). None: no local domains are configured.
fn local_recipient(local_domains: &[String], recipient: &str) -> Option<bool> {
    (!local_domains.is_empty()).then(|| match recipient.rsplit_once('@') {
        Some((_, domain)) => {
            local_domains.contains(&canonical_domain(domain.trim_end_matches('>')))
        }
        None => {
            !recipient.is_empty()
                && !recipient.contains(['!', '%', ':', '"', '\\', ' ', ',', '<', '>', '[', ']'])
        }
    })
}

/// The inbound (MX) treatment is for mail arriving for local recipients, never for mail a
/// submitter sends: an authenticated client keeps the outgoing treatment on every service. With
/// `local_domains` configured (`local`: whether the recipient is in one), only their recipients
/// are inbound, also on a service named in `inbound_daemon_names` (`service`), so that mail the
/// MX service relays elsewhere (for mynetworks, say) still meets the outgoing policy; without
/// local domains, such a service's mail is inbound for every recipient.
fn inbound_rule(service: bool, authenticated: bool, local: Option<bool>) -> bool {
    !authenticated && local.unwrap_or(service)
}

#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("milter: {0}")]
    Setup(String),
    #[error("milter: cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("milter: {0}")]
    Io(#[from] std::io::Error),
}

/// A TCP milter listener whose connections send at once (TCP_NODELAY) and acknowledge at once
/// (TCP_QUICKACK after every read).
///
/// TCP_NODELAY: the milter answers end of message with many small packets (header changes,
/// body chunks, the reply); with Nagle's algorithm and the MTA's delayed ACKs each message
/// waited about 40 ms on the socket (seen with strace in the milter benchmark).
///
/// TCP_QUICKACK: some of the MTA's packets get no answer (macro definitions, and the DATA
/// stage when the milter asks to skip it), and Postfix writes the next packet behind them.
/// With Nagle on Postfix's side that next packet waits for the ACK of the unanswered one,
/// which Linux delays by up to 40 ms: strace of the milter showed a 41 ms gap after each
/// DATA-stage macro packet. Linux turns quick ACKs off again by itself, hence after every
/// read.
pub struct NoDelayListener(pub tokio::net::TcpListener);

impl indymilter::Listener for NoDelayListener {
    type Io = QuickAckStream;

    fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            QuickAckStream(stream)
        })
    }
}

/// A milter connection that asks the kernel for an immediate ACK after every read (see
/// [`NoDelayListener`]).
pub struct QuickAckStream(tokio::net::TcpStream);

impl QuickAckStream {
    fn quick_ack(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket this stream owns, with a c_int option value of the
        // size given. A failure only costs the optimisation.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl tokio::io::AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.quick_ack();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Serves the milter protocol on `listener` until `shutdown` resolves; sessions finish the
/// message in hand (indymilter's shutdown semantics).
pub async fn run(
    listener: impl indymilter::Listener,
    milter: Arc<Milter>,
    max_connections: usize,
    shutdown: impl std::future::Future,
) -> Result<(), MilterError> {
    let callbacks = callbacks(milter);
    let config = indymilter::Config {
        max_connections,
        actions: ACTIONS,
        ..indymilter::Config::default()
    };
    let shutdown = async {
        shutdown.await;
        tracing::info!("milter stopping: no new connections; the messages in hand are finished");
    };
    indymilter::run(listener, callbacks, config, shutdown).await?;
    tracing::info!("milter stopped");
    Ok(())
}

/// What the milter may do to a message.
const ACTIONS: Actions = Actions::ADD_HEADER
    .union(Actions::CHANGE_HEADER)
    .union(Actions::DELETE_RCPT)
    .union(Actions::REPLACE_BODY)
    .union(Actions::QUARANTINE);

/// A MAIL or RCPT path without its angle brackets and its source route (which Postfix drops
/// too: a recipient is deleted by the spelling Postfix keeps).
/// The ESMTP parameters after the address in a MAIL or RCPT argument list.
fn esmtp_arguments(args: &[CString]) -> Vec<String> {
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Postfix's queue id (the `i` macro), or `absent` when the MTA did not pass one (yet).
fn queue_id(macros: &indymilter::Macros, absent: &str) -> String {
    macros
        .get(c"i")
        .map_or_else(|| absent.to_string(), |v| v.to_string_lossy().into_owned())
}

fn bare(arg: &CString) -> String {
    let s = arg.to_string_lossy();
    let s = s.trim();
    crate::rewrite::without_route(
        s.strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(s),
    )
    .to_string()
}

fn callbacks(milter: Arc<Milter>) -> Callbacks<Session> {
    let eom_milter = milter.clone();
    let body_milter = milter.clone();
    let rcpt_milter = milter.clone();
    Callbacks::new()
        .on_negotiate(|cx: &mut NegotiateContext<Session>, actions: Actions, offered: ProtoOpts| {
            Box::pin(async move {
                // indymilter ends such a connection after this, saying why at trace level
                // only; the MTA then applies its milter_default_action (review: nothing in
                // the log told the administrator why).
                if !actions.contains(ACTIONS) {
                    tracing::warn!(
                        "an MTA connected without offering the actions sealpost needs to \
                         rewrite mail (offered {actions:?}, needed {ACTIONS:?}): connection \
                         refused; the MTA applies its milter_default_action"
                    );
                }
                cx.requested_actions = ACTIONS;
                let quiet = offered.contains(QUIET_STEPS);
                if quiet {
                    cx.requested_opts |= QUIET_STEPS;
                }
                cx.data = Some(Session {
                    quiet,
                    message: None,
                });
                // The queue id for the logs (at RCPT too); the SASL login for the From check and the
                // service name for the inbound mode; {rcpt_mailer} tells SMTP from Postfix's
                // sendmail path (Postfix defines it for smtpd_milters only).
                for (stage, macros) in [
                    (MacroStage::Eom, "i"),
                    (MacroStage::Mail, "{auth_authen} {daemon_name}"),
                    (MacroStage::Rcpt, "{rcpt_mailer} i"),
                ] {
                    if let Ok(m) = CString::new(macros) {
                        cx.requested_macros.insert(stage, m);
                    }
                }
                Status::Continue
            })
        })
        .on_mail(|cx: &mut Context<Session>, args| {
            Box::pin(async move {
                let macro_value = |name: &std::ffi::CStr| {
                    cx.macros
                        .get(name)
                        .map(|v| v.to_string_lossy().trim().to_string())
                        .filter(|v| !v.is_empty())
                };
                let login = macro_value(c"{auth_authen}");
                let daemon = macro_value(c"{daemon_name}");
                let mut mail_dsn = Dsn::default();
                mail_dsn.take_mail(&esmtp_arguments(&args));
                let session = cx.data.get_or_insert_with(Session::default);
                session.message = Some(Transaction {
                    sender: args.first().map(bare).unwrap_or_default(),
                    login,
                    daemon,
                    mail_dsn,
                    ..Transaction::default()
                });
                session.went_on()
            })
        })
        .on_rcpt(move |cx: &mut Context<Session>, args| {
            let milter = rcpt_milter.clone();
            Box::pin(async move {
                let Some(recipient) = args.first().map(bare) else {
                    return Status::Continue;
                };
                // Over SMTP only: a non-SMTP milter must not refuse a simulated RCPT (Postfix
                // MILTER_README, "Limitations"); there the refusal becomes a report to the
                // sender at the end of the message.
                let smtp = cx.macros.get(c"{rcpt_mailer}").is_some();
                let inbound = cx
                    .data
                    .as_ref()
                    .and_then(|s| s.message.as_ref())
                    .is_some_and(|t| milter.is_inbound(t, &recipient));
                // A malformed or routing address is refused now rather than reported after
                // the message was accepted (README rule 1), inbound too: no copy could be made
                // for it. An encrypt-only one without a key, for outgoing mail.
                let refusal = match crate::rewrite::address_refusal(&recipient) {
                    Some(reply) => Some(reply),
                    // Looked up as the copy names it (a root dot, a needless quote dropped).
                    None if smtp && !inbound => {
                        let address = crate::rewrite::copy_recipient(&recipient);
                        milter.refusal_at_rcpt(&address).await
                    }
                    None => None,
                };
                if let (true, Some(reply)) = (smtp, refusal) {
                    // Postfix's queue id, as every other decision line has it (review: none
                    // here): defined once a recipient was accepted (Postfix opens the queue
                    // file then); before, NOQUEUE, as Postfix logs such a refusal.
                    let queue_id = queue_id(&cx.macros, "NOQUEUE");
                    tracing::info!(id = %queue_id, rcpt = %recipient, decision = "rejected", detail = %reply, "refused at RCPT");
                    let _ = cx.reply.set_error_reply(
                        &reply.code.to_string(),
                        Some(reply.status),
                        [smtp_text(&reply.text)],
                    );
                    return Status::Reject;
                }
                if let Some(t) = cx.data.as_mut().and_then(|s| s.message.as_mut()) {
                    let mut dsn = t.mail_dsn.clone();
                    dsn.take_rcpt(&esmtp_arguments(&args));
                    t.dsn.push((recipient.clone(), dsn));
                    t.recipients.push(recipient);
                    t.smtp |= smtp;
                }
                Status::Continue
            })
        })
        .on_header(|cx: &mut Context<Session>, name, value| {
            Box::pin(async move {
                let session = cx.data.get_or_insert_with(Session::default);
                if let Some(t) = session.message.as_mut() {
                    let name = name.to_string_lossy().into_owned();
                    // Postfix passes the value without the blank after the colon and folds
                    // with a bare LF; the message the core sees is CRLF. A CR that ends no
                    // line stays, and the core refuses the message: made a line break, it
                    // could start a field of its own.
                    let value = value.as_bytes();
                    let value = value.strip_suffix(b"\r").unwrap_or(value);
                    t.header.extend_from_slice(name.as_bytes());
                    t.header.extend_from_slice(b": ");
                    t.header
                        .extend_from_slice(&crate::message::encoding::line_ends(value));
                    t.header.extend_from_slice(b"\r\n");
                    t.names.push(name);
                }
                session.went_on()
            })
        })
        // End of header: nothing to do, but libmilter-style MTAs (and OpenDKIM's miltertest)
        // expect the step to be negotiated.
        .on_eoh(|cx: &mut Context<Session>| {
            Box::pin(async move { cx.data.get_or_insert_with(Session::default).went_on() })
        })
        .on_body(move |cx: &mut Context<Session>, chunk| {
            let limit = body_milter.max_message_bytes;
            Box::pin(async move {
                let session = cx.data.get_or_insert_with(Session::default);
                if let Some(t) = session.message.as_mut() {
                    // Refused as it comes, rather than held whatever its size (review: 100 MB
                    // took 724 MB; only Postfix's message_size_limit bounded it).
                    if t.header.len() + t.body.len() + chunk.len() > limit {
                        session.message = None;
                        let queue_id = queue_id(&cx.macros, "NOQUEUE");
                        tracing::info!(
                            "{queue_id}: larger than [milter] max_message_bytes ({limit} \
                             bytes): refused"
                        );
                        let _ = cx.reply.set_error_reply(
                            "552",
                            Some("5.3.4"),
                            ["Message size exceeds the limit of the encryption filter"],
                        );
                        return Status::Reject;
                    }
                    t.body.extend_from_slice(&chunk);
                }
                // Always answered (see [`Session::quiet`]).
                Status::Continue
            })
        })
        .on_eom(move |cx: &mut EomContext<Session>| {
            let milter = eom_milter.clone();
            Box::pin(async move {
                let Some(t) = cx.data.as_mut().and_then(|s| s.message.take()) else {
                    return Status::Tempfail;
                };
                let queue_id = queue_id(&cx.macros, "-");
                let deadline = milter.deadline;
                match tokio::time::timeout(deadline, end_of_message(&milter, cx, &queue_id, t))
                    .await
                {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(
                            "{queue_id}: deadline of {} s passed: tempfail",
                            deadline.as_secs()
                        );
                        let _ = cx.reply.set_error_reply(
                            "451",
                            Some("4.3.0"),
                            ["sealpost: timed out, try again later"],
                        );
                        Status::Tempfail
                    }
                }
            })
        })
        .on_abort(|cx: &mut Context<Session>| {
            Box::pin(async move {
                if let Some(session) = cx.data.as_mut() {
                    session.message = None;
                }
                Status::Continue
            })
        })
}

/// The message's identity for the journal: the same for Postfix's retries of one message,
/// different for different messages. It covers the sender, the header fields but the trace
/// fields (Received and the like, which Postfix changes from one try to the next), and the
/// body. Two messages that differ only in their Subject are two messages.
///
/// With a Message-ID of the sender's own, the Date field is left out too: Postfix adds a Date
/// to a message without one, a new one at each try. Without one (Postfix then makes one up
/// from the try's queue id, or adds none), every field counts: a retry of such a message may
/// then be taken for a new one, so re-injected copies can go twice, but two messages are never
/// taken for one (that would skip a recipient of the second).
fn identity(sender: &str, queue_id: &str, raw_header: &[u8], body: &[u8]) -> String {
    const TRACE: [&str; 5] = [
        "Received",
        "Return-Path",
        "Delivered-To",
        "X-Original-To",
        "X-Sealpost-Queue-ID",
    ];
    let fields = crate::message::ParsedMessage::parse(raw_header.to_vec())
        .map(|m| m.fields().to_vec())
        .unwrap_or_default();
    let names_queue_id = |raw: &[u8]| {
        queue_id.len() >= 5
            && raw
                .windows(queue_id.len())
                .any(|w| w == queue_id.as_bytes())
    };
    let own_message_id = fields
        .iter()
        .any(|f| f.is("Message-ID") && !names_queue_id(&f.raw));
    let mut h = Sha256::new();
    h.update(sender.as_bytes());
    h.update([0]);
    if !own_message_id && !fields.iter().any(|f| f.is("Date")) {
        // Nothing tells two such messages apart (a device's identical alerts; Postfix adds
        // neither field to mail from remote clients by default): the queue id does, so a
        // second one is never taken for a retry of the first, whose recipients it would skip.
        // A retry then may re-inject a copy twice.
        h.update(queue_id.as_bytes());
        h.update([0]);
    }
    for field in &fields {
        if TRACE.iter().any(|t| field.is(t)) || (own_message_id && field.is("Date")) {
            continue;
        }
        h.update(&field.raw);
    }
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

async fn end_of_message(
    milter: &Milter,
    cx: &mut EomContext<Session>,
    queue_id: &str,
    t: Transaction,
) -> Status {
    let mut raw = t.header.clone();
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&t.body);
    let envelope = Envelope {
        id: queue_id.to_string(),
        sender: t.sender.clone(),
        recipients: t.recipients.clone(),
    };
    if milter.require_auth_from {
        if let Some(login) = &t.login {
            // One author, the user's: a From of several mailboxes would name others beside
            // them as authors of the mail their key signs (review: "alice@, bob@" passed,
            // its first address being Alice's).
            let from = crate::message::ParsedMessage::parse(raw.clone())
                .ok()
                .and_then(|m| m.sole_from_address().map(str::to_string))
                .unwrap_or_default();
            if !from_belongs_to(&from, login) {
                let why = if from.is_empty() {
                    "the message has no single From address (RFC 5322 section 3.6: one From \
                     field, naming the authenticated user alone)"
                        .to_string()
                } else {
                    format!("From <{from}> does not belong to the authenticated user {login}")
                };
                tracing::info!("{queue_id}: refused for authenticated user {login}: {why}");
                let _ = cx
                    .reply
                    .set_error_reply("550", Some("5.7.1"), [smtp_text(&why)]);
                return Status::Reject;
            }
        }
    }
    let id = identity(&t.sender, queue_id, &t.header, &t.body);
    let now = crate::queue::now();
    milter.purge_journal(now);
    // Recipients a try before this one re-injected need no copy made again: a retry of a big
    // fan-out makes only the copies still missing, instead of every one, each time.
    let mut pending: Vec<String> = Vec::with_capacity(t.recipients.len());
    for r in &t.recipients {
        // The journal names a copy by its recipient as the copy does (`"bob"@x` is `bob@x`).
        match milter
            .journal
            .contains(&id, &crate::rewrite::copy_recipient(r))
        {
            // Said at each try: a script that sends another message under a Message-ID it
            // used before (with the same sender, fields and body but the Date) is taken for
            // this one's retry, and its recipients would otherwise go without a word (review).
            Ok(true) => tracing::info!(
                "{queue_id}: to=<{r}> skipped: a copy of this message (same identity) was \
                 re-injected by an earlier try"
            ),
            Ok(false) => pending.push(r.clone()),
            Err(e) => return fault(cx, queue_id, &e.to_string()),
        }
    }
    if pending.is_empty() && !t.recipients.is_empty() {
        tracing::info!("{queue_id}: every copy was re-injected before: original discarded");
        return Status::Discard;
    }
    // Recipients earlier tries re-injected: their copies went, so this try never refuses the
    // message as a whole (that would report them as failed too).
    let some_done = pending.len() < t.recipients.len();
    // Who a refusal of the message as a whole is for: every recipient, or after an earlier
    // try re-injected some, the others only (reported; the message is not refused to the
    // client, whose other recipients have their copies: review, a 550 after copies went).
    let refused = Refused {
        recipients: if some_done {
            pending.clone()
        } else {
            t.recipients.clone()
        },
        reject: t.smtp && !some_done,
    };
    let (inbound, outbound): (Vec<String>, Vec<String>) =
        pending.into_iter().partition(|r| milter.is_inbound(&t, r));
    // Every recipient's decision is made before any copy is built or sent: a refusal of the
    // whole message must come before anything went.
    let mut planned = Vec::with_capacity(2);
    for (core, recipients, message) in [
        (&*milter.rewriter, outbound, raw.clone()),
        // Sender-supplied verdict fields go before the copy is made, inside and out, and so
        // does the field that marks the user's own uploads (review: kept, it told a sync
        // nothing it trusts now, but it is sealpost's, not a sender's).
        (&milter.inbound, inbound.clone(), {
            let header = strip_field(&raw[..t.header.len() + 2], VERDICT_FIELD);
            let mut stripped = strip_field(&header, crate::sync::UPLOAD_FIELD);
            stripped.extend_from_slice(&t.body);
            stripped
        }),
    ] {
        if recipients.is_empty() {
            continue;
        }
        let envelope = Envelope {
            recipients,
            ..envelope.clone()
        };
        match keeping_alive(cx, core.prepare(&envelope, message)).await {
            Ok(Prepared::Copies(p)) => planned.push(p),
            Ok(Prepared::Refused(reply)) => {
                return refuse_whole(cx, milter, &t, &raw, queue_id, &id, now, reply, &refused)
                    .await;
            }
            Err(e) => {
                let reply = Reply::new(554, "5.6.0", format!("sealpost: {e}"));
                return refuse_whole(cx, milter, &t, &raw, queue_id, &id, now, reply, &refused)
                    .await;
            }
        }
    }
    // A recipient deferred by the plan (a key lookup failed): nothing goes, Postfix retries
    // the whole message. A copy that fails to build later (GnuPG, in a later batch) comes
    // after earlier batches went; those are journaled, so the retry does not send them again.
    if let Some((recipient, reply)) = planned.iter().find_map(|p| p.deferred()) {
        return tempfail(cx, &format!("{recipient}: {reply}"));
    }
    // On Postfix's sendmail path the milter sees the recipients rewritten (root becomes
    // root@$myorigin) while deleting one compares with the address as given, and Postfix
    // reports success when nothing matched: a recipient meant to leave the original would
    // stay, with the kept copy (another recipient's, perhaps in clear). With several
    // recipients there, every copy is re-injected and the original discarded.
    // Nor does a message with thousands of header fields keep one: each original field is
    // deleted one at a time, and Postfix's cleanup failed on 12,000 of them ("too many
    // reverse jump records": 451 at every try, for good; 8,000 took 31 s), while a
    // re-injected copy costs it nothing more than any other message (review).
    // Holding keeps the original in place (Postfix's hold queue), whatever its size: re-
    // injected, a message to hold waited deferred at every try instead (review).
    let in_place = (t.smtp || t.recipients.len() <= 1)
        && (t.names.len() <= MAX_FIELDS_IN_PLACE
            || (milter.hold_without_key && !inbound.is_empty()));
    // The copies are built a batch at a time (a large message to many recipients never has
    // every copy in memory) and each batch's are re-injected before the next is built. One
    // copy is set aside to replace the original, unless inbound mail without a key is to be
    // held: then the original keeps every such recipient (their copies are the same
    // cleartext) and the copy set aside is re-injected at the end.
    let mut kept_copy: Option<Copy> = None;
    // Room for what the queue file holds besides the copy (Postfix's Received field, the
    // envelope records), which message_size_limit counts too.
    const QUEUE_FILE_OVERHEAD: u64 = 8 * 1024;
    // One recipient alone: kept in place whatever its size, so that Postfix refuses the
    // message to the client at once (552) with nothing else gone.
    let size_limit = if in_place && t.recipients.len() > 1 {
        keeping_alive(cx, milter.reinject.size_limit()).await
    } else {
        None
    };
    let fits = |copy: &Copy| {
        size_limit.is_none_or(|limit| {
            copy.message.as_ref().map_or(0, |m| m.len() as u64) + QUEUE_FILE_OVERHEAD <= limit
        })
    };
    let mut held: Vec<String> = Vec::new();
    let mut held_copy: Option<Vec<u8>> = None;
    let mut any_sendable = false;
    // Recipients refused by the core, then copies the re-injection listener refused for good
    // (too large for it, say): reported to the sender; a TEMPFAIL would only bring the same
    // refusal back.
    let mut failures: Vec<bounce::Recipient> = Vec::new();
    // Copies the re-injection listener took in this try.
    let mut accepted = 0;
    for mut p in planned {
        while let Some(batch) = keeping_alive(cx, p.next_batch()).await {
            if let Some(c) = batch
                .iter()
                .find(|c| matches!(c.decision, Decision::Deferred { .. }))
            {
                return tempfail(cx, &format!("{}: {}", c.recipient, c.decision.detail()));
            }
            for copy in batch {
                if let Decision::Rejected { reply } = &copy.decision {
                    failures.push(bounce::Recipient {
                        recipient: copy.recipient.clone(),
                        status: reply.status.to_string(),
                        diagnostic: reply.to_string(),
                        original: None,
                    });
                    continue;
                }
                if copy.message.is_none() {
                    continue;
                }
                any_sendable = true;
                if milter.hold_without_key
                    && matches!(copy.decision, Decision::Clear { .. })
                    && inbound
                        .iter()
                        .any(|r| crate::rewrite::same_recipient(r, &copy.recipient))
                {
                    if !in_place {
                        // A held original must lose every other recipient, which cannot be
                        // done here (see `in_place`): released, it would bring them a clear
                        // duplicate of their encrypted copies. The message waits in Postfix's
                        // queue instead (the copies already re-injected are journaled), and
                        // goes once the key is there, or returns to the sender after the
                        // queue lifetime.
                        return tempfail(
                            cx,
                            &format!(
                                "{}: no key, to be held; on the sendmail path it waits \
                                 deferred instead",
                                copy.recipient
                            ),
                        );
                    }
                    held.push(copy.recipient);
                    if held_copy.is_none() {
                        held_copy = copy.message;
                    }
                    continue;
                }
                // The recipients already re-injected are not among these (`pending`); those a
                // try before this one saw refused for good by the re-injection listener are
                // reported and never sent again.
                match milter.journal.contains(&id, &refused_key(&copy.recipient)) {
                    Ok(true) => {
                        failures.push(bounce::Recipient {
                            recipient: copy.recipient,
                            status: "5.0.0".into(),
                            diagnostic:
                                "the re-injection listener refused the copy (see the mail log)"
                                    .into(),
                            original: None,
                        });
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return fault(cx, queue_id, &e.to_string()),
                }
                // The copy kept in place must fit the same limit as a re-injected one
                // (Postfix's message_size_limit, as the listener announces it): passing it,
                // Postfix would refuse the whole message after the other copies went (review).
                // One that does not fit is re-injected like the others, refused there for
                // good and reported; another copy may stay in place.
                // An encrypted copy is the one kept in place when there is one: a recipient
                // another milter added, whom sealpost never sees, gets the original's copy,
                // which is then ciphertext rather than cleartext (review).
                let encrypted = |c: &Copy| matches!(c.decision, Decision::Encrypted { .. });
                if in_place
                    && fits(&copy)
                    && kept_copy
                        .as_ref()
                        .is_none_or(|kept| !encrypted(kept) && encrypted(&copy))
                {
                    if let Some(earlier) = kept_copy.replace(copy) {
                        match reinject(cx, milter, &t, queue_id, &id, now, &earlier).await {
                            Ok(Some(refused)) => failures.push(refused),
                            Ok(None) => accepted += 1,
                            Err(text) => return fault(cx, queue_id, &text),
                        }
                    }
                    continue;
                }
                match reinject(cx, milter, &t, queue_id, &id, now, &copy).await {
                    Ok(Some(refused)) => failures.push(refused),
                    Ok(None) => accepted += 1,
                    Err(text) => return fault(cx, queue_id, &text),
                }
            }
        }
    }
    if !held.is_empty() {
        if let Some(copy) = kept_copy.take() {
            match reinject(cx, milter, &t, queue_id, &id, now, &copy).await {
                Ok(Some(refused)) => failures.push(refused),
                Ok(None) => accepted += 1,
                Err(text) => return fault(cx, queue_id, &text),
            }
        }
    }
    if refused.reject && any_sendable && accepted == 0 && kept_copy.is_none() && held_copy.is_none()
    {
        // Every copy made was refused for good by the re-injection listener (each larger
        // than its message_size_limit, say): nothing went, so an SMTP client hears it, as it
        // does for a message to one recipient (review: 250, and a report for each). On the
        // sendmail path the sender gets the report, each recipient with its own reason.
        // A copy too large for the listener (552) decides the reply when there is one, so that
        // the same message gets the same reply whatever the order of its recipients (review).
        let refusals = || failures.iter().filter(|f| f.status == "5.0.0");
        let listener = refusals()
            .find(|f| f.diagnostic.starts_with("552"))
            .or_else(|| refusals().next());
        let text = listener.map_or("no copy of this message can be sent", |f| {
            without_reply_code(&f.diagnostic)
        });
        let reply = match listener.and_then(|f| f.diagnostic.get(..3)) {
            Some("552") => Reply::new(552, "5.3.4", text),
            _ => Reply::new(554, "5.0.0", text),
        };
        // The client is told and may send it again (once the listener's limit is raised,
        // say): the refusals are forgotten, so that it is tried afresh (review: refused at
        // once for a week, nothing tried).
        for f in &failures {
            if let Err(e) = milter.journal.forget(&id, &refused_key(&f.recipient)) {
                tracing::warn!(
                    "{queue_id}: to=<{}> refusal not forgotten: {e}",
                    f.recipient
                );
            }
        }
        tracing::info!(
            "{queue_id}: refused as a whole ({reply}): the re-injection listener refused every \
             copy; the client is told, nothing is reported"
        );
        return refuse_whole(cx, milter, &t, &raw, queue_id, &id, now, reply, &refused).await;
    }
    if !any_sendable && !some_done {
        // Only refused recipients: the message is refused as a whole.
        // The first refusal's text, without its own code (the reply has one).
        let reply = failures
            .first()
            .map(|f| without_reply_code(&f.diagnostic).to_string())
            .unwrap_or_else(|| "no recipient can receive this message".into());
        let reply = Reply::new(550, "5.7.1", reply);
        return refuse_whole(cx, milter, &t, &raw, queue_id, &id, now, reply, &refused).await;
    }
    if !failures.is_empty() {
        // A report that cannot be sent is the log's (send_report): the other recipients'
        // copies go on.
        if let Err(text) = report_once(milter, queue_id, &id, &t, &raw, &failures, now).await {
            return fault(cx, queue_id, &text);
        }
    }
    let holding = held_copy.is_some();
    let (kept, keep, kept_decision) = match (held_copy, kept_copy) {
        (Some(bytes), _) => (held, bytes, "held"),
        (None, Some(copy)) => (
            vec![copy.recipient],
            copy.message.unwrap_or_default(),
            copy.decision.name(),
        ),
        (None, None) => {
            // Every recipient has its re-injected copy (now, or in a try before this one), or
            // was refused and reported.
            tracing::info!(
                "{queue_id}: no copy stays in place ({accepted} re-injected now, {} refused \
                 and reported): original discarded",
                failures.len()
            );
            return Status::Discard;
        }
    };
    // The recipients as Postfix gave them, the copies as the core names them: compared as
    // mailboxes, so that `"bob"@x` kept for the copy to `bob@x` is not deleted (that would
    // leave the message with no recipient: accepted, then dropped).
    let is_kept = |r: &str| kept.iter().any(|k| crate::rewrite::same_recipient(r, k));
    // Every recipient but the ones kept leaves the original.
    for r in &t.recipients {
        if is_kept(r) {
            continue;
        }
        if cx.actions.delete_recipient(format!("<{r}>")).await.is_err() {
            return fault(cx, queue_id, "cannot delete a recipient");
        }
    }
    if let Err(e) = rewrite_in_place(cx, &t.names, &keep).await {
        return fault(cx, queue_id, &format!("cannot rewrite the message: {e}"));
    }
    if holding {
        let reason = format!("sealpost: no key for {}", kept.join(", "));
        if cx.actions.quarantine(reason.as_str()).await.is_err() {
            return fault(cx, queue_id, "cannot hold the message");
        }
        tracing::info!("{queue_id}: to=<{}> held: no key", kept.join(">, <"));
        return Status::Continue;
    }
    tracing::info!(
        "{queue_id}: to=<{}> {kept_decision} in place",
        kept.join(">, <")
    );
    Status::Continue
}

/// How often the MTA hears that the work on a message goes on (SMFIR_PROGRESS), so that a
/// `milter_content_timeout` shorter than `deadline_secs` does not give up on it while GnuPG
/// works (review: Postfix answered 451 at its timeout while the milter went on and
/// re-injected copies of the message the client had been told was not taken).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// `work`, with a progress reply to the MTA every [`KEEP_ALIVE`] until it is done.
async fn keeping_alive<T>(
    cx: &EomContext<Session>,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                // A failed write means the MTA is gone; the re-injection that follows sees
                // it again and stops.
                let _ = cx.actions.progress().await;
            }
        }
    }
}

/// Re-injects one recipient's copy and journals it, so that no later try sends it again.
/// Ok(None): accepted; Ok(Some): refused for good by the listener (journaled, to be reported);
/// Err: a temporary failure, the text for the TEMPFAIL.
#[allow(clippy::too_many_arguments)]
async fn reinject(
    cx: &EomContext<Session>,
    milter: &Milter,
    t: &Transaction,
    queue_id: &str,
    id: &str,
    now: i64,
    copy: &Copy,
) -> Result<Option<bounce::Recipient>, String> {
    // Keep-alive: each re-injection may take a while; Postfix's timer restarts. An MTA that
    // no longer hears it has given up on the message (its client told it was not taken):
    // nothing more goes (review: copies went on being re-injected).
    if let Err(e) = cx.actions.progress().await {
        tracing::warn!(
            "{queue_id}: to=<{}> not re-injected: the MTA no longer answers: {e}",
            copy.recipient
        );
        return Err(format!("the MTA no longer answers: {e}"));
    }
    if let Err(e) = milter.journal.ensure_reserve() {
        tracing::warn!(
            "{queue_id}: to=<{}> not re-injected: no room to journal it: {e}",
            copy.recipient
        );
        return Err(format!("no room to journal the re-injection: {e}"));
    }
    if let Err(e) = milter.journal.ensure_writable() {
        tracing::warn!(
            "{queue_id}: to=<{}> not re-injected: the journal cannot record it: {e}",
            copy.recipient
        );
        return Err(format!("the journal cannot record the re-injection: {e}"));
    }
    let bytes = copy.message.as_deref().unwrap_or_default();
    // The client's DSN parameters go with the copy: NOTIFY=NEVER or SUCCESS, ORCPT, RET and
    // ENVID count for it as for the original.
    let dsn = t.dsn_of(&copy.recipient);
    match milter
        .reinject
        .send_with(&t.sender, &copy.recipient, bytes, &dsn)
        .await
    {
        Sent::Accepted { reply, .. } => {
            milter
                .journal
                .record(id, &copy.recipient, now)
                .map_err(|e| e.to_string())?;
            tracing::info!(
                "{queue_id}: to=<{}> {} re-injected via {} ({reply})",
                copy.recipient,
                copy.decision.name(),
                milter.reinject.description()
            );
            Ok(None)
        }
        Sent::Permanent(e) => {
            milter
                .journal
                .record(id, &refused_key(&copy.recipient), now)
                .map_err(|e| e.to_string())?;
            tracing::warn!(
                "{queue_id}: to=<{}> re-injection refused for good: {e}",
                copy.recipient
            );
            Ok(Some(bounce::Recipient {
                recipient: copy.recipient.clone(),
                status: "5.0.0".into(),
                diagnostic: e,
                original: None,
            }))
        }
        Sent::Temporary(e) => {
            tracing::warn!(
                "{queue_id}: to=<{}> re-injection failed: {e}",
                copy.recipient
            );
            Err(format!("re-injection failed: {e}"))
        }
    }
}

/// The journal key that records a copy the re-injection listener refused for good.
fn refused_key(recipient: &str) -> String {
    format!("<refused>{recipient}")
}

/// The journal's record that `recipient`'s failure was reported to the sender.
fn reported_key(recipient: &str) -> String {
    format!("<report>{recipient}")
}

/// A temporary failure of this system (the journal, the re-injection, the MTA's answers to
/// the milter): Postfix keeps the message and tries again. The client is told 4.3.0 (RFC 3463:
/// a mail system matter) and the queue id; the reason, which may name files, goes to the log
/// (review: the journal's path went to SMTP clients, with the policy code 4.7.0).
fn fault(cx: &mut EomContext<Session>, queue_id: &str, text: &str) -> Status {
    tracing::warn!("{queue_id}: TEMPFAIL, Postfix keeps the message: {text}");
    let _ = cx.reply.set_error_reply(
        "451",
        Some("4.3.0"),
        [smtp_text(&format!(
            "sealpost: local error, logged with queue id {queue_id}; try again later"
        ))],
    );
    Status::Tempfail
}

/// A temporary failure for a key or a policy matter (a key lookup that failed, a key still
/// missing): Postfix keeps the message and tries again.
fn tempfail(cx: &mut EomContext<Session>, text: &str) -> Status {
    tracing::warn!("TEMPFAIL, Postfix keeps the message: {text}");
    let _ = cx.reply.set_error_reply(
        "451",
        Some("4.7.0"),
        [smtp_text(&format!("sealpost: {text}"))],
    );
    Status::Tempfail
}

/// A reply text as SMTP carries it (RFC 5321 §4.2: printable US-ASCII): another character
/// (an international address, a "§" in a reason, a line break in an error from GnuPG) is
/// written `\x{HEX}`, as RFC 6533 writes one in a report, or a blank for a control.
fn smtp_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' => c.to_string(),
            c if c.is_control() => " ".to_string(),
            c => format!("\\x{{{:X}}}", c as u32),
        })
        .collect()
}

/// How long the journal remembers a re-injected copy: longer than Postfix's default
/// maximal_queue_lifetime (5 days), within which a message is retried.
const JOURNAL_KEEP: Duration = Duration::from_secs(7 * 86_400);

/// Size of each replace-body message. The protocol allows 65,535 bytes, but OpenDKIM's
/// miltertest (Debian 2.11.0~beta2) overruns a stack buffer on a body chunk over about 1 KB;
/// 1,000-byte chunks cost a local socket nothing and keep that reference client usable.
const BODY_CHUNK: usize = 1000;

/// The seed's validateFrom: a login that is an address must be the From address; a bare login
/// must be the From address's local part.
fn from_belongs_to(from: &str, login: &str) -> bool {
    if login.contains('@') {
        from.eq_ignore_ascii_case(login)
    } else {
        from.rsplit_once('@')
            .is_some_and(|(local, _)| local.eq_ignore_ascii_case(login))
    }
}
/// `text` without a leading SMTP reply code and enhanced status ("550 5.7.1 ").
fn without_reply_code(text: &str) -> &str {
    let mut words = text.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some(code), Some(status), Some(rest))
            if code.len() == 3
                && code.bytes().all(|b| b.is_ascii_digit())
                && status.split('.').count() == 3
                && status
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            rest
        }
        _ => text,
    }
}

/// Who a refusal of the message as a whole is for, and whether it goes to the SMTP client.
struct Refused {
    recipients: Vec<String>,
    reject: bool,
}

/// Refuses the whole message at its end. Over SMTP the client hears the reply. On Postfix's
/// sendmail path nobody would: Postfix bounces a rejected message to its sender itself, with
/// the message's header (Subject, To, Cc) in clear (seen in the test), and the sender may be
/// any address `-f` named. There the sender gets sealpost's own report instead (header only,
/// through the reports core, so encrypted to the sender when they have a key, like the report
/// for refused recipients) and the message is discarded. After an earlier try re-injected
/// copies, the others only are reported, on either path.
#[allow(clippy::too_many_arguments)]
async fn refuse_whole(
    cx: &mut EomContext<Session>,
    milter: &Milter,
    t: &Transaction,
    raw: &[u8],
    queue_id: &str,
    id: &str,
    now: i64,
    reply: Reply,
    refused: &Refused,
) -> Status {
    if refused.reject {
        let _ = cx.reply.set_error_reply(
            &reply.code.to_string(),
            Some(reply.status),
            [smtp_text(&reply.text)],
        );
        return Status::Reject;
    }
    let failures: Vec<bounce::Recipient> = refused
        .recipients
        .iter()
        .map(|r| bounce::Recipient {
            recipient: r.clone(),
            status: reply.status.to_string(),
            diagnostic: reply.to_string(),
            original: None,
        })
        .collect();
    let told = match report_once(milter, queue_id, id, t, raw, &failures, now).await {
        Err(text) => return fault(cx, queue_id, &text),
        Ok(told) => told,
    };
    // Nobody would hear of a message refused on the sendmail path whose sender cannot be sent
    // the report (their policy allows nothing in clear and they have no key): discarded, it
    // was gone with only the log's word (review). It stays queued instead, in Postfix's
    // maildrop, tried again until the sender's key is there, the policy changes, or the
    // administrator deletes it.
    if !told && !t.smtp {
        return tempfail(
            cx,
            &format!("refused as a whole ({reply}), and the sender cannot be told: kept queued"),
        );
    }
    tracing::info!(
        "{queue_id}: refused as a whole ({reply}); {}: {}; discarded",
        if t.smtp {
            "copies of an earlier try went"
        } else {
            "not an SMTP client"
        },
        if t.sender.is_empty() {
            "no sender to report to"
        } else if told {
            "reported to the sender"
        } else {
            "the sender could not be told"
        }
    );
    Status::Discard
}

/// Sends the sender a report for `failures` unless the journal says one went for this message
/// (`id`) already: a retry after a TEMPFAIL reports nothing twice. Nothing to do for a null
/// sender. Err: why not, for a temporary failure. Once the report is accepted, a journal that
/// cannot record it is only logged: a TEMPFAIL now would make Postfix retry, and the retry
/// would send the report again. A recipient whose NOTIFY leaves out FAILURE (NEVER, say) is
/// left out of it (RFC 3461 §4.1), and the report names the message's ENVID. Ok(false): a
/// report was due and could not be sent (the sender's policy allows nothing in clear and they
/// have no key, or the listener refused it for good), said in the log.
#[allow(clippy::too_many_arguments)]
async fn report_once(
    milter: &Milter,
    queue_id: &str,
    id: &str,
    t: &Transaction,
    raw: &[u8],
    failures: &[bounce::Recipient],
    now: i64,
) -> Result<bool, String> {
    let sender = t.sender.as_str();
    // Each with its recipient's ORCPT, when the client gave one.
    let (failures, unwanted): (Vec<bounce::Recipient>, Vec<bounce::Recipient>) = failures
        .iter()
        .map(|f| bounce::Recipient {
            original: t.dsn_of(&f.recipient).orcpt,
            ..f.clone()
        })
        .partition(|f| t.dsn_of(&f.recipient).wants_failure());
    for f in &unwanted {
        tracing::info!(
            "{queue_id}: to=<{}> not reported: the client asked for no failure notice (NOTIFY)",
            f.recipient
        );
    }
    // A null sender (a bounce, a notice) has nobody to report to: said in the log, one line
    // per recipient with its reason, so that a copy not made is never silent (review: such a
    // recipient had no line anywhere).
    if sender.is_empty() {
        for f in &failures {
            tracing::warn!(
                "{queue_id}: to=<{}> not delivered and not reported (null sender): {}",
                f.recipient,
                f.diagnostic
            );
        }
        return Ok(true);
    }
    // Each failed recipient is reported once: a retry of the message reports none again,
    // while the same message in another transaction (a list server sending in recipient
    // batches) reports its own (review: one report per message, the later ones' failures
    // never told). A journal that cannot be read: sent (again) rather than not at all.
    let failures: Vec<bounce::Recipient> = failures
        .into_iter()
        .filter(|f| {
            !milter
                .journal
                .contains(id, &reported_key(&f.recipient))
                .unwrap_or(false)
        })
        .collect();
    if failures.is_empty() {
        return Ok(true);
    }
    let envid = t.mail_dsn.envid.as_deref();
    if !send_report(milter, queue_id, sender, envid, raw, &failures, now).await? {
        return Ok(false);
    }
    for f in &failures {
        if let Err(e) = milter.journal.record(id, &reported_key(&f.recipient), now) {
            tracing::warn!("{queue_id}: report sent but not journaled: {e}");
        }
    }
    Ok(true)
}

/// Sends the sender a non-delivery report for `failures` (quoting the original header only),
/// through the reports core: encrypted to the sender when they have a key. Ok(false): not sent
/// for good (logged). Err: why not, for a temporary failure.
async fn send_report(
    milter: &Milter,
    queue_id: &str,
    sender: &str,
    envid: Option<&str>,
    raw: &[u8],
    failures: &[bounce::Recipient],
    now: i64,
) -> Result<bool, String> {
    let unique = crate::queue::spool::new_id(now);
    let report = bounce::render(&bounce::Report {
        hostname: &milter.hostname,
        domain: &milter.domain,
        queue_id,
        sender,
        envid,
        arrived: now,
        now,
        unique: &unique,
        original: raw,
        action: bounce::Action::Failed,
        recipients: failures,
    });
    // The report quotes the original header, so it goes through the core like any mail:
    // encrypted to the sender when they have a key, its Subject obscured when not.
    // Its own id in the log: under the message's, the sender read as one more recipient of it
    // (review).
    let envelope = Envelope {
        id: format!("{queue_id}/report"),
        sender: String::new(),
        recipients: vec![sender.to_string()],
    };
    let built = match bounce::prepare(&milter.reports, &envelope, report).await {
        Ok(Prepared::Copies(mut planned)) => planned.next_batch().await,
        Ok(Prepared::Refused(_)) | Err(_) => None,
    };
    let copy = match built {
        Some(mut c) if !c.is_empty() => c.remove(0),
        _ => Copy {
            recipient: sender.to_string(),
            decision: Decision::Rejected {
                reply: Reply::new(554, "5.6.0", "the report could not be built"),
            },
            message: None,
        },
    };
    match (&copy.decision, &copy.message) {
        (Decision::Deferred { reply }, _) => Err(format!("report to the sender: {reply}")),
        (_, None) => {
            // The policy allows the sender nothing in clear, and they have no key: the
            // administrator is told here, the sender cannot be.
            tracing::error!(
                "{queue_id}: report to <{sender}> not sent: {}",
                copy.decision.detail()
            );
            Ok(false)
        }
        (_, Some(bytes)) => match milter.reinject.send("", sender, bytes).await {
            Sent::Accepted { .. } => {
                let named: Vec<&str> = failures.iter().map(|f| f.recipient.as_str()).collect();
                tracing::info!(
                    "{queue_id}: failure report sent to <{sender}> for {}",
                    named.join(", ")
                );
                Ok(true)
            }
            Sent::Temporary(e) => Err(format!("cannot send the report to the sender: {e}")),
            // Refused for good: every retry would meet the same refusal.
            Sent::Permanent(e) => {
                tracing::error!("{queue_id}: report to <{sender}> refused: {e}");
                Ok(false)
            }
        },
    }
}

/// Replaces the original's header fields and body by the copy's.
/// Most header fields a message may have for its copy to replace it in place; one with more
/// has every copy re-injected and is discarded.
const MAX_FIELDS_IN_PLACE: usize = 1_000;

async fn rewrite_in_place(
    cx: &EomContext<Session>,
    names: &[String],
    copy: &[u8],
) -> Result<(), indymilter::ActionError> {
    // Every original field goes: deleting occurrence 1 of a name as many times as it occurs.
    for name in names {
        cx.actions
            .change_header(name.as_str(), 1, None::<CString>)
            .await?;
    }
    let split = copy
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(copy.len(), |i| i + 2);
    let (header, body) = copy.split_at(split);
    let body = body.strip_prefix(b"\r\n").unwrap_or(body);
    for field in unfold_fields(header) {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(field[..colon].trim_ascii_end()).into_owned();
        // Folded continuation lines are passed with a bare LF, as Postfix expects. The value
        // goes as bytes: 8-bit text in a field (raw Latin-1, say) arrives as it was, as in the
        // re-injected copies, instead of as U+FFFD.
        let mut value = Vec::with_capacity(field.len() - colon);
        // Blanks after the colon go (Postfix writes its own), a fold right after it stays:
        // a value broken to fit 998 octets from the colon on would be a line longer by the
        // name otherwise (review: 1,004 octets in place).
        let mut rest = &field[colon + 1..];
        while let [b' ' | b'\t', tail @ ..] = rest {
            rest = tail;
        }
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            value.extend_from_slice(&rest[..at]);
            value.push(b'\n');
            rest = &rest[at + 2..];
        }
        value.extend_from_slice(rest);
        value.retain(|&b| b != 0);
        let value = CString::new(value).unwrap_or_default();
        cx.actions.add_header(name, value).await?;
    }
    for chunk in body.chunks(BODY_CHUNK) {
        cx.actions.replace_body(chunk).await?;
    }
    if body.is_empty() {
        // No replacement at all would leave the original body in place: an empty copy body
        // still replaces it (with an empty line, the least a body can be).
        cx.actions.replace_body(&b"\r\n"[..]).await?;
    }
    Ok(())
}

/// The header section split into fields (folding kept, each without its final CRLF), as
/// bytes.
fn unfold_fields(header: &[u8]) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut rest = header;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 2..).unwrap_or_default();
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if let Some(last) = fields.last_mut() {
                last.extend_from_slice(b"\r\n");
                last.extend_from_slice(line);
                continue;
            }
        }
        fields.push(line.to_vec());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_texts_are_printable_ascii() {
        assert_eq!(
            smtp_text("no key for jörg@bücher.de (RFC 5322 §3.6)\r\ngpg: x"),
            "no key for j\\x{F6}rg@b\\x{FC}cher.de (RFC 5322 \\x{A7}3.6)  gpg: x"
        );
        assert_eq!(smtp_text("plain text"), "plain text");
    }

    #[test]
    fn from_must_belong_to_the_login() {
        assert!(from_belongs_to("alice@example.org", "alice@example.org"));
        assert!(from_belongs_to("Alice@Example.org", "alice@example.org"));
        assert!(from_belongs_to("alice@example.org", "alice"));
        assert!(!from_belongs_to("bob@example.org", "alice@example.org"));
        assert!(!from_belongs_to("bob@example.org", "alice"));
        assert!(!from_belongs_to("", "alice"));
        assert_eq!(without_reply_code("550 5.7.1 no key"), "no key");
        assert_eq!(without_reply_code("no key 550"), "no key 550");
    }

    #[test]
    fn fields_keep_their_folding() {
        let h = b"Subject: a\r\nContent-Type: multipart/encrypted;\r\n protocol=\"x\"\r\nTo: b\r\nX-Latin: caf\xe9\r\n";
        assert_eq!(
            unfold_fields(h),
            [
                &b"Subject: a"[..],
                b"Content-Type: multipart/encrypted;\r\n protocol=\"x\"",
                b"To: b",
                b"X-Latin: caf\xe9",
            ]
        );
    }

    #[test]
    fn inbound_only_for_unauthenticated_mail_to_local_recipients() {
        // (service named inbound, authenticated, recipient local if domains are configured)
        let table = [
            ((true, false, None), true),
            ((false, false, None), false),
            ((true, true, None), false),
            ((true, false, Some(true)), true),
            ((true, false, Some(false)), false),
            ((false, false, Some(true)), true),
            ((false, true, Some(true)), false),
        ];
        for ((service, authenticated, local), inbound) in table {
            assert_eq!(
                inbound_rule(service, authenticated, local),
                inbound,
                "{service} {authenticated} {local:?}"
            );
        }
    }

    #[test]
    fn local_recipients_are_in_a_local_domain_or_have_none() {
        let domains = ["example.org".to_string()];
        assert_eq!(local_recipient(&domains, "bob@example.org"), Some(true));
        assert_eq!(local_recipient(&domains, "bob@Example.ORG."), Some(true));
        assert_eq!(local_recipient(&domains, "bob@example.net"), Some(false));
        assert_eq!(local_recipient(&domains, "postmaster"), Some(true));
        assert_eq!(local_recipient(&domains, "root"), Some(true));
        for routed in [
            "partner.example!bob",
            "bob%partner.example",
            "\"bob@x\"",
            "",
        ] {
            assert_eq!(local_recipient(&domains, routed), Some(false), "{routed}");
        }
        assert_eq!(local_recipient(&[], "postmaster"), None);
    }

    #[test]
    fn envelope_arguments_lose_their_brackets_only() {
        let arg = |s: &str| bare(&CString::new(s).unwrap());
        // Spelled as the client sent it: Postfix deletes a recipient by that spelling.
        assert_eq!(arg("<bob@example.org.>"), "bob@example.org.");
        assert_eq!(arg(" <bob@example.org> "), "bob@example.org");
        assert_eq!(arg("<>"), "");
        assert_eq!(arg("<postmaster>"), "postmaster");
    }

    #[test]
    fn identity_ignores_what_postfix_changes_between_retries() {
        let id = |queue_id: &str, header: &str, body: &str| {
            identity("s@x", queue_id, header.as_bytes(), body.as_bytes())
        };
        // Postfix's Received line and the Date it adds change; the sender's Message-ID stays.
        let a = id(
            "4XyZ1A",
            "Received: from a by b id 4XyZ1A\r\nMessage-ID: <m@x>\r\nSubject: one\r\n\
             Date: Sun, 22 Nov 2026 15:09:22 +0000 (UTC)\r\n",
            "body",
        );
        let b = id(
            "4XyZ2B",
            "Received: from a by b id 4XyZ2B\r\nMessage-ID: <m@x>\r\nSubject: one\r\n\
             Date: Sun, 22 Nov 2026 15:09:24 +0000 (UTC)\r\n",
            "body",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            id("4XyZ1A", "Message-ID: <n@x>\r\nSubject: one\r\n", "body")
        );
        assert_ne!(
            a,
            id("4XyZ1A", "Message-ID: <m@x>\r\nSubject: one\r\n", "other")
        );
        assert_ne!(
            a,
            id("4XyZ1A", "Message-ID: <m@x>\r\nSubject: two\r\n", "body")
        );
        // Without a Message-ID, two alerts with the same body are two messages.
        assert_ne!(
            id("4XyZ1A", "Subject: disk full on a\r\n", "Disk full"),
            id("4XyZ1A", "Subject: disk full on b\r\n", "Disk full")
        );
        // The same daily report whose Message-ID and Date Postfix made up: two messages.
        assert_ne!(
            id(
                "4XyZ1A",
                "Message-ID: <20261122.4XyZ1A@host>\r\nDate: Sun, 22 Nov 2026\r\nSubject: s\r\n",
                "b"
            ),
            id(
                "4XyZ2B",
                "Message-ID: <20261123.4XyZ2B@host>\r\nDate: Mon, 23 Nov 2026\r\nSubject: s\r\n",
                "b"
            )
        );
    }
}
