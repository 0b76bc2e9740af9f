//! The relay: each copy leaves over SMTP with lettre, TLS always (STARTTLS required, or
//! implicit TLS), the server certificate verified against the system roots or a configured
//! CA, AUTH PLAIN/LOGIN only inside TLS. Plain SMTP is allowed only to a loopback address,
//! the hand-off to a local MTA. One SMTP transaction per copy, one recipient each: a reply
//! concerns exactly one copy.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

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
    /// Deadline for each SMTP command, in seconds.
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
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Some((
                    "tls",
                    "\"none\" is allowed only with a loopback host (127.0.0.1, ::1, localhost): mail never crosses a network in clear".into(),
                ));
            }
            if self.username.is_some() {
                return Some((
                    "username",
                    "AUTH needs TLS: set tls = \"starttls\" or \"implicit\"".into(),
                ));
            }
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Some((
                "password_file",
                "username and password_file go together".into(),
            ));
        }
        if self.timeout_secs == 0 {
            return Some(("timeout_secs", "must be at least 1 (seconds)".into()));
        }
        None
    }
}

/// A relay that cannot be set up (configuration, files): exit 78.
#[derive(Debug, thiserror::Error)]
pub enum RelaySetupError {
    #[error("no relay configured: set [relay] host in the configuration")]
    NoHost,
    #[error("[relay] password_file {path}: {source}")]
    Password {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("[relay] ca_file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("[relay]: {0}")]
    Tls(String),
}

/// The result of handing one copy to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Accepted; the relay's reply.
    Accepted(String),
    /// Try again later (4xx, connection, TLS, authentication).
    Temporary(String),
    /// The relay refused this copy for good (5xx).
    Permanent(String),
}

pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    description: String,
}

impl Relay {
    pub fn new(config: &RelayConfig, default_helo: &str) -> Result<Relay, RelaySetupError> {
        let host = config.host.clone().ok_or(RelaySetupError::NoHost)?;
        let port = config.port();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(Duration::from_secs(config.timeout_secs)))
            .hello_name(ClientId::Domain(
                config
                    .helo_name
                    .clone()
                    .unwrap_or_else(|| default_helo.to_string()),
            ))
            .pool_config(PoolConfig::new().max_size(4));
        if config.tls != RelayTls::None {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path).map_err(|e| RelaySetupError::Ca {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| RelaySetupError::Ca {
                    path: path.display().to_string(),
                    reason: format!("not PEM certificates: {e}"),
                })?;
                params = params
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| RelaySetupError::Tls(e.to_string()))?;
            builder = builder.tls(match config.tls {
                RelayTls::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let (Some(user), Some(path)) = (&config.username, &config.password_file) {
            let password =
                std::fs::read_to_string(path).map_err(|source| RelaySetupError::Password {
                    path: path.display().to_string(),
                    source,
                })?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            builder = builder
                .credentials(Credentials::new(user.clone(), password))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Relay {
            transport: builder.build(),
            description: format!("{host}:{port}"),
        })
    }

    /// Where copies go, for the logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Sends one copy to one recipient. `sender` "" is the null reverse-path (bounces).
    pub async fn send(&self, sender: &str, recipient: &str, message: &[u8]) -> Sent {
        let from = if sender.is_empty() {
            None
        } else {
            match sender.parse() {
                Ok(a) => Some(a),
                Err(_) => return Sent::Permanent(format!("sender {sender:?} is not an address")),
            }
        };
        let to = match recipient.parse() {
            Ok(a) => a,
            Err(_) => return Sent::Permanent(format!("recipient {recipient:?} is not an address")),
        };
        let envelope = match Envelope::new(from, vec![to]) {
            Ok(e) => e,
            Err(e) => return Sent::Permanent(format!("bad envelope: {e}")),
        };
        match self.transport.send_raw(&envelope, message).await {
            Ok(response) => Sent::Accepted(format!(
                "{} {}",
                u16::from(response.code()),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => classify(&e, &self.description),
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
    // rustls reports a refused certificate as a connection error, not a TLS one.
    let tls = e.is_tls() || text.contains("certificate");
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
