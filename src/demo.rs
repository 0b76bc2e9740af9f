//! `sealpost demo`: the outgoing round trip on embedded defaults. A throwaway GnuPG home gets
//! keys for a sender and two recipients; a third recipient has none. A sample message (To, Cc,
//! Bcc) goes through the core; every decision is printed, then each encrypted copy is
//! decrypted and its signature verified, and the signed copy is verified.

use std::path::Path;
use std::sync::Arc;

use crate::cli::{copy_file_name, outln, CliError};
use crate::config::Config;
use crate::keys::home;
use crate::message::mime::{encrypted_payload, signed_parts};
use crate::rewrite::{Decision, Envelope, Outcome, Policy, Rewriter};

const SAMPLE: &str = "From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.org>\r\n\
Cc: Dave <dave@example.net>\r\n\
Bcc: carol@example.org\r\n\
Subject: Quarterly numbers (do not forward)\r\n\
Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <demo-1@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Hi Bob,\r\n\
\r\n\
the numbers are in: revenue up 12 %, costs down 3 %. Grüße!\r\n\
\r\n\
Alice\r\n";

fn fail(what: &str) -> impl Fn(crate::keys::KeyError) -> CliError + '_ {
    move |e| CliError::Demo(format!("{what}: {e}"))
}

pub async fn run(config: Config, keep: Option<&Path>) -> Result<u8, CliError> {
    // Before anything is made: gpg-agent's socket path in a home under a long --keep
    // directory is too long, and key generation failed with "No agent running" (review).
    if let Some(d) = keep {
        if let Some(problem) = crate::config::gnupg_home_problem(&d.join("g")) {
            return Err(CliError::Usage(format!(
                "--keep {}: its GnuPG home {}: {problem}",
                d.display(),
                d.join("g").display()
            )));
        }
    }
    let dir = match keep {
        Some(d) => {
            // An I/O error on a directory the user named (a file there, no permission), as
            // `rewrite --out` gives it: 74, not a failed check of the round trip (70).
            std::fs::create_dir_all(d).map_err(|source| CliError::Output {
                path: d.display().to_string(),
                source,
            })?;
            d.to_path_buf()
        }
        None => home::short_temp_dir("sp-demo").map_err(|e| CliError::Demo(e.to_string()))?,
    };
    let gnupg = dir.join("g");
    home::prepare(&gnupg).map_err(|e| CliError::Demo(format!("{}: {e}", gnupg.display())))?;
    let result = round_trip(&config, &dir, &gnupg).await;
    home::stop_daemons(&gnupg);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        outln!(
            "\nkept: GnuPG home {} and copies in {}",
            gnupg.display(),
            dir.join("out").display()
        )?;
    }
    result
}

async fn round_trip(config: &Config, dir: &Path, gnupg: &Path) -> Result<u8, CliError> {
    let keys = Arc::new(crate::cli::start_keys(
        Some(gnupg.to_path_buf()),
        config.gnupg.worker_count(),
        config.gnupg.timeout(),
        Default::default(),
    ));
    outln!(
        "GnuPG home: {} (throwaway, gpg.conf: no-random-seed-file, auto-key-locate local)",
        gnupg.display()
    )?;
    for uid in [
        "Alice <alice@example.org>",
        "Bob <bob@example.org>",
        "Carol <carol@example.org>",
    ] {
        let fpr = keys
            .generate_key(uid)
            .await
            .map_err(fail("generating keys"))?;
        outln!("  generated ed25519/cv25519 key {fpr}  {uid}")?;
    }
    outln!("  dave@example.net has no key\n")?;
    // The demo shows the embedded defaults, whatever the configuration file says.
    let policy = Policy::default();
    outln!(
        "policy (built-in defaults): mode={:?} sign={} form={:?} header-protection={} autocrypt={}\n",
        policy.mode, policy.sign, policy.encrypted_form, policy.header_protection, policy.autocrypt
    )?;

    let rewriter = Rewriter::new(Arc::clone(&keys), policy);
    let envelope = Envelope {
        id: "demo".into(),
        sender: "alice@example.org".into(),
        recipients: vec![
            "bob@example.org".into(),
            "dave@example.net".into(),
            "carol@example.org".into(),
        ],
    };
    outln!("message: From alice, To bob, Cc dave, Bcc carol, Subject \"Quarterly numbers (do not forward)\"\n")?;
    let outcome = rewriter
        .rewrite(&envelope, SAMPLE.as_bytes().to_vec())
        .await?;
    let copies = match outcome {
        Outcome::Refused(reply) => {
            outln!("refused: {reply}")?;
            return Ok(69);
        }
        Outcome::Copies(c) => c,
    };
    let out = dir.join("out");
    std::fs::create_dir_all(&out).map_err(|e| CliError::Demo(e.to_string()))?;
    outln!("{:<20} {:<10} key or reason", "recipient", "decision")?;
    for (i, c) in copies.iter().enumerate() {
        outln!(
            "{:<20} {:<10} {}",
            c.recipient,
            c.decision.name(),
            c.decision.detail()
        )?;
        if let Some(bytes) = &c.message {
            std::fs::write(out.join(copy_file_name(i, &c.recipient)), bytes)
                .map_err(|e| CliError::Demo(e.to_string()))?;
        }
    }
    outln!()?;
    let mut failures = 0;
    for c in &copies {
        let Some(bytes) = &c.message else { continue };
        let subject = outer_subject(bytes);
        match &c.decision {
            Decision::Encrypted { .. } => {
                let armored = encrypted_payload(bytes)
                    .ok_or_else(|| CliError::Demo("copy is not multipart/encrypted".into()))?;
                let dec = keys
                    .decrypt_verify(armored)
                    .await
                    .map_err(fail("decrypting"))?;
                let (signed, sig) = signed_parts(&dec.plaintext)
                    .ok_or_else(|| CliError::Demo("plaintext is not multipart/signed".into()))?;
                let checks = keys
                    .verify_detached(sig, signed.clone())
                    .await
                    .map_err(fail("verifying"))?;
                let ok = checks.iter().any(|s| s.valid);
                let inner_subject = outer_subject(&signed);
                outln!(
                    "{}: decrypted (encrypted to {} key: {}), signature {} ({}); outer Subject \"{}\", inner Subject \"{}\"",
                    c.recipient,
                    dec.recipients.len(),
                    dec.recipients.join(", "),
                    if ok { "valid" } else { "INVALID" },
                    checks.first().map_or("none", |s| s.fingerprint.as_str()),
                    subject,
                    inner_subject,
                )?;
                failures += usize::from(!ok || dec.recipients.len() != 1);
            }
            Decision::Signed { .. } => {
                let (signed, sig) = signed_parts(bytes)
                    .ok_or_else(|| CliError::Demo("copy is not multipart/signed".into()))?;
                let checks = keys
                    .verify_detached(sig, signed)
                    .await
                    .map_err(fail("verifying"))?;
                let ok = checks.iter().any(|s| s.valid);
                outln!(
                    "{}: signed cleartext, signature {}; Subject \"{}\"",
                    c.recipient,
                    if ok { "valid" } else { "INVALID" },
                    subject
                )?;
                failures += usize::from(!ok);
            }
            _ => {}
        }
        if String::from_utf8_lossy(bytes).contains("Bcc:") {
            outln!("{}: ERROR: copy carries a Bcc header", c.recipient)?;
            failures += 1;
        }
    }
    if failures > 0 {
        return Err(CliError::Demo(format!("{failures} check(s) failed")));
    }
    outln!(
        "\nround trip ok: {} copies, no Bcc header in any copy",
        copies.len()
    )?;
    Ok(0)
}

fn outer_subject(bytes: &[u8]) -> String {
    crate::message::parse::mail_parser()
        .parse(bytes)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}
