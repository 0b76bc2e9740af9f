//! RFC 5322 §3.2 / RFC 2045 §5.1 lexical tokens over raw header bytes.
//!
//! The readers follow Dovecot 2.3's lib-mail `rfc822-parser` token by token (which bytes make
//! an atom, how comments and quoted pairs are unfolded, how a broken parameter list is
//! skipped), because sealpost's ENVELOPE and BODYSTRUCTURE values must be byte-identical to
//! Dovecot's. Every reader returns a [`Lx`]: `More` when input remains after the token and
//! the whitespace/comments following it, `End` when the input is exhausted, `Bad` on a syntax
//! error (the caller decides how to recover).

/// Outcome of one lexer step (Dovecot's 1 / 0 / -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lx {
    More,
    End,
    Bad,
}

/// Character classes: 1 = atext and MIME token char, 2 = alphanumeric or 8-bit (both),
/// 4 = atext but an RFC 2045 tspecial (`/`, `=`, `?`). 0 = neither.
fn class(c: u8) -> u8 {
    match c {
        b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | 0x80..=0xff => 2,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'^' | b'_' | b'`'
        | b'{' | b'|' | b'}' | b'~' => 1,
        b'/' | b'=' | b'?' => 4,
        _ => 0,
    }
}

/// RFC 5322 §3.2.3 atext (8-bit bytes count as atext, as in Dovecot).
pub(crate) fn is_atext(c: u8) -> bool {
    class(c) != 0
}

/// RFC 2045 §5.1 token character (atext without tspecials).
fn is_token(c: u8) -> bool {
    class(c) & 3 != 0
}

/// U+FFFD, what Dovecot puts in place of a NUL inside address tokens.
pub(crate) const NUL_REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

pub(crate) struct Lexer<'a> {
    data: &'a [u8],
    pub(crate) pos: usize,
    /// Text of the most recent comment, when the caller wants it (address display names).
    pub(crate) last_comment: Option<Vec<u8>>,
    /// Replacement for NUL bytes inside quoted strings and comments (address parsing only).
    pub(crate) nul_replacement: Option<&'static [u8]>,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Lexer {
            data,
            pos: 0,
            last_comment: None,
            nul_replacement: None,
        }
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The current byte; 0 past the end (Dovecot reads the NUL terminator there).
    pub(crate) fn peek(&self) -> u8 {
        self.data.get(self.pos).copied().unwrap_or(0)
    }

    fn more_or_end(&self) -> Lx {
        if self.at_end() {
            Lx::End
        } else {
            Lx::More
        }
    }

    /// RFC 5322 §3.2.2 comment, nested; remembers its unfolded, unescaped text.
    fn skip_comment(&mut self) -> Lx {
        let mut level = 1;
        if let Some(c) = self.last_comment.as_mut() {
            c.clear();
        }
        self.pos += 1;
        let mut start = self.pos;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                0 => {
                    if let (Some(c), Some(rep)) = (self.last_comment.as_mut(), self.nul_replacement)
                    {
                        c.extend_from_slice(&self.data[start..self.pos]);
                        c.extend_from_slice(rep);
                        start = self.pos + 1;
                    }
                }
                b'(' => level += 1,
                b')' => {
                    level -= 1;
                    if level == 0 {
                        if let Some(c) = self.last_comment.as_mut() {
                            c.extend_from_slice(&self.data[start..self.pos]);
                        }
                        self.pos += 1;
                        return self.more_or_end();
                    }
                }
                b'\n' => {
                    if let Some(c) = self.last_comment.as_mut() {
                        let mut end = self.pos;
                        if end > start && self.data[end - 1] == b'\r' {
                            end -= 1;
                        }
                        c.extend_from_slice(&self.data[start..end]);
                        start = self.pos + 1;
                    }
                }
                b'\\' => {
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        return Lx::Bad;
                    }
                    if matches!(self.data[self.pos], b'\r' | b'\n' | 0) {
                        self.pos -= 1;
                    } else {
                        if let Some(c) = self.last_comment.as_mut() {
                            c.extend_from_slice(&self.data[start..self.pos - 1]);
                        }
                        start = self.pos;
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Lx::Bad
    }

    /// Skips folding whitespace and comments (RFC 5322 §3.2.2 CFWS).
    pub(crate) fn skip_lwsp(&mut self) -> Lx {
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'(' => {
                    if self.skip_comment() == Lx::Bad {
                        return Lx::Bad;
                    }
                }
                _ => break,
            }
        }
        self.more_or_end()
    }

    /// RFC 5322 §3.2.3 atom.
    pub(crate) fn parse_atom(&mut self, out: &mut Vec<u8>) -> Lx {
        if self.at_end() || !is_atext(self.peek()) {
            return Lx::Bad;
        }
        let start = self.pos;
        while self.pos < self.data.len() && is_atext(self.data[self.pos]) {
            self.pos += 1;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        if self.at_end() {
            Lx::End
        } else {
            self.skip_lwsp()
        }
    }

    /// RFC 5322 §3.2.3 dot-atom (CFWS allowed around the dots, as obs-local-part permits).
    pub(crate) fn parse_dot_atom(&mut self, out: &mut Vec<u8>) -> Lx {
        if self.at_end() || !is_atext(self.peek()) {
            return Lx::Bad;
        }
        let mut start = self.pos;
        self.pos += 1;
        while self.pos < self.data.len() {
            if is_atext(self.data[self.pos]) {
                self.pos += 1;
                continue;
            }
            if start == self.pos {
                return Lx::Bad;
            }
            out.extend_from_slice(&self.data[start..self.pos]);
            let ret = self.skip_lwsp();
            if ret != Lx::More {
                return ret;
            }
            if self.peek() != b'.' {
                return Lx::More;
            }
            self.pos += 1;
            out.push(b'.');
            if self.skip_lwsp() != Lx::More {
                return Lx::Bad;
            }
            start = self.pos;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        Lx::End
    }

    /// RFC 2045 §5.1 token (dots allowed, as Dovecot does).
    pub(crate) fn parse_mime_token(&mut self, out: &mut Vec<u8>) -> Lx {
        let start = self.pos;
        while self.pos < self.data.len() {
            let c = self.data[self.pos];
            if is_token(c) || c == b'.' {
                self.pos += 1;
                continue;
            }
            out.extend_from_slice(&self.data[start..self.pos]);
            return self.skip_lwsp();
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        Lx::End
    }

    /// RFC 5322 §3.2.4 quoted-string: unescaped, line folding removed.
    pub(crate) fn parse_quoted_string(&mut self, out: &mut Vec<u8>) -> Lx {
        self.pos += 1;
        let mut start = self.pos;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                0 => {
                    if let Some(rep) = self.nul_replacement {
                        out.extend_from_slice(&self.data[start..self.pos]);
                        out.extend_from_slice(rep);
                        start = self.pos + 1;
                    }
                }
                b'"' => {
                    out.extend_from_slice(&self.data[start..self.pos]);
                    self.pos += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let mut end = self.pos;
                    if end > start && self.data[end - 1] == b'\r' {
                        end -= 1;
                    }
                    out.extend_from_slice(&self.data[start..end]);
                    start = self.pos + 1;
                }
                b'\\' => {
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        return Lx::Bad;
                    }
                    if matches!(self.data[self.pos], b'\r' | b'\n' | 0) {
                        self.pos -= 1;
                    } else {
                        out.extend_from_slice(&self.data[start..self.pos - 1]);
                        start = self.pos;
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Lx::Bad
    }

    fn parse_atom_or_dot(&mut self, out: &mut Vec<u8>) -> Lx {
        let start = self.pos;
        while self.pos < self.data.len() {
            let c = self.data[self.pos];
            if is_atext(c) || c == b'.' {
                self.pos += 1;
                continue;
            }
            out.extend_from_slice(&self.data[start..self.pos]);
            return self.skip_lwsp();
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        Lx::End
    }

    /// RFC 5322 §3.2.5 phrase (obs-phrase dots allowed); words joined by one space.
    pub(crate) fn parse_phrase(&mut self, out: &mut Vec<u8>) -> Lx {
        if self.at_end() {
            return Lx::End;
        }
        if self.peek() == b'.' {
            return Lx::Bad;
        }
        loop {
            let ret = if self.peek() == b'"' {
                self.parse_quoted_string(out)
            } else {
                self.parse_atom_or_dot(out)
            };
            if ret != Lx::More {
                return ret;
            }
            let c = self.peek();
            if !is_atext(c) && c != b'"' && c != b'.' {
                break;
            }
            out.push(b' ');
        }
        self.skip_lwsp()
    }

    fn parse_domain_literal(&mut self, out: &mut Vec<u8>) -> Lx {
        let mut start = self.pos;
        self.pos += 1;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                0 => {
                    if let Some(rep) = self.nul_replacement {
                        out.extend_from_slice(&self.data[start..self.pos]);
                        out.extend_from_slice(rep);
                        start = self.pos + 1;
                    }
                }
                b'[' => return Lx::Bad,
                b']' => {
                    out.extend_from_slice(&self.data[start..=self.pos]);
                    self.pos += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let mut end = self.pos;
                    if end > start && self.data[end - 1] == b'\r' {
                        end -= 1;
                    }
                    out.extend_from_slice(&self.data[start..end]);
                    start = self.pos + 1;
                }
                b'\\' => {
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        return Lx::Bad;
                    }
                    if matches!(self.data[self.pos], b'\r' | b'\n' | 0) {
                        out.extend_from_slice(&self.data[start..self.pos]);
                        start = self.pos;
                        self.pos -= 1;
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Lx::Bad
    }

    /// RFC 5322 §3.4.1 `"@" domain` (the caller stands on the `@`).
    pub(crate) fn parse_domain(&mut self, out: &mut Vec<u8>) -> Lx {
        self.pos += 1;
        if self.skip_lwsp() != Lx::More {
            return Lx::Bad;
        }
        if self.peek() == b'[' {
            self.parse_domain_literal(out)
        } else {
            self.parse_dot_atom(out)
        }
    }

    /// RFC 2045 §5.1 `type "/" subtype`. On a syntax error `out` keeps what was read
    /// (Dovecot 2.3 renders `Content-Type: text` as `"text" ""`).
    pub(crate) fn parse_content_type(&mut self, out: &mut Vec<u8>) -> Lx {
        if self.skip_lwsp() != Lx::More {
            return Lx::Bad;
        }
        if self.parse_mime_token(out) != Lx::More || out.is_empty() {
            return Lx::Bad;
        }
        if self.peek() != b'/' {
            return Lx::Bad;
        }
        self.pos += 1;
        if self.skip_lwsp() != Lx::More {
            return Lx::Bad;
        }
        out.push(b'/');
        self.parse_mime_token(out)
    }

    /// One RFC 2045 §5.1 `";" attribute "=" value`. `Lx::End` when no parameters remain.
    fn parse_content_param(&mut self) -> (Lx, Vec<u8>, Vec<u8>) {
        let (mut key, mut value) = (Vec::new(), Vec::new());
        if self.at_end() {
            return (Lx::End, key, value);
        }
        if self.peek() != b';' {
            return (Lx::Bad, key, value);
        }
        self.pos += 1;
        if self.skip_lwsp() != Lx::More {
            return (Lx::Bad, key, value);
        }
        if self.parse_mime_token(&mut key) != Lx::More || self.peek() != b'=' {
            return (Lx::Bad, key, value);
        }
        self.pos += 1;
        let mut ret = self.skip_lwsp();
        if ret != Lx::More {
            // broken or missing value: keep the key with an empty value
        } else if self.peek() == b'"' {
            ret = self.parse_quoted_string(&mut value);
        } else if self.peek() == b'=' {
            // workaround Dovecot applies for unquoted encoded words: name==?utf-8?b?...?=
            while !self.at_end() && !matches!(self.peek(), b';' | b' ' | b'\t' | b'\r' | b'\n') {
                value.push(self.peek());
                self.pos += 1;
            }
        } else {
            ret = self.parse_mime_token(&mut value);
        }
        (if ret == Lx::Bad { Lx::Bad } else { Lx::More }, key, value)
    }

    /// The parameter list after a Content-Type / Content-Disposition value, with RFC 2231
    /// §3 continuations (`name*0*`, `name*1`) merged into one `name*` parameter, as
    /// Dovecot's `rfc2231_parse` does (values are NOT percent-decoded: IMAP shows them raw).
    pub(crate) fn parse_params(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        struct Ext {
            key: Vec<u8>,
            value: Vec<u8>,
            idx: u32,
            extended: bool,
        }
        let mut result = Vec::new();
        let mut exts: Vec<Ext> = Vec::new();
        loop {
            let (ret, key, value) = self.parse_content_param();
            match ret {
                Lx::End => break,
                Lx::Bad => {
                    // Dovecot skips one byte and tries again, which drops everything up to
                    // the next `;` that is not itself the byte skipped.
                    if self.at_end() {
                        break;
                    }
                    self.pos += 1;
                    continue;
                }
                Lx::More => {}
            }
            let Some(star) = key.iter().position(|&c| c == b'*') else {
                result.push((key, value));
                continue;
            };
            let mut p = star;
            let mut idx = 0u32;
            if p + 1 < key.len() {
                p += 1;
                while p < key.len() && key[p].is_ascii_digit() {
                    idx = idx.wrapping_mul(10).wrapping_add(u32::from(key[p] - b'0'));
                    p += 1;
                }
            }
            let extended = p < key.len() && key[p] == b'*';
            if extended {
                p += 1;
            }
            if p < key.len() {
                result.push((key, value));
            } else {
                exts.push(Ext {
                    key: key[..star].to_vec(),
                    value,
                    idx,
                    extended,
                });
            }
        }
        if exts.is_empty() {
            return result;
        }
        // stable sort by (key bytes, index), as Dovecot's array_sort with strcmp
        exts.sort_by(|a, b| a.key.cmp(&b.key).then(a.idx.cmp(&b.idx)));
        let mut i = 0;
        while i < exts.len() {
            let mut j = i;
            let mut ok = true;
            let mut have_extended = false;
            let mut next_idx = 0;
            while j < exts.len() && exts[i].key.eq_ignore_ascii_case(&exts[j].key) {
                if exts[j].idx != next_idx {
                    ok = false;
                }
                have_extended |= exts[j].extended;
                next_idx += 1;
                j += 1;
            }
            if !ok {
                for e in &exts[i..j] {
                    let mut key = e.key.clone();
                    key.extend_from_slice(format!("*{}", e.idx).as_bytes());
                    if e.extended {
                        key.push(b'*');
                    }
                    result.push((key, e.value.clone()));
                }
            } else {
                let mut value = Vec::new();
                if !exts[i].extended && have_extended {
                    value.extend_from_slice(b"''");
                }
                for e in &exts[i..j] {
                    if !e.extended && have_extended {
                        for &c in &e.value {
                            if c == b'%' {
                                value.extend_from_slice(b"%25");
                            } else {
                                value.push(c);
                            }
                        }
                    } else {
                        value.extend_from_slice(&e.value);
                    }
                }
                let mut key = exts[i].key.clone();
                if have_extended {
                    key.push(b'*');
                }
                result.push((key, value));
            }
            i = j;
        }
        result
    }
}
