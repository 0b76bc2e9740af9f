//! Test support: throwaway GnuPG homes driven by the real gpg command line, and helpers to
//! check copies with stock gpg the way a recipient's MUA would.
#![allow(dead_code)]

pub mod dovecot;
pub mod imap;
pub mod mbsync;
pub mod ports;
pub mod postfix;
pub mod relay;
pub mod server;
pub mod verdicts;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sealpost::keys::{home, KeyService};

/// A store of nobody's (uid 65534) for one account, `account`, as a service user's would be:
/// its directory (0700, nobody's) under a directory anyone may enter, and a configuration
/// anyone may read that names it. (The directory, to keep; the store's path; the
/// configuration's.) Root only (chown).
pub fn nobodys_store(account: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("spd")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&store_dir, Some(65534), Some(65534)).unwrap();
    let hash = run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_sealpost")).arg("passwd"),
        b"secret",
    );
    assert!(hash.status.success(), "{hash:?}");
    let store = store_dir.join("store.sqlite");
    let config = dir.path().join("sealpost.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[[accounts]]\nname = \"{account}\"\npassword_hash = \"{}\"\n",
            store.display(),
            String::from_utf8_lossy(&hash.stdout).trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, store, config)
}

/// A GnuPG home under /tmp (short path for the agent socket), removed with its agent on drop.
pub struct GpgHome {
    pub dir: PathBuf,
}

impl GpgHome {
    pub fn new() -> Self {
        let dir = home::short_temp_dir("spt").expect("temp dir");
        home::prepare(&dir).expect("prepare GnuPG home");
        GpgHome { dir }
    }

    /// The pid of the gpg-agent serving this home (started when none runs).
    pub fn agent_pid(&self) -> i32 {
        let out = Command::new("gpg-connect-agent")
            .arg("--homedir")
            .arg(&self.dir)
            .args(["getinfo pid", "/bye"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("D "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no agent pid in {text:?}"))
    }

    /// Starts this home's gpg-agent now (not at a first operation, which under a loaded
    /// machine could take longer than a short deadline a test sets).
    pub fn launch_agent(&self) {
        let launched = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.dir)
            .args(["--launch", "gpg-agent"])
            .status()
            .unwrap();
        assert!(launched.success());
    }

    /// Stops this home's gpg-agent (SIGSTOP: it hangs) until the guard is dropped. Returns
    /// once the kernel shows it stopped: a request sent before that could still be answered.
    /// The signal is sent again each second until then (a whole suite's run once saw the
    /// agent still sleeping 10 s after one SIGSTOP, cause unknown; the failure shows what
    /// [`agent_diagnosis`] finds, to tell next time).
    pub fn stop_agent(&self) -> StoppedAgent {
        let pid = self.agent_pid();
        let stat = format!("/proc/{pid}/stat");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut sent = std::time::Instant::now() - Duration::from_secs(1);
        loop {
            if sent.elapsed() >= Duration::from_secs(1) {
                // SAFETY: kill(2) on the agent the test started.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
                sent = std::time::Instant::now();
            }
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            let state = text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if state == Some('T') {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "agent {pid} not stopped: {text}\n{}",
                agent_diagnosis(pid)
            );
            std::thread::yield_now();
        }
        StoppedAgent(pid)
    }

    /// A copy of `other` (keys, trust, configuration) in a fresh short directory, without its
    /// agent's socket: gpg starts an agent of the copy's own.
    pub fn copy_of(other: &GpgHome) -> Self {
        let dir = home::short_temp_dir("spc").expect("temp dir");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", other.dir.display()))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(copied.success());
        let _ = std::fs::remove_file(dir.join("S.gpg-agent"));
        GpgHome { dir }
    }

    /// A new home with the keys of `other` (public and secret, owner trust), its public keys
    /// in GnuPG 1's keyring format (`pubring.gpg`) instead of a keybox.
    pub fn keyring_copy_of(other: &GpgHome) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let copy = GpgHome::new();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(copy.dir.join("pubring.gpg"))
            .unwrap();
        let public = other.must(&["--export"], None).stdout;
        let secret = other.must(&["--export-secret-keys"], None).stdout;
        let trust = other.must(&["--export-ownertrust"], None).stdout;
        copy.must(&["--import"], Some(&public));
        copy.must(&["--import"], Some(&secret));
        copy.must(&["--import-ownertrust"], Some(&trust));
        assert!(!copy.dir.join("pubring.kbx").exists());
        copy
    }

    pub fn gpg(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir").arg(&self.dir).args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        cmd.args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("gpg runs");
        if let Some(data) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// [`GpgHome::gpg`], which must succeed.
    pub fn must(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let out = self.gpg(args, stdin);
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Generates an ed25519/cv25519 key (`future-default`); returns its fingerprint.
    pub fn generate(&self, uid: &str) -> String {
        self.must(
            &["--quick-gen-key", uid, "future-default", "default", "never"],
            None,
        );
        self.fingerprint(uid)
    }

    /// A key made at `when` (gpg's faked system time, e.g. "20230101T000000"), never expiring.
    pub fn generate_at(&self, uid: &str, when: &str) -> String {
        self.must(
            &[
                "--faked-system-time",
                when,
                "--quick-gen-key",
                uid,
                "future-default",
                "default",
                "never",
            ],
            None,
        );
        self.fingerprint(uid)
    }

    /// A key made in 2020 whose only encryption subkey expired a day later (the primary key
    /// never expires).
    pub fn generate_encryption_subkey_expired(&self, uid: &str) -> String {
        let at = ["--faked-system-time", "20200101T000000"];
        self.must(
            &[
                &at[..],
                &["--quick-gen-key", uid, "ed25519", "sign", "never"],
            ]
            .concat(),
            None,
        );
        let fpr = self.fingerprint(uid);
        self.must(
            &[&at[..], &["--quick-add-key", &fpr, "cv25519", "encr", "1d"]].concat(),
            None,
        );
        fpr
    }

    /// A key whose only encryption subkey is revoked.
    pub fn generate_encryption_subkey_revoked(&self, uid: &str) -> String {
        let fpr = self.generate(uid);
        // gpg's key editor: subkey 1 (future-default's cv25519), revoke it, reason 0, no
        // text, confirm, save.
        self.must(
            &["--command-fd", "0", "--edit-key", &fpr],
            Some(b"key 1\nrevkey\ny\n0\n\ny\nsave\n"),
        );
        fpr
    }

    /// A key whose only (primary) key can sign but not encrypt.
    pub fn generate_sign_only(&self, uid: &str) -> String {
        self.must(&["--quick-gen-key", uid, "ed25519", "sign", "never"], None);
        self.fingerprint(uid)
    }

    /// A key made in 2020 that expired a day later.
    pub fn generate_expired(&self, uid: &str) -> String {
        self.must(
            &[
                "--faked-system-time",
                "20200101T000000",
                "--quick-gen-key",
                uid,
                "future-default",
                "default",
                "1d",
            ],
            None,
        );
        self.fingerprint(uid)
    }

    /// A key revoked with the revocation certificate gpg stored when it was made.
    pub fn generate_revoked(&self, uid: &str) -> String {
        let fpr = self.generate(uid);
        let cert =
            std::fs::read_to_string(self.dir.join("openpgp-revocs.d").join(format!("{fpr}.rev")))
                .unwrap();
        // The stored certificate is disarmed with a leading colon (gpg's own safety).
        let armored = cert.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        self.must(&["--import"], Some(armored.as_bytes()));
        fpr
    }

    pub fn fingerprint(&self, uid: &str) -> String {
        let email = uid
            .rsplit_once('<')
            .map_or(uid, |(_, e)| e.trim_end_matches('>'));
        let out = self.must(
            &["--with-colons", "--list-keys", &format!("<{email}>")],
            None,
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let fprs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap())
            .collect();
        // The primary key's fingerprint comes first after the newest "pub" line.
        let last_pub = text.lines().filter(|l| l.starts_with("pub:")).count();
        assert!(last_pub > 0, "no key for {uid}");
        let mut seen_pub = 0;
        let mut after_pub = false;
        for l in text.lines() {
            if l.starts_with("pub:") {
                seen_pub += 1;
                after_pub = seen_pub == last_pub;
            } else if after_pub && l.starts_with("fpr:") {
                return l.split(':').nth(9).unwrap().to_string();
            }
        }
        fprs[0].to_string()
    }

    /// The key IDs of the encryption subkeys of `fpr`.
    pub fn encryption_subkeys(&self, fpr: &str) -> Vec<String> {
        let out = self.must(&["--with-colons", "--list-keys", fpr], None);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| {
                l.starts_with("sub:") && l.split(':').nth(11).is_some_and(|c| c.contains('e'))
            })
            .map(|l| l.split(':').nth(4).unwrap().to_string())
            .collect()
    }

    pub fn export_public(&self, fpr: &str) -> Vec<u8> {
        self.must(&["--armor", "--export", fpr], None).stdout
    }

    pub fn import(&self, armored: &[u8]) {
        self.must(&["--import"], Some(armored));
    }

    /// `data` encrypted (unsigned, armored) to the key `fpr` by stock gpg.
    pub fn encrypt_to(&self, fpr: &str, data: &[u8]) -> Vec<u8> {
        let args = ["--armor", "--trust-model", "always", "--encrypt", "-r", fpr];
        self.must(&args, Some(data)).stdout
    }

    /// A key service over this home, as the daemons use it: GPGME in `sealpost gpg-worker`
    /// processes.
    pub fn service(&self, deadline: Duration) -> Arc<KeyService> {
        self.service_with_workers(deadline, 2)
    }

    /// Like `service`, with this many workers.
    pub fn service_with_workers(&self, deadline: Duration, workers: usize) -> Arc<KeyService> {
        Arc::new(KeyService::start_isolated(
            PathBuf::from(env!("CARGO_BIN_EXE_sealpost")),
            Some(self.dir.clone()),
            workers,
            deadline,
            Default::default(),
        ))
    }

    /// A key service over this home with GPGME on threads of this process (the library's
    /// default, for users without a worker executable).
    pub fn service_in_process(&self, deadline: Duration) -> Arc<KeyService> {
        Arc::new(KeyService::start(
            Some(self.dir.clone()),
            2,
            deadline,
            Default::default(),
        ))
    }

    /// Decrypts with stock gpg. Returns (plaintext, key IDs the message was encrypted to,
    /// whether gpg reported a good signature, and the full status output).
    pub fn decrypt(&self, armored: &[u8]) -> Option<(Vec<u8>, Vec<String>, bool, String)> {
        let dir = home::short_temp_dir("spd").unwrap();
        let out_path = dir.join("plain");
        let out = self.gpg(
            &[
                "--status-fd",
                "2",
                "--output",
                out_path.to_str().unwrap(),
                "--decrypt",
            ],
            Some(armored),
        );
        let status = String::from_utf8_lossy(&out.stderr).into_owned();
        let plain = std::fs::read(&out_path).ok();
        let _ = std::fs::remove_dir_all(&dir);
        if !out.status.success() {
            return None;
        }
        let enc_to = status
            .lines()
            .filter_map(|l| l.strip_prefix("[GNUPG:] ENC_TO "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        let good = status.contains("[GNUPG:] GOODSIG ");
        Some((plain?, enc_to, good, status))
    }

    /// Verifies a detached signature with stock gpg; returns the VALIDSIG fingerprint.
    pub fn verify_detached(&self, signed: &[u8], signature: &[u8]) -> Option<String> {
        let dir = home::short_temp_dir("spv").unwrap();
        let (s, d) = (dir.join("sig.asc"), dir.join("data"));
        std::fs::write(&s, signature).unwrap();
        std::fs::write(&d, signed).unwrap();
        let out = self.gpg(
            &[
                "--status-fd",
                "1",
                "--verify",
                s.to_str().unwrap(),
                d.to_str().unwrap(),
            ],
            None,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        status
            .lines()
            .find_map(|l| l.strip_prefix("[GNUPG:] VALIDSIG "))
            .map(|l| l.split(' ').next_back().unwrap().to_string())
            .filter(|_| out.status.success())
    }
}

/// A gpg-agent stopped by [`GpgHome::stop_agent`]; it goes on when this is dropped.
pub struct StoppedAgent(pub i32);

/// What the kernel says of `pid` for a failed stop: its status (signal masks, tracer), each
/// thread's state and where it waits, and its command line (is it still this home's agent?).
fn agent_diagnosis(pid: i32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let mut text = read(format!("/proc/{pid}/status"));
    text.push_str(&format!(
        "cmdline: {}\nwchan: {}\n",
        read(format!("/proc/{pid}/cmdline")).replace('\0', " "),
        read(format!("/proc/{pid}/wchan"))
    ));
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path().display().to_string();
            text.push_str(&format!(
                "task {}: {} wchan {}\n",
                task.file_name().to_string_lossy(),
                read(format!("{dir}/stat")).trim_end(),
                read(format!("{dir}/wchan"))
            ));
        }
    }
    text
}

impl Drop for StoppedAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent the test stopped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Live processes (not zombies) other than `except` whose command line names `needle`.
pub fn processes_naming(needle: &str, except: i32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != except && !cmdline.is_empty() && cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        home::stop_daemons(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The world of most tests: a sender home (Alice's secret key plus the recipients' public
/// keys) and one home per recipient holding only that recipient's secret key and Alice's
/// public key.
pub struct World {
    pub sender: GpgHome,
    pub alice: String,
    pub bob: GpgHome,
    pub bob_fpr: String,
    pub carol: GpgHome,
    pub carol_fpr: String,
}

impl World {
    pub fn new() -> Self {
        let sender = GpgHome::new();
        let alice = sender.generate("Alice <alice@example.org>");
        let bob = GpgHome::new();
        let bob_fpr = bob.generate("Bob <bob@example.org>");
        let carol = GpgHome::new();
        let carol_fpr = carol.generate("Carol <carol@example.org>");
        let alice_pub = sender.export_public(&alice);
        for r in [&bob, &carol] {
            r.import(&alice_pub);
        }
        sender.import(&bob.export_public(&bob_fpr));
        sender.import(&carol.export_public(&carol_fpr));
        World {
            sender,
            alice,
            bob,
            bob_fpr,
            carol,
            carol_fpr,
        }
    }
}

/// `text` encrypted to Bob's key (binary OpenPGP), behind `garbled` copies of its session key
/// packet with one byte changed: gpg asks gpg-agent to try each one (about 1.7 ms apiece).
pub fn behind_garbled_session_keys(world: &World, garbled: usize, text: &[u8]) -> Vec<u8> {
    let binary = world.sender.gpg(
        &["--trust-model", "always", "--encrypt", "-r", &world.bob_fpr],
        Some(text),
    );
    assert!(binary.status.success());
    let data = binary.stdout;
    // An old-format public-key encrypted session key packet with a one-byte length.
    assert_eq!(data[0], 0x84, "a PKESK first");
    let pkesk = 2 + data[1] as usize;
    let mut bad = data[..pkesk].to_vec();
    bad[pkesk - 5] ^= 0xff;
    [bad.repeat(garbled), data].concat()
}

/// `data` in ASCII armor (RFC 4880 §6) under `label` ("PGP MESSAGE"), CRLF line ends, no
/// checksum.
pub fn armor(label: &str, data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\r\n\r\n{}\r\n-----END {label}-----",
        lines.join("\r\n")
    )
}

/// The copy's bytes must be a multipart/encrypted message; returns its armored payload.
pub fn ciphertext(copy: &[u8]) -> Vec<u8> {
    sealpost::message::mime::encrypted_payload(copy).expect("copy is multipart/encrypted")
}

pub fn header_names(message: &[u8]) -> Vec<String> {
    let end = find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    String::from_utf8_lossy(&message[..end])
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect()
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    find(hay, needle.as_bytes()).is_some()
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(path),
    )
    .unwrap()
}

/// Runs `cmd` with `stdin` written to it and collects its output. The process may exit before
/// reading everything (usage errors): a broken pipe is not an error.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// The test corpus (tests/data/messages/*.eml), sorted by name.
pub fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/messages");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
}

/// A small tmpfs of its own at `path` (root only: tests that use one skip without root),
/// unmounted when dropped: a disk that fills up.
pub struct SmallFs {
    pub path: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` ("2M") at `path`, made when missing; its root has mode 0755
    /// (tmpfs's own 1777 would let anyone write there, which the queue refuses).
    pub fn mount_at(path: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs at {}", path.display());
        SmallFs {
            path: path.to_path_buf(),
        }
    }

    /// KB free.
    pub fn free_kb(&self) -> u64 {
        let out = Command::new("df")
            .args(["-k", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Fills it up to `leave_kb` KB free (a file `filler`).
    pub fn fill(&self, leave_kb: u64) {
        let size = self.free_kb().saturating_sub(leave_kb);
        let filled = Command::new("fallocate")
            .args(["-l", &format!("{size}K")])
            .arg(self.path.join("filler"))
            .status()
            .unwrap();
        assert!(filled.success());
    }

    /// Mounts it again "ro" (read-only) or "rw".
    pub fn remount(&self, mode: &str) {
        let remounted = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(
            remounted.success(),
            "remount {mode} {}",
            self.path.display()
        );
    }

    /// Gives the room back.
    pub fn unfill(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
