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
    let root = message.root_part();
    if let Some(ct) = root.content_type() {
        if ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("encrypted"))
        {
            return true;
        }
        if ct.ctype().eq_ignore_ascii_case("application")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("pgp-encrypted"))
        {
            return true;
        }
    }
    // Inline PGP: the first text part begins with an armored message (RFC 4880 §6.2).
    let first_text = match &root.body {
        PartType::Text(_) => Some(root),
        PartType::Multipart(_) => message.text_bodies().next(),
        _ => None,
    };
    first_text.is_some_and(|part| {
        let body = &message.raw_message()[part.offset_body as usize..part.offset_end as usize];
        body.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .is_some_and(|l| l == b"-----BEGIN PGP MESSAGE-----")
    })
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
        let pgpmime = b"From: a@example.org\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x\r\n\r\n--x\r\n\r\nVersion: 1\r\n--x--\r\n";
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
}
