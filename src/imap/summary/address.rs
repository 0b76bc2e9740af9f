//! RFC 5322 §3.4 address lists over the raw header value, giving the RFC 3501 §7.4.2
//! ENVELOPE address structures. Display names stay as written (encoded words are not
//! decoded); groups become a start marker `(NIL NIL "name" NIL)` and an end marker
//! `(NIL NIL NIL NIL)`. Recovery from broken input follows Dovecot 2.3's `message-address`
//! (missing parts are filled with `MISSING_MAILBOX` / `MISSING_DOMAIN` / `SYNTAX_ERROR`).

use super::lexer::{Lexer, Lx, NUL_REPLACEMENT};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Address {
    pub name: Option<Vec<u8>>,
    pub route: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub domain: Option<Vec<u8>>,
}

struct Parser<'a> {
    lx: Lexer<'a>,
    out: Vec<Address>,
    addr: Address,
    invalid: bool,
}

/// Parses an address-list header value (From, To, Cc, ...). Never fails.
pub(crate) fn parse_address_list(value: &[u8]) -> Vec<Address> {
    let mut lx = Lexer::new(value);
    lx.last_comment = Some(Vec::new());
    lx.nul_replacement = Some(NUL_REPLACEMENT);
    let mut p = Parser {
        lx,
        out: Vec::new(),
        addr: Address::default(),
        invalid: false,
    };
    if p.lx.skip_lwsp() == Lx::More {
        p.address_list();
    }
    p.out
}

impl Parser<'_> {
    fn push(&mut self) {
        self.out.push(std::mem::take(&mut self.addr));
        self.invalid = false;
    }

    fn push_fixed(&mut self) {
        if self.addr.mailbox.is_none() {
            self.addr.mailbox = Some(b"MISSING_MAILBOX".to_vec());
        }
        if self.addr.domain.as_ref().is_none_or(|d| d.is_empty()) {
            self.addr.domain = Some(b"MISSING_DOMAIN".to_vec());
        }
        self.push();
    }

    fn local_part(&mut self) -> Lx {
        let mut s = Vec::new();
        let ret = if self.lx.peek() == b'"' {
            self.lx.parse_quoted_string(&mut s)
        } else {
            self.lx.parse_dot_atom(&mut s)
        };
        if ret == Lx::Bad {
            return Lx::Bad;
        }
        self.addr.mailbox = Some(s);
        ret
    }

    fn domain(&mut self) -> Lx {
        let mut s = Vec::new();
        let ret = self.lx.parse_domain(&mut s);
        if ret == Lx::Bad {
            return Lx::Bad;
        }
        self.addr.domain = Some(s);
        ret
    }

    /// RFC 5322 §4.4 obs-route: `@a,@b:` kept as `@a,@b`.
    fn domain_list(&mut self) -> Lx {
        let mut s = Vec::new();
        loop {
            if self.lx.at_end() {
                return Lx::End;
            }
            if self.lx.peek() != b'@' {
                break;
            }
            if !s.is_empty() {
                s.push(b',');
            }
            s.push(b'@');
            let ret = self.lx.parse_domain(&mut s);
            if ret != Lx::More {
                return ret;
            }
            while self.lx.skip_lwsp() == Lx::More && self.lx.peek() == b',' {
                self.lx.pos += 1;
            }
        }
        self.addr.route = Some(s);
        Lx::More
    }

    fn angle_addr(&mut self) -> Lx {
        self.lx.pos += 1; // '<'
        if self.lx.skip_lwsp() != Lx::More {
            return Lx::Bad;
        }
        if self.lx.peek() == b'@' {
            if self.domain_list() == Lx::More && self.lx.peek() == b':' {
                self.lx.pos += 1;
            } else {
                self.addr.route = Some(b"INVALID_ROUTE".to_vec());
                if self.lx.at_end() {
                    return Lx::Bad;
                }
            }
            if self.lx.skip_lwsp() != Lx::More {
                return Lx::Bad;
            }
        }
        if self.lx.peek() != b'>' {
            if self.local_part() != Lx::More {
                return Lx::Bad;
            }
            if self.lx.peek() == b'@' && self.domain() != Lx::More {
                return Lx::Bad;
            }
        }
        if self.lx.peek() != b'>' {
            return Lx::Bad;
        }
        self.lx.pos += 1;
        self.lx.skip_lwsp()
    }

    fn name_addr(&mut self) -> Lx {
        let mut name = Vec::new();
        if self.lx.parse_phrase(&mut name) != Lx::More || self.lx.peek() != b'<' {
            return Lx::Bad;
        }
        // "<address>" without a display name
        self.addr.name = if name.is_empty() { None } else { Some(name) };
        if self.angle_addr() == Lx::Bad {
            self.addr.domain = Some(b"SYNTAX_ERROR".to_vec());
            self.invalid = true;
        }
        if self.lx.at_end() {
            Lx::End
        } else {
            Lx::More
        }
    }

    fn addr_spec(&mut self) -> Lx {
        if let Some(c) = self.lx.last_comment.as_mut() {
            c.clear();
        }
        let quoted = self.lx.peek() == b'"';
        let mut ret = self.local_part();
        if ret != Lx::More {
            self.invalid = true;
        }
        let mut ret2 = None;
        if ret != Lx::End && !self.lx.at_end() && self.lx.peek() == b'@' {
            let r = self.domain();
            ret2 = Some(r);
            if r != Lx::More {
                ret = r;
            }
        }
        let comment = self.lx.last_comment.clone().unwrap_or_default();
        if !comment.is_empty() {
            self.addr.name = Some(comment);
        } else if ret2.is_none() {
            // a lone "user": a mailbox, unless more words follow (then a display name)
            let mut s = self.addr.mailbox.clone().unwrap_or_default();
            s.push(b' ');
            let before = s.len();
            self.lx.parse_phrase(&mut s);
            if s.len() != before {
                self.addr.mailbox = None;
                self.addr.name = Some(s);
            } else if !quoted {
                self.addr.domain = Some(Vec::new());
            }
            self.invalid = true;
            ret = Lx::Bad;
        }
        ret
    }

    fn mailbox(&mut self) -> Lx {
        let start = self.lx.pos;
        let mut ret = self.name_addr();
        if ret == Lx::Bad {
            self.lx.pos = start;
            self.addr = Address::default();
            self.invalid = false;
            ret = self.addr_spec();
            if self.invalid
                && self.addr.name.is_none()
                && self.addr.mailbox.is_some()
                && self.addr.domain.is_none()
            {
                self.addr.name = self.addr.mailbox.take();
            }
        }
        self.push_fixed();
        ret
    }

    /// RFC 5322 §3.4 group: `display-name ":" [mailbox-list] ";"`.
    fn group(&mut self) -> Option<Lx> {
        let mut name = Vec::new();
        if self.lx.parse_phrase(&mut name) != Lx::More || self.lx.peek() != b':' {
            return None;
        }
        self.lx.pos += 1;
        let mut ret = self.lx.skip_lwsp();
        self.addr.mailbox = Some(name);
        self.push();
        if ret == Lx::More && self.lx.peek() != b';' {
            loop {
                self.mailbox();
                if self.lx.at_end() || self.lx.peek() != b',' {
                    break;
                }
                self.lx.pos += 1;
                if self.lx.skip_lwsp() != Lx::More {
                    ret = Lx::Bad;
                    break;
                }
            }
        }
        if ret != Lx::Bad {
            if self.lx.at_end() || self.lx.peek() != b';' {
                ret = Lx::Bad;
            } else {
                self.lx.pos += 1;
                ret = self.lx.skip_lwsp();
            }
        }
        self.push(); // end-of-group marker
        Some(if ret == Lx::End { Lx::End } else { Lx::More })
    }

    fn address(&mut self) -> Lx {
        let start = self.lx.pos;
        if let Some(ret) = self.group() {
            return ret;
        }
        self.lx.pos = start;
        self.addr = Address::default();
        self.mailbox()
    }

    fn address_list(&mut self) {
        loop {
            if self.address() == Lx::End {
                break;
            }
            if self.lx.at_end() || self.lx.peek() != b',' {
                break;
            }
            self.lx.pos += 1;
            match self.lx.skip_lwsp() {
                Lx::More => {}
                Lx::End => break,
                Lx::Bad => {
                    // ends with some garbage
                    self.push_fixed();
                    break;
                }
            }
        }
    }
}
