//! The incoming-side commands: `sealpost imap` (the daemon), `sealpost import`,
//! `sealpost deliver` and `sealpost passwd`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::cli::{outln, CliError};
use crate::config::Config;
use crate::imap::{self, Shared};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ImapArgs {
    /// Listen on this address with implicit TLS instead of the configured listeners (repeat;
    /// port 0 picks a free port). The bound addresses are printed on stdout.
    #[arg(long, value_name = "ADDR")]
    pub tls: Vec<std::net::SocketAddr>,
    /// Listen on this address with STARTTLS instead of the configured listeners (repeat).
    #[arg(long, value_name = "ADDR")]
    pub starttls: Vec<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// An [[accounts]] name of the configuration (its store account is made with the default
    /// mailboxes when new).
    #[arg(long, value_name = "NAME")]
    pub account: String,
    /// The mailbox to import into (created when missing), named as people read it: "Café",
    /// not its IMAP wire form "Caf&AOk-"; "/" separates levels.
    #[arg(long, value_name = "NAME", default_value = "INBOX")]
    pub mailbox: String,
    /// An mbox file, a Maildir, a directory of message files, or one message file.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// `sealpost imap`: serves until SIGTERM or SIGINT, then lets sessions finish.
pub async fn serve(config: Config, args: ImapArgs) -> Result<u8, CliError> {
    imap::auth::return_large_allocations();
    let store = open_store(&config).await?;
    journal_for_upstreams(&config, &store).await?;
    // A certificate or key that cannot be used is a setting to fix, named (78); a self-signed
    // pair that cannot be written (a full disk, review: 78 before) is not (73).
    let tls = imap::tls::acceptor(
        config.imap.certificate.as_deref(),
        config.imap.key.as_deref(),
        &config.store.state_dir(),
    )
    .map_err(|e| match e {
        imap::tls::TlsError::SelfSigned(_) => CliError::Setup(format!("TLS: {e}")),
        e => CliError::Setting(format!(
            "{}: [imap] certificate and key: {e}",
            config.source.as_deref().map_or_else(
                || "the configuration".to_string(),
                |f| f.display().to_string()
            )
        )),
    })?;
    let mut wanted: Vec<(std::net::SocketAddr, imap::TlsMode)> = Vec::new();
    wanted.extend(args.tls.iter().map(|a| (*a, imap::TlsMode::Implicit)));
    wanted.extend(args.starttls.iter().map(|a| (*a, imap::TlsMode::Starttls)));
    if wanted.is_empty() {
        wanted = config
            .imap
            .listen
            .iter()
            .map(|l| (l.address, l.tls))
            .collect();
    }
    // A server with no listener would run serving nobody (review: started, silent).
    if wanted.is_empty() {
        return Err(CliError::Usage(
            "no IMAP listener: [imap] listen is empty and neither --tls nor --starttls was given"
                .into(),
        ));
    }
    // Every listener is bound before any is announced: one that cannot be had stops the start
    // with nothing said to be listening (review: "listening" printed, then exit 69).
    let mut listeners = Vec::new();
    for (address, mode) in wanted {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| CliError::Listen {
                address: address.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| CliError::Listen {
            address: address.to_string(),
            source,
        })?;
        listeners.push((listener, mode, bound));
    }
    let mut bound_listeners = Vec::with_capacity(listeners.len());
    for (listener, mode, bound) in listeners {
        let mode_name = match mode {
            imap::TlsMode::Implicit => "tls",
            imap::TlsMode::Starttls => "starttls",
        };
        // Tests and supervisors read this line to learn the port (port 0 in the config).
        outln!("listening {mode_name} {bound}")?;
        tracing::info!(address = %bound, mode = mode_name, "imap: listening");
        bound_listeners.push((listener, mode));
    }
    let listeners = bound_listeners;
    let shared = Arc::new(Shared {
        connections: Arc::new(Semaphore::new(config.imap.max_connections)),
        penalties: crate::imap::auth::Penalties::new(std::time::Duration::from_millis(
            config.imap.limits.auth_failure_delay_ms,
        )),
        per_address: crate::imap::auth::PerAddress::new(config.imap.max_connections_per_address),
        config: config.imap.clone(),
        accounts: config.accounts.clone(),
        store,
        tls,
    });
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::signalled().await;
        let _ = stop.send(true);
    });
    // Accounts with an upstream are synced in the background, in this process, so that IDLE
    // sessions see new mail the moment it is stored.
    for syncer in syncers(&config, &shared.store, None)? {
        let stopped = stopped.clone();
        tokio::spawn(async move { syncer.run(stopped).await });
    }
    imap::run(listeners, shared, stopped)
        .await
        .map_err(|source| CliError::Input {
            what: "the listeners".into(),
            source,
        })?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// One pass over every folder, then exit (0 done, 64 no such account, 75 upstream,
    /// Maildir or GnuPG unavailable, the connection broken in the pass, or the store locked
    /// or full, 74 another store failure at its opening, 78 a setting to fix).
    #[arg(long)]
    pub once: bool,
    /// Only this account (one of the configuration's [[accounts]] with an upstream or a
    /// Maildir).
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
}

/// One source per account with `[accounts.upstream]` or `[accounts.maildir]` (or just
/// `only`'s), sharing one key service.
fn syncers(
    config: &Config,
    store: &Store,
    only: Option<&str>,
) -> Result<Vec<crate::sync::Source>, CliError> {
    use crate::sync::{maildir::MaildirSync, Source, Syncer};
    let has_source = |a: &crate::imap::Account| a.upstream.is_some() || a.maildir.is_some();
    if let Some(name) = only {
        if !config
            .accounts
            .iter()
            .any(|a| a.name == name && has_source(a))
        {
            return Err(CliError::Usage(format!(
                "--account {name}: no such account with [accounts.upstream] or \
                 [accounts.maildir] in the configuration"
            )));
        }
    }
    let keys = Arc::new(crate::cli::key_service(config, None));
    let mut sources = Vec::new();
    for account in config
        .accounts
        .iter()
        .filter(|a| only.is_none_or(|n| n == a.name))
    {
        if let Some(upstream) = &account.upstream {
            sources.push(Source::Imap(Box::new(Syncer {
                name: account.name.clone(),
                config: upstream.clone(),
                store: store.clone(),
                keys: keys.clone(),
                policy: config.policy.clone(),
                told: Default::default(),
            })));
        }
        if let Some(maildir) = &account.maildir {
            sources.push(Source::Maildir(MaildirSync {
                name: account.name.clone(),
                config: maildir.clone(),
                store: store.clone(),
                keys: keys.clone(),
                max_bytes: u64::from(config.imap.limits.max_append),
            }));
        }
    }
    Ok(sources)
}

/// `sealpost sync`: with --once, one pass per account (prints `ACCOUNT: N new`); without,
/// the daemon (sync, IDLE or poll, again) until SIGTERM.
pub async fn sync(config: Config, args: SyncArgs) -> Result<u8, CliError> {
    // A store another process holds locked, or whose disk is full, is a reason to try again
    // later, as it is for a pass (review: 74, where a pass says 75).
    let temporary = |e: CliError| match e {
        CliError::Store(e) if e.is_temporary() => CliError::Temporary(e.to_string()),
        e => e,
    };
    let store = open_store(&config).await.map_err(temporary)?;
    journal_for_upstreams(&config, &store)
        .await
        .map_err(temporary)?;
    let syncers = syncers(&config, &store, args.account.as_deref())?;
    if syncers.is_empty() {
        return Err(CliError::Usage(
            "no account has an [accounts.upstream] or [accounts.maildir] table: nothing to sync"
                .into(),
        ));
    }
    if args.once {
        let mut failures = Vec::new();
        let mut failed = None;
        let mut gnupg_waits = Vec::new();
        let mut broken_off = Vec::new();
        for syncer in &syncers {
            match syncer.sync_once().await {
                Ok(report) => {
                    outln!("{}", report_line(syncer.name(), &report))?;
                    if report.waiting > 0 {
                        let why = report
                            .waiting_reason
                            .as_deref()
                            .map_or(" (see the log)".to_string(), |r| {
                                format!(", the earliest for: {r}")
                            });
                        eprintln!(
                            "sealpost: sync {}: {} local changes not written back yet{why}",
                            syncer.name(),
                            report.waiting
                        );
                    }
                    if report.gnupg_waits {
                        gnupg_waits.push(syncer.name().to_string());
                    }
                    if let Some(last) = report.broken_off.last() {
                        let folders = report.broken_off.join(", ");
                        broken_off.push(if report.ended_early {
                            format!("{}: in {folders}; the pass ended at {last}", syncer.name())
                        } else {
                            format!("{}: in {folders}", syncer.name())
                        });
                    }
                }
                Err(e) => {
                    // What a pass stored before it broke off is told all the same.
                    let e = match e {
                        crate::sync::SyncError::Broke { error, report } => {
                            outln!("{}", report_line(syncer.name(), &report))?;
                            *error
                        }
                        e => e,
                    };
                    failures.push((syncer.name().to_string(), e));
                }
            }
        }
        // A setting to correct stays the answer whatever fails after it (review: a Maildir
        // not there, 75, came after a missing password file); the others are said before it,
        // each once (review: the answer was said twice).
        let answer = failures
            .iter()
            .position(|(_, e)| matches!(e, crate::sync::SyncError::Config(_)))
            .or(failures.len().checked_sub(1));
        if let Some(at) = answer {
            let (name, e) = failures.remove(at);
            for (other, e) in &failures {
                eprintln!("sealpost: sync {other}: {e}");
            }
            failed = Some((name, e));
        }
        // An upstream setting found wrong (the password file, the CA file, the host name) is
        // 78, as at start (review: 75, which a timer retries for good); anything else may
        // pass, a Maildir source that is not there too (a file system not mounted yet).
        return match failed {
            // A change that waits for GnuPG: the pass is not done, as when a fetch waits
            // for it (review: 0, and a timer took it for done).
            None if !gnupg_waits.is_empty() => Err(CliError::Temporary(format!(
                "GnuPG unavailable, local changes wait to be written back ({})",
                gnupg_waits.join(", ")
            ))),
            // The connection broke: what came is stored and reported above, the rest waits,
            // and the pass is not done (review: 0 after passes that stored nothing at all).
            None if !broken_off.is_empty() => Err(CliError::Temporary(format!(
                "the upstream connection broke, the rest waits for the next pass ({})",
                broken_off.join("; ")
            ))),
            None => Ok(0),
            Some((name, e @ crate::sync::SyncError::Config(_))) => {
                Err(CliError::Setting(format!("sync {name}: {e}")))
            }
            Some((name, e)) => Err(CliError::Temporary(format!("sync {name}: {e}"))),
        };
    }
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::signalled().await;
        let _ = stop.send(true);
    });
    let tasks: Vec<_> = syncers
        .into_iter()
        .map(|s| {
            let stopped = stopped.clone();
            tokio::spawn(async move { s.run(stopped).await })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}

/// `sync --once`'s line for one account: "NAME: N new", and what else the pass did.
fn report_line(name: &str, report: &crate::sync::SyncReport) -> String {
    let mut line = format!("{name}: {} new", report.total());
    if report.expunged > 0 {
        line.push_str(&format!(", {} expunged upstream", report.expunged));
    }
    if report.redecrypted > 0 {
        line.push_str(&format!(
            ", {} decrypted after a keyring change",
            report.redecrypted
        ));
    }
    line
}

/// Turns on the change journal of every account with `[accounts.upstream]`, before any
/// client or sync touches the store: what a client changes while the upstream has never
/// been reached (down, a wrong password, a first start offline) is written back once it is
/// (review: the journal started only at the first successful login, and changes made before
/// were never written back).
async fn journal_for_upstreams(config: &Config, store: &Store) -> Result<(), CliError> {
    let names: Vec<String> = config
        .accounts
        .iter()
        .filter(|a| a.upstream.is_some())
        .map(|a| a.name.clone())
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        for name in names {
            let account = store.ensure_account(&name)?;
            store.set_write_back(account, true)?;
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await
    .map_err(|e| CliError::Demo(e.to_string()))?
    .map_err(CliError::from)
}

async fn open_store(config: &Config) -> Result<Store, CliError> {
    let path = config.store.path.clone();
    tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| CliError::Demo(e.to_string()))?
        .map_err(CliError::from)
}

/// The account (created with the default mailboxes when new) and its mailbox `name` (created
/// when missing) that `import` and `deliver` write into.
/// The store's (IMAP wire) name of the mailbox `--mailbox` names as people read it (Café, not
/// Caf&AOk-).
fn stored_name(name: &str) -> Result<String, CliError> {
    imap::names::validate(imap::names::encode(name).as_bytes())
        .map_err(|e| CliError::Usage(format!("--mailbox {name:?}: {e}")))
}

fn target_mailbox(
    store: &Store,
    account: &str,
    name: &str,
) -> Result<crate::store::Mailbox, CliError> {
    let account = store.ensure_account(account)?;
    let stored = stored_name(name)?;
    Ok(match store.mailbox(account, &stored)? {
        Some(mailbox) => mailbox,
        // Made by another delivery meanwhile (review: the first two deliveries into a new
        // mailbox raced, and the loser answered 75, deferred): that one is used.
        None => match store.create_mailbox(account, &stored, None) {
            Err(crate::store::StoreError::MailboxExists(_)) => store
                .mailbox(account, &stored)?
                .ok_or_else(|| CliError::Demo(format!("mailbox {stored:?} vanished")))?,
            other => other?,
        },
    })
}

/// `sealpost import`: prints how many messages went in.
pub async fn import(config: Config, args: ImportArgs) -> Result<u8, CliError> {
    // As `deliver`: an account the configuration does not have (a typo) would be made in the
    // store, and its mail stored where nobody logs in (review).
    if !config.accounts.iter().any(|a| a.name == args.account) {
        return Err(CliError::NoUser(args.account));
    }
    let store = open_store(&config).await?;
    // ^C (or SIGTERM, SIGHUP) stores what was read and stops, saying how much went in.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::shutdown::signalled().await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let report = tokio::task::spawn_blocking(move || {
        // A new mailbox whose name the account's upstream would read as another folder is
        // refused, as the IMAP server refuses to create one.
        let account = store.ensure_account(&args.account)?;
        let stored = stored_name(&args.mailbox)?;
        if store.mailbox(account, &stored)?.is_none() {
            if let Some(problem) = store.upstream_name_problem(account, &stored)? {
                return Err(CliError::Usage(format!(
                    "--mailbox {:?}: {problem}",
                    args.mailbox
                )));
            }
        }
        let mailbox = target_mailbox(&store, &args.account, &args.mailbox)?;
        let report = crate::store::import_path_until(&store, mailbox.id, &args.path, &stop)?;
        Ok::<_, CliError>((report, mailbox.name))
    })
    .await
    .map_err(|e| CliError::Demo(e.to_string()))?;
    watcher.abort();
    let report = report?;
    let (report, name) = report;
    outln!("imported {} messages into {name}", report.imported)?;
    for skipped in &report.skipped {
        eprintln!(
            "sealpost: skipped {} ({})",
            skipped.path.display(),
            skipped.why
        );
    }
    Ok(0)
}

/// The longest password `passwd` hashes: well within the smallest line a LOGIN may have
/// before login (`imap.limits.max_line_before_login`, at least 1024 bytes).
const MAX_PASSWORD: usize = 512;

/// `sealpost passwd`: reads a password (one line on stdin) and prints its argon2id hash for
/// `password_hash` in `[[accounts]]`.
pub fn passwd() -> Result<u8, CliError> {
    let mut stdin = std::io::stdin().lock();
    let password =
        imap::auth::read_password_line(&mut stdin).map_err(|source| CliError::Input {
            what: "the password on stdin".into(),
            source,
        })?;
    // Bad input data (65), not a usage error (review: 64). One longer than a LOGIN before
    // login may be could never be given (review: a 10 MB one was hashed).
    if password.is_empty() {
        return Err(CliError::NotAMessage("empty password on stdin".into()));
    }
    if password.len() > MAX_PASSWORD {
        return Err(CliError::NotAMessage(format!(
            "a password of more than {MAX_PASSWORD} bytes could not be given at login"
        )));
    }
    let hash = imap::auth::hash_password(&password).map_err(|e| CliError::Demo(e.to_string()))?;
    outln!("{hash}")?;
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct DeliverArgs {
    /// The account (one of the configuration's [[accounts]]).
    #[arg(long, value_name = "NAME")]
    pub account: String,
    /// The mailbox to deliver into (created when missing), named as people read it: "Café",
    /// not its IMAP wire form "Caf&AOk-"; "/" separates levels.
    #[arg(long, value_name = "NAME", default_value = "INBOX")]
    pub mailbox: String,
    /// Reads no message: only tries the account's undecryptable messages again (what each
    /// delivery starts in the background once its message is stored).
    #[arg(long, hide = true)]
    pub retry_only: bool,
}

/// Starts `sealpost deliver --retry-only` for `account`, detached (its own process group, no
/// standard streams): a failure to start it is only logged.
fn start_retry(config: &Config, account: &str) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(path) = &config.source {
        cmd.arg("--config").arg(path);
    }
    cmd.args(["deliver", "--account", account, "--retry-only"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!(%account, "cannot start the retry of undecryptable messages: {e}");
    }
}

/// Whether a process must retry `account`'s undecryptable messages: one is due
/// ([`crate::sync::undecryptable_retry_due`]) and some message waits. A due retry with
/// nothing waiting is recorded here ([`crate::sync::record_empty_retry`]): no process per
/// delivery, nor per keyring change while nothing waits. When the store
/// cannot tell, it must (the retry says why).
async fn retry_due(store: &Store, keys: &crate::keys::KeyService, account: &str) -> bool {
    let (s, name) = (store.clone(), account.to_string());
    let id = match tokio::task::spawn_blocking(move || s.account(&name)).await {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => return false,
        _ => return true,
    };
    // The mark is read before the list, as a retry reads it.
    let mark = match crate::sync::undecryptable_retry_due(store, keys, id).await {
        Ok(None) => return false,
        Ok(Some(mark)) => mark,
        Err(_) => return true,
    };
    let s = store.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        s.with_keyword(id, crate::inbound::keyword::UNDECRYPTABLE)
    })
    .await;
    match waiting {
        Ok(Ok(waiting)) if waiting.is_empty() => crate::sync::record_empty_retry(store, id, mark)
            .await
            .is_err(),
        _ => true,
    }
}

/// `deliver --retry-only`: one retry of the account's undecryptable messages at a time (the
/// sync's lock), and at most one waiting for it (a lock file of its own): one that finds
/// another waiting ends at once, since that one reads the keyring only after it has the
/// sync's lock, so after whatever made this one start. Retries of many deliveries do not
/// queue up behind a long sync pass, a process each; and none is lost to a holder that read
/// the keyring before a key came (a sync pass, or a retry in mid-round: review).
async fn retry_in_background(config: &Config, account: &str) -> Result<u8, CliError> {
    // The store the delivery wrote to, or nothing to do: a store removed meanwhile is not
    // made again (in the tests, a directory came back after its test had removed it).
    let path = config.store.path.clone();
    let store = match tokio::task::spawn_blocking(move || Store::open_existing(&path)).await {
        Ok(Ok(store)) => store,
        Ok(Err(_)) if !config.store.path.try_exists().unwrap_or(true) => return Ok(0),
        Ok(Err(e)) => return Err(CliError::Temporary(e.to_string())),
        Err(e) => return Err(CliError::Temporary(e.to_string())),
    };
    let Some(id) = store.account(account)? else {
        return Ok(0);
    };
    let Some(waiting) = crate::sync::try_retry_wait(&store, id)
        .await
        .map_err(|e| CliError::Temporary(e.to_string()))?
    else {
        return Ok(0);
    };
    let lock = crate::sync::sync_lock(&store)
        .await
        .map_err(|e| CliError::Temporary(e.to_string()))?;
    // Let go only now: a retry that found this one waiting ended, trusting it to read the
    // keyring after this point.
    drop(waiting);
    let keys = crate::cli::key_service(config, None);
    // GnuPG that failed on a message for a passing reason (its agent not reachable, or not
    // yet able to use a key just imported) is asked again a few times before this retry gives
    // up: the next would wait for the next delivery (seen in the tests: "can't connect to the
    // agent" under load, and "gpg-agent could not use it now" right after an import).
    for pause in RETRY_PAUSES
        .iter()
        .map(|&s| Some(std::time::Duration::from_secs(s)))
        .chain([None])
    {
        match (
            crate::sync::retry_undecryptable(&store, &keys, id).await,
            pause,
        ) {
            (Err(crate::sync::SyncError::Keys(e)), Some(pause)) => {
                tracing::info!(%account, "retry of undecryptable messages: {e}; asked again soon");
                tokio::time::sleep(pause).await;
            }
            (Err(e), _) => {
                tracing::warn!(%account, "retry of undecryptable messages: {e}");
                break;
            }
            (Ok(_), _) => break,
        }
    }
    drop(lock);
    Ok(0)
}

/// The pauses (seconds) before a background retry asks GnuPG again when it could not be
/// reached: within the time an agent takes to come back, not a sync pass's worth of waiting.
const RETRY_PAUSES: [u64; 3] = [1, 3, 10];

/// How long deliver waits for GnuPG that cannot be reached before it stores a message
/// undecryptable (a day; Postfix bounces after 5).
const OUTAGE_GIVE_UP_SECS: i64 = 86_400;

/// The failure counts of delivered messages GnuPG failed on:
/// `deliver-undecrypted:{account}:{sha256 of the message}`.
pub(crate) const DELIVER_STRUCK_PREFIX: &str = "deliver-undecrypted:";

/// `sealpost deliver`: a local delivery agent (Postfix `mailbox_command`, procmail-style).
/// Reads one message on stdin, decrypts and verifies it with the configured GnuPG home (the
/// account owner's keys), stores it with its verdict and prints `delivered UID`. Exit codes
/// as an LDA's: 0 stored; 65 not a message; 67 unknown account; 75 try again later (GnuPG or
/// the store unavailable, a broken configuration or none at all: nothing was stored, the MTA
/// keeps the message).
pub async fn deliver(config: Config, args: DeliverArgs) -> Result<u8, CliError> {
    use std::io::Read;
    if !config.accounts.iter().any(|a| a.name == args.account) {
        // No configuration file at all (not yet installed, or the MTA's environment names
        // another): a set-up problem, not a mailbox that does not exist; the MTA keeps the
        // message rather than bouncing it.
        if config.source.is_none() {
            return Err(CliError::Temporary(format!(
                "no configuration file ({}, or --config): account {} is not known",
                crate::config::DEFAULT_PATH,
                args.account
            )));
        }
        return Err(CliError::NoUser(args.account));
    }
    if args.retry_only {
        let result = retry_in_background(&config, &args.account).await;
        if let Err(e) = &result {
            tracing::error!(account = %args.account, "retry of undecryptable messages: {e}");
        }
        return result;
    }
    let limit = config.imap.limits.max_append;
    let mut raw = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|source| CliError::Input {
            what: "the message on stdin".into(),
            source,
        })?;
    // What was read is all of the message only when it is within the limit.
    let too_large = || {
        CliError::NotAMessage(format!(
            "message larger than {limit} bytes with CRLF line ends (imap.limits.max_append)"
        ))
    };
    if raw.len() > limit as usize {
        return Err(too_large());
    }
    // read_to_end doubled the buffer as it grew: a large message does not keep the spare half.
    raw.shrink_to_fit();
    // Postfix's local(8) hands a mailbox_command the message after an mbox envelope line
    // ("From sender date"), as procmail and Dovecot's LDA expect: not a header field.
    crate::message::parse::drop_postmark(&mut raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(CliError::NotAMessage("empty message on stdin".into()));
    }
    // The limit is APPEND's, so it is judged with CRLF line ends too, as a client's APPEND
    // would send the message (review: a message with LF ends under the limit was stored
    // over it).
    let raw = crate::store::into_crlf(raw);
    if raw.len() > limit as usize {
        return Err(too_large());
    }
    let keys = crate::cli::key_service(&config, None);
    let store = open_store(&config)
        .await
        .map_err(|e| CliError::Temporary(e.to_string()))?;
    // GnuPG failing on this message (by its bytes) is counted at every try: after a few tries
    // it is stored as it came, marked undecryptable with the reason, instead of going back to
    // the MTA until its queue lifetime ends and it bounces, never seen. The message's own
    // failure (GnuPG past the deadline on it, say) gives up after an hour; gpg-agent that
    // cannot be reached says nothing about the message and gives up after a day (well inside
    // Postfix's 5 days), so that a short outage leaves nothing undecryptable. The daily retry
    // of undecryptable messages decrypts it once GnuPG works again.
    use sha2::Digest;
    let strike_key = format!(
        "{DELIVER_STRUCK_PREFIX}{}:{}",
        args.account,
        hex::encode(sha2::Sha256::digest(&raw))
    );
    let keyring_before = keys.keyring_state();
    let processed = match crate::inbound::process(&keys, &raw).await {
        Ok(p) => p,
        Err(crate::inbound::InboundError::Temporary(e)) => {
            // The reason alone: CliError::Temporary says "temporary failure" itself.
            let own = crate::sync::gnupg_works(&keys, &mut None).await;
            let (span, over) = if own {
                (crate::sync::FETCH_GIVE_UP_SECS, "an hour")
            } else {
                (OUTAGE_GIVE_UP_SECS, "a day (GnuPG cannot be reached)")
            };
            let strike = crate::sync::strike_over(&store, strike_key.clone(), span)
                .await
                .map_err(|s| CliError::Temporary(format!("{e} (and cannot count it: {s})")))?;
            if !strike.give_up {
                return Err(CliError::Temporary(format!(
                    "{e} (try {}; kept undecryptable after {} tries over {over})",
                    strike.tries,
                    crate::sync::FETCH_TRIES
                )));
            }
            tracing::error!(account = %args.account,
                "GnuPG failed on this message in {} tries since {}: {e}; stored as it came, \
                 marked undecryptable", strike.tries, strike.since);
            crate::inbound::unprocessed(
                &raw,
                &format!("GnuPG failed on it in {} tries: {e}", strike.tries),
            )
        }
    };
    // Only what is stored is held from here on.
    drop(raw);
    let keywords = processed.verdict.keywords();
    let undecryptable = keywords.contains(&crate::inbound::keyword::UNDECRYPTABLE);
    let verdict = processed.verdict.field_value();
    let account_name = args.account.clone();
    let deliver_store = store.clone();
    let appended = tokio::task::spawn_blocking(move || {
        let store = deliver_store;
        let mailbox = target_mailbox(&store, &args.account, &args.mailbox)?;
        let message = crate::store::Prepared::new(
            processed.message,
            crate::store::Flags::new(keywords),
            crate::store::InternalDate::now(),
        );
        let appended = store.append(mailbox.id, message, crate::store::Origin::Sync)?;
        // Its failure count, if it had one, goes with it. The message is stored: a failure
        // here must not make the MTA deliver it again (a count left over is forgotten after a
        // week, and only counts against these same bytes).
        let forget = || -> Result<(), crate::store::StoreError> {
            if store.meta(&strike_key)?.is_some() {
                let stamps = [":since", ":last"].map(|s| format!("{strike_key}{s}"));
                store.delete_meta(&[strike_key.clone(), stamps[0].clone(), stamps[1].clone()])?;
            }
            Ok(())
        };
        if let Err(e) = forget() {
            tracing::warn!(
                uid = appended.uid,
                "deliver: stored; its failure count stays: {e}"
            );
        }
        Ok::<_, CliError>(appended)
    })
    .await
    .map_err(|e| CliError::Temporary(e.to_string()))?
    .map_err(|e| match e {
        CliError::Usage(_) => e,
        other => CliError::Temporary(other.to_string()),
    })?;
    tracing::info!(account = %account_name, uid = appended.uid, %verdict, "deliver: stored");
    // Stored: whatever becomes of this line (stdout closed or on a full disk), the answer is
    // 0, or the MTA would deliver the message again.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "delivered {}", appended.uid);
    }
    // A key that came while this message was decrypted (an import under way): a retry may
    // have read the new keyring before this message was stored; the next one is due now.
    if undecryptable && keys.keyring_state() != keyring_before {
        let (s, name) = (store.clone(), account_name.clone());
        if let Ok(Ok(Some(id))) = tokio::task::spawn_blocking(move || s.account(&name)).await {
            if let Err(e) = crate::sync::retry_due_again(&store, id).await {
                tracing::warn!(account = %account_name, "the retry of undecryptable messages may wait a day: {e}");
            }
        }
    }
    // Messages kept undecryptable are tried again (when the keys changed, or once a day) by a
    // process of their own, in the background: the MTA has its answer now, and a retry that
    // takes long can neither hold it up nor get this delivery killed (Postfix bounces a
    // mailbox_command past command_time_limit). Only when one is due: not a process per
    // delivery.
    if retry_due(&store, &keys, &account_name).await {
        start_retry(&config, &account_name);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use crate::message::parse::is_postmark as is_envelope_line;

    #[test]
    fn an_mbox_envelope_line_is_not_a_from_field() {
        assert!(is_envelope_line(
            b"From alice@example.org Sat Dec  5 03:00:00 2026\nTo: b\n"
        ));
        assert!(is_envelope_line(b"From MAILER-DAEMON  Sat Dec  5\r\n"));
        assert!(!is_envelope_line(b"From : alice@example.org\r\nTo: b\r\n"));
        assert!(!is_envelope_line(b"From \t: alice@example.org\r\n"));
        assert!(!is_envelope_line(b"From: alice@example.org\r\n"));
        assert!(!is_envelope_line(b"Subject: From x\r\n"));
    }
}
