//! `make bench`: the sendmail drop-in, written to BENCHMARKS.md (section "sendmail drop-in").
//!
//! 1. The caller's wait: from starting `sendmail -i rcpt < 10 KB message` to its exit, for
//!    sealpost (spool, then a background queue run) and for Debian's msmtp (which holds the
//!    caller for the whole TLS + AUTH + SMTP transaction), against the same relay on loopback
//!    (tests/smtp_relay.py: STARTTLS required, AUTH). Median and 90th percentile of N runs.
//! 2. Queued copies per second: M one-recipient and M/5 five-recipient messages queued, then
//!    one `sealpost queue run` (every copy signed, encrypted to its recipient and relayed),
//!    against the gpg CLI floor: 2 cores ÷ the time of one `gpg --sign --encrypt` per copy.
//!
//! Goals (issue 4): caller's wait ≤ msmtp's; queued copies/s ≥ 0.9 × the gpg floor.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/gnupg.rs"]
mod gnupg;
#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "../tests/common/relay.rs"]
#[allow(dead_code)]
mod relay;
#[path = "common/report.rs"]
mod report;

use sealpost::keys::home;

const CALLS: usize = 30;
const MESSAGES_1: usize = 500;
const MESSAGES_5: usize = 100;
const CLI_ROUNDS: usize = 30;

fn message_10k(to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@example.org>\nTo: {to}\nSubject: Benchmark message\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    );
    let mut i = 0;
    while m.len() < 10_240 {
        m.push_str(&format!(
            "Line {i}: the quick brown fox jumps over the lazy dog, grüße.\n"
        ));
        i += 1;
    }
    m.into_bytes()
}

/// Runs `cmd` with `stdin`, returns the wall time from spawn to exit.
fn timed(cmd: &mut Command, stdin: &[u8]) -> Duration {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, 90th percentile) in ms.
fn spread(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(v[v.len() * 9 / 10]))
}

fn main() {
    let out_path = report::start();
    let gpg_dir = home::short_temp_dir("sps").unwrap();
    home::prepare(&gpg_dir).unwrap();
    let uids: Vec<String> = std::iter::once("Alice <alice@example.org>".to_string())
        .chain((1..=5).map(|n| format!("R{n} <r{n}@example.org>")))
        .collect();
    for uid in &uids {
        gnupg::generate(&gpg_dir, uid);
    }
    let work = tempfile::tempdir().unwrap();
    let pki = relay::Pki::new(&work.path().join("pki"));
    let relay = relay::Relay::start(
        &pki,
        &work.path().join("maildir"),
        &relay::RelayOptions::default(),
    );
    let password = work.path().join("password");
    std::fs::write(&password, relay::PASSWORD).unwrap();
    let config = work.path().join("sealpost.toml");
    let write_config = |run_after_submit: bool, form: &str, gpg_home: &std::path::Path| {
        std::fs::write(
            &config,
            format!(
                "[policy]\nencrypted_form = \"{form}\"\n[gnupg]\nhome = \"{}\"\n[queue]\ndir = \"{}\"\nrun_after_submit = {run_after_submit}\n\
                 [relay]\nhost = \"localhost\"\nport = {}\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
                 [log]\nlevel = \"warn\"\n",
                gpg_home.display(),
                work.path().join("queue").display(),
                relay.port,
                relay::USER,
                password.display(),
                pki.ca.display()
            ),
        )
        .unwrap()
    };
    let sealpost = env!("CARGO_BIN_EXE_sealpost");
    let message = message_10k("r1@example.org");

    // 1. The caller's wait.
    write_config(true, "signed-then-encrypted", &gpg_dir);
    let mut ours = Vec::new();
    for _ in 0..CALLS {
        ours.push(timed(
            Command::new(sealpost).args([
                "--config",
                config.to_str().unwrap(),
                "sendmail",
                "-i",
                "r1@example.org",
            ]),
            &message,
        ));
    }
    let t = Instant::now();
    relay.delivered(CALLS);
    let drain_after = t.elapsed();
    let msmtprc = work.path().join("msmtprc");
    std::fs::write(
        &msmtprc,
        format!(
            "defaults\ntls on\ntls_starttls on\ntls_trust_file {}\naccount default\nhost localhost\nport {}\nfrom alice@example.org\nauth on\nuser {}\npassword {}\n",
            pki.ca.display(),
            relay.port,
            relay::USER,
            relay::PASSWORD
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&msmtprc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut theirs = Vec::new();
    for _ in 0..CALLS {
        theirs.push(timed(
            Command::new("msmtp").args(["-C", msmtprc.to_str().unwrap(), "-i", "r1@example.org"]),
            &message,
        ));
    }
    relay.delivered(CALLS);
    let (our_median, our_p90) = spread(ours);
    let (their_median, their_p90) = spread(theirs);

    // 2. Queued copies per second against the gpg floor.
    let cli_ms = gnupg::sign_encrypt_ms(&gpg_dir, &message, CLI_ROUNDS);
    let floor = 2.0 * 1000.0 / cli_ms;
    // The same keys imported into a fresh home (README, "GnuPG").
    let imported = gnupg::imported_copy(&gpg_dir, "spsk");
    let imported_cli_ms = gnupg::sign_encrypt_ms(&imported, &message, CLI_ROUNDS);
    let imported_floor = 2.0 * 1000.0 / imported_cli_ms;

    let five = message_10k(
        "r1@example.org, r2@example.org, r3@example.org, r4@example.org, r5@example.org",
    );
    let all5 = vec![
        "r1@example.org",
        "r2@example.org",
        "r3@example.org",
        "r4@example.org",
        "r5@example.org",
    ];
    let mut rates = Vec::new();
    let one = vec!["r1@example.org"];
    for (form, keys, messages, body, rcpts) in [
        (
            "signed-then-encrypted",
            "generated",
            MESSAGES_1,
            &message,
            &one,
        ),
        (
            "signed-then-encrypted",
            "generated",
            MESSAGES_5,
            &five,
            &all5,
        ),
        ("combined", "generated", MESSAGES_1, &message, &one),
        ("combined", "generated", MESSAGES_5, &five, &all5),
        (
            "signed-then-encrypted",
            "imported",
            MESSAGES_1,
            &message,
            &one,
        ),
        (
            "signed-then-encrypted",
            "imported",
            MESSAGES_5,
            &five,
            &all5,
        ),
    ] {
        let (home, floor) = match keys {
            "generated" => (&gpg_dir, floor),
            _ => (&imported, imported_floor),
        };
        write_config(false, form, home);
        for _ in 0..messages {
            let mut args = vec!["--config", config.to_str().unwrap(), "sendmail", "-i"];
            args.extend(rcpts.iter().copied());
            timed(Command::new(sealpost).args(&args), body);
        }
        let copies = messages * rcpts.len();
        let t = Instant::now();
        let out = Command::new(sealpost)
            .args(["--config", config.to_str().unwrap(), "queue", "run"])
            .output()
            .unwrap();
        let elapsed = t.elapsed();
        assert!(out.status.success(), "{out:?}");
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(summary.contains(&format!("{copies} sent")), "{summary}");
        relay.delivered(copies);
        rates.push((
            form,
            keys,
            floor,
            messages,
            rcpts.len(),
            copies,
            elapsed,
            copies as f64 / elapsed.as_secs_f64(),
        ));
    }

    let mut body = String::new();
    body.push_str(&format!(
        "\nCommand: `make bench` (`cargo bench --bench sendmail -- --out BENCHMARKS.md`). Relay: \
         tests/smtp_relay.py (aiosmtpd) on loopback, STARTTLS required, AUTH PLAIN. 10 KB message, \
         ed25519/cv25519 keys, GnuPG home with `no-random-seed-file`; 2-core VM (wall times vary \
         by ±40 % between runs).\n\n\
         ### The caller's wait (`sendmail -i rcpt < message`, spawn to exit, {CALLS} runs)\n\n\
         | | median | 90th percentile |\n|---|---|---|\n\
         | sealpost (spooled durably, delivery in the background) | {our_median:.1} ms | {our_p90:.1} ms |\n\
         | msmtp {msmtp} (TLS + AUTH + SMTP transaction before exit, no encryption) | {their_median:.1} ms | {their_p90:.1} ms |\n\n\
         Ratio sealpost ÷ msmtp (median): {ratio:.2}× (goal ≤ 1). The {CALLS} background deliveries had all \
         reached the relay {drain:.0} ms after the last sealpost call returned.\n\n\
         ### Queued copies per second (`sealpost queue run` over a filled queue)\n\n\
         gpg CLI `--sign --encrypt` per copy: {cli_ms:.2} ms → floor for 2 cores: {floor:.1} copies/s. \
         The same keys imported into a fresh home instead of generated there (README, \"GnuPG\": \
         gpg checks a generated key's self-signatures at every use): {imported_cli_ms:.2} ms → {imported_floor:.1} copies/s; each run is compared \
         with the floor of its own home.\n\n\
         | `[policy] encrypted_form` | keys | messages × recipients | copies | queue run | copies/s | ÷ floor |\n|---|---|---|---|---|---|---|\n",
        msmtp = msmtp_version(),
        ratio = our_median / their_median,
        drain = ms(drain_after),
    ));
    for (form, keys, floor, messages, rcpts, copies, elapsed, rate) in &rates {
        body.push_str(&format!(
            "| {form} | {keys} | {messages} × {rcpts} | {copies} | {:.2} s | {rate:.1} | {:.2}× |\n",
            elapsed.as_secs_f64(),
            rate / floor
        ));
    }
    body.push_str(
        "\nGoal: ≥ 0.9 × the floor. Each copy is signed, encrypted to its recipient, and relayed over \
         TLS in its own SMTP transaction. signed-then-encrypted (RFC 3156 §6.1, the default) costs one \
         signature per message plus one encryption for all its copies (split per copy), so a \
         one-recipient message needs two gpg processes where the floor counts one, and a \
         5-recipient message two where the floor counts five; combined (§6.2) needs one per \
         message. The relay \
         (Python) and gpg-agent run on the same two cores during the run, the floor's gpg alone.\n",
    );
    print!("{body}");
    report::write_section(out_path.as_deref(), "## sendmail drop-in (issue 4)", &body);
    relay.stop();
    for dir in [&gpg_dir, &imported] {
        home::stop_daemons(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn msmtp_version() -> String {
    report::first_line("msmtp", &["--version"])
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}
