//! The gpg command line for the benchmarks: the CLI floor they compare against, and key
//! generation for their throwaway homes.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `gpg --homedir HOME --batch --yes --quiet ARGS` with `stdin`; returns stdout.
pub fn gpg(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--yes", "--quiet"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gpg runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gpg {args:?} failed");
    out.stdout
}

/// Generates an ed25519/cv25519 key without a passphrase for `uid`.
pub fn generate(home: &Path, uid: &str) {
    gpg(
        home,
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "future-default",
            "default",
            "never",
        ],
        None,
    );
}

/// The CLI floor: milliseconds per `gpg --sign --encrypt --armor` of `message` from
/// alice@example.org to r1@example.org, `rounds` in a row after one warm-up.
pub fn sign_encrypt_ms(home: &Path, message: &[u8], rounds: usize) -> f64 {
    let args = [
        "--armor",
        "--trust-model",
        "always",
        "-u",
        "alice@example.org",
        "-r",
        "r1@example.org",
        "--sign",
        "--encrypt",
    ];
    gpg(home, &args, Some(message));
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        gpg(home, &args, Some(message));
    }
    t.elapsed().as_secs_f64() * 1000.0 / rounds as f64
}

/// A new GnuPG home under /tmp with the keys of `from` (public and secret keys, owner trust)
/// and the same gpg.conf, every key imported rather than generated there. gpg (2.2.40)
/// stores the result of its signature checks with a key it imports into a keybox, not with
/// a key it generates there: each run checks a generated key's self-signatures again (README,
/// "GnuPG").
pub fn imported_copy(from: &Path, prefix: &str) -> std::path::PathBuf {
    use sealpost::keys::home;
    let dir = home::short_temp_dir(prefix).unwrap();
    home::prepare(&dir).unwrap();
    let public = gpg(from, &["--export"], None);
    let secret = gpg(
        from,
        &[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--export-secret-keys",
        ],
        None,
    );
    let trust = gpg(from, &["--export-ownertrust"], None);
    gpg(&dir, &["--import"], Some(&public));
    gpg(
        &dir,
        &[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--import",
        ],
        Some(&secret),
    );
    gpg(&dir, &["--import-ownertrust"], Some(&trust));
    dir
}
