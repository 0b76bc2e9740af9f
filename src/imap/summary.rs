//! The IMAP message summary computed once when a message is stored: the RFC 3501 §7.4.2
//! ENVELOPE, BODY and BODYSTRUCTURE values, rendered, and a [`PartMap`] of MIME part byte
//! ranges for `BODY[section]` (see [`super::section`]).
//!
//! The target is byte-for-byte the answers of Dovecot 2.3 for the same message, since
//! sealpost's IMAP server is checked against one (tests/dovecot_compare.py). That decides
//! everything the RFCs leave open:
//!
//! - values are the raw header text: encoded words (RFC 2047) are NOT decoded; folding is
//!   removed; Subject and display names are "for humans" (runs of whitespace become one
//!   space, leading/trailing whitespace dropped);
//! - a string is quoted when it is 7-bit without CR/LF and has at most four `"`/`\`,
//!   otherwise it is a literal; Subject and display names that needed any cleanup are
//!   literals too (Dovecot's `imap_append_string_for_humans`);
//! - the last Date/Subject/From/... field wins; the first Content-* field wins;
//! - text/* parts without a charset get `("charset" "us-ascii")`; parts without a
//!   Content-Type are text/plain; sizes are the octets of the body as stored;
//! - MIME splitting follows Dovecot's tolerant rules (see `tree`).
//!
//! Known, deliberate difference: for messages with bare-LF line endings Dovecot reports sizes
//! as if every LF were CRLF (it serves them that way); sealpost reports the stored octets.

mod address;
mod lexer;
mod tree;

use address::Address;
use lexer::{Lexer, Lx};
use tree::{Field, Node};

/// RFC 9788 §4.5.3: the byte ranges of `entity`'s Legacy Display Element (the part, and the
/// part with the delimiter line after it), when `entity` is a cryptographic payload with
/// header protection (its Content-Type has an `hp` parameter) that is a multipart/mixed whose
/// first of two or more parts is a text/plain or text/html with `hp-legacy-display="1"`: the
/// copy of the protected fields written into the body for mail clients without header
/// protection, which a reader of the protected fields shows twice. None otherwise.
pub(crate) fn legacy_display_element(
    entity: &[u8],
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let nodes = tree::parse(entity);
    let root = nodes.first()?;
    let data = PartData::from_node(root);
    let is = |d: &PartData, t: &[u8], s: &[u8]| {
        d.content_type
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(t))
            && d.content_subtype
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(s))
    };
    let param = |d: &PartData, name: &[u8]| {
        d.type_params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if !root.flags.multipart || !is(&data, b"multipart", b"mixed") || param(&data, b"hp").is_none()
    {
        return None;
    }
    let [first, second, ..] = root.children[..] else {
        return None;
    };
    let part = &nodes[first];
    let shown = PartData::from_node(part);
    let text = is(&shown, b"text", b"plain") || is(&shown, b"text", b"html");
    (text && param(&shown, b"hp-legacy-display").as_deref() == Some(b"1")).then(|| {
        (
            part.start..part.start + part.header_size + part.body_size,
            part.start..nodes[second].start,
        )
    })
}

/// The body ranges of `raw`'s attached messages that are transfer-encoded, with whether each
/// is base64 (else quoted-printable): a part typed message/rfc822 or message/global (its last
/// Content-Type, as mail-parser reads it), or untyped in a multipart/digest. None when the
/// message is split no further at the part or depth limit, where others may hide.
pub(crate) fn encoded_messages(raw: &[u8]) -> Option<Vec<(std::ops::Range<usize>, bool)>> {
    let nodes = tree::parse(raw);
    if nodes.len() >= tree::MAX_PARTS {
        return None;
    }
    let mut depth = vec![0usize; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        depth[i] = node.parent.map_or(0, |p| depth[p] + 1);
        if depth[i] + 1 >= tree::MAX_DEPTH {
            return None;
        }
    }
    // A field's last value, bare, as mail-parser reads it; it decodes an encoded word in the
    // transfer encoding (`=?us-ascii?B?YmFzZTY0?=` is base64), not in the type.
    let last = |node: &Node, name: &[u8], words: bool| {
        let field = node
            .fields
            .iter()
            .rev()
            .find(|f| f.name.eq_ignore_ascii_case(name))?;
        let value = if words && field.value.windows(2).any(|w| w == b"=?") {
            decoded_words(&field.value)
        } else {
            field.value.clone()
        };
        Some(crate::message::parse::bare_value(&value))
    };
    // Each part's type; an empty one is none to mail-parser (a digest's part is then a message).
    let types: Vec<Option<Vec<u8>>> = nodes
        .iter()
        .map(|node| last(node, b"content-type", false).filter(|t| !t.is_empty() && t[0] != b';'))
        .collect();
    let mut found = Vec::new();
    for (node, kind) in nodes.iter().zip(&types) {
        let in_digest = node.parent.is_some_and(|p| {
            types[p]
                .as_ref()
                .is_some_and(|t| t.starts_with(b"multipart/digest"))
        });
        let message = match kind {
            Some(t) => t.starts_with(b"message/rfc822") || t.starts_with(b"message/global"),
            None => in_digest,
        };
        let encoding = last(node, b"content-transfer-encoding", true).unwrap_or_default();
        let base64 = encoding.starts_with(b"base64");
        if message && (base64 || encoding.starts_with(b"quoted-printable")) {
            let end = node.end().min(raw.len());
            found.push((node.body_start().min(end)..end, base64));
        }
    }
    Some(found)
}

/// An unstructured value with its RFC 2047 encoded words decoded, as mail-parser reads it.
fn decoded_words(value: &[u8]) -> Vec<u8> {
    let field = [&b"Subject: "[..], value, b"\r\n\r\n"].concat();
    crate::message::parse::mail_parser()
        .parse_headers(&field[..])
        .and_then(|m| m.subject().map(|s| s.as_bytes().to_vec()))
        .unwrap_or_else(|| value.to_vec())
}

/// The one mailbox an address-list value names as the ENVELOPE shows it (`local@domain`,
/// lower case), or None when it is not exactly one well-formed mailbox: what the verdict
/// compares a signer with must be what IMAP clients are shown.
pub(crate) fn single_mailbox(value: &[u8]) -> Option<String> {
    let list = address::parse_address_list(value);
    let [one] = list.as_slice() else {
        return None;
    };
    let (Some(mailbox), Some(domain)) = (&one.mailbox, &one.domain) else {
        return None;
    };
    let broken = |s: &[u8]| {
        s.is_empty() || [&b"MISSING_MAILBOX"[..], b"MISSING_DOMAIN", b"SYNTAX_ERROR"].contains(&s)
    };
    if broken(mailbox) || broken(domain) || one.route.is_some() {
        return None;
    }
    let address = [&mailbox[..], b"@", &domain[..]].concat();
    String::from_utf8(address)
        .ok()
        .map(|a| a.to_ascii_lowercase())
}

/// The display name of the one mailbox of an address list, as written (encoded words not
/// decoded), as the IMAP ENVELOPE gives it; None for none, or for anything but one mailbox.
pub(crate) fn single_display_name(value: &[u8]) -> Option<Vec<u8>> {
    let list = address::parse_address_list(value);
    let [one] = list.as_slice() else {
        return None;
    };
    one.name.clone()
}

/// Computed once when a message is stored; never fails (broken MIME still gets a structure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Rendered IMAP ENVELOPE value: `("date" "subject" ((...)) ...)`.
    pub envelope: Vec<u8>,
    /// Rendered BODY value (BODYSTRUCTURE without extension data).
    pub body: Vec<u8>,
    /// Rendered BODYSTRUCTURE value with extension data.
    pub bodystructure: Vec<u8>,
    pub parts: PartMap,
}

/// RFC 2045 §5.2 default charset, rendered for text parts that name none (as Dovecot does).
const DEFAULT_CHARSET: &[u8] = b"us-ascii";

/// Summarizes a raw message (RFC 5322 bytes exactly as stored).
pub fn summarize(raw: &[u8]) -> Summary {
    let nodes = tree::parse(raw);
    let datas: Vec<PartData> = nodes.iter().map(PartData::from_node).collect();
    let r = Renderer {
        raw,
        nodes: &nodes,
        datas: &datas,
    };
    let mut envelope = vec![b'('];
    write_envelope(&mut envelope, &Envelope::from_fields(&nodes[0].fields));
    envelope.push(b')');
    let mut body = vec![b'('];
    r.write_part(&mut body, 0, false);
    body.push(b')');
    let mut bodystructure = vec![b'('];
    r.write_part(&mut bodystructure, 0, true);
    bodystructure.push(b')');
    Summary {
        envelope,
        body,
        bodystructure,
        parts: PartMap::from_tree(&nodes),
    }
}

/// What a part's Content-* fields say (RFC 2045 §5, §6; RFC 2183; RFC 3066; RFC 2557).
#[derive(Default)]
struct PartData {
    content_type: Option<Vec<u8>>,
    content_subtype: Option<Vec<u8>>,
    type_params: Vec<(Vec<u8>, Vec<u8>)>,
    id: Option<Vec<u8>>,
    description: Option<Vec<u8>>,
    transfer_encoding: Option<Vec<u8>>,
    md5: Option<Vec<u8>>,
    disposition: Option<Vec<u8>>,
    disposition_params: Vec<(Vec<u8>, Vec<u8>)>,
    language: Vec<Vec<u8>>,
    location: Option<Vec<u8>>,
}

/// Header bytes as Dovecot stores them: a NUL becomes U+FFFD.
fn header_string(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &c in value {
        if c == 0 {
            out.extend_from_slice(lexer::NUL_REPLACEMENT);
        } else {
            out.push(c);
        }
    }
    out
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

impl PartData {
    fn from_node(node: &Node) -> PartData {
        let mut d = PartData::default();
        if !node.flags.is_mime {
            // RFC 2045 §4: without MIME-Version (or Content-Type) Content-* fields mean nothing
            return d;
        }
        for f in &node.fields {
            if let Some(rest) = strip_prefix_ci(&f.name, b"Content-") {
                d.content_field(rest, &f.value);
            }
        }
        d
    }

    fn content_field(&mut self, name: &[u8], value: &[u8]) {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"ID") && self.id.is_none() {
            self.id = Some(header_string(value));
        } else if is(b"MD5") && self.md5.is_none() {
            self.md5 = Some(header_string(value));
        } else if is(b"Type") && self.content_type.is_none() {
            let mut lx = Lexer::new(value);
            lx.skip_lwsp();
            let mut ct = Vec::new();
            let ret = lx.parse_content_type(&mut ct);
            match ct.iter().position(|&c| c == b'/') {
                Some(slash) => {
                    self.content_subtype = Some(ct[slash + 1..].to_vec());
                    ct.truncate(slash);
                }
                None => self.content_subtype = Some(Vec::new()),
            }
            self.content_type = Some(ct);
            if ret != Lx::Bad {
                self.type_params = lx.parse_params();
            }
        } else if is(b"Transfer-Encoding") && self.transfer_encoding.is_none() {
            let mut lx = Lexer::new(value);
            lx.skip_lwsp();
            let mut tok = Vec::new();
            if lx.parse_mime_token(&mut tok) != Lx::Bad
                && lx.skip_lwsp() == Lx::End
                && !tok.is_empty()
            {
                self.transfer_encoding = Some(tok);
            }
        } else if is(b"Language") && self.language.is_empty() {
            let mut lx = Lexer::new(value);
            lx.skip_lwsp();
            loop {
                let mut atom = Vec::new();
                if lx.parse_atom(&mut atom) == Lx::Bad {
                    break;
                }
                self.language.push(atom);
                if lx.at_end() || lx.peek() != b',' {
                    break;
                }
                lx.pos += 1;
                lx.skip_lwsp();
            }
        } else if is(b"Location") && self.location.is_none() {
            self.location = Some(header_string(value));
        } else if is(b"Description") && self.description.is_none() {
            self.description = Some(header_string(value));
        } else if is(b"Disposition") && self.disposition_params.is_empty() {
            // Dovecot lets a later Content-Disposition replace one without parameters
            let mut lx = Lexer::new(value);
            lx.skip_lwsp();
            let mut tok = Vec::new();
            lx.parse_mime_token(&mut tok);
            self.disposition = Some(tok);
            self.disposition_params = lx.parse_params();
        }
    }
}

/// RFC 3501 §7.4.2 envelope fields of one message header.
#[derive(Default)]
struct Envelope {
    date: Option<Vec<u8>>,
    subject: Option<Vec<u8>>,
    from: Vec<Address>,
    sender: Vec<Address>,
    reply_to: Vec<Address>,
    to: Vec<Address>,
    cc: Vec<Address>,
    bcc: Vec<Address>,
    in_reply_to: Option<Vec<u8>>,
    message_id: Option<Vec<u8>>,
}

impl Envelope {
    fn from_fields(fields: &[Field]) -> Envelope {
        let mut e = Envelope::default();
        // the last occurrence of a field wins, as in Dovecot
        for f in fields {
            let is = |n: &[u8]| f.name.eq_ignore_ascii_case(n);
            let text = || Some(header_string(&f.value));
            let addrs = || address::parse_address_list(&f.value);
            if is(b"Date") {
                e.date = text();
            } else if is(b"Subject") {
                e.subject = text();
            } else if is(b"Message-ID") {
                e.message_id = text();
            } else if is(b"In-Reply-To") {
                e.in_reply_to = text();
            } else if is(b"From") {
                e.from = addrs();
            } else if is(b"Sender") {
                e.sender = addrs();
            } else if is(b"Reply-To") {
                e.reply_to = addrs();
            } else if is(b"To") {
                e.to = addrs();
            } else if is(b"Cc") {
                e.cc = addrs();
            } else if is(b"Bcc") {
                e.bcc = addrs();
            }
        }
        e
    }
}

fn write_envelope(out: &mut Vec<u8>, e: &Envelope) {
    write_nstring_nolf(out, e.date.as_deref());
    out.push(b' ');
    match &e.subject {
        Some(s) => write_for_humans(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
    // RFC 3501 §7.4.2: sender and reply-to default to from
    let or_from = |a: &'_ [Address]| {
        if a.is_empty() {
            e.from.clone()
        } else {
            a.to_vec()
        }
    };
    for list in [
        e.from.clone(),
        or_from(&e.sender),
        or_from(&e.reply_to),
        e.to.clone(),
        e.cc.clone(),
        e.bcc.clone(),
    ] {
        out.push(b' ');
        write_addresses(out, &list);
    }
    out.push(b' ');
    write_nstring_nolf(out, e.in_reply_to.as_deref());
    out.push(b' ');
    write_nstring_nolf(out, e.message_id.as_deref());
}

fn write_addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        match &a.name {
            Some(n) => write_for_humans(out, n),
            None => out.extend_from_slice(b"NIL"),
        }
        for part in [&a.route, &a.mailbox, &a.domain] {
            out.push(b' ');
            write_nstring_nolf(out, part.as_deref());
        }
        out.push(b')');
    }
    out.push(b')');
}

/// RFC 3501 §4.3 string: quoted when possible, else a literal (Dovecot's choice: a literal
/// for CR, LF, 8-bit, or more than four characters that would need escaping).
fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    // values are C strings in Dovecot: a NUL ends them
    let s = &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())];
    let mut escapes = 0;
    let literal = s.iter().any(|&c| match c {
        b'"' | b'\\' => {
            escapes += 1;
            escapes > 4
        }
        b'\r' | b'\n' => true,
        c => c >= 0x80,
    });
    if literal {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    } else {
        out.push(b'"');
        for &c in s {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    }
}

/// NIL or string with line breaks removed (a space kept between lines that had none).
fn write_nstring_nolf(out: &mut Vec<u8>, s: Option<&[u8]>) {
    let Some(s) = s else {
        out.extend_from_slice(b"NIL");
        return;
    };
    if !s.iter().any(|&c| c == b'\r' || c == b'\n') {
        write_string(out, s);
        return;
    }
    let mut clean = Vec::with_capacity(s.len());
    for (i, &c) in s.iter().enumerate() {
        if c != b'\r' && c != b'\n' {
            clean.push(c);
        } else if !matches!(s.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n' | 0)) {
            clean.push(b' ');
        }
    }
    write_string(out, &clean);
}

/// Dovecot's `imap_append_string_for_humans`: whitespace runs (including line breaks)
/// collapse to one space, leading and trailing whitespace go, NUL becomes 0x80; any such
/// change (or a `"`, `\`, 8-bit byte) makes the value a literal.
fn write_for_humans(out: &mut Vec<u8>, s: &[u8]) {
    let lwsp = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut clean = Vec::with_capacity(s.len());
    let mut modify = false;
    let mut last_lwsp = true;
    for &c in s {
        match c {
            0 => {
                clean.push(0x80);
                last_lwsp = false;
                modify = true;
            }
            c if lwsp(c) => {
                if c != b' ' || last_lwsp {
                    modify = true;
                }
                if !last_lwsp {
                    clean.push(b' ');
                }
                last_lwsp = true;
            }
            c => {
                if c == b'"' || c == b'\\' || c >= 0x80 {
                    modify = true;
                }
                clean.push(c);
                last_lwsp = false;
            }
        }
    }
    if last_lwsp && !clean.is_empty() {
        clean.pop();
        modify = true;
    }
    if !modify {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else if clean.is_empty() {
        out.extend_from_slice(b"\"\"");
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", clean.len()).as_bytes());
        out.extend_from_slice(&clean);
    }
}

fn write_params(out: &mut Vec<u8>, params: &[(Vec<u8>, Vec<u8>)], default_charset: bool) {
    if !default_charset && params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    let mut seen_charset = false;
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        seen_charset |= k.eq_ignore_ascii_case(b"charset");
        write_string(out, k);
        out.push(b' ');
        write_string(out, v);
    }
    if default_charset && !seen_charset {
        if !params.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(b"\"charset\" \"");
        out.extend_from_slice(DEFAULT_CHARSET);
        out.push(b'"');
    }
    out.push(b')');
}

struct Renderer<'a> {
    raw: &'a [u8],
    nodes: &'a [Node],
    datas: &'a [PartData],
}

impl Renderer<'_> {
    fn lines(&self, n: usize) -> usize {
        let node = &self.nodes[n];
        self.raw[node.body_start()..node.end()]
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
    }

    /// RFC 3501 §7.4.2 body / body-type-mpart / body-type-1part.
    fn write_part(&self, out: &mut Vec<u8>, n: usize, extended: bool) {
        let node = &self.nodes[n];
        let d = &self.datas[n];
        if node.flags.multipart {
            if node.children.is_empty() {
                // a multipart without parts is not allowed; Dovecot shows one empty text part
                out.extend_from_slice(
                    b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0",
                );
                if extended {
                    out.extend_from_slice(b" NIL NIL NIL NIL");
                }
                out.push(b')');
            }
            for &c in &node.children {
                out.push(b'(');
                self.write_part(out, c, extended);
                out.push(b')');
            }
            out.push(b' ');
            write_string(out, d.content_subtype.as_deref().unwrap_or_default());
            if extended {
                out.push(b' ');
                write_params(out, &d.type_params, false);
                write_common(out, d);
            }
            return;
        }
        let text = if node.flags.rfc822 {
            out.extend_from_slice(b"\"message\" \"rfc822\"");
            false
        } else if let Some(t) = &d.content_type {
            write_string(out, t);
            out.push(b' ');
            write_string(out, d.content_subtype.as_deref().unwrap_or_default());
            t.eq_ignore_ascii_case(b"text")
        } else {
            out.extend_from_slice(b"\"text\" \"plain\"");
            true
        };
        out.push(b' ');
        write_params(out, &d.type_params, text);
        out.push(b' ');
        write_nstring_nolf(out, d.id.as_deref());
        out.push(b' ');
        write_nstring_nolf(out, d.description.as_deref());
        out.push(b' ');
        match &d.transfer_encoding {
            Some(cte) => write_string(out, cte),
            None => out.extend_from_slice(b"\"7bit\""),
        }
        out.extend_from_slice(format!(" {}", node.body_size).as_bytes());
        if text {
            out.extend_from_slice(format!(" {}", self.lines(n)).as_bytes());
        } else if node.flags.rfc822 {
            if let Some(&child) = node.children.first() {
                out.extend_from_slice(b" (");
                write_envelope(out, &Envelope::from_fields(&self.nodes[child].fields));
                out.extend_from_slice(b") (");
                self.write_part(out, child, extended);
                out.push(b')');
            }
            out.extend_from_slice(format!(" {}", self.lines(n)).as_bytes());
        }
        if extended {
            out.push(b' ');
            write_nstring_nolf(out, d.md5.as_deref());
            write_common(out, d);
        }
    }
}

/// RFC 3501 §7.4.2 body-ext: disposition, language, location.
fn write_common(out: &mut Vec<u8>, d: &PartData) {
    out.push(b' ');
    match &d.disposition {
        Some(disp) => {
            out.push(b'(');
            write_string(out, disp);
            out.push(b' ');
            write_params(out, &d.disposition_params, false);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    if d.language.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        for (i, l) in d.language.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            write_string(out, l);
        }
        out.push(b')');
    }
    out.push(b' ');
    write_nstring_nolf(out, d.location.as_deref());
}

/// What a MIME part is, for section addressing (RFC 3501 §6.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartKind {
    /// A single part (text, image, ...).
    Leaf,
    /// multipart/*: children are its parts, numbered from 1.
    Multipart,
    /// message/rfc822: its one child is the encapsulated message.
    Message,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MapPart {
    pub kind: PartKind,
    /// Offset of the part's MIME header (for the message itself: 0).
    pub start: usize,
    pub header_len: usize,
    pub body_len: usize,
    /// Indices into [`PartMap::parts`].
    pub children: Vec<usize>,
}

impl MapPart {
    pub fn header(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.header_len
    }

    pub fn body(&self) -> std::ops::Range<usize> {
        let b = self.start + self.header_len;
        b..b + self.body_len
    }
}

/// Byte ranges of every MIME part, so BODY[section] never re-parses the message.
/// Part 0 is the message itself; parts are in pre-order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartMap {
    pub(crate) parts: Vec<MapPart>,
}

/// Why a stored [`PartMap`] BLOB could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartMapError {
    #[error("part map is truncated")]
    Truncated,
    #[error("part map has unknown format version {0}")]
    Version(u8),
    #[error("part map has unknown part kind {0}")]
    Kind(u8),
    #[error("part map is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// BLOB format version; bump when the layout changes.
const PARTMAP_VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, PartMapError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or(PartMapError::Truncated)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PartMapError::Inconsistent("varint too long"))
}

fn get_usize(bytes: &[u8], pos: &mut usize) -> Result<usize, PartMapError> {
    usize::try_from(get_varint(bytes, pos)?)
        .map_err(|_| PartMapError::Inconsistent("offset too large"))
}

impl PartMap {
    fn from_tree(nodes: &[Node]) -> PartMap {
        let parts = nodes
            .iter()
            .map(|n| MapPart {
                kind: if n.flags.multipart {
                    PartKind::Multipart
                } else if n.flags.rfc822 {
                    PartKind::Message
                } else {
                    PartKind::Leaf
                },
                start: n.start,
                header_len: n.header_size,
                body_len: n.body_size,
                children: n.children.clone(),
            })
            .collect();
        PartMap { parts }
    }

    /// Compact encoding for a SQLite BLOB: a version byte, the part count, then per part in
    /// pre-order its kind, child count, start, header length and body length (LEB128).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![PARTMAP_VERSION];
        put_varint(&mut out, self.parts.len() as u64);
        for p in &self.parts {
            out.push(match p.kind {
                PartKind::Leaf => 0,
                PartKind::Multipart => 1,
                PartKind::Message => 2,
            });
            for v in [p.children.len(), p.start, p.header_len, p.body_len] {
                put_varint(&mut out, v as u64);
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PartMap, PartMapError> {
        let version = *bytes.first().ok_or(PartMapError::Truncated)?;
        if version != PARTMAP_VERSION {
            return Err(PartMapError::Version(version));
        }
        let mut pos = 1;
        let count = get_usize(bytes, &mut pos)?;
        if count == 0 || count > bytes.len() {
            return Err(PartMapError::Inconsistent("part count"));
        }
        let mut parts = Vec::with_capacity(count);
        let mut child_counts = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = match *bytes.get(pos).ok_or(PartMapError::Truncated)? {
                0 => PartKind::Leaf,
                1 => PartKind::Multipart,
                2 => PartKind::Message,
                k => return Err(PartMapError::Kind(k)),
            };
            pos += 1;
            child_counts.push(get_usize(bytes, &mut pos)?);
            let start = get_usize(bytes, &mut pos)?;
            let header_len = get_usize(bytes, &mut pos)?;
            let body_len = get_usize(bytes, &mut pos)?;
            start
                .checked_add(header_len)
                .and_then(|v| v.checked_add(body_len))
                .ok_or(PartMapError::Inconsistent("range overflows"))?;
            parts.push(MapPart {
                kind,
                start,
                header_len,
                body_len,
                children: Vec::new(),
            });
        }
        if pos != bytes.len() {
            return Err(PartMapError::Inconsistent("trailing bytes"));
        }
        // rebuild the tree from pre-order child counts
        let mut next = 1;
        let mut stack = vec![(0usize, child_counts[0])];
        while let Some((parent, remaining)) = stack.pop() {
            if remaining == 0 {
                continue;
            }
            stack.push((parent, remaining - 1));
            if next >= count {
                return Err(PartMapError::Inconsistent("child counts exceed parts"));
            }
            parts[parent].children.push(next);
            stack.push((next, child_counts[next]));
            next += 1;
        }
        if next != count {
            return Err(PartMapError::Inconsistent(
                "parts not reachable from the root",
            ));
        }
        for p in &parts {
            if p.kind == PartKind::Message && p.children.len() != 1 {
                return Err(PartMapError::Inconsistent(
                    "message/rfc822 part without one child",
                ));
            }
            if p.kind == PartKind::Leaf && !p.children.is_empty() {
                return Err(PartMapError::Inconsistent("leaf part with children"));
            }
        }
        Ok(PartMap { parts })
    }

    /// Length of the message's own header, blank line included.
    pub fn header_len(&self) -> usize {
        self.parts.first().map_or(0, |p| p.header_len)
    }

    /// Total size of the message the map was computed for.
    pub fn message_len(&self) -> usize {
        self.parts.first().map_or(0, |p| p.body().end)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::imap::section::{section, SectionText};
    use std::path::PathBuf;

    fn data_dir(sub: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(sub)
    }

    /// Records of tests/data/dovecot/<fixture>.txt (see tests/dovecot_compare.py).
    pub(crate) fn oracle(name: &str) -> Vec<(String, Option<Vec<u8>>)> {
        let bytes = std::fs::read(data_dir("dovecot").join(format!("{name}.txt"))).unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let nl = pos + bytes[pos..].iter().position(|&c| c == b'\n').unwrap();
            let line = String::from_utf8(bytes[pos..nl].to_vec()).unwrap();
            let (key, len) = line.rsplit_once(' ').unwrap();
            if len == "NIL" {
                out.push((key.to_string(), None));
                pos = nl + 1;
            } else {
                let n: usize = len.parse().unwrap();
                out.push((key.to_string(), Some(bytes[nl + 1..nl + 1 + n].to_vec())));
                pos = nl + 1 + n + 1;
            }
        }
        out
    }

    /// Parses the section spec of a `BODY[...]` record key.
    pub(crate) fn parse_section(spec: &str) -> (Vec<u32>, SectionText) {
        let mut path = Vec::new();
        let mut rest = spec;
        while let Some(c) = rest.chars().next().filter(char::is_ascii_digit) {
            let _ = c;
            let end = rest.find('.').unwrap_or(rest.len());
            path.push(rest[..end].parse().unwrap());
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let what = if rest.is_empty() {
            SectionText::Full
        } else if rest == "HEADER" {
            SectionText::Header
        } else if rest == "TEXT" {
            SectionText::Text
        } else if rest == "MIME" {
            SectionText::Mime
        } else {
            let not = rest.starts_with("HEADER.FIELDS.NOT");
            let list = &rest[rest.find('(').unwrap() + 1..rest.find(')').unwrap()];
            let names = list.split(' ').map(|n| n.as_bytes().to_vec()).collect();
            SectionText::HeaderFields { names, not }
        };
        (path, what)
    }

    /// Compares sealpost with Dovecot's recorded answers; returns the differing items.
    pub(crate) fn compare(name: &str) -> Vec<String> {
        let raw = std::fs::read(data_dir("messages").join(format!("{name}.eml"))).unwrap();
        let s = summarize(&raw);
        let mut diffs = Vec::new();
        for (key, want) in oracle(name) {
            let got: Option<Vec<u8>> = match key.as_str() {
                "ENVELOPE" => Some(s.envelope.clone()),
                "BODY" => Some(s.body.clone()),
                "BODYSTRUCTURE" => Some(s.bodystructure.clone()),
                "RFC822.SIZE" => Some(raw.len().to_string().into_bytes()),
                k => {
                    let spec = &k["BODY[".len()..k.len() - 1];
                    let (path, what) = parse_section(spec);
                    // Dovecot answers "" for a part that does not exist
                    Some(
                        section(&raw, &s.parts, &path, &what)
                            .map(|c| c.into_owned())
                            .unwrap_or_default(),
                    )
                }
            };
            if got != want {
                diffs.push(format!(
                    "{key}:\n  dovecot: {:?}\n  sealpost: {:?}",
                    String::from_utf8_lossy(want.as_deref().unwrap_or(b"NIL")),
                    String::from_utf8_lossy(got.as_deref().unwrap_or(b"NIL"))
                ));
            }
        }
        diffs
    }

    /// Items where sealpost deliberately or knowingly differs from Dovecot 2.3.19, with why.
    const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
        // Dovecot serves bare-LF messages with CRLF line ends and counts sizes that way;
        // sealpost serves and counts the stored octets.
        ("20-bare-lf", "*", "bare LF: Dovecot converts to CRLF"),
        (
            "21-mixed-line-endings",
            "*",
            "bare LF: Dovecot converts to CRLF",
        ),
        // Part 1 here is a header of only the blank line (the preamble line before it is a
        // prefix-matching delimiter). Dovecot's 1.MIME answer is empty, sealpost's is that
        // blank line, which is what the part's header section holds.
        (
            "32-preamble-epilogue",
            "BODY[1.MIME]",
            "MIME header that is only a blank line",
        ),
    ];

    fn fixture_names() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data_dir("messages"))
            .unwrap()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".eml")
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Every fixture against Dovecot's recorded answers (tests/data/dovecot, refreshed with
    /// tests/dovecot_compare.py): ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE and every
    /// BODY[section] Dovecot was asked for.
    #[test]
    fn corpus_matches_dovecot() {
        let names = fixture_names();
        assert_eq!(names.len(), 42);
        let mut failures = Vec::new();
        for n in &names {
            for d in compare(n) {
                let item = d.split(':').next().unwrap_or_default();
                let known = KNOWN_DIFFERENCES
                    .iter()
                    .any(|(f, i, _)| f == n && (*i == "*" || *i == item));
                if !known {
                    failures.push(format!("{n} {d}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The bare-LF fixtures differ only by line ends: with LF→CRLF applied to sealpost's
    /// section bytes they equal Dovecot's.
    #[test]
    fn bare_lf_fixtures_differ_only_in_line_ends() {
        fn crlf(b: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for (i, &c) in b.iter().enumerate() {
                if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
                    out.push(b'\r');
                }
                out.push(c);
            }
            out
        }
        for name in ["20-bare-lf", "21-mixed-line-endings"] {
            let raw = std::fs::read(data_dir("messages").join(format!("{name}.eml"))).unwrap();
            let s = summarize(&raw);
            assert_eq!(s.envelope, oracle(name)[0].1.clone().unwrap(), "{name}");
            for (key, want) in oracle(name) {
                let Some(spec) = key.strip_prefix("BODY[").and_then(|k| k.strip_suffix(']')) else {
                    continue;
                };
                let (path, what) = parse_section(spec);
                let got = section(&raw, &s.parts, &path, &what)
                    .map(|c| crlf(&c))
                    .unwrap_or_default();
                assert_eq!(Some(got), want, "{name} {key}");
            }
        }
    }

    #[test]
    fn partmap_round_trips_for_every_fixture() {
        for n in fixture_names() {
            let raw = std::fs::read(data_dir("messages").join(format!("{n}.eml"))).unwrap();
            let map = summarize(&raw).parts;
            assert_eq!(map.message_len(), raw.len(), "{n}");
            assert_eq!(PartMap::from_bytes(&map.to_bytes()), Ok(map), "{n}");
        }
    }

    /// 140,000 empty parts: split into at most 10,000 (Dovecot's max_total_mime_parts), the
    /// rest the body of the last; the message's length is kept whole.
    #[test]
    fn a_message_is_split_into_at_most_ten_thousand_parts() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n".to_vec();
        raw.extend_from_slice(&b"--B\r\n\r\n".repeat(140_000));
        raw.extend_from_slice(b"--B--\r\n");
        let summary = summarize(&raw);
        let nodes = super::tree::parse(&raw);
        assert_eq!(nodes.len(), 10_000);
        assert_eq!(summary.parts.message_len(), raw.len());
        assert!(
            summary.bodystructure.len() < 1_000_000,
            "{}",
            summary.bodystructure.len()
        );
        assert_eq!(
            PartMap::from_bytes(&summary.parts.to_bytes()),
            Ok(summary.parts)
        );
    }

    #[test]
    fn partmap_rejects_damaged_blobs() {
        let map = summarize(b"Content-Type: multipart/mixed; boundary=b\r\nMIME-Version: 1.0\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n").parts;
        let good = map.to_bytes();
        let cases: &[(Vec<u8>, PartMapError)] = &[
            (Vec::new(), PartMapError::Truncated),
            (vec![9], PartMapError::Version(9)),
            (good[..good.len() - 1].to_vec(), PartMapError::Truncated),
            (
                [good.as_slice(), &[0]].concat(),
                PartMapError::Inconsistent("trailing bytes"),
            ),
            (vec![1, 1, 7, 0, 0, 0, 0], PartMapError::Kind(7)),
            (
                vec![1, 1, 0, 1, 0, 0, 0],
                PartMapError::Inconsistent("child counts exceed parts"),
            ),
            (
                vec![1, 1, 2, 0, 0, 0, 0],
                PartMapError::Inconsistent("message/rfc822 part without one child"),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(PartMap::from_bytes(bytes).as_ref(), Err(want), "{bytes:?}");
        }
    }

    /// Small inline messages for the rules the corpus does not reach; expected values are
    /// what Dovecot 2.3.19 answered for them (checked with tests/dovecot_compare.py).
    #[test]
    fn inline_envelopes() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            (
                "group and route",
                b"From: Team: a@x.org, \"B, Jr.\" <@r1,@r2:b@y.org>;\r\nTo: undisclosed-recipients:;\r\nSubject: x\r\n\r\n",
                b"(NIL \"x\" ((NIL NIL \"Team\" NIL)(NIL NIL \"a\" \"x.org\")(\"B, Jr.\" \"@r1,@r2\" \"b\" \"y.org\")(NIL NIL NIL NIL)) ((NIL NIL \"Team\" NIL)(NIL NIL \"a\" \"x.org\")(\"B, Jr.\" \"@r1,@r2\" \"b\" \"y.org\")(NIL NIL NIL NIL)) ((NIL NIL \"Team\" NIL)(NIL NIL \"a\" \"x.org\")(\"B, Jr.\" \"@r1,@r2\" \"b\" \"y.org\")(NIL NIL NIL NIL)) ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL)) NIL NIL NIL NIL)",
            ),
            (
                "comment as name, missing domain, folded subject",
                b"From: a@x.org (Alice Smith)\r\nTo: bob\r\nSubject: one\r\n  two\r\nDate: d\r\n\r\n",
                b"(\"d\" {7}\r\none two ((\"Alice Smith\" NIL \"a\" \"x.org\")) ((\"Alice Smith\" NIL \"a\" \"x.org\")) ((\"Alice Smith\" NIL \"a\" \"x.org\")) ((NIL NIL \"bob\" \"MISSING_DOMAIN\")) NIL NIL NIL NIL)",
            ),
            (
                "last field wins, quotes escaped, empty subject",
                b"Subject: first\r\nSubject:\r\nMessage-ID: <a\"b@c>\r\nFrom: \"Q \\\"x\\\"\" <q@x>\r\n\r\n",
                b"(NIL \"\" (({5}\r\nQ \"x\" NIL \"q\" \"x\")) (({5}\r\nQ \"x\" NIL \"q\" \"x\")) (({5}\r\nQ \"x\" NIL \"q\" \"x\")) NIL NIL NIL NIL \"<a\\\"b@c>\")",
            ),
            ("no header at all", b"\r\nbody\r\n", b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
        ];
        for (what, raw, want) in cases {
            let got = summarize(raw).envelope;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "{what}"
            );
        }
    }

    #[test]
    fn inline_bodystructures() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            (
                "no MIME-Version: Content-* ignored except Content-Type",
                b"Content-Transfer-Encoding: base64\r\nContent-Disposition: inline\r\n\r\nx\r\n",
                b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 3 1 NIL NIL NIL NIL)",
            ),
            (
                "RFC 2231 continuations merged, percent kept",
                b"MIME-Version: 1.0\r\nContent-Type: application/x; a*1=\"b%\"; a*0*=us-ascii''c%41\r\nContent-Language: en, de\r\nContent-Location: http://x/\r\nContent-MD5: Q2hlY2s=\r\n\r\n",
                b"(\"application\" \"x\" (\"a*\" \"us-ascii''c%41b%25\") NIL NIL \"7bit\" 0 \"Q2hlY2s=\" NIL (\"en\" \"de\") \"http://x/\")",
            ),
            (
                "multipart/digest children default to message/rfc822",
                b"MIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in\r\n\r\nhi\r\n--d--\r\n",
                b"((\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 17 (NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 2 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) \"digest\" (\"boundary\" \"d\") NIL NIL NIL)",
            ),
        ];
        for (what, raw, want) in cases {
            let got = summarize(raw).bodystructure;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "{what}"
            );
        }
    }

    /// Hostile nesting is cut off at 100 levels instead of exhausting the stack.
    #[test]
    fn deep_nesting_is_bounded() {
        let mut raw = b"MIME-Version: 1.0\r\n".to_vec();
        for i in 0..5000 {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=x{i}y\r\n\r\n--x{i}y\r\n")
                    .as_bytes(),
            );
        }
        raw.extend_from_slice(b"\r\nleaf\r\n");
        let s = summarize(&raw);
        assert_eq!(s.parts.parts.len(), 101);
        assert_eq!(PartMap::from_bytes(&s.parts.to_bytes()), Ok(s.parts));
    }

    #[test]
    fn string_rendering() {
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // (value, write_string, write_for_humans)
            (b"plain", b"\"plain\"", b"\"plain\""),
            (b"a\"b", b"\"a\\\"b\"", b"{3}\r\na\"b"),
            (b"\\\\\\\\\\", b"{5}\r\n\\\\\\\\\\", b"{5}\r\n\\\\\\\\\\"),
            (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
            (b"  a \t b  ", b"\"  a \t b  \"", b"{3}\r\na b"),
            (b"   ", b"\"   \"", b"\"\""),
            (b"", b"\"\"", b"\"\""),
        ];
        for (value, string, humans) in cases {
            let mut out = Vec::new();
            write_string(&mut out, value);
            assert_eq!(out, *string, "string {value:?}");
            let mut out = Vec::new();
            write_for_humans(&mut out, value);
            assert_eq!(out, *humans, "humans {value:?}");
        }
    }
}
