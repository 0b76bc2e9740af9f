//! Splitting a raw message into what the rewrite core needs. mail-parser does the parsing;
//! this module keeps the exact bytes of every header field, in order, because a rewrite must
//! never re-serialise what it does not change.

use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};

use super::encoding::crlf;
use super::MessageError;

/// One header field, exactly as it was (folding kept), with CRLF line ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name as written (case kept).
    pub name: String,
    /// The whole field, `Name: value` and its folded continuation lines, ending in CRLF.
    pub raw: Vec<u8>,
    /// Offset of the colon in `raw` (a name may be followed by blanks before it).
    colon: usize,
}

impl HeaderField {
    /// Builds a new field `name: value` ending in CRLF. `value` must already be folded.
    pub fn new(name: &str, value: &str) -> Self {
        HeaderField {
            name: name.to_string(),
            raw: format!("{name}: {value}\r\n").into_bytes(),
            colon: name.len(),
        }
    }

    /// True when the field has this name (case-insensitive, RFC 5322 §1.2.2).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The raw value: everything after the colon, without the final CRLF.
    pub fn raw_value(&self) -> &[u8] {
        let after = &self.raw[self.colon + 1..];
        after.strip_suffix(b"\r\n").unwrap_or(after)
    }

    /// MIME structural fields (RFC 2045): they describe the body, not the message.
    pub fn is_structural(&self) -> bool {
        self.is("MIME-Version")
            || self
                .name
                .get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("Content-"))
    }
}

/// A message accepted for rewriting: the raw bytes plus its header fields.
#[derive(Debug, Clone)]
pub struct ParsedMessage {
    raw: Vec<u8>,
    fields: Vec<HeaderField>,
    body_start: usize,
    from: Option<String>,
    encrypted: bool,
}

impl ParsedMessage {
    /// Parses `raw`. Fails on input that has no header section at all: an empty file, binary
    /// data, prose without headers.
    pub fn parse(mut raw: Vec<u8>) -> Result<Self, MessageError> {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(MessageError::Empty);
        }
        // An mbox postmark ("From sender date") before the header is not part of the message;
        // sendmail and Postfix drop it too.
        if raw.starts_with(b"From ") {
            let end = raw
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| i + 1);
            raw.drain(..end);
        }
        let (fields, body_start, from, encrypted) = {
            let message = MessageParser::default()
                .parse(&raw)
                .ok_or(MessageError::NotAMessage("no header fields found"))?;
            let root = message.root_part();
            if root.headers.is_empty() {
                return Err(MessageError::NotAMessage("no header fields found"));
            }
            let mut fields = Vec::with_capacity(root.headers.len());
            for header in &root.headers {
                let bytes = &raw[header.offset_field as usize..header.offset_end as usize];
                let colon = bytes
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(MessageError::NotAMessage("a header field has no colon"))?;
                let name = std::str::from_utf8(&bytes[..colon])
                    .map_err(|_| MessageError::NotAMessage("a header field name is not ASCII"))?
                    .trim_end()
                    .to_string();
                if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
                    return Err(MessageError::NotAMessage(
                        "a header field name has characters RFC 5322 §2.2 forbids",
                    ));
                }
                let mut field = crlf(bytes);
                if !field.ends_with(b"\r\n") {
                    field.extend_from_slice(b"\r\n");
                }
                fields.push(HeaderField {
                    name,
                    raw: field,
                    colon,
                });
            }
            if fields.iter().any(|f| f.raw.contains(&0)) {
                return Err(MessageError::NotAMessage("NUL byte in the header section"));
            }
            let from = message
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string);
            let encrypted = is_encrypted(&message);
            (fields, root.offset_body as usize, from, encrypted)
        };
        Ok(ParsedMessage {
            raw,
            fields,
            body_start,
            from,
            encrypted,
        })
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn fields(&self) -> &[HeaderField] {
        &self.fields
    }

    /// The body as received (after the blank line).
    pub fn body(&self) -> &[u8] {
        &self.raw[self.body_start.min(self.raw.len())..]
    }

    /// The address in the From field, if it has one.
    pub fn from_address(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// The first value of a header field, unfolded and trimmed (raw bytes, lossy UTF-8).
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.fields.iter().find(|f| f.is(name)).map(|f| {
            String::from_utf8_lossy(f.raw_value())
                .replace("\r\n", "")
                .trim()
                .to_string()
        })
    }

    /// True for PGP/MIME encrypted (RFC 3156 §4) or inline PGP messages: they pass through.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }
}

fn is_encrypted(message: &mail_parser::Message<'_>) -> bool {
    whole_ciphertext(message)
}

/// Whether the whole message is OpenPGP ciphertext, with no part in clear: PGP/MIME (RFC 3156
/// §4: `multipart/encrypted` with protocol `application/pgp-encrypted`, its control part and
/// one armored ciphertext), or a one-part text body that is exactly one armored ciphertext
/// (inline PGP). Anything else — an armored block followed by text, or next to an attachment
/// or an HTML alternative — is not: passing it through would send those parts in clear.
pub fn whole_ciphertext(message: &mail_parser::Message<'_>) -> bool {
    let Some(root) = message.parts.first() else {
        return false;
    };
    let content_type = root.content_type();
    let is = |t: &str, s: &str| {
        content_type.is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case(t)
                && ct.subtype().is_some_and(|x| x.eq_ignore_ascii_case(s))
        })
    };
    if is("multipart", "encrypted") {
        let protocol = content_type
            .and_then(|ct| ct.attribute("protocol"))
            .is_some_and(|p| p.eq_ignore_ascii_case("application/pgp-encrypted"));
        let PartType::Multipart(children) = &root.body else {
            return false;
        };
        let part = |i: usize| {
            children
                .get(i)
                .and_then(|&id| message.parts.get(id as usize))
        };
        let control = part(0).and_then(|p| p.content_type()).is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("application")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("pgp-encrypted"))
        });
        return protocol
            && children.len() == 2
            && control
            && part(1).is_some_and(|p| armored_ciphertext(p.contents()));
    }
    (content_type.is_none() || is("text", "plain"))
        && matches!(root.body, PartType::Text(_))
        && armored_ciphertext(root.contents())
}

/// Whether `text` is exactly one ASCII-armored PGP MESSAGE (RFC 4880 §6.2; whitespace around
/// it allowed, nothing else) whose first packet is a session key packet (public-key or
/// symmetric, tags 1 and 3): what every encrypted OpenPGP message begins with. Text that only
/// looks armored ("-----BEGIN PGP MESSAGE-----", then words) is not ciphertext.
pub fn armored_ciphertext(text: &[u8]) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let trimmed = text.trim_ascii();
    let count = |marker: &[u8]| {
        trimmed
            .windows(marker.len())
            .filter(|w| *w == marker)
            .count()
    };
    if !trimmed.starts_with(BEGIN)
        || !trimmed.ends_with(END)
        || count(BEGIN) != 1
        || count(END) != 1
    {
        return false;
    }
    // Armor header lines ("Version: ...") end at the first blank line; the data follows.
    let mut lines = trimmed[BEGIN.len()..]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // the rest of the BEGIN line
    let mut data = None;
    let mut in_headers = true;
    for line in lines.by_ref() {
        if line.trim_ascii().is_empty() {
            in_headers = false;
            continue;
        }
        if in_headers && line.windows(2).any(|w| w == b": ") {
            continue;
        }
        data = Some(line.trim_ascii());
        break;
    }
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let first = match data {
        Some([a, b, ..]) => match (value(*a), value(*b)) {
            (Some(a), Some(b)) => (a << 2) | (b >> 4),
            _ => return false,
        },
        _ => return false,
    };
    // RFC 4880 §4.2: the packet header's tag, in the old or the new format.
    let tag = if first & 0xC0 == 0xC0 {
        first & 0x3F
    } else if first & 0xC0 == 0x80 {
        (first >> 2) & 0x0F
    } else {
        return false;
    };
    tag == 1 || tag == 3
}

/// Removes Bcc fields (RFC 5322 §3.6.3): no copy may reveal a blind recipient.
pub fn without_bcc(fields: &[HeaderField]) -> Vec<HeaderField> {
    fields
        .iter()
        .filter(|f| !f.is("Bcc") && !f.is("Resent-Bcc"))
        .cloned()
        .collect()
}

/// Rebuilds a message from header fields and a body, with the blank line between them.
pub fn assemble(fields: &[HeaderField], body: &[u8]) -> Vec<u8> {
    let len = fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2 + body.len();
    let mut out = Vec::with_capacity(len);
    for f in fields {
        out.extend_from_slice(&f.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The header name mail-parser uses for Content-Transfer-Encoding (for part walks).
pub(crate) fn is_cte(name: &HeaderName<'_>) -> bool {
    matches!(name, HeaderName::ContentTransferEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_messages() {
        assert_eq!(
            ParsedMessage::parse(Vec::new()).unwrap_err(),
            MessageError::Empty
        );
        assert_eq!(
            ParsedMessage::parse(b"\r\n \n\t\r\n".to_vec()).unwrap_err(),
            MessageError::Empty
        );
        assert!(ParsedMessage::parse(b"just some words here\r\n".to_vec()).is_err());
    }

    #[test]
    fn keeps_fields_exactly() {
        let raw = b"From: A <a@example.org>\nSubject: hi\n  there\nBcc: c@example.org\n\nbody\n";
        let m = ParsedMessage::parse(raw.to_vec()).unwrap();
        let names: Vec<_> = m.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["From", "Subject", "Bcc"]);
        assert_eq!(m.fields()[1].raw, b"Subject: hi\r\n  there\r\n");
        assert_eq!(m.fields()[1].raw_value(), b" hi\r\n  there");
        assert_eq!(m.from_address(), Some("a@example.org"));
        assert_eq!(m.body(), b"body\n");
        assert_eq!(without_bcc(m.fields()).len(), 2);
        assert!(!m.is_encrypted());
    }

    #[test]
    fn detects_encrypted() {
        let pgpmime = b"From: a@example.org\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x\r\n\r\n--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--x\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n--x--\r\n";
        assert!(ParsedMessage::parse(pgpmime.to_vec())
            .unwrap()
            .is_encrypted());
        let inline = b"From: a@example.org\r\n\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n";
        assert!(ParsedMessage::parse(inline.to_vec())
            .unwrap()
            .is_encrypted());
        let quoted = b"From: a@example.org\r\n\r\nsee below\r\n-----BEGIN PGP MESSAGE-----\r\n";
        assert!(!ParsedMessage::parse(quoted.to_vec())
            .unwrap()
            .is_encrypted());
    }

    /// A message that only begins with ciphertext has parts in clear: it must not pass through.
    #[test]
    fn ciphertext_next_to_clear_parts_is_not_encrypted() {
        let block = "-----BEGIN PGP MESSAGE-----\r\nVersion: GnuPG v2\r\n\r\nhF4DAAAAAAAAAAASAQdA\r\n=abcd\r\n-----END PGP MESSAGE-----\r\n";
        let encrypted = |raw: String| {
            ParsedMessage::parse(raw.into_bytes())
                .unwrap()
                .is_encrypted()
        };
        assert!(encrypted(format!("From: a@example.org\r\n\r\n{block}")));
        // Text after the block.
        assert!(!encrypted(format!(
            "From: a@example.org\r\n\r\n{block}\r\nThe password is hunter2.\r\n"
        )));
        // An attachment in clear next to the block.
        assert!(!encrypted(format!(
            "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\n{block}--b\r\n\
             Content-Type: application/pdf\r\n\r\nreport in clear\r\n--b--\r\n"
        )));
        // An HTML alternative in clear.
        assert!(!encrypted(format!(
            "From: a@example.org\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\n{block}--b\r\n\
             Content-Type: text/html\r\n\r\n<p>secret</p>\r\n--b--\r\n"
        )));
        // Armor around words is not ciphertext.
        assert!(!encrypted(
            "From: a@example.org\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nHello Bob, the secret plan\r\n-----END PGP MESSAGE-----\r\n".into()
        ));
        // PGP/MIME whose second part is not ciphertext, or without the protocol parameter.
        assert!(!encrypted(
            "From: a@example.org\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n\r\n\
             --b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n\
             Content-Type: application/octet-stream\r\n\r\nthe text in clear\r\n--b--\r\n".into()
        ));
        assert!(!encrypted(format!(
            "From: a@example.org\r\nContent-Type: multipart/encrypted; boundary=b\r\n\r\n\
             --b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n\
             Content-Type: application/octet-stream\r\n\r\n{block}--b--\r\n"
        )));
        // Two blocks with text between them.
        assert!(!encrypted(format!(
            "From: a@example.org\r\n\r\n{block}in clear\r\n{block}"
        )));
    }
}
