//! Splitting a raw message into what the rewrite core needs. mail-parser does the parsing;
//! this module keeps the exact bytes of every header field, in order, because a rewrite must
//! never re-serialise what it does not change.

use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};

use super::encoding::{crlf, has_lone_cr};
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

    /// The same field written as `raw` (its name, a colon, the value, CRLF).
    pub fn with_raw(&self, raw: Vec<u8>) -> HeaderField {
        let colon = raw.iter().position(|&b| b == b':').unwrap_or(self.colon);
        HeaderField {
            name: self.name.clone(),
            raw,
            colon,
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

/// An mbox postmark, "From sender date": "From" and a blank, where a From header field has
/// a colon after "From" and any blanks (RFC 5322 §4.5.3 allows blanks before the colon).
pub(crate) fn is_postmark(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"From ") else {
        return false;
    };
    let line = rest.split(|b| *b == b'\n').next().unwrap_or_default();
    line.iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_some_and(|b| *b != b':')
}

/// `raw` without a first line that is an mbox postmark ([`is_postmark`]): what local(8) puts
/// before a message it hands a mailbox_command, and some delivery agents before a Maildir
/// file's; no header field.
pub(crate) fn drop_postmark(raw: &mut Vec<u8>) {
    if is_postmark(raw) {
        let end = raw
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |i| i + 1);
        raw.drain(..end);
    }
}

/// The header ends at the first line that is neither a field nor a folded continuation, as
/// Postfix ends it: `Subject: Alert` followed at once by `Disk full` (no blank line) is a
/// message whose body is `Disk full`, which a parser would otherwise skip as a broken field
/// and lose (review: the core dropped such a line from every copy, and the copies' signatures
/// verified without it). The blank line is put where the header ends, with the line end of
/// the line before (CRLF or a bare LF). Text whose first line is no field is left as it is
/// (the drop-in makes it a body of its own; the core refuses it). `lenient` (the core): a
/// name with 8-bit or control bytes counts as a field's ([`looks_like_field`]), which the
/// core then refuses: a message the IMAP server shows with that field and the ones after it
/// in its header is not stored upstream with them in its body (review).
pub(crate) fn header_ended(raw: Vec<u8>, lenient: bool) -> Vec<u8> {
    let mut at = 0;
    let mut seen_field = false;
    while at < raw.len() {
        let line = &raw[at..];
        if line.starts_with(b"\r\n") || line.starts_with(b"\n") {
            return raw;
        }
        let continuation = seen_field && matches!(line.first(), Some(b' ' | b'\t'));
        let field = starts_with_field(line) || lenient && looks_like_field(line);
        if !continuation && !field {
            if at == 0 {
                return raw;
            }
            let blank: &[u8] = if raw[..at].ends_with(b"\r\n") {
                b"\r\n"
            } else {
                b"\n"
            };
            let mut out = Vec::with_capacity(raw.len() + 2);
            out.extend_from_slice(&raw[..at]);
            out.extend_from_slice(blank);
            out.extend_from_slice(line);
            return out;
        }
        seen_field = true;
        at = line
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |p| at + p + 1);
    }
    raw
}

/// A line that is meant as a field even if its name is not one RFC 5322 allows: a name of
/// any bytes but blanks and line ends (8-bit, control bytes, DEL), then the colon. A line
/// with a blank before its colon (`Disk full at 10:30`, `Backup failed: now`) is text, and
/// ends the header as Postfix ends it (review: such a cron mail was refused).
fn looks_like_field(text: &[u8]) -> bool {
    name_then_colon(text, |b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
}

/// Whether the text begins with a header field: a name of printable ASCII but ":" and
/// space, then ":" (RFC 5322 §2.2), or blanks first (the obsolete `Name : value`, §4.5.8,
/// which Postfix accepts too).
pub(crate) fn starts_with_field(text: &[u8]) -> bool {
    name_then_colon(text, |b| (b'!'..=b'~').contains(&b) && b != b':')
}

/// Whether the text begins with a name of bytes `in_name` takes, then blanks, then ":".
fn name_then_colon(text: &[u8], in_name: impl Fn(u8) -> bool) -> bool {
    let name_len = text.iter().take_while(|&&b| in_name(b)).count();
    let blanks = text[name_len..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    name_len > 0 && text.get(name_len + blanks) == Some(&b':')
}

/// Why a message whose own signed or encrypted part has a line over 998 octets is refused
/// where a copy of it would go in the clear ([`ParsedMessage::long_line_in_sealed_part`]).
pub const LONG_SEALED_LINE: &str = "a line over 998 octets (RFC 5322 §2.1.1) inside the \
    sender's own multipart/signed or multipart/encrypted: relays refuse it, and broken, the \
    sender's signature would not verify";

/// A message accepted for rewriting: the raw bytes plus its header fields.
#[derive(Debug, Clone)]
pub struct ParsedMessage {
    raw: Vec<u8>,
    fields: Vec<HeaderField>,
    body_start: usize,
    from: Option<String>,
    /// The From field names that address alone (no group, no second mailbox).
    from_alone: bool,
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
        // sendmail and Postfix drop it too, and the drop-in the escaped ones (`>From `) after
        // it (review: refused here, sent there).
        if is_postmark(&raw) {
            while is_postmark(&raw) || raw.starts_with(b">From ") {
                let end = raw
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(raw.len(), |i| i + 1);
                raw.drain(..end);
            }
        }
        let raw = header_ended(raw, true);
        let (fields, body_start, from, from_alone, encrypted) = {
            let message = parse_bounded(&raw)
                .map_err(|TooDeep| {
                    MessageError::NotAMessage("its MIME parts are nested more than 100 levels deep")
                })?
                .ok_or(MessageError::NotAMessage("no header fields found"))?;
            let root = message.root_part();
            if root.headers.is_empty() {
                return Err(MessageError::NotAMessage("no header fields found"));
            }
            // Every line of the header section is one of the fields read: a line mail-parser
            // passes over (a first line that is no field, a name with a blank inside) would
            // be lost from every copy while their signatures verify (review).
            let mut next = 0usize;
            for header in &root.headers {
                if header.offset_field as usize != next {
                    return Err(MessageError::NotAMessage(
                        "a line of the header section is no field (RFC 5322 §2.2)",
                    ));
                }
                next = header.offset_end as usize;
            }
            let between = raw
                .get(next..(root.offset_body as usize).max(next))
                .unwrap_or_default();
            if !matches!(between, b"" | b"\r\n" | b"\n") {
                return Err(MessageError::NotAMessage(
                    "a line of the header section is no field (RFC 5322 §2.2)",
                ));
            }
            let mut fields = Vec::with_capacity(root.headers.len());
            for header in &root.headers {
                let bytes = &raw[header.offset_field as usize..header.offset_end as usize];
                // One field is one line and its continuation lines: a line break inside it
                // before a line that does not start with a blank is mail-parser reading two
                // fields as one (see `mail_parser`), and the second would escape every rule
                // about it (a Bcc removed, a structural field replaced).
                let lines = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                if lines
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\n' && !matches!(lines.get(i + 1), Some(b' ' | b'\t')))
                {
                    return Err(MessageError::NotAMessage(
                        "a header field is read across a line that starts another field",
                    ));
                }
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
                // A lone CR would become a line break wherever the field is written out with
                // CRLF line ends: a field of its own (a Bcc), or the end of the header with the
                // rest of the field, body text, shown in clear outside the encryption.
                if has_lone_cr(bytes) {
                    return Err(MessageError::NotAMessage(
                        "a header field holds a CR that does not end a line (RFC 5322 §2.2)",
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
            // RFC 5322 §3.6: one From field. With several, MUAs show the first and mail-parser
            // reads the last: none is the From address (signing and require_auth_from then
            // have nothing to take for it).
            let from_field = message
                .from()
                .filter(|_| fields.iter().filter(|f| f.is("From")).count() == 1);
            let from = from_field
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string);
            let from_alone = from.is_some()
                && from_field.is_some_and(|a| a.as_list().is_some_and(|list| list.len() == 1));
            let encrypted = is_encrypted(&message);
            (
                fields,
                root.offset_body as usize,
                from,
                from_alone,
                encrypted,
            )
        };
        Ok(ParsedMessage {
            raw,
            fields,
            body_start,
            from,
            from_alone,
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

    /// The From address when the message has one From field naming it alone: the address an
    /// Autocrypt header may speak for (Autocrypt Level 1 ignores one beside a From of
    /// several addresses, or none).
    pub fn sole_from_address(&self) -> Option<&str> {
        self.from.as_deref().filter(|_| self.from_alone)
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

    /// Whether a multipart/signed or multipart/encrypted of the sender's own holds a line of
    /// more than 998 octets (RFC 5322 §2.1.1). The canonical form keeps those bytes as they
    /// came, since the sender's signature is over them: no copy can carry them in the clear
    /// without a relay refusing the line ("500 Line too long") or breaking it, and the
    /// signature with it (review: the drop-in queued such a message, exit 0, and it bounced).
    /// A message without a long line is not parsed again.
    pub fn long_line_in_sealed_part(&self) -> bool {
        let long = |bytes: &[u8]| {
            bytes
                .split(|&b| b == b'\n')
                .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > 998)
        };
        if !long(&self.raw[self.body_start..]) {
            return false;
        }
        let Some(message) = mail_parser().parse(&self.raw[..]) else {
            return false;
        };
        message.parts.iter().any(|part| {
            super::canonical::is_sealed(part)
                && self
                    .raw
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .is_some_and(long)
        })
    }

    /// True for PGP/MIME encrypted (RFC 3156 §4) or inline PGP messages: they pass through.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }
}

/// Deepest MIME nesting (multiparts and attached messages) of a message sealpost works on
/// (Dovecot's max_nested_mime_parts is 100). The walks over a message's parts recurse; real
/// mail nests a few levels, so a deeper one is refused rather than allowed to exhaust a
/// thread's stack (a milter thread's is 2 MiB). mail-parser nests attached messages without
/// limit, and its parse, dropped, unwinds recursively: 100,000 levels (3 MB of `Content-Type:
/// message/rfc822` lines) overflowed the stack and aborted the whole process (review: the
/// IMAP server, every session of every account, at each SEARCH of such a message), so parses
/// of mail from outside are [`Bounded`].
pub const MAX_NESTING: usize = 100;

/// How deep `message`'s parts nest, attached messages included; counted without recursion.
fn nesting_depth(message: &mail_parser::Message<'_>) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(
        message,
        std::rc::Rc::new(tree_children(message)),
        0usize,
        0usize,
    )];
    while let Some((m, kids, id, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if deepest > MAX_NESTING {
            break;
        }
        match m.parts.get(id).map(|p| &p.body) {
            Some(PartType::Multipart(_)) => {
                stack.extend(kids[id].iter().map(|&c| (m, kids.clone(), c, depth + 1)));
            }
            Some(PartType::Message(inner)) => {
                stack.push((inner, std::rc::Rc::new(tree_children(inner)), 0, depth + 1))
            }
            _ => {}
        }
    }
    deepest
}

/// The children of each part of `message` (not those of its attached messages, which are
/// messages of their own), as a tree: a part comes after its parent and has one parent.
/// mail-parser 0.11.9 can put a part among its own children, or under two parents, when a
/// nested multipart reuses its parent's boundary and is not closed (found by fuzzing: the
/// outgoing core's walk over such a part tree never ended and took all memory, from a 2.7 KB
/// message); every walk over a message's parts takes its children from here. Children
/// outside that order are left out, as mail-parser's own reading of them is not a tree.
pub fn tree_children(message: &mail_parser::Message<'_>) -> Vec<Vec<usize>> {
    let count = message.parts.len();
    let mut claimed = vec![false; count];
    let mut kids = vec![Vec::new(); count];
    for (i, part) in message.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            for c in children.iter().map(|&c| c as usize) {
                if c > i && c < count && !claimed[c] {
                    claimed[c] = true;
                    kids[i].push(c);
                }
            }
        }
    }
    kids
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
        // The parts as RFC 2046 §5.1.1 delimits them, not mail-parser's: it takes
        // "--boundary" anywhere in a line for a delimiter (review: boundary "E", found in
        // "-----END PGP MESSAGE-----", made a sender's real PGP/MIME message three parts, and
        // it was encrypted again instead of passed on).
        let Some(Delimited {
            preamble,
            parts,
            epilogue,
            closed: true,
        }) = content_type
            .and_then(|ct| ct.attribute("boundary"))
            .zip(
                message
                    .raw_message()
                    .get(root.offset_body as usize..root.offset_end as usize),
            )
            .and_then(|(boundary, body)| delimited_parts(body, boundary.as_bytes()))
        else {
            return false;
        };
        let parsed: Vec<_> = parts
            .iter()
            .filter_map(|&part| mail_parser().parse(part))
            .collect();
        let [control, data] = &parsed[..] else {
            return false;
        };
        let (Some(control), Some(data)) = (control.parts.first(), data.parts.first()) else {
            return false;
        };
        let is_control = control.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("application")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("pgp-encrypted"))
        });
        // RFC 3156 §4: the control part holds "Version: 1"; nothing else may travel there,
        // nor in a preamble or epilogue that MUAs do not show but a copy carries.
        let preamble = preamble.trim_ascii();
        return protocol
            && parts.len() == 2
            && is_control
            && control.contents().trim_ascii() == b"Version: 1"
            && single_fields(root)
            && single_fields(control)
            && single_fields(data)
            && (preamble.is_empty() || KNOWN_PREAMBLES.contains(&preamble))
            && epilogue.trim_ascii().is_empty()
            && armored_ciphertext(data.contents());
    }
    (content_type.is_none() || is("text", "plain"))
        && matches!(root.body, PartType::Text(_))
        && single_fields(root)
        && armored_ciphertext(root.contents())
}

/// At most one Content-Type and one Content-Transfer-Encoding field: mail-parser reads the
/// last of several, a recipient's MUA may read the first, and the two could disagree on what
/// is ciphertext.
pub(crate) fn single_fields(part: &mail_parser::MessagePart<'_>) -> bool {
    let count = |wanted: fn(&HeaderName<'_>) -> bool| {
        part.headers.iter().filter(|h| wanted(&h.name)).count()
    };
    // Nor a parameter given twice (`boundary="A"; boundary="B"`): a reader that takes the
    // last would see other parts than the ones checked (review).
    let single_parameters = part
        .content_type()
        .and_then(|ct| ct.attributes())
        .is_none_or(|attributes| {
            attributes.iter().enumerate().all(|(i, a)| {
                !attributes[..i]
                    .iter()
                    .any(|b| b.name.eq_ignore_ascii_case(&a.name))
            })
        });
    count(|n| matches!(n, HeaderName::ContentType)) <= 1 && count(is_cte) <= 1 && single_parameters
}

/// Preambles that MUAs put before the first part of a multipart/encrypted (sealpost's own is
/// the first): the only text besides white space allowed outside the two parts.
const KNOWN_PREAMBLES: &[&[u8]] = &[
    b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
    b"This is an OpenPGP/MIME encrypted message (RFC 2440 and 3156)",
    b"This is an OpenPGP/MIME encrypted message",
    b"This is a multi-part message in MIME format.",
    b"This is a MIME-encapsulated message",
];

/// A multipart body taken apart as RFC 2046 §5.1.1 says ([`delimited_parts`]).
pub(crate) struct Delimited<'a> {
    pub preamble: &'a [u8],
    /// Each part's header and body.
    pub parts: Vec<&'a [u8]>,
    pub epilogue: &'a [u8],
    /// Whether a close delimiter ended the parts; without one, the last part runs to the end.
    pub closed: bool,
}

/// A multipart body taken apart as RFC 2046 §5.1.1 says: a delimiter is a whole line
/// ([`delimiter_line`]), and the line break before it is part of it. None without a
/// delimiter.
pub(crate) fn delimited_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Option<Delimited<'a>> {
    let before_break = |text: &'a [u8]| -> &'a [u8] {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        text.strip_suffix(b"\r").unwrap_or(text)
    };
    // (where the delimiter line starts, where the line after it starts)
    let mut delimiters = Vec::new();
    let mut at = 0;
    let mut closed = false;
    while at < body.len() && !closed {
        let end = body[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| at + p + 1);
        if let Some((close, _)) = delimiter_line(before_break(&body[at..end]), boundary) {
            delimiters.push((at, end));
            closed = close;
        }
        at = end;
    }
    if !closed {
        delimiters.push((body.len(), body.len()));
    }
    let (first, last) = (*delimiters.first()?, *delimiters.last()?);
    if first.0 == body.len() {
        return None;
    }
    let parts = delimiters
        .windows(2)
        .map(|pair| before_break(&body[pair[0].1..pair[1].0]))
        .collect();
    Some(Delimited {
        preamble: before_break(&body[..first.0]),
        parts,
        epilogue: &body[last.1..],
        closed,
    })
}

/// Whether `text` is exactly one ASCII-armored PGP MESSAGE (RFC 4880 §6.2; whitespace around
/// it allowed, nothing else) that holds an encrypted OpenPGP message and nothing more: one or
/// more session key packets (tags 1 and 3; marker packets allowed), then one encrypted data
/// packet (tags 9, 18 or 20) that ends where the data ends (RFC 4880 §11.3). All of the armor
/// is checked, not its first bytes: armor headers only of the kinds RFC 4880 §6.2 names, the
/// data strict base64, the checksum (when present) right (§6.1). Text that only looks armored
/// (a session key packet's first bytes, then words) would otherwise pass for ciphertext and
/// leave in clear under a policy that demands encryption.
pub fn armored_ciphertext(text: &[u8]) -> bool {
    armored_data(text, true).is_some_and(|data| encrypted_packets(&data))
}

/// [`armored_ciphertext`] with any armor header allowed (RFC 4880 §6.2: an unknown one is
/// reported, and the message still processed): for mail coming in, where the test only
/// tells ciphertext from a signed-only block, and gpg decides the rest.
pub fn armored_ciphertext_any_headers(text: &[u8]) -> bool {
    armored_data(text, false).is_some_and(|data| encrypted_packets(&data))
}

/// The decoded data of exactly one armored PGP MESSAGE, or None. With `known_headers`, armor
/// headers only of the kinds RFC 4880 §6.2 names.
fn armored_data(text: &[u8], known_headers: bool) -> Option<Vec<u8>> {
    use base64::Engine as _;
    const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let mut lines = text
        .trim_ascii()
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).trim_ascii_end());
    if lines.next()? != BEGIN {
        return None;
    }
    // Armor header lines end at the first blank line (RFC 4880 §6.2).
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let key = line.split(|&b| b == b':').next().unwrap_or_default();
        let known = [
            &b"Version"[..],
            b"Comment",
            b"MessageID",
            b"Hash",
            b"Charset",
        ];
        if !line.windows(2).any(|w| w == b": ") || (known_headers && !known.contains(&key)) {
            return None;
        }
    }
    let mut encoded = Vec::new();
    let mut checksum = None;
    let mut ended = false;
    for line in lines {
        if ended {
            return None;
        }
        if line == END {
            ended = true;
        } else if checksum.is_some() {
            return None;
        } else if let Some(sum) = line.strip_prefix(b"=").filter(|s| s.len() == 4) {
            checksum = Some(sum.to_vec());
        } else {
            encoded.extend_from_slice(line);
        }
    }
    if !ended {
        return None;
    }
    let engine = &base64::engine::general_purpose::STANDARD;
    let data = engine.decode(&encoded).ok()?;
    if let Some(sum) = checksum {
        let sum = engine.decode(sum).ok()?;
        if sum[..] != crc24(&data).to_be_bytes()[1..] {
            return None;
        }
    }
    Some(data)
}

/// RFC 4880 §6.1.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00B7_04CE;
    for &byte in data {
        crc ^= u32::from(byte) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4CFB;
            }
        }
    }
    crc & 0x00FF_FFFF
}

/// One OpenPGP message that gpg encrypted to several keys, taken apart into one message per
/// copy: each copy keeps the session key packets (RFC 4880 §5.1) of its own keys, in their
/// order, then the same encrypted data. `copies[c][k]` holds the key IDs of key `k` of copy
/// `c` (its primary key and subkeys: gpg picks the encryption subkey). None, and the caller
/// encrypts each copy on its own, unless the message is exactly what that needs: version 3
/// session key packets, each naming a key (gpg's `throw-keyids` names none) of some copy
/// (gpg's `encrypt-to` adds keys nobody asked for), every key of every copy named by one, then
/// one integrity-protected data packet to the end.
pub fn split_by_recipient(binary: &[u8], copies: &[Vec<Vec<[u8; 8]>>]) -> Option<Vec<Vec<u8>>> {
    let mut session_keys: Vec<(&[u8], [u8; 8])> = Vec::new();
    let mut at = 0;
    let data_start = loop {
        let (tag, end) = packet(binary, at)?;
        if tag != 1 {
            // Symmetrically encrypted integrity-protected data, or AEAD-encrypted data.
            if !(tag == 18 || tag == 20) || end != binary.len() {
                return None;
            }
            break at;
        }
        let body = packet_body_start(binary, at)?;
        let key_id: [u8; 8] = binary.get(body + 1..body + 9)?.try_into().ok()?;
        if binary[body] != 3 || key_id == [0; 8] {
            return None;
        }
        session_keys.push((&binary[at..end], key_id));
        at = end;
    };
    let mut used = vec![false; session_keys.len()];
    let mut split = Vec::with_capacity(copies.len());
    for keys in copies {
        // In the order of the copy's keys, not gpg's order for the whole message, which
        // tells where the others stood (review: the copy's own packet came first or last
        // depending on whether another recipient came before it).
        let mut copy = Vec::new();
        let mut taken = vec![false; session_keys.len()];
        for ids in keys {
            let mut named = false;
            for (n, (packet, key_id)) in session_keys.iter().enumerate() {
                if ids.contains(key_id) {
                    named = true;
                    used[n] = true;
                    if !taken[n] {
                        taken[n] = true;
                        copy.extend_from_slice(packet);
                    }
                }
            }
            if !named {
                return None;
            }
        }
        copy.extend_from_slice(&binary[data_start..]);
        split.push(copy);
    }
    used.iter().all(|&u| u).then_some(split)
}

/// The symmetric algorithms (RFC 4880 §9.2) each user ID certification and direct-key
/// signature (types 0x10-0x13, 0x1F) of a key block prefers, in order (its hashed subpacket
/// 11; empty when it has none, which gpg reads as 3DES alone): in a minimal export, the key's
/// self-signatures. Other signatures (subkey bindings) state no preferences.
pub fn preferred_ciphers(keyblock: &[u8]) -> Vec<Vec<u8>> {
    let mut lists = Vec::new();
    let mut at = 0;
    while let Some((tag, end)) = packet(keyblock, at) {
        if tag == 2 {
            let sig = packet_body_start(keyblock, at).and_then(|body| keyblock.get(body..end));
            if let Some(sig) = sig.filter(|s| {
                s.first() == Some(&4) && s.get(1).is_some_and(|t| matches!(t, 0x10..=0x13 | 0x1F))
            }) {
                lists.push(signature_ciphers(sig).unwrap_or_default());
            }
        }
        at = end;
    }
    lists
}

/// Subpacket 11 of a version 4 signature's hashed area (RFC 4880 §5.2.3).
fn signature_ciphers(sig: &[u8]) -> Option<Vec<u8>> {
    if *sig.first()? != 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(sig.get(4..6)?.try_into().ok()?));
    let hashed = sig.get(6..6 + len)?;
    let mut at = 0;
    while at < hashed.len() {
        let first = usize::from(hashed[at]);
        let (len, header) = match first {
            0..=191 => (first, 1),
            192..=254 => (
                ((first - 192) << 8) + usize::from(*hashed.get(at + 1)?) + 192,
                2,
            ),
            _ => (
                u32::from_be_bytes(hashed.get(at + 1..at + 5)?.try_into().ok()?) as usize,
                5,
            ),
        };
        let body = hashed.get(at + header..at + header + len)?;
        if body.first().map(|t| t & 0x7F) == Some(11) {
            return Some(body[1..].to_vec());
        }
        at += header + len;
    }
    None
}

/// Where the body of the packet at `at` starts, for a packet of one definite length.
fn packet_body_start(data: &[u8], at: usize) -> Option<usize> {
    let first = *data.get(at)?;
    if first & 0x40 == 0 {
        return match first & 0x03 {
            0 => Some(at + 2),
            1 => Some(at + 3),
            2 => Some(at + 5),
            _ => None,
        };
    }
    match *data.get(at + 1)? {
        0..=191 => Some(at + 2),
        192..=223 => Some(at + 3),
        255 => Some(at + 6),
        _ => None,
    }
}

/// `binary` as an ASCII-armored OpenPGP message (RFC 4880 §6.2), as gpg writes one: no armor
/// headers, lines of 64 characters, the CRC-24 checksum.
pub fn armored_message(binary: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = b"-----BEGIN PGP MESSAGE-----\n\n".to_vec();
    for line in engine.encode(binary).as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'=');
    out.extend_from_slice(engine.encode(&crc24(binary).to_be_bytes()[1..]).as_bytes());
    out.extend_from_slice(b"\n-----END PGP MESSAGE-----\n");
    out
}

/// How many session key packets (tags 1 and 3) a ciphertext, armored or binary, has before
/// its encrypted data, counting no further than `limit + 1`. gpg tries each one whose key it
/// holds (or that names no key) with gpg-agent, about 1.7 ms each here; it does not stop at a
/// garbled one, so a message of 15,000 copies of a garbled packet for the reader's key kept
/// gpg busy past any deadline. Other packets on the way (a marker, an unknown one) are passed
/// over, not taken as the end: gpg passes over them too. The armor is read as leniently as gpg
/// reads it (characters outside base64 skipped): a message gpg would read must not escape the
/// count. Counting stops at the encrypted data, or where the data stops making sense.
pub fn session_key_packets(ciphertext: &[u8], limit: usize) -> usize {
    count_packets(ciphertext, limit, |tag| match tag {
        1 | 3 => Walk::Count,
        9 | 18 | 20 => Walk::Stop,
        _ => Walk::Pass,
    })
}

/// Whether the encrypted data of a ciphertext (armored or binary), after its session key
/// packets, is a Symmetrically Encrypted Data packet (tag 9, RFC 4880 §5.7): no integrity
/// protection, so its plaintext may have been changed by anyone on the way. gpg refuses to
/// decrypt it unless its options say `ignore-mdc-error`; this is read from the packets
/// themselves, whatever the GnuPG home's options. False when the data is integrity protected
/// (tag 18 or 20) or cannot be read this far (gpg then decides, and fails).
pub fn unprotected_encrypted_data(ciphertext: &[u8]) -> bool {
    let data = openpgp_data(ciphertext);
    let mut at = 0;
    while let Some((tag, end)) = packet(&data, at) {
        match tag {
            9 => return true,
            18 | 20 => return false,
            _ => at = end,
        }
    }
    false
}

/// The key IDs (16 hex digits, upper case) that the public-key session key packets (tag 1,
/// version 3: RFC 4880 §5.1) of a ciphertext, armored or binary, name before its encrypted
/// data; at most `limit` of them. A hidden recipient's is all zeros.
pub fn session_key_ids(ciphertext: &[u8], limit: usize) -> Vec<String> {
    let data = openpgp_data(ciphertext);
    let mut ids = Vec::new();
    let mut at = 0;
    while ids.len() < limit {
        let Some((tag, end)) = packet(&data, at) else {
            break;
        };
        match tag {
            1 => {
                let id = packet_body_start(&data, at)
                    .and_then(|body| data.get(body..end))
                    .filter(|body| body.first() == Some(&3))
                    .and_then(|body| body.get(1..9));
                if let Some(id) = id {
                    ids.push(id.iter().map(|b| format!("{b:02X}")).collect());
                }
            }
            9 | 18 | 20 => break,
            _ => {}
        }
        at = end;
    }
    ids
}

/// How many signatures a detached signature (armored or binary) holds, counting no further
/// than `limit + 1`: gpg checks each one, a key lookup and often a verification, so enough
/// of them outlast any deadline too. A compressed packet (which gpg would open, and which no
/// detached signature needs) counts as too many.
pub fn signature_packets(signature: &[u8], limit: usize) -> usize {
    count_packets(signature, limit, |tag| match tag {
        2 => Walk::Count,
        8 => Walk::TooMany,
        _ => Walk::Pass,
    })
}

/// A mail-parser parse whose attached messages nest at most [`MAX_NESTING`] deep, taken apart
/// level by level when dropped. Reads as the [`mail_parser::Message`] it holds.
pub struct Bounded<'a>(Option<mail_parser::Message<'a>>);

impl<'a> std::ops::Deref for Bounded<'a> {
    type Target = mail_parser::Message<'a>;
    fn deref(&self) -> &mail_parser::Message<'a> {
        self.0.as_ref().expect("taken apart only when dropped")
    }
}

impl Drop for Bounded<'_> {
    fn drop(&mut self) {
        if let Some(message) = self.0.take() {
            take_apart(message);
        }
    }
}

/// Drops `message` with its attached messages one level at a time, not recursively.
fn take_apart(message: mail_parser::Message<'_>) {
    let mut waiting = vec![message];
    while let Some(mut message) = waiting.pop() {
        for part in &mut message.parts {
            if matches!(part.body, PartType::Message(_)) {
                let body = std::mem::replace(&mut part.body, PartType::Text("".into()));
                if let PartType::Message(inner) = body {
                    waiting.push(inner);
                }
            }
        }
    }
}

/// What `line` (without its line break) is to the multipart with this boundary, by RFC 2046
/// §5.1.1: `--boundary`, or `--boundary--` for the close delimiter, then only blanks
/// (transport padding): Some((close, how many blanks)); None for any other line.
pub fn delimiter_line(line: &[u8], boundary: &[u8]) -> Option<(bool, usize)> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, padding) = match rest.strip_prefix(b"--") {
        Some(padding) => (true, padding),
        None => (false, rest),
    };
    padding
        .iter()
        .all(|&b| b == b' ' || b == b'\t')
        .then_some((close, padding.len()))
}

/// A structured field's value in ASCII lower case, without blanks and comments, as a type is
/// read (`message (x) /rfc822` is message/rfc822 to mail-parser).
pub(crate) fn bare_value(value: &[u8]) -> Vec<u8> {
    let mut depth = 0u32;
    let mut bare = Vec::with_capacity(value.len());
    for &b in value {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if depth > 0 || b.is_ascii_whitespace() => {}
            _ => bare.push(b.to_ascii_lowercase()),
        }
    }
    bare
}

/// How many transfer-encodings deep mail-parser decodes and parses attached messages.
const ENCODED_LEVELS: usize = 3;

/// Whether mail-parser, parsing `raw`, would decode a transfer-encoded attached message
/// (base64 or quoted-printable message/rfc822, which it parses on its own and then copies
/// level by level recursively, before any depth could be counted) that may nest deeper than
/// [`MAX_NESTING`]: the decoded text has more Content-Type lines naming rfc822, global or
/// digest than that (each level needs one; words in the text do not count). Review: an 88 KB
/// forwarded message, base64, of 2,000 levels took the IMAP server down at a body SEARCH, and
/// the milter.
fn encoded_too_deep(raw: &[u8], encodings: usize) -> bool {
    // Cheap first looks, so that ordinary mail with attachments is not split into its parts
    // here: an attached message needs a type field naming rfc822, global or digest.
    if encodings >= ENCODED_LEVELS || !transfer_encoded(raw) || message_type_lines(raw) == 0 {
        return false;
    }
    let Some(encoded) = crate::imap::summary::encoded_messages(raw) else {
        return true;
    };
    encoded.into_iter().any(|(body, base64)| {
        let body = &raw[body];
        let decoded = if base64 {
            let text: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
                .collect();
            let usable = text.len() - text.len() % 4;
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(&text[..usable])
                .unwrap_or_default()
        } else {
            quoted_printable::decode(body, quoted_printable::ParseMode::Robust).unwrap_or_default()
        };
        message_type_lines(&decoded) > MAX_NESTING || encoded_too_deep(&decoded, encodings + 1)
    })
}

/// A cheap first look: whether `raw` has a Content-Transfer-Encoding line whose value is not
/// plainly 7bit, 8bit or binary (an encoded word or a folded value counts).
fn transfer_encoded(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-transfer-encoding")
            && !matches!(
                &bare_value(&line[colon + 1..])[..],
                b"7bit" | b"8bit" | b"binary"
            )
    })
}

/// How many Content-Type fields of `raw` (their continuation lines joined) name rfc822,
/// global or digest: a bound on how deeply its attached messages nest.
fn message_type_lines(raw: &[u8]) -> usize {
    let names = |value: &[u8]| {
        value.windows(6).any(|w| {
            w.eq_ignore_ascii_case(b"rfc822")
                || w.eq_ignore_ascii_case(b"global")
                || w.eq_ignore_ascii_case(b"digest")
        })
    };
    let mut count = 0;
    let mut field: Option<Vec<u8>> = None;
    for line in raw.split(|&b| b == b'\n') {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(field) = &mut field {
                field.extend_from_slice(line);
            }
            continue;
        }
        if field.take().is_some_and(|f| names(&f)) {
            count += 1;
        }
        let typed = line.iter().position(|&b| b == b':').is_some_and(|colon| {
            line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-type")
        });
        if typed {
            field = Some(line.to_vec());
        }
    }
    count + usize::from(field.is_some_and(|f| names(&f)))
}

/// mail-parser's reader, as every part of sealpost uses it: Date and Resent-Date are kept as
/// text. mail-parser 0.11.9 reads a letter where a date's zone ends a line (RFC 5322's
/// obsolete military zone `Z`, `UT` with LF line ends, junk such as `+0100n`) together with
/// the line break, and takes the next field for part of the date (found by fuzzing): a `Bcc`
/// after `Date: ... Z` was no field of its own, and every recipient's copy carried it inside
/// the Date field; a Content-Type after it was hidden from the checks that compare readings.
/// Where the date is needed it is read from the field's text alone
/// (`mail_parser::DateTime::parse_rfc822`).
pub fn mail_parser() -> &'static MessageParser {
    // mail-parser's own choice of reader for each field it knows (its default, used only
    // while no field is configured), but for the two dates.
    static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
        let lists = [
            HeaderName::ListArchive,
            HeaderName::ListHelp,
            HeaderName::ListId,
            HeaderName::ListOwner,
            HeaderName::ListPost,
            HeaderName::ListSubscribe,
            HeaderName::ListUnsubscribe,
        ];
        lists
            .into_iter()
            .fold(MessageParser::new(), |p, name| p.header_address(name))
            .with_mime_headers()
            .with_address_headers()
            .with_message_ids()
            .header_id(HeaderName::ReturnPath)
            .header_text(HeaderName::Subject)
            .header_text(HeaderName::Comments)
            .header_comma_separated(HeaderName::Keywords)
            .header_comma_separated(HeaderName::ContentLanguage)
            .header_received(HeaderName::Received)
            .header_raw(HeaderName::Date)
            .header_raw(HeaderName::ResentDate)
    });
    &PARSER
}

/// MIME parts nested deeper than [`MAX_NESTING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// `raw` parsed by mail-parser (None: no message), unless its attached messages nest deeper
/// than [`MAX_NESTING`]. The parse itself does not recurse on nested messages that are not
/// transfer-encoded (and on at most three encoded levels); the depth is counted and the parse
/// dropped without recursion.
pub fn parse_bounded(raw: &[u8]) -> Result<Option<Bounded<'_>>, TooDeep> {
    parse_bounded_with(mail_parser(), raw)
}

/// [`parse_bounded`] with the given parser's settings.
pub fn parse_bounded_with<'a>(
    parser: &MessageParser,
    raw: &'a [u8],
) -> Result<Option<Bounded<'a>>, TooDeep> {
    if encoded_too_deep(raw, 0) {
        return Err(TooDeep);
    }
    let Some(message) = parser.parse(raw) else {
        return Ok(None);
    };
    let parsed = Bounded(Some(message));
    if nesting_depth(&parsed) > MAX_NESTING {
        return Err(TooDeep);
    }
    Ok(Some(parsed))
}

/// Each signature packet of a detached signature (armored or binary), as binary OpenPGP data
/// of its own, up to where the data stops making sense.
pub fn each_signature(signature: &[u8]) -> Vec<Vec<u8>> {
    let data = openpgp_data(signature);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some((tag, end)) = packet(&data, at) {
        if tag == 2 {
            found.push(data[at..end].to_vec());
        }
        at = end;
    }
    found
}

/// What [`count_packets`] does at a packet of some tag.
enum Walk {
    Count,
    Pass,
    Stop,
    TooMany,
}

/// The packets of OpenPGP data (armored or binary) that `walk` counts, no further than
/// `limit + 1`; `usize::MAX` at one it says is too many. The walk ends where `walk` says
/// stop or the data stops making sense.
fn count_packets(data: &[u8], limit: usize, walk: fn(u8) -> Walk) -> usize {
    let data = openpgp_data(data);
    let mut at = 0;
    let mut count = 0;
    while count <= limit {
        let Some((tag, end)) = packet(&data, at) else {
            break;
        };
        match walk(tag) {
            Walk::Count => count += 1,
            Walk::Pass => {}
            Walk::Stop => break,
            Walk::TooMany => return usize::MAX,
        }
        at = end;
    }
    count
}

/// The OpenPGP packets of `data`: binary when its first byte starts a packet (as gpg
/// decides), else read from its armor.
fn openpgp_data(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match data.first() {
        Some(b) if b & 0x80 != 0 => std::borrow::Cow::Borrowed(data),
        _ => lenient_armor(data).map_or(std::borrow::Cow::Borrowed(data), std::borrow::Cow::Owned),
    }
}

/// The data of an armored message read the way gpg reads it, or None when `text` is not
/// armored (binary OpenPGP data).
fn lenient_armor(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let begin = text.windows(15).position(|w| w == b"-----BEGIN PGP ")?;
    let mut lines = text[begin..].split(|&b| b == b'\n').skip(1).peekable();
    // Armor header lines end at the first blank line; a line without a colon is data already
    // (whatever gpg makes of a missing blank line, the count must not skip data).
    while let Some(line) = lines.next_if(|l| l.trim_ascii().is_empty() || l.contains(&b':')) {
        if line.trim_ascii().is_empty() {
            break;
        }
    }
    let mut encoded = Vec::new();
    for line in lines {
        if line.starts_with(b"-----") || line.starts_with(b"=") {
            break;
        }
        encoded.extend(
            line.iter()
                .filter(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/'),
        );
    }
    // Padding is not kept (a lone "=" line would read as the checksum): a last group of two
    // or three characters decodes without it; one character alone is no byte.
    if encoded.len() % 4 == 1 {
        encoded.pop();
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&encoded).ok()
}

/// Whether `data` is session key packets, then one encrypted data packet to its end.
fn encrypted_packets(data: &[u8]) -> bool {
    let mut at = 0;
    let mut session_keys = 0;
    while at < data.len() {
        let Some((tag, end)) = packet(data, at) else {
            return false;
        };
        match tag {
            1 | 3 => session_keys += 1,
            10 => {} // marker packet (RFC 4880 §5.8)
            9 | 18 | 20 => return session_keys > 0 && end == data.len(),
            _ => return false,
        }
        at = end;
    }
    false
}

/// The tag of the packet at `at` and where it ends (RFC 4880 §4.2), or None when its header
/// or length does not fit the data.
pub(crate) fn packet(data: &[u8], at: usize) -> Option<(u8, usize)> {
    let (tag, mut body, mut length) = packet_header(data, at)?;
    // Partial body lengths (§4.2.2.4), chunk by chunk; an indeterminate length runs to the
    // end of the data.
    loop {
        let (len, partial) = match length {
            Length::Stated(len) => (len, false),
            Length::Partial(len) => (len, true),
            Length::Indeterminate => return Some((tag, data.len())),
        };
        let end = body.checked_add(len)?;
        if end > data.len() {
            return None;
        }
        if !partial {
            return Some((tag, end));
        }
        (body, length) = new_length(data, end)?;
    }
}

/// The packet at `at` when its header states its whole length (no partial or indeterminate
/// length, as a key export has): its tag, where its body begins, and where it ends.
pub(crate) fn stated_packet(data: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    match packet_header(data, at)? {
        (tag, body, Length::Stated(len)) => {
            let end = body.checked_add(len)?;
            (end <= data.len()).then_some((tag, body, end))
        }
        _ => None,
    }
}

/// The length a packet header (or a partial body's next length) gives.
enum Length {
    Stated(usize),
    /// Another length follows this many bytes of body.
    Partial(usize),
    /// Old format, length type 3: to the end of the data.
    Indeterminate,
}

/// The tag of the packet at `at`, where its (first) body begins, and its length.
fn packet_header(data: &[u8], at: usize) -> Option<(u8, usize, Length)> {
    let first = *data.get(at)?;
    if first & 0x80 == 0 {
        return None;
    }
    if first & 0x40 != 0 {
        let (body, length) = new_length(data, at + 1)?;
        return Some((first & 0x3F, body, length));
    }
    // Old format: the length type is in the low two bits.
    let tag = (first >> 2) & 0x0F;
    let byte = |i: usize| data.get(i).map(|&b| b as usize);
    let (len, header) = match first & 0x03 {
        0 => (byte(at + 1)?, 2),
        1 => ((byte(at + 1)? << 8) | byte(at + 2)?, 3),
        2 => (
            u32::from_be_bytes(data.get(at + 1..at + 5)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return Some((tag, at + 1, Length::Indeterminate)),
    };
    Some((tag, at + header, Length::Stated(len)))
}

/// A new-format length at `at` (§4.2.2): where the body it measures begins, and the length.
fn new_length(data: &[u8], at: usize) -> Option<(usize, Length)> {
    let byte = |i: usize| data.get(i).map(|&b| b as usize);
    let o1 = byte(at)?;
    Some(match o1 {
        0..=191 => (at + 1, Length::Stated(o1)),
        192..=223 => (
            at + 2,
            Length::Stated(((o1 - 192) << 8) + byte(at + 1)? + 192),
        ),
        255 => (
            at + 5,
            Length::Stated(u32::from_be_bytes(data.get(at + 1..at + 5)?.try_into().ok()?) as usize),
        ),
        _ => (at + 1, Length::Partial(1 << (o1 & 0x1F))),
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

/// A real ciphertext (gpg 2.2, cv25519, "secret" encrypted to a throwaway key) for tests
/// that need one armored block that checks out.
#[cfg(test)]
pub(crate) const SAMPLE_CIPHERTEXT: &str = "-----BEGIN PGP MESSAGE-----\r\n\r\nhF4DEh0N2K5ZjGISAQdAkLU1mUC9mId0LuPdrZD5/yu1kjWfdGERmWo+JbPJSF8w\r\noBbJ1DOwyKq84JrKMNx+ADozpwPXBLZLyZcqjC+undKj0K3p9FHBDn9HbKAaNery\r\n0kIBEluVOn6zBT8dcGFBzPi12fgW6vO293p7nPE5B7bh6fKS1PLZigTXxguU/YcW\r\nR23g8VeuOAHo0ByfIQESvI5G1g0=\r\n=OIqz\r\n-----END PGP MESSAGE-----\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared reader reads every field of the test corpus as mail-parser's default does,
    /// but the dates, which it keeps as text; and a field after a date that ends in a zone
    /// letter is a field of its own.
    #[test]
    fn the_shared_reader_is_mail_parsers_default_but_for_dates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/messages");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            let (Some(ours), Some(theirs)) = (
                mail_parser().parse(&raw[..]),
                MessageParser::default().parse(&raw[..]),
            ) else {
                continue;
            };
            assert_eq!(ours.parts.len(), theirs.parts.len());
            for (a, b) in ours.parts.iter().zip(&theirs.parts) {
                assert_eq!(a.headers.len(), b.headers.len());
                for (x, y) in a.headers.iter().zip(&b.headers) {
                    assert_eq!(
                        (x.offset_field, x.offset_end),
                        (y.offset_field, y.offset_end)
                    );
                    if !matches!(x.name, HeaderName::Date | HeaderName::ResentDate) {
                        assert_eq!(x.value, y.value, "{:?}", x.name);
                    }
                }
            }
            read += 1;
        }
        assert!(read > 20, "{read}");
        for raw in [
            &b"Date: Sun, 22 Nov 2026 10:00:00 Z\r\nBcc: carol@example.org\r\n\r\nx\r\n"[..],
            b"Date: Sun, 22 Nov 2026 10:00:00 UT\nBcc: carol@example.org\n\nx\n",
            b"Date: Sun, 22 Nov 2026 10:00:00 +0000n\r\nBcc: carol@example.org\r\n\r\nx\r\n",
        ] {
            let message = ParsedMessage::parse(raw.to_vec()).unwrap();
            let names: Vec<&str> = message.fields().iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, ["Date", "Bcc"], "{raw:?}");
            assert!(without_bcc(message.fields()).iter().all(|f| !f.is("Bcc")));
        }
    }

    /// The header ends at a line with no colon; text whose first line is none is left as it
    /// is; a name with 8-bit bytes ends it only for the drop-in (review of 89641ca).
    #[test]
    fn where_the_header_ends() {
        let ended = |raw: &[u8], eight_bit: bool| header_ended(raw.to_vec(), eight_bit);
        assert_eq!(
            ended(b"Subject: a\r\nno colon\r\nX: y\r\n\r\nbody\r\n", true),
            b"Subject: a\r\n\r\nno colon\r\nX: y\r\n\r\nbody\r\n"
        );
        assert_eq!(
            ended(b"Subject: a\nno colon\n", false),
            b"Subject: a\n\nno colon\n"
        );
        for unchanged in [
            &b" \r\nFrom: a@example.org\r\n\r\nbody\r\n"[..],
            b"Subject : a\r\n\tfolded\r\nTo:\r\n b@example.org\r\n\r\nbody",
            b"Subject: no body",
        ] {
            assert_eq!(ended(unchanged, true), unchanged);
        }
        let eight_bit = b"From: a@example.org\r\nX-\xc3\x84: 1\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(ended(eight_bit, true), eight_bit);
        assert_eq!(
            ended(eight_bit, false),
            b"From: a@example.org\r\n\r\nX-\xc3\x84: 1\r\nSubject: s\r\n\r\nbody\r\n"
        );
        // The core refuses one with an 8-bit field name, as it did, rather than store its
        // fields as body text; so with a control byte, DEL or a blank in a name, and a first
        // line that is no field, which the parser passed over (review).
        assert!(ParsedMessage::parse(eight_bit.to_vec()).is_err());
        for refused in [
            &b"garbage line\r\nFrom: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"[..],
            b"From: a@example.org\r\nX-\x01: 1\r\nSubject: s\r\n\r\nbody\r\n",
            b"From: a@example.org\r\nX-\x7f: 1\r\nSubject: s\r\n\r\nbody\r\n",
            b" \r\nFrom: a@example.org\r\n\r\nbody\r\n",
        ] {
            let parsed = ParsedMessage::parse(refused.to_vec());
            assert!(parsed.is_err(), "{:?}", String::from_utf8_lossy(refused));
        }
        // Text with a colon after a blank ends the header, as Postfix ends it (review: a cron
        // mail without the blank line was refused); so does a name with a blank inside.
        for (text, body) in [
            (&b"From: a@example.org\nSubject: Alert\nBackup failed at 03:00\nretry\n"[..], &b"Backup failed at 03:00\r\nretry\r\n"[..]),
            (b"From: a@example.org\r\nSubject: s\r\nDisk full: now\r\n\r\nbody\r\n", b"Disk full: now\r\n\r\nbody\r\n"),
            (b"From: a@example.org\r\nX Y: 1\r\nBcc: c@example.org\r\n\r\nbody\r\n", b"X Y: 1\r\nBcc: c@example.org\r\n\r\nbody\r\n"),
            (b"From x@example.org Mon Jan  1 00:00:00 2026\n>From y Mon Jan  1 00:00:00 2026\nFrom: a@example.org\n\nbody\n", b"body\r\n"),
        ] {
            let parsed = ParsedMessage::parse(text.to_vec()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(crlf(parsed.body()), body, "{:?}", String::from_utf8_lossy(text));
        }
        for taken in [
            &b"From: a@example.org\r\nSubject: no body"[..],
            b"From: a@example.org\nSubject: s\n\nbody\n",
            b"From: a@example.org\r\nSubject : s\r\n\tfolded\r\n\r\nbody\r\n",
        ] {
            let parsed = ParsedMessage::parse(taken.to_vec());
            assert!(
                parsed.is_ok(),
                "{:?}: {:?}",
                String::from_utf8_lossy(taken),
                parsed.err()
            );
        }
    }

    #[test]
    fn a_parameter_given_twice_is_no_single_field() {
        let twice = b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; \
boundary=\"A\"; Boundary=\"B\"\r\n\r\n--A\r\n\r\nx\r\n--A--\r\n";
        let m = mail_parser::MessageParser::default()
            .parse(&twice[..])
            .unwrap();
        assert!(!single_fields(&m.parts[0]));
        let once =
            b"Content-Type: multipart/mixed; boundary=\"A\"\r\n\r\n--A\r\n\r\nx\r\n--A--\r\n";
        let m = mail_parser::MessageParser::default()
            .parse(&once[..])
            .unwrap();
        assert!(single_fields(&m.parts[0]));
    }

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
        // A lone CR in the header would end the header early wherever CRLF is written out.
        let cr = b"From: a@example.org\rTo: b@example.org\rBcc: c@example.org\r\rsecret\r";
        assert!(ParsedMessage::parse(cr.to_vec()).is_err());
        assert!(
            ParsedMessage::parse(b"X-A: a\rBcc: c@example.org\r\n\r\nbody\r\n".to_vec()).is_err()
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let nest = |n: usize| {
            let mut m = b"From: a@example.org\r\n".to_vec();
            for i in 0..n {
                m.extend(
                    format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                        .bytes(),
                );
            }
            m.extend(b"Content-Type: text/plain\r\n\r\nhi\r\n");
            for i in (0..n).rev() {
                m.extend(format!("--b{i}--\r\n").bytes());
            }
            m
        };
        assert!(ParsedMessage::parse(nest(MAX_NESTING)).is_ok());
        assert!(ParsedMessage::parse(nest(MAX_NESTING + 1)).is_err());
    }

    #[test]
    fn two_from_fields_give_no_from_address() {
        let m = ParsedMessage::parse(
            b"From: bob@example.org\r\nFrom: alice@example.org\r\n\r\nhi\r\n".to_vec(),
        )
        .unwrap();
        assert_eq!(m.from_address(), None);
        assert_eq!(m.sole_from_address(), None);
        // One field of two mailboxes: the first signs, none has Autocrypt speak for it.
        let m = ParsedMessage::parse(
            b"From: bob@example.org, alice@example.org\r\nSender: bob@example.org\r\n\r\nhi\r\n"
                .to_vec(),
        )
        .unwrap();
        assert_eq!(m.from_address(), Some("bob@example.org"));
        assert_eq!(m.sole_from_address(), None);
        let m =
            ParsedMessage::parse(b"From: Bob <bob@example.org>\r\n\r\nhi\r\n".to_vec()).unwrap();
        assert_eq!(m.sole_from_address(), Some("bob@example.org"));
    }

    #[test]
    fn postmark_is_not_a_from_field() {
        let m =
            ParsedMessage::parse(b"From : A <a@example.org>\r\nTo: b@x.org\r\n\r\nhi\r\n".to_vec())
                .unwrap();
        assert_eq!(m.from_address(), Some("a@example.org"));
        let m = ParsedMessage::parse(
            b"From a@example.org Thu Dec  3 10:00:00 2026\nFrom: A <a@example.org>\n\nhi\n"
                .to_vec(),
        )
        .unwrap();
        assert_eq!(m.fields().len(), 1);
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
        let pgpmime = format!("From: a@example.org\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=x\r\n\r\n--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--x\r\nContent-Type: application/octet-stream\r\n\r\n{SAMPLE_CIPHERTEXT}--x--\r\n");
        assert!(ParsedMessage::parse(pgpmime.into_bytes())
            .unwrap()
            .is_encrypted());
        let inline = format!("From: a@example.org\r\n\r\n\r\n{SAMPLE_CIPHERTEXT}");
        assert!(ParsedMessage::parse(inline.into_bytes())
            .unwrap()
            .is_encrypted());
        let quoted = b"From: a@example.org\r\n\r\nsee below\r\n-----BEGIN PGP MESSAGE-----\r\n";
        assert!(!ParsedMessage::parse(quoted.to_vec())
            .unwrap()
            .is_encrypted());
    }

    /// Text made to look like ciphertext, or hidden around a real one, never passes for
    /// ciphertext (what an encrypt-only policy would let through unencrypted).
    #[test]
    fn only_checked_ciphertext_passes() {
        let encrypted = |raw: &str| {
            ParsedMessage::parse(raw.as_bytes().to_vec())
                .unwrap()
                .is_encrypted()
        };
        let inline = |block: &str| format!("From: a@example.org\r\n\r\n{block}");
        assert!(encrypted(&inline(SAMPLE_CIPHERTEXT)));
        // A session key packet's first bytes, then words.
        assert!(!encrypted(&inline(
            "-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\nThe password is hunter2\r\n-----END PGP MESSAGE-----\r\n"
        )));
        // A wrong checksum, an armor header of another kind, a line gone.
        assert!(!encrypted(&inline(
            &SAMPLE_CIPHERTEXT.replace("=OIqz", "=OIqy")
        )));
        assert!(!encrypted(&inline(&SAMPLE_CIPHERTEXT.replacen(
            "\r\n\r\n",
            "\r\nSecret: hunter2\r\n\r\n",
            1
        ))));
        let truncated: String = SAMPLE_CIPHERTEXT
            .split("\r\n")
            .filter(|l| !l.starts_with("0kIB") && !l.starts_with('='))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert!(!encrypted(&inline(&truncated)));
        // PGP/MIME with text in the control part, the preamble or the epilogue, or with a
        // second Content-Type.
        let pgp_mime = |preamble: &str, control: &str, epilogue: &str, extra: &str| {
            format!(
                "From: a@example.org\r\nContent-Type: multipart/encrypted; \
                 protocol=\"application/pgp-encrypted\"; boundary=x\r\n{extra}\r\n{preamble}\
                 --x\r\nContent-Type: application/pgp-encrypted\r\n\r\n{control}\r\n\
                 --x\r\nContent-Type: application/octet-stream\r\n\r\n{SAMPLE_CIPHERTEXT}\
                 --x--\r\n{epilogue}"
            )
        };
        let standard = "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n";
        assert!(encrypted(&pgp_mime("", "Version: 1", "", "")));
        assert!(encrypted(&pgp_mime(standard, "Version: 1", "\r\n", "")));
        assert!(!encrypted(&pgp_mime(
            "",
            "Version: 1\r\nThe password is hunter2",
            "",
            ""
        )));
        assert!(!encrypted(&pgp_mime(
            "The password is hunter2\r\n",
            "Version: 1",
            "",
            ""
        )));
        assert!(!encrypted(&pgp_mime(
            "",
            "Version: 1",
            "The password is hunter2\r\n",
            ""
        )));
        assert!(!encrypted(&pgp_mime(
            "",
            "Version: 1",
            "",
            "Content-Type: text/plain\r\n"
        )));
        // Delimiters are whole lines (RFC 2046 §5.1.1): a boundary found inside the armor
        // lines ("-----BEGIN", "-----END") is none (review: boundary E or B made a real
        // PGP/MIME message three parts, and it was encrypted again).
        for boundary in ["E", "B", "---", "END PGP MESSAGE-----"] {
            let raw = pgp_mime("", "Version: 1", "", "")
                .replace("boundary=x\r\n", &format!("boundary=\"{boundary}\"\r\n"));
            let raw = raw.replace("--x", &format!("--{boundary}"));
            assert!(encrypted(&raw), "{boundary}");
        }
        // Text after a delimiter on its line is no delimiter: the part goes on, and a part
        // of text made of it is one part more.
        let loose = pgp_mime("", "Version: 1", "", "").replace(
            "--x--\r\n",
            "--x--\r\n--xx\r\nContent-Type: text/plain\r\n\r\nThe password is hunter2\r\n",
        );
        assert!(!encrypted(&loose));
        let glued = pgp_mime("", "Version: 1", "", "").replacen(
            "--x\r\nContent-Type: application/octet-stream",
            "--x\r\nContent-Type: text/plain\r\n\r\nThe password is hunter2\r\n--x \r\nContent-Type: application/octet-stream",
            1,
        );
        assert!(!encrypted(&glued));
    }

    /// The count of session key packets sees through what gpg's armor reader tolerates.
    /// A version 3 session key packet for `key_id` (new format), its algorithm-specific part
    /// made up.
    fn session_key(key_id: [u8; 8]) -> Vec<u8> {
        let mut body = vec![3];
        body.extend_from_slice(&key_id);
        body.push(18);
        body.extend_from_slice(&[0x5A; 40]);
        [vec![0xC1, body.len() as u8], body].concat()
    }

    /// Integrity-protected data (tag 18) of `len` bytes after its version, in partial chunks
    /// of 512 bytes and a last one, as gpg streams it.
    fn protected_data(len: usize) -> Vec<u8> {
        let body: Vec<u8> = std::iter::once(1)
            .chain((0..len).map(|i| i as u8))
            .collect();
        let mut out = vec![0xD2];
        let mut chunks = body.chunks(512).peekable();
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_some() && chunk.len() == 512 {
                out.push(0xE9); // 2^9 = 512, partial
            } else {
                out.extend_from_slice(&[0xFF, 0, 0, (chunk.len() >> 8) as u8, chunk.len() as u8]);
            }
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn the_key_ids_a_ciphertext_is_encrypted_to() {
        let message = [
            session_key([0xAB; 8]),
            session_key([0; 8]),
            protected_data(100),
            session_key([1; 8]),
        ]
        .concat();
        assert_eq!(
            session_key_ids(&message, 10),
            ["ABABABABABABABAB", "0000000000000000"]
        );
        assert_eq!(
            session_key_ids(&armored_message(&message), 1),
            ["ABABABABABABABAB"]
        );
    }

    #[test]
    fn a_message_to_several_keys_splits_into_one_per_copy() {
        let (a, b, c, own) = ([1; 8], [2; 8], [3; 8], [4; 8]);
        let data = protected_data(1500);
        let message = [
            session_key(a),
            session_key(b),
            session_key(c),
            session_key(own),
            data.clone(),
        ]
        .concat();
        // Copy 1: key a (its primary key ID first, then the subkey gpg used); copies 2 and 3
        // with the sender's own key too.
        let copies = vec![
            vec![vec![[9; 8], a]],
            vec![vec![b], vec![own]],
            vec![vec![c], vec![own]],
        ];
        let split = split_by_recipient(&message, &copies).expect("splits");
        assert_eq!(split[0], [session_key(a), data.clone()].concat());
        assert_eq!(
            split[1],
            [session_key(b), session_key(own), data.clone()].concat()
        );
        assert_eq!(
            split[2],
            [session_key(c), session_key(own), data.clone()].concat()
        );
        // A copy's packets come in the order of its keys, whatever gpg's order.
        let reordered = [session_key(own), session_key(b), data.clone()].concat();
        let split = split_by_recipient(&reordered, &[vec![vec![b], vec![own]], vec![vec![own]]])
            .expect("splits");
        assert_eq!(
            split[0],
            [session_key(b), session_key(own), data.clone()].concat()
        );
        // Two copies for one key both get its packet.
        let twice = split_by_recipient(
            &[session_key(a), data.clone()].concat(),
            &[vec![vec![a]], vec![vec![a]]],
        );
        assert_eq!(
            twice,
            Some(vec![[session_key(a), data.clone()].concat(); 2])
        );
    }

    #[test]
    fn a_message_not_made_for_splitting_is_left_whole() {
        let (a, b) = ([1; 8], [2; 8]);
        let data = protected_data(100);
        let copies = vec![vec![vec![a]], vec![vec![b]]];
        let split = |parts: &[Vec<u8>]| split_by_recipient(&parts.concat(), &copies);
        assert!(split(&[session_key(a), session_key(b), data.clone()]).is_some());
        // gpg's throw-keyids: no key named.
        assert_eq!(
            split(&[session_key(a), session_key([0; 8]), data.clone()]),
            None
        );
        // A key no copy asked for (gpg's encrypt-to), or a copy's key without its packet.
        let stranger = [
            session_key(a),
            session_key(b),
            session_key([7; 8]),
            data.clone(),
        ];
        assert_eq!(split(&stranger), None);
        assert_eq!(split(&[session_key(a), data.clone()]), None);
        // Another version of session key packet; a symmetric one (tag 3).
        let mut v6 = session_key(b);
        v6[2] = 6;
        assert_eq!(split(&[session_key(a), v6, data.clone()]), None);
        let symmetric = vec![0xC3, 4, 4, 9, 3, 0];
        assert_eq!(
            split(&[session_key(a), session_key(b), symmetric, data.clone()]),
            None
        );
        // Data without integrity protection (tag 9), data cut short, a packet after it.
        let mut unprotected = data.clone();
        unprotected[0] = 0xC9;
        assert_eq!(split(&[session_key(a), session_key(b), unprotected]), None);
        let whole = [session_key(a), session_key(b), data.clone()].concat();
        assert_eq!(split_by_recipient(&whole[..whole.len() - 1], &copies), None);
        assert_eq!(
            split(&[session_key(a), session_key(b), data.clone(), session_key(a)]),
            None
        );
        assert_eq!(split(&[session_key(a), session_key(b)]), None);
        assert_eq!(split(&[]), None);
    }

    #[test]
    fn encrypted_data_without_integrity_protection_is_seen() {
        // A session key packet (tag 1, old format), then the encrypted data: tag 9 (no MDC),
        // tag 18 (SEIPD) or tag 20 (AEAD); binary and armored.
        let session_key = [0x84u8, 3, 3, 0, 0];
        let with = |tag: u8| [&session_key[..], &[0xC0 | tag, 3, 1, 2, 3]].concat();
        assert!(unprotected_encrypted_data(&with(9)));
        assert!(!unprotected_encrypted_data(&with(18)));
        assert!(!unprotected_encrypted_data(&with(20)));
        use base64::Engine as _;
        let armored = |binary: &[u8]| {
            format!(
                "-----BEGIN PGP MESSAGE-----\r\n\r\n{}\r\n-----END PGP MESSAGE-----\r\n",
                base64::engine::general_purpose::STANDARD.encode(binary)
            )
            .into_bytes()
        };
        assert!(unprotected_encrypted_data(&armored(&with(9))));
        assert!(!unprotected_encrypted_data(&armored(&with(18))));
        // Data cut short, or no packets at all: left to gpg.
        assert!(!unprotected_encrypted_data(&with(9)[..6]));
        assert!(!unprotected_encrypted_data(b"not OpenPGP"));
    }

    #[test]
    fn the_ciphers_a_keys_signatures_prefer_are_read() {
        // A version 4 signature: hashed creation time (2), preferred symmetric algorithms
        // (11, critical bit set), key flags (27); nothing unhashed; then a made-up MPI.
        let hashed = [
            &[5u8, 2, 0, 0, 0, 1][..],
            &[4, 0x8B, 9, 8, 7],
            &[2, 27, 0x0C],
        ]
        .concat();
        let mut body = vec![4, 0x13, 22, 8];
        body.extend_from_slice(&(hashed.len() as u16).to_be_bytes());
        body.extend_from_slice(&hashed);
        body.extend_from_slice(&[0, 0, 0xAB, 0xCD, 0, 8, 0xFF]);
        let signature = [vec![0xC2, body.len() as u8], body.clone()].concat();
        let user_id = [vec![0xCD, 3], b"bob".to_vec()].concat();
        let block = [
            user_id.clone(),
            signature.clone(),
            user_id,
            signature.clone(),
        ]
        .concat();
        assert_eq!(
            preferred_ciphers(&block),
            vec![vec![9, 8, 7], vec![9, 8, 7]]
        );
        // A version 3 signature, or a subkey binding (0x18): no list. A certification
        // without the subpacket: an empty one.
        let mut v3 = body.clone();
        v3[0] = 3;
        assert!(preferred_ciphers(&[vec![0xC2, v3.len() as u8], v3].concat()).is_empty());
        let mut binding = body.clone();
        binding[1] = 0x18;
        let binding = [vec![0xC2, binding.len() as u8], binding].concat();
        assert!(preferred_ciphers(&binding).is_empty());
        let mut bare = vec![4, 0x13, 22, 8, 0, 6];
        bare.extend_from_slice(&[5, 2, 0, 0, 0, 1]);
        bare.extend_from_slice(&[0, 0, 0xAB, 0xCD, 0, 8, 0xFF]);
        let bare = [vec![0xC2, bare.len() as u8], bare].concat();
        assert_eq!(preferred_ciphers(&bare), vec![Vec::<u8>::new()]);
        assert!(preferred_ciphers(b"").is_empty());
        // Cut inside the hashed area: an empty list, nothing read past the end.
        let cut = &signature[..12];
        assert!(preferred_ciphers(cut).iter().all(Vec::is_empty));
    }

    #[test]
    fn armored_messages_read_back_as_gpg_reads_them() {
        for len in [0, 1, 2, 3, 47, 48, 49, 100, 1000] {
            let binary: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let armored = armored_message(&binary);
            assert_eq!(armored_data(&armored, true), Some(binary), "{len} bytes");
            assert!(armored.split(|&b| b == b'\n').all(|l| l.len() <= 64));
        }
        let message = [session_key([1; 8]), protected_data(10)].concat();
        assert!(armored_ciphertext(&armored_message(&message)));
    }

    #[test]
    fn session_key_packets_are_counted_as_gpg_reads_them() {
        use base64::Engine as _;
        assert_eq!(session_key_packets(SAMPLE_CIPHERTEXT.as_bytes(), 1000), 1);
        let data = armored_data(SAMPLE_CIPHERTEXT.as_bytes(), true).unwrap();
        assert_eq!(session_key_packets(&data, 1000), 1, "binary");
        // The first packet (the PKESK, 96 bytes) 50 times, then the rest.
        let many = [data[..96].repeat(50), data[96..].to_vec()].concat();
        assert_eq!(session_key_packets(&many, 1000), 50);
        assert_eq!(
            session_key_packets(&many, 10),
            11,
            "counting stops past the limit"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(&many);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let strict = format!(
            "-----BEGIN PGP MESSAGE-----\nComment: x\n\n{}\n-----END PGP MESSAGE-----\n",
            lines.join("\n")
        );
        assert_eq!(session_key_packets(strict.as_bytes(), 1000), 50);
        // Stray characters in the data, no blank line after the BEGIN line, no checksum.
        let sloppy = format!(
            "-----BEGIN PGP MESSAGE-----\r\n{}\r\n-----END PGP MESSAGE-----",
            lines.join(" !\r\n")
        );
        assert_eq!(session_key_packets(sloppy.as_bytes(), 1000), 50);
        assert_eq!(session_key_packets(b"not OpenPGP at all", 1000), 0);
        // An unknown packet (tag 60, new format) first is passed over, as gpg does.
        let hidden = [&[0xFC, 0x01, 0x00][..], &many].concat();
        assert_eq!(session_key_packets(&hidden, 1000), 50);
        // Binary data is read as binary, whatever text its packets hold.
        let mut text_inside = many.clone();
        text_inside.splice(0..0, [0xFC, 15].into_iter().chain(*b"-----BEGIN PGP "));
        assert_eq!(session_key_packets(&text_inside, 1000), 50);
    }

    #[test]
    fn attached_messages_nested_too_deeply_are_not_parsed() {
        let nested = |n: usize, level: &str| {
            [&b"From: a@x\r\n"[..], &level.as_bytes().repeat(n), b"x\r\n"].concat()
        };
        let plain = "Content-Type: message/rfc822\r\n\r\n";
        // The first level is the message's own type: n levels nest n - 1 deep.
        assert!(parse_bounded(&nested(MAX_NESTING + 1, plain)).is_ok());
        assert_eq!(
            parse_bounded(&nested(MAX_NESTING + 2, plain)).err(),
            Some(TooDeep)
        );
        // Spellings the parser reads the same; 200,000 levels, parsed, counted and dropped
        // on a test thread's stack.
        for level in [
            "Content-Type: message(x)/rfc822\r\n\r\n",
            "Content-Type: message /rfc822\r\n\r\n",
            "Content-Type: message\r\n /RFC822\r\n\r\n",
        ] {
            assert_eq!(parse_bounded(&nested(200_000, level)).err(), Some(TooDeep));
        }
        assert!(matches!(
            ParsedMessage::parse(nested(MAX_NESTING + 2, plain)),
            Err(MessageError::NotAMessage(_))
        ));
        assert!(ParsedMessage::parse(nested(10, plain)).is_ok());
        // A transfer-encoded attached message that nests deeply once decoded: mail-parser
        // decodes and copies it recursively while parsing (review: 2,000 levels in 88 KB of
        // base64 took the IMAP server down), so it is found before, in base64 and in QP.
        use base64::Engine as _;
        let inner = nested(20_000, plain);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&inner);
        let outer = |cte: &str, body: &str| {
            format!(
                "From: a@x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                 Content-Type: message/rfc822\r\nContent-Transfer-Encoding: {cte}\r\n\r\n\
                 {body}\r\n--b--\r\n"
            )
            .into_bytes()
        };
        assert_eq!(
            parse_bounded(&outer("base64", &encoded)).err(),
            Some(TooDeep)
        );
        let qp = String::from_utf8(inner.clone())
            .unwrap()
            .replace('=', "=3D");
        assert_eq!(
            parse_bounded(&outer("quoted-printable", &qp)).err(),
            Some(TooDeep)
        );
        // The encoding written as an encoded word, which mail-parser decodes; an empty type
        // in a digest, which it takes for none (review: both still crashed).
        let cte_word = String::from_utf8(outer("=?us-ascii?B?YmFzZTY0?=", &encoded)).unwrap();
        assert_eq!(parse_bounded(cte_word.as_bytes()).err(), Some(TooDeep));
        let digest = format!(
            "From: a@x\r\nContent-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\
             Content-Type:\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b--\r\n"
        );
        assert_eq!(parse_bounded(digest.as_bytes()).err(), Some(TooDeep));
        // A forwarded newsletter that says "global" and "digest" in its text is no nesting
        // (review: refused as nested too deeply).
        let newsletter = base64::engine::general_purpose::STANDARD.encode(format!(
            "From: news@x\r\nSubject: digest\r\n\r\n{}",
            "Global markets, daily digest, rfc822.\r\n".repeat(300)
        ));
        let raw = outer("base64", &newsletter);
        assert!(parse_bounded(&raw).unwrap().is_some());
        // An ordinary forwarded message in base64 is parsed.
        let forwarded = base64::engine::general_purpose::STANDARD
            .encode("From: b@x\r\nSubject: fwd\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nhi\r\n");
        let raw = outer("base64", &forwarded);
        let parsed = parse_bounded(&raw).unwrap().unwrap();
        assert!(nesting_depth(&parsed) >= 2);
        // Text that names the types often is no nesting.
        let log = "GET /api/message/1 digest rfc822\r\n".repeat(20_000);
        assert!(ParsedMessage::parse(format!("Subject: log\r\n\r\n{log}").into_bytes()).is_ok());
    }

    #[test]
    fn signatures_are_counted_and_compression_refused() {
        // Two signature packets (old format, tag 2, one-byte length) and a marker.
        let sig = [0x88, 0x01, 0x04];
        let marker = [0xA8, 0x03, b'P', b'G', b'P'];
        let data = [&sig[..], &marker, &sig].concat();
        assert_eq!(signature_packets(&data, 100), 2);
        assert_eq!(each_signature(&data), [sig.to_vec(), sig.to_vec()]);
        assert_eq!(
            signature_packets(&sig.repeat(5), 3),
            4,
            "stops past the limit"
        );
        // A compressed packet (tag 8) counts as too many.
        let compressed = [&sig[..], &[0xA3, 0x01, 0x00]].concat();
        assert_eq!(signature_packets(&compressed, 100), usize::MAX);
    }

    #[test]
    fn packets_are_session_keys_then_one_encrypted_packet() {
        // Tag 1 (public-key session key), then tag 18 (SEIPD), new format.
        assert!(encrypted_packets(&[0xC1, 2, 3, 0, 0xD2, 2, 1, 0]));
        // Partial body lengths (RFC 4880 §4.2.2.4): 2 bytes, then a final 1.
        assert!(encrypted_packets(&[0xC1, 2, 3, 0, 0xD2, 0xE1, 1, 0, 1, 0]));
        // Old format tag 1 (0x84) and tag 9, indeterminate length.
        assert!(encrypted_packets(&[0x84, 2, 3, 0, 0xA7, 1, 2, 3]));
        // A literal data packet (tag 11) after the encrypted one.
        assert!(!encrypted_packets(&[
            0xC1, 2, 3, 0, 0xD2, 2, 1, 0, 0xCB, 1, 0x62
        ]));
        // No session key; a length past the end; a literal packet alone.
        assert!(!encrypted_packets(&[0xD2, 2, 1, 0]));
        assert!(!encrypted_packets(&[0xC1, 2, 3, 0, 0xD2, 9, 1, 0]));
        assert!(!encrypted_packets(&[0xCB, 1, 0x62]));
        assert_eq!(crc24(b""), 0x00B7_04CE);
    }

    /// A message that only begins with ciphertext has parts in clear: it must not pass through.
    #[test]
    fn ciphertext_next_to_clear_parts_is_not_encrypted() {
        let block = SAMPLE_CIPHERTEXT.replacen("\r\n\r\n", "\r\nVersion: GnuPG v2\r\n\r\n", 1);
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
