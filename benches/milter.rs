//! `make bench`: the milter inside Postfix, written to BENCHMARKS.md (section "milter").
//!
//! A private Postfix instance (tests/common/postfix.rs, shared with the milter tests) takes messages over SMTP from
//! `CLIENTS` concurrent sessions, each sending back to back, and delivers every copy into one
//! Maildir. A run is timed from the first MAIL to the moment the last expected copy is in the
//! Maildir (messages × recipients files, polled every 20 ms). Runs:
//!
//! 1. Postfix alone (no milter): 1-recipient and 5-recipient messages, the MTA's own ceiling.
//! 2. Postfix + `sealpost milter`, default policy: `SEALPOST_BENCH_MESSAGES` (default 5,000)
//!    1-recipient messages, sampling the milter's VmRSS all along; a tenth as many 5-recipient
//!    ones (one copy rewritten in place, four re-injected through the milter-free listener);
//!    then 1-recipient messages from 1 and 4 sessions, to show the wait per message.
//! 3. The same milter with `encrypted_form = "combined"` (one gpg process per message: it
//!    signs and encrypts for every copy at once, split per copy).
//! 4. The gpg CLI floor, defined as in the other benchmarks: 2 cores ÷ the time of one
//!    `gpg --sign --encrypt` per copy; in messages/s that is the floor ÷ recipients.
//!
//! CPU time is charged from /proc to Postfix (its master's process tree), the milter, the gpg
//! processes it starts (GPGME orphans them; this process adopts them as a child subreaper and
//! reads their time before reaping), gpg-agent and the SMTP clients.
//!
//! After each run every copy is checked: one file per (Message-ID, recipient), none missing,
//! none twice, and with the milter every copy multipart/encrypted. SMTP refusals, Postfix's
//! warnings and the milter's own log lines are counted and reported, not retried.
//!
//! Goals (issue 3): ≥ 0.9 × the gpg floor; the milter's memory flat over 5,000 messages.
//! Needs root (Postfix); skipped otherwise.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/gnupg.rs"]
mod gnupg;
#[allow(dead_code)]
#[path = "common/machine.rs"]
mod machine;
#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "../tests/common/postfix.rs"]
#[allow(dead_code)]
mod postfix;
#[path = "../tests/common/relay.rs"]
#[allow(dead_code)]
mod relay;
#[path = "common/report.rs"]
mod report;

use postfix::Postfix;
use sealpost::keys::home;

/// Concurrent SMTP sessions. Each waits for the milter's answer at the end of DATA, and a
/// message spends most of its time in the milter waiting, not computing (see the runs with 1
/// and 4 sessions), so 16 are needed to keep both cores busy. `SEALPOST_BENCH_CLIENTS`
/// overrides it.
const CLIENTS: usize = 16;

fn clients() -> usize {
    std::env::var("SEALPOST_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1)
        .unwrap_or(CLIENTS)
}
const CLI_ROUNDS: usize = 30;
/// Messages sent before each measured series and not counted: Postfix's processes, the
/// milter's key lookups and gpg-agent are warm, as in a running system.
const WARM_UP: usize = 8;
const RECIPIENTS: [&str; 5] = [
    "r1@example.org",
    "r2@example.org",
    "r3@example.org",
    "r4@example.org",
    "r5@example.org",
];
const SENDER: &str = "alice@example.org";
/// `[policy] encrypted_form`: the default, and the form with one gpg process per message.
const DEFAULT: &str = "signed-then-encrypted";
const COMBINED: &str = "combined";
/// The milter's memory counts as flat when the last sample is within this fraction of the
/// sample after warm-up (a tenth of the run), or within `FLAT_SLACK_KIB`.
const FLAT_FRACTION: f64 = 0.10;
const FLAT_SLACK_KIB: u64 = 4 * 1024;
/// How long the benchmark waits for other work on the machine to finish before it starts.
const QUIET_WAIT: Duration = Duration::from_secs(180);
/// A run that delivers nothing new for this long is over; what is missing is reported.
const STALL: Duration = Duration::from_secs(90);

fn message_id(tag: &str, i: usize) -> String {
    format!("<bench-{tag}-{i}@example.org>")
}

/// A 10 KB message (as in the other benchmarks), CRLF, with its own Message-ID.
fn message(tag: &str, i: usize, to: &[&str]) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@example.org>\r\nTo: {}\r\nSubject: Benchmark message {i}\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: {}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        to.join(", "),
        message_id(tag, i)
    );
    let mut n = 0;
    while m.len() < 10_240 {
        m.push_str(&format!(
            "Line {n}: the quick brown fox jumps over the lazy dog, grüße.\r\n"
        ));
        n += 1;
    }
    m.into_bytes()
}

/// The message as SMTP DATA: no line starts with '.', so only the terminator is added.
fn smtp_data(tag: &str, i: usize, to: &[&str]) -> Vec<u8> {
    let mut data = message(tag, i, to);
    data.extend_from_slice(b".\r\n");
    data
}

/// One SMTP session to Postfix's smtpd, sending transactions back to back.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn connect(port: u16) -> Smtp {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut s = Smtp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = s.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        let ehlo = s.command("EHLO client.example.org");
        assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
        s
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "smtpd closed the connection after {all:?}");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    fn command(&mut self, c: &str) -> String {
        self.writer
            .write_all(format!("{c}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    /// One transaction; Err(reply) with the first refusal.
    fn send(&mut self, rcpts: &[&str], data: &[u8]) -> Result<(), String> {
        let r = self.command(&format!("MAIL FROM:<{SENDER}>"));
        if !r.starts_with('2') {
            return Err(r);
        }
        for rcpt in rcpts {
            let r = self.command(&format!("RCPT TO:<{rcpt}>"));
            if !r.starts_with('2') {
                self.command("RSET");
                return Err(r);
            }
        }
        let r = self.command("DATA");
        if !r.starts_with('3') {
            self.command("RSET");
            return Err(r);
        }
        self.writer.write_all(data).unwrap();
        let r = self.reply();
        if r.starts_with('2') {
            Ok(())
        } else {
            Err(r)
        }
    }

    fn quit(mut self) {
        self.command("QUIT");
    }
}

/// The GnuPG home of the sender (holding every recipient's key too), stopped and removed at
/// the end, also when the benchmark panics.
struct GnupgHome(PathBuf);

impl Drop for GnupgHome {
    fn drop(&mut self) {
        home::stop_daemons(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sealpost --config FILE milter` (the bench-profile binary), killed on drop.
struct Milter {
    child: Child,
    log: PathBuf,
    gpg_home: PathBuf,
}

impl Milter {
    /// With `[policy] encrypted_form = form`.
    fn start(gpg_home: &Path, port: u16, reinject_port: u16, work: &Path, form: &str) -> Milter {
        let config = work.join(format!("{form}.toml"));
        std::fs::write(
            &config,
            format!(
                "[log]\nlevel = \"warn\"\n[gnupg]\nhome = \"{}\"\n[policy]\nencrypted_form = \"{form}\"\n\
                 [milter]\nlisten = \"inet:127.0.0.1:{port}\"\nreinject_port = {reinject_port}\n\
                 journal = \"{}\"\n",
                gpg_home.display(),
                work.join("journal.sqlite").display()
            ),
        )
        .unwrap();
        let log = work.join(format!("milter-{form}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--config")
            .arg(&config)
            .arg("milter")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        postfix::wait_for_port(port);
        Milter {
            child,
            log,
            gpg_home: gpg_home.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One /proc/PID/stat line: parent, state, command name, and CPU time of its own and of its
/// waited-for children.
struct ProcStat {
    pid: u32,
    ppid: u32,
    state: char,
    comm: String,
    own: Duration,
    children: Duration,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // From field 3 on: state ppid ... utime stime cutime cstime (fields 14 to 17).
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = |t: u64| Duration::from_secs_f64(t as f64 / machine::clock_ticks());
    Some(ProcStat {
        pid,
        ppid: num(1) as u32,
        state: fields.first()?.chars().next()?,
        comm,
        own: ticks(num(11) + num(12)),
        children: ticks(num(13) + num(14)),
    })
}

fn all_procs() -> Vec<ProcStat> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// CPU time of `root` and of its descendants, alive or waited for.
fn tree_cpu(root: u32, procs: &[ProcStat]) -> Duration {
    let Some(p) = procs.iter().find(|p| p.pid == root) else {
        return Duration::ZERO;
    };
    p.own
        + p.children
        + procs
            .iter()
            .filter(|c| c.ppid == root)
            .map(|c| tree_cpu(c.pid, procs))
            .sum::<Duration>()
}

/// Waits for the gpg processes the milter started, counts them in `count` and adds their CPU
/// time to `total_ns`. GPGME double-forks gpg, so each is orphaned at once; with this process
/// a child subreaper they are adopted here instead of by init. The time comes from schedstat
/// (nanoseconds), read while the process is a zombie: /proc/PID/stat counts whole clock ticks,
/// which rounds most gpg runs (a few ms each) down to nothing.
fn reap_gpg(total_ns: &AtomicU64, count: &AtomicUsize) {
    let me = std::process::id();
    for p in all_procs() {
        if p.ppid == me && p.state == 'Z' && p.comm == "gpg" {
            let ns = std::fs::read_to_string(format!("/proc/{}/schedstat", p.pid))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(p.own.as_nanos() as u64);
            total_ns.fetch_add(ns, Ordering::Relaxed);
            count.fetch_add(1, Ordering::Relaxed);
            // SAFETY: waits for one zombie child that std's Command does not own.
            unsafe { libc::waitpid(p.pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Cumulative CPU time of each party to a run.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Busy time of all CPUs together, whoever used it.
    machine: Duration,
    /// Postfix's master and all its services.
    postfix: Duration,
    milter: Duration,
    /// The gpg processes the milter started (reaped here).
    gpg: Duration,
    agent: Duration,
    /// This process: the SMTP clients and the samplers.
    bench: Duration,
}

impl Cpu {
    fn now(postfix: &Postfix, milter: Option<&Milter>, gpg_ns: &AtomicU64) -> Cpu {
        let procs = all_procs();
        let milter_home = milter.map(|m| m.gpg_home.to_string_lossy().into_owned());
        let agent = procs
            .iter()
            .filter(|p| p.comm == "gpg-agent")
            .filter(|p| {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
                milter_home
                    .as_ref()
                    .is_some_and(|h| cmdline.split(|&b| b == 0).any(|a| a == h.as_bytes()))
            })
            .map(|p| p.own)
            .sum();
        Cpu {
            machine: Duration::from_secs_f64(
                machine::machine_cpu().0 as f64 / machine::clock_ticks(),
            ),
            postfix: postfix
                .master_pid()
                .map_or(Duration::ZERO, |m| tree_cpu(m, &procs)),
            milter: milter.map_or(Duration::ZERO, |m| tree_cpu(m.pid(), &procs)),
            gpg: Duration::from_nanos(gpg_ns.load(Ordering::Relaxed)),
            agent,
            bench: proc_stat(std::process::id()).map_or(Duration::ZERO, |p| p.own),
        }
    }

    fn since(self, start: Cpu) -> Cpu {
        Cpu {
            machine: self.machine.saturating_sub(start.machine),
            postfix: self.postfix.saturating_sub(start.postfix),
            milter: self.milter.saturating_sub(start.milter),
            gpg: self.gpg.saturating_sub(start.gpg),
            agent: self.agent.saturating_sub(start.agent),
            bench: self.bench.saturating_sub(start.bench),
        }
    }

    /// Busy time nobody above accounts for: the kernel's own work, other processes.
    fn other(&self) -> Duration {
        self.machine
            .saturating_sub(self.postfix + self.milter + self.gpg + self.agent + self.bench)
    }
}

/// One VmRSS sample of the milter: after `submitted` messages had their SMTP reply.
#[derive(Clone, Copy)]
struct Sample {
    submitted: usize,
    rss_kib: u64,
}

/// What the Maildir holds after a run.
#[derive(Default)]
struct Check {
    files: usize,
    missing: usize,
    duplicates: usize,
    unexpected: usize,
    not_encrypted: usize,
    still_queued: usize,
}

struct Run {
    label: &'static str,
    clients: usize,
    messages: usize,
    rcpts: usize,
    accepted: usize,
    refusals: Vec<String>,
    /// First MAIL to the last SMTP reply.
    submitted_in: Duration,
    /// First MAIL to the last expected copy in the Maildir.
    elapsed: Duration,
    check: Check,
    samples: Vec<Sample>,
    /// Share of both cores busy during the run.
    cpu_busy: f64,
    milter: bool,
    /// CPU time of each party during the run.
    cpu: Cpu,
    /// gpg processes the milter started during the run.
    gpg_processes: usize,
    /// Postfix log lines of note during the run (warnings, deferrals, rejections).
    postfix_notes: Vec<String>,
    /// The gpg floor in copies/s for the GnuPG home this run used, when not the main one.
    floor: Option<f64>,
}

impl Run {
    fn copies(&self) -> usize {
        self.accepted * self.rcpts
    }

    fn messages_per_s(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }
}

fn clear_maildir(postfix: &Postfix) {
    if let Ok(entries) = std::fs::read_dir(postfix.maildir()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sends `n` messages for `rcpts` from `clients` sessions and waits for every copy.
fn run(
    postfix: &Postfix,
    label: &'static str,
    tag: &str,
    n: usize,
    rcpts: &[&str],
    clients: usize,
    milter: Option<&Milter>,
) -> Run {
    clear_maildir(postfix);
    let log_start = postfix.log().len();
    let sessions: Vec<Smtp> = (0..clients)
        .map(|_| Smtp::connect(postfix.smtp_port))
        .collect();
    let next = AtomicUsize::new(0);
    let submitted = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let pid = milter.map(Milter::pid);
    let gpg_ns = AtomicU64::new(0);
    let gpg_count = AtomicUsize::new(0);
    let cpu_start = Cpu::now(postfix, milter, &gpg_ns);
    let machine_start = machine::machine_cpu();
    let t0 = Instant::now();
    let (results, submitted_in, samples, elapsed) = std::thread::scope(|s| {
        let reaper = milter.map(|_| {
            let (done, gpg_ns, gpg_count) = (&done, &gpg_ns, &gpg_count);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    reap_gpg(gpg_ns, gpg_count);
                    std::thread::sleep(Duration::from_millis(50));
                }
                reap_gpg(gpg_ns, gpg_count);
            })
        });
        let sampler = pid.map(|pid| {
            let (submitted, done) = (&submitted, &done);
            s.spawn(move || {
                let mut samples = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    samples.push(Sample {
                        submitted: submitted.load(Ordering::Relaxed),
                        rss_kib: machine::tree_status_kib(pid, "VmRSS").expect("VmRSS"),
                    });
                    std::thread::sleep(Duration::from_millis(250));
                }
                samples
            })
        });
        let clients: Vec<_> = sessions
            .into_iter()
            .map(|mut smtp| {
                let (next, submitted) = (&next, &submitted);
                s.spawn(move || {
                    let mut accepted = Vec::new();
                    let mut refused = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        match smtp.send(rcpts, &smtp_data(tag, i, rcpts)) {
                            Ok(()) => accepted.push(i),
                            Err(reply) => refused.push(format!("{}: {}", i, reply.trim())),
                        }
                        submitted.fetch_add(1, Ordering::Relaxed);
                    }
                    smtp.quit();
                    (accepted, refused)
                })
            })
            .collect();
        let results: Vec<(Vec<usize>, Vec<String>)> =
            clients.into_iter().map(|c| c.join().unwrap()).collect();
        let submitted_in = t0.elapsed();
        let expected: usize = results.iter().map(|r| r.0.len()).sum::<usize>() * rcpts.len();
        let mut last = (0, Instant::now());
        let elapsed = loop {
            let found = postfix::count_files(&postfix.maildir());
            if found >= expected {
                break t0.elapsed();
            }
            if found != last.0 {
                last = (found, Instant::now());
            } else if last.1.elapsed() > STALL {
                eprintln!("{label}: {found} of {expected} copies, nothing new for {STALL:?}");
                break t0.elapsed();
            }
            // Postfix gives no event to wait on; the Maildir is polled.
            std::thread::sleep(Duration::from_millis(20));
        };
        done.store(true, Ordering::Relaxed);
        if let Some(r) = reaper {
            r.join().unwrap();
        }
        let mut samples = sampler.map(|h| h.join().unwrap()).unwrap_or_default();
        if let Some(pid) = pid {
            samples.push(Sample {
                submitted: n,
                rss_kib: machine::tree_status_kib(pid, "VmRSS").expect("VmRSS"),
            });
        }
        (results, submitted_in, samples, elapsed)
    });
    let cpu = Cpu::now(postfix, milter, &gpg_ns).since(cpu_start);
    let cpu_busy = machine::busy_since(machine_start);
    let mut accepted_ids = Vec::new();
    let mut refusals = Vec::new();
    for (a, r) in results {
        accepted_ids.extend(a);
        refusals.extend(r);
    }
    // Anything still queued could yet arrive as a duplicate: wait for the queue to drain.
    let drain = Instant::now();
    while postfix.queued() > 0 && drain.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut check = check_maildir(postfix, tag, &accepted_ids, rcpts, milter.is_some());
    check.still_queued = postfix.queued();
    let postfix_notes = notable(postfix.log().get(log_start..).unwrap_or(""));
    Run {
        label,
        clients,
        messages: n,
        rcpts: rcpts.len(),
        accepted: accepted_ids.len(),
        refusals,
        submitted_in,
        elapsed,
        check,
        samples,
        cpu_busy,
        milter: milter.is_some(),
        cpu,
        gpg_processes: gpg_count.into_inner(),
        postfix_notes,
        floor: None,
    }
}

/// One file per (Message-ID, recipient) of the accepted messages; encrypted with the milter.
fn check_maildir(
    postfix: &Postfix,
    tag: &str,
    accepted: &[usize],
    rcpts: &[&str],
    encrypted: bool,
) -> Check {
    let mut check = Check::default();
    let mut seen = HashSet::new();
    for entry in std::fs::read_dir(postfix.maildir()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let header = text.split("\n\n").next().unwrap_or("");
        let field = |name: &str| {
            header.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let key = (
            field("Message-ID").unwrap_or_default(),
            field("Delivered-To")
                .unwrap_or_default()
                .to_ascii_lowercase(),
        );
        check.files += 1;
        if encrypted && !header.to_ascii_lowercase().contains("multipart/encrypted") {
            check.not_encrypted += 1;
        }
        if !seen.insert(key) {
            check.duplicates += 1;
        }
    }
    let mut expected = HashSet::new();
    for &i in accepted {
        for r in rcpts {
            expected.insert((message_id(tag, i), r.to_string()));
        }
    }
    check.missing = expected.difference(&seen).count();
    check.unexpected = seen.difference(&expected).count();
    check
}

/// Postfix log lines that say something went wrong or was delayed.
fn notable(log: &str) -> Vec<String> {
    const MARKS: [&str; 8] = [
        "warning:",
        "error:",
        "fatal:",
        "panic:",
        "status=deferred",
        "status=bounced",
        "milter-reject",
        "reject:",
    ];
    log.lines()
        .filter(|l| MARKS.iter().any(|m| l.contains(m)))
        .map(str::to_string)
        .collect()
}

fn messages_setting() -> usize {
    std::env::var("SEALPOST_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 100)
        .unwrap_or(5000)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    if sealpost::queue::current_uid() != 0 {
        eprintln!("milter benchmark skipped: Postfix's master needs root");
        return;
    }
    let out_path = report::start();
    let n1 = messages_setting();
    let n5 = n1 / 10;
    let clients = clients();

    let gpg = GnupgHome(home::short_temp_dir("spm").unwrap());
    home::prepare(&gpg.0).unwrap();
    gnupg::generate(&gpg.0, "Alice <alice@example.org>");
    for (n, r) in RECIPIENTS.iter().enumerate() {
        gnupg::generate(&gpg.0, &format!("R{} <{r}>", n + 1));
    }
    let work = tempfile::Builder::new()
        .prefix("spmw")
        .tempdir_in("/tmp")
        .unwrap();

    let idle_busy = machine::wait_for_quiet(QUIET_WAIT);
    // The floor, before anything else of ours runs on the two cores.
    let cli_ms = gnupg::sign_encrypt_ms(&gpg.0, &message("cli", 0, &RECIPIENTS[..1]), CLI_ROUNDS);
    let floor = 2.0 * 1000.0 / cli_ms;
    // The same keys imported into a fresh home, and its floor (made before this process
    // becomes a subreaper: the gpg-agent started here is not ours to reap).
    let imported = GnupgHome(gnupg::imported_copy(&gpg.0, "spmk"));
    let imported_cli_ms = gnupg::sign_encrypt_ms(
        &imported.0,
        &message("clik", 0, &RECIPIENTS[..1]),
        CLI_ROUNDS,
    );
    let imported_floor = 2.0 * 1000.0 / imported_cli_ms;

    let one = &RECIPIENTS[..1];
    let mut runs = Vec::new();
    {
        let plain = Postfix::start_with(None);
        let (p, c) = (&plain, clients);
        run(p, "warm-up", "pw", WARM_UP, &RECIPIENTS, c, None);
        runs.push(run(p, "Postfix alone", "p1", n1, one, c, None));
        runs.push(run(p, "Postfix alone", "p5", 2 * n5, &RECIPIENTS, c, None));
    }
    let milter_port = relay::free_port();
    let pf = Postfix::start_with(Some(milter_port));
    // The milter's gpg processes are orphaned by GPGME's double fork; adopt them, so that
    // `reap_gpg` can count their CPU time. Set before the milter starts: a process inherits
    // the "has a subreaper above" mark when it is forked. From here on this process starts no
    // child of its own while a run's reaper is active.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets an attribute of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (p, c) = (&pf, clients);
    let mut warm_up_problems = 0;
    let mut milter_log = String::new();

    // The default form: the goal's figures and the memory run.
    let milter = Milter::start(&gpg.0, milter_port, pf.reinject_port, work.path(), DEFAULT);
    let m = Some(&milter);
    let warm = run(p, "warm-up", "mw", WARM_UP, &RECIPIENTS, c, m);
    warm_up_problems += warm.refusals.len() + warm.check.missing;
    let rss_before = machine::tree_status_kib(milter.pid(), "VmRSS").expect("VmRSS");
    runs.push(run(p, "Postfix + milter", "m1", n1, one, c, m));
    runs.push(run(p, "Postfix + milter", "m5", n5, &RECIPIENTS, c, m));
    let rss_after = machine::tree_status_kib(milter.pid(), "VmRSS").expect("VmRSS");
    // Fewer sessions: how much of the throughput needs messages in flight.
    for (fewer, n, tag) in [(1, n1 / 25, "mc1"), (4, n1 / 6, "mc4")] {
        if fewer < clients {
            runs.push(run(p, "Postfix + milter", tag, n, one, fewer, m));
        }
    }
    let hwm = machine::tree_status_kib(milter.pid(), "VmHWM").expect("VmHWM");
    milter_log.push_str(&milter.log());
    drop(milter);

    // RFC 3156 §6.2: one gpg process per message (per copy for one recipient, as the floor).
    let milter = Milter::start(&gpg.0, milter_port, pf.reinject_port, work.path(), COMBINED);
    let m = Some(&milter);
    let label = "Postfix + milter, combined";
    let warm = run(p, "warm-up", "cw", WARM_UP, &RECIPIENTS, c, m);
    warm_up_problems += warm.refusals.len() + warm.check.missing;
    runs.push(run(p, label, "c1", 3 * n1 / 10, one, c, m));
    runs.push(run(p, label, "c5", n5, &RECIPIENTS, c, m));
    milter_log.push_str(&milter.log());
    drop(milter);

    // The same keys imported into a fresh home (README, "GnuPG"), default form, against that
    // home's own floor.
    let milter = Milter::start(
        &imported.0,
        milter_port,
        pf.reinject_port,
        work.path(),
        DEFAULT,
    );
    let m = Some(&milter);
    let label = "Postfix + milter, keys imported";
    let warm = run(p, "warm-up", "kw", WARM_UP, &RECIPIENTS, c, m);
    warm_up_problems += warm.refusals.len() + warm.check.missing;
    for (tag, n, to) in [("k1", 3 * n1 / 10, one), ("k5", n5, &RECIPIENTS[..])] {
        let mut imported_run = run(p, label, tag, n, to, c, m);
        imported_run.floor = Some(imported_floor);
        runs.push(imported_run);
    }
    milter_log.push_str(&milter.log());
    drop(milter);
    drop(pf);

    let body = render(&Rendered {
        n1,
        idle_busy,
        cli_ms,
        floor,
        imported_cli_ms,
        clients,
        runs: &runs,
        warm_up_problems,
        rss_before,
        rss_after,
        hwm,
        milter_log: &milter_log,
    });
    print!("{body}");
    report::write_section(out_path.as_deref(), "## milter (issue 3)", &body);
}

struct Rendered<'a> {
    n1: usize,
    idle_busy: f64,
    cli_ms: f64,
    floor: f64,
    imported_cli_ms: f64,
    clients: usize,
    runs: &'a [Run],
    warm_up_problems: usize,
    rss_before: u64,
    rss_after: u64,
    hwm: u64,
    milter_log: &'a str,
}

fn per_message(d: Duration, run: &Run) -> f64 {
    d.as_secs_f64() * 1000.0 / run.accepted.max(1) as f64
}

fn render(r: &Rendered<'_>) -> String {
    use std::fmt::Write as _;
    let mut b = String::new();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _ = write!(
        b,
        "Produced by `make bench` (`cargo bench --bench milter -- --out BENCHMARKS.md`, bench \
         profile), finished {date}. Machine: {cores} cores ({cpu}), {idle:.0} % busy with other work in \
         the 3 s before the runs; Postfix {postfix}; {gpg}; keys ed25519/cv25519 \
         (`future-default`), GnuPG home with `no-random-seed-file`; GnuPG workers: the default, one more than the cores; \
         programs run without cargo's `LD_LIBRARY_PATH`.\n\n\
         A private Postfix instance on loopback takes 10 KB messages, each with its own \
         Message-ID, from concurrent SMTP sessions (each sending back to back) and delivers \
         every copy (virtual, one Maildir). Time: from the first MAIL to the last copy in the \
         Maildir. With 5 recipients the milter rewrites one copy in place and re-injects four \
         through Postfix's milter-free listener. The milter runs the default policy \
         (`encrypted_form = \"signed-then-encrypted\"`, RFC 3156 §6.1: one signature per \
         message, then one encryption for all its copies, split per copy), then `combined` \
         (§6.2: one gpg operation signing and encrypting for all the copies; for one recipient \
         one per copy, like the floor). {WARM_UP} warm-up messages per milter and Postfix instance are not \
         counted. gpg CLI `--sign --encrypt` per copy: {cli_ms:.2} ms → floor for 2 cores: \
         {floor:.1} copies/s; in messages/s, that ÷ recipients (the ratio is in parentheses \
         where nothing is encrypted). Postfix alone is ten times \
         faster than with the milter, so its runs last only a few seconds. Last, the default \
         form again with the same keys imported into a fresh home instead of generated there \
         (README, \"GnuPG\": gpg checks a generated key's self-signatures at every use): there \
         gpg `--sign --encrypt` takes {imported_cli_ms:.2} ms per copy, a floor of {imported_floor:.1} copies/s, \
         which those runs are compared with.\n\n\
         | run | SMTP sessions | messages × recipients | copies | last SMTP reply | last copy delivered | messages/s | copies/s | gpg floor, messages/s | ÷ floor | machine CPU busy |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        date = report::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu = machine::cpu_model(),
        idle = r.idle_busy * 100.0,
        postfix = report::first_line("postconf", &["-d", "-h", "mail_version"]),
        gpg = report::first_line("gpg", &["--version"]),
        cli_ms = r.cli_ms,
        floor = r.floor,
        imported_cli_ms = r.imported_cli_ms,
        imported_floor = 2000.0 / r.imported_cli_ms,
    );
    let floor_of = |run: &Run| run.floor.unwrap_or(r.floor);
    let ratio = |run: &Run| run.messages_per_s() / (floor_of(run) / run.rcpts as f64);
    for run in r.runs {
        let _ = writeln!(
            b,
            "| {} | {} | {} × {} | {} | {:.1} s | {:.1} s | {:.1} | {:.1} | {:.1} | {} | {:.0} % |",
            run.label,
            run.clients,
            run.accepted,
            run.rcpts,
            run.copies(),
            run.submitted_in.as_secs_f64(),
            run.elapsed.as_secs_f64(),
            run.messages_per_s(),
            run.messages_per_s() * run.rcpts as f64,
            floor_of(run) / run.rcpts as f64,
            if run.milter {
                format!("{:.2}×", ratio(run))
            } else {
                format!("({:.2}×)", ratio(run))
            },
            run.cpu_busy * 100.0,
        );
    }
    let verdicts: Vec<String> = r
        .runs
        .iter()
        .filter(|run| run.milter && run.clients == r.clients)
        .map(|run| {
            format!(
                "{}, {} recipient{}: {:.2}× ({})",
                run.label,
                run.rcpts,
                if run.rcpts == 1 { "" } else { "s" },
                ratio(run),
                if ratio(run) >= 0.9 { "met" } else { "not met" }
            )
        })
        .collect();
    let _ = write!(
        b,
        "\nGoal: Postfix + milter ≥ 0.9 × the gpg floor, with {} SMTP sessions: {}. The floor is \
         one gpg process per copy with both cores to itself; here Postfix, the milter, gpg, \
         gpg-agent and the SMTP clients share the two cores.",
        r.clients,
        verdicts.join("; ")
    );
    if let Some(one) = r.runs.iter().find(|x| x.milter && x.clients == 1) {
        let _ = write!(
            b,
            " With one SMTP session a one-recipient message took {:.0} ms, of which the machine \
             was busy {:.0} ms (CPU of all processes); the rest is waiting. More sessions hide \
             that wait, since each session waits for the milter's answer at the end of DATA.",
            1000.0 / one.messages_per_s(),
            per_message(one.cpu.machine, one),
        );
    }
    b.push_str(
        "\n\nWhere the CPU time went, in ms per message (from /proc: Postfix's master and its \
         services; the milter process; the gpg processes it started, adopted and reaped by the \
         benchmark; gpg-agent; the benchmark's SMTP clients; \"other\" is the rest of the \
         machine's busy time: kernel work not charged to a process, and anything else running):\n\n\
         | run | SMTP sessions | Postfix | milter | gpg (processes per message) | gpg-agent | SMTP clients | other | total |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for run in r.runs {
        let c = &run.cpu;
        let ms = |d: Duration| format!("{:.1}", per_message(d, run));
        let sealpost = |d: Duration| if run.milter { ms(d) } else { "—".to_string() };
        let _ = writeln!(
            b,
            "| {}, {} × {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.label,
            run.accepted,
            run.rcpts,
            run.clients,
            ms(c.postfix),
            sealpost(c.milter),
            if run.milter {
                format!(
                    "{} ({:.1})",
                    ms(c.gpg),
                    run.gpg_processes as f64 / run.accepted.max(1) as f64
                )
            } else {
                "—".to_string()
            },
            sealpost(c.agent),
            ms(c.bench),
            ms(c.other()),
            ms(c.machine),
        );
    }
    b.push('\n');

    // Correctness of every run.
    b.push_str(
        "| run | SMTP refusals | copies missing | duplicates | not encrypted | still queued | Postfix log lines of note |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for run in r.runs {
        let _ = writeln!(
            b,
            "| {}, {} × {}, {} session{} | {} | {} | {} | {} | {} | {} |",
            run.label,
            run.messages,
            run.rcpts,
            run.clients,
            if run.clients == 1 { "" } else { "s" },
            run.refusals.len(),
            run.check.missing,
            run.check.duplicates,
            if run.milter {
                run.check.not_encrypted.to_string()
            } else {
                "— (no milter)".to_string()
            },
            run.check.still_queued,
            run.postfix_notes.len(),
        );
    }
    let problems: Vec<String> = r
        .runs
        .iter()
        .flat_map(|run| {
            run.refusals
                .iter()
                .take(3)
                .map(move |x| format!("{} {}×{} refusal {x}", run.label, run.messages, run.rcpts))
                .chain(run.postfix_notes.iter().take(3).cloned())
        })
        .collect();
    let milter_lines: Vec<&str> = r.milter_log.lines().collect();
    let _ = writeln!(
        b,
        "\nUnexpected copies (not from an accepted message): {}. Problems in the warm-up runs: {}. \
         The milters' logs (level warn) have {} line{} over the whole benchmark.",
        r.runs.iter().map(|x| x.check.unexpected)
            .sum::<usize>(),
        r.warm_up_problems,
        milter_lines.len(),
        if milter_lines.len() == 1 { "" } else { "s" },
    );
    if !problems.is_empty() || !milter_lines.is_empty() {
        b.push_str("\nFirst lines of note:\n\n```\n");
        for l in problems
            .iter()
            .map(String::as_str)
            .chain(milter_lines.iter().copied().take(5))
        {
            let _ = writeln!(b, "{l}");
        }
        b.push_str("```\n");
    }

    // Memory over the long 1-recipient run.
    if let Some(run) = r.runs.iter().find(|x| x.milter && x.rcpts == 1) {
        let step = (r.n1 / 10).max(1);
        let at = |k: usize| {
            run.samples
                .iter()
                .find(|s| s.submitted >= k)
                .or(run.samples.last())
                .map_or(0, |s| s.rss_kib)
        };
        let warm = at(step);
        let middle = at(r.n1 / 2);
        let last = run.samples.last().map_or(0, |s| s.rss_kib);
        let max = run.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let allowed = ((warm as f64 * FLAT_FRACTION) as u64).max(FLAT_SLACK_KIB);
        let flat = last <= warm + allowed;
        let _ = write!(
            b,
            "\n### The milter's memory over {} one-recipient messages\n\n\
             VmRSS of the `sealpost milter` process and its `sealpost gpg-worker` children, summed (gpg \
             and gpg-agent are separate processes), \
             sampled every 250 ms during the run above, shown after every {step} messages had \
             their SMTP reply:\n\n\
             | messages | {} |\n|---|{}\n| VmRSS (MiB) | {} |\n\n\
             Before the run (after the warm-up): {:.1} MiB; after {step} messages: {:.1} MiB; \
             after {}: {:.1} MiB; at the end: {:.1} MiB; largest sample: {:.1} MiB; after the \
             5-recipient run: {:.1} MiB; these processes' peak (the sum of each one's VmHWM, after the last run): {:.1} \
             MiB. Goal: flat, i.e. the end within {:.0} % (at least {} MiB) of the value after {step} \
             messages: {}.\n",
            run.messages,
            (1..=10)
                .map(|k| (k * step).to_string())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(10),
            (1..=10)
                .map(|k| format!("{:.1}", mib(at(k * step))))
                .collect::<Vec<_>>()
                .join(" | "),
            mib(r.rss_before),
            mib(warm),
            r.n1 / 2,
            mib(middle),
            mib(last),
            mib(max),
            mib(r.rss_after),
            mib(r.hwm),
            FLAT_FRACTION * 100.0,
            FLAT_SLACK_KIB / 1024,
            if flat { "met" } else { "not met" },
        );
    }
    b
}
