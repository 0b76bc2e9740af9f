//! Shutdown signals: SIGTERM (systemd stop), SIGINT (a terminal) and SIGHUP (the terminal gone,
//! or an administrator's habit of "reload") all ask daemons to finish what they have in hand
//! and exit. sealpost reads its configuration only at start: a reload is a restart, which
//! SIGHUP's default action made an abrupt one (exit 129, messages in hand dropped: review).

use tokio::signal::unix::{signal, SignalKind};

/// Resolves at the first SIGTERM, SIGINT or SIGHUP.
pub async fn signalled() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let hup = signal(SignalKind::hangup());
    match (term, int, hup) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
        }
        // Without signal handlers the process still stops on the default action.
        _ => std::future::pending::<()>().await,
    }
}
