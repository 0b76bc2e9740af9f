//! `make bench`: `sealpost sync --once` against a throwaway Dovecot as the upstream account,
//! written to BENCHMARKS.md (section "Incoming sync").
//!
//! Upstream is tests/common/dovecot.rs on loopback, reached over implicit TLS with its own
//! certificate as trust anchor, as in tests/sync.rs. The messages are 10 KB texts from Alice
//! to Bob, each encrypted and signed by sealpost's own outgoing core (two GnuPG workers), so
//! each is a distinct ciphertext. They are written straight into the Dovecot user's Maildir
//! (Dovecot-style names with S= and W=, CRLF) and indexed by one EXAMINE per folder before
//! any timing, as a provider's mailbox would be. Each `sync --once` (the release binary that
//! `cargo bench` builds) writes into a fresh store of its own and is timed from spawn to exit;
//! its CPU time comes from wait4's rusage, its memory from /proc (VmRSS and VmHWM, sampled,
//! summed with its `sealpost gpg-worker` children).
//! Afterwards every synced message must carry `$Sealpost-Encrypted` and `$Sealpost-Signed` in
//! the local store (read over sealpost's own IMAP server): decrypted, signature verified.
//!
//! 1. Import speed: N messages (`SEALPOST_BENCH_MESSAGES`, default 2,000) per encrypted form,
//!    the default signed-then-encrypted (RFC 3156 §6.1) and combined (§6.2), each in its own
//!    upstream folder. Beside each, the gpg CLI floor on 2 cores: a sample of 100 of the same
//!    ciphertexts decrypted one at a time with Bob's home, the signature verified too (for
//!    §6.2 `gpg --decrypt` does both; for §6.1 the signed part inside needs a second
//!    `gpg --verify`); per-message time t, floor = 2 ÷ t messages/s.
//! 2. A no-change resync of F folders (`SEALPOST_BENCH_FOLDERS`, default 100, INBOX among
//!    them, 3 messages each): one sync, then several more with nothing new.
//! 3. Memory over a large first sync: M messages (`SEALPOST_BENCH_MEMORY_MESSAGES`, default
//!    20,000) in one folder: the §6.1 ciphertexts of part 1 again, each upstream copy made
//!    distinct by a `Received:` line of its own (the decryption work per message is the same).
//!    VmRSS is sampled every 200 ms beside the local message count; the peak (VmHWM) is
//!    compared with that of the N-message sync of part 1.
//!
//! `SEALPOST_BENCH_WORKERS=N` sets `gnupg.workers` of every sync (default 0: sealpost's own
//! default), for comparing pool sizes.
//!
//! `SEALPOST_BENCH_WRAP="strace -f -tt -o /tmp/sync.strace"` (or `perf record -g -o FILE`)
//! runs every sync under that command, for profiling; the figures then include its overhead
//! and the memory ones are the wrapper's.
//!
//! Goals (issue 6): sync ≥ 0.9 × the gpg floor; a no-change resync of 100 folders ≤ 1 s;
//! memory flat (peak of the M-message sync within 10 %, at least 4 MiB, of the N-message one).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

#[allow(dead_code)]
#[path = "../tests/common/dovecot.rs"]
mod dovecot;
#[allow(dead_code)]
#[path = "common/gnupg.rs"]
mod gnupg;
#[path = "common/machine.rs"]
mod machine;
#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

use dovecot::Dovecot;
use sealpost::keys::{home, KeyService};
use sealpost::rewrite::{EncryptedForm, Envelope, Outcome, Policy, Rewriter};
use server::{Raw, Server};

const MESSAGES: usize = 2_000;
const FOLDERS: usize = 100;
const PER_FOLDER: usize = 3;
const MEMORY_MESSAGES: usize = 20_000;
/// Ciphertexts the gpg CLI decrypts for the floor.
const CLI_SAMPLE: usize = 100;
/// Timed no-change resyncs after the first sync of the folders.
const RESYNCS: usize = 7;
/// How long the benchmark waits for other work on the machine to finish before it starts.
const QUIET_WAIT: Duration = Duration::from_secs(180);
/// Flat memory: the large sync's peak within this fraction of the small one's, or within
/// `FLAT_SLACK_KIB` (as in the milter benchmark).
const FLAT_FRACTION: f64 = 0.10;
const FLAT_SLACK_KIB: u64 = 4 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1)
        .unwrap_or(default)
}

/// Alice's home (her secret key, Bob's public key: the sender's side) and Bob's (his secret
/// key, Alice's public key: the side that syncs); stopped and removed at the end, also when
/// the benchmark panics.
struct Homes {
    alice: PathBuf,
    bob: PathBuf,
    /// Bob's keys again, imported into a fresh home (README, "GnuPG").
    bob_imported: PathBuf,
}

impl Homes {
    fn new() -> Homes {
        let make = |prefix: &str, uid: &str| {
            let dir = home::short_temp_dir(prefix).unwrap();
            home::prepare(&dir).unwrap();
            gnupg::generate(&dir, uid);
            dir
        };
        let alice = make("spsa", "Alice <alice@example.org>");
        let bob = make("spsb", "Bob <bob@example.org>");
        let alice_pub = gnupg::gpg(&alice, &["--armor", "--export", ALICE], None);
        gnupg::gpg(&bob, &["--import"], Some(&alice_pub));
        let bob_pub = gnupg::gpg(&bob, &["--armor", "--export", BOB], None);
        gnupg::gpg(&alice, &["--import"], Some(&bob_pub));
        let bob_imported = gnupg::imported_copy(&bob, "spsk");
        Homes {
            alice,
            bob,
            bob_imported,
        }
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        for dir in [&self.alice, &self.bob, &self.bob_imported] {
            home::stop_daemons(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A 10 KB text from Alice to Bob (as in the other benchmarks), CRLF, its own Message-ID.
fn plaintext(tag: &str, i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <{ALICE}>\r\nTo: Bob <{BOB}>\r\nSubject: Benchmark message {i}\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <sync-{tag}-{i}@example.org>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n"
    );
    let mut n = 0;
    while m.len() < 10_240 {
        let _ = write!(
            m,
            "Line {n} of {i}: the quick brown fox jumps over the lazy dog, grüße.\r\n"
        );
        n += 1;
    }
    m.into_bytes()
}

/// `count` copies for Bob made by the outgoing core in `form`, two at a time.
fn encrypt_all(
    runtime: &tokio::runtime::Runtime,
    alice: &Path,
    form: EncryptedForm,
    tag: &str,
    count: usize,
) -> Vec<Vec<u8>> {
    let keys = Arc::new(KeyService::start(
        Some(alice.to_path_buf()),
        2,
        Duration::from_secs(60),
        Default::default(),
    ));
    let rewriter = Rewriter::new(
        keys,
        Policy {
            encrypted_form: form,
            ..Policy::default()
        },
    );
    let started = Instant::now();
    runtime.block_on(async {
        let rewriter = &rewriter;
        let jobs = (0..count).map(|i| async move {
            let envelope = Envelope {
                id: format!("{tag}{i}"),
                sender: ALICE.into(),
                recipients: vec![BOB.into()],
            };
            match rewriter.rewrite(&envelope, plaintext(tag, i)).await {
                Ok(Outcome::Copies(mut copies)) => {
                    let copy = copies.remove(0).message.expect("a copy for Bob");
                    sealpost::store::crlf(&copy)
                }
                Ok(Outcome::Refused(r)) => panic!("refused: {r}"),
                Err(e) => panic!("rewrite: {e}"),
            }
        });
        let mut stream = futures::stream::iter(jobs).buffered(2);
        let mut copies = Vec::with_capacity(count);
        while let Some(copy) = stream.next().await {
            assert!(
                sealpost::message::mime::encrypted_payload(&copy).is_some(),
                "the copy is multipart/encrypted"
            );
            copies.push(copy);
            if copies.len() % 250 == 0 || copies.len() == count {
                eprintln!(
                    "encrypting ({tag}): {}/{count} ({:.0}/s)",
                    copies.len(),
                    copies.len() as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        copies
    })
}

/// The copy with a `Received:` line of its own in front: a distinct upstream message that
/// decrypts to the same content.
fn with_received(copy: &[u8], n: usize) -> Vec<u8> {
    let mut m = format!(
        "Received: from mx.example.org (mx.example.org [192.0.2.25])\r\n\
         \tby imap.example.org with ESMTPS id {n:08X}\r\n\
         \tfor <{BOB}>; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
    )
    .into_bytes();
    m.extend_from_slice(copy);
    m
}

/// The owner of the Dovecot user's Maildir (`nobody` when the benchmark runs as root).
fn owner(dovecot: &Dovecot) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&dovecot.maildir).unwrap();
    (m.uid(), m.gid())
}

/// Writes `messages` into the Maildir++ folder `folder` ("INBOX" is the Maildir's root) as
/// Dovecot would have stored them: `cur/<time>.M<n>P<pid>.<host>,S=<size>,W=<size>:2,` (no
/// flags, so unseen), CRLF content, so S= and W= are both the file's size. Returns the bytes.
fn write_folder(
    dovecot: &Dovecot,
    folder: &str,
    messages: impl IntoIterator<Item = Vec<u8>>,
) -> u64 {
    let (uid, gid) = owner(dovecot);
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    let root = if folder == "INBOX" {
        dovecot.maildir.clone()
    } else {
        dovecot.maildir.join(format!(".{folder}"))
    };
    std::fs::create_dir_all(&root).unwrap();
    chown(&root);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        chown(&root.join(sub));
    }
    if folder != "INBOX" {
        let marker = root.join("maildirfolder");
        std::fs::write(&marker, b"").unwrap();
        chown(&marker);
    }
    let mut total = 0;
    for (i, message) in messages.into_iter().enumerate() {
        let size = message.len();
        let name = format!(
            "{}.M{i}P{}.sealpost-bench,S={size},W={size}:2,",
            1_700_000_000 + i,
            std::process::id()
        );
        let path = root.join("cur").join(name);
        std::fs::write(&path, &message).unwrap();
        chown(&path);
        total += size as u64;
    }
    total
}

/// One EXAMINE per folder: Dovecot indexes each new Maildir folder (UIDs, uidlist) now
/// rather than during a timed sync.
fn index(dovecot: &Dovecot, folders: &[(String, usize)]) {
    let mut raw = Raw::connect(dovecot.port);
    raw.ok(&format!("LOGIN {} \"{}\"", dovecot.user, dovecot.password));
    for (folder, count) in folders {
        let lines = raw.ok(&format!("EXAMINE \"{folder}\""));
        let exists = format!("* {count} EXISTS");
        assert!(
            lines.contains(&exists),
            "{folder}: {lines:?}, expected {exists}"
        );
    }
    raw.ok("LOGOUT");
}

/// A fresh local store behind sealpost's IMAP server, and configurations for `sealpost sync`
/// over it with a Dovecot as its account's upstream.
struct Local {
    server: Server,
}

impl Local {
    fn new(bob: &Path) -> Local {
        Local {
            server: Server::start_config(
                "",
                &format!(
                    "[gnupg]\nhome = \"{}\"\nworkers = {}\n",
                    bob.display(),
                    env_count("SEALPOST_BENCH_WORKERS", 0)
                ),
            ),
        }
    }

    /// A configuration (`name`.toml) that syncs `folders` (empty: all) of `dovecot`.
    fn config(&self, name: &str, dovecot: &Dovecot, folders: &[&str]) -> PathBuf {
        let dir = self.server.dir.path();
        let password = dir.join("upstream-password");
        std::fs::write(&password, format!("{}\n", dovecot.password)).unwrap();
        let folders = folders
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ");
        // The upstream table follows the server's [[accounts]] entry, before [gnupg], so that
        // it belongs to that account (as in tests/sync.rs).
        let upstream = format!(
            "[accounts.upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\n\
             username = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\ntimeout_secs = 60\n\
             folders = [{folders}]\n\n",
            dovecot.tls_port.unwrap(),
            dovecot.user,
            password.display(),
            dovecot.cert.as_ref().unwrap().display(),
        );
        let text = std::fs::read_to_string(self.server.config()).unwrap();
        let at = text.find("[gnupg]").unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("{}{upstream}{}", &text[..at], &text[at..])).unwrap();
        config
    }

    /// Checks that `mailbox` holds `count` messages, each decrypted with a valid signature.
    fn check(&self, mailbox: &str, count: usize) {
        let mut raw = self.server.login();
        raw.ok(&format!("EXAMINE \"{mailbox}\""));
        let lines = raw.ok("UID FETCH 1:* (FLAGS)");
        assert_eq!(lines.len(), count, "{mailbox}: messages stored");
        let bad: Vec<&String> = lines
            .iter()
            .filter(|l| !(l.contains("$Sealpost-Encrypted") && l.contains("$Sealpost-Signed")))
            .collect();
        assert!(
            bad.is_empty(),
            "{mailbox}: {} of {count} not decrypted and verified, e.g. {}",
            bad.len(),
            bad[0]
        );
    }
}

/// One `sealpost sync --once`, spawn to exit.
struct SyncRun {
    wall: Duration,
    /// The `N` of `alice: N new`.
    new: usize,
    /// The process's peak RSS: VmHWM at the last sample (with `watch`; 0 without). Not
    /// wait4's ru_maxrss: a spawned process inherits its parent's peak at exec (the kernel
    /// keeps the old address space's high-water mark), so that would be this benchmark's.
    peak_kib: u64,
    /// The sync process's own CPU time (user + system; the gpg processes GPGME starts are
    /// not its waited-for children, so they are not in it).
    own_cpu: Duration,
    /// Busy time of all CPUs during the run, whoever used it.
    machine_cpu: Duration,
    /// Processes and threads created on the machine during the run (mostly for the sync:
    /// GPGME forks twice for each gpg it runs, gpg-agent starts a thread per request).
    forks: u64,
    samples: Vec<Sample>,
}

/// The sync's memory, every `SAMPLE_EVERY`.
struct Sample {
    /// Messages in the watched local mailbox.
    stored: usize,
    rss_kib: u64,
    /// VmHWM: the process's own peak so far.
    hwm_kib: u64,
}

/// Reaps our child `pid` with its resource usage.
fn wait4(pid: u32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return (status, usage);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// The MESSAGES count of `mailbox` in the local store (0 before the sync created it).
fn local_count(raw: &mut Raw<std::net::TcpStream>, mailbox: &str) -> usize {
    let (untagged, _) = raw.cmd(&format!("STATUS \"{mailbox}\" (MESSAGES)"));
    untagged
        .iter()
        .find_map(|l| {
            let n = l.split("(MESSAGES ").nth(1)?;
            n.trim_end_matches(')').trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `sealpost --config CONFIG sync --once` over `local`; with `watch`, samples the
/// sync's memory beside the message count of that local mailbox while it runs.
fn sync_once(local: &Local, config: &Path, watch: Option<&str>) -> SyncRun {
    let log = config.with_extension("log");
    let machine_before = machine::machine_cpu();
    let forks_before = machine::forks();
    let started = Instant::now();
    let wrap = std::env::var("SEALPOST_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_sealpost"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_sealpost")),
    };
    // Reaped by `wait4` below (std's wait would not give the rusage).
    #[allow(clippy::zombie_processes)]
    let mut child = command
        .arg("--config")
        .arg(config)
        .args(["sync", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = AtomicBool::new(false);
    let ((status, usage), wall, samples) = std::thread::scope(|s| {
        let sampler = watch.map(|mailbox| {
            let done = &done;
            let mut raw = local.server.login();
            s.spawn(move || {
                let mut samples = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    // Memory first: the count read after it is at least what it had stored.
                    let (Some(rss_kib), Some(hwm_kib)) = (
                        machine::tree_status_kib(pid, "VmRSS"),
                        machine::tree_status_kib(pid, "VmHWM"),
                    ) else {
                        break;
                    };
                    samples.push(Sample {
                        stored: local_count(&mut raw, mailbox),
                        rss_kib,
                        hwm_kib,
                    });
                    std::thread::sleep(SAMPLE_EVERY);
                }
                samples
            })
        });
        let waited = wait4(pid);
        let wall = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let samples = sampler.map(|h| h.join().unwrap()).unwrap_or_default();
        (waited, wall, samples)
    });
    let machine_after = machine::machine_cpu();
    let forks = machine::forks() - forks_before;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "sealpost sync --once: status {status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let new = stdout
        .trim()
        .strip_prefix(&format!("{}: ", server::USER))
        .and_then(|r| r.strip_suffix(" new"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("sync output: {stdout:?}"));
    SyncRun {
        wall,
        new,
        peak_kib: samples.last().map_or(0, |s| s.hwm_kib),
        own_cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        machine_cpu: Duration::from_secs_f64(
            (machine_after.0 - machine_before.0) as f64 / machine::clock_ticks(),
        ),
        forks,
        samples,
    }
}

/// A temp file holding `bytes` (the gpg CLI reads detached signatures and data from files).
fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// The gpg CLI's time per message, in ms, for what sealpost does with each of `copies`:
/// decrypt with Bob's home and verify Alice's signature. One warm-up, then one at a time.
fn cli_ms(bob: &Path, copies: &[Vec<u8>], form: EncryptedForm) -> f64 {
    let ciphertexts: Vec<Vec<u8>> = copies
        .iter()
        .map(|c| sealpost::message::mime::encrypted_payload(c).unwrap())
        .collect();
    let files = tempfile::tempdir().unwrap();
    // §6.1: the signed part inside, as files for `gpg --verify SIG DATA`.
    let detached: Vec<(String, String)> = match form {
        EncryptedForm::SignedThenEncrypted => ciphertexts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let plain = sealpost::store::crlf(&gnupg::gpg(bob, &["--decrypt"], Some(c)));
                let (data, sig) = sealpost::message::mime::signed_parts(&plain)
                    .expect("signed-then-encrypted holds multipart/signed");
                (
                    temp_file(files.path(), &format!("{i}.sig"), &sig),
                    temp_file(files.path(), &format!("{i}.data"), &data),
                )
            })
            .collect(),
        EncryptedForm::Combined => Vec::new(),
    };
    // Once, untimed: the signature checks out, so the floor does the work sealpost does.
    let status = match form {
        EncryptedForm::SignedThenEncrypted => gnupg::gpg(
            bob,
            &[
                "--status-fd",
                "1",
                "--verify",
                &detached[0].0,
                &detached[0].1,
            ],
            None,
        ),
        EncryptedForm::Combined => gnupg::gpg(
            bob,
            &["--status-fd", "1", "--decrypt"],
            Some(&ciphertexts[0]),
        ),
    };
    assert!(
        String::from_utf8_lossy(&status).contains("[GNUPG:] GOODSIG "),
        "gpg found no good signature"
    );
    let one = |i: usize| {
        gnupg::gpg(bob, &["--decrypt"], Some(&ciphertexts[i]));
        if let Some((sig, data)) = detached.get(i) {
            gnupg::gpg(bob, &["--verify", sig, data], None);
        }
    };
    one(0);
    let t = Instant::now();
    for i in 0..ciphertexts.len() {
        one(i);
    }
    t.elapsed().as_secs_f64() * 1000.0 / ciphertexts.len() as f64
}

/// Wall and CPU times of repeated no-change resyncs.
struct Resync {
    /// Sorted.
    walls: Vec<Duration>,
    median: Duration,
    max: Duration,
    /// The sync process's own CPU time, median.
    cpu: Duration,
}

impl Resync {
    fn of(runs: &[SyncRun]) -> Resync {
        let mut walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
        walls.sort();
        let mut cpu: Vec<Duration> = runs.iter().map(|r| r.own_cpu).collect();
        cpu.sort();
        Resync {
            median: walls[walls.len() / 2],
            max: walls[walls.len() - 1],
            cpu: cpu[cpu.len() / 2],
            walls,
        }
    }
}

/// One row of the import table.
struct Import {
    form: EncryptedForm,
    count: usize,
    /// Mean upstream message size in bytes.
    size: usize,
    run: SyncRun,
    cli_ms: f64,
    /// Bob's keys imported into a fresh home instead of generated there.
    imported: bool,
}

impl Import {
    fn rate(&self) -> f64 {
        self.count as f64 / self.run.wall.as_secs_f64()
    }

    fn floor(&self) -> f64 {
        2.0 * 1000.0 / self.cli_ms
    }
}

fn form_name(form: EncryptedForm) -> &'static str {
    match form {
        EncryptedForm::SignedThenEncrypted => "signed-then-encrypted (RFC 3156 §6.1, default)",
        EncryptedForm::Combined => "combined (RFC 3156 §6.2)",
    }
}

fn ms_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n.max(1) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let out_path = report::start();
    let messages = env_count("SEALPOST_BENCH_MESSAGES", MESSAGES);
    let folders = env_count("SEALPOST_BENCH_FOLDERS", FOLDERS);
    let memory_messages = env_count("SEALPOST_BENCH_MEMORY_MESSAGES", MEMORY_MESSAGES);
    let sample = CLI_SAMPLE.min(messages);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let homes = Homes::new();

    // The upstream mail: each message encrypted on its own by the outgoing core.
    let forms = [EncryptedForm::SignedThenEncrypted, EncryptedForm::Combined];
    let started = Instant::now();
    let copies: Vec<Vec<Vec<u8>>> = forms
        .iter()
        .zip(["ste", "comb"])
        .map(|(&form, tag)| encrypt_all(&runtime, &homes.alice, form, tag, messages))
        .collect();
    let generate_time = started.elapsed();
    let default = &copies[0];
    let upstream = Dovecot::start_tls();
    let folder_of = |form: EncryptedForm| match form {
        EncryptedForm::SignedThenEncrypted => "SignedThenEncrypted",
        EncryptedForm::Combined => "Combined",
    };
    let mut bytes = 0;
    for (form, set) in forms.iter().zip(&copies) {
        bytes += write_folder(&upstream, folder_of(*form), set.iter().cloned());
    }
    let memory_bytes = write_folder(
        &upstream,
        "Large",
        (0..memory_messages).map(|i| with_received(&default[i % default.len()], i)),
    );
    let mut indexed: Vec<(String, usize)> = forms
        .iter()
        .map(|f| (folder_of(*f).to_string(), messages))
        .collect();
    indexed.push(("Large".into(), memory_messages));
    index(&upstream, &indexed);
    // The many-folder account: INBOX and Folder001.., PER_FOLDER messages each.
    let many = Dovecot::start_tls();
    let names: Vec<String> = std::iter::once("INBOX".to_string())
        .chain((1..folders).map(|n| format!("Folder{n:03}")))
        .collect();
    for (f, name) in names.iter().enumerate() {
        write_folder(
            &many,
            name,
            (0..PER_FOLDER).map(|k| {
                let n = f * PER_FOLDER + k;
                with_received(&default[n % default.len()], n)
            }),
        );
    }
    index(
        &many,
        &names
            .iter()
            .map(|n| (n.clone(), PER_FOLDER))
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "upstream ready in {:?}: {messages} messages per form ({:.1} MB), {memory_messages} in Large ({:.1} MB), {folders} folders",
        started.elapsed(),
        bytes as f64 / 1e6,
        memory_bytes as f64 / 1e6
    );
    // The Maildirs were just written: let their writeback finish now rather than during the
    // timed runs.
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    assert!(synced, "sync failed");
    let idle_busy = machine::wait_for_quiet(QUIET_WAIT);

    // 1. Import speed against the gpg floor.
    let mut imports = Vec::new();
    let forms_and_homes = forms
        .iter()
        .zip(&copies)
        .flat_map(|(form, set)| [(form, set, false), (form, set, true)]);
    for (form, set, imported) in forms_and_homes {
        let bob = if imported {
            &homes.bob_imported
        } else {
            &homes.bob
        };
        let cli = cli_ms(bob, &set[..sample], *form);
        let folder = folder_of(*form);
        let local = Local::new(bob);
        let config = local.config("sync", &upstream, &[folder]);
        let run = sync_once(&local, &config, Some(folder));
        assert_eq!(run.new, messages, "{folder}: new messages");
        local.check(folder, messages);
        let row = Import {
            form: *form,
            count: messages,
            size: set.iter().map(Vec::len).sum::<usize>() / set.len(),
            run,
            cli_ms: cli,
            imported,
        };
        eprintln!(
            "{folder}{}: {:?}, {:.1}/s; gpg CLI {cli:.2} ms/message → floor {:.1}/s",
            if imported { " (keys imported)" } else { "" },
            row.run.wall,
            row.rate(),
            row.floor()
        );
        imports.push(row);
    }

    // 2. The no-change resync of many folders.
    let local = Local::new(&homes.bob);
    let all = local.config("all", &many, &[]);
    let first = sync_once(&local, &all, None);
    assert_eq!(first.new, folders * PER_FOLDER, "first sync of the folders");
    local.check("INBOX", PER_FOLDER);
    // The same resync of INBOX alone, interleaved with the full ones: the fixed cost of a run.
    let inbox = local.config("inbox", &many, &["INBOX"]);
    let (mut resyncs, mut inbox_only) = (Vec::new(), Vec::new());
    for _ in 0..RESYNCS {
        for (config, runs) in [(&all, &mut resyncs), (&inbox, &mut inbox_only)] {
            let run = sync_once(&local, config, None);
            assert_eq!(run.new, 0, "a resync with nothing new");
            runs.push(run);
        }
    }
    let resync = Resync::of(&resyncs);
    let fixed = Resync::of(&inbox_only);
    eprintln!(
        "resync of {folders} folders: median {:?}, max {:?}; INBOX alone: median {:?}",
        resync.median, resync.max, fixed.median
    );
    drop(local);
    drop(many);

    // 3. Memory over a large first sync.
    let local = Local::new(&homes.bob);
    let config = local.config("sync", &upstream, &["Large"]);
    let large = sync_once(&local, &config, Some("Large"));
    assert_eq!(large.new, memory_messages, "Large: new messages");
    local.check("Large", memory_messages);
    eprintln!(
        "Large: {memory_messages} in {:?}, peak {:.1} MiB",
        large.wall,
        mib(large.peak_kib),
    );
    drop(local);
    let dovecot_errors = upstream
        .log_text()
        .lines()
        .filter(|l| l.contains("Error:") || l.contains("Warning:"))
        .count();
    drop(upstream);

    let small = &imports[0].run;
    let flat = large.peak_kib as f64 <= small.peak_kib as f64 * (1.0 + FLAT_FRACTION)
        || large.peak_kib <= small.peak_kib + FLAT_SLACK_KIB;
    let body = render(&Rendered {
        messages,
        folders,
        memory_messages,
        idle_busy,
        generate_time,
        imports: &imports,
        first: &first,
        resync: &resync,
        fixed: &fixed,
        large: &large,
        flat,
        dovecot_errors,
    });
    print!("{body}");
    report::write_section(out_path.as_deref(), "## Incoming sync (issue 6)", &body);
}

struct Rendered<'a> {
    messages: usize,
    folders: usize,
    memory_messages: usize,
    idle_busy: f64,
    generate_time: Duration,
    imports: &'a [Import],
    first: &'a SyncRun,
    resync: &'a Resync,
    fixed: &'a Resync,
    large: &'a SyncRun,
    flat: bool,
    dovecot_errors: usize,
}

fn render(r: &Rendered<'_>) -> String {
    let mut b = String::new();
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let _ = writeln!(
        b,
        "Produced by `make bench` (`cargo bench --bench sync -- --out BENCHMARKS.md`, bench profile), \
         finished {date}. Machine: {cores} cores ({cpu}), {idle:.0} % busy with other work in the 3 s \
         before the runs; {gpg}; Dovecot {dovecot}; keys ed25519/cv25519 (`future-default`), GnuPG \
         homes with `no-random-seed-file`; GnuPG workers: {workers}; programs run without cargo's \
         `LD_LIBRARY_PATH`.\n",
        workers = match env_count("SEALPOST_BENCH_WORKERS", 0) {
            0 => "the default, one more than the cores".to_string(),
            n => format!("{n} (`SEALPOST_BENCH_WORKERS`)"),
        },
        date = report::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = machine::cpu_model(),
        idle = r.idle_busy * 100.0,
        gpg = report::first_line("gpg", &["--version"]),
        dovecot = report::first_line(dovecot::DOVECOT, &["--version"]),
    );
    let _ = writeln!(
        b,
        "Upstream: a throwaway Dovecot (Maildir) on loopback, implicit TLS, LOGIN. Each message is \
         a 10 KB text from Alice to Bob, encrypted to Bob and signed by Alice with sealpost's own \
         outgoing core ({n} per form, each encrypted on its own: {gen:.0} s for all, two GnuPG \
         workers), written into the Maildir and indexed by Dovecot before the runs. Each \
         `sealpost sync --once` writes into a fresh store and is timed from spawn to exit; after \
         each run every message must carry `$Sealpost-Encrypted` and `$Sealpost-Signed` in the \
         local store (decrypted, signature valid). CPU: the sync process's own (user + system, \
         from wait4), and the rest of the machine's busy time during the run (gpg and gpg-agent, \
         the `sealpost gpg-worker` processes that run GPGME for the sync, Dovecot, the kernel; \
         wait4 counts a worker with the sync only when the sync reaped it before exiting).\n",
        n = r.messages,
        gen = r.generate_time.as_secs_f64(),
    );
    let _ = writeln!(b, "### Import of {} encrypted messages\n", r.messages);
    let _ = writeln!(
        b,
        "The gpg CLI floor: {CLI_SAMPLE} of the same ciphertexts, one at a time with Bob's home, \
         signature verified (§6.2: `gpg --decrypt` does both; §6.1: `gpg --decrypt`, then \
         `gpg --verify` of the signed part inside); floor = 2 cores ÷ the time per message. The \
         upstream messages are smaller than their 10 KB text: gpg compresses before it encrypts. \
         Processes + threads started: all on the machine during the run (the `processes` count of \
         /proc/stat): GPGME forks twice for each gpg process it runs, gpg-agent starts a thread per \
         request; the floor runs 2 gpg processes per message for §6.1 and 1 for §6.2. Each form \
         is run twice: with Bob's home where his key was generated, and with a copy of it into \
         which Bob's and Alice's keys were imported (README, \"GnuPG\": gpg checks a generated \
         key's self-signatures at every use); each against the floor measured in its own home.\n"
    );
    let _ = writeln!(
        b,
        "| encrypted form | messages (mean size) | `sync --once` | messages/s | gpg CLI per message | floor, messages/s | ÷ floor | goal ≥ 0.9 | CPU per message: sync process / rest | processes + threads started per message | machine CPU busy | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for i in r.imports {
        let ratio = i.rate() / i.floor();
        let own = ms_per(i.run.own_cpu, i.count);
        let all = ms_per(i.run.machine_cpu, i.count);
        let _ = writeln!(
            b,
            "| {}{} | {} ({:.1} KB) | {:.1} s | {:.1} | {:.2} ms | {:.1} | {ratio:.2}× | {} | {own:.1} ms / {:.1} ms | {:.1} | {:.0} % | {:.1} MiB |",
            form_name(i.form),
            if i.imported {
                ", keys imported"
            } else {
                ""
            },
            i.count,
            i.size as f64 / 1000.0,
            i.run.wall.as_secs_f64(),
            i.rate(),
            i.cli_ms,
            i.floor(),
            met(ratio >= 0.9),
            (all - own).max(0.0),
            i.run.forks as f64 / i.count as f64,
            100.0 * i.run.machine_cpu.as_secs_f64() / (2.0 * i.run.wall.as_secs_f64()),
            mib(i.run.peak_kib),
        );
    }
    let times = |r: &Resync| {
        r.walls
            .iter()
            .map(|w| format!("{:.0}", w.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = writeln!(
        b,
        "\n### No-change resync of {n} folders\n\n\
         {n} folders (INBOX and Folder001…), {PER_FOLDER} encrypted messages each; the first sync \
         stored all {stored} in {first:.1} s. Then {RESYNCS} more runs with nothing new (`alice: 0 new`), \
         each a new process: start (configuration, store, GnuPG engine checks), connect, TLS, LOGIN, \
         LIST, one EXAMINE per folder, LOGOUT. Interleaved with them, the same resync limited to \
         INBOX (`folders = [\"INBOX\"]`): the part of the time that does not depend on the number of \
         folders.\n\n\
         | resync | median of {RESYNCS} | slowest | all runs (ms, sorted) | sync process CPU (median) | goal ≤ 1 s |\n\
         |---|---|---|---|---|---|\n\
         | all {n} folders | {:.0} ms | {:.0} ms | {} | {:.0} ms | {} |\n\
         | INBOX alone | {:.0} ms | {:.0} ms | {} | {:.0} ms | |\n\n\
         Per further folder: {:.2} ms (difference of the medians ÷ {}).",
        ms(r.resync.median),
        ms(r.resync.max),
        times(r.resync),
        ms(r.resync.cpu),
        met(r.resync.median <= Duration::from_secs(1)),
        ms(r.fixed.median),
        ms(r.fixed.max),
        times(r.fixed),
        ms(r.fixed.cpu),
        (ms(r.resync.median) - ms(r.fixed.median)) / (r.folders.max(2) - 1) as f64,
        r.folders.max(2) - 1,
        n = r.folders,
        stored = r.first.new,
        first = r.first.wall.as_secs_f64(),
    );
    let small = &r.imports[0];
    let _ = writeln!(
        b,
        "\n### Memory over a {}-message first sync\n\n\
         One folder of {} messages: the §6.1 ciphertexts above again, each upstream copy with a \
         `Received:` line of its own. The sync took {:.1} s ({:.1} messages/s). VmRSS of the sync \
         process and its `sealpost gpg-worker` children, summed, sampled every {} ms, when the local store had reached each mark:\n",
        r.memory_messages,
        r.memory_messages,
        r.large.wall.as_secs_f64(),
        r.memory_messages as f64 / r.large.wall.as_secs_f64(),
        SAMPLE_EVERY.as_millis(),
    );
    let marks: Vec<usize> = (1..=10).map(|k| r.memory_messages * k / 10).collect();
    let _ = writeln!(
        b,
        "| messages stored | {} |\n|---|{}",
        marks
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(marks.len())
    );
    let at_mark = |mark: usize| {
        r.large
            .samples
            .iter()
            .find(|s| s.stored >= mark)
            .map_or("—".to_string(), |s| format!("{:.1}", mib(s.rss_kib)))
    };
    let _ = writeln!(
        b,
        "| VmRSS (MiB) | {} |",
        marks
            .iter()
            .map(|m| at_mark(*m))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    if marks.iter().any(|m| at_mark(*m) == "—") {
        let _ = writeln!(b, "\n— : the sync had exited before the next sample.");
    }
    let largest = r.large.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let _ = writeln!(
        b,
        "\nPeak RSS (the VmHWM of the sync and of its gpg-worker children, summed, at the last sample, at most {} ms before the exit): {:.1} MiB for {} messages against {:.1} MiB for the {}-message \
         §6.1 import above; largest sample {:.1} MiB. Goal: flat, i.e. within {:.0} % (at least {} MiB) \
         of the smaller sync's peak: {}.",
        SAMPLE_EVERY.as_millis(),
        mib(r.large.peak_kib),
        r.memory_messages,
        mib(small.run.peak_kib),
        small.count,
        mib(largest),
        FLAT_FRACTION * 100.0,
        FLAT_SLACK_KIB / 1024,
        met(r.flat),
    );
    if r.dovecot_errors > 0 {
        let _ = writeln!(
            b,
            "\nDovecot logged {} errors or warnings during the benchmark.",
            r.dovecot_errors
        );
    }
    b
}
