//! Logging in one place: stderr, syslog (mail facility) or journald, as configured.
//!
//! Policy: one info line per recipient decision (queue id, recipient, decision, key or
//! reason); warnings for failures that defer mail. Passwords, key material and message
//! bodies are never logged: the protocol libraries' trace transcripts are left out whatever
//! the level ([`transcribes_secrets`]).

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
    let registry =
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::filter::filter_fn(|meta| {
                !(*meta.level() == Level::TRACE && transcribes_secrets(meta.target()))
            }));
    match config.target {
        LogTarget::Stderr => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| Escaping(std::io::stderr()))
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

/// The libraries whose trace events hold whole protocol lines: LOGIN with its password,
/// AUTHENTICATE's base64, message text (imap-next and imap-codec for the IMAP server,
/// async-imap and imap-proto for the sync, indymilter for the milter). Left out whatever the
/// level, so that the policy above holds at `trace` too (review: passwords in the log).
fn transcribes_secrets(target: &str) -> bool {
    [
        "imap_next",
        "imap_codec",
        "imap_types",
        "async_imap",
        "imap_proto",
        "indymilter",
    ]
    .iter()
    .any(|name| target == *name || target.starts_with(&format!("{name}::")))
}

/// A log line carries text from anyone: a drop file's name, a recipient, a relay's reply, an
/// upstream folder's name. Its control characters are written escaped (`\n`, `\r`,
/// `\u{7f}`...), so none of it can start a line of its own that reads as sealpost's (review:
/// a drop file named with a newline forged a "sent" line in the queue's log). A tab stays, and
/// so does an escape character: tracing escapes those in what it is given, and writes its own
/// for colours on a terminal.
fn escaped(line: &str, ends_in_newline: bool) -> String {
    let body = match ends_in_newline {
        true => line.strip_suffix('\n').unwrap_or(line),
        false => line,
    };
    let mut out = String::with_capacity(line.len());
    for c in body.chars() {
        match c {
            '\t' | '\x1b' => out.push(c),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    if body.len() < line.len() {
        out.push('\n');
    }
    out
}

/// stderr with [`escaped`] lines: tracing's fmt layer writes each event whole, in one
/// `write_all`.
struct Escaping<W>(W);

impl<W: std::io::Write> std::io::Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let line = String::from_utf8_lossy(buf);
        self.0.write_all(escaped(&line, true).as_bytes())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
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
        line.0 = escaped(&line.0, false);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_line_end_kept() {
        assert_eq!(
            escaped("moved x\n2026 INFO sent\r\u{7f}\tok\u{1b}[1m\n", true),
            "moved x\\n2026 INFO sent\\r\\u{7f}\tok\u{1b}[1m\n"
        );
        assert_eq!(escaped("no end\n", false), "no end\\n");
        assert_eq!(escaped("été", true), "été");
    }
}
