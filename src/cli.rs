//! The command line. Exit codes follow sysexits(3): 0 ok, 64 usage, 65 bad input data,
//! 66 missing input, 69 refused (a recipient or the message cannot be delivered as asked),
//! 74 I/O error, 75 temporary failure, 78 configuration error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::keys::KeyService;
use crate::rewrite::{Decision, Envelope, Outcome, RewriteError, Rewriter};

/// `println!` that fails with [`CliError::Output`] (exit 74) when standard output cannot be
/// written (a full disk, /dev/full, a reader gone), where `println!` panicked (review: exit 101
/// from `queue run`, `import`, `passwd` and others, after their work was done).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|source| {
            $crate::cli::CliError::Output {
                path: "standard output".into(),
                source,
            }
        })
    }};
}
pub(crate) use outln;

#[derive(Debug, Parser)]
#[command(
    name = "sealpost",
    version,
    about = "OpenPGP mail: one signed/encrypted copy per recipient"
)]
pub struct Cli {
    /// Configuration file (default /etc/sealpost/sealpost.toml; built-in defaults when absent).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the outgoing core over one message on stdin; write one file per copy into DIR.
    Rewrite(RewriteArgs),
    /// Show the whole outgoing round trip with a throwaway GnuPG home and generated keys.
    Demo(DemoArgs),
    /// Serve the local store over IMAP (TLS and STARTTLS) until SIGTERM.
    Imap(crate::incoming::ImapArgs),
    /// Import an mbox, a Maildir or message files into a mailbox of the store.
    Import(crate::incoming::ImportArgs),
    /// Read a password on stdin and print the hash for `password_hash` in [[accounts]].
    Passwd,
    /// Local delivery (LDA): one message on stdin, decrypted, verified and stored.
    Deliver(crate::incoming::DeliverArgs),
    /// The /usr/sbin/sendmail drop-in (Postfix sendmail(1) flags; see sealpost-sendmail(8)).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail flags and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Sync accounts from their upstream IMAP server or Maildir: decrypt, verify, store.
    Sync(crate::incoming::SyncArgs),
    /// The milter for Postfix/Sendmail (listens on [milter] listen) until SIGTERM.
    Milter,
    /// The sendmail drop-in's queue: list, run, delete.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Read and check the configuration, and say which file it is; nothing is started.
    Check,
    /// Internal: one GnuPG worker, serving the pool of the process that started it on
    /// stdin/stdout (src/keys/worker.rs).
    #[command(hide = true)]
    GpgWorker {
        #[arg(long, value_name = "DIR")]
        home: Option<PathBuf>,
        #[arg(long, value_name = "LIST")]
        auto_key_locate: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages with the recipients still to deliver and the last errors.
    List,
    /// Deliver now: every queued recipient, or with --due those whose retry time has come.
    Run {
        /// Only recipients whose backoff has passed (what the timer runs).
        #[arg(long)]
        due: bool,
        /// Only this queue entry.
        id: Option<String>,
    },
    /// Remove a message from the queue without delivering it or reporting it.
    Delete { id: String },
}

#[derive(Debug, clap::Args)]
pub struct RewriteArgs {
    /// Envelope sender.
    #[arg(long, value_name = "ADDR")]
    pub sender: String,
    /// Envelope recipient (repeat for each).
    #[arg(long = "rcpt", value_name = "ADDR", required = true)]
    pub rcpt: Vec<String>,
    /// GnuPG home (overrides gnupg.home of the configuration).
    #[arg(long, value_name = "DIR")]
    pub gnupg_home: Option<PathBuf>,
    /// Output directory for the copies (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Read the message from FILE instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the throwaway GnuPG home and the copies in this directory instead of deleting them.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// Errors of the command line, each with its sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Logging(String),
    #[error("cannot read {what}: {source}")]
    Input {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid message: {0}")]
    Data(#[from] RewriteError),
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Demo(String),
    #[error("{0}")]
    Usage(String),
    /// A daemon's own files (the milter's journal) cannot be opened or created.
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Import(#[from] crate::store::ImportError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::imap::tls::TlsError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no such account: {0}")]
    NoUser(String),
    /// Input that is not what the command reads (a message empty or too large, an empty
    /// password): 65.
    #[error("{0}")]
    NotAMessage(String),
    /// Try again later (an MTA keeps the message queued).
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// A setting found wrong only when used (an upstream's password file that cannot be
    /// read): trying again changes nothing until the configuration does.
    #[error("configuration: {0}")]
    Setting(String),
    #[error("{0}")]
    Sendmail(#[from] crate::sendmail::SendmailError),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Logging(_) => 78,
            CliError::Input { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 66,
            CliError::Input { .. } => 74,
            CliError::Data(_) => 65,
            CliError::Output { .. } => 74,
            CliError::Demo(_) => 70,
            CliError::Usage(_) => 64,
            CliError::Setup(_) => 73,
            CliError::Store(crate::store::StoreError::Unsafe { .. }) => 78,
            CliError::Store(_) => 74,
            CliError::Import(crate::store::ImportError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                66
            }
            // As a shell reports a program ^C ended (128 + SIGINT).
            CliError::Import(crate::store::ImportError::Interrupted) => 130,
            CliError::Import(_) => 74,
            CliError::Tls(_) => 78,
            CliError::Listen { .. } => 69,
            CliError::NoUser(_) => 67,
            CliError::NotAMessage(_) => 65,
            CliError::Temporary(_) => 75,
            CliError::Setting(_) => 78,
            CliError::Sendmail(e) => e.exit_code(),
        }
    }
}

/// Runs the parsed command line and maps the result onto an exit code.
pub fn main(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Sendmail { args } => {
            return crate::sendmail::main_os("sendmail", args, cli.config.as_deref())
        }
        Command::GpgWorker {
            home,
            auto_key_locate,
        } => return crate::keys::worker::serve_stdio(home.clone(), auto_key_locate),
        _ => {}
    }
    let delivering = matches!(cli.command, Command::Deliver(_));
    let retrying = matches!(&cli.command, Command::Deliver(a) if a.retry_only);
    // `passwd` reads no configuration: a broken one does not stand in its way (review: 78).
    let result = if matches!(cli.command, Command::Passwd) {
        crate::incoming::passwd()
    } else {
        run_configured(cli, retrying)
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sealpost: {e}");
            ExitCode::from(match e.exit_code() {
                // An MTA bounces mail on any code but 75 (Postfix: EX_CONFIG is 5.3.5): as a
                // delivery agent, only "not a message" and "no such account" are final; a
                // broken configuration or setup keeps the mail queued until it is fixed.
                code @ (65 | 67) if delivering => code,
                _ if delivering => 75,
                code => code,
            })
        }
    }
}

/// A command that needs the configuration: loaded, logging set up, run on a runtime.
fn run_configured(cli: Cli, retrying: bool) -> Result<u8, CliError> {
    Config::load(cli.config.as_deref())
        .map_err(CliError::from)
        .and_then(|mut config| {
            // The background retry a delivery starts has no standard error to write to (it
            // would hold up the MTA's pipe): it logs to syslog's mail facility instead, as
            // the MTA does (review: its failures went nowhere).
            if retrying && config.log.target == crate::logging::LogTarget::Stderr {
                config.log.target = crate::logging::LogTarget::Syslog;
            }
            // A log that cannot be reached never holds up mail (a queue run, the milter, the
            // sync): said once, and the lines go to standard error instead, which systemd
            // keeps in the journal (review: with syslog down, the queue run that sendmail
            // starts after each submission exited 78, and the mail waited for a person).
            if let Err(e) = crate::logging::init(&config.log) {
                let _ = writeln!(
                    std::io::stderr(),
                    "sealpost: {e}; logging to standard error"
                );
                crate::logging::init(&crate::logging::LogConfig {
                    target: crate::logging::LogTarget::Stderr,
                    level: config.log.level.clone(),
                })
                .map_err(CliError::Logging)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| CliError::Demo(format!("cannot start the runtime: {e}")))?;
            let result = runtime.block_on(async {
                match cli.command {
                    Command::Rewrite(args) => rewrite(config, args).await,
                    Command::Demo(args) => crate::demo::run(config, args.keep.as_deref()).await,
                    Command::Imap(args) => crate::incoming::serve(config, args).await,
                    Command::Import(args) => crate::incoming::import(config, args).await,
                    Command::Deliver(args) => crate::incoming::deliver(config, args).await,
                    Command::Queue(command) => queue(config, command).await,
                    Command::Milter => milter(config).await,
                    Command::Check => check(&config),
                    Command::Sync(args) => crate::incoming::sync(config, args).await,
                    Command::Sendmail { .. } | Command::GpgWorker { .. } | Command::Passwd => {
                        unreachable!("handled before the configuration is read")
                    }
                }
            });
            // Blocking work still under way does not hold up the exit for good: a store
            // transaction in hand has time to end (SQLite is crash-safe for the rest), while
            // a daemon told to stop as it waited for the sync lock would wait on.
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
            result
        })
}

/// `sealpost check`: the configuration was read and found valid by [`Config::load`] (an
/// error there exits 78, naming file, line and key); says which file, or that the built-in
/// defaults are used, and refuses a [gnupg] home that is not there and files it names that
/// the services could not read.
fn check(config: &Config) -> Result<u8, CliError> {
    // Before the verdict line (review: "the configuration is valid", then the error).
    gnupg_home_there(config)?;
    if let Some(problem) = crate::keys::home::verification_problem(config.gnupg.home.as_deref()) {
        return Err(CliError::Setting(format!("[gnupg] home: {problem}")));
    }
    named_files_readable(config)?;
    let mut out = std::io::stdout().lock();
    let said = match &config.source {
        Some(path) => writeln!(out, "{}: the configuration is valid", path.display()),
        None => writeln!(
            out,
            "{}: not there; the built-in defaults are used",
            crate::config::DEFAULT_PATH
        ),
    };
    said.map_err(|source| CliError::Output {
        path: "standard output".into(),
        source,
    })?;
    Ok(0)
}

/// A configured [gnupg] home that cannot be listed (not there, not a directory, not ours to
/// read): a setting to fix (78), named with the file that sets it.
fn gnupg_home_there(config: &Config) -> Result<(), CliError> {
    let Some(home) = &config.gnupg.home else {
        return Ok(());
    };
    std::fs::read_dir(home).map(drop).map_err(|e| {
        let file = config.source.as_deref().map_or_else(
            || "the configuration".to_string(),
            |f| f.display().to_string(),
        );
        CliError::Setting(format!("{file}: gnupg.home: {}: {e}", home.display()))
    })
}

/// The files the configuration names, read as the services that use them read them at start
/// (review: `check` called valid a configuration whose IMAP certificate and upstream
/// password file were missing; `imap` and `sync` then exited 78): the IMAP certificate and
/// key, each upstream account's password and CA files, the relay's; and what the services
/// refuse or fail on at start, or at the first mail: a store or queue directory others may
/// write to, a GnuPG home this user cannot write to, a default signer without its secret key.
/// Every problem is printed; any makes a setting to fix (78).
fn named_files_readable(config: &Config) -> Result<(), CliError> {
    let mut problems = Vec::new();
    if let (Some(certificate), Some(key)) = (&config.imap.certificate, &config.imap.key) {
        // Both configured: nothing is generated in the state directory.
        if let Err(e) = crate::imap::tls::acceptor(Some(certificate), Some(key), Path::new("")) {
            problems.push(format!("[imap] certificate and key: {e}"));
        }
    }
    for account in &config.accounts {
        if let Some(upstream) = &account.upstream {
            if let Err(e) = crate::sync::upstream::check_settings(upstream) {
                problems.push(format!("account {:?}: {e}", account.name));
            }
        }
    }
    if config.relay.host.is_some() {
        if let Err(e) = crate::queue::relay::Relay::new(&config.relay, "localhost") {
            problems.push(e.to_string());
        }
    }
    // Modes and files the services refuse at start (review: `check` called them valid).
    let store_file = config
        .store
        .path
        .is_file()
        .then(|| crate::store::file_problem(&config.store.path))
        .flatten();
    if let Some(why) = store_file {
        problems.push(format!(
            "[store] path {}: {why}",
            config.store.path.display()
        ));
    }
    if let Some(why) = crate::store::directory_problem(&config.store.path) {
        problems.push(format!(
            "[store] path {}: {why}",
            config.store.path.display()
        ));
    }
    if let Err(e) = config.queue.check_modes() {
        problems.push(format!("[queue] {e}"));
    }
    if let Some(home) = config.gnupg.home.as_ref().filter(|h| sockets_in(h)) {
        // gpg-agent makes its socket in the home (review: a read-only one passed, and every
        // message was deferred for good). root passes the mode bits, not a read-only mount.
        let denied = std::ffi::CString::new(home.as_os_str().as_encoded_bytes())
            .ok()
            // SAFETY: access reads the NUL-terminated path and nothing else.
            .filter(|p| unsafe { libc::access(p.as_ptr(), libc::W_OK) } != 0)
            .map(|_| std::io::Error::last_os_error());
        if let Some(e) = denied {
            problems.push(format!(
                "[gnupg] home {}: not writable by this user ({e}): gpg-agent cannot make its \
                 socket there",
                home.display()
            ));
        }
    }
    // Looked up only in a configured home of the running user's: another user's gpg would
    // write there (a trust database of root's, and the owner's gpg can no longer open it:
    // review), and without [gnupg] home, this user's home may not be the service's.
    let own_home = config.gnupg.home.as_deref().filter(|home| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(home).is_ok_and(|m| m.uid() == crate::queue::current_uid())
    });
    if let (Some(signer), Some(home)) = (&config.policy.default_signer, own_home) {
        if let Some(why) =
            crate::keys::home::signing_key_problem(home, signer, config.gnupg.timeout())
        {
            problems.push(format!("[policy] default_signer: {why}"));
        }
    }
    let Some((last, before)) = problems.split_last() else {
        return Ok(());
    };
    let file = config.source.as_deref().map_or_else(
        || "the configuration".to_string(),
        |f| f.display().to_string(),
    );
    for problem in before {
        eprintln!("sealpost: configuration: {file}: {problem}");
    }
    Err(CliError::Setting(format!("{file}: {last}")))
}

/// Whether gpg-agent makes its sockets in `home` itself, not under /run/user/UID (GnuPG does
/// that where the directory exists: a user with a session, or one systemd keeps lingering).
fn sockets_in(home: &Path) -> bool {
    let listed = std::process::Command::new("gpgconf")
        .arg("--homedir")
        .arg(home)
        .args(["--list-dirs", "socketdir"])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = listed else {
        return true;
    };
    let socketdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    socketdir.is_empty() || Path::new(&socketdir) == home
}

/// How long blocking work still running at the end of a command may take.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds the key service described by the configuration.
pub fn key_service(config: &Config, home_override: Option<&Path>) -> KeyService {
    let home = home_override
        .map(Path::to_path_buf)
        .or_else(|| config.gnupg.home.clone());
    start_keys(
        home,
        config.gnupg.worker_count(),
        config.gnupg.timeout(),
        config.gnupg.sources(),
    )
    .with_max_plaintext(config.gnupg.max_plaintext_bytes)
}

/// The binary's key service: GnuPG runs in `sealpost gpg-worker` processes (this executable),
/// or, when the executable cannot be found, on threads of this process.
pub fn start_keys(
    home: Option<PathBuf>,
    threads: usize,
    deadline: std::time::Duration,
    sources: crate::keys::KeySources,
) -> KeyService {
    // /proc/self/exe rather than the executable's path: after a package upgrade replaced the
    // file, a running daemon still starts workers of its own version, from the file it was
    // started from (gone from the directory, not from the kernel).
    let own = Path::new("/proc/self/exe");
    let executable = if own.exists() {
        Ok(own.to_path_buf())
    } else {
        std::env::current_exe()
    };
    match executable {
        Ok(exe) => KeyService::start_isolated(exe, home, threads, deadline, sources),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find this executable: GnuPG runs in-process");
            KeyService::start(home, threads, deadline, sources)
        }
    }
}

/// A file name for a recipient's copy that shows the address.
pub fn copy_file_name(index: usize, recipient: &str) -> String {
    let safe: String = recipient
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{:02}-{safe}.eml", index + 1)
}

async fn rewrite(config: Config, args: RewriteArgs) -> Result<u8, CliError> {
    let raw = match &args.input {
        Some(path) => std::fs::read(path).map_err(|source| CliError::Input {
            what: path.display().to_string(),
            source,
        })?,
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| CliError::Input {
                    what: "standard input".into(),
                    source,
                })?;
            buf
        }
    };
    // As a configured home is checked (review: the option's too long a path was a 451 with
    // gpg-agent's "General error" for every recipient).
    if let Some(home) = args.gnupg_home.as_deref() {
        if let Some(why) = crate::config::gnupg_home_problem(home) {
            return Err(CliError::Usage(format!(
                "--gnupg-home {}: {why}",
                home.display()
            )));
        }
    }
    let keys = Arc::new(key_service(&config, args.gnupg_home.as_deref()));
    let rewriter = Rewriter::new(keys, config.policy.clone());
    let envelope = Envelope {
        id: "-".into(),
        sender: args.sender.clone(),
        recipients: args.rcpt.clone(),
    };
    let outcome = rewriter.rewrite(&envelope, raw).await?;
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Output {
        path: args.out.display().to_string(),
        source,
    })?;
    match outcome {
        Outcome::Refused(reply) => {
            if args.json {
                outln!("{}", serde_json::json!({ "refused": reply }))?;
            }
            eprintln!("sealpost: message refused: {reply}");
            Ok(69)
        }
        Outcome::Copies(copies) => {
            let mut lines = Vec::new();
            for (i, copy) in copies.iter().enumerate() {
                let file = match &copy.message {
                    Some(bytes) => {
                        let path = args.out.join(copy_file_name(i, &copy.recipient));
                        std::fs::write(&path, bytes).map_err(|source| CliError::Output {
                            path: path.display().to_string(),
                            source,
                        })?;
                        Some(path.display().to_string())
                    }
                    None => None,
                };
                if args.json {
                    // {"recipient", "decision", then "fingerprint" or "reply", "file"}.
                    let mut entry = serde_json::json!({ "recipient": copy.recipient });
                    if let (Some(obj), Ok(serde_json::Value::Object(decision))) =
                        (entry.as_object_mut(), serde_json::to_value(&copy.decision))
                    {
                        obj.extend(decision);
                        obj.insert("file".into(), serde_json::json!(file));
                    }
                    lines.push(entry);
                } else {
                    outln!(
                        "{}\t{}\t{}",
                        copy.recipient,
                        copy.decision.name(),
                        copy.decision.detail()
                    )?;
                }
            }
            if args.json {
                outln!("{}", serde_json::Value::Array(lines))?;
            }
            let deferred = copies
                .iter()
                .find(|c| matches!(c.decision, Decision::Deferred { .. }));
            let rejected = copies
                .iter()
                .find(|c| matches!(c.decision, Decision::Rejected { .. }));
            if let Some(c) = deferred {
                eprintln!("sealpost: {}: {}", c.recipient, c.decision.detail());
                Ok(75)
            } else if let Some(c) = rejected {
                eprintln!("sealpost: {}: {}", c.recipient, c.decision.detail());
                Ok(69)
            } else {
                Ok(0)
            }
        }
    }
}

async fn queue(config: Config, command: QueueCommand) -> Result<u8, CliError> {
    use crate::queue::{Queue, Scope};
    match command {
        QueueCommand::List => {
            crate::sendmail::list(&config.queue, &mut std::io::stdout().lock())?;
        }
        QueueCommand::Run { due, id } => {
            let scope = match (id, due) {
                (Some(id), _) => Scope::One(id),
                (None, true) => Scope::Due,
                (None, false) => Scope::All,
            };
            let r = crate::sendmail::run_queue_async(&config, scope).await?;
            outln!(
                "{} picked up, {} sent, {} deferred, {} failed, {} report(s)",
                r.picked_up,
                r.sent,
                r.deferred,
                r.failed,
                r.bounces
            )?;
        }
        QueueCommand::Delete { id } => {
            crate::sendmail::owner_or_root(&config.queue.dir, "delete from")?;
            crate::queue::act_as_owner(&config.queue.dir)
                .map_err(crate::sendmail::SendmailError::from)?;
            let queue = Queue::open(&config.queue).map_err(crate::sendmail::SendmailError::from)?;
            queue
                .delete(&id)
                .map_err(crate::sendmail::SendmailError::from)?;
        }
    }
    Ok(0)
}

/// Makes way for a unix socket at `path`: a socket left by a milter that is gone is removed;
/// a live one (another milter answers on it) is "address in use", and anything else there is
/// refused, not removed (review: a regular file at the configured path was deleted, and a
/// second milter took a running one's socket over, leaving it unreachable).
fn stale_socket_removed(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if !m.file_type().is_socket() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "something other than a socket is there; not removed",
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process listens on this socket",
            )),
            Err(_) => std::fs::remove_file(path),
        },
    }
}

async fn milter(config: Config) -> Result<u8, CliError> {
    use crate::milter::{Milter, MilterError};
    // A GnuPG home that is not there is a mistake in the configuration, said at start, not at
    // the first mail, which would be deferred (review: "milter listening", then 451 for all).
    gnupg_home_there(&config)?;
    if let Some(home) = config.gnupg.home.as_deref() {
        // A volume not mounted yet, or a home made and not filled: every recipient would be
        // keyless (review).
        if crate::keys::home::holds_no_public_key(home, config.gnupg.timeout()) {
            tracing::warn!(
                home = %home.display(),
                "the GnuPG home holds no public key: every recipient counts as one without a key"
            );
        }
    }
    let keys = Arc::new(key_service(&config, None));
    let rewriter = Arc::new(Rewriter::new(keys, config.policy.clone()));
    let m = Milter::new(rewriter, &config.milter, config.queue.domain())
        .map_err(|e| CliError::Setup(e.to_string()))?;
    let m = Arc::new(m);
    let listen = config.milter.listen.clone();
    let max = config.milter.max_connections;
    let result = if let Some(path) = listen.strip_prefix("unix:") {
        let listener = stale_socket_removed(path)
            .and_then(|()| tokio::net::UnixListener::bind(path))
            .map_err(|e| MilterError::Listen(listen.clone(), e));
        match listener {
            Ok(l) => {
                tracing::info!("milter listening on {listen}");
                crate::milter::run(l, m, max, crate::shutdown::signalled()).await
            }
            Err(e) => Err(e),
        }
    } else {
        let addr = listen.strip_prefix("inet:").unwrap_or(&listen);
        // Postfix writes inet:host:port; a bare port means localhost.
        let addr = match addr.rsplit_once(':') {
            Some((host, port)) => format!(
                "{}:{port}",
                if host.is_empty() { "127.0.0.1" } else { host }
            ),
            None => format!("127.0.0.1:{addr}"),
        };
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => {
                tracing::info!("milter listening on {addr}");
                let l = crate::milter::NoDelayListener(l);
                crate::milter::run(l, m, max, crate::shutdown::signalled()).await
            }
            Err(e) => Err(MilterError::Listen(listen.clone(), e)),
        }
    };
    result.map_err(|e| match e {
        // As for the IMAP server: the address is taken or not ours (69), not "try again".
        MilterError::Listen(address, source) => CliError::Listen { address, source },
        e => CliError::Temporary(e.to_string()),
    })?;
    Ok(0)
}
