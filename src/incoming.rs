//! The incoming-side commands: `sealpost imap` (the daemon), `sealpost import` and
//! `sealpost passwd`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::cli::CliError;
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
    /// The account (created with the default mailboxes when new).
    #[arg(long, value_name = "NAME")]
    pub account: String,
    /// The mailbox to import into (created when missing).
    #[arg(long, value_name = "NAME", default_value = "INBOX")]
    pub mailbox: String,
    /// An mbox file, a Maildir, a directory of message files, or one message file.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// `sealpost imap`: serves until SIGTERM or SIGINT, then lets sessions finish.
pub async fn serve(config: Config, args: ImapArgs) -> Result<u8, CliError> {
    let store = open_store(&config).await?;
    let tls = imap::tls::acceptor(
        config.imap.certificate.as_deref(),
        config.imap.key.as_deref(),
        &config.store.state_dir(),
    )?;
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
    let mut listeners = Vec::new();
    for (address, mode) in wanted {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| CliError::Listen { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| CliError::Listen { address, source })?;
        let mode_name = match mode {
            imap::TlsMode::Implicit => "tls",
            imap::TlsMode::Starttls => "starttls",
        };
        // Tests and supervisors read this line to learn the port (port 0 in the config).
        println!("listening {mode_name} {bound}");
        tracing::info!(address = %bound, mode = mode_name, "imap: listening");
        listeners.push((listener, mode));
    }
    let shared = Arc::new(Shared {
        connections: Arc::new(Semaphore::new(config.imap.max_connections)),
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
    imap::run(listeners, shared, stopped)
        .await
        .map_err(|source| CliError::Input {
            what: "the listeners".into(),
            source,
        })?;
    Ok(0)
}

async fn open_store(config: &Config) -> Result<Store, CliError> {
    let path = config.store.path.clone();
    tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| CliError::Demo(e.to_string()))?
        .map_err(CliError::from)
}

/// `sealpost import`: prints how many messages went in.
pub async fn import(config: Config, args: ImportArgs) -> Result<u8, CliError> {
    let store = open_store(&config).await?;
    let report = tokio::task::spawn_blocking(move || {
        let account = store.ensure_account(&args.account)?;
        let name = imap::names::validate(imap::names::encode(&args.mailbox).as_bytes())
            .map_err(|e| CliError::Usage(format!("--mailbox {:?}: {e}", args.mailbox)))?;
        let mailbox = match store.mailbox(account, &name)? {
            Some(mailbox) => mailbox,
            None => store.create_mailbox(account, &name, None)?,
        };
        let report = crate::store::import_path(&store, mailbox.id, &args.path)?;
        Ok::<_, CliError>((report, name))
    })
    .await
    .map_err(|e| CliError::Demo(e.to_string()))??;
    let (report, name) = report;
    println!("imported {} messages into {name}", report.imported);
    for skipped in &report.skipped {
        eprintln!("sealpost: skipped {} (empty)", skipped.display());
    }
    Ok(0)
}

/// `sealpost passwd`: reads a password (one line on stdin) and prints its argon2id hash for
/// `password_hash` in `[[accounts]]`.
pub fn passwd() -> Result<u8, CliError> {
    let mut stdin = std::io::stdin().lock();
    let password =
        imap::auth::read_password_line(&mut stdin).map_err(|source| CliError::Input {
            what: "the password on stdin".into(),
            source,
        })?;
    if password.is_empty() {
        return Err(CliError::Usage("empty password on stdin".into()));
    }
    let hash = imap::auth::hash_password(&password).map_err(|e| CliError::Demo(e.to_string()))?;
    println!("{hash}");
    Ok(0)
}
