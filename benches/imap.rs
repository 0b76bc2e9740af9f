//! `make bench`, IMAP half: sealpost's IMAP server and a throwaway Dovecot side by side on one
//! 50,000-message mailbox, written to BENCHMARKS.md.
//!
//! The mailbox is built from the 40-message test corpus (tests/data/messages), each copy made
//! unique by a `Received:` line of its own (sealpost stores identical content once, which would
//! flatter it), written once as a Maildir with CRLF line ends and Dovecot-style file names
//! (`<time>.M<n>P1.bench,S=<size>,W=<size>:2,<flags>`, so both servers number the messages
//! alike), imported into sealpost's store with `sealpost import` and served by Dovecot from
//! that very Maildir. Both servers are on loopback, one plaintext session each, driven by the
//! same minimal client that reads every byte of every response (literals skipped, not copied).
//!
//! Each operation runs once cold (Dovecot's first SELECT indexes the Maildir; its first header
//! and BODYSTRUCTURE fetches fill its cache) and then seven more times; the table shows the
//! first time and the median of the other seven, the two servers interleaved operation by
//! operation. The goal (each ≤ 1.0 × Dovecot's time) is judged on the medians. Peak RSS is
//! VmHWM of sealpost's daemon (its one process) and of Dovecot's `imap` process of the session.
//!
//! `SEALPOST_BENCH_MESSAGES` sets the mailbox size (default 50,000) for a quick run;
//! `SEALPOST_BENCH_ONLY=FETCH` runs only the operations whose name starts with that text (after
//! a first SELECT), for profiling one of them; `SEALPOST_BENCH_VERBOSE=1` prints every run
//! with the server's and the client's CPU time.

#[allow(dead_code)]
#[path = "../tests/common/dovecot.rs"]
mod dovecot;
#[allow(dead_code)]
#[path = "common/machine.rs"]
mod machine;
#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sealpost::store::crlf;

const DEFAULT_MESSAGES: usize = 50_000;
const WARM_ROUNDS: usize = 7;
/// A word in the bodies of 5 of the 40 corpus messages (once in base64 text).
const SEARCH_WORD: &str = "attached";
/// What Thunderbird fetches for a new folder (the header fields of its message list).
const THUNDERBIRD_FETCH: &str = "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS \
     (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups \
     In-Reply-To Content-Type Reply-To)])";

/// One logged-in session; counts what comes back instead of keeping it.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
    line: Vec<u8>,
}

#[derive(Debug, Default)]
struct Reply {
    /// Untagged FETCH responses.
    fetches: usize,
    /// Every byte of the response, literals included.
    bytes: u64,
    /// The other untagged lines (SEARCH, EXISTS, ...), without their literals.
    other: Vec<String>,
}

impl Client {
    fn connect(port: u16, user: &str, password: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            reader: BufReader::with_capacity(256 * 1024, stream.try_clone().unwrap()),
            writer: stream,
            tag: 0,
            line: Vec::new(),
        };
        client.read_line();
        client.ok(&format!("LOGIN {user} \"{password}\""));
        client
    }

    /// Reads one line (CRLF included) into `self.line`.
    fn read_line(&mut self) -> usize {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line).unwrap();
        assert!(n > 0, "server closed the connection");
        n
    }

    /// Sends a command and reads up to its tagged OK; panics on anything else.
    fn ok(&mut self, command: &str) -> Reply {
        self.tag += 1;
        let tag = format!("b{}", self.tag);
        self.writer
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .unwrap();
        let mut reply = Reply::default();
        let mut first = true;
        loop {
            reply.bytes += self.read_line() as u64;
            let line = self.line.strip_suffix(b"\r\n").unwrap_or(&self.line);
            let literal = literal_size(line);
            if first {
                if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
                    let text = String::from_utf8_lossy(line).into_owned();
                    assert!(text[tag.len()..].starts_with(" OK"), "{command}: {text}");
                    return reply;
                }
                if line.starts_with(b"* ") && find(line, b" FETCH (").is_some() {
                    reply.fetches += 1;
                } else {
                    reply.other.push(String::from_utf8_lossy(line).into_owned());
                }
            }
            first = match literal {
                Some(n) => {
                    let copied =
                        std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())
                            .unwrap();
                    assert_eq!(copied, n, "literal cut short");
                    reply.bytes += n;
                    false
                }
                None => true,
            };
        }
    }

    fn timed(&mut self, command: &str) -> (Duration, Reply) {
        let start = Instant::now();
        let reply = self.ok(command);
        (start.elapsed(), reply)
    }
}

fn literal_size(line: &[u8]) -> Option<u64> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = inner[open + 1..]
        .strip_suffix(b"+")
        .unwrap_or(&inner[open + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn search_hits(reply: &Reply) -> Vec<u32> {
    let line = reply
        .other
        .iter()
        .find(|l| l.starts_with("* SEARCH"))
        .expect("a SEARCH response");
    line["* SEARCH".len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

fn exists(reply: &Reply) -> usize {
    reply
        .other
        .iter()
        .find_map(|l| l.strip_suffix(" EXISTS")?.strip_prefix("* ")?.parse().ok())
        .expect("an EXISTS response")
}

/// Writes `count` messages into `maildir`/cur; returns the total bytes.
fn write_mailbox(maildir: &Path, count: usize, owner: Option<(u32, u32)>) -> u64 {
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/messages");
    let mut corpus: Vec<_> = std::fs::read_dir(&corpus_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    corpus.sort();
    // The first 40 fixtures, the mailbox the published figures were measured on (fixtures
    // added since are edge cases of MIME, not mail people keep).
    corpus.truncate(40);
    let corpus: Vec<Vec<u8>> = corpus
        .iter()
        .map(|p| crlf(&std::fs::read(p).unwrap()))
        .collect();
    let cur = maildir.join("cur");
    std::fs::create_dir_all(&cur).unwrap();
    let mut total = 0;
    for i in 0..count {
        let time = 1_700_000_000 + i as u64;
        let mut message = format!(
            "Received: from client.example (client.example [192.0.2.7])\r\n\
             \tby mx.example with ESMTPS id {i:08X}\r\n\
             \tfor <alice@example.org>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        )
        .into_bytes();
        message.extend_from_slice(&corpus[i % corpus.len()]);
        // Two in three read, one in ten flagged: a lived-in mailbox.
        let flags = match (i % 3 != 0, i % 10 == 0) {
            (true, true) => "FS",
            (true, false) => "S",
            (false, true) => "F",
            (false, false) => "",
        };
        let size = message.len();
        let path = cur.join(format!("{time}.M{i}P1.bench,S={size},W={size}:2,{flags}"));
        std::fs::write(&path, &message).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        total += size as u64;
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&cur, Some(uid), Some(gid)).unwrap();
    }
    total
}

/// Dovecot's `imap` processes (children of the master whose pid is in master.pid).
fn dovecot_imap_pids(dovecot: &dovecot::Dovecot) -> Vec<u32> {
    let master = std::fs::read_to_string(dovecot.dir().join("run/master.pid")).unwrap();
    let master = master.trim();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1);
        if comm.ends_with("(imap") && ppid == Some(master) {
            pids.push(pid);
        }
    }
    pids
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

struct Row {
    name: String,
    first: [Duration; 2],
    warm: [Duration; 2],
    /// CPU time the serving process spent on the operation (median of the warm runs).
    cpu: [Duration; 2],
    note: String,
}

/// CPU time of all threads of a process so far (schedstat: nanoseconds on a CPU).
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

fn main() {
    let out_path = report::start();
    let count: usize = std::env::var("SEALPOST_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);

    let dovecot = dovecot::Dovecot::start();
    let owner = std::fs::metadata(&dovecot.maildir).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid())
    });
    let started = Instant::now();
    let mailbox_bytes = write_mailbox(&dovecot.maildir, count, owner);
    eprintln!(
        "wrote {count} messages ({mailbox_bytes} bytes) in {:?}",
        started.elapsed()
    );

    let sealpost = server::Server::start();
    let started = Instant::now();
    sealpost.import("INBOX", &dovecot.maildir);
    let import_time = started.elapsed();
    eprintln!("sealpost import: {import_time:?}");
    // The mailbox and the store were just written: let their writeback finish now rather
    // than during the timed operations.
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    assert!(synced, "sync failed");

    let mut clients = [
        Client::connect(sealpost.starttls_port, server::USER, server::PASSWORD),
        Client::connect(dovecot.port, &dovecot.user, &dovecot.password),
    ];
    let imap_pids = dovecot_imap_pids(&dovecot);
    assert_eq!(
        imap_pids.len(),
        1,
        "one Dovecot imap process: {imap_pids:?}"
    );
    let pids = [sealpost.pid(), imap_pids[0]];
    let store_flagged = "STORE 1:* +FLAGS (\\Flagged)";
    let search_body = format!("SEARCH BODY {SEARCH_WORD}");
    let operations: [(&str, &str); 6] = [
        ("SELECT INBOX", "SELECT INBOX"),
        ("UID FETCH 1:* (FLAGS)", "UID FETCH 1:* (FLAGS)"),
        ("Thunderbird header fetch", THUNDERBIRD_FETCH),
        ("FETCH 1:* BODYSTRUCTURE", "FETCH 1:* BODYSTRUCTURE"),
        ("SEARCH BODY", &search_body),
        ("STORE 1:* +FLAGS (\\Flagged)", store_flagged),
    ];
    let only = std::env::var("SEALPOST_BENCH_ONLY").ok();
    if only.is_some() {
        for client in clients.iter_mut() {
            client.ok("SELECT INBOX");
        }
    }
    let mut rows = Vec::new();
    for (name, command) in operations {
        if only.as_ref().is_some_and(|o| !name.starts_with(o.as_str())) {
            continue;
        }
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let mut cpus: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let mut note = String::new();
        for _round in 0..=WARM_ROUNDS {
            let mut hits: Vec<Vec<u32>> = Vec::new();
            for (side, client) in clients.iter_mut().enumerate() {
                // Put the session back where the timed command expects it.
                if command.starts_with("SELECT") {
                    if client.tag > 1 {
                        client.ok("UNSELECT");
                    }
                } else if command == store_flagged {
                    client.ok("STORE 1:* -FLAGS.SILENT (\\Flagged)");
                }
                let cpu_before = cpu_time(pids[side]);
                let client_before = cpu_time(std::process::id());
                let (took, reply) = client.timed(command);
                times[side].push(took);
                cpus[side].push(cpu_time(pids[side]) - cpu_before);
                if std::env::var_os("SEALPOST_BENCH_VERBOSE").is_some() {
                    eprintln!(
                        "  {name} side {side}: wall {took:?}, server cpu {:?}, client cpu {:?}",
                        cpus[side].last().unwrap(),
                        cpu_time(std::process::id()) - client_before
                    );
                }
                if command.starts_with("SELECT") {
                    assert_eq!(exists(&reply), count, "side {side}: SELECT");
                } else if command.starts_with("SEARCH") {
                    hits.push(search_hits(&reply));
                } else {
                    assert_eq!(reply.fetches, count, "side {side}: {name}");
                }
                if note.is_empty() && !command.starts_with("SELECT") {
                    note = match hits.last() {
                        Some(h) => format!("{} hits", h.len()),
                        None => format!("{:.1} MB of responses", reply.bytes as f64 / 1e6),
                    };
                }
            }
            if hits.len() == 2 {
                assert_eq!(hits[0], hits[1], "SEARCH results differ");
            }
        }
        let [s, d] = times;
        let [sc, dc] = cpus;
        rows.push(Row {
            name: name.to_string(),
            first: [s[0], d[0]],
            warm: [median(s[1..].to_vec()), median(d[1..].to_vec())],
            cpu: [median(sc[1..].to_vec()), median(dc[1..].to_vec())],
            note,
        });
        let row = rows.last().unwrap();
        eprintln!(
            "{name}: first {:?} / {:?}, warm {:?} / {:?}, cpu {:?} / {:?}",
            row.first[0], row.first[1], row.warm[0], row.warm[1], row.cpu[0], row.cpu[1]
        );
    }

    let sealpost_rss = machine::status_kib(sealpost.pid(), "VmHWM").expect("VmHWM");
    let dovecot_rss = machine::status_kib(pids[1], "VmHWM").expect("VmHWM");
    let store_size = du(&sealpost.store_path()) + {
        let wal = sealpost.store_path().with_extension("sqlite-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    };
    let maildir_size = du(&dovecot.maildir);
    let dovecot_version = report::first_line(dovecot::DOVECOT, &["--version"]);

    let mut body = String::new();
    let _ = writeln!(body, "Produced by `make bench` (`cargo bench --bench imap -- --out BENCHMARKS.md`, release build).");
    let _ = writeln!(
        body,
        "Machine: {} cores. Reference: Dovecot {dovecot_version} (Debian's dovecot-imapd, Maildir, default cache settings, no FTS), started by the benchmark on loopback.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        body,
        "Mailbox: {count} messages, {:.1} MB ({} copies of each of the 40 test-corpus messages, each with its own `Received:` line); two in three `\\Seen`, one in ten `\\Flagged`.",
        mailbox_bytes as f64 / 1e6,
        count / 40
    );
    let _ = writeln!(
        body,
        "One plaintext session per server on loopback; the client reads every response byte. \"first\" is the first run (Dovecot indexes the Maildir at its first SELECT and fills its cache at the first header and BODYSTRUCTURE fetch); \"warm\" is the median of the next {WARM_ROUNDS}. The goal, ≤ 1.0 × Dovecot, is judged on warm times. CPU is the serving process's own CPU time (all its threads, from /proc schedstat): less noisy than wall time on a shared 2-core machine, where the client runs too. On this virtual machine the same operation's wall time varies by up to ±40 % from run to run, for both servers; ratios near 1.0 can flip between runs.\n"
    );
    let _ = writeln!(body, "| operation | sealpost first | Dovecot first | sealpost warm | Dovecot warm | warm ratio | goal | CPU sealpost / Dovecot (warm) | response |\n|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let ratio = row.warm[0].as_secs_f64() / row.warm[1].as_secs_f64();
        let _ = writeln!(
            body,
            "| `{}` | {} | {} | {} | {} | {ratio:.2} × | {} | {} / {} | {} |",
            row.name,
            ms(row.first[0]),
            ms(row.first[1]),
            ms(row.warm[0]),
            ms(row.warm[1]),
            if ratio <= 1.0 { "met" } else { "NOT met" },
            ms(row.cpu[0]),
            ms(row.cpu[1]),
            row.note
        );
    }
    let _ = writeln!(body, "\n| measure | sealpost | Dovecot |\n|---|---|---|");
    let _ = writeln!(
        body,
        "| peak RSS of the serving process (VmHWM; goal ≤ 100 MB for sealpost: {}) | {:.1} MB | {:.1} MB |",
        if sealpost_rss * 1024 <= 100_000_000 { "met" } else { "NOT met" },
        sealpost_rss as f64 * 1024.0 / 1e6,
        dovecot_rss as f64 * 1024.0 / 1e6
    );
    let _ = writeln!(
        body,
        "| import of the mailbox | {} (`sealpost import`, parsing and summarising every message) | — (reads the Maildir in place; indexing is its first SELECT) |",
        ms(import_time)
    );
    let _ = writeln!(
        body,
        "| on disk after the run | {:.1} MB (SQLite store and WAL) | {:.1} MB (Maildir and index files) |",
        store_size as f64 / 1e6,
        maildir_size as f64 / 1e6
    );
    report::write_section(out_path.as_deref(), "## IMAP server (issue 5)", &body);
    print!("{body}");
}
