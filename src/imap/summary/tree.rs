//! The MIME part tree (RFC 2045, RFC 2046 §5.1) of a raw message, split the way Dovecot 2.3's
//! lib-mail `message-parser` splits it, so that part numbers, sizes and line counts agree
//! with a Dovecot server byte for byte. The rules that differ from a strict RFC 2046 reading
//! and matter for broken mail:
//!
//! - A delimiter line only has to START with `--boundary` (RFC 2046 §5.1.1 allows trailing
//!   whitespace; Dovecot accepts any suffix). When several open boundaries match, the longest
//!   wins, so an inner boundary that extends the outer one is still recognised.
//! - A multipart/* without a boundary parameter, or whose boundary never occurs, has no
//!   children; its body is opaque (BODYSTRUCTURE shows one empty text/plain child).
//! - A missing close delimiter closes the part at end of input.
//! - Content-* headers count only in MIME parts: a part with MIME-Version or Content-Type,
//!   and every child of a multipart (RFC 2045 §4).
//! - A header section may end without a blank line: at end of input, or where a delimiter
//!   line of an enclosing multipart starts (the newline before it then belongs to the
//!   delimiter).
//!
//! No I/O; the whole message is in memory. Everything is byte offsets into it.

use super::lexer::{Lexer, Lx};

/// RFC 2046 §5.1.1 caps boundaries at 70 characters; Dovecot keeps up to 80.
const BOUNDARY_MAX: usize = 80;
/// How much of an unterminated last line Dovecot compares against the boundaries.
const BOUNDARY_LINE_MAX: usize = BOUNDARY_MAX + 4;
/// Deepest nesting that is still split into parts (after Dovecot 2.3's max_nested_mime_parts,
/// 100; what Dovecot renders at the limit was not compared);
/// deeper multipart and message/rfc822 bodies stay opaque. Bounds the recursion of
/// everything that walks the tree.
pub(crate) const MAX_DEPTH: usize = 100;
/// Most parts a message is split into (Dovecot 2.3's max_total_mime_parts, 10,000): past it,
/// the rest of the message is the body of the part at hand, delimiter lines and all. 140,000
/// empty parts in 1 MB made a 10 MB BODYSTRUCTURE, and 7.7 MB took 648 MB to summarize
/// (review).
pub(crate) const MAX_PARTS: usize = 10_000;

/// One logical header field (all its physical lines).
#[derive(Clone, Debug)]
pub(crate) struct Field {
    /// The name before the colon, trailing whitespace removed; the whole line if no colon.
    pub name: Vec<u8>,
    /// The value with the whitespace after the colon skipped, folded lines joined by LF
    /// (CRs dropped), as Dovecot hands it to its header consumers.
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    pub is_mime: bool,
    pub multipart: bool,
    pub digest: bool,
    pub rfc822: bool,
    pub text: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// Offset of the first header byte.
    pub start: usize,
    pub header_size: usize,
    pub body_size: usize,
    pub flags: Flags,
    pub fields: Vec<Field>,
}

impl Node {
    fn new(parent: Option<usize>, start: usize) -> Self {
        Node {
            parent,
            children: Vec::new(),
            start,
            header_size: 0,
            body_size: 0,
            flags: Flags::default(),
            fields: Vec::new(),
        }
    }

    pub fn body_start(&self) -> usize {
        self.start + self.header_size
    }

    pub fn end(&self) -> usize {
        self.start + self.header_size + self.body_size
    }
}

struct Boundary {
    text: Vec<u8>,
    part: usize,
}

enum Step {
    Header,
    BodyToBoundary,
    Rfc822Child,
    Eof,
}

struct Parser<'a> {
    raw: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    cur: usize,
    boundaries: Vec<Boundary>,
}

/// Splits `raw` into its part tree; node 0 is the message itself. Never fails.
pub(crate) fn parse(raw: &[u8]) -> Vec<Node> {
    let mut p = Parser {
        raw,
        pos: 0,
        nodes: vec![Node::new(None, 0)],
        cur: 0,
        boundaries: Vec::new(),
    };
    let mut step = Step::Header;
    loop {
        step = match step {
            Step::Header => p.header(),
            Step::BodyToBoundary => p.body_to_boundary(),
            Step::Rfc822Child if p.nodes.len() >= MAX_PARTS => p.rest_is_body(),
            Step::Rfc822Child => {
                p.append_child(false);
                p.header()
            }
            Step::Eof => break,
        };
    }
    // end of input closes every open part
    while p.nodes[p.cur].parent.is_some() {
        p.finish_part();
    }
    p.nodes
}

fn is_blank_line(data: &[u8]) -> bool {
    data.first() == Some(&b'\n') || data.starts_with(b"\r\n")
}

impl Parser<'_> {
    fn append_child(&mut self, is_mime: bool) {
        let parent = &self.nodes[self.cur];
        let start = parent.end();
        let id = self.nodes.len();
        let mut node = Node::new(Some(self.cur), start);
        node.flags.is_mime = is_mime;
        self.nodes.push(node);
        self.nodes[self.cur].children.push(id);
        self.cur = id;
    }

    fn finish_part(&mut self) {
        let node = &self.nodes[self.cur];
        let (size, parent) = (node.header_size + node.body_size, node.parent);
        if let Some(parent) = parent {
            self.nodes[parent].body_size += size;
            self.cur = parent;
        }
    }

    fn add_body(&mut self, len: usize) {
        self.nodes[self.cur].body_size += len;
        self.pos += len;
    }

    /// Is the line at `at` a delimiter of an open multipart? Returns the boundary index and
    /// whether it is a close delimiter (`--boundary--`).
    fn boundary_line(&self, at: usize) -> Option<(usize, bool)> {
        let data = &self.raw[at..];
        if data.len() < 2 || !data.starts_with(b"--") || self.boundaries.is_empty() {
            return None;
        }
        let data = &data[2..];
        let find_size = match data.iter().position(|&c| c == b'\n') {
            Some(lf) => {
                let mut n = lf;
                if n > 0 && data[n - 1] == b'\r' {
                    n -= 1;
                }
                if n > 2 && data[n - 1] == b'-' && data[n - 2] == b'-' {
                    n -= 2;
                }
                n
            }
            None => data.len().min(BOUNDARY_LINE_MAX),
        };
        // newest first; a longer match beats an older shorter one
        let mut best: Option<usize> = None;
        for (i, b) in self.boundaries.iter().enumerate().rev() {
            let len = b.text.len();
            if len <= find_size
                && data.starts_with(&b.text)
                && best.is_none_or(|k| self.boundaries[k].text.len() < len)
            {
                best = Some(i);
                if len == find_size {
                    break;
                }
            }
        }
        let i = best?;
        let len = self.boundaries[i].text.len();
        let close = data.len() >= len + 2 && &data[len..len + 2] == b"--";
        Some((i, close))
    }

    /// Reads the header section of the current part.
    fn header(&mut self) -> Step {
        let cur = self.cur;
        let mut last_boundary: Option<Vec<u8>> = None;
        let mut seen_content_type = false;
        let mut multipart_started = false;
        let mut prev_newline = 0usize;
        let mut fields: Vec<Field> = Vec::new();
        let mut open_field = false;
        loop {
            let rest = &self.raw[self.pos..];
            if is_blank_line(rest) && last_boundary.is_some() && self.nodes[cur].flags.is_mime {
                // the boundary goes on the stack before the body starts, so that a
                // "--boundary" line right after the headers is ours
                if let Some(text) = last_boundary.take() {
                    self.boundaries.push(Boundary { text, part: cur });
                    multipart_started = true;
                }
            }
            if let Some((b, _)) = self.boundary_line(self.pos) {
                if self.boundaries[b].part != cur {
                    // an enclosing delimiter ends the header section; the newline before
                    // it belongs to the delimiter
                    if prev_newline > 0 {
                        self.nodes[cur].header_size -= prev_newline;
                        if let Some(parent) = self.nodes[cur].parent {
                            self.nodes[parent].body_size += prev_newline;
                        }
                    }
                    break;
                }
            }
            if rest.is_empty() {
                break;
            }
            if is_blank_line(rest) {
                let n = if rest[0] == b'\r' { 2 } else { 1 };
                self.pos += n;
                // A blank line right before an enclosing delimiter is that delimiter's line
                // break (RFC 2046 §5.1.1): the part has no blank line and an empty body, as
                // Dovecot reads it (fixture 41: `n.MIME` held the blank line).
                let enclosing = self
                    .boundary_line(self.pos)
                    .is_some_and(|(b, _)| self.boundaries[b].part != cur);
                match self.nodes[cur].parent {
                    Some(parent) if enclosing => self.nodes[parent].body_size += n,
                    _ => self.nodes[cur].header_size += n,
                }
                break;
            }
            let (line_len, consumed, newline) = match rest.iter().position(|&c| c == b'\n') {
                Some(lf) => {
                    let crlf = lf > 0 && rest[lf - 1] == b'\r';
                    (
                        if crlf { lf - 1 } else { lf },
                        lf + 1,
                        if crlf { 2 } else { 1 },
                    )
                }
                None => (rest.len(), rest.len(), 0),
            };
            let line = &rest[..line_len];
            let continued = open_field && matches!(line.first(), Some(b' ' | b'\t'));
            if continued {
                if let Some(f) = fields.last_mut() {
                    f.value.push(b'\n');
                    f.value.extend_from_slice(line);
                }
            } else {
                if open_field {
                    self.field_done(fields.last(), &mut seen_content_type, &mut last_boundary);
                }
                fields.push(split_field(line));
                open_field = true;
            }
            if let Some(f) = fields.last() {
                if f.name.eq_ignore_ascii_case(b"Mime-Version")
                    || f.name.eq_ignore_ascii_case(b"Content-Type")
                {
                    self.nodes[cur].flags.is_mime = true;
                }
            }
            self.nodes[cur].header_size += consumed;
            self.pos += consumed;
            prev_newline = newline;
            let next_continues = matches!(self.raw.get(self.pos), Some(b' ' | b'\t'));
            if !next_continues {
                self.field_done(fields.last(), &mut seen_content_type, &mut last_boundary);
                open_field = false;
            }
        }
        if open_field {
            self.field_done(fields.last(), &mut seen_content_type, &mut last_boundary);
        }
        let node = &mut self.nodes[cur];
        node.fields = fields;
        if !node.flags.is_mime {
            // RFC 2045 §4: not MIME, so whatever Content-Type said does not count
            node.flags = Flags::default();
        }
        let mut depth = 0;
        let mut up = node.parent;
        while let Some(p) = up {
            depth += 1;
            up = self.nodes[p].parent;
        }
        let node = &mut self.nodes[cur];
        if depth >= MAX_DEPTH {
            node.flags.multipart = false;
            node.flags.rfc822 = false;
            multipart_started = false;
            if let Some(pushed) = self.boundaries.last() {
                if pushed.part == cur {
                    self.boundaries.pop();
                }
            }
        }
        if !seen_content_type || !node.flags.is_mime {
            let digest_parent = node.parent.is_some_and(|p| self.nodes[p].flags.digest);
            let node = &mut self.nodes[cur];
            if digest_parent {
                // RFC 2046 §5.1.5: parts of multipart/digest default to message/rfc822
                node.flags.rfc822 = true;
            } else {
                node.flags.text = true;
            }
        }
        if multipart_started {
            Step::BodyToBoundary
        } else if self.nodes[cur].flags.rfc822 {
            Step::Rfc822Child
        } else if !self.boundaries.is_empty() {
            Step::BodyToBoundary
        } else {
            self.add_body(self.raw.len() - self.pos);
            Step::Eof
        }
    }

    /// A logical header field is complete: the first Content-Type decides the part's kind.
    fn field_done(
        &mut self,
        field: Option<&Field>,
        seen_content_type: &mut bool,
        last_boundary: &mut Option<Vec<u8>>,
    ) {
        let Some(field) = field else { return };
        if !field.name.eq_ignore_ascii_case(b"Content-Type") || *seen_content_type {
            return;
        }
        *seen_content_type = true;
        let mut lx = Lexer::new(&field.value);
        lx.skip_lwsp();
        let mut ct = Vec::new();
        let ret = lx.parse_content_type(&mut ct);
        let flags = &mut self.nodes[self.cur].flags;
        if ct.eq_ignore_ascii_case(b"message/rfc822") {
            flags.rfc822 = true;
        } else if ct.len() >= 4
            && ct[..4].eq_ignore_ascii_case(b"text")
            && (ct.len() == 4 || ct[4] == b'/')
        {
            flags.text = true;
        } else if ct.len() >= 10 && ct[..10].eq_ignore_ascii_case(b"multipart/") {
            flags.multipart = true;
            flags.digest = ct[10..].eq_ignore_ascii_case(b"digest");
        }
        if ret == Lx::Bad || !flags.multipart || last_boundary.is_some() {
            return;
        }
        for (k, v) in lx.parse_params() {
            if k.eq_ignore_ascii_case(b"boundary") {
                let mut v = v;
                v.truncate(BOUNDARY_MAX);
                *last_boundary = Some(v);
                break;
            }
        }
    }

    /// Body of the current part up to the next delimiter line of any open multipart.
    /// The rest of the message is the body of the part at hand ([`MAX_PARTS`]).
    fn rest_is_body(&mut self) -> Step {
        self.add_body(self.raw.len() - self.pos);
        Step::Eof
    }

    fn body_to_boundary(&mut self) -> Step {
        if self.pos >= self.raw.len() {
            return Step::Eof;
        }
        if self.nodes.len() >= MAX_PARTS {
            return self.rest_is_body();
        }
        // a delimiter directly at the start of the body (no newline before it)
        if let Some((b, close)) = self.boundary_line(self.pos) {
            return self.part_finish(b, close, 0);
        }
        let start = self.pos;
        let mut from = start;
        while let Some(off) = self.raw[from..].iter().position(|&c| c == b'\n') {
            let lf = from + off;
            if let Some((b, close)) = self.boundary_line(lf + 1) {
                let nl_start = if lf > start && self.raw[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                self.add_body(nl_start - start);
                return self.part_finish(b, close, lf + 1 - nl_start);
            }
            from = lf + 1;
        }
        self.add_body(self.raw.len() - start);
        Step::Eof
    }

    /// A delimiter line was found at `self.pos` (after `newline` bytes of [CR]LF): close the
    /// parts inside its multipart and decide what follows.
    fn part_finish(&mut self, b: usize, close: bool, newline: usize) -> Step {
        let owner = self.boundaries[b].part;
        while self.cur != owner {
            self.finish_part();
        }
        let len = self.boundaries[b].text.len();
        // a close delimiter retires its boundary; either way inner ones are forgotten
        self.boundaries.truncate(if close { b } else { b + 1 });
        self.add_body(newline + 2 + len + if close { 2 } else { 0 });
        // the rest of the delimiter line (transport padding or junk) belongs to it too
        match self.raw[self.pos..].iter().position(|&c| c == b'\n') {
            Some(off) => self.add_body(off + 1),
            None => {
                self.add_body(self.raw.len() - self.pos);
                return Step::Eof;
            }
        }
        match self.boundaries.last() {
            Some(top) if top.part == self.cur && self.nodes.len() >= MAX_PARTS => {
                self.rest_is_body()
            }
            Some(top) if top.part == self.cur => {
                self.append_child(true);
                Step::Header
            }
            // epilogue of this multipart, up to an outer delimiter or the end
            Some(_) => Step::BodyToBoundary,
            None => {
                self.add_body(self.raw.len() - self.pos);
                Step::Eof
            }
        }
    }
}

/// Splits the first physical line of a header field into name and value (RFC 5322 §2.2).
fn split_field(line: &[u8]) -> Field {
    let Some(colon) = line.iter().position(|&c| c == b':') else {
        // no colon: Dovecot takes the whole line as the name
        return Field {
            name: line.to_vec(),
            value: Vec::new(),
        };
    };
    let mut name_end = colon;
    while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
        name_end -= 1;
    }
    let value = &line[colon + 1..];
    let mut skip = value
        .iter()
        .take_while(|&&c| matches!(c, b' ' | b'\t'))
        .count();
    if skip == value.len() && !value.is_empty() {
        // a value of only whitespace keeps all but the first blank
        skip = 1;
    }
    Field {
        name: line[..name_end].to_vec(),
        value: value[skip..].to_vec(),
    }
}
