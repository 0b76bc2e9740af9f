//! Proves the IMAP test harness itself against a throwaway Dovecot: tests/imap/client.py
//! appends and fetches the corpus byte-exactly, and mbsync pulls into and pushes from a local
//! Maildir. sealpost's IMAP server tests build on these pieces, so a failure here means the
//! harness (or the installed dovecot-imapd / isync) is at fault, not sealpost.
//!
//! Needs Debian's dovecot-imapd, isync and python3 (`make deps-test` installs them). The
//! package's postinst may start the system dovecot on ports 143/993; these tests neither use
//! nor disturb it: every Dovecot here has its own config, base_dir, state_dir and a port
//! found by binding port 0, and is stopped when its test ends.
//!
//! What the real programs do to the bytes (asserted below, so a changed package shows up):
//! - Dovecot's APPEND turns a bare LF into CRLF and leaves a bare CR alone; a last line
//!   without a line end stays without one. BODY[] then returns exactly those bytes.
//! - mbsync writes Maildir files with LF line ends, dropping every CR (a bare CR too), adds an `X-TUID: <12 chars>` line at the
//!   end of the header of every message it copies (either way), and skips, with only a
//!   warning and exit status 0, messages whose header has no terminating empty line
//!   (corpus 35 and 36).

mod common;

use std::path::PathBuf;

use common::corpus_files;
use common::dovecot::Dovecot;
use common::imap::*;
use common::mbsync::{Auth, Mbsync};
use serde_json::{json, Value};

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let files = corpus_files();
    assert_eq!(files.len(), 42, "the corpus has 42 messages");
    files
        .into_iter()
        .map(|p| {
            let raw = std::fs::read(&p).unwrap();
            (p, raw)
        })
        .collect()
}

/// What Dovecot stores for an APPENDed literal: every LF not preceded by CR becomes CRLF.
fn appended(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// What mbsync writes into a Maildir file for IMAP bytes: every CR is dropped, bare CRs
/// included (so corpus 22's progress-bar CRs are lost on the way down).
fn mbsync_local(raw: &[u8]) -> Vec<u8> {
    raw.iter().copied().filter(|&b| b != b'\r').collect()
}

/// Removes the `X-TUID:` header line mbsync adds (LF or CRLF ended); panics without one.
fn strip_tuid(raw: &[u8]) -> Vec<u8> {
    let at = common::find(raw, b"\nX-TUID: ").expect("mbsync's X-TUID header") + 1;
    let end = at + raw[at..].iter().position(|&b| b == b'\n').unwrap() + 1;
    [&raw[..at], &raw[end..]].concat()
}

fn name(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Appends the whole corpus to INBOX (the file bytes exactly) and fetches it back.
fn append_corpus(d: &Dovecot, corpus: &[(PathBuf, Vec<u8>)]) -> Value {
    let mut steps: Vec<Value> = corpus
        .iter()
        .map(|(p, _)| append_file("INBOX", p))
        .collect();
    steps.push(json!({"cmd": "fetch_all", "mailbox": "INBOX"}));
    run_client(
        d.port,
        &d.user,
        &d.password,
        Tls::None,
        &Value::Array(steps),
    )
}

#[test]
fn client_appends_and_fetches_the_corpus_exactly() {
    let corpus = corpus();
    let d = Dovecot::start();
    let out = append_corpus(&d, &corpus);

    assert_eq!(out["greeting"]["status"], "OK", "{:#}", out["greeting"]);
    assert_eq!(out["login"]["status"], "OK");
    for (i, (p, _)) in corpus.iter().enumerate() {
        let step = ok_step(&out, i);
        assert_eq!(
            step["tagged"]["code"][0],
            "APPENDUID",
            "{}: {step:#}",
            name(p)
        );
        assert_eq!(step["tagged"]["code"][2], i as u64 + 1);
    }

    let fetched = fetched_bodies(&out, corpus.len());
    assert_eq!(fetched.len(), corpus.len());
    let messages = out["steps"][corpus.len()]["messages"].as_array().unwrap();
    for (i, ((p, raw), (uid, body))) in corpus.iter().zip(&fetched).enumerate() {
        assert_eq!(*uid, i as u64 + 1);
        let want = appended(raw);
        assert!(
            *body == want,
            "{}: BODY[] differs\n want {:?}\n  got {:?}",
            name(p),
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(body)
        );
        assert_eq!(messages[i]["size"], want.len() as u64, "{}", name(p));
        // mail_save_crlf = yes: the Maildir file holds the same bytes.
        let files = d.mailbox_files("INBOX");
        let stored = files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .filter(|b| *b == want)
            .count();
        assert_eq!(stored, 1, "{}: Maildir file", name(p));
    }
    // Only 20 (bare LF) and 21 (some bare LF) change on the way in; bare CRs (22) stay.
    let changed: Vec<String> = corpus
        .iter()
        .filter(|(_, raw)| appended(raw) != *raw)
        .map(|(p, _)| name(p))
        .collect();
    assert_eq!(
        changed,
        ["20-bare-lf.eml", "21-mixed-line-endings.eml"],
        "corpus line ends changed"
    );

    // The parsed views are there and make sense (ENVELOPE subject, BODYSTRUCTURE subtype).
    let m1 = &messages[0];
    assert_eq!(m1["envelope"][1], "Lunch on Thursday?", "{m1:#}");
    assert_eq!(
        m1["envelope"][2][0],
        json!(["Alice", null, "alice", "example.org"])
    );
    assert_eq!(m1["bodystructure"][0], "text");
    assert_eq!(m1["body"][1], "plain");
    let m7 = &messages[6];
    let parts = m7["bodystructure"].as_array().unwrap();
    let subtype = parts.iter().find(|v| v.is_string()).unwrap();
    assert_eq!(subtype, "mixed", "{m7:#}");
    assert!(m1["flags"].as_array().is_some());
    assert!(m1["internaldate"].as_str().is_some());
}

#[test]
fn client_reports_no_and_bad_and_untagged_order() {
    let d = Dovecot::start();
    let steps = json!([
        {"cmd": "select", "mailbox": "INBOX"},
        append_bytes("INBOX", b"Subject: one\r\n\r\nbody\r\n"),
        {"cmd": "append", "mailbox": "INBOX", "data_b64": "U3ViamVjdDogdHdvDQoNCg==",
         "flags": "(\\Seen \\Flagged)", "date": "01-Feb-2024 10:00:00 +0100"},
        {"cmd": "raw", "line": "UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"},
        {"cmd": "select", "mailbox": "NoSuchBox"},
        {"cmd": "raw", "line": "FROBNICATE"},
        {"cmd": "logout"},
    ]);
    let out = run_client(d.port, &d.user, &d.password, Tls::None, &steps);
    let select = ok_step(&out, 0);
    let untagged = select["untagged"].as_array().unwrap();
    assert!(untagged.iter().any(|u| u["data"] == json!([0, "EXISTS"])));
    assert_eq!(select["tagged"]["code"], json!(["READ-WRITE"]));
    // Appends while selected report the new message count.
    let append = ok_step(&out, 1);
    assert!(
        append["untagged"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["data"] == json!([1, "EXISTS"])),
        "{append:#}"
    );
    ok_step(&out, 2);
    let fetch = ok_step(&out, 3);
    let f = fetch["untagged"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{fetch:#}");
    assert_eq!(f[1]["data"][0], 2);
    assert_eq!(f[1]["data"][1], "FETCH");
    let items = &f[1]["data"][2];
    let get = |k: &str| {
        let a = items.as_array().unwrap();
        let i = a
            .iter()
            .position(|v| v == k)
            .unwrap_or_else(|| panic!("{k} in {items}"));
        a[i + 1].clone()
    };
    // Dovecot lists flags in its own order, \Recent included: compare sets.
    let mut flags: Vec<String> = serde_json::from_value(get("FLAGS")).unwrap();
    flags.sort();
    assert_eq!(flags, ["\\Flagged", "\\Recent", "\\Seen"]);
    // Maildir keeps INTERNALDATE as the file's mtime: the zone is gone, Dovecot answers in
    // its TZ (UTC, set in its config).
    assert_eq!(get("INTERNALDATE"), "01-Feb-2024 09:00:00 +0000");
    assert_eq!(get("BODY[HEADER.FIELDS (SUBJECT)]"), "Subject: two\r\n\r\n");
    assert_eq!(out["steps"][4]["tagged"]["status"], "NO");
    assert_eq!(out["steps"][5]["tagged"]["status"], "BAD");
    let logout = ok_step(&out, 6);
    assert_eq!(logout["untagged"][0]["status"], "BYE");

    // A wrong password is an answer, not a client failure; no steps run.
    let out = run_client(d.port, &d.user, "wrong", Tls::None, &steps);
    assert_eq!(out["login"]["status"], "NO", "{out:#}");
    assert_eq!(out["steps"], json!([]));
}

#[test]
fn mbsync_pulls_and_pushes() {
    let corpus = corpus();
    let d = Dovecot::start();
    let out = append_corpus(&d, &corpus);
    let served = fetched_bodies(&out, corpus.len());

    let m = Mbsync::new("127.0.0.1", d.port, &d.user, &d.password, Tls::None);
    let said = m.pull().unwrap();
    for n in [35, 36] {
        let warning = format!("message {n} from far side has incomplete header; skipping");
        assert!(said.contains(&warning), "{said}");
    }
    let local = m.maildir();
    // mbsync skips headers-only messages without an empty line after the header.
    let mut want: Vec<Vec<u8>> = served
        .iter()
        .zip(&corpus)
        .filter(|(_, (p, _))| !name(p).starts_with("35-") && !name(p).starts_with("36-"))
        .map(|((_, body), _)| mbsync_local(body))
        .collect();
    want.sort();
    let mut got: Vec<Vec<u8>> = local.iter().map(|b| strip_tuid(b)).collect();
    got.sort();
    // All but the two mbsync skips.
    assert_eq!(got.len(), corpus.len() - 2);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "pulled message differs\n want {:?}\n  got {:?}",
            String::from_utf8_lossy(w),
            String::from_utf8_lossy(g)
        );
    }

    // A message an MDA delivers locally (LF line ends) goes up with push.
    let new = b"From: Carol <carol@example.org>\nTo: alice@example.org\nSubject: pushed\nMessage-ID: <pushed-1@example.org>\n\nmade locally\n";
    m.deliver("INBOX", new);
    m.push().unwrap();
    let out = run_client(
        d.port,
        &d.user,
        &d.password,
        Tls::None,
        &json!([{"cmd": "fetch_all", "mailbox": "INBOX"}]),
    );
    let after = fetched_bodies(&out, 0);
    assert_eq!(
        after.len(),
        corpus.len() + 1,
        "only the new message goes up"
    );
    let (uid, body) = after.last().unwrap();
    assert_eq!(*uid as usize, corpus.len() + 1);
    assert_eq!(strip_tuid(body), appended(new));
    // Nothing left to do either way.
    m.sync().unwrap();
    assert_eq!(m.maildir().len(), corpus.len() - 2 + 1);
}

#[test]
fn tls_clients_trust_the_self_signed_certificate() {
    let d = Dovecot::start_tls();
    let (tls_port, cert) = (d.tls_port.unwrap(), d.cert.clone().unwrap());
    let raw = b"Subject: over TLS\r\n\r\nsecret\r\n";
    let steps = json!([append_bytes("INBOX", raw), {"cmd": "fetch_all", "mailbox": "INBOX"}]);
    let out = run_client(
        d.port,
        &d.user,
        &d.password,
        Tls::Starttls(cert.clone()),
        &steps,
    );
    assert_eq!(fetched_bodies(&out, 1), [(1, raw.to_vec())]);
    let steps = json!([{"cmd": "fetch_all", "mailbox": "INBOX"}]);
    let out = run_client(
        tls_port,
        &d.user,
        &d.password,
        Tls::Implicit(cert.clone()),
        &steps,
    );
    assert_eq!(fetched_bodies(&out, 0), [(1, raw.to_vec())]);

    // Verification is on: another self-signed certificate is not a trust anchor.
    let other = tempfile::NamedTempFile::new().unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(other.path(), stranger.cert.pem()).unwrap();
    let err = try_run_client(
        tls_port,
        &d.user,
        &d.password,
        Tls::Implicit(other.path().to_path_buf()),
        &steps,
    )
    .unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");

    for (port, tls) in [
        (d.port, Tls::Starttls(cert.clone())),
        (tls_port, Tls::Implicit(cert.clone())),
    ] {
        let m = Mbsync::new("127.0.0.1", port, &d.user, &d.password, tls.clone());
        m.pull().unwrap_or_else(|e| panic!("{tls:?}: {e}"));
        assert_eq!(
            m.maildir()
                .iter()
                .map(|b| strip_tuid(b))
                .collect::<Vec<_>>(),
            [mbsync_local(raw)]
        );
    }
}

/// `Auth::Login` sends the IMAP LOGIN command even though Dovecot offers AUTH=LOGIN;
/// `Auth::Plain` uses AUTHENTICATE PLAIN, which needs Cyrus SASL's libsasl2-modules.
#[test]
fn mbsync_auth_mechanisms() {
    let d = Dovecot::start_tls();
    let tls = Tls::Starttls(d.cert.clone().unwrap());
    let login = Mbsync::new("127.0.0.1", d.port, &d.user, &d.password, tls.clone());
    let trace = login.run(&["-Dn", "--pull"]).unwrap();
    assert!(trace.contains(" LOGIN <user> <pass>"), "{trace}");
    let plain = Mbsync::with_auth("127.0.0.1", d.port, &d.user, &d.password, tls, Auth::Plain);
    let trace = plain.run(&["-Dn", "--pull"]).unwrap();
    assert!(trace.contains("AUTHENTICATE PLAIN"), "{trace}");
}
