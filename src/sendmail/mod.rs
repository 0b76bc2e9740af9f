//! The /usr/sbin/sendmail drop-in: Postfix's sendmail(1) command line ([`flags`]), the message
//! made complete ([`input`]), queued durably ([`crate::queue::spool`]) before the caller is
//! told yes, then delivered by the queue runner. `-bs` speaks SMTP on stdin/stdout ([`smtp`]).
//!
//! Exit codes (sysexits(3)), the one place they are chosen: 0 queued, 64 usage, 65 data,
//! 69 unavailable (no such queue entry), 74 reading the input failed, 75 temporary (only when
//! even the queue could not take the message), 77 no permission on the queue, 78 configuration. contrib/man/sealpost-sendmail.8 is the reference.

pub mod address;
pub mod flags;
pub mod input;
pub mod smtp;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::queue::relay::{Relay, RelaySetupError};
use crate::queue::spool::{self, SpoolError, Submission};
use crate::queue::{self, Queue, QueueConfig, QueueError, Runner, Scope};
use crate::rewrite::Rewriter;
use flags::{Invocation, Mode, UsageError};
use input::InputError;

#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Relay(#[from] RelaySetupError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    /// The queue's drop directory could not be reached to take a submission.
    #[error("{0}")]
    NotTaken(QueueError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotOwner(String),
    /// The queue listing could not be written (a full device, a closed pipe).
    #[error("cannot write the queue listing: {0}")]
    Output(std::io::Error),
    /// A `-bs` session whose standard input or output failed (a closed pipe, say).
    #[error("the SMTP session on standard input and output broke off: {0}")]
    Session(std::io::Error),
}

impl SendmailError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::Usage(_) => 64,
            SendmailError::Input(InputError::Read(_))
            | SendmailError::Output(_)
            | SendmailError::Session(_) => 74,
            // Postfix's sendmail says EX_USAGE without -t (sendmail.c); with -t its cleanup
            // refuses the message later and sendmail exits 75 (review, Postfix 3.7.11). 64
            // here: the message is refused before it is queued, and no retry can help.
            SendmailError::Input(InputError::NoRecipients) => 64,
            SendmailError::Input(_) => 65,
            SendmailError::Config(_) | SendmailError::Relay(_) => 78,
            // Refused before it was spooled, as a message over the limit is (review: it was
            // spooled, exit 0, and then set aside by the runner).
            SendmailError::Spool(SpoolError::TooLarge { .. }) => 65,
            // Even a drop directory the caller may not write to: the message was not taken,
            // and callers retry on 75 (Postfix's sendmail says EX_TEMPFAIL for its maildrop).
            SendmailError::Spool(_) => 75,
            // So is a queue directory the caller may not enter (another user's personal queue,
            // 0700): 77 is final to cron and PHP, and the man page promises 75 (review).
            SendmailError::NotTaken(_) => 75,
            SendmailError::Queue(QueueError::NotFound(_)) => 69,
            // A mode that lets others at queued mail: the administrator's to fix.
            SendmailError::Queue(QueueError::Unsafe(_)) => 78,
            SendmailError::Queue(QueueError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                77
            }
            SendmailError::Queue(_) => 75,
            SendmailError::Unavailable(_) => 69,
            SendmailError::NotOwner(_) => 77,
        }
    }
}

/// One line on stderr. Not eprintln!, which panics when stderr is a closed pipe: a caller
/// that closed it would see exit 101, after a message was queued or before (review).
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(line);
    let _ = stderr.write_all(b"\n");
}

/// Entry point for `sendmail ...`, `mailq`, `newaliases` and `sealpost sendmail ...`.
/// `config` is a `--config` given before the `sendmail` subcommand (-C wins).
/// [`main`] for the command line as the kernel gave it. An argument that is not UTF-8 text is
/// a usage error (64), except a -F full name: read with replacement characters, with a warning.
pub fn main_os(program: &str, args: &[std::ffi::OsString], config: Option<&Path>) -> ExitCode {
    use std::os::unix::ffi::OsStrExt;
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let full_names = flags::full_name_arguments(&bytes);
    for (at, arg) in args.iter().enumerate() {
        if arg.to_str().is_some() {
            continue;
        }
        if !full_names.contains(&at) {
            say(format_args!(
                "{program}: argument {} is not UTF-8 text: {:?}",
                at + 1,
                text[at]
            ));
            return ExitCode::from(64);
        }
        say(format_args!(
            "{program}: warning: the -F full name is not UTF-8 text, read as {:?}",
            text[at]
        ));
    }
    main(program, &text, config)
}

pub fn main(program: &str, args: &[String], config: Option<&Path>) -> ExitCode {
    let result = flags::parse(program, args)
        .map_err(SendmailError::from)
        .and_then(|inv| {
            let config = Config::load(inv.config.as_deref().or(config))?;
            // Postfix's sendmail, mailq and `sendmail -q` say nothing when all is well, and
            // cron mails whatever a job prints: on stderr, the default level shows warnings
            // only, unless -v asks for more.
            let mut log = config.log.clone();
            if log.target == crate::logging::LogTarget::Stderr
                && log.level == crate::logging::LogConfig::default().level
                && inv.verbose == 0
            {
                log.level = "warn".into();
            }
            // A log that cannot be reached does not stop the mail, but it is said, and the
            // lines go to standard error instead, warnings only unless -v asks for more.
            if let Err(e) = crate::logging::init(&log) {
                say(format_args!(
                    "{}: {e}; logging to standard error",
                    command_name(program)
                ));
                let _ = crate::logging::init(&crate::logging::LogConfig {
                    target: crate::logging::LogTarget::Stderr,
                    level: if inv.verbose > 0 { "info" } else { "warn" }.into(),
                });
            }
            run(&inv, &config)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // As the command was called: `mailq: ...`, `newaliases: ...`, as Postfix's say.
            say(format_args!("{}: {e}", command_name(program)));
            ExitCode::from(e.exit_code())
        }
    }
}

/// The name a message starts with: mailq or newaliases when called so, else sendmail.
fn command_name(program: &str) -> &'static str {
    match program {
        "mailq" => "mailq",
        "newaliases" => "newaliases",
        _ => "sendmail",
    }
}

fn run(inv: &Invocation, config: &Config) -> Result<(), SendmailError> {
    match inv.mode {
        Mode::Enqueue => {
            check_relay(config)?;
            let stdin = std::io::stdin();
            let id = enqueue(inv, &config.queue, &mut stdin.lock())?;
            if inv.verbose > 0 {
                say(format_args!("sendmail: queued as {id}"));
            }
            start_runner(config);
            Ok(())
        }
        Mode::Smtp => {
            check_relay(config)?;
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let mut queued = 0;
            let ended = smtp::session(
                &config.queue,
                &mut stdin.lock(),
                &mut stdout.lock(),
                &queue::user_name(queue::current_uid()),
                &mut queued,
            );
            // Messages answered 250 go out even when the session then broke off.
            if queued > 0 {
                start_runner(config);
            }
            // A write to a closed stdout fails as a read would: neither is "cannot read the
            // message" (review).
            ended.map_err(SendmailError::Session)?;
            Ok(())
        }
        Mode::ListQueue => list(&config.queue, &mut std::io::stdout().lock()),
        Mode::RunQueue => {
            let scope = match &inv.queue_id {
                Some(id) => Scope::One(id.clone()),
                None => Scope::All,
            };
            let r = run_queue(config, scope)?;
            if inv.verbose > 0 {
                say(format_args!(
                    "sendmail: {} picked up, {} sent, {} deferred, {} failed, {} report(s)",
                    r.picked_up, r.sent, r.deferred, r.failed, r.bounces
                ));
            }
            Ok(())
        }
        Mode::NewAliases => {
            say(format_args!(
                "newaliases: sealpost has no alias database; nothing to rebuild"
            ));
            Ok(())
        }
        Mode::Nothing => Ok(()),
    }
}

/// A queue without a relay would only fill up: say so at once (EX_CONFIG).
fn check_relay(config: &Config) -> Result<(), SendmailError> {
    if config.relay.host.is_none() {
        let in_ = match &config.source {
            Some(path) => path.display().to_string(),
            None => format!(
                "{} (there is none: the built-in defaults are used)",
                crate::config::DEFAULT_PATH
            ),
        };
        return Err(RelaySetupError::NoHost { in_ }.into());
    }
    Ok(())
}

/// Reads, completes and queues one message; returns its queue id.
pub fn enqueue(
    inv: &Invocation,
    queue: &QueueConfig,
    stdin: &mut impl BufRead,
) -> Result<String, SendmailError> {
    let raw = input::read_message(stdin, inv.dot_ends_message, queue.max_message_bytes)?;
    let now = queue::now();
    let id = spool::new_id(now);
    let domain = queue.domain();
    let login = format!("{}@{domain}", queue::user_name(queue::current_uid()));
    let sender = inv
        .sender
        .as_deref()
        .map(|s| input::qualify(s, &domain))
        .unwrap_or_else(|| login.clone());
    let from = if sender.is_empty() { &login } else { &sender };
    let name_env = std::env::var("NAME").ok();
    let unique = format!("{id}.{}", spool::new_id(now));
    let message = input::complete(
        &raw,
        &input::Completion {
            from_address: from,
            full_name: inv.full_name.as_deref().or(name_env.as_deref()),
            now,
            domain: &domain,
            unique: &unique,
        },
    )?;
    if message.len() > queue.max_message_bytes {
        return Err(InputError::TooLarge {
            limit: queue.max_message_bytes,
        }
        .into());
    }
    let mut recipients = input::UniqueAddresses::default();
    for r in &inv.recipients {
        // An argument is read as an address list, as Postfix reads it: several addresses
        // (with ',', ';' or blanks between them), `Bob Smith <bob@x>`, a quoted comma. One
        // with no address at all is kept as it is, for the check below to refuse or report
        // by name, unless it is a group without members (`undisclosed-recipients:;`).
        let found = address::scan(r.as_bytes());
        if found.is_empty() && !r.trim().is_empty() && !address::is_empty_group(r) {
            recipients.push(r.trim());
        }
        for a in found {
            for word in address::words(&a.address) {
                recipients.push(&input::qualify(word, &domain));
            }
        }
    }
    if inv.extract_recipients {
        for a in input::header_recipients(&message) {
            recipients.push(&input::qualify(&a, &domain));
        }
    }
    let (recipients, not_addresses) = input::check_recipients(recipients.into_vec())?;
    for r in not_addresses {
        say(format_args!(
            "sendmail: warning: recipient {r:?} is not an email address: the sender will get a \
             report, the others their copies"
        ));
    }
    let submission = Submission {
        sender,
        recipients,
        notify: inv.notify,
        envid: inv.envid.clone(),
        recipient_dsn: Vec::new(),
        message,
    };
    spool::write(
        &queue
            .ensure_incoming_to_submit()
            .map_err(SendmailError::NotTaken)?,
        &id,
        &submission,
        queue.spool_file_limit(),
    )?;
    Ok(id)
}

/// Starts `sealpost queue run --due` in the background when this user may run the queue
/// (owns it); otherwise systemd's sealpost-queue.path notices the new file.
fn start_runner(config: &Config) {
    if !config.queue.run_after_submit || !may_run_queue(&config.queue.dir) {
        return;
    }
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(path) = &config.source {
        cmd.arg("--config").arg(path);
    }
    // Its log lines (with `[log] target = "stderr"`, the default, all of them; otherwise the
    // line saying the log could not be reached) and its counts go to the queue's run.log:
    // the caller's standard error is no place for them (cron would mail each run's lines),
    // and with none a relay that refused the login was said nowhere (review).
    let (out, err) = match run_log(&config.queue.dir).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, err)) => (out.into(), err.into()),
        Err(_) => (std::process::Stdio::null(), std::process::Stdio::null()),
    };
    cmd.args(["queue", "run", "--due"])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: the caller's Ctrl-C or job control does not stop delivery.
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!("cannot start a queue run ({e}); the queue timer will deliver");
    }
}

/// The background runs' log, `run.log` in the queue directory (owner-only, appended to); once
/// it is over [`RUN_LOG_BYTES`] it becomes `run.log.1` (replacing the one before) and a new
/// one starts, so the two stay near that size together.
fn run_log(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("run.log");
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() > RUN_LOG_BYTES) {
        // Another sendmail may have moved it first: this one's log goes to the new file.
        match std::fs::rename(&path, dir.join("run.log.1")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Where run.log starts over (see [`run_log`]).
const RUN_LOG_BYTES: u64 = 1 << 20;

fn may_run_queue(dir: &Path) -> bool {
    // Only the queue's owner runs it: a root caller (cron) must not create root-owned files
    // in a queue the `sealpost` user runs; systemd's path unit starts that runner instead.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == queue::current_uid())
}

/// Another user's queue: listing, running or deleting from it is its owner's and root's, said
/// as such (review: "queue …/corrupt: Permission denied" told a user nothing; so did
/// "queue.sqlite: Permission denied" for `-q` and `queue delete`). `what`: "list", "run",
/// "delete from".
pub fn owner_or_root(dir: &Path, what: &str) -> Result<(), SendmailError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    if may_run_queue(dir) || unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    Err(SendmailError::NotOwner(format!(
        "the queue {} belongs to {} (uid {}): only that user and root may {what} it",
        dir.display(),
        queue::user_name(meta.uid()),
        meta.uid()
    )))
}

/// `sendmail -bp` / `queue list`: Postfix mailq's layout.
pub fn list(config: &QueueConfig, out: &mut impl Write) -> Result<(), SendmailError> {
    // No queue yet: nothing in it. Listing creates none (root's first `mailq` made the
    // shared queue's directory root's, which the service's runner could not use). A path
    // that cannot be looked at (a regular file on it, no search permission) is no empty
    // queue (review: "Mail queue is empty" for a queue under a regular file).
    let exists = config.dir.try_exists().map_err(|source| QueueError::Io {
        path: config.dir.display().to_string(),
        source,
    })?;
    if !exists {
        return out
            .write_all(b"Mail queue is empty\n")
            .map_err(SendmailError::Output);
    }
    // Only the owner picks up (and sets aside) drop files; root lists as the owner, and shows
    // the ones not picked up yet by name.
    let owner = may_run_queue(&config.dir);
    owner_or_root(&config.dir, "list")?;
    queue::act_as_owner(&config.dir)?;
    let queue = match Queue::open(config) {
        Ok(queue) => {
            if owner {
                queue.pick_up().ok();
            }
            queue
        }
        // Modes that let others at queued mail are said, not read past (review: listed, 0).
        Err(e @ QueueError::Unsafe(_)) => return Err(e.into()),
        // A full or read-only file system: the queue is listed all the same, as it stands.
        Err(e) => match Queue::open_read_only(config) {
            Ok(queue) => {
                tracing::warn!("{e}; the queue is listed read-only, as it stands");
                queue
            }
            Err(_) => return Err(e.into()),
        },
    };
    let entries = queue.list()?;
    let waiting = queue.waiting();
    let w =
        |out: &mut dyn Write, s: String| out.write_all(s.as_bytes()).map_err(SendmailError::Output);
    if entries.is_empty() && waiting.is_empty() {
        return w(out, "Mail queue is empty\n".into());
    }
    w(
        out,
        format!(
            "{:<20} {:>8} {:<31} {}\n",
            "-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------"
        ),
    )?;
    let mut bytes = 0;
    for e in &entries {
        bytes += e.size;
        let date = mail_parser::DateTime::from_timestamp(e.arrived).to_rfc822();
        let sender = if e.sender.is_empty() {
            "<>".to_string()
        } else {
            escaped(&e.sender)
        };
        w(
            out,
            format!("{:<20} {:>8} {:<31} {}\n", e.id, e.size, date, sender),
        )?;
        for (rcpt, reason) in &e.recipients {
            if let Some(reason) = reason {
                w(out, format!("{:<62}({})\n", "", escaped(reason)))?;
            }
            w(out, format!("{:<62}{}\n", "", escaped(rcpt)))?;
        }
        w(out, "\n".into())?;
    }
    for name in &waiting {
        w(out, format!("{:<20} (not yet picked up)\n", escaped(name)))?;
    }
    w(
        out,
        format!(
            "-- {} Kbytes in {} Request{}.\n",
            bytes.div_ceil(1024),
            entries.len() + waiting.len(),
            if entries.len() + waiting.len() == 1 {
                ""
            } else {
                "s"
            }
        ),
    )
}

/// One queue run with the configured keys and relay (`queue run`, `sendmail -q`).
pub fn run_queue(config: &Config, scope: Scope) -> Result<queue::RunReport, SendmailError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SendmailError::Unavailable(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(run_queue_async(config, scope))
}

/// A run as root on a queue another user owns (the shared queue's service user) would use
/// root's GnuPG keyring, where recipients whose keys are in the owner's look keyless (signed or
/// clear copies, or refusals, instead of encrypted ones), and leave root's files in the owner's
/// GnuPG home. Listing and deleting are fine; delivering is the owner's.
fn refuse_root_on_anothers_queue(dir: &Path) -> Result<(), SendmailError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() != 0 => {
            let owner = queue::user_name(meta.uid());
            Err(SendmailError::NotOwner(format!(
                "the queue {} belongs to {owner} (uid {}): run it as that user, so that it \
                 uses that user's keys: `systemctl start sealpost-queue.service` (`sudo -u \
                 {owner} sealpost queue run` cannot read the drop files users left, which \
                 need CAP_DAC_READ_SEARCH)",
                dir.display(),
                meta.uid()
            )))
        }
        _ => Ok(()),
    }
}

/// [`run_queue`] inside a runtime. Waits for a queue run in progress to finish first. Files
/// the runner creates (queue database, reports) are its owner's alone (umask 077).
pub async fn run_queue_async(
    config: &Config,
    scope: Scope,
) -> Result<queue::RunReport, SendmailError> {
    refuse_root_on_anothers_queue(&config.queue.dir)?;
    owner_or_root(&config.queue.dir, "run")?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    // The queue first: a user who may not run it hears that (77), not what keeps them from
    // the relay's password file (78; review).
    let queue = Arc::new(Queue::open(&config.queue)?);
    check_relay(config)?;
    let relay = Relay::new(&config.relay, &queue::hostname())?
        .for_one_run()
        .passing_dsn();
    let dir = config.queue.dir.clone();
    let due = matches!(scope, Scope::Due);
    let _lock = match tokio::task::spawn_blocking(move || match due {
        true => queue::RunLock::acquire_unless_awaited(&dir),
        false => queue::RunLock::acquire(&dir).map(Some),
    })
    .await
    .map_err(|e| SendmailError::Unavailable(e.to_string()))??
    {
        Some(lock) => lock,
        None => {
            tracing::debug!("queue run: another run waits for the one in progress: leaving");
            return Ok(queue::RunReport::default());
        }
    };
    {
        let keys = Arc::new(crate::cli::key_service(config, None));
        // SIGTERM (systemctl stop, a shutdown) or SIGINT: no new message is started, the
        // ones in hand are finished, so no copy is cut off after the relay took it.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                crate::shutdown::signalled().await;
                tracing::info!("queue run: stopping after the messages in hand");
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let runner = Runner {
            queue,
            rewriter: Arc::new(Rewriter::new(keys.clone(), config.policy.clone())),
            reports: Arc::new(Rewriter::new(keys, config.policy.reports())),
            relay: Arc::new(relay),
            hostname: queue::hostname(),
            domain: config.queue.domain(),
            stop,
        };
        let report = runner.run(scope).await;
        watcher.abort();
        runner.relay.close().await;
        // The counts are the caller's to show (`queue run` on stdout, `sendmail -v -q` on
        // stderr); logged here as well, they were shown twice where the log is stderr. Each
        // recipient's decision is logged as it is made.
        Ok(report?)
    }
}

/// Text from a queue file or a relay, for the listing: its control characters (a terminal's
/// escape sequences, a newline that would forge an entry) shown escaped, as the log shows
/// them. A relay's reply, a drop file's name and a drop file's sender and recipients may be
/// anyone's (review: any local user could write into root's `mailq`).
fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_log_starts_over_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, vec![b'x'; RUN_LOG_BYTES as usize]).unwrap();
        run_log(dir.path()).unwrap().write_all(b"a\n").unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), RUN_LOG_BYTES + 2);
        assert!(!dir.path().join("run.log.1").exists());
        run_log(dir.path()).unwrap().write_all(b"b\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"b\n");
        let old = std::fs::read(dir.path().join("run.log.1")).unwrap();
        assert_eq!(old.len() as u64, RUN_LOG_BYTES + 2);
        assert!(old.ends_with(b"a\n"));
    }

    /// What the listing shows of a file name, a sender or a recipient: no control character
    /// reaches the terminal, and a newline cannot forge an entry.
    #[test]
    fn listing_text_is_escaped() {
        assert_eq!(
            super::escaped("a\u{1b}[2J\nb\u{7}c@example.org"),
            "a\\u{1b}[2J\\nb\\u{7}c@example.org"
        );
    }
}
