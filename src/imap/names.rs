//! Mailbox names (pure): modified UTF-7 (RFC 3501 §5.1.3) both ways, and the rules that keep
//! names unambiguous. Names are stored in UTF-8 and shown to clients in canonical modified
//! UTF-7; a name that could be spelled two ways on the wire, or that looks like a path trick,
//! is refused.

use base64::alphabet::Alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use thiserror::Error;

use crate::store::DELIMITER;

/// Longest accepted name in bytes of UTF-8.
const MAX_NAME: usize = 512;
/// Deepest accepted hierarchy.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("mailbox name is not valid modified UTF-7")]
    BadUtf7,
    #[error("mailbox name is not in canonical modified UTF-7")]
    NotCanonical,
    #[error("mailbox name is empty or has an empty level")]
    EmptyLevel,
    #[error("mailbox name has a \".\" or \"..\" level")]
    DotLevel,
    #[error("mailbox name has control characters")]
    Control,
    #[error("mailbox name is too long or too deep")]
    TooLong,
    #[error("mailbox name contains wildcards")]
    Wildcard,
}

fn engine() -> GeneralPurpose {
    // RFC 3501 §5.1.3: modified BASE64 uses "," instead of "/", without padding.
    let alphabet =
        Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")
            .expect("64 distinct printable characters");
    GeneralPurpose::new(
        &alphabet,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    )
}

/// UTF-8 to modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&engine().encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Modified UTF-7 to UTF-8; refuses any spelling other than the canonical one.
pub fn decode(wire: &[u8]) -> Result<String, NameError> {
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        let b = wire[i];
        if !(0x20..0x7f).contains(&b) {
            return Err(NameError::BadUtf7);
        }
        if b != b'&' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let end = wire[i + 1..]
            .iter()
            .position(|&c| c == b'-')
            .ok_or(NameError::BadUtf7)?
            + i
            + 1;
        let encoded = &wire[i + 1..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let bytes = engine().decode(encoded).map_err(|_| NameError::BadUtf7)?;
            if bytes.len() % 2 != 0 {
                return Err(NameError::BadUtf7);
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            let text = String::from_utf16(&units).map_err(|_| NameError::BadUtf7)?;
            out.push_str(&text);
        }
        i = end + 1;
    }
    if encode(&out).as_bytes() != wire {
        return Err(NameError::NotCanonical);
    }
    Ok(out)
}

/// A wire name (after INBOX handling) turned into the stored UTF-8 name, or why not.
pub fn validate(wire: &[u8]) -> Result<String, NameError> {
    let name = decode(wire)?;
    // "Café" typed as é (NFC) or as e + U+0301 (NFD) looks the same to a user: both spellings
    // name one mailbox, stored and listed in NFC (RFC 5198 prefers NFC for interchange).
    let name = if unicode_normalization::is_nfc(&name) {
        name
    } else {
        use unicode_normalization::UnicodeNormalization;
        name.nfc().collect()
    };
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.contains(['*', '%']) {
        return Err(NameError::Wildcard);
    }
    let levels: Vec<&str> = name.split(DELIMITER).collect();
    if levels.len() > MAX_DEPTH {
        return Err(NameError::TooLong);
    }
    for level in &levels {
        if level.is_empty() {
            return Err(NameError::EmptyLevel);
        }
        if *level == "." || *level == ".." {
            return Err(NameError::DotLevel);
        }
    }
    // "inbox/x" and "INBOX/x" would be the same mailbox to some clients: INBOX's inferiors
    // are spelled with the canonical "INBOX".
    if levels[0].eq_ignore_ascii_case("INBOX") && levels[0] != "INBOX" {
        return Ok(format!("INBOX{}", &name[5..]));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf7_round_trips() {
        let cases = [
            ("INBOX", "INBOX"),
            ("R&D", "R&-D"),
            ("Entw\u{fc}rfe", "Entw&APw-rfe"),
            (
                "~peter/mail/\u{65e5}\u{672c}\u{8a9e}/\u{53f0}\u{5317}",
                "~peter/mail/&ZeVnLIqe-/&U,BTFw-",
            ),
            ("\u{1f600}", "&2D3eAA-"),
        ];
        for (utf8, wire) in cases {
            assert_eq!(encode(utf8), wire);
            assert_eq!(decode(wire.as_bytes()).as_deref(), Ok(utf8));
        }
    }

    #[test]
    fn non_canonical_and_broken_names_are_refused() {
        // "&AGE-" spells "a", which must be sent as itself.
        assert_eq!(decode(b"&AGE-"), Err(NameError::NotCanonical));
        // Two adjacent encoded runs must be one run.
        assert_eq!(decode(b"&APw-&APw-"), Err(NameError::NotCanonical));
        assert_eq!(decode(b"&APw"), Err(NameError::BadUtf7));
        assert_eq!(decode(b"caf\xc3\xa9"), Err(NameError::BadUtf7));
        assert_eq!(decode(b"&APw="), Err(NameError::BadUtf7));
    }

    #[test]
    fn path_tricks_are_refused() {
        let cases: [(&[u8], Result<&str, NameError>); 9] = [
            (b"Work/Reports", Ok("Work/Reports")),
            (b"inbox", Ok("INBOX")),
            (b"Inbox/Sub", Ok("INBOX/Sub")),
            (b"../etc", Err(NameError::DotLevel)),
            (b"a/./b", Err(NameError::DotLevel)),
            (b"/abs", Err(NameError::EmptyLevel)),
            (b"trailing/", Err(NameError::EmptyLevel)),
            (b"a//b", Err(NameError::EmptyLevel)),
            (b"star*", Err(NameError::Wildcard)),
        ];
        for (wire, expected) in cases {
            assert_eq!(
                validate(wire).as_deref().map_err(Clone::clone),
                expected,
                "{wire:?}"
            );
        }
    }

    #[test]
    fn canonically_equivalent_spellings_name_one_mailbox() {
        let nfc = encode("Caf\u{e9}");
        let nfd = encode("Cafe\u{301}");
        assert_ne!(nfc, nfd);
        assert_eq!(validate(nfd.as_bytes()).unwrap(), "Caf\u{e9}");
        assert_eq!(validate(nfc.as_bytes()).unwrap(), "Caf\u{e9}");
    }
}
