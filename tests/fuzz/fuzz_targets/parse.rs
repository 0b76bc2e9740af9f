//! The outgoing core's reading of a message and its pure MIME work, and the OpenPGP packet
//! readers: no panic on any input, and a signed-only copy built from what was read is two
//! parts as the IMAP server reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sealpost::imap::section::{section, SectionText};
use sealpost::message::{canonical, mime, parse};

fuzz_target!(|data: &[u8]| {
    // mail-parser as sealpost configures it reads no two lines of the header as one field
    // unless the second begins with a blank (mail-parser's date reader did, see
    // `parse::mail_parser`).
    // (Through parse_bounded, as sealpost reads whole messages: a message nested 100,000
    // levels deep is refused there, and one parsed otherwise overflows the stack when dropped.)
    if let Ok(Some(message)) = parse::parse_bounded(data) {
        for header in &message.parts[0].headers {
            let field = &data[header.offset_field as usize..header.offset_end as usize];
            let lines = field.strip_suffix(b"\n").unwrap_or(field);
            let crossed = lines
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && !matches!(lines.get(i + 1), Some(b' ' | b'\t')));
            assert!(
                !crossed,
                "{:?} read across lines: {:?}",
                header.name,
                String::from_utf8_lossy(field)
            );
        }
    }
    let _ = mime::signed_parts(data);
    let _ = mime::encrypted_payload(data);
    let _ = parse::each_signature(data);
    let _ = parse::session_key_ids(data, 8);
    let _ = parse::signature_packets(data, 8);
    let _ = parse::preferred_ciphers(data);
    let _ = parse::armored_ciphertext(data);
    let _ = parse::armored_ciphertext_any_headers(data);
    let _ = sealpost::keys::autocrypt::keydata(data, "alice@example.org", 1_800_000_000);
    let Ok(message) = parse::ParsedMessage::parse(data.to_vec()) else {
        return;
    };
    let _ = message.from_address();
    let _ = message.sole_from_address();
    let _ = message.header_text("subject");
    let _ = message.is_encrypted();
    let _ = message.long_line_in_sealed_part();
    let _ = parse::assemble(&parse::without_bcc(message.fields()), message.body());
    let content = canonical::content_entity(&message);
    let _ = content.to_entity();
    let outer = mime::outer_fields_encrypted(message.fields(), "...");
    let _ = mime::protected_payload(message.fields(), &outer, &content, mime::Protection::Cipher);
    let clear = mime::outer_fields_clear(message.fields());
    let signed =
        mime::protected_payload(message.fields(), &clear, &content, mime::Protection::Clear);
    let signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n";
    let container = mime::multipart_signed(&signed, signature, "pgp-sha512");
    let whole = mime::message(&clear, &container);
    // Two parts, as the IMAP server shows them. (Their bytes are not always the signed ones:
    // a multipart with an empty boundary in the message, which RFC 2046 does not allow,
    // moves the first part's end by a CRLF in Dovecot's reading.)
    let summary = sealpost::imap::summary::summarize(&whole);
    let part = |path: &[u32]| section(&whole, &summary.parts, path, &SectionText::Full);
    assert!(part(&[1]).is_some() && part(&[2]).is_some(), "two parts");
    assert!(part(&[3]).is_none(), "no third part");
});
