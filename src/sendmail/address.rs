//! Addresses in an address list as sendmail callers write them (RFC 5322 §3.4, leniently, the
//! way Postfix's tok822 parser reads them): `root`, `root (Cron Daemon)`, `Bob <bob@x>`,
//! `"Doe, John" <j@x>`, `team: a@x, b@x;`. Used for the recipients `-t` finds, for the ones
//! on the command line, and to qualify bare local names in the header (`root` becomes
//! `root@domain`, as Postfix's cleanup does for local submissions).

/// One address of a list: the addr-spec as written, with comments and folding dropped, and
/// where it ends in the text (where `@domain` goes for a bare local name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub address: String,
    pub end: usize,
}

/// The addresses of an address list, in order. Display names, comments and group names are
/// not addresses; an empty group (`undisclosed-recipients:;`) has none.
pub fn scan(text: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut entry = Entry::default();
    let mut in_group = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let end = quoted_end(text, i);
                entry.after_angle(text, &mut found);
                entry.word(&text[i..end], end);
                i = end;
            }
            b'(' => i = comment_end(text, i),
            // A domain literal (`user@[2001:db8::1]`): its colons are no group.
            b'[' => {
                let end = text[i..]
                    .iter()
                    .position(|&b| b == b']')
                    .map_or(text.len(), |p| i + p + 1);
                entry.after_angle(text, &mut found);
                entry.word(&text[i..end], end);
                i = end;
            }
            b'<' => {
                // A second angle-addr in one entry (`<a@x> <b@y>`, `A <a@x> B <b@y>`) starts
                // another, as Postfix reads it: it replaced the first, which was lost.
                if entry.angle.is_some() {
                    entry.finish(text, &mut found);
                }
                let close = angle_end(text, i);
                entry.angle = Some((i + 1, close));
                i = (close + 1).min(text.len());
            }
            b',' => {
                entry.finish(text, &mut found);
                i += 1;
            }
            b':' if entry.angle.is_none() && !in_group => {
                // A group's name is no address.
                entry = Entry::default();
                in_group = true;
                i += 1;
            }
            // The end of a group, or outside one a separator as ',' is (Outlook's lists,
            // `a@x; b@y`, which Postfix reads as two addresses too).
            b';' => {
                entry.finish(text, &mut found);
                in_group = false;
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                entry.blank = true;
                i += 1;
            }
            _ => {
                // At least this byte (a ':' inside a group), then up to the next special; a
                // quoted-pair (`\,`) is its character, no special (RFC 5322 §3.2.1).
                let start = i;
                let step = |at: usize| if text[at] == b'\\' { 2 } else { 1 };
                i += step(i);
                while i < text.len() && !b"\"(<[,:; \t\r\n".contains(&text[i]) {
                    i += step(i);
                }
                i = i.min(text.len());
                entry.after_angle(text, &mut found);
                entry.word(&text[start..i], i);
            }
        }
    }
    entry.finish(text, &mut found);
    found
}

/// An entry of the list being read: its words outside comments and angle brackets, and the
/// angle-addr if it has one.
#[derive(Default)]
struct Entry {
    plain: Vec<u8>,
    plain_end: usize,
    angle: Option<(usize, usize)>,
    /// Blanks since the last word.
    blank: bool,
}

impl Entry {
    /// A word after an angle-addr starts another entry (`<bob@x> carol@y` is two addresses,
    /// as Postfix reads it: carol was lost).
    fn after_angle(&mut self, text: &[u8], found: &mut Vec<Found>) {
        if self.angle.is_some() {
            self.finish(text, found);
        }
    }

    fn word(&mut self, word: &[u8], end: usize) {
        // Blanks around '@' and '.' are the obsolete CFWS of RFC 5322 §4.4, not a separator.
        let joins = |b: Option<&u8>| matches!(b, Some(b'@' | b'.'));
        if self.blank && !self.plain.is_empty() && !joins(self.plain.last()) && !joins(word.first())
        {
            self.plain.push(b' ');
        }
        self.plain.extend_from_slice(word);
        self.plain_end = end;
        self.blank = false;
    }

    fn finish(&mut self, text: &[u8], found: &mut Vec<Found>) {
        let entry = std::mem::take(self);
        let (address, end) = match entry.angle {
            Some((start, close)) => {
                // A '<' before it inside (`=?UTF-8?Q?a<b?= <bob@x>`, a display name's encoded
                // word): the address is what follows the last one, as Postfix reads it.
                let start = match last_open_angle(&text[start..close.min(text.len())]) {
                    Some(p) => start + p + 1,
                    None => start,
                };
                let inner = &text[start..close.min(text.len())];
                let trimmed_end = start
                    + inner
                        .iter()
                        .rposition(|b| !b.is_ascii_whitespace())
                        .map_or(0, |p| p + 1);
                // Blanks and comments are the folding (CFWS) around its parts and go; a quoted
                // string keeps its own: `<"john doe"@x>` is not johndoe's (review: the
                // blank was dropped, and the copy went to another mailbox).
                let mut spec = Vec::with_capacity(inner.len());
                let mut j = 0;
                while j < inner.len() {
                    match inner[j] {
                        b'"' => {
                            let end = quoted_end(inner, j).min(inner.len());
                            spec.extend_from_slice(&inner[j..end]);
                            j = end;
                        }
                        b'(' => j = comment_end(inner, j),
                        b if b.is_ascii_whitespace() => j += 1,
                        b => {
                            spec.push(b);
                            j += 1;
                        }
                    }
                }
                // An obsolete source route (`<@relay:bob@x>`, RFC 5322 §4.4) is dropped.
                let spec = match spec.iter().position(|&b| b == b':') {
                    Some(colon) if spec.first() == Some(&b'@') => spec[colon + 1..].to_vec(),
                    _ => spec,
                };
                (quoted_pairs_quoted(spec), trimmed_end)
            }
            None => (quoted_pairs_quoted(entry.plain), entry.plain_end),
        };
        if !address.is_empty() {
            found.push(Found {
                address: String::from_utf8_lossy(&address).into_owned(),
                end,
            });
        }
    }
}

/// The position of the last '<' outside quoted strings in `inner`, if any.
fn last_open_angle(inner: &[u8]) -> Option<usize> {
    let mut last = None;
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'"' => i = quoted_end(inner, i),
            b'<' => {
                last = Some(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    last
}

/// An address whose local part has quoted-pairs outside quotes (`bob\,x@example.org`) with
/// that local part written as the quoted string it stands for (`"bob,x"@example.org`), as
/// Postfix writes it; others as they are.
fn quoted_pairs_quoted(address: Vec<u8>) -> Vec<u8> {
    let Some(at) = address.iter().rposition(|&b| b == b'@') else {
        return address;
    };
    let local = &address[..at];
    if !local.contains(&b'\\') || local.contains(&b'"') {
        return address;
    }
    let mut out = vec![b'"'];
    let mut i = 0;
    while i < local.len() {
        let c = if local[i] == b'\\' && i + 1 < local.len() {
            i += 1;
            local[i]
        } else {
            local[i]
        };
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
        i += 1;
    }
    out.push(b'"');
    out.extend_from_slice(&address[at..]);
    out
}

/// The index just past the quoted string that starts at `start` (or the end of the text).
fn quoted_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    text.len()
}

/// The index just past the (nested) comment that starts at `start`.
fn comment_end(text: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.len()
}

/// The index of the '>' closing the angle-addr that starts at `start` (quoted strings inside
/// are skipped), or the end of the text.
fn angle_end(text: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        match text[i] {
            b'"' => i = quoted_end(text, i),
            b'>' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// The text with `@domain` after every bare local name (`root`, `root (Cron)`, `Cron
/// <root>`), as Postfix's cleanup qualifies the addresses of local submissions. None when
/// nothing changed.
pub fn qualified(text: &[u8], domain: &str) -> Option<Vec<u8>> {
    let mut out = text.to_vec();
    let mut changed = false;
    for f in scan(text).iter().rev() {
        if is_local_name(&f.address) {
            let at = format!("@{domain}");
            out.splice(f.end..f.end, at.into_bytes());
            changed = true;
        }
    }
    changed.then_some(out)
}

/// The addresses in what was found without angle brackets, for the recipients: `a@x b@y` (a
/// list joined with blanks, as shell scripts make them) is two, as Postfix reads it. Only
/// when every word has an '@': `Bob Smith` stays one (no address, refused), where Postfix
/// would take two local names, which sealpost would send on as `bob@` and `smith@` the
/// domain, to whoever has those mailboxes there. Blanks in a quoted string do not count.
pub fn words(address: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut quoted = false;
    let mut start = None;
    let mut escaped = false;
    for (i, c) in address.char_indices() {
        let blank = c.is_ascii_whitespace() && !quoted;
        match (blank, start) {
            (true, Some(s)) => {
                words.push(&address[s..i]);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
        if quoted && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == '"' && !escaped {
            quoted = !quoted;
        }
        escaped = false;
    }
    if let Some(s) = start {
        words.push(&address[s..]);
    }
    if words.len() > 1 && !words.iter().all(|w| w.contains('@')) {
        return vec![address];
    }
    words
}

/// Whether `text` is a group with no members (`undisclosed-recipients:;`): no address, and
/// nothing to report either.
pub fn is_empty_group(text: &str) -> bool {
    let text = text.trim();
    text.ends_with(';') && text.contains(':') && scan(text.as_bytes()).is_empty()
}

/// A local part alone: a dot-atom (RFC 5322 §3.2.3) without '@', such as `root`.
pub fn is_local_name(address: &str) -> bool {
    // An encoded word (`=?UTF-8?B?Qm9i?=`) is a display name written without an address.
    // `-f` after the recipients is an option out of place, no local name (Postfix refuses it:
    // allow_min_user = no); qualified, a copy went to `-f@` the domain (review).
    !address.is_empty()
        && !address.starts_with('-')
        && !address.starts_with("=?")
        && !address.starts_with('.')
        && !address.ends_with('.')
        && !address.contains("..")
        && address
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(text: &str) -> Vec<String> {
        scan(text.as_bytes())
            .into_iter()
            .map(|f| f.address)
            .collect()
    }

    #[test]
    fn what_callers_write() {
        assert_eq!(addresses("root"), ["root"]);
        assert_eq!(
            addresses("admin@example.org, ops"),
            ["admin@example.org", "ops"]
        );
        assert_eq!(addresses("root (Cron Daemon)"), ["root"]);
        // Inside the angle brackets: a quoted string keeps its blanks, a comment goes.
        assert_eq!(
            addresses("John <\"john doe\"@example.org>"),
            ["\"john doe\"@example.org"]
        );
        assert_eq!(
            addresses("John <john(c)@example.org>"),
            ["john@example.org"]
        );
        assert_eq!(addresses("<  bob @ example.org >"), ["bob@example.org"]);
        assert_eq!(
            addresses("Bob Smith <bob@example.org>"),
            ["bob@example.org"]
        );
        assert_eq!(
            addresses("\"Doe, John\" <j@example.org>, x@example.org"),
            ["j@example.org", "x@example.org"]
        );
        assert_eq!(
            addresses("team: a@example.org, b@example.org;, c@example.org"),
            ["a@example.org", "b@example.org", "c@example.org"]
        );
        assert_eq!(addresses("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(
            addresses("<@relay.example:bob@example.org>"),
            ["bob@example.org"]
        );
        assert_eq!(addresses("bob @ example . org"), ["bob@example.org"]);
        assert_eq!(addresses("\"b o\"@example.org"), ["\"b o\"@example.org"]);
        assert_eq!(
            addresses("a@example.org,\r\n\tb@example.org (B (nested))"),
            ["a@example.org", "b@example.org"]
        );
        // A display name without an address stays as it is here (see `words`).
        assert_eq!(addresses("John Smith"), ["John Smith"]);
        // Outside a group ';' separates, as ',' does.
        assert_eq!(
            addresses("a@example.org;b@example.org; ops"),
            ["a@example.org", "b@example.org", "ops"]
        );
        assert_eq!(
            words("a@example.org  b@example.org"),
            ["a@example.org", "b@example.org"]
        );
        assert_eq!(words("\"b o\"@example.org"), ["\"b o\"@example.org"]);
        assert_eq!(words("\"b\\\" o\"@x y@z"), ["\"b\\\" o\"@x", "y@z"]);
        assert_eq!(words("John Smith"), ["John Smith"]);
        assert_eq!(words("bob@x.example Smith"), ["bob@x.example Smith"]);
        assert!(is_empty_group("undisclosed-recipients:;"));
        assert!(is_empty_group(" team : ; "));
        assert!(!is_empty_group("team: a@x.example;"));
        assert!(!is_empty_group("a@x.example;"));
        assert_eq!(
            addresses("user@[2001:db8::1], b@example.org"),
            ["user@[2001:db8::1]", "b@example.org"]
        );
        assert!(!is_local_name("=?UTF-8?B?Qm9i?="));
        assert_eq!(addresses(""), Vec::<String>::new());
    }

    /// Lists Postfix reads in its own way (review: each lost or misdirected a recipient).
    #[test]
    fn what_postfix_makes_of_broken_lists() {
        // Two angle-addrs in one entry are two addresses: the first was lost.
        assert_eq!(
            addresses("<bob@example.org> <dave@example.net>"),
            ["bob@example.org", "dave@example.net"]
        );
        assert_eq!(
            addresses("Bob <bob@example.org> Dave <dave@example.net>"),
            ["bob@example.org", "dave@example.net"]
        );
        assert_eq!(
            addresses("bob@example.org <carol@example.org> <dave@example.net>"),
            ["carol@example.org", "dave@example.net"]
        );
        // A quoted-pair outside quotes is its character, in a local part that is then
        // quoted: not two addresses (the copy went to x@example.org).
        assert_eq!(addresses("bob\\,x@example.org"), ["\"bob,x\"@example.org"]);
        assert_eq!(
            addresses("Doe\\, John <bob@example.org>"),
            ["bob@example.org"]
        );
        // A word after an angle-addr is another address.
        assert_eq!(
            addresses("<bob@example.org> carol@example.org"),
            ["bob@example.org", "carol@example.org"]
        );
        assert_eq!(
            addresses("Bob <bob@example.org>carol@example.org, dave@example.net"),
            ["bob@example.org", "carol@example.org", "dave@example.net"]
        );
        assert_eq!(
            addresses("<bob@example.org> carol"),
            ["bob@example.org", "carol"]
        );
        assert_eq!(
            addresses("<bob\\,x@example.org>"),
            ["\"bob,x\"@example.org"]
        );
        // A '<' in an encoded word of the display name: the address is the last angle-addr.
        assert_eq!(
            addresses("=?UTF-8?Q?a<b?= <bob@example.org>"),
            ["bob@example.org"]
        );
        // An option after the recipients is no local name to qualify (Postfix refuses it).
        assert!(!is_local_name("-f"));
        assert!(!is_local_name("-t"));
    }

    #[test]
    fn bare_local_names_are_qualified_in_place() {
        let q = |t: &str| {
            qualified(t.as_bytes(), "host.example").map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(q(" root").as_deref(), Some(" root@host.example"));
        assert_eq!(
            q(" root (Cron Daemon)").as_deref(),
            Some(" root@host.example (Cron Daemon)")
        );
        assert_eq!(
            q(" Cron <root>, bob@example.org, ops").as_deref(),
            Some(" Cron <root@host.example>, bob@example.org, ops@host.example")
        );
        assert_eq!(q(" bob@example.org"), None);
        assert_eq!(q(" undisclosed-recipients:;"), None);
        assert_eq!(q(" John Smith"), None);
        assert_eq!(
            q(" root; ops").as_deref(),
            Some(" root@host.example; ops@host.example")
        );
    }
}
