//! The outgoing core against real GnuPG: per-recipient copies, policies, unusable keys,
//! failures, header protection and address validation. Copies are checked with stock gpg in
//! each recipient's own GnuPG home, the way a recipient's MUA would.

mod common;

use std::time::Duration;

use common::*;
use sealpost::keys::{Resolution, SignerKey, Unusable};
use sealpost::message::mime::signed_parts;
use sealpost::rewrite::{Copy, Decision, EncryptedForm, Envelope, Mode, Outcome, Policy, Rewriter};

const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.org>\r\n\
Cc: Dave <dave@example.net>\r\n\
Bcc: Carol <carol@example.org>\r\n\
Subject: The secret subject line\r\n\
Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <abc-123@example.org>\r\n\
Keywords: internal\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Hello Bob, the plan is on. Grüße\r\n";

fn envelope() -> Envelope {
    Envelope {
        id: "T1".into(),
        sender: "alice@example.org".into(),
        recipients: vec![
            "bob@example.org".into(),
            "dave@example.net".into(),
            "carol@example.org".into(),
        ],
    }
}

async fn run(world: &World, policy: Policy, env: &Envelope, raw: &[u8]) -> Outcome {
    let rewriter = Rewriter::new(world.sender.service(Duration::from_secs(20)), policy);
    rewriter
        .rewrite(env, raw.to_vec())
        .await
        .expect("message accepted")
}

fn copies(outcome: Outcome) -> Vec<Copy> {
    match outcome {
        Outcome::Copies(c) => c,
        Outcome::Refused(r) => panic!("refused: {r}"),
    }
}

/// The copies of MESSAGE for `envelope()` made in `home` with the default policy.
async fn copies_in(home: &GpgHome) -> Vec<Copy> {
    let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), Policy::default());
    copies(
        rewriter
            .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    )
}

/// The copy for `recipient`.
fn copy_to<'a>(copies: &'a [Copy], recipient: &str) -> &'a Copy {
    copies
        .iter()
        .find(|c| c.recipient == recipient)
        .unwrap_or_else(|| panic!("no copy for {recipient}"))
}

/// Decrypts `copy` in `home` with stock gpg, checks it names exactly one recipient key (the
/// one given) and that the inner multipart/signed verifies with Alice's key. Returns the
/// signed payload.
fn open_encrypted(world: &World, home: &GpgHome, fpr: &str, copy: &[u8]) -> Vec<u8> {
    let (plain, enc_to, _, status) = home
        .decrypt(&ciphertext(copy))
        .expect("decrypts with the recipient's key");
    assert_eq!(enc_to.len(), 1, "exactly one recipient key: {status}");
    assert!(
        home.encryption_subkeys(fpr).contains(&enc_to[0]),
        "encrypted to the recipient's own subkey"
    );
    let (signed, sig) = signed_parts(&plain).expect("plaintext is multipart/signed");
    assert_eq!(
        home.verify_detached(&signed, &sig).as_deref(),
        Some(world.alice.as_str()),
        "signature by Alice verifies"
    );
    signed
}

/// A Bcc after a Date whose zone is a letter at the end of the line (RFC 5322 §4.3's
/// obsolete `Z`; `UT` with LF line ends, as a PHP mail() script writes them) is removed like
/// any other: mail-parser read such a date together with the next field, and every copy
/// carried the Bcc inside the Date field (found by fuzzing).
#[tokio::test]
async fn a_bcc_after_a_date_in_an_obsolete_zone_is_in_no_copy() {
    let world = World::new();
    let crlf = MESSAGE
        .replace("Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n", "")
        .replace("Bcc:", "Date: Sun, 22 Nov 2026 10:00:00 Z\r\nBcc:");
    let lf = crlf.replace(" Z\r\n", " UT\r\n").replace("\r\n", "\n");
    for raw in [crlf, lf] {
        let copies = copies(run(&world, Policy::default(), &envelope(), raw.as_bytes()).await);
        assert_eq!(copies.len(), 3);
        for copy in &copies {
            let message = copy.message.as_ref().unwrap();
            assert!(!contains(message, "carol@example.org"), "{raw:?}");
            assert!(!header_names(message).contains(&"bcc".to_string()));
            let inner = match &copy.decision {
                Decision::Encrypted { fingerprint } => {
                    let home = if *fingerprint == world.bob_fpr {
                        &world.bob
                    } else {
                        &world.carol
                    };
                    Some(open_encrypted(&world, home, fingerprint, message))
                }
                _ => None,
            };
            if let Some(inner) = inner {
                assert!(!contains(&inner, "carol@example.org"), "{raw:?}");
                assert!(contains(&inner, "Date: Sun, 22 Nov 2026 10:00:00 "));
            }
        }
    }
}

#[tokio::test]
async fn opportunistic_to_cc_bcc_gives_three_distinct_copies() {
    let world = World::new();
    let copies = copies(run(&world, Policy::default(), &envelope(), MESSAGE.as_bytes()).await);
    assert_eq!(copies.len(), 3);
    let by = |a: &str| copy_to(&copies, a);
    let (bob, dave, carol) = (
        by("bob@example.org"),
        by("dave@example.net"),
        by("carol@example.org"),
    );
    assert_eq!(
        bob.decision,
        Decision::Encrypted {
            fingerprint: world.bob_fpr.clone()
        }
    );
    assert_eq!(
        carol.decision,
        Decision::Encrypted {
            fingerprint: world.carol_fpr.clone()
        }
    );
    assert_eq!(
        dave.decision,
        Decision::Signed {
            reason: "no public key".into()
        }
    );

    let bob_copy = bob.message.as_ref().unwrap();
    let carol_copy = carol.message.as_ref().unwrap();
    let dave_copy = dave.message.as_ref().unwrap();

    // Each encrypted copy opens only with its own recipient's key.
    let bob_inner = open_encrypted(&world, &world.bob, &world.bob_fpr, bob_copy);
    let carol_inner = open_encrypted(&world, &world.carol, &world.carol_fpr, carol_copy);
    assert!(
        world.carol.decrypt(&ciphertext(bob_copy)).is_none(),
        "Carol cannot read Bob's copy"
    );
    assert!(
        world.bob.decrypt(&ciphertext(carol_copy)).is_none(),
        "Bob cannot read Carol's copy"
    );

    // Dave's copy: multipart/signed that verifies with stock gpg.
    let (signed, sig) = signed_parts(dave_copy).expect("Dave's copy is multipart/signed");
    let dave_home = GpgHome::new();
    dave_home.import(&world.sender.export_public(&world.alice));
    assert_eq!(
        dave_home.verify_detached(&signed, &sig).as_deref(),
        Some(world.alice.as_str())
    );
    assert!(contains(dave_copy, "Subject: The secret subject line"));

    // No Bcc anywhere, and Carol's address appears in no copy (she was only a Bcc recipient).
    for (copy, inner) in [
        (bob_copy, Some(&bob_inner)),
        (carol_copy, Some(&carol_inner)),
        (dave_copy, None),
    ] {
        assert!(!header_names(copy).contains(&"bcc".to_string()));
        assert!(!contains(copy, "carol@example.org"));
        if let Some(inner) = inner {
            assert!(!header_names(inner).contains(&"bcc".to_string()));
            assert!(!contains(inner, "carol@example.org"));
        }
    }
    // Every copy keeps the original Message-ID; the three copies are distinct messages.
    for c in [bob_copy, carol_copy, dave_copy] {
        assert!(contains(c, "Message-ID: <abc-123@example.org>\r\n"));
        assert!(contains(c, "Autocrypt: addr=alice@example.org; keydata="));
    }
    assert_ne!(bob_copy, carol_copy);
}

/// Autocrypt speaks for the From address alone: not for the envelope sender of a message
/// without a From field, nor beside a From of two mailboxes, though Alice's key signs both
/// (review: both carried alice's Autocrypt header).
#[tokio::test]
async fn autocrypt_speaks_only_for_a_sole_from_address() {
    let world = World::new();
    for from in [
        "",
        "From: alice@example.org, zed@example.net\r\nSender: alice@example.org\r\n",
        "From: Alice <alice@example.org>\r\n",
    ] {
        let message = format!(
            "{from}To: bob@example.org\r\nSubject: s\r\nMessage-ID: <ac@example.org>\r\n\r\nhi\r\n"
        );
        let copies = copies(run(&world, Policy::default(), &envelope(), message.as_bytes()).await);
        let dave = copy_to(&copies, "dave@example.net")
            .message
            .as_ref()
            .unwrap();
        let bob = copy_to(&copies, "bob@example.org")
            .message
            .as_ref()
            .unwrap();
        let inner = open_encrypted(&world, &world.bob, &world.bob_fpr, bob);
        let alone = !from.is_empty() && !from.contains(',');
        for (copy, what) in [
            (dave, "signed copy"),
            (bob, "encrypted copy"),
            (&inner, "inside"),
        ] {
            assert_eq!(
                contains(copy, "Autocrypt: addr=alice@example.org; keydata="),
                alone,
                "{what} of {from:?}"
            );
        }
    }
}

/// The Autocrypt key data is the five packets Autocrypt Level 1 names: the user ID of the
/// From address alone and one encryption subkey, not the sender's other identities and
/// subkeys (review: the whole key went, a second user ID with it). The key it makes still
/// imports, and a message encrypted to it opens with the sender's key.
#[tokio::test]
async fn autocrypt_key_data_is_the_from_address_and_one_encryption_subkey() {
    let world = World::new();
    let sender = &world.sender;
    let fpr = world.alice.as_str();
    for args in [
        &[
            "--quick-add-uid",
            fpr,
            "Alice Private <alice@private.example>",
        ][..],
        &["--quick-add-key", fpr, "ed25519", "sign", "never"],
        &["--quick-add-key", fpr, "cv25519", "encr", "never"],
    ] {
        let out = sender.gpg(args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let copies = copies(run(&world, Policy::default(), &envelope(), MESSAGE.as_bytes()).await);
    let dave = copy_to(&copies, "dave@example.net")
        .message
        .as_ref()
        .unwrap();
    let text = String::from_utf8_lossy(dave).replace("\r\n ", "");
    let keydata = text
        .split("Autocrypt: addr=alice@example.org; keydata=")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .expect("an Autocrypt header");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(keydata.replace(' ', ""))
        .unwrap();
    let reader = GpgHome::new();
    let listed = reader.gpg(&["--with-colons", "--show-keys"], Some(&key));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let uids: Vec<&str> = listed.lines().filter(|l| l.starts_with("uid:")).collect();
    let subs: Vec<&str> = listed.lines().filter(|l| l.starts_with("sub:")).collect();
    assert_eq!(uids.len(), 1, "{listed}");
    assert!(uids[0].contains("alice@example.org"), "{listed}");
    assert_eq!(subs.len(), 1, "{listed}");
    assert_eq!(subs[0].split(':').nth(11), Some("e"), "{listed}");
    // Whole and valid: it imports, and what is encrypted to it opens with Alice's key.
    reader.import(&key);
    let sealed = reader.encrypt_to(fpr, b"to the key from the header\n");
    let (plain, _, _, status) = sender.decrypt(&sealed).expect("opens with Alice's key");
    assert_eq!(plain, b"to the key from the header\n", "{status}");
}

#[tokio::test]
async fn encrypted_copies_hide_the_subject_outside_the_ciphertext() {
    let world = World::new();
    let copies = copies(run(&world, Policy::default(), &envelope(), MESSAGE.as_bytes()).await);
    let bob = copy_to(&copies, "bob@example.org");
    let copy = bob.message.as_ref().unwrap();
    assert!(
        !contains(copy, "secret subject"),
        "no original Subject outside the ciphertext"
    );
    assert!(
        !contains(copy, "Keywords"),
        "Keywords removed from the outer header (hcp_baseline)"
    );
    assert!(contains(copy, "\r\nSubject: [...]\r\n"));
    let inner = open_encrypted(&world, &world.bob, &world.bob_fpr, copy);
    assert!(
        contains(&inner, "Subject: The secret subject line\r\n"),
        "inner part carries the real Subject"
    );
    assert!(contains(&inner, "HP-Outer: Subject: [...]\r\n"));
    assert!(contains(&inner, "hp=\"cipher\""));
    assert!(contains(&inner, "Keywords: internal"));
}

#[tokio::test]
async fn encrypt_only_rejects_the_keyless_recipient_with_5_7_1() {
    let world = World::new();
    let policy = Policy {
        mode: Mode::EncryptOnly,
        ..Policy::default()
    };
    let copies = copies(run(&world, policy, &envelope(), MESSAGE.as_bytes()).await);
    let dave = copy_to(&copies, "dave@example.net");
    match &dave.decision {
        Decision::Rejected { reply } => {
            assert_eq!((reply.code, reply.status), (550, "5.7.1"));
            assert!(reply.text.contains("no public key"), "{reply}");
        }
        other => panic!("Dave should be rejected, got {other:?}"),
    }
    assert!(dave.message.is_none());
    for (c, home, fpr) in [
        ("bob@example.org", &world.bob, &world.bob_fpr),
        ("carol@example.org", &world.carol, &world.carol_fpr),
    ] {
        let copy = copies.iter().find(|x| x.recipient == c).unwrap();
        open_encrypted(&world, home, fpr, copy.message.as_ref().unwrap());
    }
}

/// With Postfix's recipient delimiter set, bob+lists (delivered to bob) has bob's key when it
/// has none of its own, and dave+x the encrypt-only rule of dave's address (review: both
/// got cleartext). Without the delimiter, bob+lists is an address of its own.
#[tokio::test]
async fn an_address_extension_has_the_address_key_and_rule() {
    let world = World::new();
    let env = Envelope {
        recipients: vec!["bob+lists@example.org".into(), "dave+x@example.net".into()],
        ..envelope()
    };
    let mut policy = Policy {
        recipient_delimiter: "+".into(),
        ..Policy::default()
    };
    policy
        .addresses
        .insert("dave@example.net".into(), Mode::EncryptOnly);
    let got = copies(run(&world, policy.clone(), &env, MESSAGE.as_bytes()).await);
    let bob = copy_to(&got, "bob+lists@example.org");
    open_encrypted(
        &world,
        &world.bob,
        &world.bob_fpr,
        bob.message.as_ref().unwrap(),
    );
    let dave = copy_to(&got, "dave+x@example.net");
    assert!(dave.message.is_none(), "{:?}", dave.decision);
    assert_eq!(dave.decision.name(), "rejected");
    policy.recipient_delimiter.clear();
    let got = copies(run(&world, policy, &env, MESSAGE.as_bytes()).await);
    assert_eq!(got[0].decision.name(), "signed");
}

#[tokio::test]
async fn all_or_nothing_refuses_the_whole_message() {
    let world = World::new();
    let policy = Policy {
        mode: Mode::AllOrNothing,
        ..Policy::default()
    };
    match run(&world, policy, &envelope(), MESSAGE.as_bytes()).await {
        Outcome::Refused(reply) => {
            assert_eq!((reply.code, reply.status), (550, "5.7.1"));
            assert!(reply.text.contains("dave@example.net"), "{reply}");
        }
        Outcome::Copies(c) => panic!("expected a refusal, got {} copies", c.len()),
    }
}

/// A key whose user ID is an address alone with capitals (`Mixed@Example.org`, as
/// `gpg --quick-gen-key` makes it) is found to encrypt to, to sign with and for its user IDs.
/// GPGME names no email for such a user ID: the key was never matched, and since gpg had
/// listed it, the keyring was taken for broken (451 for the whole message; review).
#[tokio::test]
async fn a_bare_address_user_id_with_capitals_is_found() {
    let world = World::new();
    let fpr = world.sender.generate("Mixed@Example.org");
    let service = world.sender.service(Duration::from_secs(20));
    let r = service.resolve("mixed@example.org").await.unwrap();
    assert_eq!(
        r,
        Resolution::Usable {
            fingerprint: fpr.clone(),
            others: 0
        }
    );
    assert_eq!(
        service.signer("MIXED@example.org").await.unwrap(),
        Some(fpr.clone())
    );
    assert_eq!(
        service.signer_key(&fpr).await.unwrap(),
        SignerKey {
            primary: fpr.clone(),
            addresses: vec!["mixed@example.org".into()]
        }
    );
}

#[tokio::test]
async fn expired_revoked_and_sign_only_keys_count_as_no_key() {
    let world = World::new();
    let other = GpgHome::new();
    let expired = other.generate_expired("Eve <expired@example.org>");
    let revoked = other.generate_revoked("Rob <revoked@example.org>");
    let sign_only = other.generate_sign_only("Sid <signonly@example.org>");
    let sub_expired = other.generate_encryption_subkey_expired("Sue <subexpired@example.org>");
    let sub_revoked = other.generate_encryption_subkey_revoked("Sam <subrevoked@example.org>");
    for fpr in [&expired, &revoked, &sign_only, &sub_expired, &sub_revoked] {
        world.sender.import(&other.export_public(fpr));
    }
    let service = world.sender.service(Duration::from_secs(20));
    let cases = [
        (
            "expired@example.org",
            &expired,
            Unusable::Expired,
            "expired",
        ),
        (
            "revoked@example.org",
            &revoked,
            Unusable::Revoked,
            "revoked",
        ),
        (
            "signonly@example.org",
            &sign_only,
            Unusable::NoEncryptionSubkey,
            "no encryption-capable subkey",
        ),
        // Said as what it is (review: "no encryption-capable subkey" for both).
        (
            "subexpired@example.org",
            &sub_expired,
            Unusable::EncryptionSubkeyGone {
                expired: true,
                revoked: false,
            },
            "encryption subkey expired",
        ),
        (
            "subrevoked@example.org",
            &sub_revoked,
            Unusable::EncryptionSubkeyGone {
                expired: false,
                revoked: true,
            },
            "encryption subkey revoked",
        ),
    ];
    for (addr, fpr, why, text) in cases {
        let r = service.resolve(addr).await.unwrap();
        assert_eq!(
            r,
            Resolution::NoKey {
                refused: vec![(fpr.to_string(), why)]
            },
            "{addr}"
        );
        assert!(r.reason().contains(text), "{}", r.reason());
    }

    // Under encrypt-only each is rejected with that reason; opportunistic signs instead.
    let env = Envelope {
        id: "T2".into(),
        sender: "alice@example.org".into(),
        recipients: cases.iter().map(|c| c.0.to_string()).collect(),
    };
    let policy = Policy {
        mode: Mode::EncryptOnly,
        ..Policy::default()
    };
    for (copy, (_, _, _, text)) in copies(run(&world, policy, &env, MESSAGE.as_bytes()).await)
        .iter()
        .zip(cases)
    {
        match &copy.decision {
            Decision::Rejected { reply } => assert!(reply.text.contains(text), "{reply}"),
            other => panic!("{}: expected rejection, got {other:?}", copy.recipient),
        }
    }
    // The signed cleartext copy says why too (review: "no usable key" alone).
    for (copy, (_, fpr, _, text)) in
        copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await)
            .iter()
            .zip(cases)
    {
        match &copy.decision {
            Decision::Signed { .. } => {
                let detail = copy.decision.detail();
                assert!(
                    detail.contains(&format!("key {fpr} {text}"))
                        && detail.ends_with(": signed cleartext"),
                    "{detail}"
                );
            }
            other => panic!("{}: expected signed, got {other:?}", copy.recipient),
        }
    }
}

/// The key chosen among several for one address: one the keyring's owner certified before a
/// newer one nobody checked (as gpg chooses), none that the owner marked as not to be trusted,
/// and none whose only encryption subkey was made in the future, which gpg refuses (review:
/// the newest won in each case; the last was deferred for good).
#[tokio::test]
async fn certified_keys_win_and_distrusted_or_future_subkeys_are_passed_over() {
    let world = World::new();
    let service = || world.sender.service(Duration::from_secs(20));
    // Dave's key, certified by Alice (ultimately trusted here), then a newer one for him.
    let other = GpgHome::new();
    let certified = other.generate_at("Dave <dave@example.org>", "20240101T000000");
    world.sender.import(&other.export_public(&certified));
    let sign = world.sender.gpg(
        &[
            "-u",
            &world.alice,
            "--quick-lsign-key",
            &certified,
            "dave@example.org",
        ],
        None,
    );
    assert!(sign.status.success(), "{sign:?}");
    let newer_home = GpgHome::new();
    let newer = newer_home.generate_at("Dave <dave@example.org>", "20250101T000000");
    world.sender.import(&newer_home.export_public(&newer));
    let found = service().resolve("dave@example.org").await.unwrap();
    assert_eq!(
        found,
        Resolution::Usable {
            fingerprint: certified.clone(),
            others: 1
        }
    );
    // Erin's newest key is marked never to be trusted (a TOFU policy of bad); her older one
    // is used, and without it there is no key.
    let erin_home = GpgHome::new();
    let older = erin_home.generate_at("Erin <erin@example.org>", "20240101T000000");
    let bad = erin_home.generate_at("Erin <erin@example.org>", "20250101T000000");
    world.sender.import(&erin_home.export_public(&older));
    world.sender.import(&erin_home.export_public(&bad));
    let policy = world.sender.gpg(
        &["--trust-model", "tofu+pgp", "--tofu-policy", "bad", &bad],
        None,
    );
    assert!(policy.status.success(), "{policy:?}");
    std::fs::write(world.sender.dir.join("gpg.conf"), "trust-model tofu+pgp\n").unwrap();
    let found = service().resolve("erin@example.org").await.unwrap();
    assert_eq!(
        found,
        Resolution::Usable {
            fingerprint: older.clone(),
            others: 0
        }
    );
    // Frank's only key has its encryption subkey made in 2035 (a wrong clock then): no key.
    let frank_home = GpgHome::new();
    let frank = frank_home.generate_sign_only("Frank <frank@example.org>");
    let add = frank_home.gpg(
        &[
            "--faked-system-time",
            "20350101T000000",
            "--quick-add-key",
            &frank,
            "cv25519",
            "encr",
        ],
        None,
    );
    assert!(add.status.success(), "{add:?}");
    world.sender.import(&frank_home.export_public(&frank));
    let found = service().resolve("frank@example.org").await.unwrap();
    assert_eq!(
        found,
        Resolution::NoKey {
            refused: vec![(frank.clone(), Unusable::NoEncryptionSubkey)]
        }
    );
}

/// The signing key is chosen as a recipient's key is: the most valid before the newest (a
/// newer secret key imported for the address does not sign before the owner's own, which
/// encrypt_to_self also takes). A sender whose own key cannot encrypt gets no copy of her own
/// rather than one to a stranger's key for her address (review of e3adeea).
#[tokio::test]
async fn the_signer_and_the_self_copy_are_the_senders_own_key() {
    let world = World::new();
    // Zed's own key, made here (ultimately trusted), and a newer secret key for his address
    // made elsewhere and imported (validity unknown).
    let own = world
        .sender
        .generate_at("Zed <zed@example.org>", "20240101T000000");
    let other = GpgHome::new();
    let newer = other.generate_at("Zed <zed@example.org>", "20250101T000000");
    let secret = other.gpg(&["--armor", "--export-secret-keys", &newer], None);
    assert!(secret.status.success());
    world.sender.import(&secret.stdout);
    let service = world.sender.service(Duration::from_secs(20));
    let signer = service.signer("zed@example.org").await.unwrap();
    assert_eq!(signer.as_deref(), Some(own.as_str()));

    // Sid's own key signs only; a stranger's key for his address is in the keyring.
    let sid = world.sender.generate_sign_only("Sid <sid@example.org>");
    let stranger = GpgHome::new();
    let theirs = stranger.generate("Sid <sid@example.org>");
    world.sender.import(&stranger.export_public(&theirs));
    let policy = Policy {
        encrypt_to_self: true,
        ..Policy::default()
    };
    let env = Envelope {
        id: "T9".into(),
        sender: "sid@example.org".into(),
        recipients: vec!["bob@example.org".into()],
    };
    let raw = MESSAGE.replace("alice@example.org", "sid@example.org");
    let copies = copies(run(&world, policy, &env, raw.as_bytes()).await);
    let copy = copies[0]
        .message
        .as_ref()
        .unwrap_or_else(|| panic!("{:?} (signer {sid})", copies[0].decision));
    let (_, enc_to, _, status) = world.bob.decrypt(&ciphertext(copy)).unwrap();
    let foreign = stranger.encryption_subkeys(&theirs);
    assert!(
        !enc_to
            .iter()
            .any(|k| foreign.iter().any(|s| s.ends_with(k.as_str()))),
        "{enc_to:?} {foreign:?}: {status}"
    );
}

/// A sender whose only keys cannot sign (a signing subkey expired, a key revoked) is refused
/// as before, with each key and why.
#[tokio::test]
async fn a_sender_whose_keys_cannot_sign_is_told_why() {
    let world = World::new();
    // Dan's key made in 2020 with a signing subkey that expired a day later; Rob's revoked.
    let at = ["--faked-system-time", "20200101T000000"];
    let dan = "Dan <dan@example.org>";
    let out = world.sender.gpg(
        &[
            &at[..],
            &["--quick-gen-key", dan, "ed25519", "cert", "never"],
        ]
        .concat(),
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let dan_fpr = world.sender.fingerprint(dan);
    let out = world.sender.gpg(
        &[
            &at[..],
            &["--quick-add-key", &dan_fpr, "ed25519", "sign", "1d"],
        ]
        .concat(),
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let rob_fpr = world.sender.generate_revoked("Rob <rob@example.org>");
    for (sender, why) in [
        (
            "dan@example.org",
            format!("key {dan_fpr} signing subkey expired"),
        ),
        ("rob@example.org", format!("key {rob_fpr} revoked")),
    ] {
        let env = Envelope {
            id: "T11".into(),
            sender: sender.into(),
            recipients: vec!["bob@example.org".into(), "dave@example.net".into()],
        };
        let raw = MESSAGE.replace("alice@example.org", sender);
        for copy in copies(run(&world, Policy::default(), &env, raw.as_bytes()).await) {
            match &copy.decision {
                // Refused as before, and now said why (review: "no usable secret key" alone
                // for a key `gpg -K` lists).
                Decision::Rejected { reply } => assert!(
                    reply.text.contains(&format!(
                        "no usable secret key to sign as {sender} ({why}) and no default"
                    )),
                    "{reply}"
                ),
                other => panic!("{}: {other:?}", copy.recipient),
            }
        }
    }
}

/// A sender key with a passphrase (none cached) defers the copies with that reason, not
/// gpg's "General error" (review).
#[tokio::test]
async fn a_sender_key_with_a_passphrase_is_said_to_have_one() {
    let world = World::new();
    let made = world.sender.gpg(
        &[
            "--passphrase",
            "secret words",
            "--quick-gen-key",
            "Pat <pat@example.org>",
            "future-default",
            "default",
            "never",
        ],
        None,
    );
    assert!(made.status.success(), "{made:?}");
    sealpost::keys::home::stop_daemons(&world.sender.dir);
    let env = Envelope {
        id: "T10".into(),
        sender: "pat@example.org".into(),
        recipients: vec!["bob@example.org".into(), "dave@example.net".into()],
    };
    let raw = MESSAGE.replace("alice@example.org", "pat@example.org");
    for copy in copies(run(&world, Policy::default(), &env, raw.as_bytes()).await) {
        match &copy.decision {
            Decision::Deferred { reply } => {
                assert!(reply.text.contains("has a passphrase"), "{reply}")
            }
            other => panic!("{}: {other:?}", copy.recipient),
        }
    }
}

#[tokio::test]
async fn a_lookup_past_its_deadline_defers_and_produces_no_copy() {
    let world = World::new();
    // A deadline no gpg operation can meet: every lookup fails by timeout.
    let rewriter = Rewriter::new(
        world.sender.service(Duration::from_nanos(1)),
        Policy::default(),
    );
    let copies = copies(
        rewriter
            .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    );
    assert_eq!(copies.len(), 3);
    // The milter asks before building any copy, so that a deferral sends nothing.
    match rewriter
        .prepare(&envelope(), MESSAGE.as_bytes().to_vec())
        .await
        .unwrap()
    {
        sealpost::rewrite::Prepared::Copies(planned) => {
            let (_, reply) = planned.deferred().expect("known before any copy is built");
            assert_eq!((reply.code, reply.status), (451, "4.7.0"));
        }
        sealpost::rewrite::Prepared::Refused(reply) => panic!("refused: {reply}"),
    }
    for c in copies {
        match c.decision {
            Decision::Deferred { reply } => {
                assert_eq!((reply.code, reply.status), (451, "4.7.0"));
                assert!(reply.text.contains("did not finish"), "{reply}");
            }
            other => panic!(
                "{}: expected a temporary failure, got {other:?}",
                c.recipient
            ),
        }
        assert!(
            c.message.is_none(),
            "no copy, certainly not a cleartext one"
        );
    }
}

#[tokio::test]
async fn a_dead_agent_defers_every_copy_and_sends_nothing_in_clear() {
    let world = World::new();
    // Stop the agent and make sure GnuPG cannot start a new one: signing needs it.
    sealpost::keys::home::stop_daemons(&world.sender.dir);
    let conf = world.sender.dir.join("gpg.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("agent-program /bin/false\n");
    std::fs::write(&conf, text).unwrap();
    for policy in [
        Policy::default(),
        Policy {
            mode: Mode::EncryptOnly,
            ..Policy::default()
        },
    ] {
        let strict = policy.mode == Mode::EncryptOnly;
        let copies = copies(run(&world, policy, &envelope(), MESSAGE.as_bytes()).await);
        for c in copies {
            match &c.decision {
                Decision::Deferred { reply } => assert!(reply.is_temporary(), "{reply}"),
                // Dave has no public key at all: under encrypt-only that is a final answer
                // that needs no agent.
                Decision::Rejected { reply } if strict && c.recipient == "dave@example.net" => {
                    assert_eq!(reply.status, "5.7.1")
                }
                Decision::Rejected { reply } => {
                    panic!("{}: rejected instead of deferred: {reply}", c.recipient)
                }
                other => panic!(
                    "{}: expected a temporary failure, got {other:?}",
                    c.recipient
                ),
            }
            assert!(c.message.is_none());
        }
    }
}

#[tokio::test]
async fn invalid_recipient_addresses_get_5_1_3() {
    let world = World::new();
    let env = Envelope {
        id: "T3".into(),
        sender: "alice@example.org".into(),
        recipients: vec![
            "bob@example.org".into(),
            "not an address".into(),
            "x@@example.org".into(),
        ],
    };
    let copies = copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await);
    assert!(matches!(copies[0].decision, Decision::Encrypted { .. }));
    for c in &copies[1..] {
        match &c.decision {
            Decision::Rejected { reply } => assert_eq!((reply.code, reply.status), (553, "5.1.3")),
            other => panic!("{}: {other:?}", c.recipient),
        }
    }
}

#[tokio::test]
async fn combined_form_and_encrypt_to_self() {
    let world = World::new();
    let policy = Policy {
        encrypted_form: EncryptedForm::Combined,
        encrypt_to_self: true,
        ..Policy::default()
    };
    let env = Envelope {
        id: "T4".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into()],
    };
    let copies = copies(run(&world, policy, &env, MESSAGE.as_bytes()).await);
    let copy = copies[0].message.as_ref().unwrap();
    let (plain, enc_to, good, status) = world.bob.decrypt(&ciphertext(copy)).unwrap();
    assert!(good, "combined signature verifies: {status}");
    assert_eq!(enc_to.len(), 2, "recipient and sender: {status}");
    assert!(contains(&plain, "Subject: The secret subject line"));
    // The sender can read her own copy too.
    assert!(world.sender.decrypt(&ciphertext(copy)).is_some());

    // A newer public key for her address, anyone's, is not the one her copies go to: hers,
    // whose secret key is here, is (review: the newest public key got every copy).
    let stranger = GpgHome::new();
    let theirs = stranger.generate_at("Alice <alice@example.org>", "20300101T000000");
    world.sender.import(&stranger.export_public(&theirs));
    let policy = Policy {
        encrypt_to_self: true,
        ..Policy::default()
    };
    let again = self::copies(run(&world, policy, &env, MESSAGE.as_bytes()).await);
    let copy = again[0].message.as_ref().unwrap();
    let (_, enc_to, _, status) = world.bob.decrypt(&ciphertext(copy)).unwrap();
    let own = world.sender.encryption_subkeys(&world.alice);
    let foreign = stranger.encryption_subkeys(&theirs);
    assert!(
        enc_to
            .iter()
            .any(|k| own.iter().any(|s| s.ends_with(k.as_str()))),
        "{enc_to:?} {own:?}: {status}"
    );
    assert!(
        !enc_to
            .iter()
            .any(|k| foreign.iter().any(|s| s.ends_with(k.as_str()))),
        "{enc_to:?} {foreign:?}"
    );
}

/// The session key `home` decrypts `copy` with (gpg's SESSION_KEY status line).
fn session_key(home: &GpgHome, copy: &[u8]) -> String {
    let out = home.gpg(
        &["--status-fd", "1", "--show-session-key", "--decrypt"],
        Some(&ciphertext(copy)),
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    status
        .lines()
        .find_map(|l| l.strip_prefix("[GNUPG:] SESSION_KEY "))
        .unwrap_or_else(|| panic!("no session key: {status}"))
        .to_string()
}

/// Bob's and Carol's copies of one message, encrypted to self, in `form`.
async fn two_encrypted_copies(world: &World, form: EncryptedForm) -> (Vec<u8>, Vec<u8>) {
    let policy = Policy {
        encrypted_form: form,
        encrypt_to_self: true,
        ..Policy::default()
    };
    let env = Envelope {
        id: "T5".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
    };
    let copies = copies(run(world, policy, &env, MESSAGE.as_bytes()).await);
    let of = |a: &str| {
        let copy = copy_to(&copies, a);
        copy.message.clone().expect("an encrypted copy")
    };
    (of("bob@example.org"), of("carol@example.org"))
}

/// Checks that `copy` opens with `home`'s key (`fpr`), names exactly that key and the
/// sender's own, and not the other recipient's (`other`, who cannot open it).
fn names_only_its_keys(world: &World, home: &GpgHome, fpr: &str, other: &GpgHome, copy: &[u8]) {
    let (plain, enc_to, _, status) = home.decrypt(&ciphertext(copy)).expect("opens");
    assert!(contains(&plain, "Subject: The secret subject line"));
    assert_eq!(enc_to.len(), 2, "the recipient and the sender: {status}");
    let own = home.encryption_subkeys(fpr);
    let sender = world.sender.encryption_subkeys(&world.alice);
    for key in &enc_to {
        assert!(
            own.iter().chain(&sender).any(|k| k.ends_with(key.as_str())),
            "{key} is neither the recipient's nor the sender's: {status}"
        );
    }
    assert!(other.decrypt(&ciphertext(copy)).is_none());
}

/// Several encrypted copies of one message are one encryption (one gpg process, where one
/// per copy cost up to three times as much): each copy keeps only its own keys' session key
/// packets, so it still names no other recipient, and all copies have one session key.
#[tokio::test]
async fn encrypted_copies_of_one_message_share_one_encryption() {
    let world = World::new();
    for form in [EncryptedForm::Combined, EncryptedForm::SignedThenEncrypted] {
        let (bob, carol) = two_encrypted_copies(&world, form).await;
        names_only_its_keys(&world, &world.bob, &world.bob_fpr, &world.carol, &bob);
        names_only_its_keys(&world, &world.carol, &world.carol_fpr, &world.bob, &carol);
        assert_eq!(
            session_key(&world.sender, &bob),
            session_key(&world.sender, &carol),
            "{form:?}"
        );
    }
    let (bob, _) = two_encrypted_copies(&world, EncryptedForm::Combined).await;
    let (_, _, good, status) = world.bob.decrypt(&ciphertext(&bob)).unwrap();
    assert!(good, "the combined signature verifies: {status}");
}

/// A recipient whose key prefers 3DES (set with gpg's setpref) does not share the others'
/// encryption, which would give every copy the cipher gpg ranks best over all the keys
/// (review: 3DES for everyone, from a key listing only 3DES, and from one listing 3DES before
/// AES-256): that copy is encrypted on its own, with 3DES as before, and the others still
/// share one encryption, with AES-256.
#[tokio::test]
async fn a_key_preferring_old_ciphers_gets_an_encryption_of_its_own() {
    let world = World::new();
    // Carol and Dave change their keys' preferences (a new self-signature, made with the
    // secret key) and the sender gets the new keys.
    let dave = GpgHome::new();
    let dave_fpr = dave.generate("Dave <dave@example.net>");
    for (home, fpr, prefs) in [
        (&world.carol, &world.carol_fpr, "3DES"),
        (&dave, &dave_fpr, "3DES AES256 AES"),
    ] {
        let script = format!("setpref {prefs} SHA256 ZLIB\ny\nsave\n");
        let out = home.gpg(
            &["--command-fd", "0", "--edit-key", fpr],
            Some(script.as_bytes()),
        );
        assert!(out.status.success(), "{out:?}");
        world.sender.import(&home.export_public(fpr));
    }
    let erin = GpgHome::new();
    let erin_fpr = erin.generate("Erin <erin@example.net>");
    world.sender.import(&erin.export_public(&erin_fpr));
    let policy = Policy {
        encrypt_to_self: true,
        ..Policy::default()
    };
    let env = Envelope {
        id: "T6".into(),
        sender: "alice@example.org".into(),
        recipients: vec![
            "bob@example.org".into(),
            "carol@example.org".into(),
            "dave@example.net".into(),
            "erin@example.net".into(),
        ],
    };
    let copies = copies(run(&world, policy, &env, MESSAGE.as_bytes()).await);
    let key_of = |a: &str| {
        let copy = copy_to(&copies, a);
        session_key(&world.sender, copy.message.as_ref().unwrap())
    };
    let (bob, carol, dave_key, erin_key) = (
        key_of("bob@example.org"),
        key_of("carol@example.org"),
        key_of("dave@example.net"),
        key_of("erin@example.net"),
    );
    assert_eq!(bob, erin_key, "bob and erin share one encryption");
    assert!(bob.starts_with("9:"), "AES-256: {bob}");
    assert!(carol.starts_with("2:"), "3DES, carol's own: {carol}");
    // Dave's own: with the sender's key (encrypt_to_self) AES-256 ranks best for the two.
    assert!(
        dave_key != bob && dave_key != carol,
        "dave's own: {dave_key}"
    );
}

/// A key can carry another's encryption subkey, bound by its owner without the other's
/// secrets (tests/graft_subkey.py). Mallory's key carrying Bob's subkey, expired or valid
/// beside his own newer one, must not give Mallory's copy Bob's session key packet when Bob is
/// a (Bcc) recipient of the same message: matched by every subkey of Mallory's key, the split
/// put it there, naming Bob to Mallory, and Bob's key opened Mallory's copy (review).
#[tokio::test]
async fn a_key_carrying_another_recipients_subkey_gets_no_packet_of_theirs() {
    let world = World::new();
    for expire in ["1", "0"] {
        let mallory = GpgHome::new();
        let mallory_fpr = mallory.generate("Mallory <mallory@example.com>");
        let listing = mallory.gpg(
            &["--with-colons", "--with-keygrip", "-K", &mallory_fpr],
            None,
        );
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        let grip = listing
            .lines()
            .find(|l| l.starts_with("grp:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("the primary key's keygrip")
            .to_string();
        let dir = &mallory.dir;
        let own = dir.join("own.gpg");
        let other = dir.join("other.gpg");
        let grafted = dir.join("grafted.gpg");
        std::fs::write(&own, mallory.gpg(&["--export", &mallory_fpr], None).stdout).unwrap();
        std::fs::write(
            &other,
            world.bob.gpg(&["--export", &world.bob_fpr], None).stdout,
        )
        .unwrap();
        let made = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/graft_subkey.py"
            ))
            .arg(dir)
            .arg(&grip)
            .args([&own, &other])
            .arg(expire)
            .arg(&grafted)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        world.sender.import(&std::fs::read(&grafted).unwrap());
        let env = Envelope {
            id: "T7".into(),
            sender: "alice@example.org".into(),
            recipients: vec!["mallory@example.com".into(), "bob@example.org".into()],
        };
        let copies = copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await);
        let of = |a: &str| {
            let copy = copy_to(&copies, a);
            copy.message.clone().expect("an encrypted copy")
        };
        let theirs = of("mallory@example.com");
        let (_, enc_to, _, status) = mallory.decrypt(&ciphertext(&theirs)).expect("opens");
        assert_eq!(enc_to.len(), 1, "{expire}: {status}");
        assert!(
            world.bob.decrypt(&ciphertext(&theirs)).is_none(),
            "{expire}: Bob's key opens Mallory's copy"
        );
        assert!(world
            .bob
            .decrypt(&ciphertext(&of("bob@example.org")))
            .is_some());
        // Mallory's grafted key goes before the next round.
        let out = world
            .sender
            .gpg(&["--batch", "--yes", "--delete-keys", &mallory_fpr], None);
        assert!(out.status.success(), "{out:?}");
    }
}

/// A home whose gpg.conf hides every key ID (throw-keyids) or adds a key to every message
/// (encrypt-to): gpg's message to several keys cannot be taken apart by recipient, and each
/// copy is encrypted on its own, as gpg.conf says.
#[tokio::test]
async fn copies_are_encrypted_each_on_its_own_when_gpg_conf_says_more() {
    let world = World::new();
    let conf = world.sender.dir.join("gpg.conf");
    let original = std::fs::read_to_string(&conf).unwrap_or_default();
    std::fs::write(&conf, format!("{original}throw-keyids\n")).unwrap();
    let (bob, carol) = two_encrypted_copies(&world, EncryptedForm::Combined).await;
    for (home, copy, other) in [
        (&world.bob, &bob, &world.carol),
        (&world.carol, &carol, &world.bob),
    ] {
        let (_, enc_to, good, status) = home.decrypt(&ciphertext(copy)).expect("opens");
        assert!(good, "{status}");
        assert!(enc_to.iter().all(|k| k == "0000000000000000"), "{status}");
        assert!(other.decrypt(&ciphertext(copy)).is_none());
    }
    assert_ne!(
        session_key(&world.sender, &bob),
        session_key(&world.sender, &carol)
    );

    let dave = GpgHome::new();
    let dave_fpr = dave.generate("Dave <dave@example.net>");
    world.sender.import(&dave.export_public(&dave_fpr));
    // In gpg.conf, then in gpg.conf-2.2.40, which gpg 2.2.40 reads instead (review: that one
    // was not looked at, and dave's key was left out of the copies).
    let versioned = world.sender.dir.join("gpg.conf-2.2.40");
    for (file, other) in [(&conf, &versioned), (&versioned, &conf)] {
        let _ = std::fs::remove_file(other);
        std::fs::write(file, format!("{original}encrypt-to {dave_fpr}\n")).unwrap();
        let (bob, carol) = two_encrypted_copies(&world, EncryptedForm::SignedThenEncrypted).await;
        for (home, copy) in [(&world.bob, &bob), (&world.carol, &carol)] {
            let (_, enc_to, _, status) = home.decrypt(&ciphertext(copy)).expect("opens");
            assert_eq!(
                enc_to.len(),
                3,
                "recipient, sender and encrypt-to: {status}"
            );
            assert!(dave.decrypt(&ciphertext(copy)).is_some());
        }
        assert_ne!(
            session_key(&world.sender, &bob),
            session_key(&world.sender, &carol)
        );
    }
    // A recipient's own key as encrypt-to, in the versioned file: gpg puts it in every copy,
    // so Carol opens Bob's copy; taken apart, hers would have been in her copy only.
    std::fs::write(&conf, &original).unwrap();
    let carol_fpr = world.carol_fpr.clone();
    std::fs::write(&versioned, format!("{original}encrypt-to {carol_fpr}\n")).unwrap();
    let (bob, carol) = two_encrypted_copies(&world, EncryptedForm::Combined).await;
    assert!(world.carol.decrypt(&ciphertext(&bob)).is_some());
    assert_ne!(
        session_key(&world.sender, &bob),
        session_key(&world.sender, &carol)
    );
    let _ = std::fs::remove_file(&versioned);
}

/// A gpg.conf `group` named like Bob's fingerprint (the name sealpost gives gpg for his key)
/// would have gpg encrypt to the group's key instead: Bob's copy is deferred, never made for
/// the group's key (review: it went to Erin's key alone, logged as encrypted to Bob's), in
/// either case of the name and with 0x before it; Carol's copy is made as usual.
#[tokio::test]
async fn a_group_named_like_a_key_defers_that_copy() {
    let world = World::new();
    let erin = GpgHome::new();
    let erin_fpr = erin.generate("Erin <erin@example.com>");
    world.sender.import(&erin.export_public(&erin_fpr));
    let conf = world.sender.dir.join("gpg.conf");
    let original = std::fs::read_to_string(&conf).unwrap_or_default();
    let env = Envelope {
        id: "G1".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
    };
    for name in [
        world.bob_fpr.clone(),
        world.bob_fpr.to_lowercase(),
        format!("0x{}", world.bob_fpr),
    ] {
        std::fs::write(&conf, format!("{original}group {name}={erin_fpr}\n")).unwrap();
        let copies = copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await);
        for c in &copies {
            if let Some(m) = &c.message {
                assert!(
                    erin.decrypt(&ciphertext(m)).is_none(),
                    "{name}: Erin opens a copy"
                );
            }
        }
        let bob = copy_to(&copies, "bob@example.org");
        match &bob.decision {
            Decision::Deferred { reply } => {
                assert!(
                    reply.is_temporary() && reply.to_string().contains("group"),
                    "{reply}"
                )
            }
            other => panic!("{name}: Bob's copy: {other:?}"),
        }
        assert!(bob.message.is_none());
        let carol = copy_to(&copies, "carol@example.org");
        let copy = carol.message.as_ref().expect("Carol's copy");
        assert!(world.carol.decrypt(&ciphertext(copy)).is_some());
    }
    std::fs::write(&conf, &original).unwrap();
}

#[tokio::test]
async fn already_encrypted_mail_passes_through_untouched_but_without_bcc() {
    let world = World::new();
    let out = world.bob.gpg(
        &["--armor", "--encrypt", "-r", &world.bob_fpr],
        Some(b"already encrypted by the sender"),
    );
    assert!(out.status.success());
    let armored = String::from_utf8(out.stdout).unwrap().replace('\n', "\r\n");
    let body = format!("\r\n{armored}");
    let raw = format!("From: alice@example.org\r\nTo: bob@example.org\r\nBcc: carol@example.org\r\nSubject: inline\r\n{body}");
    let want =
        format!("From: alice@example.org\r\nTo: bob@example.org\r\nSubject: inline\r\n{body}");
    // Given with LF line ends, the copy has CRLF throughout, not a CRLF header over LF.
    let lf = raw.replace("\r\n", "\n");
    for c in copies(run(&world, Policy::default(), &envelope(), lf.as_bytes()).await) {
        assert_eq!(String::from_utf8(c.message.unwrap()).unwrap(), want);
    }
    let copies = copies(run(&world, Policy::default(), &envelope(), raw.as_bytes()).await);
    assert_eq!(copies.len(), 3);
    for c in copies {
        assert_eq!(c.decision, Decision::PassThrough);
        assert_eq!(String::from_utf8(c.message.unwrap()).unwrap(), want);
    }
}

#[tokio::test]
async fn lookups_are_cached_until_the_keyring_changes() {
    let world = World::new();
    // GPGME on this process's threads: the library's own way is covered here, the worker
    // processes everywhere else.
    let service = world.sender.service_in_process(Duration::from_secs(20));
    let erin = GpgHome::new();
    let erin_fpr = erin.generate_at("Erin <erin@example.org>", "20230101T000000");
    assert_eq!(
        service.resolve("erin@example.org").await.unwrap(),
        Resolution::NoKey { refused: vec![] }
    );
    // Importing Erin's key changes the keyring: the cached "no key" must go.
    world.sender.import(&erin.export_public(&erin_fpr));
    assert_eq!(
        service.resolve("erin@example.org").await.unwrap(),
        Resolution::Usable {
            fingerprint: erin_fpr.clone(),
            others: 0
        }
    );
    // A second, newer key for the same address wins, and the choice says another lost.
    let newer = GpgHome::new();
    let newer_fpr = newer.generate("Erin <erin@example.org>");
    world.sender.import(&newer.export_public(&newer_fpr));
    assert_eq!(
        service.resolve("erin@example.org").await.unwrap(),
        Resolution::Usable {
            fingerprint: newer_fpr,
            others: 1
        }
    );
}

/// The fingerprint of Alice's signing key, looked up through `service`.
async fn alice_signer(service: &sealpost::keys::KeyService) -> String {
    service
        .signer("alice@example.org")
        .await
        .unwrap()
        .expect("Alice can sign")
}

/// A gpg operation that hangs (its agent stopped) ends at the deadline: the worker process
/// and the gpg it waits for are killed, nothing is left behind, and the next operation gets
/// a fresh worker and succeeds once the agent answers again.
#[tokio::test]
async fn an_operation_past_its_deadline_is_killed_and_the_worker_replaced() {
    let world = World::new();
    let deadline = Duration::from_secs(3);
    let service = world.sender.service_with_workers(deadline, 1);
    let signer = alice_signer(&service).await;
    let stopped = world.sender.stop_agent();
    let agent = stopped.0;
    let home = world.sender.dir.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let stuck = service.sign_detached(&signer, b"data\r\n".to_vec()).await;
    let waited = started.elapsed();
    // What ran for this home, should the signing get through with the agent stopped (seen 3
    // times in about 25 runs of the suite, before the wait for the stop; cause unknown).
    let running = common::processes_naming(&home, 0);
    let left = {
        // The kill is sent as the deadline passes; the processes go a moment later.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_naming(&home, agent);
            if left.is_empty() || std::time::Instant::now() > until {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    drop(stopped);
    match stuck {
        Err(sealpost::keys::KeyError::Deadline { .. }) => {}
        other => panic!("expected the deadline, got {other:?}; agent {agent}; {running:?}"),
    }
    assert!(
        waited >= deadline && waited < deadline + Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(left.is_empty(), "left running: {left:?}");
    let data = b"signed after the agent came back\r\n".to_vec();
    let signature = service
        .sign_detached(&signer, data.clone())
        .await
        .expect("a fresh worker signs");
    assert_eq!(
        world.sender.verify_detached(&data, &signature.armored),
        Some(signer)
    );
}

/// The live `sealpost gpg-worker` children of this test process serving `home`.
fn workers_for(home: &GpgHome) -> Vec<i32> {
    let needle = format!("--home={}", home.dir.display());
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if parent.as_deref() == Some(me.as_str())
            && args.iter().any(|a| a == "gpg-worker")
            && args.contains(&needle)
        {
            found.push(pid);
        }
    }
    found
}

/// A worker process ignores SIGTERM (systemd signals the whole service while the daemon
/// finishes the mail in hand) and one that died between operations is replaced: the next
/// operation runs on a fresh worker instead of failing.
#[tokio::test]
async fn a_worker_outlives_sigterm_and_a_dead_one_is_replaced() {
    let world = World::new();
    let service = world
        .sender
        .service_with_workers(Duration::from_secs(20), 1);
    let signer = alice_signer(&service).await;
    let first = workers_for(&world.sender);
    assert_eq!(first.len(), 1, "one worker: {first:?}");
    let sign = |text: &'static str| {
        let service = service.clone();
        let signer = signer.clone();
        async move {
            service
                .sign_detached(&signer, text.as_bytes().to_vec())
                .await
                .map(|s| (text, s))
        }
    };
    // SAFETY: signals to this test's own child.
    unsafe { libc::kill(first[0], libc::SIGTERM) };
    let (text, signature) = sign("after SIGTERM\r\n").await.expect("signs");
    assert_eq!(
        world
            .sender
            .verify_detached(text.as_bytes(), &signature.armored),
        Some(signer.clone())
    );
    assert_eq!(
        workers_for(&world.sender),
        first,
        "the same worker answered"
    );
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    // Dead (a zombie until the pool reaps it) before the next request, as a worker killed
    // while idle is.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{}/stat", first[0]))
        .unwrap_or_default()
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
    {
        assert!(std::time::Instant::now() < until, "the worker did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (text, signature) = sign("after SIGKILL\r\n")
        .await
        .expect("a fresh worker signs");
    assert_eq!(
        world
            .sender
            .verify_detached(text.as_bytes(), &signature.armored),
        Some(signer.clone())
    );
    let second = workers_for(&world.sender);
    assert_eq!(second.len(), 1, "one worker again: {second:?}");
    assert_ne!(second, first, "a new worker");
}

/// A public keyring gpg cannot read (here garbage where pubring.kbx should be; likewise a
/// directory there, or a file the process may not open) is a failed lookup, not "no key":
/// the recipient is deferred, never sent a signed cleartext copy.
#[tokio::test]
async fn an_unreadable_public_keyring_defers_rather_than_sends_in_clear() {
    let world = World::new();
    let ring = world.sender.dir.join("pubring.kbx");
    std::fs::rename(&ring, world.sender.dir.join("pubring.kbx.kept")).unwrap();
    std::fs::write(&ring, b"not a keybox at all, garbage").unwrap();
    let env = Envelope {
        id: "T9".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into()],
    };
    let copies = copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await);
    assert_eq!(copies.len(), 1);
    assert!(
        matches!(copies[0].decision, Decision::Deferred { .. }),
        "{:?}",
        copies[0].decision
    );
    assert!(copies[0].message.is_none());
}

/// What a script may hand over: a raw UTF-8 Subject with a trailing blank, a part header with
/// 8-bit text and trailing blanks, a forwarded message with a raw UTF-8 Subject. The signed
/// part of the clear copy is 7-bit with no trailing blanks (RFC 3156 §3), so no transport can
/// break its signature, and the Subject still reads the same once decoded. (8-bit bytes in a
/// structured field, a raw UTF-8 display name, are still kept: README.)
#[tokio::test]
async fn the_signed_part_is_seven_bit_even_when_the_header_is_not() {
    let world = World::new();
    let raw = "From: alice@example.org\r\nTo: dave@example.net\r\nSubject: Grüße aus Köln \r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8 \r\nContent-Description: Bericht für Köln\r\n\r\nHallo\r\n\
--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: zoe@example.org\r\nSubject: Weitergeleitet: Grüße \r\n\r\ninner\r\n\
--b1--\r\n";
    let env = Envelope {
        id: "T8".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["dave@example.net".into()],
    };
    let copies = copies(run(&world, Policy::default(), &env, raw.as_bytes()).await);
    let copy = copies[0].message.as_deref().expect("a signed copy");
    // The outer header too: a relay without 8BITMIME takes the whole copy.
    assert!(copy.is_ascii(), "{}", String::from_utf8_lossy(copy));
    let (signed, sig) = signed_parts(copy).expect("multipart/signed");
    let text = String::from_utf8_lossy(&signed);
    assert!(
        sealpost::message::encoding::is_signing_safe(&signed),
        "{text}"
    );
    for line in signed.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.ends_with(b" ") && !line.ends_with(b"\t") && line.is_ascii(),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    let subject = text
        .lines()
        .skip_while(|l| !l.starts_with("Subject: "))
        .take_while(|l| l.starts_with("Subject: ") || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\r\n");
    let decoded = mail_parser::MessageParser::default()
        .parse(format!("{subject}\r\n\r\n").as_bytes())
        .and_then(|m| m.subject().map(str::to_string));
    assert_eq!(decoded.as_deref(), Some("Grüße aus Köln"));
    let dave = GpgHome::new();
    dave.import(&world.sender.export_public(&world.alice));
    assert_eq!(
        dave.verify_detached(&signed, &sig).as_deref(),
        Some(world.alice.as_str())
    );
}

/// A forwarded message sent base64-encoded (RFC 2046 forbids it, senders do it): it is 7-bit
/// already and goes into the signed part byte for byte; mail-parser's offsets inside it point
/// into the decoded bytes and must not be used to rewrite anything.
#[tokio::test]
async fn an_encoded_forwarded_message_is_signed_as_it_came() {
    use base64::Engine;
    let world = World::new();
    let mut inner = String::from(
        "From: zoe@example.org\r\nSubject: inner\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"in\"\r\n\r\n--in\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
    );
    for i in 0..40 {
        inner.push_str(&format!(
            "filler text line {i} of the forwarded message\r\n"
        ));
    }
    inner.push_str("--in--\r\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(inner.as_bytes());
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let block = lines.join("\r\n");
    let raw = format!(
        "From: alice@example.org\r\nTo: dave@example.net\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n--out\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\nsee below\r\n--out\r\n\
         Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{block}\r\n--out--\r\n"
    );
    let env = Envelope {
        id: "T9".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["dave@example.net".into()],
    };
    let copies = copies(run(&world, Policy::default(), &env, raw.as_bytes()).await);
    let copy = copies[0].message.as_deref().expect("a signed copy");
    let (signed, sig) = signed_parts(copy).expect("multipart/signed");
    let text = String::from_utf8_lossy(&signed);
    assert!(
        text.contains(&block),
        "the encoded part as it came:\n{text}"
    );
    assert!(text.contains("Content-Type: text/plain; charset=us-ascii\r\n\r\nsee below\r\n"));
    let dave = GpgHome::new();
    dave.import(&world.sender.export_public(&world.alice));
    assert_eq!(
        dave.verify_detached(&signed, &sig).as_deref(),
        Some(world.alice.as_str())
    );
}

/// A message from Alice to Bob (who has a key) and Dave (who has none) whose body is `part`
/// as Alice's own MUA signs it (multipart/signed, RFC 1847), and its envelope.
fn own_signed_to_bob_and_dave(world: &World, part: &str) -> (String, Envelope) {
    let sig = world.sender.gpg(
        &["--armor", "--detach-sign", "-u", &world.alice],
        Some(part.as_bytes()),
    );
    assert!(sig.status.success());
    let sig = String::from_utf8(sig.stdout).unwrap();
    let raw = format!(
        "From: alice@example.org\r\nTo: bob@example.org, dave@example.net\r\nSubject: own\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha512;\r\n \
         protocol=\"application/pgp-signature\"; boundary=\"s1\"\r\n\r\n\
         --s1\r\n{part}\r\n--s1\r\nContent-Type: application/pgp-signature\r\n\r\n{sig}\r\n--s1--\r\n"
    );
    let env = Envelope {
        id: "T10".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into(), "dave@example.net".into()],
    };
    (raw, env)
}

/// A message the sender's MUA signed itself (multipart/signed, RFC 1847): its signed part
/// stays byte for byte in every copy, so the sender's own signature still verifies, even
/// when that part is 8-bit with trailing blanks (which sealpost would otherwise re-encode).
#[tokio::test]
async fn the_senders_own_signature_still_verifies() {
    let world = World::new();
    let part = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                H\u{e9}llo, signed by my MUA  \r\nFrom here on\r\n";
    let (raw, env) = own_signed_to_bob_and_dave(&world, part);
    let copies = copies(run(&world, Policy::default(), &env, raw.as_bytes()).await);
    let by = |a: &str| copy_to(&copies, a);
    let bob_copy = by("bob@example.org").message.as_deref().unwrap();
    let inner = open_encrypted(&world, &world.bob, &world.bob_fpr, bob_copy);
    let dave_copy = by("dave@example.net").message.as_deref().unwrap();
    let (dave_inner, _) = signed_parts(dave_copy).expect("dave's copy is signed");
    for entity in [inner, dave_inner] {
        let (own, own_sig) = signed_parts(&entity).expect("the sender's multipart/signed");
        assert_eq!(own, part.as_bytes());
        assert_eq!(
            world.bob.verify_detached(&own, &own_sig).as_deref(),
            Some(world.alice.as_str()),
            "{}",
            String::from_utf8_lossy(&entity)
        );
    }
}

/// A line over 998 octets in the sender's own multipart/signed is kept (the sender's signature
/// is over it): inside an encrypted copy it is carried, in a signed copy in the clear it would
/// be refused by relays or broken, the signature with it. That recipient is refused with the
/// reason (review: the copy went, and bounced with "500 Line too long").
#[tokio::test]
async fn a_long_line_in_the_senders_own_signed_part_goes_encrypted_only() {
    let world = World::new();
    let part = format!(
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n{}\r\n",
        "y".repeat(1500)
    );
    let (raw, env) = own_signed_to_bob_and_dave(&world, &part);
    let copies = copies(run(&world, Policy::default(), &env, raw.as_bytes()).await);
    let bob_copy = copy_to(&copies, "bob@example.org")
        .message
        .as_deref()
        .unwrap();
    let inner = open_encrypted(&world, &world.bob, &world.bob_fpr, bob_copy);
    let (own, own_sig) = signed_parts(&inner).expect("the sender's multipart/signed");
    assert_eq!(own, part.as_bytes());
    assert_eq!(
        world.bob.verify_detached(&own, &own_sig).as_deref(),
        Some(world.alice.as_str())
    );
    let dave = copy_to(&copies, "dave@example.net");
    assert!(dave.message.is_none());
    match &dave.decision {
        Decision::Rejected { reply } => {
            assert_eq!((reply.code, reply.status), (554, "5.6.0"));
            assert!(reply.text.contains("over 998 octets"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
}

/// A GnuPG home with `trust-model always` and no trust database (gpg makes none under that
/// model, and needs none): a recipient without a key is just that, signed in clear, not a
/// failed lookup deferred for good; bob is encrypted to as ever.
#[tokio::test]
async fn trust_model_always_without_a_trust_database_is_no_keyring_problem() {
    let world = World::new();
    let conf = world.sender.dir.join("gpg.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
    text.push_str("trust-model always\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::remove_file(world.sender.dir.join("trustdb.gpg")).unwrap();
    let env = Envelope {
        id: "T10".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into(), "dave@example.net".into()],
    };
    let copies = copies(run(&world, Policy::default(), &env, MESSAGE.as_bytes()).await);
    assert_eq!(copies.len(), 2);
    assert!(
        matches!(copies[0].decision, Decision::Encrypted { .. }),
        "{:?}",
        copies[0].decision
    );
    assert!(
        matches!(copies[1].decision, Decision::Signed { .. }),
        "{:?}",
        copies[1].decision
    );
    assert!(!world.sender.dir.join("trustdb.gpg").exists());
}

/// A damaged public keyring is never taken for "no key" (review: a truncated pubring.kbx, or
/// one of garbage, left GPGME's listing empty without an error, and a recipient whose key was
/// in it got signed cleartext, or 550 under encrypt-only): the lookup is refused and the copy
/// deferred (451), never sent in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_public_keyring_defers_and_sends_nothing_in_clear() {
    let world = World::new();
    // A directory in place of the keyring: gpg says "read error" and "no public key" for
    // every address (review: taken for "no key", a clear copy for a recipient with a key;
    // unsigned, so that the missing key of the sender does not defer it first).
    // "inside": bob's key block damaged behind its index entry; a search for his address
    // passes over it and says only "no public key" (review: signed cleartext for bob).
    // "cut N": bob's key block zeroed from its byte N on; gpg lists what is left, an invalid
    // key or one without its encryption subkey (review: taken for "no usable key").
    for damage in [
        "truncated",
        "garbage",
        "directory",
        "inside",
        "cut 100",
        "cut 200",
        "cut 300",
        "cut 400",
    ] {
        let home = GpgHome::copy_of(&world.sender);
        let keyring = home.dir.join("pubring.kbx");
        let mut bytes = std::fs::read(&keyring).unwrap();
        match damage {
            "truncated" => bytes.truncate(bytes.len() - 200),
            "directory" => {
                std::fs::remove_file(&keyring).unwrap();
                std::fs::create_dir(&keyring).unwrap();
            }
            "garbage" => {
                bytes = (0..5000u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect()
            }
            inside_or_cut => {
                // The keybox's blobs, each led by its length (big-endian u32); in bob's, the
                // key block's offset and length follow at bytes 8 and 12.
                let be = |b: &[u8], at: usize| {
                    u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
                };
                let mut at = 0;
                loop {
                    let len = be(&bytes, at);
                    if common::find(&bytes[at..at + len], b"<bob@example.org>").is_some() {
                        let zeroed = match inside_or_cut.strip_prefix("cut ") {
                            Some(n) => {
                                let (block, block_len) = (be(&bytes, at + 8), be(&bytes, at + 12));
                                let n: usize = n.parse().unwrap();
                                assert!(n < block_len, "{block_len}");
                                at + block + n..at + block + block_len
                            }
                            None => at + 100..at + len,
                        };
                        bytes[zeroed].fill(0);
                        break;
                    }
                    at += len;
                }
            }
        }
        if damage != "directory" {
            std::fs::write(&keyring, bytes).unwrap();
        }
        let policy = Policy {
            sign: damage != "directory",
            ..Policy::default()
        };
        let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), policy);
        let copies = copies(
            rewriter
                .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
                .await
                .unwrap(),
        );
        let deferred = copies
            .iter()
            .filter(|c| matches!(c.decision, Decision::Deferred { .. }))
            .count();
        assert!(deferred > 0, "{damage}: {copies:?}");
        for c in &copies {
            // bob and carol have keys in the keyring as it was: never a clear copy for them.
            if c.recipient != "dave@example.net" {
                assert!(
                    matches!(
                        c.decision,
                        Decision::Encrypted { .. } | Decision::Deferred { .. }
                    ),
                    "{damage}: {}: {:?}",
                    c.recipient,
                    c.decision
                );
            }
            if let Decision::Deferred { reply } = &c.decision {
                assert_eq!(reply.code, 451, "{reply}");
                assert!(c.message.is_none());
            }
        }
    }
}

/// A public keyring that held keys and holds none now (removed: gpg makes an empty one at its
/// next use) defers every recipient, never cleartext, in a home of public keys alone with no
/// owner trust to miss, as an MX's (review: bob's mail through the milter's inbound mode in
/// clear after `rm pubring.kbx`): seen by the process that had read the keys, and by a new one
/// from gpg's backup of the keyring; once the keyring is back, mail is encrypted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_that_lost_its_keys_defers_and_sends_nothing_in_clear() {
    let world = World::new();
    let home = GpgHome::new();
    // One key at a time, as keys come: gpg keeps the keybox before each change as a backup.
    home.import(&world.bob.export_public(&world.bob_fpr));
    home.import(&world.carol.export_public(&world.carol_fpr));
    let policy = Policy::inbound(&Policy::default());
    let keyring = home.dir.join("pubring.kbx");
    let kept = home.dir.join("kept.kbx");
    let decisions = |copies: Vec<Copy>| -> Vec<(String, String)> {
        copies
            .into_iter()
            .map(|c| {
                let decision = match &c.decision {
                    Decision::Encrypted { .. } => "encrypted".to_string(),
                    Decision::Deferred { reply } => {
                        assert_eq!(reply.code, 451, "{reply}");
                        assert!(c.message.is_none());
                        reply.to_string()
                    }
                    other => format!("{other:?}"),
                };
                (c.recipient, decision)
            })
            .collect()
    };
    let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), policy.clone());
    async fn run(rewriter: &Rewriter) -> Vec<Copy> {
        copies(
            rewriter
                .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
                .await
                .unwrap(),
        )
    }
    let before = decisions(run(&rewriter).await);
    assert_eq!(before[0], ("bob@example.org".into(), "encrypted".into()));
    assert_eq!(before[2], ("carol@example.org".into(), "encrypted".into()));

    let backup = home.dir.join("pubring.kbx~");
    let kept_backup = home.dir.join("kept.kbx~");
    std::fs::rename(&keyring, &kept).unwrap();
    std::fs::rename(&backup, &kept_backup).unwrap();
    for (recipient, decision) in decisions(run(&rewriter).await) {
        assert!(
            decision.contains("holds no key, where it held keys before"),
            "{recipient}: {decision}"
        );
    }
    std::fs::rename(&kept, &keyring).unwrap();
    std::fs::rename(&kept_backup, &backup).unwrap();
    let back = decisions(run(&rewriter).await);
    assert_eq!(back, before);

    // A new process knows nothing of the keys before; gpg's backup does. Its copy of the home
    // (another path) stands in for it.
    let copy = GpgHome::copy_of(&home);
    std::fs::remove_file(copy.dir.join("pubring.kbx")).unwrap();
    let rewriter = Rewriter::new(copy.service(Duration::from_secs(20)), policy.clone());
    for (recipient, decision) in decisions(run(&rewriter).await) {
        assert!(
            decision.contains("while gpg's backup of it") && decision.contains("holds keys"),
            "{recipient}: {decision}"
        );
    }

    // Keys moved into a keyring gpg.conf names, the default one and its backup left from
    // before: keys gpg lists, so nothing was lost (review: every keyless recipient deferred).
    let moved = GpgHome::copy_of(&home);
    std::fs::rename(moved.dir.join("pubring.kbx"), moved.dir.join("team.kbx")).unwrap();
    let conf = moved.dir.join("gpg.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "no-default-keyring\nkeyring {}\n",
        moved.dir.join("team.kbx").display()
    ));
    std::fs::write(&conf, text).unwrap();
    let rewriter = Rewriter::new(moved.service(Duration::from_secs(20)), policy);
    let after = decisions(run(&rewriter).await);
    assert_eq!(after[0], ("bob@example.org".into(), "encrypted".into()));
    assert!(after[1].1.starts_with("Clear"), "{after:?}");
}

/// A gpg-agent that refuses loopback pinentry mode (`no-allow-loopback-pinentry` in its
/// gpg-agent.conf) can sign nothing for sealpost: every copy waits (451), and the reply names
/// the option (review: "the secret key file ... is there, but gpg-agent cannot use it
/// (damaged?)" for a key without a passphrase). A later `allow-loopback-pinentry` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refusing_loopback_mode_defers_every_copy_and_says_why() {
    let world = World::new();
    let home = GpgHome::copy_of(&world.sender);
    let conf = home.dir.join("gpg-agent.conf");
    std::fs::write(&conf, "no-allow-loopback-pinentry\n").unwrap();
    let refused = copies_in(&home).await;
    assert!(!refused.is_empty());
    for c in &refused {
        let Decision::Deferred { reply } = &c.decision else {
            panic!("{c:?}");
        };
        assert_eq!(reply.code, 451, "{reply}");
        assert!(reply.text.contains("no-allow-loopback-pinentry"), "{reply}");
        assert!(c.message.is_none());
    }
    std::fs::write(
        &conf,
        "no-allow-loopback-pinentry\n# changed back\nallow-loopback-pinentry\n",
    )
    .unwrap();
    sealpost::keys::home::stop_daemons(&home.dir);
    for c in copies_in(&home).await {
        assert!(
            matches!(
                c.decision,
                Decision::Encrypted { .. } | Decision::Signed { .. }
            ),
            "{c:?}"
        );
    }
}

/// Public keys in GnuPG 1's keyring format (`pubring.gpg`, README "GnuPG"): encrypted as from
/// a keybox; and a keyring cut short inside bob's user ID, which gpg reads up to the cut
/// without a word (bob's key then has no user ID, and bob seemed to have none: signed
/// cleartext), defers every recipient with the damage named, also with gpgsm's keybox beside
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_in_the_old_format_works_and_its_damage_defers() {
    let world = World::new();
    let home = GpgHome::keyring_copy_of(&world.sender);
    // At its first use gpg writes its signature checks into a new keyring; a second gpg
    // reading it meanwhile found no key, even alice's secret one (README, "GnuPG"). Done here
    // first, as an operator converting a home would.
    assert!(home.gpg(&["--check-trustdb"], None).status.success());
    let intact = copies_in(&home).await;
    for c in &intact {
        match c.recipient.as_str() {
            "dave@example.net" => assert!(matches!(c.decision, Decision::Signed { .. }), "{c:?}"),
            _ => assert!(matches!(c.decision, Decision::Encrypted { .. }), "{c:?}"),
        }
    }
    let keyring = home.dir.join("pubring.gpg");
    let bytes = std::fs::read(&keyring).unwrap();
    let uid = common::find(&bytes, b"Bob <bob@example.org>").unwrap();
    sealpost::keys::home::stop_daemons(&home.dir);
    let cut = GpgHome::copy_of(&home);
    std::fs::write(cut.dir.join("pubring.gpg"), &bytes[..uid + 5]).unwrap();
    // And with a keybox beside it that gpg does not use: gpgsm's (its header blob without
    // the OpenPGP flag), which turned the check off (review).
    let gpgsm = GpgHome::copy_of(&cut);
    let mut header = vec![0, 0, 0, 32, 1, 1, 0, 0];
    header.extend_from_slice(b"KBXf");
    header.resize(32, 0);
    std::fs::write(gpgsm.dir.join("pubring.kbx"), header).unwrap();
    // One byte in alice's key block (her user ID's tag): her secret key lists as none, which
    // refused all her mail for good (550) while the keyring was damaged (review).
    let signer = GpgHome::copy_of(&home);
    let mut poked = bytes.clone();
    let alice = common::find(&poked, b"Alice <alice@example.org>").unwrap();
    assert_eq!(poked[alice - 2], 0xb4, "an old-format user ID header");
    poked[alice - 2] = 0xbc;
    std::fs::write(signer.dir.join("pubring.gpg"), &poked).unwrap();
    for home in [&cut, &gpgsm, &signer] {
        let damaged = copies_in(home).await;
        for c in &damaged {
            let Decision::Deferred { reply } = &c.decision else {
                panic!("{c:?}");
            };
            assert_eq!(reply.code, 451, "{reply}");
            assert!(reply.text.contains("pubring.gpg is damaged"), "{reply}");
            assert!(c.message.is_none());
        }
    }
}

/// Where the keybox record holding `address` starts, and its length (each record is led by
/// its length, a big-endian u32).
fn keybox_record(bytes: &[u8], address: &[u8]) -> (usize, usize) {
    let mut at = 0;
    loop {
        let len = be32(bytes, at);
        if common::find(&bytes[at..at + len], address).is_some() {
            return (at, len);
        }
        at += len;
    }
}

fn be32(bytes: &[u8], at: usize) -> usize {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// The decision for `recipient` when alice's message for bob, dave and carol is rewritten
/// with the keys in `home`, the default policy: deferred (451, no copy), the reply's text.
async fn deferred_reply(home: &GpgHome, recipient: &str) -> String {
    let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), Policy::default());
    let copies = copies(
        rewriter
            .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    );
    let copy = copy_to(&copies, recipient);
    let Decision::Deferred { reply } = &copy.decision else {
        panic!("{copy:?}");
    };
    assert_eq!(reply.code, 451, "{reply}");
    assert!(copy.message.is_none());
    reply.text.clone()
}

/// One header byte in bob's key block in the keybox: his subkey's tag changed into one no
/// keyring holds (15). gpg drops that packet without a word, and bob's key seemed to have no
/// encryption subkey: signed cleartext (review). Deferred, the damage named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_packet_tag_in_the_keybox_defers_rather_than_sending_in_clear() {
    let world = World::new();
    let home = GpgHome::copy_of(&world.sender);
    sealpost::keys::home::stop_daemons(&home.dir);
    let keyring = home.dir.join("pubring.kbx");
    let mut bytes = std::fs::read(&keyring).unwrap();
    // In bob's record the key block's offset and length follow at bytes 8 and 12. Its packets
    // have old-format headers (gpg writes them so): the tag in bits 2-5, the length's size in
    // bits 0-1.
    let (at, _) = keybox_record(&bytes, b"<bob@example.org>");
    let (mut p, end) = (
        at + be32(&bytes, at + 8),
        at + be32(&bytes, at + 8) + be32(&bytes, at + 12),
    );
    while (bytes[p] >> 2) & 0x0F != 14 {
        let size = [1, 2, 4][(bytes[p] & 3) as usize];
        let len = bytes[p + 1..p + 1 + size]
            .iter()
            .fold(0, |n, &b| n << 8 | b as usize);
        p += 1 + size + len;
        assert!(p < end, "bob's subkey");
    }
    bytes[p] = 0x80 | 15 << 2 | (bytes[p] & 3);
    std::fs::write(&keyring, bytes).unwrap();
    let reply = deferred_reply(&home, "bob@example.org").await;
    assert!(reply.contains("pubring.kbx is damaged"), "{reply}");
}

/// Bob's keybox record made to run to the end of the file (one length field): gpg took
/// carol's record for part of bob's and found no key for her, without a word, and carol got
/// signed cleartext (review). The checksum gpg writes at the end of each record does not
/// match: deferred, the damage named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keybox_record_swallowing_the_next_defers_rather_than_sending_in_clear() {
    let world = World::new();
    let home = GpgHome::copy_of(&world.sender);
    sealpost::keys::home::stop_daemons(&home.dir);
    let keyring = home.dir.join("pubring.kbx");
    let mut bytes = std::fs::read(&keyring).unwrap();
    let (at, len) = keybox_record(&bytes, b"<bob@example.org>");
    assert!(
        common::find(&bytes[at + len..], b"<carol@example.org>").is_some(),
        "carol's record after bob's"
    );
    let to_end = (bytes.len() - at) as u32;
    bytes[at..at + 4].copy_from_slice(&to_end.to_be_bytes());
    std::fs::write(&keyring, bytes).unwrap();
    let reply = deferred_reply(&home, "carol@example.org").await;
    assert!(reply.contains("checksum does not match"), "{reply}");
}

/// A key whose UID names the domain as IDNA ASCII is found for the Unicode spelling and the
/// other way round, for encryption and for signing, as policies and duplicate checks take
/// both for one mailbox (review: the other spelling got signed cleartext).
#[tokio::test]
async fn an_international_domain_finds_its_key_in_either_spelling() {
    let world = World::new();
    let ascii = world.sender.generate("Idn <idn@xn--bcher-kva.de>");
    let unicode = world.sender.generate("Idn Two <idn2@b\u{fc}cher.de>");
    let service = world.sender.service(Duration::from_secs(20));
    for (address, fingerprint) in [
        ("idn@b\u{fc}cher.de", &ascii),
        ("idn@xn--bcher-kva.de", &ascii),
        ("idn2@xn--bcher-kva.de", &unicode),
        ("idn2@b\u{fc}cher.de", &unicode),
    ] {
        assert_eq!(
            service.resolve(address).await.unwrap(),
            Resolution::Usable {
                fingerprint: fingerprint.clone(),
                others: 0
            },
            "{address}"
        );
        assert_eq!(
            service.signer(address).await.unwrap().as_ref(),
            Some(fingerprint),
            "{address}"
        );
    }
}

/// Addresses that differ only in the case of letters outside ASCII are one mailbox to Postfix
/// (it folds them with ICU for its lookups, `straße` as `strasse`): each finds that mailbox's
/// key and its rule (review: `JÖRG@` got cleartext beside jörg's key, `Élodie@` passed an
/// encrypt-only rule for `élodie@`).
#[tokio::test]
async fn addresses_in_another_case_outside_ascii_find_the_key_and_rule() {
    let world = World::new();
    let joerg = world.sender.generate("Jörg <jörg@example.org>");
    let strasse = world.sender.generate("Strasse <strasse@example.org>");
    let service = world.sender.service(Duration::from_secs(20));
    for (address, fingerprint) in [
        ("jörg@example.org", &joerg),
        ("JÖRG@example.org", &joerg),
        ("Jörg@Example.ORG", &joerg),
        ("straße@example.org", &strasse),
        ("STRASSE@example.org", &strasse),
    ] {
        assert_eq!(
            service.resolve(address).await.unwrap(),
            Resolution::Usable {
                fingerprint: fingerprint.clone(),
                others: 0
            },
            "{address}"
        );
    }
    // An ASCII spelling finds its own spelling's key only, whatever was looked up before it
    // (review: a lookup of `Maße@` made `masse@` find its key, cached under the folded name).
    let masse = world.sender.generate("Maße <maße@example.org>");
    assert!(matches!(
        service.resolve("Maße@example.org").await.unwrap(),
        Resolution::Usable { fingerprint, .. } if fingerprint == masse
    ));
    assert!(matches!(
        service.resolve("masse@example.org").await.unwrap(),
        Resolution::NoKey { .. }
    ));
    let policy = Policy {
        addresses: [("élodie@example.org".to_string(), Mode::EncryptOnly)].into(),
        ..Policy::default()
    };
    assert_eq!(policy.mode_for("Élodie@example.org"), Mode::EncryptOnly);
    assert_eq!(policy.mode_for("ÉLODIE@EXAMPLE.ORG"), Mode::EncryptOnly);
    assert_eq!(policy.mode_for("elodie@example.org"), Mode::Opportunistic);
}

/// gpg-agent that cannot start once the signer was chosen (a daemon's cache holds it): the
/// copies are deferred with the agent named, not gpg's "Unusable secret key" (review: the
/// milter said only that, the same words as for a key that expired meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_with_an_agent_that_cannot_start_names_the_agent() {
    let world = World::new();
    let rewriter = Rewriter::new(
        world.sender.service(Duration::from_secs(20)),
        Policy::default(),
    );
    let first = copies(
        rewriter
            .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    );
    assert!(first.iter().all(|c| c.message.is_some()), "{first:?}");
    sealpost::keys::home::stop_daemons(&world.sender.dir);
    std::fs::write(
        world.sender.dir.join("gpg-agent.conf"),
        "extra-socket /nonexistent/dir/sock\n",
    )
    .unwrap();
    let again = copies(
        rewriter
            .rewrite(&envelope(), MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    );
    let _ = std::fs::remove_file(world.sender.dir.join("gpg-agent.conf"));
    for c in &again {
        let Decision::Deferred { reply } = &c.decision else {
            panic!("{}: {:?}", c.recipient, c.decision);
        };
        assert!(c.message.is_none());
        assert!(reply.text.contains("agent"), "{reply}");
    }
}

/// One changed byte in a key's subkey binding signature: the key block still reads, gpg takes
/// the subkey for invalid, and the address seems to have no usable key. The keybox record's
/// checksum, or gpg's check of that key's signatures, finds the damage: deferred, never signed
/// cleartext (review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_signature_in_a_key_defers_rather_than_sending_in_clear() {
    let world = World::new();
    let home = GpgHome::copy_of(&world.sender);
    home.generate("Frank <frank@example.org>");
    sealpost::keys::home::stop_daemons(&home.dir);
    let keyring = home.dir.join("pubring.kbx");
    let mut bytes = std::fs::read(&keyring).unwrap();
    let be = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let mut at = 0;
    loop {
        let len = be(&bytes, at);
        if common::find(&bytes[at..at + len], b"<frank@example.org>").is_some() {
            // A byte of the key block's last packet, the subkey's binding signature.
            let end = at + be(&bytes, at + 8) + be(&bytes, at + 12);
            bytes[end - 10] ^= 0x55;
            break;
        }
        at += len;
    }
    std::fs::write(&keyring, bytes).unwrap();
    let rewriter = Rewriter::new(home.service(Duration::from_secs(20)), Policy::default());
    let envelope = Envelope {
        id: "F1".into(),
        sender: "alice@example.org".into(),
        recipients: vec!["frank@example.org".into()],
    };
    let copies = copies(
        rewriter
            .rewrite(&envelope, MESSAGE.as_bytes().to_vec())
            .await
            .unwrap(),
    );
    let Decision::Deferred { reply } = &copies[0].decision else {
        panic!("{:?}", copies[0].decision);
    };
    assert!(copies[0].message.is_none());
    // The keybox record's checksum names the damage first; gpg's check of the key's
    // signatures, where the record's checksum holds.
    assert!(
        reply.text.contains("checksum does not match") || reply.text.contains("does not verify"),
        "{reply}"
    );
}
