//! The IMAP server through real clients: Python imaplib (tests/imap/client.py), mbsync, a raw
//! socket client for pipelining and limits, and a throwaway Dovecot as the reference.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::corpus_files;
use common::dovecot::Dovecot;
use common::imap::{append_bytes, fetched_bodies, ok_step, run_client, Tls};
use common::mbsync::Mbsync;
use common::server::{tls_client, tls_connect, Raw, Server, AUTH_DELAY_MS, PASSWORD, USER};

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let files = corpus_files();
    files
        .into_iter()
        .map(|p| {
            let raw = sealpost::store::crlf(&std::fs::read(&p).unwrap());
            (p, raw)
        })
        .collect()
}

fn sealpost_client(server: &Server, steps: &Value) -> Value {
    run_client(server.starttls_port, USER, PASSWORD, Tls::None, steps)
}

#[test]
fn corpus_round_trips_byte_identical_through_imap_and_mbsync() {
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    let server = Server::start();
    let steps: Vec<Value> = corpus
        .iter()
        .map(|(_, raw)| append_bytes("INBOX", raw))
        .collect();
    sealpost_client(&server, &Value::Array(steps));

    // store → IMAP (over STARTTLS, verified against the generated certificate)
    let out = run_client(
        server.starttls_port,
        USER,
        PASSWORD,
        Tls::Starttls(server.cert()),
        &json!([{"cmd": "fetch_all", "mailbox": "INBOX"}]),
    );
    let fetched = fetched_bodies(&out, 0);
    assert_eq!(fetched.len(), corpus.len());
    for ((_, served), (path, stored)) in fetched.iter().zip(&corpus) {
        assert!(
            served == stored,
            "{} not served byte for byte",
            path.display()
        );
    }
    for (message, (_, stored)) in ok_step(&out, 0)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&corpus)
    {
        assert_eq!(
            message["size"].as_u64(),
            Some(stored.len() as u64),
            "RFC822.SIZE = bytes served"
        );
    }

    // IMAP → mbsync Maildir (implicit TLS). mbsync itself writes LF files, adds X-TUID and
    // skips messages without a blank line after the header (tests/harness.rs pins that down),
    // so its files are compared with exactly those changes applied.
    let mbsync = Mbsync::new(
        "127.0.0.1",
        server.tls_port,
        USER,
        PASSWORD,
        Tls::Implicit(server.cert()),
    );
    mbsync.pull().expect("mbsync pull");
    let mut local: Vec<Vec<u8>> = mbsync.maildir().iter().map(|f| strip_tuid(f)).collect();
    let mut expected: Vec<Vec<u8>> = corpus
        .iter()
        .filter(|(_, raw)| common::find(raw, b"\r\n\r\n").is_some())
        .map(|(_, raw)| raw.iter().copied().filter(|&b| b != b'\r').collect())
        .collect();
    local.sort();
    expected.sort();
    assert_eq!(local.len(), expected.len());
    assert!(
        local == expected,
        "mbsync's copies differ from what was served"
    );

    // Maildir → APPEND back → FETCH: byte-identical to the original for every message mbsync
    // carried without loss (all but the one with bare CRs, which mbsync drops).
    let mut steps = vec![json!({"cmd": "raw", "line": "CREATE Roundtrip"})];
    steps.extend(local.iter().map(|raw| append_bytes("Roundtrip", raw)));
    steps.push(json!({"cmd": "fetch_all", "mailbox": "Roundtrip"}));
    let out = sealpost_client(&server, &Value::Array(steps));
    let again: Vec<Vec<u8>> = fetched_bodies(&out, local.len() + 1)
        .into_iter()
        .map(|(_, raw)| raw)
        .collect();
    let originals: Vec<&Vec<u8>> = corpus.iter().map(|(_, raw)| raw).collect();
    let identical = again.iter().filter(|raw| originals.contains(raw)).count();
    let with_bare_cr = corpus
        .iter()
        .filter(|(_, raw)| raw.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'))
        .count();
    assert_eq!(identical, again.len() - with_bare_cr);
    assert!(
        identical >= 30,
        "{identical} messages round-tripped byte for byte"
    );
}

/// Removes the `X-TUID:` header line mbsync adds.
fn strip_tuid(raw: &[u8]) -> Vec<u8> {
    let Some(at) = common::find(raw, b"\nX-TUID: ") else {
        return raw.to_vec();
    };
    let at = at + 1;
    let end = at + raw[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    [&raw[..at], &raw[end..]].concat()
}

#[test]
fn import_reads_mbox_and_maildir() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("mbox");
    std::fs::write(&mbox, "From a@example.org Thu Nov 19 10:00:00 2026\nSubject: one\n\n>From the start\n\nFrom b@example.org Fri Nov 20 11:30:15 2026\nSubject: two\n\nbody\n").unwrap();
    server.import("Old", &mbox);
    let maildir = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(maildir.join("cur/1.host:2,FS"), "Subject: three\n\nthree\n").unwrap();
    // A Maildir++ folder is a mailbox of its own: not read into this one, and said (it was
    // left out without a word); Dovecot's and Courier's own files are no messages.
    std::fs::create_dir_all(maildir.join(".Sent/cur")).unwrap();
    std::fs::write(maildir.join(".Sent/cur/2.host:2,S"), "Subject: sent\n\nx\n").unwrap();
    std::fs::create_dir_all(maildir.join("courierimapkeywords")).unwrap();
    std::fs::write(maildir.join("dovecot-uidlist"), "3 V1 N2\n").unwrap();
    let out = server.import("Old", &maildir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(".Sent (a Maildir++ folder: import it on its own"),
        "{said}"
    );
    assert!(!said.contains("courierimapkeywords") && !said.contains("uidlist"));
    // A directory of message files: a directory inside it is said too.
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("older")).unwrap();
    std::fs::write(files.join("one.eml"), "Subject: four\n\nfour\n").unwrap();
    let out = server.import("Files", &files);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("older (a directory: import it on its own)"),
        "{said}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 messages"));
    let mut raw = server.login();
    raw.ok("SELECT Old");
    let fetched = raw.ok("FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[TEXT])");
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    assert!(
        fetched[0].contains("INTERNALDATE \"19-Nov-2026 10:00:00 +0000\""),
        "{fetched:?}"
    );
    assert!(
        fetched[0].contains("From the start\r\n"),
        "mboxrd quoting undone: {fetched:?}"
    );
    assert!(
        fetched[2].contains("\\Flagged") && fetched[2].contains("\\Seen"),
        "{fetched:?}"
    );
    // An account the configuration does not have (a typo) is refused, as by deliver, not
    // made in the store with the mail where nobody logs in (review).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .arg("--config")
        .arg(server.config())
        .args(["import", "--account", "alcie"])
        .arg(&mbox)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(67), "{out:?}");
    let store = sealpost::store::Store::open(&server.store_path()).unwrap();
    assert!(store.account("alcie").unwrap().is_none());
}

/// The FETCH answers that must equal Dovecot's, for every message.
fn compare_fields(ours: &Value, theirs: &Value, what: &str) {
    let ours = ours["messages"].as_array().unwrap();
    let theirs = theirs["messages"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    let mut differences = Vec::new();
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        for field in ["size", "envelope", "body", "bodystructure", "raw_b64"] {
            if a[field] != b[field] {
                differences.push(format!(
                    "{what} message {}: {field}\n  sealpost: {}\n  dovecot:  {}",
                    i + 1,
                    a[field],
                    b[field]
                ));
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Where sealpost knowingly answers differently from Dovecot 2.3: (message, FETCH item).
/// Message 32's first part sits behind a preamble line that only starts with the boundary; its
/// MIME header is the bare CRLF sealpost serves, while Dovecot serves "". Message 36 has no
/// line end after its last header field; Dovecot's HEADER.FIELDS.NOT leaves it unterminated,
/// sealpost ends the field with CRLF.
const KNOWN_DIFFERENCES: [(u64, &str); 2] = [(32, "BODY[1.MIME]"), (36, "HEADER.FIELDS.NOT")];

#[test]
fn fetch_and_search_answers_equal_dovecots() {
    let mut corpus = corpus();
    // A bounce (RFC 3464): its report and the returned header are message/* parts, which
    // BODY and TEXT search as text; the application/* part beside them is not searched.
    let bounce = "From: Mail Delivery System <MAILER-DAEMON@example.org>\r\n\
        To: alice@example.org\r\nSubject: Undelivered Mail Returned to Sender\r\n\
        Date: Tue, 5 Mar 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
        --B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
        --B\r\nContent-Type: message/delivery-status\r\n\r\n\
        Reporting-MTA: dns; mx.example.org\r\n\r\n\
        Final-Recipient: rfc822; carol@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
        --B\r\nContent-Type: text/rfc822-headers\r\n\r\n\
        Subject: lunch plans\r\nMessage-ID: <returned@example.org>\r\n\
        --B\r\nContent-Type: application/octet-stream\r\n\r\nopaque-trailer-words\r\n\
        --B--\r\n";
    corpus.push(("bounce".into(), bounce.as_bytes().to_vec()));
    let server = Server::start();
    let dovecot = Dovecot::start();
    let mut steps: Vec<Value> = corpus
        .iter()
        .map(|(_, raw)| append_bytes("INBOX", raw))
        .collect();
    steps.push(json!({"cmd": "fetch_all", "mailbox": "INBOX"}));
    steps.push(json!({"cmd": "select", "mailbox": "INBOX"}));
    let n = corpus.len();
    let queries = [
        "SEARCH ALL",
        "SEARCH SUBJECT \"agenda\"",
        // The last field of a header-only message without a line end.
        "SEARCH SUBJECT \"no final newline\"",
        "SEARCH FROM \"alice\"",
        "SEARCH TO \"bob@example.org\"",
        "SEARCH BODY \"lunch\"",
        // Text inside an attached message (message/rfc822) is part of the body.
        "SEARCH BODY \"attached\"",
        "SEARCH BODY \"contract\"",
        "SEARCH TEXT \"example\"",
        // The header as written too: a Received field has no decoded value.
        "SEARCH TEXT \"192.0.2.25\"",
        // Across a field's name and its value.
        "SEARCH TEXT \"Subject: re\"",
        "SEARCH TEXT \"message-id: <\"",
        "SEARCH BODY \"Reporting-MTA\"",
        "SEARCH TEXT \"rfc822; carol\"",
        "SEARCH BODY \"returned@example\"",
        "SEARCH BODY \"opaque-trailer\"",
        "SEARCH HEADER \"Message-ID\" \"example.org\"",
        "SEARCH LARGER 2000",
        "SEARCH SMALLER 600",
        "SEARCH OR SUBJECT \"re\" NOT FROM \"alice\"",
        "SEARCH SENTBEFORE 1-Jan-2024",
        "SEARCH SENTSINCE 1-Mar-2024",
        "SEARCH 2:5 UNSEEN",
        "UID SEARCH UID 3:* NOT DELETED",
        "SEARCH CHARSET UTF-8 SUBJECT \"caf\u{e9}\"",
        // An accent in the term is part of it (i;unicode-casemap keeps combining marks).
        "SEARCH CHARSET UTF-8 SUBJECT \"\u{c3}\u{a9}\"",
        "SEARCH CHARSET UTF-8 TEXT \"Koln\"",
        // UTF-8 in a quoted string (the line goes as Latin-1: these are é's two bytes), as
        // mutt and neomutt send it, with a charset and without (review: BAD here).
        "SEARCH SUBJECT \"caf\u{c3}\u{a9}\"",
        "UID SEARCH CHARSET UTF-8 OR BODY \"caf\u{c3}\u{a9}\" TEXT \"caf\u{c3}\u{a9}\"",
        "FETCH 1:* (BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT DATE)] BODY.PEEK[TEXT]<0.30>)",
        "FETCH 1:* (BODY.PEEK[2] BODY.PEEK[1.2] BODY.PEEK[2.MIME] BODY.PEEK[1]<5.10>)",
        "FETCH 1:* (BODY.PEEK[]<100000000.10> BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED DATE)])",
        "FETCH 1:* (RFC822.HEADER RFC822.SIZE)",
        "FETCH 1:* (RFC822.HEADER RFC822)",
        // Last: without .PEEK, RFC822.TEXT sets \Seen (and says so).
        "FETCH 1:* (RFC822.TEXT)",
    ];
    for query in queries {
        steps.push(json!({"cmd": "raw", "line": query}));
    }
    let steps = Value::Array(steps);
    let ours = sealpost_client(&server, &steps);
    let theirs = run_client(
        dovecot.port,
        &dovecot.user,
        &dovecot.password,
        Tls::None,
        &steps,
    );
    compare_fields(&ours["steps"][n], &theirs["steps"][n], "FETCH");
    let mut differences = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let (a, b) = (&ours["steps"][n + 2 + i], &theirs["steps"][n + 2 + i]);
        // The order of items inside one FETCH response carries no meaning (RFC 3501 §7.4.2):
        // compare them as sorted name/value pairs.
        let data = |v: &Value| -> Vec<Value> {
            v["untagged"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["data"].clone())
                .filter(|d| !d.is_null())
                .map(|d| {
                    match (
                        d.get(1).and_then(Value::as_str),
                        d.get(2).and_then(Value::as_array),
                    ) {
                        (Some("FETCH"), Some(items)) => {
                            let mut pairs: Vec<(String, String)> = items
                                .chunks(2)
                                .map(|p| {
                                    (
                                        p[0].to_string(),
                                        p.get(1).map(Value::to_string).unwrap_or_default(),
                                    )
                                })
                                .filter(|(name, _)| {
                                    !KNOWN_DIFFERENCES
                                        .iter()
                                        .any(|(seq, item)| d[0] == *seq && name.contains(item))
                                })
                                .collect();
                            pairs.sort();
                            json!([d[0], "FETCH", pairs])
                        }
                        _ => d,
                    }
                })
                .collect()
        };
        if a["tagged"]["status"] != b["tagged"]["status"] {
            differences.push(format!("{query}: {} vs {}", a["tagged"], b["tagged"]));
        }
        for (j, (x, y)) in data(a).iter().zip(data(b).iter()).enumerate() {
            if x != y {
                differences.push(format!(
                    "{query} response {j}\n  sealpost: {x}\n  dovecot:  {y}"
                ));
            }
        }
        if data(a).len() != data(b).len() {
            differences.push(format!(
                "{query}: {} vs {} responses",
                data(a).len(),
                data(b).len()
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// SENTON compares the day the Date field names, in every legal form (RFC 5322 §3.3 and
/// §4.3: no day name, an obsolete zone), and TO/CC find a group by its name, as the envelope
/// shows it. From a review against Dovecot, which found these where sealpost found nothing.
#[test]
fn search_reads_every_date_form_and_group_names() {
    let server = Server::start();
    let mut raw = server.login();
    for (date, to) in [
        ("11 Jan 2024 12:00 GMT", "bob@example.org"),
        (
            "Thu, 11 Jan 2024 12:00:00",
            "Friends: bob@example.org, carol@example.net;",
        ),
        (
            "Thu, 11 Jan 2024 23:30:00 -0800",
            "undisclosed-recipients:;",
        ),
        ("Fri, 12 Jan 2024 00:10:00 +0100", "bob@example.org"),
    ] {
        let message = format!("From: alice@example.org\r\nTo: {to}\r\nDate: {date}\r\n\r\nhi\r\n");
        raw.ok(&format!("APPEND INBOX {{{}}}\r\n{message}", message.len()));
    }
    raw.ok("SELECT INBOX");
    let search = |raw: &mut common::server::Raw<std::net::TcpStream>, query: &str| {
        let lines = raw.ok(query);
        lines
            .into_iter()
            .find(|l| l.starts_with("* SEARCH"))
            .unwrap_or_default()
    };
    assert_eq!(
        search(&mut raw, "SEARCH SENTON 11-Jan-2024"),
        "* SEARCH 1 2 3"
    );
    assert_eq!(
        search(&mut raw, "SEARCH SENTBEFORE 12-Jan-2024"),
        "* SEARCH 1 2 3"
    );
    assert_eq!(
        search(&mut raw, "SEARCH SENTSINCE 12-Jan-2024"),
        "* SEARCH 4"
    );
    assert_eq!(search(&mut raw, "SEARCH TO \"friends\""), "* SEARCH 2");
    assert_eq!(search(&mut raw, "SEARCH TO \"undisclosed\""), "* SEARCH 3");
    assert_eq!(search(&mut raw, "SEARCH TO \"carol\""), "* SEARCH 2");
    // Two Date fields: the first counts, as Dovecot reads it.
    let message = "From: alice@example.org\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\
                   Date: Wed, 3 Jan 2024 10:00:00 +0000\r\n\r\nhi\r\n";
    raw.ok(&format!("APPEND INBOX {{{}}}\r\n{message}", message.len()));
    raw.ok("NOOP");
    assert_eq!(search(&mut raw, "SEARCH SENTON 2-Jan-2024"), "* SEARCH 5");
    assert_eq!(search(&mut raw, "SEARCH SENTON 3-Jan-2024"), "* SEARCH");
}

/// The server's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One FETCH line naming a section many times over many messages: the responses are rendered
/// a few MB at a time, not a whole batch at once (review: a line of 1,200 items had the
/// server render 4 GB), and more than 100 sections in one FETCH are refused.
#[test]
fn a_fetch_of_many_sections_keeps_memory_bounded() {
    let server = Server::start();
    let mut raw = server.login();
    let body = "0123456789abcdef ".repeat(1200);
    for i in 0..60 {
        let message = format!("Subject: m{i}\r\n\r\n{body}\r\n");
        raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    }
    raw.ok("SELECT INBOX");
    // Each a whole copy of the text, and not the same item twice (answered once).
    let sections = |n: usize| {
        (0..n)
            .map(|i| format!("BODY.PEEK[TEXT]<0.{}>", 1_000_000 + i))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (_, tagged) = raw.cmd(&format!("FETCH 1 ({})", sections(101)));
    assert!(tagged.contains(" BAD "), "{tagged}");
    let before = peak_kib(server.pid());
    let items = sections(100);
    let responses = raw.ok(&format!("FETCH 1:60 ({items})"));
    let grown_mib = (peak_kib(server.pid()) - before) / 1024;
    assert_eq!(responses.len(), 60);
    for (i, r) in responses.iter().enumerate() {
        assert!(r.starts_with(&format!("* {} FETCH (", i + 1)), "{:.60}", r);
        assert_eq!(r.matches("0123456789abcdef").count(), 100 * 1200);
    }
    // 60 responses of 2 MB each were 120 MB rendered at once.
    assert!(grown_mib < 40, "the server grew by {grown_mib} MiB");
}

/// Items a FETCH names twice are answered once (review: BODYSTRUCTURE named 4,600 times
/// rendered 3.4 GB for one message), and one message's response copies at most about the
/// largest message there can be: a hundred HEADER.FIELDS.NOT sections of a large header (each
/// a copy) are refused with NO [LIMIT] (review: 877 MB for an 8 MB header), and the session
/// goes on. A field name with an 8-bit byte is echoed as the literal it came as.
#[test]
fn a_fetch_copies_a_bounded_amount_of_one_message() {
    // The test server's max_append is 1 MiB: a message's response may copy about 5 MiB.
    let server = Server::start();
    let mut raw = server.login();
    let fields: String = (0..9000)
        .map(|i| format!("X-Filler-{i:05}: {:>50}\r\n", i))
        .collect();
    let message = format!("{fields}Subject: big header\r\n\r\nbody\r\n");
    assert!(message.len() > 600_000 && message.len() < 1 << 20);
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    raw.ok("SELECT INBOX");

    let twice = raw.ok("FETCH 1 (UID BODYSTRUCTURE ENVELOPE BODYSTRUCTURE UID ENVELOPE)");
    assert_eq!(twice.len(), 1, "{twice:?}");
    assert_eq!(
        twice[0].matches("BODYSTRUCTURE").count(),
        1,
        "{:.200}",
        twice[0]
    );
    assert_eq!(twice[0].matches("ENVELOPE").count(), 1, "{:.200}", twice[0]);
    assert_eq!(twice[0].matches("UID").count(), 1, "{:.200}", twice[0]);

    let before = peak_kib(server.pid());
    let items: Vec<String> = (0..100)
        .map(|i| format!("BODY.PEEK[HEADER.FIELDS.NOT (X-Nothing-{i})]"))
        .collect();
    let (untagged, tagged) = raw.cmd(&format!("FETCH 1 ({})", items.join(" ")));
    let grown_mib = (peak_kib(server.pid()) - before) / 1024;
    assert!(tagged.contains(" NO [LIMIT] "), "{tagged}");
    assert!(
        untagged.iter().all(|l| !l.contains("FETCH")),
        "{untagged:.200?}"
    );
    // 100 copies of the header were 60 MB.
    assert!(grown_mib < 30, "the server grew by {grown_mib} MiB");
    let one = raw.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (X-Nothing)])");
    assert!(one[0].contains("X-Filler-08999"), "{:.200}", one[0]);

    // Only sections count: a BODYSTRUCTURE of 8 MB (an attached message whose To holds
    // 240,000 empty groups) is one copy of what was stored, and goes out (review: NO [LIMIT]
    // for every FETCH of the mailbox that asked for it).
    let groups = "g:;,".repeat(240_000);
    let wide = format!(
        "Subject: groups\r\nContent-Type: message/rfc822\r\n\r\nTo: {groups}\r\n\
         Subject: inner\r\n\r\nx\r\n"
    );
    assert!(wide.len() < 1 << 20);
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{wide}", wide.len()));
    raw.ok("NOOP");
    let lines = raw.ok("FETCH 1:2 (UID FLAGS BODYSTRUCTURE)");
    assert_eq!(lines.len(), 2, "{lines:.200?}");
    assert!(lines[1].len() > 5 << 20, "{}", lines[1].len());

    raw.send(b"t1 FETCH 1 (BODY.PEEK[HEADER.FIELDS ({1+}\r\n\xff)])\r\n");
    let (lines, tagged) = raw.until("t1");
    assert!(tagged.starts_with("t1 OK"), "{tagged}");
    assert!(
        lines[0].starts_with("* 1 FETCH (BODY[HEADER.FIELDS ({1}\r\n\u{ff})] "),
        "{lines:?}"
    );
}

/// Criteria nested deeper than imap-codec's nine levels (review: BAD for ten ORed FROMs, nine
/// NOTs or ten parentheses; Dovecot answers them all) are answered, with the same meaning.
#[test]
fn deeply_nested_search_criteria_are_answered() {
    let server = Server::start();
    let mut raw = server.login();
    for i in 0..12 {
        let message = format!("From: u{i}@example.org\r\nSubject: m{i}\r\n\r\nbody {i}\r\n");
        raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    }
    raw.ok("SELECT INBOX");
    let ors = "OR ".repeat(10);
    let froms: Vec<String> = (0..11).map(|i| format!("FROM u{i}@")).collect();
    let found = raw.ok(&format!("UID SEARCH {ors}{}", froms.join(" ")));
    assert_eq!(found, ["* SEARCH 1 2 3 4 5 6 7 8 9 10 11"]);
    // The other way round, and with a literal among them.
    let found = raw.ok(&format!(
        "UID SEARCH CHARSET UTF-8 {}FROM {{4+}}\r\nu11@ {}",
        "OR ".repeat(10),
        froms[1..].join(" ")
    ));
    assert_eq!(found, ["* SEARCH 2 3 4 5 6 7 8 9 10 11 12"]);
    let found = raw.ok(&format!("SEARCH {}SUBJECT m3", "NOT ".repeat(11)));
    assert_eq!(found, ["* SEARCH 1 2 3 5 6 7 8 9 10 11 12"]);
    let found = raw.ok(&format!(
        "SEARCH {}SUBJECT m3{}",
        "(".repeat(12),
        ")".repeat(12)
    ));
    assert_eq!(found, ["* SEARCH 4"]);
    // 200 keys ORed one after the other.
    let ors = "OR ".repeat(199);
    let keys = (0..200)
        .map(|i| format!("SUBJECT m{}", i % 12))
        .collect::<Vec<_>>()
        .join(" ");
    let found = raw.ok(&format!("SEARCH {ors}{keys}"));
    assert_eq!(found, ["* SEARCH 1 2 3 4 5 6 7 8 9 10 11 12"]);
    // 1,000 keys ORed one after the other (review: BAD past 256), and 5,001 NOTs.
    let ors = "OR ".repeat(999);
    let keys = (0..1000)
        .map(|i| format!("SUBJECT m{}", i % 12))
        .collect::<Vec<_>>()
        .join(" ");
    let found = raw.ok(&format!("SEARCH {ors}{keys}"));
    assert_eq!(found, ["* SEARCH 1 2 3 4 5 6 7 8 9 10 11 12"]);
    // A chain under a NOT, or with a list in it (review: BAD from 65 keys so placed).
    let ors = "OR ".repeat(128);
    let keys = (0..129)
        .map(|i| format!("SUBJECT m{}", i % 12))
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(raw.ok(&format!("SEARCH NOT {ors}{keys}")), ["* SEARCH"]);
    let found = raw.ok(&format!("SEARCH OR {ors}(SUBJECT m3 UNSEEN) {keys}"));
    assert_eq!(found, ["* SEARCH 1 2 3 4 5 6 7 8 9 10 11 12"]);
    let found = raw.ok(&format!("SEARCH {}SUBJECT m3", "NOT ".repeat(5001)));
    assert_eq!(found, ["* SEARCH 1 2 3 5 6 7 8 9 10 11 12"]);
    // Past any sense (a list and a NOT in turn, 5,000 deep): a syntax error, and the session
    // (and server) go on.
    let (_, tagged) = raw.cmd(&format!(
        "SEARCH {}SEEN{}",
        "NOT (SEEN ".repeat(5000),
        ")".repeat(5000)
    ));
    assert!(tagged.contains(" BAD "), "{tagged}");
    raw.ok("NOOP");
}

/// A verdict field is sealpost's only when sealpost verified the message. One a client APPENDs
/// (mail dragged in from another account, say) or `sealpost import` reads is removed, in every
/// spelling; the rest of the message is stored byte for byte.
#[test]
fn appended_and_imported_mail_loses_forged_verdicts() {
    let server = Server::start();
    let forged = "From: mallory@example.net\r\nSealpost-Verdict: encrypted; signature=valid\r\n\
        Subject: trust me\r\nsealpost-verdict: encrypted\r\nSEALPOST-VERDICT : encrypted\r\n\
        Sealpost-Verdict:\r\n encrypted;\r\n\tsignature=valid\r\n\
        Sealpost-Verdict: =?utf-8?q?encrypted=3B_signature=3Dvalid?=\r\n\
        SeAlPoSt-VeRdIcT:encrypted\r\n\r\nSealpost-Verdict: in the body stays\r\n";
    let clean = "From: mallory@example.net\r\nSubject: trust me\r\n\r\n\
        Sealpost-Verdict: in the body stays\r\n";
    let mut raw = server.login();
    raw.ok(&format!(
        "APPEND INBOX (\\Seen $Sealpost-Signed $sealpost-encrypted $Label) {{{}}}\r\n{forged}",
        forged.len()
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forged.eml");
    std::fs::write(&file, forged.replace("\r\n", "\n")).unwrap();
    server.import("INBOX", &file);
    raw.ok("SELECT INBOX");
    for uid in [1, 2] {
        let lines = raw.ok(&format!("UID FETCH {uid} (BODY.PEEK[])"));
        let fetched = lines.join("\r\n");
        assert!(
            fetched.contains(&format!("{{{}}}\r\n{clean}", clean.len())),
            "UID {uid}: {fetched}"
        );
    }
    // Nor do its $Sealpost- keywords; the client's other flags stay.
    let flags = raw.ok("UID FETCH 1 (FLAGS)").join(" ");
    assert!(
        flags.contains("\\Seen") && flags.contains("$Label"),
        "{flags}"
    );
    assert!(!flags.to_ascii_lowercase().contains("$sealpost"), "{flags}");
}

#[test]
fn keywords_and_permanent_flags() {
    let server = Server::start();
    let mut raw = server.login();
    raw.ok("APPEND INBOX (\\Seen $Label1) {16}\r\nSubject: x\r\n\r\nhi");
    let select = raw.ok("SELECT INBOX");
    assert!(
        select
            .iter()
            .any(|l| l.starts_with("* FLAGS (") && l.contains("$Label1")),
        "{select:?}"
    );
    assert!(
        select
            .iter()
            .any(|l| l.contains("[PERMANENTFLAGS (") && l.contains("\\*)")),
        "{select:?}"
    );
    let fetched = raw.ok("FETCH 1 (FLAGS)");
    assert!(
        fetched[0].contains("\\Seen") && fetched[0].contains("$Label1"),
        "{fetched:?}"
    );
    let stored = raw.ok("STORE 1 -FLAGS ($label1)");
    assert!(
        !stored[0].contains("$Label1"),
        "keywords are case-insensitive: {stored:?}"
    );

    // A keyword new to the mailbox, set by another session: that one gets the new FLAGS
    // with its STORE, this one at its next NOOP, before the flag change itself (RFC 3501
    // §7.2.6); both are told once.
    let mut other = server.login();
    other.ok("SELECT INBOX");
    let stored = other.ok("STORE 1 +FLAGS.SILENT (Project-X)");
    for (who, session, seen) in [
        ("other", &mut other, stored),
        ("first", &mut raw, Vec::new()),
    ] {
        let seen = if seen.is_empty() {
            session.ok("NOOP")
        } else {
            seen
        };
        let flags_at = seen
            .iter()
            .position(|l| l.starts_with("* FLAGS (") && l.contains("Project-X"));
        assert!(flags_at.is_some(), "{who}: {seen:?}");
        assert!(
            seen.iter()
                .any(|l| l.contains("[PERMANENTFLAGS (") && l.contains("Project-X")),
            "{who}: {seen:?}"
        );
        if let Some(fetch_at) = seen.iter().position(|l| l.contains(" FETCH ")) {
            assert!(flags_at < Some(fetch_at), "{who}: {seen:?}");
        }
        // Told once.
        assert!(
            !session.ok("NOOP").iter().any(|l| l.starts_with("* FLAGS")),
            "{who}"
        );
    }
    // Set by the session itself: FLAGS comes with the STORE, before its FETCH response.
    let stored = raw.ok("STORE 1 +FLAGS (Project-Y)");
    let flags_at = stored
        .iter()
        .position(|l| l.starts_with("* FLAGS (") && l.contains("Project-Y"));
    let fetch_at = stored.iter().position(|l| l.contains(" FETCH "));
    assert!(flags_at.is_some() && flags_at < fetch_at, "{stored:?}");
    assert!(
        !raw.ok("NOOP").iter().any(|l| l.starts_with("* FLAGS")),
        "told once"
    );
}

#[test]
fn two_sessions_see_each_others_changes_in_order() {
    let server = Server::start();
    let mut a = server.login();
    for i in 1..=5 {
        let message = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        a.send(format!("ap{i} APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()).as_bytes());
        let (_, tagged) = a.until(&format!("ap{i}"));
        assert!(tagged.contains("OK [APPENDUID "), "{tagged}");
    }
    let first = a.ok("SELECT INBOX");
    assert!(first.contains(&"* 5 RECENT".to_owned()), "{first:?}");
    let mut b = server.login();
    let second = b.ok("SELECT INBOX");
    assert!(
        second.contains(&"* 0 RECENT".to_owned()),
        "\\Recent belongs to one session: {second:?}"
    );

    a.ok("STORE 2 +FLAGS.SILENT (\\Flagged)");
    let seen = b.ok("NOOP");
    assert_eq!(seen, ["* 2 FETCH (UID 2 FLAGS (\\Flagged))"]);
    // B's own .SILENT change to a message A changed since B last heard does not hide A's
    // change: the next NOOP tells B the flags both made (review: \Answered never came).
    a.ok("STORE 2 +FLAGS.SILENT (\\Answered)");
    b.ok("STORE 2 +FLAGS.SILENT (\\Seen)");
    let seen = b.ok("NOOP");
    assert_eq!(
        seen,
        ["* 2 FETCH (UID 2 FLAGS (\\Flagged \\Answered \\Seen))"]
    );
    // Its own change alone is not reported back.
    b.ok("STORE 2 -FLAGS.SILENT (\\Seen)");
    assert!(b.ok("NOOP").is_empty());
    // A STORE that answers with the flags, after another session's change: once, not again
    // at the next NOOP (review: twice).
    a.ok("STORE 2 +FLAGS.SILENT (\\Draft)");
    let answered = b.ok("STORE 2 -FLAGS (\\Draft)");
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert!(b.ok("NOOP").is_empty());
    assert_eq!(
        a.ok("NOOP"),
        ["* 2 FETCH (UID 2 FLAGS (\\Flagged \\Answered \\Recent))"]
    );

    a.ok("STORE 3 +FLAGS.SILENT (\\Deleted)");
    let expunged = a.ok("EXPUNGE");
    assert_eq!(expunged, ["* 3 EXPUNGE"]);
    a.ok("APPEND INBOX {11}\r\nSubject: m6");
    let updates = b.ok("NOOP");
    assert_eq!(
        updates,
        ["* 3 EXPUNGE", "* 5 EXISTS", "* 0 RECENT"],
        "expunge before exists"
    );
    let uids = b.ok("FETCH 1:* (UID)");
    assert_eq!(
        uids,
        [
            "* 1 FETCH (UID 1)",
            "* 2 FETCH (UID 2)",
            "* 3 FETCH (UID 4)",
            "* 4 FETCH (UID 5)",
            "* 5 FETCH (UID 6)"
        ]
    );

    // A non-UID FETCH must not be answered with EXPUNGE (RFC 3501 §7.4.1); the next NOOP is.
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    a.ok("EXPUNGE");
    let (during_fetch, tagged) = b.cmd("FETCH 1 (FLAGS)");
    assert!(
        during_fetch.iter().all(|l| !l.contains("EXPUNGE")),
        "{during_fetch:?}"
    );
    assert!(tagged.contains("OK [EXPUNGEISSUED]"), "{tagged}");
    assert_eq!(b.ok("NOOP"), ["* 1 EXPUNGE"]);

    // IDLE: a change in session A reaches B without B asking.
    b.send(b"idle IDLE\r\n");
    assert!(b.line().unwrap().starts_with("+ "));
    a.ok("STORE 1 +FLAGS.SILENT (\\Seen)");
    assert_eq!(
        b.line().unwrap(),
        "* 1 FETCH (UID 2 FLAGS (\\Flagged \\Answered \\Seen))"
    );
    b.send(b"DONE\r\n");
    let (_, done) = b.until("idle");
    assert!(done.starts_with("idle OK"), "{done}");
}

/// A FETCH of a message carrying a keyword another session set since is preceded by FLAGS
/// naming it (RFC 3501 §7.2.6; review: the FETCH came first).
#[test]
fn a_fetched_keyword_is_named_by_flags_first() {
    let server = Server::start();
    let mut a = server.login();
    let mut b = server.login();
    let m = "Subject: kw\r\n\r\nx\r\n";
    b.ok(&format!("APPEND INBOX {{{}}}\r\n{m}", m.len()));
    a.ok("SELECT INBOX");
    b.ok("SELECT INBOX");
    b.ok("STORE 1 +FLAGS.SILENT (newkw1)");
    for command in ["FETCH 1 (FLAGS)", "UID FETCH 1 (FLAGS)"] {
        let lines = a.ok(command);
        let fetch = lines
            .iter()
            .position(|l| l.contains(" FETCH ") && l.contains("newkw1"));
        let flags = lines
            .iter()
            .position(|l| l.starts_with("* FLAGS ") && l.contains("newkw1"));
        if command.starts_with("FETCH") {
            assert!(flags.is_some() && flags < fetch, "{command}: {lines:?}");
        } else {
            assert!(flags.is_none(), "named once: {lines:?}");
        }
    }
}

/// EXPUNGE removes the \\Deleted messages the session knows of: one another session stored
/// with \\Deleted meanwhile is announced after it and stays, as with Dovecot (review: it was
/// expunged unseen).
#[test]
fn expunge_leaves_a_deleted_message_the_session_was_not_told_of() {
    let server = Server::start();
    let mut a = server.login();
    let mut b = server.login();
    b.ok("CREATE mb");
    let m = "Subject: known\r\n\r\nx\r\n";
    b.ok(&format!("APPEND mb (\\Deleted) {{{}}}\r\n{m}", m.len()));
    a.ok("SELECT mb");
    let m = "Subject: new\r\n\r\nx\r\n";
    b.ok(&format!("APPEND mb (\\Deleted) {{{}}}\r\n{m}", m.len()));
    let untagged = a.ok("EXPUNGE");
    assert!(
        untagged.contains(&"* 1 EXPUNGE".to_string()),
        "{untagged:?}"
    );
    assert!(untagged.contains(&"* 1 EXISTS".to_string()), "{untagged:?}");
    let left = a
        .ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .join("\n");
    assert!(left.contains("Subject: new"), "{left}");
    // CLOSE (a silent EXPUNGE) too (review: it still removed such a message).
    b.ok(&format!("APPEND mb (\\Deleted) {{{}}}\r\n{m}", m.len()));
    a.ok("CLOSE");
    let status = b.ok("STATUS mb (MESSAGES)").join("\n");
    // "new", which A knew of, went; the one stored after stays.
    assert!(status.contains("MESSAGES 1"), "{status}");
}

/// Another session's flag change that a non-UID FETCH holds back (it reports nothing of other
/// sessions' but what is fetched) caps the HIGHESTMODSEQ of its tagged OK below that change,
/// as a held-back expunge does: the client may not take a MODSEQ it saw above it for its mark
/// (review: it was a plain OK, and a client resyncing from that mark never heard of the
/// change). The next command that may report it does.
#[test]
fn a_flag_change_held_back_caps_the_highestmodseq() {
    let server = Server::start();
    let mut a = server.login();
    let mut b = server.login();
    b.ok("CREATE mb");
    for i in 0..2 {
        let m = format!("Subject: m{i}\r\n\r\nx\r\n");
        b.ok(&format!("APPEND mb {{{}}}\r\n{m}", m.len()));
    }
    a.ok("SELECT mb (CONDSTORE)");
    b.ok("SELECT mb");
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)");
    b.ok("STORE 2 +FLAGS.SILENT (\\Seen)");
    let (untagged, tagged) = a.cmd("FETCH 2 (FLAGS MODSEQ)");
    let modseq_of = |line: &str| -> u64 {
        let at = line.find("MODSEQ (").unwrap() + 8;
        line[at..].split(')').next().unwrap().parse().unwrap()
    };
    let seen = untagged
        .iter()
        .find(|l| l.starts_with("* 2 FETCH"))
        .map(|l| modseq_of(l))
        .unwrap_or_else(|| panic!("{untagged:?}"));
    assert!(
        untagged.iter().all(|l| !l.starts_with("* 1 FETCH")),
        "{untagged:?}"
    );
    let highest: u64 = tagged
        .split("[HIGHESTMODSEQ ")
        .nth(1)
        .unwrap_or_else(|| panic!("no HIGHESTMODSEQ while a change is held back: {tagged}"))
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(highest < seen - 1, "{tagged} after {untagged:?}");
    let news = a.ok("NOOP");
    assert!(
        news.iter()
            .any(|l| l.starts_with("* 1 FETCH") && l.contains("\\Flagged")),
        "{news:?}"
    );
    // A's own .SILENT STORE over a message B changed meanwhile gives both one MODSEQ: the
    // next FETCH still caps below it, until A hears of B's change (review: it did not).
    b.ok("STORE 2 +FLAGS.SILENT (\\Flagged)");
    a.ok("STORE 1:2 +FLAGS.SILENT (\\Answered)");
    let (_, tagged) = a.cmd("FETCH 1 (FLAGS MODSEQ)");
    assert!(tagged.contains("[HIGHESTMODSEQ "), "{tagged}");
    let news = a.ok("NOOP");
    assert!(
        news.iter()
            .any(|l| l.starts_with("* 2 FETCH") && l.contains("\\Flagged")),
        "{news:?}"
    );
}

/// A QRESYNC SELECT while another session appends and expunges: no UID is named both in the
/// VANISHED (EARLIER) of the SELECT and in a VANISHED after it (review: one expunged between
/// the SELECT's two reads of the store was counted in EXISTS, reported as expunged earlier,
/// then expunged again; a helper's loop hit it three times in its first second).
#[test]
fn a_qresync_select_names_no_expunge_twice() {
    let server = Server::start();
    let mut a = server.login();
    let kept = "Subject: kept\r\n\r\nx\r\n";
    a.ok(&format!("APPEND INBOX {{{}+}}\r\n{kept}", kept.len()));
    a.ok("ENABLE QRESYNC");
    let first = a.ok("SELECT INBOX").join("\n");
    let uidvalidity = first
        .split("[UIDVALIDITY ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, mut b) = (stop.clone(), server.login());
        std::thread::spawn(move || {
            b.ok("SELECT INBOX");
            while !stop.load(Ordering::Relaxed) {
                let m = "Subject: churn\r\n\r\nx\r\n";
                let (_, tagged) = b.cmd(&format!("APPEND INBOX {{{}+}}\r\n{m}", m.len()));
                let uid = tagged
                    .split_whitespace()
                    .nth(4)
                    .unwrap_or_else(|| panic!("{tagged}"))
                    .trim_end_matches(']')
                    .to_string();
                b.ok(&format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"));
                b.ok(&format!("UID EXPUNGE {uid}"));
                // A keyword new to the mailbox on the message that stays, and gone again.
                b.ok(&format!("UID STORE 1 +FLAGS.SILENT (kw{uid})"));
                b.ok(&format!("UID STORE 1 -FLAGS.SILENT (kw{uid})"));
            }
        })
    };
    for _ in 0..300 {
        let lines = a.ok(&format!("SELECT INBOX (QRESYNC ({uidvalidity} 1))"));
        // No keyword in a FETCH before a FLAGS that names it (RFC 3501 §7.2.6; review: the
        // SELECT's own report, read after its view, named one first).
        let mut named = String::new();
        for line in &lines {
            if line.starts_with("* FLAGS ") {
                named = line.clone();
            } else if line.contains(" FETCH ") {
                for kw in line.split(['(', ')', ' ']).filter(|w| w.starts_with("kw")) {
                    assert!(named.contains(kw), "{kw} before FLAGS named it: {lines:?}");
                }
            }
        }
        // The (low, high) ranges of the VANISHED lines, EARLIER or live.
        let ranges = |earlier: bool| -> Vec<(u32, u32)> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("* VANISHED "))
                .filter_map(|rest| match rest.strip_prefix("(EARLIER) ") {
                    Some(set) if earlier => Some(set),
                    None if !earlier => Some(rest),
                    _ => None,
                })
                .flat_map(|set| set.split(','))
                .map(|r| {
                    let (lo, hi) = r.split_once(':').unwrap_or((r, r));
                    let (lo, hi): (u32, u32) = (lo.parse().unwrap(), hi.parse().unwrap());
                    (lo.min(hi), lo.max(hi))
                })
                .collect()
        };
        for (lo, hi) in ranges(false) {
            assert!(
                ranges(true).iter().all(|&(l, h)| hi < l || h < lo),
                "{lo}:{hi} named twice: {lines:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
}

/// Several sessions on one mailbox: EXAMINE shows \Recent without taking it from the next
/// SELECT (RFC 3501 §6.3.2); a QRESYNC session that must hold an expunge back says how far
/// its MODSEQs may be trusted (RFC 7162 §3.2.10); an IDLE session hears at once that its
/// mailbox was deleted.
#[test]
fn sessions_see_recent_held_expunges_and_a_deleted_mailbox() {
    let server = Server::start();
    let mut a = server.login();
    let mut c = server.login();
    c.ok("CREATE mb");
    for i in 0..4 {
        let m = format!("Subject: m{i}\r\n\r\nx\r\n");
        c.ok(&format!("APPEND mb {{{}}}\r\n{m}", m.len()));
    }
    let mut e = server.login();
    let examined = e.ok("EXAMINE mb");
    assert!(examined.contains(&"* 4 RECENT".to_string()));
    assert!(e.ok("FETCH 4 (FLAGS)")[0].contains("\\Recent"));
    e.ok("CLOSE");
    // So do the FETCHes of a QRESYNC EXAMINE, as the later ones (RFC 7162 §3.2.5.1: the
    // current flags; review: the same MODSEQ came with two FLAGS lists).
    let uidvalidity = examined
        .iter()
        .find_map(|l| l.split("[UIDVALIDITY ").nth(1))
        .and_then(|r| r.split(']').next())
        .unwrap()
        .to_string();
    e.ok("ENABLE QRESYNC");
    let reported = e.ok(&format!("EXAMINE mb (QRESYNC ({uidvalidity} 1))"));
    let fetches: Vec<&String> = reported.iter().filter(|l| l.contains(" FETCH ")).collect();
    assert_eq!(fetches.len(), 4, "{reported:?}");
    assert!(
        fetches.iter().all(|l| l.contains("\\Recent")),
        "{reported:?}"
    );
    e.ok("CLOSE");
    assert!(a.ok("SELECT mb").contains(&"* 4 RECENT".to_string()));

    // Held back: C expunges message 3 while A, with QRESYNC, stores on message 1.
    let mut q = server.login();
    q.ok("ENABLE QRESYNC");
    q.ok("SELECT mb");
    c.ok("SELECT mb");
    c.ok("STORE 3 +FLAGS.SILENT (\\Deleted)");
    c.ok("EXPUNGE");
    let (untagged, tagged) = q.cmd("STORE 1 +FLAGS (\\Seen)");
    assert!(
        untagged.iter().all(|l| !l.contains("VANISHED")),
        "{untagged:?}"
    );
    let modseq = |line: &str| -> u64 {
        let at = line.find("MODSEQ (").unwrap() + 8;
        line[at..].split(')').next().unwrap().parse().unwrap()
    };
    let stored = modseq(&untagged[0]);
    // With QRESYNC a non-UID STORE's FETCH names the UID too (RFC 7162 §3.2.4).
    assert!(untagged[0].contains(" UID 1"), "{untagged:?}");
    let highest: u64 = tagged
        .split("[HIGHESTMODSEQ ")
        .nth(1)
        .unwrap_or_else(|| panic!("no HIGHESTMODSEQ while an expunge is held back: {tagged}"))
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(highest < stored, "{tagged} after {untagged:?}");
    // Where the tagged OK has a code of its own, the mark comes in an untagged OK.
    let (untagged, tagged) = q.cmd("FETCH 3 (FLAGS)");
    assert!(tagged.contains("[EXPUNGEISSUED]"), "{tagged}");
    assert!(
        untagged.contains(&format!(
            "* OK [HIGHESTMODSEQ {highest}] Some changes are not reported yet"
        )),
        "{untagged:?}"
    );
    // So does a STORE on it, which no flag can reach any more; with UNCHANGEDSINCE failing
    // for another message, the tagged OK says MODIFIED and an untagged one the expunge.
    let (_, tagged) = q.cmd("STORE 3 +FLAGS (\\Flagged)");
    assert!(tagged.contains("OK [EXPUNGEISSUED]"), "{tagged}");
    let (untagged, tagged) = q.cmd("STORE 1,3 (UNCHANGEDSINCE 1) +FLAGS (\\Answered)");
    assert!(tagged.contains("OK [MODIFIED 1]"), "{tagged}");
    assert!(
        untagged
            .iter()
            .any(|l| l.starts_with("* OK [EXPUNGEISSUED]")),
        "{untagged:?}"
    );
    assert_eq!(q.ok("NOOP"), ["* VANISHED 3"]);

    // IDLE in a mailbox another session deletes.
    a.send(b"idle IDLE\r\n");
    assert!(a.line().unwrap().starts_with("+ "));
    c.ok("CLOSE");
    q.ok("CLOSE");
    c.ok("DELETE mb");
    let mut heard = Vec::new();
    while let Some(line) = a.line() {
        let bye = line.starts_with("* BYE");
        heard.push(line);
        if bye || heard.len() > 5 {
            break;
        }
    }
    assert!(heard.last().unwrap().starts_with("* BYE"), "{heard:?}");
}

#[test]
fn starttls_discards_commands_pipelined_in_plaintext() {
    let server = Server::start();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", server.starttls_port)).unwrap();
    let mut plain = Raw::wrap(tcp.try_clone().unwrap());
    assert!(plain.line().unwrap().starts_with("* OK"));
    // STARTTLS and a LOGIN in the same packet: the LOGIN must never run.
    plain.send(format!("s STARTTLS\r\np LOGIN {USER} \"{PASSWORD}\"\r\n").as_bytes());
    let (_, tagged) = plain.until("s");
    assert!(tagged.starts_with("s OK"), "{tagged}");
    drop(plain);
    let mut tls = Raw::wrap(tls_connect(tcp, &server.cert()));
    let (untagged, tagged) = tls.cmd("CAPABILITY");
    assert!(tagged.contains("OK"), "{tagged}");
    assert!(
        untagged[0].contains("AUTH=PLAIN") && !untagged[0].contains("STARTTLS"),
        "{untagged:?}"
    );
    let (untagged, tagged) = tls.cmd("SELECT INBOX");
    assert!(
        tagged.contains("BAD"),
        "still not logged in: {tagged} {untagged:?}"
    );
    assert!(untagged.iter().all(|l| !l.starts_with("p ")));
    tls.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
}

#[test]
fn a_tls_client_of_another_protocol_is_refused() {
    // ALPACA: a client that names its application protocol (ALPN) must name IMAP.
    let server = Server::start();
    let handshake = |port: u16, protocols: &[&[u8]]| {
        let mut config = (*tls_client(&server.cert())).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut greeting = [0u8; 4];
        let read = std::io::Read::read_exact(&mut tls, &mut greeting);
        (read, tls.conn.alpn_protocol().map(<[u8]>::to_vec))
    };
    let (read, chosen) = handshake(server.tls_port, &[b"h2", b"http/1.1"]);
    let error = read.expect_err("an HTTP client got an IMAP greeting");
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "{error}"
    );
    assert_eq!(chosen, None);
    let (read, chosen) = handshake(server.tls_port, &[b"h2", b"imap"]);
    read.unwrap();
    assert_eq!(chosen.as_deref(), Some(&b"imap"[..]));
    // After STARTTLS the same holds.
    let tcp = std::net::TcpStream::connect(("127.0.0.1", server.starttls_port)).unwrap();
    let mut plain = Raw::wrap(tcp.try_clone().unwrap());
    assert!(plain.line().unwrap().starts_with("* OK"));
    plain.send(b"s STARTTLS\r\n");
    let (_, tagged) = plain.until("s");
    assert!(tagged.starts_with("s OK"), "{tagged}");
    let mut config = (*tls_client(&server.cert())).clone();
    config.alpn_protocols = vec![b"smtp".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let error = std::io::Write::write_all(&mut tls, b"a NOOP\r\n")
        .and_then(|()| std::io::Write::flush(&mut tls))
        .and_then(|()| std::io::Read::read(&mut tls, &mut [0u8; 16]))
        .expect_err("an SMTP client was served after STARTTLS");
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "{error}"
    );
}

#[test]
fn plaintext_login_is_refused_off_loopback_policy() {
    // The implicit-TLS listener always allows LOGIN; the plaintext one only because the test
    // configuration allows loopback. With TLS, LOGINDISABLED never shows.
    let server = Server::start();
    let raw = server.raw();
    assert!(raw.greeting.starts_with("* OK"));
    let tcp = std::net::TcpStream::connect(("127.0.0.1", server.tls_port)).unwrap();
    let mut tls = Raw::wrap(tls_connect(tcp, &server.cert()));
    assert!(tls.line().unwrap().starts_with("* OK"));
    let (caps, _) = tls.cmd("CAPABILITY");
    assert!(caps[0].contains("AUTH=PLAIN") && !caps[0].contains("LOGINDISABLED"));
    let (_, tagged) = tls.cmd(&format!(
        "AUTHENTICATE PLAIN {}",
        sasl_plain(USER, PASSWORD)
    ));
    assert!(tagged.contains("OK"), "SASL-IR login: {tagged}");
}

fn sasl_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn oversized_literals_get_no_continuation_and_memory_stays_bounded() {
    let server = Server::start();
    let mut raw = server.login();
    // Synchronising: refused before the client may send it; the session goes on.
    raw.send(b"big APPEND INBOX {50000000}\r\n");
    let reply = raw.line().unwrap();
    assert!(reply.starts_with("big NO [TOOBIG]"), "{reply}");
    raw.ok("NOOP");
    // Outside APPEND the literal limit is small.
    raw.send(b"sel SELECT {5000}\r\n");
    assert!(raw.line().unwrap().starts_with("sel NO [TOOBIG]"));
    // Non-synchronising: the client sends regardless; the server says BYE and closes rather
    // than buffering.
    let before = rss_kib(server.pid());
    raw.send(b"nb APPEND INBOX {50000000+}\r\n");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < 50 {
        if raw.stream.get_mut().write_all_checked(&chunk).is_err() {
            break;
        }
        sent += 1;
    }
    let bye = raw.line().unwrap_or_default();
    assert!(bye.starts_with("* BYE [TOOBIG]"), "{bye}");
    let after = rss_kib(server.pid());
    assert!(
        after < before + 20 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

trait WriteChecked {
    fn write_all_checked(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl WriteChecked for std::net::TcpStream {
    fn write_all_checked(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.write_all(bytes)
    }
}

/// At `level = "trace"` the IMAP libraries' transcripts (LOGIN with its password, APPEND's
/// message text) stay out of the log; sealpost's own debug lines are there (review: the
/// password and the message were logged).
#[test]
fn a_trace_log_holds_no_password_and_no_message() {
    let server = Server::start_config("", "[log]\nlevel = \"trace\"\n");
    let mut raw = server.login();
    let message = "Subject: s\r\n\r\nbody word Zebra-7731\r\n";
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    raw.ok("SELECT INBOX");
    raw.ok("FETCH 1 BODY[]");
    raw.ok("LOGOUT");
    let log = server.log();
    assert!(log.contains("DEBUG") || log.contains("TRACE"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    assert!(!log.contains("Zebra-7731"), "{log}");
}

#[test]
fn bad_logins_are_slowed_alike_and_cut_off() {
    let server = Server::start();
    let mut raw = server.raw();
    let started = Instant::now();
    let (_, wrong_password) = raw.cmd(&format!("LOGIN {USER} wrong"));
    assert!(
        started.elapsed() >= Duration::from_millis(AUTH_DELAY_MS),
        "failed login answered at once"
    );
    // A password typed into the name field (the two swapped) is not logged; an account's
    // name is (review: the name was logged as given).
    let (_, unknown_user) = raw.cmd("LOGIN Secret-Kilo42 mallory");
    let log = server.log();
    assert!(!log.contains("Secret-Kilo42"), "{log}");
    assert!(log.contains("no such account: 13 characters"), "{log}");
    assert!(log.contains(&format!("user=\"{USER}\"")), "{log}");
    let text = |line: &str| line.split_once(' ').unwrap().1.to_owned();
    assert_eq!(
        text(&wrong_password),
        text(&unknown_user),
        "unknown users look like bad passwords"
    );
    assert!(wrong_password.contains("NO [AUTHENTICATIONFAILED]"));
    let (untagged, third) = raw.cmd(&format!("LOGIN {USER} wrong"));
    assert!(
        untagged.iter().any(|l| l.starts_with("* BYE")),
        "{untagged:?} {third}"
    );
    assert_eq!(
        raw.line(),
        None,
        "connection closed after too many failures"
    );

    // Garbage before login is cut off too.
    let mut raw = server.raw();
    // One write: sent one by one, a command written after the server hung up failed the
    // test with a broken pipe (seen once in a full run).
    let garbage: String = (0..10).map(|i| format!("g{i} FROBNICATE\r\n")).collect();
    raw.send(garbage.as_bytes());
    let mut lines = Vec::new();
    while let Some(line) = raw.line() {
        lines.push(line);
    }
    assert!(lines.iter().any(|l| l.starts_with("* BYE")), "{lines:?}");
    assert!(lines.len() < 10, "{lines:?}");
}

/// Failures count per address across connections: after two failed logins from 127.0.0.1,
/// a new connection's login (even the right password) waits twice the failure delay before
/// it is checked, so that many connections at once cannot guess many times a second.
#[test]
fn failed_logins_slow_the_next_connection_from_that_address() {
    let server = Server::start();
    let mut guessing = server.raw();
    for _ in 0..2 {
        let (_, tagged) = guessing.cmd(&format!("LOGIN {USER} wrong"));
        assert!(tagged.contains("NO [AUTHENTICATIONFAILED]"), "{tagged}");
    }
    let mut next = server.raw();
    let started = Instant::now();
    next.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
    assert!(
        started.elapsed() >= Duration::from_millis(2 * AUTH_DELAY_MS),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn mailbox_names_are_checked() {
    let server = Server::start();
    let mut raw = server.login();
    for bad in [
        "\"../etc\"",
        "\"a//b\"",
        "\"&AGE-\"",
        "\"a/./b\"",
        "\"&APw\"",
    ] {
        let (_, tagged) = raw.cmd(&format!("CREATE {bad}"));
        assert!(tagged.contains(" NO "), "{bad}: {tagged}");
    }
    // "Café" spelled with U+0301 (NFD) and with é (NFC) is one mailbox, listed in NFC.
    raw.ok("CREATE \"Cafe&AwE-\"");
    let (_, tagged) = raw.cmd("CREATE \"Caf&AOk-\"");
    assert!(tagged.contains("NO [ALREADYEXISTS]"), "{tagged}");
    assert_eq!(
        raw.ok("LIST \"\" \"Caf*\""),
        ["* LIST (\\HasNoChildren) \"/\" \"Caf&AOk-\""]
    );
    raw.ok("SELECT \"Cafe&AwE-\"");
    raw.ok("CREATE \"Entw&APw-rfe/2026\"");
    let list = raw.ok("LIST \"\" \"Entw*\"");
    assert_eq!(
        list,
        [
            "* LIST (\\HasChildren) \"/\" \"Entw&APw-rfe\"",
            "* LIST (\\HasNoChildren) \"/\" \"Entw&APw-rfe/2026\""
        ]
    );
    let special = raw.ok("LIST (SPECIAL-USE) \"\" \"*\" RETURN (SUBSCRIBED STATUS (MESSAGES))");
    assert!(
        special
            .iter()
            .any(|l| l.contains("\\Sent") && l.contains("\\Subscribed")),
        "{special:?}"
    );
    assert!(
        special
            .iter()
            .any(|l| l.starts_with("* STATUS \"Sent\" (MESSAGES 0)")),
        "{special:?}"
    );
    // LIST-EXTENDED with a mailbox pattern sent as a synchronising literal (RFC 3501 §4.3).
    raw.send(b"l1 LIST (SPECIAL-USE) \"\" {4}\r\n");
    assert_eq!(raw.line().unwrap().split(' ').next(), Some("+"));
    raw.send(b"Sent RETURN (SUBSCRIBED)\r\n");
    let (untagged, tagged) = raw.until("l1");
    assert!(tagged.starts_with("l1 OK"), "{tagged}");
    assert_eq!(
        untagged,
        ["* LIST (\\HasNoChildren \\Sent \\Subscribed) \"/\" \"Sent\""]
    );
}

#[test]
fn kill_during_append_and_expunge_loses_nothing_acknowledged() {
    let mut server = Server::start();
    let mut raw = server.login();
    let mut acked = Vec::new();
    let body = "x".repeat(200_000);
    for i in 0..40 {
        let message = format!("Subject: crash {i}\r\n\r\n{body}\r\n");
        raw.send(format!("c{i} APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()).as_bytes());
        if i == 20 {
            // Killed while APPENDs are in flight.
            server.kill9();
            break;
        }
        let (_, tagged) = raw.until(&format!("c{i}"));
        acked.push(appended_uid(&tagged));
    }
    server.spawn();
    let mut raw = server.login();
    raw.ok("SELECT INBOX");
    let fetched = raw.ok("UID FETCH 1:* (UID)");
    let present: Vec<u32> = fetched
        .iter()
        .map(|l| {
            l.split("UID ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')')
                .parse()
                .unwrap()
        })
        .collect();
    for uid in &acked {
        assert!(present.contains(uid), "acknowledged UID {uid} lost");
    }
    let (_, tagged) = raw.cmd("APPEND INBOX {11}\r\nSubject: ok");
    let new_uid = appended_uid(&tagged);
    assert!(present.iter().all(|u| *u < new_uid), "UID {new_uid} reused");

    // EXPUNGE is one transaction: after a kill it happened wholly or not at all.
    raw.ok("SELECT INBOX");
    raw.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)");
    raw.send(b"x EXPUNGE\r\n");
    server.kill9();
    server.spawn();
    let mut raw = server.login();
    let status = raw.ok("STATUS INBOX (MESSAGES)");
    let count = present.len() + 1;
    assert!(
        status[0].contains("(MESSAGES 0)") || status[0].contains(&format!("(MESSAGES {count})")),
        "{status:?}"
    );
    let store = sealpost::store::Store::open(&server.store_path()).unwrap();
    assert!(store.integrity_check().unwrap().is_empty());
}

/// The UID in "tag OK [APPENDUID <uidvalidity> <uid>] ...".
fn appended_uid(tagged: &str) -> u32 {
    let code = tagged
        .split("[APPENDUID ")
        .nth(1)
        .unwrap_or_else(|| panic!("no APPENDUID: {tagged}"));
    code.split([' ', ']']).nth(1).unwrap().parse().unwrap()
}

/// The MODSEQ in a FETCH line: "... MODSEQ (n) ...".
fn modseq_of(line: &str) -> u64 {
    let at = line.find("MODSEQ (").expect("MODSEQ") + "MODSEQ (".len();
    line[at..].split(')').next().unwrap().parse().unwrap()
}

#[test]
fn condstore_and_qresync_over_imap() {
    let server = Server::start();
    let mut a = server.login();
    for i in 1..=3 {
        let message = format!("Subject: m{i}\r\n\r\nbody\r\n");
        a.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    }
    let select = a.ok("SELECT INBOX (CONDSTORE)");
    let highest: u64 = select
        .iter()
        .find_map(|l| l.strip_prefix("* OK [HIGHESTMODSEQ "))
        .and_then(|l| l.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("HIGHESTMODSEQ in {select:?}"));
    let before = a.ok("FETCH 2 (MODSEQ)");
    let m2 = modseq_of(&before[0]);

    // RFC 7162 §3.1.3: a message changed since UNCHANGEDSINCE is left alone and reported.
    let (untagged, tagged) = a.cmd(&format!(
        "STORE 2 (UNCHANGEDSINCE {}) +FLAGS (\\Flagged)",
        m2 - 1
    ));
    assert!(tagged.contains("OK [MODIFIED 2]"), "{tagged} {untagged:?}");
    let stored = a.ok(&format!("STORE 2 (UNCHANGEDSINCE {m2}) +FLAGS (\\Flagged)"));
    assert!(
        stored[0].contains("\\Flagged") && modseq_of(&stored[0]) > m2,
        "{stored:?}"
    );
    // CONDSTORE is on (SELECT ... (CONDSTORE)): a STORE's FETCH responses name the UID
    // (RFC 7162 §3.2.4; review: only with QRESYNC on).
    assert!(
        stored[0].starts_with("* 2 FETCH (") && stored[0].contains(" UID 2 "),
        "{stored:?}"
    );
    // .SILENT with UNCHANGEDSINCE still reports the new MODSEQ (§3.1.3).
    let m2 = modseq_of(&stored[0]);
    let silent = a.ok(&format!(
        "UID STORE 2 (UNCHANGEDSINCE {m2}) +FLAGS.SILENT (\\Seen)"
    ));
    assert!(
        silent.len() == 1 && modseq_of(&silent[0]) > m2,
        "{silent:?}"
    );
    a.ok("STORE 3 +FLAGS.SILENT (\\Deleted)");
    a.ok("EXPUNGE");

    // CHANGEDSINCE: only what changed after the client's HIGHESTMODSEQ.
    let changed = a.ok(&format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"));
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].starts_with("* 2 FETCH (UID 2 ") && changed[0].contains("\\Flagged"));

    // QRESYNC: a client that saw UIDs 1:3 at `highest` learns of the expunge and the flag
    // change in the SELECT itself.
    let uidvalidity: u32 = select
        .iter()
        .find_map(|l| l.strip_prefix("* OK [UIDVALIDITY "))
        .and_then(|l| l.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let mut b = server.login();
    assert_eq!(b.ok("ENABLE QRESYNC"), ["* ENABLED QRESYNC"]);
    let resync = b.ok(&format!(
        "SELECT INBOX (QRESYNC ({uidvalidity} {highest} 1:3))"
    ));
    assert!(
        resync.contains(&"* VANISHED (EARLIER) 3".to_owned()),
        "{resync:?}"
    );
    let fetches: Vec<&String> = resync.iter().filter(|l| l.contains(" FETCH ")).collect();
    assert_eq!(fetches.len(), 1, "{resync:?}");
    assert!(
        fetches[0].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen) MODSEQ ("),
        "{fetches:?}"
    );
    // A client that names only UID 1 as known hears of no other message's change or expunge
    // (§3.2.5.1; review: UID 2's flags came too).
    let mut c = server.login();
    c.ok("ENABLE QRESYNC");
    let known_one = c.ok(&format!(
        "SELECT INBOX (QRESYNC ({uidvalidity} {highest} 1))"
    ));
    assert!(
        !known_one
            .iter()
            .any(|l| l.contains(" FETCH ") || l.contains("VANISHED")),
        "{known_one:?}"
    );
    // With QRESYNC on, a SELECT that replaces a selected mailbox says so first (§3.2.11).
    let again = b.ok("EXAMINE INBOX");
    assert_eq!(
        again[0], "* OK [CLOSED] Previous mailbox closed",
        "{again:?}"
    );
    b.ok("SELECT INBOX");
    // So does it for a client that did not enable QRESYNC, as Dovecot does.
    let plain = a.ok("SELECT INBOX");
    assert_eq!(
        plain[0], "* OK [CLOSED] Previous mailbox closed",
        "{plain:?}"
    );
    // CHANGEDSINCE 0, which RFC 7162's grammar lacks and iPhone Mail sends: every message,
    // each with its MODSEQ; with VANISHED, every expunge known (Dovecot takes it too).
    let all = b.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0 VANISHED)");
    assert_eq!(all[0], "* VANISHED (EARLIER) 3", "{all:?}");
    let fetched: Vec<&String> = all.iter().filter(|l| l.contains(" FETCH ")).collect();
    assert_eq!(fetched.len(), 2, "{all:?}");
    assert!(fetched.iter().all(|l| l.contains(" MODSEQ (")), "{all:?}");
    assert_eq!(b.ok("FETCH 1:* (UID) (changedsince 00)").len(), 2);
    // Any other value is still checked: a modifier that is not a number is BAD.
    let (_, tagged) = b.cmd("FETCH 1:* (UID) (CHANGEDSINCE 0x)");
    assert!(tagged.contains(" BAD "), "{tagged}");
    // Expunges seen later arrive as VANISHED, not EXPUNGE, once QRESYNC is on.
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)");
    a.ok("EXPUNGE");
    assert!(b.ok("NOOP").contains(&"* VANISHED 1".to_owned()));

    // CHANGEDSINCE turns CONDSTORE on: the session is told the HIGHESTMODSEQ once (RFC 7162
    // §3.1), and each response carries MODSEQ even without FLAGS (§3.1.4.1).
    let mut c = server.login();
    c.ok("SELECT INBOX");
    let changed = c.ok("UID FETCH 1:* (UID) (CHANGEDSINCE 1)");
    assert!(
        changed
            .iter()
            .any(|l| l.starts_with("* OK [HIGHESTMODSEQ ")),
        "{changed:?}"
    );
    let fetched: Vec<&String> = changed.iter().filter(|l| l.contains(" FETCH ")).collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|l| l.contains(" MODSEQ (")),
        "{changed:?}"
    );
    assert!(!c
        .ok("ENABLE CONDSTORE")
        .iter()
        .any(|l| l.contains("HIGHESTMODSEQ")));
    // Nothing to enable: "* ENABLED" with no trailing blank (RFC 5161 §4).
    assert_eq!(c.ok("ENABLE UTF8=ACCEPT"), ["* ENABLED"]);
    let mut d = server.login();
    d.ok("SELECT INBOX");
    let enabled = d.ok("ENABLE CONDSTORE");
    assert!(
        enabled
            .iter()
            .any(|l| l.starts_with("* OK [HIGHESTMODSEQ ")),
        "{enabled:?}"
    );
}

#[test]
fn connections_beyond_the_limit_are_told_to_come_back() {
    let server = Server::start_with("max_connections = 2");
    let _a = server.login();
    let _b = server.login();
    let refused = Raw::connect(server.starttls_port);
    assert!(
        refused.greeting.starts_with("* BYE [UNAVAILABLE]"),
        "{}",
        refused.greeting
    );
    drop(_a);
    // The slot frees when a session ends; the server notices the close on its own.
    slot_frees(&server, "after a session ended");
}

/// Waits (up to 30 s) until a new connection gets the greeting, not BYE: the one slot is free.
/// Returns that connection, which now holds the slot (the server sees a close only later).
fn slot_frees(server: &Server, what: &str) -> Raw<std::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = Raw::connect(server.starttls_port);
        if next.greeting.starts_with("* OK") {
            return next;
        }
        assert!(Instant::now() < deadline, "slot never freed: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Slots are not held for good: a client that keeps busy without logging in is logged out
/// `login_timeout_secs` after it came, NOOPs or not; one that sends commands but reads none
/// of the answers is cut off once a write has waited `write_timeout_secs`.
#[test]
fn clients_that_never_log_in_or_never_read_give_their_slot_back() {
    use std::io::{BufRead, Write};
    let server = Server::start_limits(
        "max_connections = 1",
        "login_timeout_secs = 2\nwrite_timeout_secs = 1",
        "",
    );
    let mut busy = server.raw();
    let started = Instant::now();
    let mut n = 0;
    let bye = 'noop: loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never logged out"
        );
        n += 1;
        let stream = busy.stream.get_mut();
        stream
            .write_all(format!("n{n} NOOP\r\n").as_bytes())
            .unwrap();
        loop {
            let mut line = String::new();
            busy.stream.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "closed without BYE");
            if line.starts_with("* BYE") {
                break 'noop line;
            }
            if line.starts_with(&format!("n{n} ")) {
                break;
            }
        }
    };
    assert!(bye.contains("not logged in"), "{bye}");
    drop(busy);
    // A TLS handshake never made counts against the same time (review: 30 s more on the
    // TLS port, and after a STARTTLS): the server hangs up, well before those 30 s.
    let hangs_up = |mut stream: std::net::TcpStream, what: &str| {
        use std::io::Read;
        let started = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: held {:?}",
            started.elapsed()
        );
    };
    let silent = std::net::TcpStream::connect(("127.0.0.1", server.tls_port)).unwrap();
    hangs_up(silent, "no TLS handshake on the TLS port");
    let mut plain = slot_frees(&server, "after the silent TLS client");
    plain.stream.get_mut().write_all(b"s STARTTLS\r\n").unwrap();
    let mut ok = String::new();
    plain.stream.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("s OK"), "{ok}");
    hangs_up(
        plain.stream.get_ref().try_clone().unwrap(),
        "no TLS handshake after STARTTLS",
    );
    drop(plain);
    let mut reader = slot_frees(&server, "after the login timeout");
    reader.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
    let body = format!("{}\r\n", "x".repeat(78)).repeat(6000);
    let message = format!("Subject: big\r\n\r\n{body}");
    reader.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    reader.ok("SELECT INBOX");
    // 100 MB of answers, none of them read.
    let stream = reader.stream.get_mut();
    stream
        .write_all("f FETCH 1 BODY[]\r\n".repeat(200).as_bytes())
        .unwrap();
    slot_frees(&server, "after the write timeout");
}

/// A slow reader is no reader that stopped: a client that takes a big answer at 40 KB/s
/// through a small receive buffer gets all of it with `write_timeout_secs = 1` (the kernel
/// lets the server write on only in bursts, as half its buffer drains).
#[test]
fn a_slow_reader_gets_its_whole_answer() {
    let server = Server::start_limits("", "write_timeout_secs = 2", "");
    let mut raw = server.login();
    let body = format!("{}\r\n", "z".repeat(78)).repeat(2500);
    let message = format!("Subject: slow\r\n\r\n{body}");
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    drop(raw);
    let script = format!(
        r#"
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", {port}))
s.sendall(b'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n')
got = b""
while b"\r\nc OK" not in got:
    data = s.recv(2000)
    if not data:
        break
    got += data
    time.sleep(len(data) / 40000)
print("complete" if b"\r\nc OK" in got else "cut off after %d bytes" % len(got))
"#,
        port = server.starttls_port
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "complete",
        "{out:?}"
    );
}

/// A message larger than the connection's buffer: its bytes are passed on from the store
/// rather than copied into the response. Whole, its text, one part and a partial range come
/// back byte for byte, over plaintext, STARTTLS and implicit TLS.
#[test]
fn large_messages_and_their_sections_come_back_byte_for_byte() {
    let server = Server::start();
    // Varied bytes (no run repeats), more than 64 KiB in the attachment part alone.
    let attachment: String = (0..6000u32)
        .map(|i| {
            format!(
                "{:076x}\r\n",
                u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )
        })
        .collect();
    let message = format!(
        "From: a@example.org\r\nSubject: large\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}--b--\r\n"
    );
    let raw = message.as_bytes();
    sealpost_client(&server, &json!([append_bytes("INBOX", raw)]));
    let text_at = common::find(raw, b"\r\n\r\n").unwrap() + 4;
    let part_at = common::find(raw, attachment.as_bytes()).unwrap();
    let expected: [(&str, &[u8]); 4] = [
        ("BODY[]", raw),
        ("BODY[TEXT]", &raw[text_at..]),
        // The CRLF before the closing delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        ("BODY[2]", &raw[part_at..part_at + attachment.len() - 2]),
        ("BODY[]<100>", &raw[100..100 + 200_000]),
    ];
    let line = "FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT] BODY.PEEK[2] BODY.PEEK[]<100.200000>)";
    for tls in [
        Tls::None,
        Tls::Starttls(server.cert()),
        Tls::Implicit(server.cert()),
    ] {
        let port = match tls {
            Tls::Implicit(_) => server.tls_port,
            _ => server.starttls_port,
        };
        let out = run_client(
            port,
            USER,
            PASSWORD,
            tls,
            &json!([{"cmd": "examine", "mailbox": "INBOX"}, {"cmd": "raw", "line": line}]),
        );
        let step = ok_step(&out, 1);
        let data = step["untagged"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|u| {
                u["data"]
                    .as_array()
                    .filter(|d| d.get(1) == Some(&json!("FETCH")))
            })
            .expect("a FETCH response")[2]
            .as_array()
            .unwrap()
            .clone();
        for (name, bytes) in expected {
            let at = data.iter().position(|t| t == name).expect(name);
            let served: Vec<u8> = data[at + 1]
                .as_str()
                .unwrap()
                .chars()
                .map(|c| c as u8)
                .collect();
            assert!(served == bytes, "{name}: {} bytes served", served.len());
        }
    }
}

/// DELETE of the mailbox this session has selected is refused by what the mailbox is, not by
/// the name it had at SELECT (review: after another session renamed it, DELETE of the old
/// name got INUSE, and of the new one OK and then this session's BYE); UNSUBSCRIBE after
/// DELETE is OK, as clients send it (review: NO [NONEXISTENT]).
#[test]
fn delete_knows_the_selected_mailbox_by_what_it_is_and_unsubscribe_after_it_is_ok() {
    let server = common::server::Server::start();
    let mut a = server.login();
    let mut b = server.login();
    a.ok("CREATE RnA");
    a.ok("SELECT RnA");
    b.ok("RENAME RnA RnB");
    let (_, tagged) = a.cmd("DELETE RnA");
    assert!(tagged.contains("NO [NONEXISTENT]"), "{tagged}");
    let (_, tagged) = a.cmd("DELETE RnB");
    assert!(tagged.contains("NO [INUSE]"), "{tagged}");
    a.ok("CLOSE");
    a.ok("SUBSCRIBE RnB");
    a.ok("DELETE RnB");
    a.ok("UNSUBSCRIBE RnB");
    let (_, tagged) = a.cmd("SUBSCRIBE RnB");
    assert!(tagged.contains("NO [NONEXISTENT]"), "{tagged}");
}

/// A mailbox deleted while another session has it selected: a mailbox created next never
/// takes its place (the session would act on the new one's messages), and that session is
/// told and disconnected after its next command that may report changes, as Dovecot does.
#[test]
fn a_session_on_a_deleted_mailbox_never_reaches_the_next_one() {
    let server = common::server::Server::start();
    let mut a = server.login();
    let mut b = server.login();
    a.ok("CREATE Projects");
    b.ok("SELECT Projects");
    a.ok("DELETE Projects");
    a.ok("CREATE Receipts");
    let receipt = "Subject: receipt-1\r\n\r\nkeep me\r\n";
    a.ok(&format!(
        "APPEND Receipts {{{}+}}\r\n{receipt}",
        receipt.len()
    ));
    let (untagged, tagged) = b.cmd("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])");
    assert!(
        !untagged.iter().any(|l| l.contains("receipt-1")),
        "{untagged:?} {tagged}"
    );
    let bye = b.line().unwrap_or_default();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert!(b.line().is_none(), "disconnected");
    let status = a.ok("STATUS Receipts (MESSAGES)").join("\n");
    assert!(status.contains("MESSAGES 1"), "{status}");
}

/// IDLE before login is refused (RFC 2177), and the connection still logs in; a command sent
/// in place of DONE ends IDLE with BAD and is not run, and the connection goes on, as with
/// Dovecot (it ended with BYE: imap-next waits for DONE and takes nothing else). DONE in any
/// case, with blanks around it, ends IDLE as DONE.
#[test]
fn idle_before_login_and_a_command_instead_of_done() {
    let server = Server::start();
    let mut raw = server.raw();
    let (_, tagged) = raw.cmd("IDLE");
    assert!(tagged.contains(" BAD "), "{tagged}");
    raw.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
    raw.ok("SELECT INBOX");
    raw.send(b"i1 IDLE\r\n");
    let go_ahead = raw.line().unwrap_or_default();
    assert!(go_ahead.starts_with("+ "), "{go_ahead}");
    raw.send(b"x1 LOGOUT\r\n");
    let (_, tagged) = raw.until("i1");
    assert_eq!(tagged, "i1 BAD Expected DONE");
    // LOGOUT was not run: the connection takes commands.
    raw.ok("NOOP");
    raw.send(b"i2 IDLE\r\n");
    let go_ahead = raw.line().unwrap_or_default();
    assert!(go_ahead.starts_with("+ "), "{go_ahead}");
    raw.send(b" done \r\n");
    let (_, tagged) = raw.until("i2");
    assert!(tagged.starts_with("i2 OK"), "{tagged}");
    raw.ok("NOOP");
}

/// SIGTERM with a client in IDLE: the client hears BYE at once (RFC 3501 §7.1.5), as a client
/// between commands does, and the server exits (review: the IDLE client was cut off 10 s
/// later without a word, and the old server kept its port meanwhile).
#[test]
fn stopping_the_server_says_bye_to_an_idle_client() {
    let mut server = Server::start();
    let mut raw = server.login();
    raw.ok("SELECT INBOX");
    raw.send(b"i1 IDLE\r\n");
    let go_ahead = raw.line().unwrap_or_default();
    assert!(go_ahead.starts_with("+ "), "{go_ahead}");
    let mut other = server.login();
    let _ = std::process::Command::new("kill")
        .arg(server.pid().to_string())
        .status();
    let bye = raw.line().unwrap_or_default();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert!(raw.line().is_none(), "disconnected");
    let bye = other.line().unwrap_or_default();
    assert!(bye.starts_with("* BYE"), "{bye}");
    server.wait();
}

/// SEARCH HEADER looks at the field's text (RFC 3501 §6.4.4): a Message-ID with its angle
/// brackets, as clients look a message up by it, and a Content-Type parameter.
#[test]
fn search_header_matches_the_text_as_written() {
    let server = Server::start();
    let mut raw = server.login();
    let message = "Message-ID: <m3@example.org>\r\nSubject: looked up\r\n\
                   Content-Type: multipart/mixed; boundary=\"xyz\"\r\n\r\n--xyz\r\n\r\nhi\r\n--xyz--\r\n";
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    raw.ok("SELECT INBOX");
    for (query, hit) in [
        ("HEADER Message-ID \"<m3@example.org>\"", true),
        ("HEADER Message-ID \"m3@example.org\"", true),
        ("HEADER Message-ID \"<m4@example.org>\"", false),
        ("HEADER Content-Type \"boundary\"", true),
        ("HEADER Subject \"looked up\"", true),
    ] {
        let lines = raw.ok(&format!("UID SEARCH {query}")).join("\n");
        assert_eq!(lines.contains("* SEARCH 1"), hit, "{query}: {lines}");
    }
}

/// COPY of a message another session expunged meanwhile copies nothing: NO [EXPUNGEISSUED]
/// (UID COPY: OK), never a COPYUID with empty sets. FETCH of it says so too, with OK
/// [EXPUNGEISSUED] rather than a bare OK (UID FETCH: a bare OK).
#[test]
fn copying_what_another_session_expunged_says_so() {
    let server = Server::start();
    let mut a = server.login();
    let mut b = server.login();
    let message = "Subject: soon gone\r\n\r\nx\r\n";
    a.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    a.ok("SELECT INBOX");
    b.ok("SELECT INBOX");
    b.ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)");
    b.ok("EXPUNGE");
    // FETCH may not announce the expunge (RFC 3501 §7.4.1), COPY may: FETCH first.
    let (untagged, tagged) = a.cmd("FETCH 1 (FLAGS)");
    assert!(
        tagged.contains("OK [EXPUNGEISSUED]"),
        "{tagged} {untagged:?}"
    );
    let (_, tagged) = a.cmd("COPY 1 Archive");
    assert!(tagged.contains("NO [EXPUNGEISSUED]"), "{tagged}");
    let (_, tagged) = a.cmd("UID COPY 1 Archive");
    assert!(
        tagged.contains(" OK ") && !tagged.contains("COPYUID"),
        "{tagged}"
    );
    let (_, tagged) = a.cmd("UID FETCH 1 (FLAGS)");
    assert!(tagged.contains(" OK "), "{tagged}");
    let status = a.ok("STATUS Archive (MESSAGES)").join("\n");
    assert!(status.contains("MESSAGES 0"), "{status}");
}

/// RENAME of a mailbox into its own subtree is refused; its hierarchy stays as it was.
#[test]
fn a_mailbox_is_not_renamed_under_itself() {
    let server = Server::start();
    let mut raw = server.login();
    raw.ok("CREATE a/b/c");
    let (_, tagged) = raw.cmd("RENAME a a/b/c/d");
    assert!(tagged.contains("NO [CANNOT]"), "{tagged}");
    // Nor deleted while it has inferiors (RFC 9051 §6.3.4: NO [HASCHILDREN]).
    let (_, tagged) = raw.cmd("DELETE a/b");
    assert!(tagged.contains("NO [HASCHILDREN]"), "{tagged}");
    let list = raw.ok("LIST \"\" \"a*\"").join("\n");
    for name in ["\"a\"", "\"a/b\"", "\"a/b/c\""] {
        assert!(list.contains(name), "{name}: {list}");
    }
    raw.ok("RENAME a/b/c a/c");
}

/// ENABLE waits for login (RFC 5161 §3.1); AUTHENTICATE PLAIN for another identity is a
/// failed authentication (NO), not a syntax error; its NO, and a wrong password's, carry the
/// RFC 5530 response codes.
#[test]
fn enable_before_login_and_plain_for_another_identity() {
    use base64::Engine;
    let server = Server::start();
    let mut raw = server.raw();
    let (_, tagged) = raw.cmd("ENABLE CONDSTORE");
    assert!(tagged.contains(" BAD "), "{tagged}");
    let other =
        base64::engine::general_purpose::STANDARD.encode(format!("somebody\0{USER}\0{PASSWORD}"));
    let (_, tagged) = raw.cmd(&format!("AUTHENTICATE PLAIN {other}"));
    assert!(tagged.contains(" NO [AUTHORIZATIONFAILED] "), "{tagged}");
    // A wrong password gets the code LOGIN gives (RFC 5530), so a client can tell it apart.
    let (_, tagged) = raw.cmd(&format!("AUTHENTICATE PLAIN {}", sasl_plain(USER, "wrong")));
    assert!(tagged.contains(" NO [AUTHENTICATIONFAILED] "), "{tagged}");
    // After the continuation: the client's `*` cancels; a line that is no base64 is said to be
    // one (review: "AUTHENTICATE cancelled" for both). Both BAD (RFC 3501 §6.2.2).
    for (answer, said) in [
        ("*", "BAD AUTHENTICATE cancelled"),
        ("!!!notbase64", "BAD AUTHENTICATE data is not valid base64"),
    ] {
        raw.send(b"c1 AUTHENTICATE PLAIN\r\n");
        assert_eq!(raw.line().as_deref(), Some("+ "));
        raw.send(format!("{answer}\r\n").as_bytes());
        let (_, tagged) = raw.until("c1");
        assert_eq!(tagged, format!("c1 {said}"));
    }
    raw.ok(&format!("LOGIN {USER} \"{PASSWORD}\""));
    raw.ok("ENABLE CONDSTORE");
    // AUTHENTICATE only before login (RFC 3501 §6.2.2): after it, it switched the session to
    // the other user (review). BAD, and the selected mailbox stays.
    raw.ok("SELECT INBOX");
    let (_, tagged) = raw.cmd(&format!(
        "AUTHENTICATE PLAIN {}",
        sasl_plain(USER, PASSWORD)
    ));
    assert!(tagged.contains(" BAD "), "{tagged}");
    let (_, tagged) = raw.cmd("AUTHENTICATE PLAIN");
    assert!(tagged.contains(" BAD "), "{tagged}");
    raw.ok("FETCH 1:* (FLAGS)");
}

/// A message takes at most 128 keywords from a client: a STORE or APPEND past that is NO
/// [LIMIT] and changes nothing (review: 4,000 keywords on 100 messages held the store's write
/// lock for two minutes, other accounts' deliveries failing behind it).
#[test]
fn a_message_takes_at_most_128_keywords() {
    let server = Server::start();
    let mut raw = server.login();
    let message = "Subject: kw\r\n\r\nx\r\n";
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    raw.ok("SELECT INBOX");
    let words = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("kw{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    raw.ok(&format!("STORE 1 +FLAGS.SILENT (\\Seen {})", words(0, 100)));
    let (_, tagged) = raw.cmd(&format!("STORE 1 +FLAGS.SILENT ({})", words(100, 29)));
    assert!(tagged.contains(" NO [LIMIT] "), "{tagged}");
    raw.ok(&format!("STORE 1 +FLAGS.SILENT ({})", words(100, 28)));
    let flags = raw.ok("FETCH 1 (FLAGS)").join(" ");
    assert!(
        flags.contains("kw127") && !flags.contains("kw128"),
        "{flags}"
    );
    // Replacing them is taken; removing is always taken.
    raw.ok(&format!("STORE 1 FLAGS.SILENT ({})", words(500, 128)));
    raw.ok("STORE 1 -FLAGS.SILENT (kw500)");
    let (_, tagged) = raw.cmd(&format!(
        "APPEND INBOX ({}) {{{}+}}\r\n{message}",
        words(0, 129),
        message.len()
    ));
    assert!(tagged.contains(" NO [LIMIT] "), "{tagged}");
}

/// A LIST line whose tag is none (`*`, `+`, `a%b`) is answered as any such line, BAD, not
/// with its bad tag echoed (review: `* OK LIST completed`, `+ OK ...`).
#[test]
fn a_list_with_a_bad_tag_is_refused() {
    let server = Server::start();
    let mut raw = server.login();
    for bad in ["*", "+", "a%b"] {
        raw.send(format!("{bad} LIST \"\" INBOX\r\n").as_bytes());
        let line = raw.line().unwrap();
        assert!(line.starts_with("* BAD"), "{bad}: {line}");
    }
    raw.ok("LIST \"\" INBOX");
}

/// A system flag RFC 3501 does not define is refused (BAD), not stored; \Recent is ignored.
#[test]
fn unknown_system_flags_are_refused() {
    let server = Server::start();
    let mut raw = server.login();
    let message = "Subject: flags\r\n\r\nx\r\n";
    raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    raw.ok("SELECT INBOX");
    let (_, tagged) = raw.cmd("STORE 1 +FLAGS (\\Bogus)");
    assert!(tagged.contains(" BAD "), "{tagged}");
    // Nor a binary literal (~{n}, RFC 3516; BINARY is not announced), which let a NUL in.
    let (_, tagged) = raw.cmd("APPEND INBOX ~{5+}\r\nab\0cd");
    assert!(tagged.contains(" BAD "), "{tagged}");
    // Nor is a FETCH of no item (RFC 3501 §9), which had `* 1 FETCH ()` for an answer.
    let (untagged, tagged) = raw.cmd("FETCH 1 ()");
    assert!(
        tagged.contains(" BAD ") && untagged.is_empty(),
        "{untagged:?} {tagged}"
    );
    raw.ok("STORE 1 +FLAGS (\\Recent \\Flagged)");
    let flags = raw.ok("FETCH 1 (FLAGS)").join("\n");
    assert!(
        flags.contains("\\Flagged") && !flags.contains("Bogus"),
        "{flags}"
    );
}

/// A subscribed mailbox under an unsubscribed parent: LSUB with `%` lists the parent as
/// \Noselect (RFC 3501 §6.3.9), LIST (SUBSCRIBED RECURSIVEMATCH) with CHILDINFO (RFC 5258).
#[test]
fn subscribed_children_show_through_their_parent() {
    let server = Server::start();
    let mut raw = server.login();
    raw.ok("CREATE Caf&AOk-/Entw&APw-rfe");
    raw.ok("SUBSCRIBE Caf&AOk-/Entw&APw-rfe");
    let lsub = raw.ok("LSUB \"\" \"C%\"").join("\n");
    assert!(
        lsub.contains("* LSUB (\\Noselect) \"/\" \"Caf&AOk-\""),
        "{lsub}"
    );
    let all = raw.ok("LSUB \"\" \"C*\"").join("\n");
    assert!(
        all.contains("Caf&AOk-/Entw&APw-rfe") && !all.contains("\"Caf&AOk-\"\n"),
        "{all}"
    );
    let list = raw
        .ok("LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"C%\"")
        .join("\n");
    assert!(
        list.contains("\"Caf&AOk-\" (\"CHILDINFO\" (\"SUBSCRIBED\"))"),
        "{list}"
    );
    assert!(!list.contains("\\Subscribed) \"/\" \"Caf&AOk-\""), "{list}");
    let plain = raw.ok("LIST (SUBSCRIBED) \"\" \"C%\"").join("\n");
    assert!(!plain.contains("Caf&AOk-"), "{plain}");
}

/// Another process that reads the store and closes it (sqlite3, a monitoring script) while
/// the server runs: the server's SQLite locks hold, so that process does not checkpoint and
/// remove the write-ahead log under the server, and what the server stores after it is
/// there for every process.
#[test]
fn a_reader_closing_the_store_takes_nothing_from_the_server() {
    let server = Server::start();
    let mut raw = server.login();
    let m = "Subject: one\r\n\r\nx\r\n";
    raw.ok(&format!("APPEND INBOX {{{}}}\r\n{m}", m.len()));
    let reader = rusqlite::Connection::open(server.store_path()).unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    drop(reader);
    let m = "Subject: two\r\n\r\ny\r\n";
    raw.ok(&format!("APPEND INBOX {{{}}}\r\n{m}", m.len()));
    let fresh = rusqlite::Connection::open(server.store_path()).unwrap();
    let n: i64 = fresh
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n, 2,
        "the second APPEND is in the store for other processes"
    );
}

/// RENAME INBOX moves its messages to the new mailbox in their order: UIDs as they arrived,
/// also when a flag change made an earlier message the latest changed one.
#[test]
fn renaming_inbox_keeps_the_order() {
    let server = Server::start();
    let mut raw = server.login();
    for i in 1..=3 {
        let m = format!("Subject: m{i}\r\n\r\nx\r\n");
        raw.ok(&format!("APPEND INBOX {{{}}}\r\n{m}", m.len()));
    }
    raw.ok("SELECT INBOX");
    raw.ok("STORE 1 +FLAGS (\\Flagged)");
    raw.ok("UNSELECT");
    raw.ok("RENAME INBOX Old");
    raw.ok("SELECT Old");
    let subjects: Vec<String> = raw
        .ok("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .iter()
        .filter_map(|l| l.split("Subject: ").nth(1))
        .map(|s| s.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(subjects, ["m1", "m2", "m3"]);
}

/// A keyword set in another case on another message takes the spelling the mailbox has
/// (RFC 3501 §2.3.2: keywords are case-insensitive), as with Dovecot: no second keyword
/// that no FLAGS response named.
#[test]
fn a_keyword_in_another_case_is_the_same_keyword() {
    let server = Server::start();
    let mut raw = server.login();
    for i in 1..=2 {
        let m = format!("Subject: k{i}\r\n\r\nx\r\n");
        raw.ok(&format!("APPEND INBOX {{{}}}\r\n{m}", m.len()));
    }
    raw.ok("SELECT INBOX");
    raw.ok("STORE 1 +FLAGS (Foo)");
    let stored = raw.ok("STORE 2 +FLAGS (FOO)");
    let fetch = stored.iter().find(|l| l.contains("FETCH")).unwrap();
    assert!(
        fetch.contains("Foo") && !fetch.contains("FOO"),
        "{stored:?}"
    );
}

/// A server whose store is on a tmpfs of `size` (with the file system and its directory, to
/// keep); None, said, when not root (mount needs it). In the order bindings of them are
/// dropped in, last first: the server stops, the file system is unmounted, then its directory
/// is removed (the other way round, the mount point stayed behind in /tmp after every run).
fn server_on_small_fs(size: &str) -> Option<(tempfile::TempDir, common::SmallFs, Server)> {
    if sealpost::queue::current_uid() != 0 {
        eprintln!("skipped: needs root to mount a small file system");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("spfull")
        .tempdir_in("/tmp")
        .unwrap();
    let fs = common::SmallFs::mount_at(dir.path(), size);
    let server = Server::start_store("", "", "", Some(&fs.path.join("store.sqlite")));
    Some((dir, fs, server))
}

/// An import that fails part-way (the store's disk full) says how many messages it stored
/// before the error, since importing the same source again stores them again (review: 500
/// of 1,200 in, the error alone said, and a second run made them 1,700). Needs root.
#[test]
fn an_import_cut_short_says_what_it_stored() {
    let Some((_dir, _fs, server)) = server_on_small_fs("2M") else {
        return;
    };
    let mut text = String::new();
    for i in 0..1200 {
        text.push_str(&format!(
            "From a@example.org Thu Nov 19 10:00:00 2026\nSubject: m{i}\n\n{}\n\n",
            "body text ".repeat(100)
        ));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let mbox_path = elsewhere.path().join("big.mbox");
    std::fs::write(&mbox_path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .arg("--config")
        .arg(server.config())
        .args(["import", "--account", USER, "--mailbox", "INBOX"])
        .arg(&mbox_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    assert!(
        stderr.contains(" messages of ") && stderr.contains("were stored before it"),
        "{stderr}"
    );
}

/// An import stopped by ^C (SIGINT) stores what it read, says how many messages went in, and
/// exits 130 (review: 20,500 of 100,000 kept without a word, exit by the signal, and a second
/// run stored them again).
#[test]
fn an_import_interrupted_says_what_it_stored() {
    let server = Server::start();
    let mut text = String::new();
    for i in 0..30_000 {
        text.push_str(&format!(
            "From a@example.org Thu Nov 19 10:00:00 2026\nSubject: m{i}\n\nbody {i}\n\n"
        ));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let mbox_path = elsewhere.path().join("big.mbox");
    std::fs::write(&mbox_path, text).unwrap();
    let mut raw = server.login();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .arg("--config")
        .arg(server.config())
        .args(["import", "--account", USER, "--mailbox", "INBOX"])
        .arg(&mbox_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first batch committed: the import is under way.
    let messages = |raw: &mut common::server::Raw<_>| -> usize {
        let status = raw.ok("STATUS INBOX (MESSAGES)").join("\n");
        let count = status.split("MESSAGES ").nth(1).unwrap();
        count.split(')').next().unwrap().trim().parse().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while messages(&mut raw) == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing imported");
    }
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let stored = messages(&mut raw);
    assert!(
        stored < 30_000,
        "the import ran to its end before the signal"
    );
    assert!(
        stderr.contains(&format!("interrupted: {stored} messages of "))
            && stderr.contains("were stored before it"),
        "{stored}: {stderr}"
    );
}

/// CLOSE on a store whose disk is full: RFC 3501 §6.4.2 gives CLOSE no NO, so the failed
/// expunge is said in an untagged NO [OVERQUOTA] before the OK (as Dovecot does), rather than
/// an OK alone that has the client believe the messages went. They are all still there.
/// Needs root (a small tmpfs).
#[test]
fn close_on_a_full_store_says_the_messages_stayed() {
    let Some((_dir, fs, server)) = server_on_small_fs("4M") else {
        return;
    };
    let mut raw = server.login();
    for i in 0..4 {
        let message = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        raw.ok(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()));
    }
    raw.ok("SELECT INBOX");
    raw.ok("STORE 1:4 +FLAGS (\\Deleted)");
    fs.fill(0);
    let (untagged, tagged) = raw.cmd("CLOSE");
    assert!(tagged.contains("OK"), "{tagged}");
    assert!(
        untagged.iter().any(|l| l.starts_with("* NO [OVERQUOTA]")),
        "{untagged:?}"
    );
    fs.unfill();
    let selected = raw.ok("SELECT INBOX").join("\n");
    assert!(selected.contains("* 4 EXISTS"), "{selected}");
}

/// Commands a client pipelines behind LOGIN in one write (RFC 3501 §5.5) are judged by the
/// limits of the state LOGIN leaves: an APPEND literal larger than a line before login is
/// taken once LOGIN is (it ended the connection), and still refused when LOGIN was not.
#[test]
fn commands_pipelined_behind_login_are_judged_after_it() {
    let server = Server::start();
    let body = format!("Subject: pipelined\r\n\r\n{}\r\n", "x".repeat(20 * 1024));
    let mut raw = server.raw();
    raw.send(
        format!(
            "a1 LOGIN {USER} \"{PASSWORD}\"\r\na2 APPEND INBOX {{{}+}}\r\n{body}\r\na3 NOOP\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for tag in ["a1", "a2", "a3"] {
        let (_, tagged) = raw.until(tag);
        assert!(tagged.starts_with(&format!("{tag} OK")), "{tagged}");
    }
    let status = raw.ok("STATUS INBOX (MESSAGES)").join("\n");
    assert!(status.contains("MESSAGES 1"), "{status}");

    let mut raw = server.raw();
    raw.send(
        format!(
            "b1 LOGIN {USER} wrong\r\nb2 APPEND INBOX {{{}+}}\r\n{body}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let (_, tagged) = raw.until("b1");
    assert!(tagged.starts_with("b1 NO"), "{tagged}");
    let bye = raw.line().unwrap_or_default();
    assert!(bye.starts_with("* BYE"), "{bye}");
}

/// Wrong passwords sent at once cost the memory of two password checks, and none stays once
/// they are done: each argon2id check takes 19 MiB (review: 10 at once took the server from
/// 21 to 216 MB, and kept it).
#[test]
fn failed_logins_at_once_take_bounded_memory() {
    let server = Server::start();
    let status = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse()
                    .ok()
            })
            .unwrap()
    };
    let base = status("VmRSS:");
    // One burst: the failures of each make the next from the same address wait longer.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let mut raw = server.raw();
            raw.send(format!("a LOGIN {USER} wrong\r\n").as_bytes());
            raw
        })
        .collect();
    for mut raw in clients {
        let (_, tagged) = raw.until("a");
        assert!(tagged.contains(" NO "), "{tagged}");
    }
    let (peak, after) = (status("VmHWM:"), status("VmRSS:"));
    // Two checks at once: about 40 MB over the base at the peak.
    assert!(peak < base + 80_000, "peak {peak} kB, base {base} kB");
    assert!(after < base + 20_000, "after {after} kB, base {base} kB");
}

/// Review of the server against Dovecot, the smaller points: STATUS items not answered are
/// refused rather than left out of an OK (DELETED is answered, APPENDLIMIT in STATUS and
/// under LIST-STATUS), LSUB "" "" lists nothing (the delimiter answer is LIST's), a malformed PLAIN
/// message is a failed authentication (NO), and LOGIN after login says so.
#[test]
fn status_items_lsub_root_and_plain_failures_as_the_rfcs_say() {
    let server = Server::start();
    let mut raw = server.raw();
    let (_, malformed) = raw.cmd("AUTHENTICATE PLAIN =");
    assert!(
        malformed.contains("NO [AUTHENTICATIONFAILED]"),
        "{malformed}"
    );
    let mut raw = server.login();
    raw.ok("APPEND INBOX (\\Deleted) {18+}\r\nSubject: a\r\n\r\nbody");
    raw.ok("APPEND INBOX {18+}\r\nSubject: b\r\n\r\nbody");
    let status = raw.ok("STATUS INBOX (MESSAGES DELETED)");
    assert_eq!(status, ["* STATUS \"INBOX\" (MESSAGES 2 DELETED 1)"]);
    // APPENDLIMIT as a STATUS item (RFC 7889 §4), which imap-codec does not parse: it was BAD.
    let limit = raw.ok("STATUS INBOX (APPENDLIMIT)");
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert!(
        limit[0].starts_with("* STATUS \"INBOX\" (APPENDLIMIT ") && limit[0].ends_with(')'),
        "{limit:?}"
    );
    raw.ok("CREATE \"a (b)\"");
    // A client's mistakes answered from the store are no errors of the server's (review:
    // logged as ERROR, naming the mailbox).
    let (_, exists) = raw.cmd("CREATE \"a (b)\"");
    assert!(exists.contains("NO [ALREADYEXISTS]"), "{exists}");
    let (_, missing) = raw.cmd("DELETE nosuch");
    assert!(missing.contains("NO [NONEXISTENT]"), "{missing}");
    assert!(!server.log().contains("ERROR"), "{}", server.log());
    let mixed = raw.ok("STATUS \"a (b)\" (unseen appendlimit MESSAGES)");
    assert_eq!(mixed.len(), 1, "{mixed:?}");
    let limit = limit[0]["* STATUS \"INBOX\" (APPENDLIMIT ".len()..].trim_end_matches(')');
    assert_eq!(
        mixed[0],
        format!("* STATUS \"a (b)\" (UNSEEN 0 APPENDLIMIT {limit} MESSAGES 0)")
    );
    for refused in ["STATUS INBOX ()", "STATUS INBOX (DELETED-STORAGE)"] {
        let (untagged, tagged) = raw.cmd(refused);
        assert!(tagged.contains(" BAD "), "{refused}: {tagged}");
        assert!(untagged.is_empty(), "{untagged:?}");
    }
    let listed = raw.ok("LIST \"\" INBOX RETURN (STATUS (MESSAGES APPENDLIMIT))");
    assert!(
        listed
            .iter()
            .any(|l| l.starts_with("* STATUS \"INBOX\" (MESSAGES 2 APPENDLIMIT ")),
        "{listed:?}"
    );
    let (_, unknown) = raw.cmd("LIST \"\" INBOX RETURN (STATUS (MESSAGES FOO))");
    assert!(unknown.contains(" BAD "), "{unknown}");
    assert!(raw.ok("LSUB \"\" \"\"").is_empty());
    assert_eq!(raw.ok("LIST \"\" \"\""), ["* LIST (\\Noselect) \"/\" \"\""]);
    let (_, again) = raw.cmd(&format!("LOGIN {USER} \"{PASSWORD}\""));
    assert!(
        again.contains("BAD LOGIN is not allowed after login"),
        "{again}"
    );
}

/// Answers a client can act on (review): a command sealpost does not implement is "not
/// supported" whether a mailbox is selected or not; INBOX cannot be deleted, selected or not
/// ([CANNOT], not [INUSE]); BODY.PEEK[TEXT] and BODY[TEXT] in one FETCH are one item, once,
/// and the message is \Seen.
#[test]
fn unsupported_commands_inbox_deletion_and_a_section_named_twice() {
    let server = Server::start();
    let mut raw = server.login();
    for selected in [false, true] {
        let (_, tagged) = raw.cmd("SORT (DATE) UTF-8 ALL");
        assert!(
            tagged.contains("BAD SORT is not supported"),
            "{selected}: {tagged}"
        );
        let (_, tagged) = raw.cmd("GETQUOTAROOT INBOX");
        assert!(tagged.contains("is not supported"), "{selected}: {tagged}");
        let (_, tagged) = raw.cmd("DELETE INBOX");
        assert!(tagged.contains("NO [CANNOT]"), "{selected}: {tagged}");
        if !selected {
            let message = "From: a@example.org\r\nSubject: twice\r\n\r\nthe text\r\n";
            raw.ok(&format!("APPEND INBOX {{{}}}\r\n{message}", message.len()));
            raw.ok("SELECT INBOX");
        }
    }
    let fetched = raw.ok("FETCH 1 (BODY.PEEK[TEXT] BODY[TEXT])").join("\n");
    assert_eq!(fetched.matches("BODY[TEXT]").count(), 1, "{fetched}");
    let flags = raw.ok("FETCH 1 FLAGS").join("\n");
    assert!(flags.contains("\\Seen"), "{flags}");
}
