//! Ports for the test servers that must be told their port before they start (Postfix, the
//! milter, Dovecot, the relay).
//!
//! They are taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range). A port
//! found by binding port 0 is an ephemeral one: until the server binds it, any outgoing
//! connection on the machine (Postfix to its milter, a test client) may take it as its local
//! port, and a test running in parallel may be handed the same number. The server then cannot
//! bind, while the test's readiness probe reaches whatever does listen there. A milter test in
//! CI got Postfix's "451 4.7.1 Service unavailable" before the milter had been touched, which
//! this explains; it did not happen again in runs here, so it is not proven.
//!
//! Each test process walks its own stretch of the range with a counter: two tests of one
//! process never get the same port, and a port still in use elsewhere is skipped.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port on 127.0.0.1 that nothing listens on and that no outgoing connection will take.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = if ephemeral_start() > 12000 {
        10000
    } else {
        1024
    };
    let span = ephemeral_start().saturating_sub(low).max(1);
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < span, "no free port left below the ephemeral range");
        let port = u16::try_from(low + (start + n) % span).expect("port below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
