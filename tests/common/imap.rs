//! Drives tests/imap/client.py, a scripted Python imaplib client, against any IMAP server
//! (the throwaway Dovecot or sealpost), so the same script's outputs can be compared field
//! by field. The step and output formats are documented at the top of client.py.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// How a client reaches the server; the certificate file is the trust anchor (the server's
/// self-signed certificate).
#[derive(Clone, Debug)]
pub enum Tls {
    None,
    /// Plain connect, then STARTTLS (RFC 3501 §6.2.1).
    Starttls(PathBuf),
    /// TLS from the first byte (IMAPS, RFC 8314).
    Implicit(PathBuf),
}

pub fn client_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/imap/client.py")
}

/// Runs `steps` (a JSON list) on 127.0.0.1:`port` after logging in as `user`; returns
/// client.py's JSON output. Panics when the client fails (connection or protocol broken);
/// NO and BAD answers are part of the output.
///
/// This blocks: from async tests whose server runs in the same runtime, call it through
/// `tokio::task::spawn_blocking` (or `run_client_async`).
pub fn run_client(port: u16, user: &str, password: &str, tls: Tls, steps: &Value) -> Value {
    try_run_client(port, user, password, tls, steps).unwrap_or_else(|e| panic!("{e}"))
}

/// Like `run_client`, but a failed client (TLS verification, dropped connection) is an Err
/// carrying its stderr.
pub fn try_run_client(
    port: u16,
    user: &str,
    password: &str,
    tls: Tls,
    steps: &Value,
) -> Result<Value, String> {
    run_client_args(port, &["--user", user, "--password", password], tls, steps)
}

/// Like `run_client` but without the initial login: the script logs in itself (a `login`
/// step or a raw LOGIN/AUTHENTICATE line).
pub fn run_client_no_login(port: u16, tls: Tls, steps: &Value) -> Value {
    run_client_args(port, &["--no-login"], tls, steps).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn run_client_async(
    port: u16,
    user: String,
    password: String,
    tls: Tls,
    steps: Value,
) -> Value {
    tokio::task::spawn_blocking(move || run_client(port, &user, &password, tls, &steps))
        .await
        .expect("client thread")
}

fn run_client_args(port: u16, login: &[&str], tls: Tls, steps: &Value) -> Result<Value, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(client_py())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(login);
    match &tls {
        Tls::None => {}
        Tls::Starttls(ca) => {
            cmd.arg("--starttls").arg("--cafile").arg(ca);
        }
        Tls::Implicit(ca) => {
            cmd.arg("--tls").arg("--cafile").arg(ca);
        }
    }
    let mut child = cmd
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let script = serde_json::to_vec(steps).unwrap();
    child.stdin.take().unwrap().write_all(&script).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "client.py on port {port} failed ({}): {}\nscript: {steps}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
/// The result of step `i`, checking that its tagged status is OK.
pub fn ok_step(output: &Value, i: usize) -> &Value {
    let step = &output["steps"][i];
    assert_eq!(step["tagged"]["status"], "OK", "step {i} not OK: {step:#}");
    step
}

/// The `fetch_all` step `i`'s messages as (uid, BODY[] bytes), in UID order.
pub fn fetched_bodies(output: &Value, i: usize) -> Vec<(u64, Vec<u8>)> {
    use base64::Engine;
    ok_step(output, i)["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let raw = m["raw_b64"].as_str().expect("raw_b64");
            (
                m["uid"].as_u64().expect("uid"),
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .unwrap(),
            )
        })
        .collect()
}

/// An `append` step for a file.
pub fn append_file(mailbox: &str, file: &std::path::Path) -> Value {
    serde_json::json!({"cmd": "append", "mailbox": mailbox, "file": file})
}

/// An `append` step for bytes.
pub fn append_bytes(mailbox: &str, raw: &[u8]) -> Value {
    use base64::Engine;
    serde_json::json!({
        "cmd": "append",
        "mailbox": mailbox,
        "data_b64": base64::engine::general_purpose::STANDARD.encode(raw),
    })
}
