//! LIST with RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE and RFC 5819 LIST-STATUS (pure):
//! the command line parser (imap-codec parses only the RFC 3501 form) and pattern matching.

use super::names;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListCommand {
    pub reference: Vec<u8>,
    pub patterns: Vec<Vec<u8>>,
    /// Selection: only subscribed mailboxes (RFC 5258 §3.1).
    pub subscribed: bool,
    /// Selection: only mailboxes with a special use (RFC 6154 §3).
    pub special_use: bool,
    /// RECURSIVEMATCH: an unsubscribed mailbox with subscribed descendants is listed too,
    /// with CHILDINFO (RFC 5258 §3.5).
    pub recursive: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    /// RETURN (STATUS (...)) items, upper case.
    pub return_status: Option<Vec<String>>,
    /// LSUB rather than LIST.
    pub lsub: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Word(Vec<u8>),
}

/// The tag of a command line.
pub fn tag(line: &[u8]) -> String {
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(line.len());
    String::from_utf8_lossy(&line[..end]).into_owned()
}

/// Parses "tag LIST [(opts)] ref pattern(s) [RETURN (opts)]\r\n".
pub fn parse(line: &[u8]) -> Result<ListCommand, String> {
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or("line must end with CRLF")?;
    let mut tokens = tokenize(body)?.into_iter().peekable();
    let _tag = tokens.next();
    match tokens.next() {
        Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"LIST") => {}
        _ => return Err("not a LIST command".into()),
    }
    let mut command = ListCommand::default();
    if tokens.peek() == Some(&Token::Open) {
        tokens.next();
        loop {
            match tokens.next() {
                Some(Token::Close) => break,
                Some(Token::Word(w)) => match w.to_ascii_uppercase().as_slice() {
                    b"SUBSCRIBED" => command.subscribed = true,
                    b"SPECIAL-USE" => command.special_use = true,
                    b"RECURSIVEMATCH" => command.recursive = true,
                    b"REMOTE" => {}
                    other => {
                        return Err(format!(
                            "unknown selection option {}",
                            String::from_utf8_lossy(other)
                        ))
                    }
                },
                _ => return Err("unterminated selection options".into()),
            }
        }
        // RFC 5258 §3: RECURSIVEMATCH alone is a syntax error.
        if command.recursive && !command.subscribed {
            return Err("RECURSIVEMATCH needs another selection option".into());
        }
    }
    command.reference = match tokens.next() {
        Some(Token::Word(w)) => w,
        _ => return Err("missing reference".into()),
    };
    match tokens.next() {
        Some(Token::Word(w)) => command.patterns.push(w),
        Some(Token::Open) => loop {
            match tokens.next() {
                Some(Token::Word(w)) => command.patterns.push(w),
                Some(Token::Close) if !command.patterns.is_empty() => break,
                _ => return Err("bad pattern list".into()),
            }
        },
        _ => return Err("missing mailbox pattern".into()),
    }
    match tokens.next() {
        None => {}
        Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"RETURN") => {
            if tokens.next() != Some(Token::Open) {
                return Err("RETURN needs a list".into());
            }
            loop {
                match tokens.next() {
                    Some(Token::Close) => break,
                    Some(Token::Word(w)) => match w.to_ascii_uppercase().as_slice() {
                        b"SUBSCRIBED" => command.return_subscribed = true,
                        b"CHILDREN" => command.return_children = true,
                        b"SPECIAL-USE" => command.return_special_use = true,
                        b"STATUS" => {
                            if tokens.next() != Some(Token::Open) {
                                return Err("STATUS needs a list".into());
                            }
                            let mut items = Vec::new();
                            loop {
                                match tokens.next() {
                                    Some(Token::Close) => break,
                                    Some(Token::Word(w)) => {
                                        let item = String::from_utf8_lossy(&w).to_ascii_uppercase();
                                        // Refused rather than left out of the answer (review).
                                        if !super::mailbox::STATUS_ITEMS.contains(&item.as_str()) {
                                            return Err(format!("unknown status item {item}"));
                                        }
                                        items.push(item)
                                    }
                                    _ => return Err("unterminated STATUS list".into()),
                                }
                            }
                            if items.is_empty() {
                                return Err("empty STATUS list".into());
                            }
                            command.return_status = Some(items);
                        }
                        other => {
                            return Err(format!(
                                "unknown return option {}",
                                String::from_utf8_lossy(other)
                            ))
                        }
                    },
                    _ => return Err("unterminated return options".into()),
                }
            }
        }
        _ => return Err("unexpected text after the pattern".into()),
    }
    if tokens.next().is_some() {
        return Err("unexpected text at the end".into());
    }
    Ok(command)
}

fn tokenize(body: &[u8]) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b' ' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    match body.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            value.push(*body.get(i + 1).ok_or("bad escape")?);
                            i += 2;
                        }
                        Some(&b) => {
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                tokens.push(Token::Word(value));
            }
            b'{' => {
                // A literal (RFC 3501 §4.3, RFC 7888): "{n}" or "{n+}", CRLF, n bytes.
                let close = body[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or("unterminated literal announcement")?;
                let digits = &body[i + 1..i + close];
                let digits = digits.strip_suffix(b"+").unwrap_or(digits);
                let size: usize = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse().ok())
                    .ok_or("bad literal announcement")?;
                let start = i + close + 1;
                if body.get(start..start + 2) != Some(b"\r\n") {
                    return Err("literal announcement must end the line".into());
                }
                let data = body
                    .get(start + 2..start + 2 + size)
                    .ok_or("literal shorter than announced")?;
                tokens.push(Token::Word(data.to_vec()));
                i = start + 2 + size;
            }
            _ => {
                let start = i;
                while i < body.len() && !matches!(body[i], b' ' | b'(' | b')' | b'"') {
                    i += 1;
                }
                tokens.push(Token::Word(body[start..i].to_vec()));
            }
        }
    }
    Ok(tokens)
}

/// RFC 3501 §6.3.8: the reference and the pattern, joined, with wildcards; "*" matches
/// anything, "%" anything but the hierarchy delimiter. Patterns are in modified UTF-7 and
/// are matched against the names as the client sees them.
pub fn matches(reference: &[u8], pattern: &[u8], name: &str) -> bool {
    let mut full = reference.to_vec();
    full.extend_from_slice(pattern);
    let wire = names::encode(name);
    // INBOX (and the INBOX level of its children) matches case-insensitively, also against
    // a pattern that spells part of it: `in*` (review: it matched nothing).
    let inbox = if name == "INBOX" || name.starts_with("INBOX/") {
        5
    } else {
        0
    };
    glob(&full, wire.as_bytes(), inbox)
}

/// The wildcard match, in time linear in the pattern times the name: `reach[j]` says that the
/// pattern read so far matches the name's first `j` bytes. (Backtracking took time
/// exponential in the number of wildcards: `LIST "" "*****...x"` held a worker thread for
/// good.)
/// The first `folded` bytes of the name match ASCII case-insensitively.
fn glob(pattern: &[u8], name: &[u8], folded: usize) -> bool {
    // Each byte that is no wildcard matches one byte of the name.
    if pattern.iter().filter(|&&b| b != b'*' && b != b'%').count() > name.len() {
        return false;
    }
    // A run of wildcards is one: "*" if it holds one, else "%".
    let mut runs = Vec::with_capacity(pattern.len());
    for &b in pattern {
        match (runs.last_mut(), b) {
            (Some(last @ (b'*' | b'%')), b'*' | b'%') => {
                if b == b'*' {
                    *last = b'*';
                }
            }
            _ => runs.push(b),
        }
    }
    let n = name.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    let mut next = vec![false; n + 1];
    for &p in &runs {
        match p {
            b'*' | b'%' => {
                // Any run of the name after a point reached; "%" no run that holds "/".
                let mut on = false;
                for j in 0..=n {
                    on |= reach[j];
                    next[j] = on;
                    if p == b'%' && j < n && name[j] == b'/' {
                        on = false;
                    }
                }
            }
            c => {
                next[0] = false;
                for j in 0..n {
                    let same = name[j] == c || (j < folded && name[j].eq_ignore_ascii_case(&c));
                    next[j + 1] = reach[j] && same;
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.iter().any(|&r| r) {
            return false;
        }
    }
    reach[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_extended_forms() {
        let c = parse(b"a1 LIST (SPECIAL-USE) \"\" \"*\"\r\n").unwrap();
        assert!(c.special_use);
        assert_eq!(c.patterns, [b"*".to_vec()]);
        let c = parse(b"a2 LIST \"\" (INBOX Sent/%) RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))\r\n")
            .unwrap();
        assert_eq!(c.patterns, [b"INBOX".to_vec(), b"Sent/%".to_vec()]);
        assert!(c.return_subscribed && c.return_children);
        assert_eq!(
            c.return_status,
            Some(vec!["MESSAGES".into(), "UNSEEN".into()])
        );
        let c = parse(b"a3 list \"\" %\r\n").unwrap();
        assert_eq!(c.patterns, [b"%".to_vec()]);
        assert!(parse(b"a4 LIST (RECURSIVEMATCH) \"\" *\r\n").is_err());
        assert!(parse(b"a5 LIST \"\" * RETURN (BOGUS)\r\n").is_err());
        assert!(parse(b"a6 LIST \"\"\r\n").is_err());
    }

    #[test]
    fn parses_literals() {
        let c =
            parse(b"a1 LIST (SUBSCRIBED) {0}\r\n {6+}\r\nA (b)* RETURN (CHILDREN)\r\n").unwrap();
        assert!(c.subscribed && c.return_children);
        assert_eq!(c.reference, b"");
        assert_eq!(c.patterns, [b"A (b)*".to_vec()]);
        assert!(parse(b"a2 LIST \"\" {9}\r\nshort\r\n").is_err());
        assert!(parse(b"a3 LIST \"\" {x}\r\nx\r\n").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(matches(b"", b"*", "Work/Reports"));
        assert!(!matches(b"", b"%", "Work/Reports"));
        assert!(matches(b"", b"%", "Work"));
        assert!(matches(b"Work/", b"%", "Work/Reports"));
        assert!(matches(b"", b"inbox", "INBOX"));
        assert!(matches(b"", b"in*", "INBOX"));
        assert!(matches(b"", b"In%", "INBOX"));
        assert!(matches(b"", b"inbox/%", "INBOX/kid"));
        assert!(!matches(b"", b"inbox/KID", "INBOX/kid"));
        assert!(!matches(b"", b"in*", "Inbound"));
        assert!(matches(b"", b"Entw&APw-rfe", "Entw\u{fc}rfe"));
        assert!(!matches(b"", b"Sent", "Sent/2024"));
        assert!(matches(b"", b"S%/%4", "Sent/2024"));
        assert!(!matches(b"", b"S%4", "Sent/2024"));
        assert!(matches(b"", b"*/*", "a/b/c"));
        assert!(matches(b"", b"%/%/%", "a/b/c"));
        assert!(!matches(b"", b"%/%", "a/b/c"));
        assert!(matches(b"", b"a*b*c", "aXbYc"));
        assert!(!matches(b"", b"a*b*c", "aXbY"));
        assert!(matches(b"", b"", ""));
        assert!(matches(b"", b"%", ""));
        // Many wildcards cost no more than a few.
        let stars = format!("{}x", "*".repeat(5000));
        let many_names = (0..50).map(|i| format!("Folder{i}/Sub/{}", "y".repeat(200)));
        for name in many_names {
            assert!(!matches(b"", stars.as_bytes(), &name));
        }
        assert!(matches(b"", b"%*%", "a/b"));
        assert!(!matches(b"", b"%%%", "a/b"));
    }
}
