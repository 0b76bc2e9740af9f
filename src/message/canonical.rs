//! The content entity that gets signed: the message's MIME content (its Content-* fields and
//! body) in canonical form — CRLF line ends and 7-bit safe (RFC 3156 §3 and §5). Parts that are
//! already safe are copied byte for byte (only line ends normalised); a part that is not
//! (8-bit text, lines over 998 octets, trailing whitespace, "From " lines, bare CR, binary) is
//! re-encoded, quoted-printable for text and base64 otherwise. The result is built once and
//! never re-serialised after signing.

use mail_parser::{Encoding, Message, MessagePart, MimeHeaders, PartType};

use super::encoding::{
    base64_decode_lenient, base64_lines, crlf, header_crlf, is_signing_safe, quoted_printable,
    repair_quoted_printable,
};
use super::parse::{is_cte, tree_children, HeaderField, ParsedMessage};

/// The MIME content of a message: its Content-* fields and a 7-bit-safe CRLF body.
#[derive(Debug, Clone)]
pub struct ContentEntity {
    pub fields: Vec<HeaderField>,
    pub body: Vec<u8>,
}

impl ContentEntity {
    /// The entity as bytes: its fields, a blank line, the body.
    pub fn to_entity(&self) -> Vec<u8> {
        super::parse::assemble(&self.fields, &self.body)
    }
}

/// One replacement of a raw byte range; everything between replacements is copied with its
/// line ends normalised.
struct Edit {
    start: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// Builds the canonical content entity of `message`.
pub fn content_entity(message: &ParsedMessage) -> ContentEntity {
    let raw = message.raw();
    let mut fields: Vec<HeaderField> = message
        .fields()
        .iter()
        .filter(|f| f.is_structural() && !f.is("MIME-Version"))
        .cloned()
        .collect();
    // Two Content-Type (or Content-Transfer-Encoding) fields are ambiguous (RFC 2045): the
    // last, which mail-parser reads and the content is made safe by, stays; the others go,
    // so that no reader can take the entity for another type (review: an `hp` parameter on
    // a first Content-Type the parser did not use).
    for name in ["Content-Type", "Content-Transfer-Encoding"] {
        if let Some(last) = fields.iter().rposition(|f| f.is(name)) {
            let mut at = 0;
            fields.retain(|f| {
                at += 1;
                !f.is(name) || at - 1 == last
            });
        }
    }
    let body_start = raw.len() - message.body().len();
    let first = crate::message::parse::mail_parser().parse(raw);
    // Parsed again only for a part that ends with its header (rare).
    let blanked = first
        .as_ref()
        .and_then(|m| blank_before_delimiters(m, raw, body_start));
    let (raw, first) = match &blanked {
        Some(b) => (&b[..], crate::message::parse::mail_parser().parse(&b[..])),
        None => (raw, first),
    };
    // Parsed again only for a message that needs close delimiters (rare).
    let closed = first
        .as_ref()
        .and_then(|m| first_unclosed(m, raw))
        .and_then(|_| close_unclosed(raw));
    let (raw, parsed) = match &closed {
        Some(c) => (&c[..], crate::message::parse::mail_parser().parse(&c[..])),
        None => (raw, first),
    };
    let Some(parsed) = parsed else {
        // ParsedMessage::parse succeeded on the same bytes, so this does not happen; fall back
        // to treating the whole body as one opaque text leaf.
        let (cte, body) = encode_leaf(message.body(), true);
        set_cte(&mut fields, cte);
        return ContentEntity { fields, body };
    };
    let root = parsed.root_part();
    let kids = tree_children(&parsed);
    let mut edits = Vec::new();
    match &root.body {
        PartType::Multipart(_) if is_sealed(root) => {}
        PartType::Multipart(children) if !children.is_empty() => {
            for &child in &kids[0] {
                visit(&parsed, &kids, child, raw, &mut edits);
            }
            tidy_multipart(root, raw, &mut edits);
        }
        PartType::Message(inner) if root.encoding == Encoding::None => {
            visit(inner, &tree_children(inner), 0, raw, &mut edits)
        }
        PartType::Message(_) => {}
        _ => {
            if let Some((cte, body)) = leaf_edit(root, raw) {
                let new_type = relabelled_type(root, raw).or_else(|| {
                    (!fields.iter().any(|f| f.is("Content-Type"))).then(|| text_type(raw, root))
                });
                if let Some(new_type) = new_type {
                    fields.retain(|f| !f.is("Content-Type"));
                    fields.insert(0, HeaderField::new("Content-Type", &new_type));
                }
                set_cte(&mut fields, cte);
                edits.push(Edit {
                    start: root.offset_body as usize,
                    end: raw.len(),
                    bytes: body,
                });
            }
        }
    }
    let fields = fields
        .into_iter()
        .map(|f| {
            let safe = super::mime::signing_safe_field(&f.name, &f.raw);
            if safe == f.raw {
                f
            } else {
                f.with_raw(safe)
            }
        })
        .collect();
    relabel_seven_bit(ContentEntity {
        fields,
        body: apply(raw, body_start, edits),
    })
}

/// The (start, end) of every Content-Transfer-Encoding field below `message`'s root (in
/// `whole`'s offsets) whose value `is_label`, in its multiparts and in attached messages
/// that are not transfer-encoded (their offsets are `whole`'s), not inside a sender's signed
/// or encrypted multipart.
fn eight_bit_labels(
    message: &Message<'_>,
    whole: &[u8],
    is_label: &dyn Fn(&[u8]) -> bool,
    labels: &mut Vec<(usize, usize)>,
) {
    let mut of_part = |part: &MessagePart<'_>| {
        for h in part
            .headers
            .iter()
            .filter(|h| super::parse::is_cte(&h.name))
        {
            let (start, end) = (h.offset_start as usize, h.offset_end as usize);
            if whole.get(start..end).is_some_and(is_label) {
                labels.push((h.offset_field as usize, end));
            }
        }
    };
    let mut inner_messages = Vec::new();
    let kids = tree_children(message);
    let mut pending = vec![(0usize, true)];
    while let Some((i, root)) = pending.pop() {
        let Some(part) = message.parts.get(i) else {
            continue;
        };
        if !root {
            of_part(part);
        }
        match &part.body {
            PartType::Multipart(_) if is_sealed(part) => {}
            PartType::Multipart(_) => {
                pending.extend(kids[i].iter().map(|&c| (c, false)));
            }
            PartType::Message(inner) if part.encoding == Encoding::None => {
                // The attached message's own header counts too: its root is a part here.
                if let Some(inner_root) = inner.parts.first() {
                    of_part(inner_root);
                }
                inner_messages.push(inner);
            }
            _ => {}
        }
    }
    for inner in inner_messages {
        eight_bit_labels(inner, whole, is_label, labels);
    }
}

/// The entity with every `Content-Transfer-Encoding: 8bit` or `binary` label made `7bit` when
/// all of its content is 7-bit now (as it is once the edits made each leaf signing-safe). A
/// relay that converts 8-bit mail for a next hop without 8BITMIME (RFC 6152) goes by the
/// labels, not the bytes: it would relabel and re-encode such a part inside the signed data,
/// and the signature would no longer verify (review: ASCII text, a multipart and an attached
/// message still labelled 8bit). The parts inside a sender's own signed or encrypted
/// multipart keep their labels: those bytes are the sender's signature's.
fn relabel_seven_bit(mut entity: ContentEntity) -> ContentEntity {
    let eight_bit_label = |value: &[u8]| {
        let value = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
        value == "8bit" || value == "binary"
    };
    let seven_bit = |data: &[u8]| {
        data.iter().all(|&b| b != 0 && b < 0x80)
            && data.split(|&b| b == b'\n').all(|l| l.len() <= 999)
    };
    if !seven_bit(&entity.body) {
        return entity;
    }
    for field in &mut entity.fields {
        if field.is("Content-Transfer-Encoding") && eight_bit_label(field.raw_value()) {
            *field = HeaderField::new("Content-Transfer-Encoding", "7bit");
        }
    }
    let whole = entity.to_entity();
    let header_len = whole.len() - entity.body.len();
    let Some(parsed) = crate::message::parse::mail_parser().parse(&whole[..]) else {
        return entity;
    };
    // (start, end) of each label to change, in the entity's offsets.
    let mut labels = Vec::new();
    eight_bit_labels(&parsed, &whole, &eight_bit_label, &mut labels);
    let mut labels: Vec<(usize, usize)> = labels
        .into_iter()
        .filter(|&(start, _)| start >= header_len)
        .map(|(start, end)| (start - header_len, end - header_len))
        .collect();
    if labels.is_empty() {
        return entity;
    }
    labels.sort_unstable();
    let mut body = Vec::with_capacity(entity.body.len());
    let mut pos = 0;
    for (start, end) in labels {
        let Some(field) = entity.body.get(start..end) else {
            continue;
        };
        if start < pos {
            continue;
        }
        body.extend_from_slice(&entity.body[pos..start]);
        body.extend_from_slice(b"Content-Transfer-Encoding: 7bit");
        if field.ends_with(b"\n") {
            body.extend_from_slice(b"\r\n");
        }
        pos = end;
    }
    body.extend_from_slice(&entity.body[pos..]);
    entity.body = body;
    entity
}

/// Makes part `at` of `message` safe to sign, and the parts inside it; `kids` are the
/// message's [`tree_children`].
fn visit(message: &Message<'_>, kids: &[Vec<usize>], at: usize, raw: &[u8], edits: &mut Vec<Edit>) {
    let part = &message.parts[at];
    match &part.body {
        // A signature the sender made (RFC 1847 §2.1): its parts stay byte for byte, or the
        // signature would no longer verify. Only its own header is made safe.
        PartType::Multipart(_) if is_sealed(part) => safe_header(part, raw, edits),
        PartType::Multipart(children) if !children.is_empty() => {
            safe_header(part, raw, edits);
            for &child in &kids[at] {
                visit(message, kids, child, raw, edits);
            }
            tidy_multipart(part, raw, edits);
        }
        // A forwarded message is walked into: message/rfc822 may not be base64-encoded
        // (RFC 2046 §5.2.1), so its own leaves are made safe instead, and its header. One
        // that came encoded all the same is 7-bit already, and mail-parser's offsets inside
        // it point into the decoded bytes, not the message: it is left as it is.
        PartType::Message(_) if part.encoding != Encoding::None => {
            safe_header(part, raw, edits);
        }
        PartType::Message(inner) => {
            safe_header(part, raw, edits);
            let root = inner.root_part();
            if !matches!(root.body, PartType::Multipart(_)) && leaf_edit(root, raw).is_none() {
                safe_header(root, raw, edits);
            }
            visit(inner, &tree_children(inner), 0, raw, edits)
        }
        _ => {
            let Some((cte, body)) = leaf_edit(part, raw) else {
                safe_header(part, raw, edits);
                return;
            };
            let mut header = Vec::new();
            let mut replaced = false;
            let new_type = relabelled_type(part, raw);
            let mut typed = false;
            for (i, h) in part.headers.iter().enumerate() {
                let bytes = &raw[h.offset_field as usize..h.offset_end as usize];
                // An attached message's mbox postmark, read as its first field: see
                // `safe_header`.
                if i == 0 && super::parse::is_postmark(bytes) {
                    continue;
                }
                let is_type = matches!(h.name, mail_parser::HeaderName::ContentType);
                if is_cte(&h.name) {
                    if !replaced {
                        header.extend_from_slice(
                            format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes(),
                        );
                        replaced = true;
                    }
                } else if let (true, Some(new_type)) = (is_type, &new_type) {
                    // One in place of the first; any further one goes.
                    if !typed {
                        header
                            .extend_from_slice(format!("Content-Type: {new_type}\r\n").as_bytes());
                        typed = true;
                    }
                } else {
                    let mut field = header_crlf(bytes);
                    if !field.ends_with(b"\r\n") {
                        field.extend_from_slice(b"\r\n");
                    }
                    header.extend_from_slice(&super::mime::signing_safe_field(
                        h.name.as_str(),
                        &field,
                    ));
                }
            }
            if !replaced {
                header
                    .extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
            }
            if let (false, Some(new_type)) = (typed, &new_type) {
                header.extend_from_slice(format!("Content-Type: {new_type}\r\n").as_bytes());
            }
            let header_end = part
                .headers
                .last()
                .map_or(part.offset_header as usize, |h| h.offset_end as usize);
            edits.push(Edit {
                start: part.offset_header as usize,
                end: header_end,
                bytes: header,
            });
            edits.push(Edit {
                start: part.offset_body as usize,
                end: part.offset_end as usize,
                bytes: body,
            });
        }
    }
}

/// `raw` with an empty line put between a header and a delimiter line right after it, when
/// any part (or a message attached in one) ends with its header: RFC 2046 allows a body part
/// of header fields alone, but mail-parser reads on past the delimiter, taking the next part's
/// fields for more of this one's, and the rebuilt header left out the delimiter: two parts
/// became one, an attachment's bytes under the other's name (review). The empty line makes
/// the same empty body every reader sees. Nothing inside a sender's signed or encrypted
/// multipart is touched. None when no part ends so.
fn blank_before_delimiters(
    message: &Message<'_>,
    raw: &[u8],
    body_start: usize,
) -> Option<Vec<u8>> {
    let parts = &message.parts;
    // Each multipart's boundary, where its body lies, and whether it is a digest (whose parts
    // are attached messages unless typed otherwise): a line counts as a delimiter only inside
    // its own multipart (review: a text line equal to a later multipart's delimiter had an
    // empty line put after the next part's header).
    let boundaries: Vec<(String, usize, usize, bool)> = parts
        .iter()
        .filter(|p| matches!(p.body, PartType::Multipart(_)))
        .filter_map(|p| {
            let ct = p.content_type()?;
            let boundary = ct.attribute("boundary").filter(|b| !b.is_empty())?;
            let digest = ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("digest"));
            Some((
                boundary.to_string(),
                p.offset_body as usize,
                p.offset_end as usize,
                digest,
            ))
        })
        .collect();
    let sealed: Vec<(usize, usize)> = parts
        .iter()
        .filter(|p| is_sealed(p))
        .map(|p| (p.offset_body as usize, p.offset_end as usize))
        .collect();
    // (close, in a digest) for a delimiter line (RFC 2046 §5.1.1: only blanks may follow it).
    let delimiter = |line: &[u8], at: usize| {
        boundaries.iter().find_map(|(b, start, end, digest)| {
            if at < *start || at > *end {
                return None;
            }
            let (close, _) = super::parse::delimiter_line(line, b.as_bytes())?;
            Some((close, *digest))
        })
    };
    let mut inserts = Vec::new();
    // In a header: after a delimiter, and after the header of an attached message's part.
    let mut in_header = false;
    let mut in_digest = false;
    // The header block so far: its current field (continuation lines joined), whether it
    // had a Content-Type, and whether that names an attached message.
    let mut field: Vec<u8> = Vec::new();
    let mut typed = false;
    let mut attached = false;
    let mut pos = body_start;
    while pos < raw.len() {
        let line_end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |n| pos + n + 1);
        let line = raw[pos..line_end]
            .strip_suffix(b"\n")
            .unwrap_or(&raw[pos..line_end]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let folded = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if in_header && folded {
            field.extend_from_slice(line);
            pos = line_end;
            continue;
        }
        if in_header {
            if let Some(kind) = content_type_of(&field) {
                typed = true;
                attached =
                    kind.starts_with(b"message/rfc822") || kind.starts_with(b"message/global");
            }
            field.clear();
        }
        match delimiter(line, pos) {
            Some((close, digest)) => {
                if in_header && !sealed.iter().any(|&(s, e)| (s..e).contains(&pos)) {
                    inserts.push(pos);
                }
                in_header = !close;
                in_digest = digest;
                typed = false;
                attached = false;
            }
            None if in_header && line.is_empty() => {
                in_header = attached || (in_digest && !typed);
                in_digest = false;
                typed = false;
                attached = false;
            }
            None if in_header => field.extend_from_slice(line),
            None => {}
        }
        pos = line_end;
    }
    if inserts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() + 2 * inserts.len());
    let mut from = 0;
    for at in inserts {
        out.extend_from_slice(&raw[from..at]);
        out.extend_from_slice(b"\r\n");
        from = at;
    }
    out.extend_from_slice(&raw[from..]);
    Some(out)
}

/// The type of a header field when it is a Content-Type: its value in ASCII lower case,
/// without blanks and comments (`message (x) /rfc822` is message/rfc822 to mail-parser).
fn content_type_of(field: &[u8]) -> Option<Vec<u8>> {
    let colon = field.iter().position(|&b| b == b':')?;
    if !field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"content-type")
    {
        return None;
    }
    Some(super::parse::bare_value(&field[colon + 1..]))
}

/// `raw` with the close delimiters added that nested multiparts lack, when any does: a
/// delimiter line of the enclosing multipart ends the parts inside it (RFC 2046 §5.1.2), but
/// mail-parser runs such a multipart on to the end of the message, and the parts after it
/// would be re-encoded as its text. None when nothing is missing, or when a repair does not
/// take (the message is then taken as mail-parser reads it).
fn close_unclosed(raw: &[u8]) -> Option<Vec<u8>> {
    let mut closed: Option<Vec<u8>> = None;
    let mut done = std::collections::HashSet::new();
    // Each round closes one multipart; a message has fewer than this many.
    for _ in 0..256 {
        let current = closed.as_deref().unwrap_or(raw);
        let parsed = crate::message::parse::mail_parser().parse(current)?;
        let Some((at, boundary)) = first_unclosed(&parsed, current) else {
            return closed;
        };
        // The same multipart again: the repair did not change how it is read.
        if !done.insert(boundary.clone()) {
            return None;
        }
        let mut next = Vec::with_capacity(current.len() + boundary.len() + 6);
        next.extend_from_slice(&current[..at]);
        next.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        next.extend_from_slice(&current[at..]);
        closed = Some(next);
    }
    None
}

/// The first multipart that runs past a delimiter line of its parent multipart: where that
/// line starts, and the multipart's own boundary. The lines are found in one pass over the
/// message; those inside an attached message belong to it. Nothing inside a multipart/signed
/// or multipart/encrypted is looked at: its bytes are the sender's signature's.
fn first_unclosed(message: &Message<'_>, raw: &[u8]) -> Option<(usize, String)> {
    let parts = &message.parts;
    let boundary = |p: &MessagePart<'_>| {
        p.content_type()
            .and_then(|ct| ct.attribute("boundary"))
            .map(str::to_string)
    };
    // Each part's parent comes before it (see `tree_children`): the walk up ends.
    let mut parent = vec![None; parts.len()];
    for (i, kids) in tree_children(message).into_iter().enumerate() {
        for c in kids {
            parent[c] = Some(i);
        }
    }
    let sealed_above = |mut i: usize| loop {
        if is_sealed(&parts[i]) {
            return true;
        }
        match parent[i] {
            Some(p) => i = p,
            None => return false,
        }
    };
    let attached: Vec<(usize, usize)> = parts
        .iter()
        .filter(|p| matches!(p.body, PartType::Message(_)))
        .map(|p| (p.offset_body as usize, p.offset_end as usize))
        .collect();
    let mut lines: std::collections::HashMap<String, Vec<usize>> = parts
        .iter()
        .filter(|p| matches!(p.body, PartType::Multipart(_)))
        .filter_map(boundary)
        .map(|b| (b, Vec::new()))
        .collect();
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |n| pos + n + 1);
        if let Some(rest) = raw[pos..line_end].trim_ascii_end().strip_prefix(b"--") {
            let name = rest.strip_suffix(b"--").unwrap_or(rest);
            let inside_attached = attached.iter().any(|&(s, e)| (s..e).contains(&pos));
            if let (Ok(name), false) = (std::str::from_utf8(name), inside_attached) {
                if let Some(at) = lines.get_mut(name) {
                    at.push(pos);
                } else if let Some(at) = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|r| lines.get_mut(r))
                {
                    at.push(pos);
                }
            }
        }
        pos = line_end;
    }
    let mut first: Option<(usize, String)> = None;
    for (i, part) in parts.iter().enumerate() {
        let (PartType::Multipart(_), Some(own), Some(up)) = (&part.body, boundary(part), parent[i])
        else {
            continue;
        };
        let Some(outer) = boundary(&parts[up]).filter(|b| *b != own) else {
            continue;
        };
        if sealed_above(i) {
            continue;
        }
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        let at = lines.get(&outer).and_then(|at| {
            let k = at.partition_point(|&p| p < start);
            at.get(k).copied().filter(|&p| p < end)
        });
        if let Some(at) = at {
            if first.as_ref().is_none_or(|(f, _)| at < *f) {
                first = Some((at, own));
            }
        }
    }
    first
}

/// Rewrites a part's header fields as they may stand inside signed data
/// ([`super::mime::signing_safe_field`]) when any of them is not so already.
fn safe_header(part: &MessagePart<'_>, raw: &[u8], edits: &mut Vec<Edit>) {
    let (Some(first), Some(last)) = (part.headers.first(), part.headers.last()) else {
        return;
    };
    let (start, end) = (first.offset_field as usize, last.offset_end as usize);
    let mut header = Vec::with_capacity(end.saturating_sub(start));
    for (i, h) in part.headers.iter().enumerate() {
        // An attached message's mbox postmark ("From sender date"), which mail-parser reads
        // as its first field: no field of the message, and a "From " line that mbox
        // deliveries would quote ">From ", breaking the signature. Dropped, as from the
        // message itself (`ParsedMessage::parse`).
        if i == 0
            && raw
                .get(h.offset_field as usize..h.offset_end as usize)
                .is_some_and(super::parse::is_postmark)
        {
            continue;
        }
        // Offsets that do not point at this field in the message (a part parsed from decoded
        // bytes): nothing is rewritten.
        let Some(bytes) = raw.get(h.offset_field as usize..h.offset_end as usize) else {
            return;
        };
        let name = h.name.as_str().as_bytes();
        if !bytes
            .get(..name.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(name))
        {
            return;
        }
        let mut field = header_crlf(bytes);
        if !field.ends_with(b"\r\n") {
            field.extend_from_slice(b"\r\n");
        }
        header.extend_from_slice(&super::mime::signing_safe_field(h.name.as_str(), &field));
    }
    if header != crlf(&raw[start..end]) {
        edits.push(Edit {
            start,
            end,
            bytes: header,
        });
    }
}

/// Makes a multipart's own framing safe to sign: adds the close-delimiter when it is missing
/// (RFC 2046 §5.1.1 requires it; without it a parser of the signed entity may run into the
/// enclosing multipart/signed), and drops a preamble or epilogue that is not 7-bit safe —
/// RFC 2046 §5.1.1 says both are to be ignored by readers, so nothing a reader sees changes.
fn tidy_multipart(part: &MessagePart<'_>, raw: &[u8], edits: &mut Vec<Edit>) {
    let Some(boundary) = part.content_type().and_then(|ct| ct.attribute("boundary")) else {
        return;
    };
    let start = part.offset_body as usize;
    let end = (part.offset_end as usize).min(raw.len());
    let dash = format!("--{boundary}");
    // Delimiter lines (RFC 2046 §5.1.1): "--boundary" or "--boundary--", then only
    // transport padding (blanks), which is trimmed because it would be trailing whitespace.
    let mut first = None;
    let mut close_line_end = None;
    let mut pos = start;
    while pos < end {
        let line_end = raw[pos..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |n| pos + n + 1);
        let line = &raw[pos..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if let Some((closing, padding)) = super::parse::delimiter_line(content, boundary.as_bytes())
        {
            if padding > 0 {
                edits.push(Edit {
                    start: pos + content.len() - padding,
                    end: pos + content.len(),
                    bytes: Vec::new(),
                });
            }
            first.get_or_insert(pos);
            if closing {
                close_line_end = Some(line_end);
            }
        }
        pos = line_end;
    }
    if let Some(first) = first {
        if !is_signing_safe(&raw[start..first]) {
            edits.push(Edit {
                start,
                end: first,
                bytes: Vec::new(),
            });
        }
    }
    match close_line_end {
        Some(after) => {
            if !is_signing_safe(&raw[after..end]) {
                edits.push(Edit {
                    start: after,
                    end,
                    bytes: Vec::new(),
                });
            }
        }
        None => edits.push(Edit {
            start: end,
            end,
            bytes: format!("\r\n{dash}--\r\n").into_bytes(),
        }),
    }
}

/// multipart/signed and multipart/encrypted (RFC 1847): what is inside is covered by a
/// signature or is ciphertext, and may not be re-encoded.
pub(super) fn is_sealed(part: &MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct.subtype().is_some_and(|s| {
                s.eq_ignore_ascii_case("signed") || s.eq_ignore_ascii_case("encrypted")
            })
    })
}

/// The Content-Type a leaf that [`leaf_edit`] re-encodes takes instead of its own, if any: a
/// multipart or message that reached us as a leaf ([`is_broken_container`]) becomes text;
/// one under a transfer encoding we do not know, application/octet-stream (RFC 2045 §6.4),
/// its bytes base64'd as they came.
fn relabelled_type(part: &MessagePart<'_>, raw: &[u8]) -> Option<String> {
    let known = matches!(
        declared_cte(part, raw).as_deref(),
        None | Some("7bit" | "8bit" | "binary" | "base64" | "quoted-printable")
    );
    if part.encoding == Encoding::None && !known {
        // Its name goes with it (review: the relabelled part lost it): quoted when it is
        // plain ASCII, else as RFC 2231 UTF-8.
        let name = part.content_type().and_then(|ct| ct.attribute("name"));
        Some(match name {
            None => "application/octet-stream".into(),
            Some(n)
                if n.bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') =>
            {
                format!("application/octet-stream; name=\"{n}\"")
            }
            Some(n) => {
                let encoded: String = n
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("application/octet-stream; name*=utf-8''{encoded}")
            }
        })
    } else if is_broken_container(part) {
        Some(text_type(raw, part))
    } else {
        None
    }
}

/// A multipart whose boundary never appears (or is missing) reaches us as a leaf. It cannot be
/// re-encoded under a multipart type (RFC 2045 §6.4), so when it needs encoding it is
/// relabelled as text, which is how MUAs show such a part anyway.
fn is_broken_container(part: &MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart") || ct.ctype().eq_ignore_ascii_case("message")
    })
}

fn text_type(raw: &[u8], part: &MessagePart<'_>) -> String {
    let body = &raw[part.offset_body as usize..part.offset_end as usize];
    let charset = part
        .content_type()
        .filter(|ct| ct.ctype().eq_ignore_ascii_case("text"))
        .and_then(|ct| ct.attribute("charset"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            if std::str::from_utf8(body).is_ok() {
                "utf-8".into()
            } else {
                "unknown-8bit".into()
            }
        });
    let subtype = part
        .content_type()
        .filter(|ct| ct.ctype().eq_ignore_ascii_case("text"))
        .and_then(|ct| ct.subtype())
        .unwrap_or("plain");
    format!("text/{subtype}; charset=\"{charset}\"")
}

/// Decides whether a leaf must be re-encoded; returns the new encoding and body if so.
fn leaf_edit(part: &MessagePart<'_>, raw: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    let body = &raw[part.offset_body as usize..part.offset_end as usize];
    if is_signing_safe(body) {
        return None;
    }
    let declared = declared_cte(part, raw);
    let textual = is_textual(part);
    // mail-parser reports a base64 part it could not decode (a stray 8-bit byte) as not
    // encoded: the declared encoding decides, as the recipient's decoder goes by it.
    match (part.encoding, declared.as_deref()) {
        (Encoding::Base64, _) | (Encoding::None, Some("base64")) => {
            let decoded = base64_decode_lenient(body)?;
            Some(("base64", base64_lines(&decoded)))
        }
        // Repaired in place rather than decoded and re-encoded: decoders disagree on broken
        // escapes, and the repair keeps whatever reading the recipient's decoder would make.
        (Encoding::QuotedPrintable, _) | (Encoding::None, Some("quoted-printable")) => {
            Some(("quoted-printable", repair_quoted_printable(body)))
        }
        (Encoding::None, _) => match declared.as_deref() {
            None | Some("7bit") | Some("8bit") | Some("binary") => Some(encode_leaf(body, textual)),
            // An encoding we do not know (x-uuencode, ...) over bytes that are not 7-bit
            // safe: RFC 2045 §6.4 has the recipient treat such a part as
            // application/octet-stream, and the bytes are what it would save. They become
            // that type's base64 (see `relabelled_type`); left raw, they were 8-bit bytes
            // inside the signed part (review).
            Some(_) => Some(("base64", base64_lines(body))),
        },
    }
}

fn encode_leaf(body: &[u8], textual: bool) -> (&'static str, Vec<u8>) {
    if textual {
        ("quoted-printable", quoted_printable(body))
    } else {
        ("base64", base64_lines(body))
    }
}

/// The declared Content-Transfer-Encoding mechanism, lower case, without the comments and
/// quotes RFC 2045 §6.1 (CFWS around the token) and senders allow: `8bit (raw)` is 8bit.
fn declared_cte(part: &MessagePart<'_>, raw: &[u8]) -> Option<String> {
    // The last one, as mail-parser reads it.
    part.headers
        .iter()
        .rev()
        .find(|h| is_cte(&h.name))
        .map(|h| {
            let value =
                String::from_utf8_lossy(&raw[h.offset_start as usize..h.offset_end as usize]);
            let mut token = String::new();
            let mut depth = 0u32;
            let mut chars = value.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if depth > 0 => {
                        chars.next();
                    }
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    '"' => {}
                    c if depth == 0 && !c.is_whitespace() => token.push(c),
                    _ => {}
                }
            }
            token.to_ascii_lowercase()
        })
}

fn is_textual(part: &MessagePart<'_>) -> bool {
    match part.content_type() {
        None => true,
        Some(ct) => {
            let t = ct.ctype();
            t.eq_ignore_ascii_case("text")
                || t.eq_ignore_ascii_case("multipart")
                || t.eq_ignore_ascii_case("message")
        }
    }
}

fn set_cte(fields: &mut Vec<HeaderField>, cte: &str) {
    fields.retain(|f| !f.is("Content-Transfer-Encoding"));
    fields.push(HeaderField::new("Content-Transfer-Encoding", cte));
}

fn apply(raw: &[u8], start: usize, mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|e| e.start);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 3);
    let mut pos = start;
    for edit in edits {
        if edit.start < pos {
            // Overlapping edits cannot come from a well-formed part tree; skip rather than
            // duplicate bytes.
            continue;
        }
        out.extend_from_slice(&crlf(&raw[pos..edit.start]));
        out.extend_from_slice(&edit.bytes);
        pos = edit.end.max(edit.start);
    }
    out.extend_from_slice(&crlf(&raw[pos.min(raw.len())..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    /// A message whose content entity mail-parser reads with a part among its own children
    /// (found by fuzzing; a multipart reusing its parent's boundary, not closed): the walks
    /// take each part once, and the entity is made (before, the walk never ended and took
    /// all memory).
    #[test]
    fn a_part_tree_with_a_cycle_is_walked_once() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
        let entity = std::fs::read(data.join("cyclic-parts-entity.eml")).unwrap();
        let parsed = crate::message::parse::mail_parser()
            .parse(&entity[..])
            .unwrap();
        let (mut messages, mut cycles) = (vec![&parsed], 0);
        while let Some(m) = messages.pop() {
            for (i, part) in m.parts.iter().enumerate() {
                match &part.body {
                    PartType::Multipart(own) => {
                        cycles += own.iter().filter(|&&c| c as usize <= i).count()
                    }
                    PartType::Message(inner) => messages.push(inner),
                    _ => {}
                }
            }
            let kids = tree_children(m);
            let mut parents = vec![0; kids.len()];
            for (i, children) in kids.iter().enumerate() {
                for &c in children {
                    assert!(c > i);
                    parents[c] += 1;
                }
            }
            assert!(parents.iter().all(|&n| n <= 1), "{kids:?}");
        }
        assert!(cycles > 0, "mail-parser puts a part among its own children");
        let raw = std::fs::read(data.join("cyclic-parts.eml")).unwrap();
        let message = ParsedMessage::parse(raw).unwrap();
        let made = content_entity(&message).to_entity();
        assert!(made.len() < 3 * message.raw().len(), "{}", made.len());
    }

    /// The parts of a digest are attached messages unless typed otherwise, and a folded
    /// Content-Type is one field: a header-only one there stays a part of its own too. A text
    /// line that equals the delimiter of a later multipart is text, and gets nothing added.
    #[test]
    fn header_only_parts_in_a_digest_or_folded_and_delimiters_out_of_place() {
        let entity = |raw: &[u8]| {
            let e = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
            String::from_utf8_lossy(&e).into_owned()
        };
        let digest = b"From: a@example.org\nMIME-Version: 1.0\n\
Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: x@example.org\n\
Subject: only a header\n--d\nContent-Type: application/octet-stream; name=\"report.bin\"\n\n\
From \0\xff binary\n--d--\n";
        let text = entity(digest);
        assert!(
            text.contains("Subject: only a header\r\n\r\n--d\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\n--d\r\nContent-Type: application/octet-stream"),
            "{text}"
        );
        let folded = b"From: a@example.org\nMIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type:\n message/rfc822\n\n\
Subject: only a header\n--b\nContent-Type: application/octet-stream; name=\"report.bin\"\n\n\
From \0\xff binary\n--b--\n";
        let text = entity(folded);
        assert!(
            text.contains("Subject: only a header\r\n\r\n--b\r\n"),
            "{text}"
        );
        // "--inner" in the text before the multipart/alternative it belongs to.
        let out_of_place = b"From: a@example.org\nMIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=outer\n\n--outer\nContent-Type: text/plain\n\n\
quoted:\n--inner\nContent-Type: text/plain\n--outer\n\
Content-Type: multipart/alternative; boundary=inner\n\n--inner\nContent-Type: text/plain\n\n\
hi \n--inner--\n--outer--\n";
        let text = entity(out_of_place);
        assert!(
            text.contains("--inner\r\nContent-Type: text/plain\r\n--outer\r\n"),
            "{text}"
        );
    }

    /// A part of header fields alone, then the next delimiter (RFC 2046 allows it), and a
    /// header-only attached message: each part stays a part of its own (review: the next
    /// part's fields were read as this one's and the delimiter was left out of the copy).
    #[test]
    fn a_part_that_ends_with_its_header_stays_a_part() {
        let raw = b"From: a@example.org\nMIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n\
Hello Bob, report attached. \n--b\nContent-Type: text/plain; name=\"empty.txt\"\n--b\n\
Content-Type: message/rfc822\n\nSubject: only a header\n--b\n\
Content-Type: application/octet-stream; name=\"report.bin\"\n\nFrom \0\xff binary\n--b--\n";
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        let text = String::from_utf8_lossy(&entity).into_owned();
        assert_eq!(text.matches("\r\n--b\r\n").count(), 4, "{text}");
        let parsed = MessageParser::default().parse(&entity[..]).unwrap();
        let PartType::Multipart(children) = &parsed.parts[0].body else {
            panic!("{text}");
        };
        assert_eq!(children.len(), 4, "{text}");
        let names: Vec<Option<&str>> = children
            .iter()
            .map(|&c| parsed.parts[c as usize].attachment_name())
            .collect();
        assert_eq!(names, [None, Some("empty.txt"), None, Some("report.bin")]);
        let report = &parsed.parts[children[3] as usize];
        assert_eq!(report.contents(), b"From \0\xff binary");
        assert!(parsed.parts[children[1] as usize].contents().is_empty());
    }

    #[test]
    fn an_unclosed_inner_multipart_ends_at_the_outer_delimiter() {
        let raw = b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n\
Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--o\r\n\
Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0x\r\n--o--\r\n";
        let closed = close_unclosed(raw).expect("one close delimiter added");
        assert!(closed
            .windows(19)
            .any(|w| w == b"hello\r\n--i--\r\n--o\r\n"));
        let m = MessageParser::default().parse(&closed[..]).unwrap();
        let pdf = m
            .attachments()
            .next()
            .expect("the PDF is a part of its own");
        assert_eq!(pdf.contents(), b"%PDF-1");
        assert!(close_unclosed(&closed).is_none());
        // The entity to sign: the text part re-encoded, the PDF part as it came.
        let message = [&b"From: a@example.org\r\n"[..], &raw[..]].concat();
        let entity = content_entity(&ParsedMessage::parse(message).unwrap()).to_entity();
        let text = String::from_utf8(entity).unwrap();
        assert!(
            text.ends_with(
                "--i--\r\n--o\r\nContent-Type: application/pdf\r\n\
                Content-Transfer-Encoding: base64\r\n\r\nJVBERi0x\r\n--o--\r\n"
            ),
            "{text}"
        );
    }

    /// No line of the entity to sign starts with "From ", which mbox deliveries quote as
    /// ">From " (and the signature no longer verifies): an attached message's postmark is
    /// dropped, and a field written "From :" (a blank before the colon, RFC 5322 §4.5) is
    /// written "From:". From a review: both stayed in the signed part.
    #[test]
    fn an_attached_postmark_and_a_blank_before_a_colon_leave_no_from_line() {
        let raw = b"From: Alice <alice@example.org>\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
see attached\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
From zed@example.com Thu Jan  1 00:00:00 2026\r\nFrom : Zed <zed@example.com>\r\n\
Subject: inner\r\n\r\ninner body\r\n--b--\r\n";
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        let text = String::from_utf8(entity).unwrap();
        assert!(
            !text.split("\r\n").any(|l| l.starts_with("From ")),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/rfc822\r\n\r\nFrom: Zed <zed@example.com>\r\nSubject: inner\r\n\r\ninner body\r\n"),
            "{text}"
        );
        // The attached message's own body re-encoded (8-bit): its header is written anew.
        let eight_bit = String::from_utf8_lossy(raw).replace("inner body", "inner b\u{fc}dy");
        let entity = content_entity(&ParsedMessage::parse(eight_bit.into_bytes()).unwrap());
        let text = String::from_utf8(entity.to_entity()).unwrap();
        assert!(
            !text.split("\r\n").any(|l| l.starts_with("From ")),
            "{text}"
        );
        assert!(text.contains("From: Zed <zed@example.com>\r\n"), "{text}");
        assert_eq!(
            crate::message::mime::signing_safe_field("From", b"From \t: Alice <a@example.org>\r\n"),
            b"From: Alice <a@example.org>\r\n"
        );
    }

    /// An empty attached message before another one: mail-parser's debug assertion ("Invalid
    /// part ID") panicked on it in debug builds (review: SEARCH BODY failed for the whole
    /// mailbox and `deliver` answered 75 for ever); release builds, and now every build
    /// (Cargo.toml), parse it.
    #[test]
    fn an_empty_attached_message_does_not_panic_the_parser() {
        let raw = b"From: x@example.org\r\nSubject: crafted\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--b--\r\n";
        assert!(MessageParser::default().parse(&raw[..]).is_some());
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        assert!(entity.windows(4).any(|w| w == b"body"));
    }

    #[test]
    fn no_close_delimiter_is_put_into_a_signature_or_an_attached_message() {
        // The sender's own multipart/signed: its bytes are the signature's.
        let signed = b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; \
boundary=s\r\n\r\n--s\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\n\
Content-Type: text/plain\r\n\r\nsigned\r\n\r\n--s\r\n\
Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n";
        assert!(close_unclosed(signed).is_none());
        // An attached message whose own multipart uses the outer boundary: its lines are its.
        let attached = b"Content-Type: multipart/mixed; boundary=R\r\n\r\n--R\r\n\
Content-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\nContent-Type: message/rfc822\r\n\r\n\
Content-Type: multipart/mixed; boundary=R\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\n\
fwd\r\n--R--\r\n\r\n--i--\r\n\r\n--R--\r\n";
        assert!(close_unclosed(attached).is_none());
    }

    /// A base64 part with bytes outside the alphabet and an over-long line: re-encoded from
    /// what RFC 2045 §6.8 decoders read, not signed as it came (review: 8-bit bytes and a
    /// 1,200-octet line in the signed part).
    #[test]
    fn a_damaged_base64_part_is_encoded_again() {
        let long = "QUJD".repeat(300);
        let raw = format!(
            "From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; \
             boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nQUJD\u{ff}!!\r\n{long}\r\n--b--\r\n"
        );
        let entity = content_entity(&ParsedMessage::parse(raw.into_bytes()).unwrap()).to_entity();
        assert!(
            is_signing_safe(&entity),
            "{}",
            String::from_utf8_lossy(&entity)
        );
        let m = MessageParser::default().parse(&entity[..]).unwrap();
        let part = m.attachments().next().unwrap();
        assert_eq!(part.contents(), "ABC".repeat(301).as_bytes());
    }

    /// A transfer encoding sealpost does not know over bytes that are not 7-bit safe: the
    /// part becomes what RFC 2045 §6.4 has the recipient take it for, application/octet-stream,
    /// its bytes base64'd as they came (review: raw 8-bit bytes in the signed part). At the
    /// root, in a multipart (one with a Content-Type, one without), and never where the
    /// bytes were 7-bit safe already.
    #[test]
    fn an_unknown_encoding_over_eight_bit_bytes_becomes_octet_stream() {
        let raw = b"From: a@example.org\r\nContent-Type: text/plain; name*=utf-8''caf%C3%A9.uu\r\n\
Content-Transfer-Encoding: x-uuencode\r\n\r\ncaf\xc3\xa9\r\n";
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        assert!(is_signing_safe(&entity));
        let m = MessageParser::default().parse(&entity[..]).unwrap();
        assert_eq!(m.content_type().unwrap().ctype(), "application");
        assert_eq!(m.content_type().unwrap().subtype(), Some("octet-stream"));
        assert_eq!(m.content_type().unwrap().attribute("name"), Some("café.uu"));
        let part = m.attachments().next().unwrap();
        assert_eq!(part.contents(), b"caf\xc3\xa9\r\n");

        let raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; \
boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; name=\"f.uu\"\r\n\
Content-Transfer-Encoding: x-uuencode\r\n\r\n\xff\xfe\r\n--b\r\n\
Content-Transfer-Encoding: bogus\r\n\r\n\xe9t\xe9\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n\
begin 644 f\r\n#86)C\r\n`\r\nend\r\n--b--\r\n";
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        let text = String::from_utf8(entity.clone()).unwrap();
        assert!(is_signing_safe(&entity), "{text}");
        let m = MessageParser::default().parse(&entity[..]).unwrap();
        let types: Vec<String> = m.parts[1..]
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "application/octet-stream",
                "application/octet-stream",
                "text/plain"
            ],
            "{text}"
        );
        // The name goes with the part.
        assert_eq!(
            m.parts[1].content_type().unwrap().attribute("name"),
            Some("f.uu"),
            "{text}"
        );
        // The CRLF before a delimiter is the delimiter's (RFC 2046 §5.1.1).
        assert_eq!(m.parts[1].contents(), b"\xff\xfe");
        assert_eq!(m.parts[2].contents(), b"\xe9t\xe9");
        assert!(
            text.contains("x-uuencode\r\n\r\nbegin 644 f\r\n"),
            "7-bit: as it came"
        );
    }

    /// Two Content-Type fields: the entity keeps the one its content was made safe by (the
    /// last, as mail-parser reads it), so no reader takes it for the other type.
    #[test]
    fn one_content_type_is_kept() {
        let raw = b"From: a@example.org\r\nContent-Type: text/plain; hp=\"cipher\"\r\n\
Content-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\n<p>h\xc3\xa9</p>\r\n";
        let entity = content_entity(&ParsedMessage::parse(raw.to_vec()).unwrap()).to_entity();
        let text = String::from_utf8(entity).unwrap();
        assert!(
            text.starts_with(
                "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            ),
            "{text}"
        );
    }

    /// 8bit and binary labels over content that is 7-bit once made safe become 7bit, at the
    /// root, on a multipart, an attached message and its parts; inside a sender's own
    /// multipart/signed they stay (review: a relay downgrading for a next hop without
    /// 8BITMIME goes by the labels and would change signed bytes).
    #[test]
    fn eight_bit_labels_over_seven_bit_content_become_7bit() {
        let raw = "From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; \
boundary=b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n--b\r\nContent-Type: text/plain\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nascii only\r\n--b\r\nContent-Type: message/rfc822\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nGr\u{fc}\u{df}e\r\n--b\r\nContent-Type: multipart/signed; \
protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=s\r\n\r\n--s\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nsigned ascii\r\n--s\r\n\
Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n--b--\r\n";
        let entity = content_entity(&ParsedMessage::parse(raw.as_bytes().to_vec()).unwrap());
        let text = String::from_utf8(entity.to_entity()).unwrap();
        assert!(text.is_ascii(), "{text}");
        // Only the signed part's own label is left.
        assert_eq!(
            text.matches("Content-Transfer-Encoding: 8bit").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("Content-Transfer-Encoding: 8bit\r\n\r\nsigned ascii"),
            "{text}"
        );
        assert!(
            text.starts_with(
                "Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: 7bit\r\n"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("Content-Transfer-Encoding: 7bit").count(),
            3,
            "{text}"
        );
        // Content still 8-bit (in the sender's signed part): the labels stay.
        let eight = raw.replace("signed ascii", "sign\u{e9}d");
        let entity = content_entity(&ParsedMessage::parse(eight.into_bytes()).unwrap());
        let text = String::from_utf8_lossy(&entity.to_entity()).into_owned();
        assert!(!text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
    }

    #[test]
    fn declared_encoding_without_comments_and_quotes() {
        for (field, want) in [
            ("8bit (raw)", "8bit"),
            ("\"8bit\"", "8bit"),
            (" (a (nested) comment) BINARY ", "binary"),
            ("x-uuencode", "x-uuencode"),
        ] {
            let raw = format!("Content-Transfer-Encoding: {field}\r\n\r\nx\r\n");
            let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
            let got = declared_cte(message.root_part(), raw.as_bytes());
            assert_eq!(got.as_deref(), Some(want), "{field}");
        }
    }
}
