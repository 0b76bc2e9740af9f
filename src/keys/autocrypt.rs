//! The key data of an Autocrypt header (Autocrypt Level 1, "OpenPGP Based key data"):
//! exactly five packets of the sender's transferable public key (RFC 4880 §11.1): the primary
//! key, one user ID with its self-signature, and one encryption subkey with its binding
//! signature. A whole export, even a minimal one, also names every other user ID and subkey of
//! the key to everyone the mail reaches (in clear on a signed-only copy).

/// A packet of the export: its tag and body, and its bytes as they came (header included).
struct Packet<'a> {
    tag: u8,
    body: &'a [u8],
    raw: &'a [u8],
}

/// The packets of `data` (binary OpenPGP), or None for anything a key export does not hold
/// (partial or indeterminate lengths, a cut-off packet).
fn packets(data: &[u8]) -> Option<Vec<Packet<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (tag, body, end) = crate::message::parse::stated_packet(data, at)?;
        out.push(Packet {
            tag,
            body: &data[body..end],
            raw: &data[at..end],
        });
        at = end;
    }
    Some(out)
}

fn be(bytes: &[u8]) -> usize {
    bytes.iter().fold(0, |n, &b| (n << 8) | b as usize)
}

/// What a version 4 signature says of itself (RFC 4880 §5.2.3), from its hashed subpackets.
struct Signature {
    kind: u8,
    created: u64,
    key_flags: Option<u8>,
    /// Seconds after the key's creation (subpacket 9).
    key_expires: Option<u64>,
    primary_uid: bool,
}

fn signature(body: &[u8]) -> Option<Signature> {
    if body.first() != Some(&4) {
        return None;
    }
    let kind = *body.get(1)?;
    let hashed_len = be(body.get(4..6)?);
    let mut area = body.get(6..6 + hashed_len)?;
    let mut sig = Signature {
        kind,
        created: 0,
        key_flags: None,
        key_expires: None,
        primary_uid: false,
    };
    while !area.is_empty() {
        let o1 = area[0] as usize;
        let (header, length): (usize, usize) = match o1 {
            0..=191 => (1, o1),
            192..=254 => (2, ((o1 - 192) << 8) + *area.get(1)? as usize + 192),
            _ => (5, be(area.get(1..5)?)),
        };
        let sub = area.get(header..header.checked_add(length)?)?;
        let (kind, data) = (sub.first()? & 0x7f, &sub[1..]);
        match kind {
            2 => sig.created = be(data.get(..4)?) as u64,
            9 => sig.key_expires = Some(be(data.get(..4)?) as u64).filter(|&s| s > 0),
            25 => sig.primary_uid = data.first().is_some_and(|&b| b != 0),
            27 => sig.key_flags = data.first().copied(),
            _ => {}
        }
        area = &area[header + length..];
    }
    Some(sig)
}

/// A key packet's creation time (version 4, §5.5.2).
fn key_created(body: &[u8]) -> Option<u64> {
    (body.first() == Some(&4)).then_some(())?;
    Some(be(body.get(1..5)?) as u64)
}

/// A key packet's public-key algorithm, for a subkey whose binding has no key flags.
fn key_algorithm(body: &[u8]) -> Option<u8> {
    body.get(5).copied()
}

/// The address of a user ID: inside its angle brackets, or the whole of it.
fn uid_address(uid: &[u8]) -> String {
    let text = String::from_utf8_lossy(uid);
    let address = match (text.rfind('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        _ => text.trim(),
    };
    address.to_lowercase()
}

/// The newest of `sigs` of one of these `kinds`, with what it says.
fn newest<'a, 'p>(sigs: &[&'a Packet<'p>], kinds: &[u8]) -> Option<(&'a Packet<'p>, Signature)> {
    sigs.iter()
        .filter_map(|p| Some((*p, signature(p.body)?)))
        .filter(|(_, s)| kinds.contains(&s.kind))
        .max_by_key(|(_, s)| s.created)
}

/// Whether `sigs` hold a revocation of this `kind`.
fn revoked(sigs: &[&Packet], kind: u8) -> bool {
    sigs.iter()
        .any(|p| signature(p.body).is_some_and(|s| s.kind == kind))
}

/// The five packets for an Autocrypt header from `export` (the key exported minimal,
/// unarmored): the primary key, the user ID of `address` (else the one marked primary, else
/// the first) with its newest self-signature, and the newest encryption subkey that is
/// neither revoked nor expired at `now` with its newest binding signature. None when the
/// export cannot be read so (no version 4 key, no usable user ID or encryption subkey): the
/// caller then sends the whole export.
pub fn keydata(export: &[u8], address: &str, now: u64) -> Option<Vec<u8>> {
    let packets = packets(export)?;
    let (primary, rest) = packets.split_first()?;
    if primary.tag != 6 {
        return None;
    }
    key_created(primary.body)?;
    // The packets after the primary key, in groups: a user ID or subkey and the signatures
    // that follow it (signatures straight on the primary key come first, in no group).
    let mut groups: Vec<(&Packet, Vec<&Packet>)> = Vec::new();
    for packet in rest {
        match packet.tag {
            2 => {
                if let Some((_, sigs)) = groups.last_mut() {
                    sigs.push(packet);
                }
            }
            // Trust packets (12) are gpg's own, never exported; anything else starts a group.
            12 => {}
            _ => groups.push((packet, Vec::new())),
        }
    }
    let address = address.to_lowercase();
    let uids: Vec<(&Packet, &Packet, bool)> = groups
        .iter()
        .filter(|(p, sigs)| p.tag == 13 && !revoked(sigs, 0x30))
        .filter_map(|(p, sigs)| {
            let (sig, parsed) = newest(sigs, &[0x10, 0x11, 0x12, 0x13])?;
            Some((*p, sig, parsed.primary_uid))
        })
        .collect();
    let (uid, uid_sig, _) = uids
        .iter()
        .find(|(p, _, _)| uid_address(p.body) == address)
        .or_else(|| uids.iter().find(|(_, _, primary)| *primary))
        .or_else(|| uids.first())?;
    let (subkey, binding) = groups
        .iter()
        .filter(|(p, sigs)| p.tag == 14 && !revoked(sigs, 0x28))
        .filter_map(|(p, sigs)| {
            let created = key_created(p.body)?;
            let (sig, parsed) = newest(sigs, &[0x18])?;
            let encrypts = match parsed.key_flags {
                Some(flags) => flags & 0x0c != 0,
                // RSA, Elgamal, ECDH: encryption keys by their algorithm.
                None => matches!(key_algorithm(p.body), Some(1 | 2 | 16 | 18)),
            };
            let expired = parsed
                .key_expires
                .is_some_and(|after| created.saturating_add(after) <= now);
            (encrypts && !expired).then_some((created, *p, sig))
        })
        .max_by_key(|(created, _, _)| *created)
        .map(|(_, p, sig)| (p, sig))?;
    Some([primary.raw, uid.raw, uid_sig.raw, subkey.raw, binding.raw].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new-format packet of `tag` around `body`.
    fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0xc0 | tag];
        assert!(body.len() < 192);
        out.push(body.len() as u8);
        out.extend_from_slice(body);
        out
    }

    fn key(created: u32, algorithm: u8) -> Vec<u8> {
        let mut body = vec![4];
        body.extend_from_slice(&created.to_be_bytes());
        body.push(algorithm);
        body.extend_from_slice(b"key material");
        body
    }

    /// A version 4 signature of `kind` with these hashed subpackets ((type, data)).
    fn sig(kind: u8, subpackets: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut hashed = Vec::new();
        for (t, data) in subpackets {
            hashed.push(data.len() as u8 + 1);
            hashed.push(*t);
            hashed.extend_from_slice(data);
        }
        let mut body = vec![4, kind, 22, 8];
        body.extend_from_slice(&(hashed.len() as u16).to_be_bytes());
        body.extend_from_slice(&hashed);
        body.extend_from_slice(&[0, 0, 0xab, 0xcd]);
        body.extend_from_slice(b"mpis");
        body
    }

    fn created(t: u32) -> (u8, Vec<u8>) {
        (2, t.to_be_bytes().to_vec())
    }

    #[test]
    fn five_packets_for_the_address_and_the_newest_usable_encryption_subkey() {
        let primary = packet(6, &key(100, 22));
        let uid_other = packet(13, b"Alice Private <alice@private.example>");
        let uid_other_sig = packet(2, &sig(0x13, &[created(110), (25, vec![1])]));
        let uid = packet(13, b"Alice <Alice@Example.org>");
        let uid_old_sig = packet(2, &sig(0x13, &[created(101)]));
        let uid_sig = packet(2, &sig(0x13, &[created(120)]));
        let signing = packet(14, &key(130, 22));
        let signing_sig = packet(2, &sig(0x18, &[created(130), (27, vec![0x02])]));
        let old_enc = packet(14, &key(140, 18));
        let old_enc_sig = packet(2, &sig(0x18, &[created(140), (27, vec![0x0c])]));
        let expired = packet(14, &key(150, 18));
        let expired_sig = packet(
            2,
            &sig(
                0x18,
                &[
                    created(150),
                    (27, vec![0x0c]),
                    (9, 10u32.to_be_bytes().to_vec()),
                ],
            ),
        );
        let revoked = packet(14, &key(160, 18));
        let revoked_sig = packet(2, &sig(0x18, &[created(160), (27, vec![0x0c])]));
        let revocation = packet(2, &sig(0x28, &[created(161)]));
        let export = [
            &primary[..],
            &uid_other,
            &uid_other_sig,
            &uid,
            &uid_old_sig,
            &uid_sig,
            &signing,
            &signing_sig,
            &old_enc,
            &old_enc_sig,
            &expired,
            &expired_sig,
            &revoked,
            &revoked_sig,
            &revocation,
        ]
        .concat();
        let five = keydata(&export, "alice@example.org", 1000).unwrap();
        assert_eq!(
            five,
            [&primary[..], &uid, &uid_sig, &old_enc, &old_enc_sig].concat()
        );
        // No user ID of that address: the one marked primary.
        let five = keydata(&export, "nobody@example.org", 1000).unwrap();
        assert_eq!(
            five,
            [
                &primary[..],
                &uid_other,
                &uid_other_sig,
                &old_enc,
                &old_enc_sig
            ]
            .concat()
        );
        // Before the expiry, the newer subkey.
        let five = keydata(&export, "alice@example.org", 155).unwrap();
        assert!(five.ends_with(&[&expired[..], &expired_sig].concat()));
        // Nothing to encrypt to, or not a key: none.
        let no_subkey = [&primary[..], &uid, &uid_sig, &signing, &signing_sig].concat();
        assert!(keydata(&no_subkey, "alice@example.org", 1000).is_none());
        assert!(keydata(b"\x01\x02", "alice@example.org", 1000).is_none());
        assert!(keydata(&export[..export.len() - 1], "alice@example.org", 1000).is_none());
    }
}
