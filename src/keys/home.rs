//! Throwaway GnuPG homes for the demo and the tests: a short path (gpg-agent's socket path is
//! limited to about 108 bytes), mode 0700, and a gpg.conf that lets two gpg processes run at
//! once (`no-random-seed-file`: otherwise they serialise on the seed file's lock, see
//! DESIGN.md §4) and never looks keys up on the network.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The gpg.conf sealpost writes into GnuPG homes it creates.
pub const GPG_CONF: &str = "# written by sealpost\n\
# Two gpg processes may run at once: no lock on a shared random seed file.\n\
no-random-seed-file\n\
# Keys come from this keyring only; no WKD or keyserver lookups behind our back.\n\
auto-key-locate local\n\
no-auto-key-retrieve\n";

/// What makes verification or decryption in `home` (None: GnuPG's default home) unsafe: a
/// gpg.conf there that turns on `auto-key-retrieve` (also as a `keyserver-options` word) or
/// `auto-key-import`, or sets `ignore-mdc-error`. With the first two gpg would fetch an
/// unknown signer's key from a keyserver, or take the key a signature carries, while it
/// verifies, and a key anyone made with the sender's address would verify as theirs (review:
/// "signature=valid; from=match" for a key a stub keyserver served) and stay in the keyring;
/// with the third it hands out the plaintext of data without integrity protection, or whose
/// protection failed (review: stored as "encrypted"). GPGME cannot turn them off for one run.
/// The options file is read as gpg reads it: line by line, a later `no-` form undoing an
/// earlier one; every `gpg.conf` and `gpg.conf-*` (gpg reads the one of its version) is
/// looked at.
pub fn verification_problem(home: Option<&Path>) -> Option<String> {
    let home = home.map_or_else(super::default_home, Path::to_path_buf);
    let entries = std::fs::read_dir(&home).ok()?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "gpg.conf" || n.starts_with("gpg.conf-"))
        })
        .collect();
    names.sort();
    for path in names {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (mut retrieve, mut import, mut ignore_mdc) = (false, false, false);
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let (option, args) = line
                .split_once(|c: char| c.is_ascii_whitespace() || c == '=')
                .unwrap_or((line, ""));
            let option = option.trim_start_matches("--");
            match option {
                "auto-key-retrieve" => retrieve = true,
                "no-auto-key-retrieve" => retrieve = false,
                "auto-key-import" => import = true,
                "no-auto-key-import" => import = false,
                "ignore-mdc-error" => ignore_mdc = true,
                "keyserver-options" => {
                    for word in args.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
                        match word.trim_matches('"') {
                            "auto-key-retrieve" => retrieve = true,
                            "no-auto-key-retrieve" => retrieve = false,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let set: Vec<&str> = [(retrieve, "auto-key-retrieve"), (import, "auto-key-import")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if !set.is_empty() {
            return Some(format!(
                "{} sets {}: gpg would take the key of an unknown signer (from a keyserver, or \
                 from the signature itself) while verifying, and a key anyone made with a \
                 sender's address would verify as theirs; remove it (or add `no-{}`), or give \
                 sealpost a GnuPG home of its own",
                path.display(),
                set.join(" and "),
                set[0]
            ));
        }
        if ignore_mdc {
            return Some(format!(
                "{} sets ignore-mdc-error: gpg would hand out the plaintext of a message \
                 without integrity protection, which anyone on its way may have changed; \
                 remove it, or give sealpost a GnuPG home of its own",
                path.display()
            ));
        }
    }
    None
}

/// What keeps gpg-agent in `home` (None: GnuPG's default home) from serving sealpost: a
/// gpg-agent.conf there with `no-allow-loopback-pinentry` (a later `allow-loopback-pinentry`
/// undoing it). sealpost runs gpg in loopback pinentry mode, so that a key with a passphrase
/// fails at once instead of waiting for a person; such an agent refuses that mode, and every
/// signature and decryption then fails with "Not supported" (review: mail stored as
/// undecryptable at once, and outgoing mail deferred as if the key file were damaged).
pub fn agent_problem(home: Option<&Path>) -> Option<String> {
    let home = home.map_or_else(super::default_home, Path::to_path_buf);
    let path = home.join("gpg-agent.conf");
    let text = std::fs::read_to_string(&path).ok()?;
    let mut refused = false;
    for line in text.lines() {
        let line = line.trim();
        let option = line
            .split(|c: char| c.is_ascii_whitespace() || c == '=')
            .next()
            .unwrap_or("")
            .trim_start_matches("--");
        match option {
            "no-allow-loopback-pinentry" => refused = true,
            "allow-loopback-pinentry" => refused = false,
            _ => {}
        }
    }
    refused.then(|| {
        format!(
            "{} sets no-allow-loopback-pinentry: gpg-agent refuses the loopback pinentry mode \
             sealpost runs gpg in (so that a key with a passphrase fails at once instead of \
             waiting for a person), and no signature or decryption can be made; remove it \
             (then `gpgconf --kill gpg-agent`), or give sealpost a GnuPG home of its own",
            path.display()
        )
    })
}

/// Creates `dir` (mode 0700) with sealpost's gpg.conf.
pub fn prepare(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(dir.join("gpg.conf"), GPG_CONF)
}

/// A fresh short directory under /tmp, e.g. /tmp/sp-3f9a1c.
pub fn short_temp_dir(prefix: &str) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
        let dir = PathBuf::from(format!("/tmp/{prefix}-{}", hex::encode(b)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary directory name"))
}

/// Stops the gpg-agent (and other daemons) GnuPG started for `home`.
pub fn stop_daemons(home: &Path) {
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(home)
        .args(["--kill", "all"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Why the public keyring in `home` cannot be read, when that is so: a home that is missing
/// or unreadable, a keyring file that cannot be opened, a trust database gpg cannot open or
/// make (a home on a full or read-only file system, or not the user's, without one yet:
/// "Fatal: can't create lock"). gpg then lists no key and GPGME reports no error, so an
/// empty listing is checked here before it counts as "no key". A home without any keyring
/// file is readable: it has no keys (gpg makes the file). Runs gpg once, asking for
/// `address`, the one whose listing came back empty.
pub fn public_keyring_problem(home: &Path, address: &str, deadline: Duration) -> Option<String> {
    if let Some(problem) = keyring_file_problem(home) {
        return Some(problem);
    }
    // What GPGME ran: a keyring gpg can search answers "no public key" (GPG_ERR_NO_PUBKEY,
    // error code 9) as a status line; one it cannot ("Fatal: can't create lock" for the trust
    // database it needs, whatever the trust model) stops before that. A damaged keyring
    // gives another code (a truncated pubring.kbx: "System error w/o errno"; garbage:
    // "Invalid packet"), or code 9 after a damaged key block it passed over ("keydb_..."
    // on stderr): review, both were taken for "no key", and the recipient got cleartext.
    let out = gpg_listing(
        Some(home),
        &["--list-keys", &format!("<{address}>")],
        deadline,
    );
    let no_pubkey = |l: &str| {
        l.strip_prefix("[GNUPG:] ERROR keylist.getkey ")
            .and_then(|code| code.trim().parse::<u32>().ok())
            .is_some_and(|code| code & 0xffff == 9)
    };
    // gpg listed a key for the address whose user ID GPGME did not give as that address: no
    // key is used and none is taken for "no key" either (the recipient would get cleartext
    // while a key of theirs is there), but the reason says what it is, not a broken keyring.
    let listed = |out: &std::process::Output| {
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("pub:"))
    };
    match out {
        Err(e) => Some(format!("cannot run gpg: {e}")),
        Ok(out) if listed(&out) => {
            Some("gpg lists a key for this address whose user ID GPGME does not read as it".into())
        }
        Ok(out)
            if String::from_utf8_lossy(&out.stdout).lines().any(no_pubkey)
                && !String::from_utf8_lossy(&out.stderr).lines().any(is_damage) =>
        {
            whole_keyring_problem(home, deadline)
        }
        Ok(out) => Some(damage_line(&out, "gpg cannot search the keyring")),
    }
}

/// gpg's line on stderr that names the damage (else its first error, else its last line,
/// else `otherwise`). A damaged trust database ends in advice ("If that does not work, please
/// consult the manual"), after "Error: The trustdb is corrupted." (review).
fn damage_line(out: &std::process::Output, otherwise: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = |l: &&str| {
        let l = l.to_ascii_lowercase();
        l.contains("error:") || l.contains("fatal:")
    };
    stderr
        .lines()
        .find(|l| is_damage(l))
        .or_else(|| stderr.lines().find(error))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or(otherwise)
        .trim_start_matches("gpg: ")
        .to_string()
}

/// Whether a line gpg wrote on stderr says a keyring is damaged. "read error": the keyring
/// cannot be read at all (a directory in its place, EIO), and gpg still says "no public key"
/// for every address (review: cleartext to Bob, whose key was in it).
fn is_damage(line: &str) -> bool {
    // Not in a path gpg names: a home named `keydb` is no damage (review: its "unsafe
    // permissions" warning deferred every keyless recipient).
    let l = line
        .split_whitespace()
        .filter(|word| !word.contains('/'))
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    [
        "keydb",
        "keyblock",
        "invalid keyring",
        "invalid packet",
        "read error",
        // A packet gpg does not expect in a keyring (review: a tag changed by one byte).
        "skipped packet",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Whether one of the keys `listed` (none of them usable; each a fingerprint and those of
/// its primary key and subkeys as the listing gave them) carries a signature that does not
/// verify, or has a key the listing left out. One changed byte in a subkey's binding
/// signature makes gpg take the subkey for invalid while the key block still reads (review:
/// signed cleartext to a recipient whose key was in the keyring): gpg's own check
/// (`--check-sigs`; `-` in a signature's validity field) of those keys only. A listing cut
/// short (gpg killed while it wrote it) gives a key without its encryption subkey, which the
/// check lists (review). Cut between two keys of the address (an old revoked key of it
/// listed first), the search left out a key that can encrypt: a second listing of the address
/// must hold no such key the first did not (review).
pub fn unusable_keys_problem(
    home: &Path,
    address: &str,
    listed: &[(String, Vec<String>)],
    deadline: Duration,
) -> Option<String> {
    if listed.is_empty() {
        return None;
    }
    let mut args = vec!["--check-sigs", "--"];
    args.extend(listed.iter().map(|(fpr, _)| fpr.as_str()));
    let fingerprints: Vec<&str> = listed.iter().map(|(fpr, _)| fpr.as_str()).collect();
    match gpg_listing(Some(home), &args, deadline) {
        Err(e) => Some(format!("cannot run gpg: {e}")),
        Ok(out) => {
            let listing = String::from_utf8_lossy(&out.stdout);
            let bad = listing
                .lines()
                .filter(|l| l.starts_with("sig:") || l.starts_with("rev:"))
                .any(|l| l.split(':').nth(1) == Some("-"));
            if bad {
                return Some(format!(
                    "a signature of the key {} does not verify: the keyring is damaged",
                    fingerprints.join(", ")
                ));
            }
            let left_out = listing
                .lines()
                .filter(|l| l.starts_with("fpr:"))
                .filter_map(|l| l.split(':').nth(9))
                .find(|fpr| !listed.iter().any(|(_, keys)| keys.iter().any(|k| k == fpr)));
            if let Some(left_out) = left_out {
                return Some(format!(
                    "the listing of the key {} left out its key {left_out}: gpg's answer was \
                     cut short",
                    fingerprints.join(", ")
                ));
            }
            key_left_out(home, address, listed, deadline)
        }
    }
}

/// A key of `address` that can encrypt, in a listing of the address of its own, that the
/// search's listing (`listed`) did not hold: that one was cut short.
fn key_left_out(
    home: &Path,
    address: &str,
    listed: &[(String, Vec<String>)],
    deadline: Duration,
) -> Option<String> {
    let patterns = super::ops::address_patterns(address);
    let mut args = vec!["--list-keys", "--"];
    args.extend(patterns.iter().map(String::as_str));
    let out = match gpg_listing(Some(home), &args, deadline) {
        Err(e) => return Some(format!("cannot run gpg: {e}")),
        Ok(out) => out,
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    let wanted = crate::rewrite::policy::canonical_address(address);
    // One key: its `pub` line, then its `fpr`, `uid`, `sub` lines up to the next `pub`.
    let mut keys: Vec<Vec<&str>> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("pub:") {
            keys.push(Vec::new());
        }
        if let Some(key) = keys.last_mut() {
            key.push(line);
        }
    }
    keys.iter().find_map(|key| {
        let field = |line: &str, n: usize| line.split(':').nth(n).unwrap_or("").to_string();
        // Validity: revoked, expired, invalid; capabilities of the whole key: `E`.
        let usable = |line: &str| !matches!(field(line, 1).as_str(), "r" | "e" | "i" | "d");
        let primary = key[0];
        let fpr = key
            .iter()
            .find(|l| l.starts_with("fpr:"))
            .map(|l| field(l, 9))?;
        let its_address = key.iter().filter(|l| l.starts_with("uid:")).any(|l| {
            let uid = field(l, 9).replace("\\x3a", ":");
            let addr = uid
                .rsplit_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map_or(uid.as_str(), |(addr, _)| addr);
            usable(l) && crate::rewrite::policy::canonical_address(addr) == wanted
        });
        let can_encrypt = usable(primary) && field(primary, 11).contains('E');
        let known = listed
            .iter()
            .any(|(f, keys)| *f == fpr || keys.contains(&fpr));
        (its_address && can_encrypt && !known).then(|| {
            format!(
                "the listing of the keys of {address} left out the key {fpr}, which can \
                 encrypt: gpg's answer was cut short"
            )
        })
    })
}

/// Why the public keyring as a whole cannot be read: a search by address passes over a key
/// block damaged inside (its index entry intact, its packets not), and answers "no public
/// key" for the address whose key it was (review: Bob got signed cleartext). Every key block
/// is read by an export, its output thrown away (no signatures checked: 5 ms for 300 keys); an intact
/// keyring is remembered until its files change, so the export runs once per change.
pub fn whole_keyring_problem(home: &Path, deadline: Duration) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Stamp = Vec<Option<(std::time::SystemTime, u64, u64)>>;
    static INTACT: Mutex<Option<HashMap<PathBuf, Stamp>>> = Mutex::new(None);
    let stamp = || -> Stamp {
        ["pubring.kbx", "pubring.gpg"]
            .iter()
            .map(|name| {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(home.join(name)).ok()?;
                Some((meta.modified().ok()?, meta.len(), meta.ino()))
            })
            .collect()
    };
    let intact = || INTACT.lock().unwrap_or_else(|p| p.into_inner());
    let before = stamp();
    if intact().as_ref().and_then(|known| known.get(home)) == Some(&before) {
        return None;
    }
    if let Some(problem) = keyring_framing_problem(home)
        .or_else(|| ownertrust_without_keys(home, deadline))
        .or_else(|| keys_vanished(home, deadline))
    {
        return Some(problem);
    }
    let out = match gpg_within(Some(home), &["--export"], deadline, false) {
        Err(e) => return Some(format!("cannot run gpg: {e}")),
        Ok(out) => out,
    };
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).lines().any(is_damage) {
        return Some(damage_line(
            &out,
            "gpg cannot read every key of the keyring",
        ));
    }
    remember_keys(home);
    // Remembered only when the files did not change while they were read.
    if stamp() == before {
        intact()
            .get_or_insert_with(HashMap::new)
            .insert(home.to_path_buf(), before);
    }
    None
}

/// Whether the public keyring's key blocks are whole OpenPGP packets (RFC 4880 §4.2) of the
/// kinds a keyring holds, from start to end. In GnuPG 1's keyring format (`pubring.gpg`) gpg
/// reads a file cut short inside a packet up to the cut and reports nothing (GnuPG 2.2.40:
/// `--export` exits 0), and the key cut in two seems to have no user ID or no encryption
/// subkey: its owner would get signed cleartext. In either format, one header byte changed
/// into an indeterminate length made gpg skip every packet after it as one compressed packet,
/// and a tag changed into another made it drop that packet, each without an error (review).
/// A keyring cut exactly between two packets, or a keybox between two keys, cannot be told
/// from an intact one (README, "GnuPG").
fn keyring_framing_problem(home: &Path) -> Option<String> {
    let keybox = openpgp_keybox(&home.join("pubring.kbx"));
    let path = home.join(if keybox { "pubring.kbx" } else { "pubring.gpg" });
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return keyring_gone(home),
        Err(e) => return Some(format!("{} cannot be read: {e}", path.display())),
    };
    // gpg tells the formats apart by their content: a `pubring.gpg` that gpg made for
    // `--keyring` is a keybox (review: read as packets, it was damage, and every keyless
    // recipient was deferred for good).
    let (at, what) = if keybox || starts_as_keybox(&data) {
        keybox_damage(&data)
    } else {
        packets_damage(&data, 0, data.len())
    }?;
    Some(format!(
        "{} is damaged: {what} at byte {at} of {}",
        path.display(),
        data.len()
    ))
}

/// Whether `data` begins with a keybox's header record ("KBXf").
fn starts_as_keybox(data: &[u8]) -> bool {
    data.len() >= 12 && data[4] == 1 && &data[8..12] == b"KBXf"
}

/// Why a home without a public keyring gpg reads has lost it: gpg begins every keybox it
/// makes with its header, so an empty `pubring.kbx` was cut to nothing (every recipient would
/// seem to have no key, and get cleartext: review, with `sign = false`).
fn keyring_gone(home: &Path) -> Option<String> {
    let keybox = home.join("pubring.kbx");
    std::fs::metadata(&keybox)
        .is_ok_and(|meta| meta.len() == 0)
        .then(|| {
            format!(
                "{} is empty, without the header gpg writes first: the keyring was cut to \
                 nothing",
                keybox.display()
            )
        })
}

/// Whether the public keyring gpg reads holds no key: none there, an empty file, or a keybox
/// of its header (and deleted or X.509 records) alone.
fn keyring_holds_no_key(home: &Path) -> bool {
    let keybox = home.join("pubring.kbx");
    if openpgp_keybox(&keybox) {
        let Ok(data) = std::fs::read(&keybox) else {
            return false;
        };
        return !keybox_records(&data).any(|kind| kind == 2);
    }
    match std::fs::read(home.join("pubring.gpg")) {
        Ok(data) if starts_as_keybox(&data) => !keybox_records(&data).any(|kind| kind == 2),
        Ok(data) => data.is_empty(),
        Err(_) => true,
    }
}

/// The types of a keybox's records, as far as their lengths hold.
fn keybox_records(data: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let b = data.get(at..at + 5)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        // A record of fewer than 5 bytes ends it (framing is checked by `keybox_damage`).
        at = if len < 5 { data.len() } else { at + len };
        Some(b[4])
    })
}

/// The homes whose public keyring held keys when this process looked (at the start of its
/// key service, and at each reading of the whole keyring).
static HELD_KEYS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Notes that `home`'s public keyring holds keys, when it does: should it hold none later,
/// they were lost ([`keys_vanished`]).
pub fn remember_keys(home: &Path) {
    if keyring_holds_no_key(home) {
        return;
    }
    let mut held = HELD_KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if !held.iter().any(|h| h == home) {
        held.push(home.to_path_buf());
    }
}

/// A public keyring that holds no key where keys were: this process saw keys in it, or the
/// backup gpg keeps of a keybox (`pubring.kbx~`, the file before its last change) holds some.
/// It was removed, or replaced by an empty one, and gpg makes a new one at its next use: every
/// recipient would seem to have no key, and get cleartext (review: a home of public keys alone
/// on an MX, no owner trust to miss, and bob's mail stored in clear after `rm pubring.kbx`).
/// Keys deleted on purpose, every one of them, defer mail until sealpost starts again (and,
/// with a backup holding keys, until that is removed): rare, and said in the reason.
fn keys_vanished(home: &Path, deadline: Duration) -> Option<String> {
    if !keyring_holds_no_key(home) {
        return None;
    }
    let seen = HELD_KEYS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|h| h == home);
    let backup = home.join("pubring.kbx~");
    let backed_up = openpgp_keybox(&backup)
        && std::fs::read(&backup).is_ok_and(|data| keybox_records(&data).any(|kind| kind == 2));
    // Keys in a keyring gpg.conf names (`keyring`, `no-default-keyring`) are keys too: the
    // default keybox and its backup are then left from before (review: every keyless
    // recipient deferred for good).
    if (seen || backed_up) && gpg_lists_keys(home, deadline) != Some(false) {
        return None;
    }
    if seen {
        Some(format!(
            "the public keyring of {} holds no key, where it held keys before: it was removed \
             or emptied, or gpg is writing a new one (if every key was deleted on purpose, \
             start sealpost again)",
            home.display()
        ))
    } else if backed_up {
        Some(format!(
            "the public keyring of {} holds no key, while gpg's backup of it, {}, holds keys: \
             it was removed or emptied (if every key was deleted on purpose, remove the backup)",
            home.display(),
            backup.display()
        ))
    } else {
        None
    }
}

/// Whether gpg lists any public key in `home` (every keyring it reads, gpg.conf's too); None
/// when gpg cannot be run.
fn gpg_lists_keys(home: &Path, deadline: Duration) -> Option<bool> {
    let out = gpg_listing(Some(home), &["--list-keys"], deadline).ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("pub:")),
    )
}

/// Whether `home` holds no public key: none in its default keyring, and, asked when that one
/// has none, none that gpg lists.
pub fn holds_no_public_key(home: &Path, deadline: Duration) -> bool {
    keyring_holds_no_key(home) && gpg_lists_keys(home, deadline) == Some(false)
}

/// A keyring that holds no key while the trust database holds an ownertrust (gpg makes the
/// owner's own keys ultimately trusted, and clears a key's when it deletes the key): it was
/// cut to its header, or removed (gpg then makes an empty one at its next use). Every
/// recipient would seem to have no key and get cleartext, and with no key to sign with, the
/// mail would be refused for good (review).
fn ownertrust_without_keys(home: &Path, deadline: Duration) -> Option<String> {
    if !home.join("trustdb.gpg").exists() || !keyring_holds_no_key(home) {
        return None;
    }
    // Keys in a keyring gpg.conf names (`keyring`, `no-default-keyring`) are keys too
    // (review: such a home was taken for one that lost its keys).
    match gpg_listing(Some(home), &["--list-keys"], deadline) {
        Err(e) => return Some(format!("cannot run gpg: {e}")),
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("pub:")) =>
        {
            return None
        }
        Ok(_) => {}
    }
    match gpg_listing(Some(home), &["--export-ownertrust"], deadline) {
        Err(e) => Some(format!("cannot run gpg: {e}")),
        Ok(out) => {
            let listing = String::from_utf8_lossy(&out.stdout);
            let trusted = listing
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(':'))
                .count();
            (trusted > 0).then(|| {
                format!(
                    "the public keyring of {} holds no key, while its trustdb.gpg holds the \
                     ownertrust of {trusted}: the keyring was cut or removed",
                    home.display()
                )
            })
        }
    }
}

/// In a keybox: each record (a length, then its type) inside the file; each OpenPGP record
/// ending in the SHA-1 of the rest of it, as gpg writes it (gpg itself does not check it: one
/// byte changed in a record's user ID table, or a record length swallowing the next record,
/// made a key unfindable without a word, review), and its key block (offset and length at
/// bytes 8 and 12) inside the record and whole packets; an X.509 record (gpgsm's) must hold a
/// DER certificate there, and no record may be of a type gpg does not write. The header and
/// empty (deleted) records are not looked into. A checksum whose first four bytes are zero is
/// one of GnuPG before 2.1 (an MD5 after them), which was never checked: passed over.
fn keybox_damage(data: &[u8]) -> Option<(usize, &'static str)> {
    let be = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")) as usize)
    };
    let mut at = 0;
    while at < data.len() {
        let Some(len) = be(at).filter(|&len| len >= 5 && at + len <= data.len()) else {
            return Some((at, "a keybox record cut short or overwritten"));
        };
        match data[at + 4] {
            // Empty (gpg marks a deleted key so, its bytes left in place: a record changed
            // into one cannot be told from it), and the header, first.
            0 => {}
            1 if at == 0 => {}
            // gpgsm's certificate: DER, a SEQUENCE (an OpenPGP key block's record whose type
            // was changed into this one would hide the key: review).
            3 => {
                let image = be(at + 8)
                    .zip(be(at + 12))
                    .filter(|&(offset, image_len)| offset + image_len <= len && image_len > 0);
                if image.is_none_or(|(offset, _)| data[at + offset] != 0x30) {
                    return Some((at, "a keybox record of X.509 that holds no certificate"));
                }
            }
            2 => {
                // Its fixed fields (16 bytes) and the checksum (20) at least.
                if len < 36 {
                    return Some((at, "a keybox record whose checksum does not match"));
                }
                let (body, checksum) = data[at..at + len].split_at(len - 20);
                let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
                if checksum[..4] != [0; 4] && checksum != sha1.as_ref() {
                    return Some((at, "a keybox record whose checksum does not match"));
                }
                let block = be(at + 8).zip(be(at + 12));
                let Some((offset, block_len)) =
                    block.filter(|&(offset, block_len)| offset + block_len <= len)
                else {
                    return Some((at, "a keybox record whose key block lies outside it"));
                };
                if let Some(damage) = packets_damage(data, at + offset, at + offset + block_len) {
                    return Some(damage);
                }
            }
            _ => return Some((at, "a keybox record of a kind gpg does not write")),
        }
        at += len;
    }
    None
}

/// The first place in `data[start..end]` that is not a whole packet of a kind a keyring holds.
fn packets_damage(data: &[u8], start: usize, end: usize) -> Option<(usize, &'static str)> {
    let data = &data[..end];
    let mut at = start;
    while at < end {
        let first = data[at];
        let (tag, definite) = if first & 0x40 == 0 {
            ((first >> 2) & 0x0F, first & 0x03 != 3)
        } else {
            let length = data.get(at + 1).copied().unwrap_or(0);
            (first & 0x3F, !(224..=254).contains(&length))
        };
        // Public key, user ID, user attribute, subkey, signature, and gpg's trust packets.
        if first & 0x80 == 0 || ![6, 13, 17, 14, 2, 12].contains(&tag) {
            return Some((at, "no packet a keyring holds"));
        }
        if !definite {
            return Some((at, "a packet of no stated length"));
        }
        match crate::message::parse::packet(data, at) {
            Some((_, next)) => at = next,
            None => return Some((at, "no whole OpenPGP packet (cut short or overwritten)")),
        }
    }
    None
}

/// Whether `path` is a keybox gpg takes for its public keyring: the header blob names the
/// format ("KBXf") and has the OpenPGP flag. gpgsm makes a `pubring.kbx` without that flag,
/// and gpg then keeps using `pubring.gpg` beside it, as it does beside an empty file (review).
fn openpgp_keybox(path: &Path) -> bool {
    let mut header = [0u8; 12];
    std::fs::File::open(path)
        .and_then(|mut file| io::Read::read_exact(&mut file, &mut header))
        .is_ok_and(|()| header[4] == 1 && &header[8..12] == b"KBXf" && header[7] & 0x02 != 0)
}

fn keyring_file_problem(home: &Path) -> Option<String> {
    if let Err(e) = std::fs::read_dir(home) {
        return Some(format!(
            "the GnuPG home {} cannot be read: {e}",
            home.display()
        ));
    }
    for name in ["pubring.kbx", "pubring.gpg"] {
        let path = home.join(name);
        // Opened and read from: a directory opens too, and a failing disk only fails a read.
        let read = std::fs::File::open(&path).and_then(|mut file| {
            if !file.metadata()?.is_file() {
                return Err(io::Error::other("it is no regular file"));
            }
            io::Read::read(&mut file, &mut [0u8; 64]).map(|_| ())
        });
        match read {
            Ok(()) => return None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Some(format!("{} cannot be read: {e}", path.display())),
        }
    }
    None
}

/// The deadline of a keyring check made inside a GnuPG worker, whose own operation the
/// service ends (the worker with it) at `gnupg.timeout_secs`.
pub const WORKER_LISTING_DEADLINE: Duration = Duration::from_secs(600);

/// gpg's colon listing with status lines on stdout: runs gpg with `args` and returns what it
/// wrote; a gpg that has not finished by `deadline`
/// (waiting for a gpg-agent that hangs) is killed and the run is an error. Without one,
/// `deliver` waited 611 s for a stopped agent, past Postfix's limit for a mailbox_command
/// (review).
fn gpg_listing(
    home: Option<&Path>,
    args: &[&str],
    deadline: Duration,
) -> std::io::Result<std::process::Output> {
    gpg_within(home, args, deadline, true)
}

/// Why `fingerprint` cannot sign in `home`: no such key, none of it that may sign now
/// (expired, revoked), or no secret key file for it. Read from the public listing and the
/// secret key files, so no gpg-agent is started (`sealpost check` starts nothing).
pub fn signing_key_problem(home: &Path, fingerprint: &str, deadline: Duration) -> Option<String> {
    let out = match gpg_listing(
        Some(home),
        &[
            "--no-autostart",
            "--with-keygrip",
            "--list-keys",
            fingerprint,
        ],
        deadline,
    ) {
        Err(e) => return Some(format!("cannot run gpg: {e}")),
        Ok(out) => out,
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    if !listing.lines().any(|l| l.starts_with("pub:")) {
        return Some(format!("no key {fingerprint} in {}", home.display()));
    }
    // Each pub or sub line is followed by its fpr and grp lines: the keygrips of the keys
    // that may sign now (their own capabilities, field 12 in lower case; not expired,
    // revoked, invalid or disabled, field 2).
    let mut signing = false;
    let mut keygrips = Vec::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&("pub" | "sub")) => {
                let validity = fields.get(1).copied().unwrap_or_default();
                let capabilities = fields.get(11).copied().unwrap_or_default();
                signing = capabilities.contains('s') && !matches!(validity, "e" | "r" | "i" | "d");
            }
            Some(&"grp") if signing => {
                keygrips.extend(fields.get(9).map(|g| g.to_string()));
                signing = false;
            }
            _ => {}
        }
    }
    if keygrips.is_empty() {
        return Some(format!(
            "key {fingerprint} has no key that may sign now (expired or revoked)"
        ));
    }
    let secret = |grip: &String| {
        home.join("private-keys-v1.d")
            .join(format!("{grip}.key"))
            .exists()
    };
    (!keygrips.iter().any(secret)).then(|| {
        format!(
            "no secret key for {fingerprint} in {}",
            home.join("private-keys-v1.d").display()
        )
    })
}

/// gpg with `args` and a deadline (see [`gpg_listing`]); with `keep_stdout` false, what it
/// writes on stdout goes to /dev/null, opened here: gpg given `--output /dev/null` removes
/// that file when the command fails, and the next process to write there makes it a file.
fn gpg_within(
    home: Option<&Path>,
    args: &[&str],
    deadline: Duration,
    keep_stdout: bool,
) -> std::io::Result<std::process::Output> {
    let mut cmd = Command::new("gpg");
    if let Some(h) = home {
        cmd.arg("--homedir").arg(h);
    }
    let mut child = cmd
        .args(["--batch", "--no-tty", "--with-colons", "--status-fd", "1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(if keep_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn()?;
    // Read on threads of their own, so that neither pipe fills while gpg is waited for.
    fn drained<R: io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    }
    let stdout = drained(child.stdout.take());
    let stderr = drained(child.stderr.take());
    let until = std::time::Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("gpg did not answer within {} s", deadline.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Asks gpg whether the secret keyring can be read at all (it needs gpg-agent). Returns the
/// problem gpg reports, or None when the keyring answered. Used only after a lookup found no
/// secret key, to tell "there is none" from "cannot tell now".
pub fn secret_keyring_problem(home: Option<&Path>, deadline: Duration) -> Option<String> {
    let out = gpg_listing(home, &["--list-secret-keys"], deadline);
    match out {
        Err(e) => Some(format!("cannot run gpg: {e}")),
        Ok(out) => {
            let status = String::from_utf8_lossy(&out.stdout);
            if status.lines().any(|l| l.starts_with("[GNUPG:] ERROR")) || !out.status.success() {
                // The agent's trouble, else the keyring's damage, else gpg's last word
                // (review: "gpg could not read the secret keyring" for a damaged pubring.kbx,
                // and for a trust database gpg could not make on a full file system, gpg's
                // own line left out).
                let stderr = String::from_utf8_lossy(&out.stderr);
                let why = stderr
                    .lines()
                    .rev()
                    .find(|l| l.contains("agent"))
                    .or_else(|| stderr.lines().find(|l| is_damage(l)))
                    .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or("gpg could not read the secret keyring")
                    .trim_start_matches("gpg: ")
                    .to_string();
                Some(why)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A home holding `keyring` as pubring.gpg and, when given, `keybox` as pubring.kbx.
    fn home_with(keyring: &[u8], keybox: Option<&[u8]>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pubring.gpg"), keyring).unwrap();
        if let Some(keybox) = keybox {
            std::fs::write(dir.path().join("pubring.kbx"), keybox).unwrap();
        }
        dir
    }

    /// The first 12 bytes of a keybox's header blob, with `flags` (0x02: OpenPGP).
    fn keybox_header(flags: u8) -> Vec<u8> {
        let mut h = vec![0, 0, 0, 32, 1, 1, 0, flags];
        h.extend_from_slice(b"KBXf");
        h.resize(32, 0);
        h
    }

    // Old-format headers: 0x80 | tag << 2 | length type (0: one length byte).
    const KEY: [u8; 5] = [0x98, 0x03, 4, 0, 0];
    const TRUST: [u8; 4] = [0xb0, 0x02, 0, 0];

    #[test]
    fn a_keyring_of_whole_packets_passes() {
        let keyring = [&KEY[..], &TRUST, &[0xb4, 0x01, b'a'], &[0xc2, 0x01, 4]].concat();
        assert_eq!(
            keyring_framing_problem(home_with(&keyring, None).path()),
            None
        );
        assert_eq!(keyring_framing_problem(home_with(b"", None).path()), None);
    }

    #[test]
    fn a_cut_an_open_length_or_a_strange_tag_is_damage() {
        for (keyring, what) in [
            ([&KEY[..], &TRUST[..3]].concat(), "no whole OpenPGP packet"),
            // Length type 3: to the end of the file, as gpg reads a compressed packet.
            ([&KEY[..], &[0x9b, 4, 0]].concat(), "no stated length"),
            // New format, a partial body length (0xe0..0xfe).
            ([&KEY[..], &[0xcd, 0xe1, 0, 0]].concat(), "no stated length"),
            // Tag 8 (compressed data) and tag 15: no keyring holds them.
            (
                [&KEY[..], &[0xa0, 0x01, 0]].concat(),
                "no packet a keyring holds",
            ),
            (
                [&KEY[..], &[0xbc, 0x01, 0]].concat(),
                "no packet a keyring holds",
            ),
            ([&KEY[..], &[0x00]].concat(), "no packet a keyring holds"),
        ] {
            let home = home_with(&keyring, None);
            let problem = keyring_framing_problem(home.path()).expect(what);
            assert!(problem.contains(what), "{problem}");
            assert!(problem.contains("at byte 5 of"), "{problem}");
        }
    }

    /// A keybox: the header record (OpenPGP flag), then one record of `kind` holding `block`
    /// and ending in its SHA-1, as gpg writes them.
    fn keybox(kind: u8, block: &[u8]) -> Vec<u8> {
        let mut data = keybox_header(0x02);
        let mut record = Vec::new();
        let len = (16 + block.len() + 20) as u32;
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&[kind, 1, 0, 0]);
        record.extend_from_slice(&16u32.to_be_bytes());
        record.extend_from_slice(&(block.len() as u32).to_be_bytes());
        record.extend_from_slice(block);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &record);
        record.extend_from_slice(sha1.as_ref());
        data.extend_from_slice(&record);
        data
    }

    #[test]
    fn a_keybox_record_is_looked_into_as_gpg_reads_it() {
        let good = [&KEY[..], &TRUST, &[0xb4, 0x01, b'a']].concat();
        let home = |data: &[u8]| home_with(b"", Some(data));
        assert_eq!(
            keyring_framing_problem(home(&keybox(2, &good)).path()),
            None
        );
        // gpgsm's X.509 records are not OpenPGP packets; a deleted key's record is left as
        // it was, marked empty.
        assert_eq!(
            keyring_framing_problem(home(&keybox(3, b"\x30\x82")).path()),
            None
        );
        assert_eq!(
            keyring_framing_problem(home(&keybox(0, &good)).path()),
            None
        );
        for (data, what) in [
            (
                keybox(2, &[&KEY[..], &[0xa0, 0x01, 0]].concat()),
                "no packet a keyring holds",
            ),
            (
                keybox(2, &[&KEY[..], &[0x9b, 4, 0]].concat()),
                "no stated length",
            ),
            (
                keybox(2, &[&KEY[..], &TRUST[..3]].concat()),
                "no whole OpenPGP packet",
            ),
            (keybox(2, &good)[..40].to_vec(), "record cut short"),
            // The record's type changed: an OpenPGP key in a record of X.509, or of a type
            // gpg never writes (review: the key was passed over, and Bob got cleartext).
            (keybox(3, &good), "X.509 that holds no certificate"),
            (keybox(6, &good), "a kind gpg does not write"),
            (keybox(1, &good), "a kind gpg does not write"),
            (
                {
                    // One byte of the record changed (here in its flags): the checksum.
                    let mut data = keybox(2, &good);
                    data[32 + 7] ^= 1;
                    data
                },
                "checksum does not match",
            ),
        ] {
            let problem = keyring_framing_problem(home(&data).path()).expect(what);
            assert!(problem.contains(what), "{problem}");
            assert!(problem.contains("pubring.kbx is damaged"), "{problem}");
        }
    }

    /// The line that says what is wrong, not gpg's advice after it (review: "If that does not
    /// work, please consult the manual" was the whole reason given).
    #[test]
    fn the_reason_given_is_gpgs_error_not_its_advice() {
        use std::os::unix::process::ExitStatusExt;
        let out = |stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(2 << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let trustdb = "gpg: checking the trustdb\ngpg: Error: The trustdb is corrupted.\n\
                       gpg: You may try to re-create the trustdb using the commands:\n\
                       gpg: If that does not work, please consult the manual\n";
        assert_eq!(
            damage_line(&out(trustdb), "x"),
            "Error: The trustdb is corrupted."
        );
        let keyring = "gpg: error: x\ngpg: keydb_search failed: Invalid packet\n";
        assert_eq!(
            damage_line(&out(keyring), "x"),
            "keydb_search failed: Invalid packet"
        );
        assert_eq!(damage_line(&out("gpg: last\n"), "x"), "last");
        assert!(!is_damage(
            "gpg: WARNING: unsafe permissions on homedir '/srv/keydb'"
        ));
        assert!(!is_damage(
            "gpg: /srv/KeyBlocks/trustdb.gpg: trustdb created"
        ));
        assert!(is_damage(
            "gpg: keyblock resource '/h/pubring.kbx': Invalid keyring"
        ));
        assert_eq!(damage_line(&out(""), "nothing said"), "nothing said");
    }

    /// A keybox cut to nothing: damage. A home that never had a keyring is a home without
    /// keys (a keyring removed is told by the trust database: tests/cli.rs).
    #[test]
    fn a_keybox_cut_to_nothing_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(keyring_framing_problem(dir.path()), None);
        assert!(keyring_holds_no_key(dir.path()));
        std::fs::write(dir.path().join("pubring.kbx"), b"").unwrap();
        let problem = keyring_framing_problem(dir.path()).expect("empty");
        assert!(problem.contains("pubring.kbx is empty"), "{problem}");
        // Beside GnuPG 1's keyring, gpg reads that one.
        std::fs::write(dir.path().join("pubring.gpg"), KEY).unwrap();
        assert_eq!(keyring_framing_problem(dir.path()), None);
        assert!(!keyring_holds_no_key(dir.path()));
        std::fs::write(dir.path().join("pubring.kbx"), keybox_header(0x02)).unwrap();
        assert!(keyring_holds_no_key(dir.path()));
        std::fs::write(dir.path().join("pubring.kbx"), keybox(2, &KEY)).unwrap();
        assert!(!keyring_holds_no_key(dir.path()));
    }

    #[test]
    fn only_an_openpgp_keybox_beside_it_is_used_instead() {
        let cut = [&KEY[..], &TRUST[..3]].concat();
        let openpgp = home_with(&cut, Some(&keybox_header(0x02)));
        assert_eq!(keyring_framing_problem(openpgp.path()), None);
        // gpgsm's keybox (no OpenPGP flag) and an empty file: gpg reads pubring.gpg.
        for keybox in [keybox_header(0), Vec::new()] {
            let home = home_with(&cut, Some(&keybox));
            assert!(keyring_framing_problem(home.path()).is_some());
        }
    }
}
