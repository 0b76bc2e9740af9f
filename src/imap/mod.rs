//! The local IMAP server: IMAP4rev1 (RFC 3501) plus the extensions MUAs use, over the store.
//!
//! ```text
//!  TcpListener ─accept─> conn (TLS/STARTTLS, framing limits, imap-next parses commands)
//!                           │ Input
//!                           ▼
//!                        session (state enum, one gate per state) ─> commands by kind:
//!                           auth · mailbox (SELECT, LIST, STATUS, …) · fetch · search ·
//!                           messages (STORE, COPY, MOVE, EXPUNGE, APPEND) · idle
//!                           │ blocking calls on spawn_blocking      │ bytes
//!                           ▼                                       ▼
//!                        store (SQLite)                          render (pure)
//! ```
//! Pure layers: `summary` and `section` (ENVELOPE, BODYSTRUCTURE, BODY[section]), `names`
//! (modified UTF-7), `render`, `sequence`, `search` matching, `list` parsing.

pub mod auth;
mod conn;
mod fetch;
mod list;
mod mailbox;
mod messages;
pub mod names;
pub(crate) mod render;
pub mod search;
mod search_depth;
pub mod section;
mod sequence;
mod session;
pub mod summary;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::store::Store;

/// `[imap]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapConfig {
    pub listen: Vec<Listener>,
    /// PEM certificate chain and key; when unset, a self-signed pair is generated at the first
    /// start and kept next to the store.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Allow LOGIN/AUTHENTICATE without TLS on loopback listeners (LOGINDISABLED otherwise).
    pub allow_plaintext_loopback: bool,
    pub max_connections: usize,
    /// Connections from one client address (IPv6: one /64) at once; loopback clients are
    /// not counted.
    pub max_connections_per_address: usize,
    /// `[imap.limits]`.
    pub limits: Limits,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            listen: vec![
                Listener {
                    address: "127.0.0.1:1993".parse().expect("valid literal address"),
                    tls: TlsMode::Implicit,
                },
                Listener {
                    address: "127.0.0.1:1143".parse().expect("valid literal address"),
                    tls: TlsMode::Starttls,
                },
            ],
            certificate: None,
            key: None,
            allow_plaintext_loopback: false,
            max_connections: 64,
            max_connections_per_address: 16,
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 993 style, RFC 8314).
    Implicit,
    /// Plain until STARTTLS.
    Starttls,
}

/// Protocol limits; all sizes in bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest command line after login (literals not counted).
    pub max_line: usize,
    /// Longest command, literals included, before login.
    pub max_line_before_login: usize,
    /// Largest literal outside APPEND.
    pub max_literal: u32,
    /// Largest message APPEND accepts (also announced as APPENDLIMIT).
    pub max_append: u32,
    /// Most literals in one command.
    pub max_literals: u32,
    /// Bad commands tolerated before login; the next one ends the connection.
    pub max_bad_commands: u32,
    /// Failed authentications per connection before it is closed.
    pub max_auth_failures: u32,
    /// Delay before answering a failed authentication, in milliseconds.
    pub auth_failure_delay_ms: u64,
    /// Seconds of silence before an idle connection is closed (RFC 3501 §5.4: at least 30
    /// minutes once authenticated).
    pub autologout_secs: u64,
    /// Seconds allowed to log in, from the moment the connection comes.
    pub login_timeout_secs: u64,
    /// Seconds a write may wait for a client that takes none of it before the connection
    /// ends (the socket's buffer takes a slow reader's share in bursts: this is no rate).
    pub write_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_line_before_login: 8 * 1024,
            max_literal: 64 * 1024,
            max_append: 64 * 1024 * 1024,
            max_literals: 64,
            max_bad_commands: 5,
            max_auth_failures: 3,
            auth_failure_delay_ms: 2000,
            autologout_secs: 30 * 60,
            login_timeout_secs: 60,
            write_timeout_secs: 300,
        }
    }
}

/// One IMAP account: a name and an argon2 password hash (`sealpost passwd` makes one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub name: String,
    pub password_hash: String,
    /// Where the account's mail comes from (`sealpost sync`, and `sealpost imap` in the
    /// background).
    #[serde(default)]
    pub upstream: Option<crate::sync::upstream::UpstreamConfig>,
    /// A Maildir the account's mail is delivered into, read by the same sync.
    #[serde(default)]
    pub maildir: Option<crate::sync::maildir::MaildirConfig>,
}

/// What every session shares.
pub struct Shared {
    pub config: ImapConfig,
    pub accounts: Vec<Account>,
    pub store: Store,
    pub tls: TlsAcceptor,
    pub connections: Arc<Semaphore>,
    /// Failed logins per client address ([`auth::Penalties`]).
    pub penalties: auth::Penalties,
    /// Connections per client address ([`auth::PerAddress`]).
    pub per_address: auth::PerAddress,
}

/// Serves IMAP on already-bound listeners until `shutdown` turns true; sessions finish the
/// command in hand and say BYE. The same entry point serves `sealpost imap` and the tests.
pub async fn run(
    listeners: Vec<(TcpListener, TlsMode)>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, mode) in listeners {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tasks.spawn(accept_loop(listener, mode, shared, shutdown));
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    // Let sessions finish the command in hand.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    Ok(())
}

/// Connections over the limit being answered BYE at once, at most.
const MAX_REFUSALS: usize = 16;

/// The pause after a failed accept.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

async fn accept_loop(
    listener: TcpListener,
    mode: TlsMode,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    // Refusals under way (an implicit-TLS one needs a handshake to say BYE): bounded, so a
    // flood of connections over the limit cannot take every file descriptor.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    // Accept errors in a row (no descriptors left, say): logged once, then counted, with a
    // pause after each, rather than retried at once with a warning each time.
    let mut failures = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                if failures > 1 {
                    tracing::warn!("imap: accept failed {failures} times in a row");
                }
                failures = 0;
                pair
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(%error, "imap: accept failed; pausing new connections");
                }
                failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
        };
        // Responses are assembled whole before each write, so Nagle's algorithm only adds
        // delay: the last short segment of a large FETCH would wait for the client's delayed
        // ACK (up to 40 ms on Linux) every time.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "imap: TCP_NODELAY");
        }
        let permit = Arc::clone(&shared.connections)
            .try_acquire_owned()
            .ok()
            .zip(shared.per_address.claim(peer.ip()));
        let Some(permit) = permit else {
            tracing::warn!(%peer, "imap: connection limit reached; refusing");
            // Past MAX_REFUSALS at once, closed without a word.
            if let Ok(refusing) = Arc::clone(&refusals).try_acquire_owned() {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    session::refuse(tcp, mode, shared).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            session::serve(tcp, peer, mode, shared, shutdown).await;
            drop(permit);
        });
        while sessions.try_join_next().is_some() {}
    }
    // The port is free at once, for a new server, while sessions finish what they have in
    // hand (review: it stayed taken for their 10 s grace, and a restart could not listen).
    drop(listener);
    while sessions.join_next().await.is_some() {}
}
