//! Content-transfer-encoding writers (RFC 2045 §6.7, §6.8) with the extra care RFC 3156 §3
//! asks of signed data: no trailing whitespace survives, and a line starting with "From " is
//! encoded so that no mbox-style MTA can mangle it and break the signature.

use base64::Engine;

/// RFC 2045 §6.7 rule 5: encoded lines are at most 76 characters.
const QP_LINE: usize = 76;

/// Encodes `text` as quoted-printable. Line breaks (CRLF, lone LF) become hard CRLF breaks; a
/// lone CR is data and is encoded as `=0D`.
pub fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    let mut lines = split_lines(text).peekable();
    while let Some(line) = lines.next() {
        encode_qp_line(line, &mut out);
        if lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    // A body that ended with a line break keeps it.
    if text.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Lines of `text` without their terminators (CRLF or LF). A final line break does not start
/// an empty last line.
fn split_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let empty = text.is_empty();
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(move |_| !empty)
}

fn encode_qp_line(line: &[u8], out: &mut Vec<u8>) {
    let mut col = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal_at = |col: usize| match b {
            // RFC 3156 §3: "From " at the start of a line is encoded.
            b'F' if col == 0 && line[i..].starts_with(b"From ") => false,
            // A lone "." line is left to SMTP dot-stuffing, but encoding it costs nothing and
            // protects against broken relays.
            b'.' if col == 0 && last => false,
            b' ' | b'\t' => !last,
            b'=' => false,
            33..=126 => true,
            _ => false,
        };
        let mut literal = literal_at(col);
        let width = if literal { 1 } else { 3 };
        // Soft break, keeping room for the "=" (RFC 2045 §6.7 rule 5). The byte then starts
        // a line: a "From " there is encoded too (review: mbox delivery wrote ">From" after
        // a soft break and the signature failed).
        if col + width > QP_LINE - 1 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
            literal = literal_at(0);
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
        col += width;
    }
}

/// Makes an already quoted-printable body safe to sign without changing what it decodes to:
/// trailing whitespace is dropped (RFC 2045 §6.7 rule 3: decoders delete it anyway), 8-bit
/// bytes, NUL and lone CR become `=XX`, a leading "From " becomes "=46rom ", and lines over
/// 998 octets get soft line breaks between (never inside) escapes.
pub fn repair_quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 16);
    let mut lines = split_lines(body).peekable();
    while let Some(line) = lines.next() {
        let end = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &line[..end];
        // Tokens: an escape "=XX" stays whole; everything else is one byte.
        let mut tokens: Vec<Vec<u8>> = Vec::with_capacity(line.len());
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            if b == b'='
                && line.len() >= i + 3
                && line[i + 1].is_ascii_hexdigit()
                && line[i + 2].is_ascii_hexdigit()
            {
                tokens.push(line[i..i + 3].to_vec());
                i += 3;
                continue;
            }
            let literal = match b {
                b'F' if i == 0 && line.starts_with(b"From ") => false,
                0 | b'\r' | 128..=255 => false,
                _ => true,
            };
            tokens.push(if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            });
            i += 1;
        }
        let total: usize = tokens.iter().map(Vec::len).sum();
        let mut col = 0;
        for (k, t) in tokens.iter().enumerate() {
            if total > 998 && col + t.len() > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            // A soft line break may put "From " at the start of a line, where mbox-style
            // transports write ">From " and break the signature.
            let starts_from = col == 0
                && k > 0
                && tokens[k..]
                    .iter()
                    .take(5)
                    .flatten()
                    .copied()
                    .eq(b"From ".iter().copied());
            let t: &[u8] = if starts_from { b"=46" } else { t };
            col += t.len();
            out.extend_from_slice(t);
        }
        if lines.peek().is_some() || body.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Encodes `data` as base64 in lines of 76 characters, each ending in CRLF.
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Decodes base64 as RFC 2045 §6.8 has decoders read it: characters outside the base64
/// alphabet (line breaks, blanks, stray 8-bit bytes) are ignored, `=` ends the data, padding
/// may be missing, and a last character that completes no octet is dropped. So a damaged
/// part gives what the recipient's decoder would have shown, not bytes that are signed as
/// they came (8-bit, lines of any length: review).
pub fn base64_decode_lenient(data: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let mut compact: Vec<u8> = data
        .iter()
        .copied()
        .take_while(|&b| b != b'=')
        .filter(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        .collect();
    if compact.len() % 4 == 1 {
        compact.pop();
    }
    LENIENT.decode(&compact).ok()
}

/// Converts every line break (CRLF, lone LF, lone CR) to CRLF.
pub fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Converts a header section's line breaks (CRLF, lone LF) to CRLF. A lone CR is no line
/// break in a header (RFC 5322 §2.2): it becomes a blank, so that it can never start a field
/// of its own or end the header early.
pub fn header_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {}
            b'\r' => out.push(b' '),
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
    }
    out
}

/// Line ends made CRLF where they are one: CRLF, a bare LF, and CRs before an LF (a client's
/// "\r\r\n" ends one line, not two). A CR that ends no line is left as it is, for the
/// header check to find ([`has_lone_cr`]): [`crlf`] would make it a line break of its own.
pub fn line_ends(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' {
            let run = data[i..].iter().take_while(|&&b| b == b'\r').count();
            if data.get(i + run) == Some(&b'\n') {
                out.extend_from_slice(b"\r\n");
                i += run + 1;
            } else {
                out.extend_from_slice(&data[i..i + run]);
                i += run;
            }
            continue;
        }
        if data[i] == b'\n' {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(data[i]);
        }
        i += 1;
    }
    out
}

/// True when `data` holds a CR that is not followed by LF.
pub fn has_lone_cr(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && data.get(i + 1) != Some(&b'\n'))
}

/// True when `data`, after [`crlf`], could be signed as it is: 7-bit, no NUL, no line over 998
/// octets (RFC 5322 §2.1.1), no trailing whitespace and no "From " line (RFC 3156 §3, §5).
/// A lone CR is not accepted: it is content that only an encoding can carry unchanged.
pub fn is_signing_safe(data: &[u8]) -> bool {
    let mut line_len = 0usize;
    let mut prev = b'\n';
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\n' => {
                if matches!(prev, b' ' | b'\t') {
                    return false;
                }
                line_len = 0;
            }
            b'\r' => {
                if data.get(i + 1) != Some(&b'\n') {
                    return false;
                }
                if matches!(prev, b' ' | b'\t') {
                    return false;
                }
            }
            0 | 128..=255 => return false,
            _ => {
                if line_len == 0 && data[i..].starts_with(b"From ") {
                    return false;
                }
                line_len += 1;
                if line_len > 998 {
                    return false;
                }
            }
        }
        if b != b'\r' {
            prev = b;
        }
    }
    // Trailing whitespace on a last line without a line break.
    !matches!(prev, b' ' | b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"plain\r\n", b"plain\r\n"),
            (b"plain", b"plain"),
            (b"trailing \r\n", b"trailing=20\r\n"),
            (b"tab\t\n", b"tab=09\r\n"),
            (b"From me\r\n", b"=46rom me\r\n"),
            (b"x From me\r\n", b"x From me\r\n"),
            (b".\r\n", b"=2E\r\n"),
            (b"a=b\n", b"a=3Db\r\n"),
            ("caf\u{e9}\n".as_bytes(), b"caf=C3=A9\r\n"),
            (b"a\rb\n", b"a=0Db\r\n"),
            (b"\n\n", b"\r\n\r\n"),
            (b"", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&quoted_printable(input)),
                String::from_utf8_lossy(want),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn qp_soft_breaks_keep_lines_short_and_round_trip() {
        let long = "é".repeat(400) + &"x".repeat(3000);
        let enc = quoted_printable(long.as_bytes());
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() <= 77));
        let dec = quoted_printable::decode(&enc, quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(dec, long.as_bytes());
        assert!(is_signing_safe(&enc));
    }

    /// A soft line break that puts "From " or a lone "." at the start of a line encodes it.
    #[test]
    fn qp_soft_breaks_do_not_start_a_line_with_from() {
        for at in 70..80 {
            for tail in ["From the desk of Alice ", "."] {
                let line = "a".repeat(at) + tail;
                let enc = quoted_printable(line.as_bytes());
                let text = String::from_utf8(enc.clone()).unwrap();
                assert!(
                    text.split("\r\n")
                        .all(|l| !l.starts_with("From ") && l != "."),
                    "{text}"
                );
                let dec =
                    quoted_printable::decode(&enc, quoted_printable::ParseMode::Strict).unwrap();
                assert_eq!(dec, line.as_bytes());
            }
        }
    }

    #[test]
    fn qp_repair_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"ok=20line\r\n", b"ok=20line\r\n"),
            (b"trailing   \r\n", b"trailing\r\n"),
            (b"soft= \r\nnext\n", b"soft=\r\nnext\r\n"),
            (b"From x\n", b"=46rom x\r\n"),
            ("caf\u{e9}\n".as_bytes(), b"caf=C3=A9\r\n"),
            (b"bad =ZZ and =4\n", b"bad =ZZ and =4\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8_lossy(&repair_quoted_printable(input)),
                String::from_utf8_lossy(want)
            );
        }
        let long = [b"=41".repeat(500), b"x".repeat(10)].concat();
        let fixed = repair_quoted_printable(&long);
        assert!(is_signing_safe(&fixed));
        let decoded =
            quoted_printable::decode(&fixed, quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(decoded, [b"A".repeat(500), b"x".repeat(10)].concat());
        // A soft line break that would start a line with "From ".
        let line = [
            b"a".repeat(75),
            b"From the desk ".to_vec(),
            b"b".repeat(1000),
        ]
        .concat();
        let fixed = repair_quoted_printable(&line);
        assert!(
            !fixed
                .split(|&b| b == b'\n')
                .any(|l| l.starts_with(b"From ")),
            "{}",
            String::from_utf8_lossy(&fixed)
        );
        assert!(is_signing_safe(&fixed));
        let decoded =
            quoted_printable::decode(&fixed, quoted_printable::ParseMode::Strict).unwrap();
        assert_eq!(decoded, line);
    }

    #[test]
    fn base64_round_trip() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let enc = base64_lines(&data);
        assert!(enc.split(|&b| b == b'\n').all(|l| l.len() <= 78));
        assert_eq!(base64_decode_lenient(&enc).unwrap(), data);
        // RFC 2045 §6.8: what is not base64 is ignored; a dangling sixth of an octet too.
        assert_eq!(base64_decode_lenient(b"QU\xffJD\r\n!!").unwrap(), b"ABC");
        assert_eq!(base64_decode_lenient(b"QUJDR").unwrap(), b"ABC");
        assert_eq!(base64_decode_lenient(b"QUI=\r\nQUJD").unwrap(), b"AB");
        assert_eq!(base64_decode_lenient(b"QUJ").unwrap(), b"AB");
    }

    #[test]
    fn crlf_table() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(crlf(b"\r\n\r\n"), b"\r\n\r\n");
        assert_eq!(
            header_crlf(b"X: a\rBcc: c\r\n\tb\n"),
            b"X: a Bcc: c\r\n\tb\r\n"
        );
        assert!(has_lone_cr(b"a\rb") && has_lone_cr(b"a\r") && !has_lone_cr(b"a\r\nb"));
        assert_eq!(line_ends(b"a\r\r\nb\nc\rd\r\n"), b"a\r\nb\r\nc\rd\r\n");
    }

    #[test]
    fn signing_safety_table() {
        let cases: &[(&[u8], bool)] = &[
            (b"hello\r\nworld\r\n", true),
            (b"hello\nworld\n", true),
            (b"hello \r\n", false),
            (b"hello\t", false),
            (b"From here\r\n", false),
            (b">From here\r\n", true),
            ("\u{e9}".as_bytes(), false),
            (b"a\rb", false),
            (b"nul\0", false),
        ];
        for (input, want) in cases {
            assert_eq!(
                is_signing_safe(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(!is_signing_safe(&vec![b'x'; 999]));
        assert!(is_signing_safe(&vec![b'x'; 998]));
    }
}
