//! Shutdown signals: SIGTERM (systemd stop) and SIGINT (a terminal) both ask daemons to finish
//! what they have in hand and exit.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signalled() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process still stops on the default action.
        _ => std::future::pending::<()>().await,
    }
}
