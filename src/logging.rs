//! Logging in one place: stderr, syslog (mail facility) or journald, as configured.
//!
//! Policy: one info line per recipient decision (queue id, recipient, decision, key or
//! reason); warnings for failures that defer mail; protocol transcripts only at trace level.
//! Passwords, key material and message bodies are never logged.

use std::io::IsTerminal;
use std::sync::Mutex;

use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogTarget {
    #[default]
    Stderr,
    Syslog,
    Journald,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub target: LogTarget,
    /// A tracing filter: "info", "warn", "sealpost=debug", ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            target: LogTarget::Stderr,
            level: "info".into(),
        }
    }
}

/// Where tracing-journald sends the journal's entries.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// Where the syslog crate looks for the local syslog daemon, in this order.
const SYSLOG_SOCKETS: &str = "/dev/log, /var/run/syslog or /var/run/log";

/// Installs the global subscriber. Call once, from main.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|e| format!("log.level: \"{}\" is not a valid filter: {e}", config.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match config.target {
        LogTarget::Stderr => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogTarget::Journald => {
            let layer = tracing_journald::layer().map_err(|e| {
                format!("log.target journald: the journal's socket {JOURNALD_SOCKET}: {e}")
            })?;
            registry.with(layer).try_init()
        }
        LogTarget::Syslog => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_MAIL,
                hostname: None,
                process: "sealpost".into(),
                pid: std::process::id(),
            };
            let logger = syslog::unix(formatter).map_err(|e| {
                format!(
                    "log.target syslog: cannot reach the syslog daemon at {SYSLOG_SOCKETS}: {e}"
                )
            })?;
            registry
                .with(SyslogLayer {
                    logger: Mutex::new(logger),
                })
                .try_init()
        }
    }
    .map_err(|e| e.to_string())
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// Sends each event as one syslog line: message then key=value fields.
struct SyslogLayer {
    logger: Mutex<SyslogLogger>,
}

#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={}", field.name(), value));
        }
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let Ok(mut logger) = self.logger.lock() else {
            return;
        };
        let _ = match *event.metadata().level() {
            Level::ERROR => logger.err(line.0),
            Level::WARN => logger.warning(line.0),
            Level::INFO => logger.info(line.0),
            _ => logger.debug(line.0),
        };
    }
}
