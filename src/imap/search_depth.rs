//! SEARCH criteria nested deeper than imap-codec parses. Its parser stops at nine levels of
//! OR, NOT and parentheses (a guard for its own stack), and the command was answered BAD:
//! clients that OR one key per address or word (`OR OR OR ... FROM a FROM b ...`) failed
//! with ten of them (review). RFC 3501 sets no limit, and Dovecot takes thousands. Such a
//! command is read here and written again with the same meaning in fewer levels: a chain of
//! up to four ORs as a balanced tree, a longer one as `NOT (NOT a NOT b ...)` (RFC 3501 has
//! no n-ary OR; De Morgan's form is three levels for any number), NOT NOT dropped,
//! parentheses inside parentheses joined. imap-codec then parses the result as any other
//! command, and refuses what is still deeper than its nine levels; criteria deeper than
//! [`MAX_DEPTH`] once joined are not written again at all. The same rewriting turns a quoted
//! string with UTF-8 text, which imap-codec refuses, into a literal.

/// Most levels the criteria may keep once chains are joined (reading is iterative, and so is
/// joining; writing the result is recursive, a level a stack frame: 5,000 levels overflowed a
/// debug build's stack).
const MAX_DEPTH: usize = 256;

/// ORs of more keys than this are written in De Morgan's form, three levels for any number:
/// a balanced tree of 256 takes eight of imap-codec's nine, and left nothing for a NOT or a
/// list around the chain or inside it (review: BAD from 65 keys so placed).
const BALANCED_OR_KEYS: usize = 4;

/// `command` (a whole `[UID] SEARCH` command, literals inline, CRLF-terminated) written with
/// its criteria nested as little as their meaning allows; None when it is no SEARCH command or
/// cannot be read.
pub(super) fn rebalanced(command: &[u8]) -> Option<Vec<u8>> {
    let body = command.strip_suffix(b"\r\n")?;
    let mut tokens = tokenize(body)?;
    // Tag, [UID], SEARCH, [CHARSET name]: kept as they are.
    let mut head = 2;
    let word = |t: Option<&Token>, w: &[u8]| matches!(t, Some(Token::Atom(a)) if a.eq_ignore_ascii_case(w));
    if word(tokens.get(1), b"UID") {
        head = 3;
    }
    if !word(tokens.get(head - 1), b"SEARCH") {
        return None;
    }
    if word(tokens.get(head), b"CHARSET") {
        head += 2;
    }
    let keys = tokens.split_off(head.min(tokens.len()));
    let mut at = 0;
    let mut criteria = Vec::new();
    while at < keys.len() {
        criteria.push(key(&keys, &mut at)?);
    }
    if criteria.is_empty() || criteria.iter().any(|c| c.depth > MAX_DEPTH) {
        return None;
    }
    let mut out = Vec::with_capacity(command.len());
    for t in &tokens {
        t.write(&mut out);
        out.push(b' ');
    }
    let criteria = joined(criteria, false).key;
    let Key::All(list) = criteria else {
        write(&criteria, &mut out);
        out.extend_from_slice(b"\r\n");
        return Some(out);
    };
    for (i, k) in list.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        write(k, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    /// An atom, a quoted string or a literal, as written.
    Atom(Vec<u8>),
    Quoted(Vec<u8>),
    Literal(Vec<u8>),
}

impl Token {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Token::Open => out.push(b'('),
            Token::Close => out.push(b')'),
            // 8-bit text in a quoted string (RFC 3501 §9 allows only 7-bit there) as mutt,
            // neomutt and imapfilter send a non-ASCII search word: written as the literal it
            // should have been, as Dovecot takes it (review: BAD, and the search failed).
            // Only UTF-8: other 8-bit text stays BAD, as with Dovecot.
            Token::Quoted(b) if !b.is_ascii() && std::str::from_utf8(b).is_ok() => {
                let inner = &b[1..b.len() - 1];
                let mut text = Vec::with_capacity(inner.len());
                let mut bytes = inner.iter();
                while let Some(&c) = bytes.next() {
                    text.push(match c {
                        b'\\' => bytes.next().copied().unwrap_or(c),
                        c => c,
                    });
                }
                out.extend_from_slice(format!("{{{}}}\r\n", text.len()).as_bytes());
                out.extend_from_slice(&text);
            }
            Token::Atom(b) | Token::Quoted(b) | Token::Literal(b) => out.extend_from_slice(b),
        }
    }
}

/// The words of a command: atoms, quoted strings, literals (`{n}` or `{n+}`, CRLF, n bytes)
/// and parentheses, spaced as RFC 3501 §9 has them: one blank between words, none inside
/// parentheses next to them, none at either end. None otherwise, or when a quoted string or
/// literal is cut short: what imap-codec refused for another reason than depth stays refused
/// (review: `SEARCH FROM u1(SEEN)` and two blanks after UID were answered OK).
fn tokenize(text: &[u8]) -> Option<Vec<Token>> {
    #[derive(PartialEq)]
    enum Last {
        Start,
        Open,
        Word,
        Blank,
    }
    let mut last = Last::Start;
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let word_may_start = matches!(last, Last::Start | Last::Open | Last::Blank);
        match text[i] {
            b' ' => {
                if last != Last::Word {
                    return None;
                }
                last = Last::Blank;
                i += 1;
                continue;
            }
            b'(' if word_may_start => {
                tokens.push(Token::Open);
                i += 1;
                last = Last::Open;
                continue;
            }
            b')' if last == Last::Word => {
                tokens.push(Token::Close);
                i += 1;
            }
            _ if !word_may_start => return None,
            b'(' | b')' => return None,
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match text.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                tokens.push(Token::Quoted(text[start..i].to_vec()));
            }
            b'{' => {
                let start = i;
                let close = start + text[start..].iter().position(|&b| b == b'}')?;
                let digits = text[start + 1..close]
                    .strip_suffix(b"+")
                    .unwrap_or(&text[start + 1..close]);
                let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
                if text.get(close + 1..close + 3)? != b"\r\n" {
                    return None;
                }
                let end = close + 3 + n;
                text.get(close + 3..end)?;
                tokens.push(Token::Literal(text[start..end].to_vec()));
                i = end;
            }
            _ => {
                let start = i;
                while i < text.len() && !b" ()\"{".contains(&text[i]) {
                    i += 1;
                }
                tokens.push(Token::Atom(text[start..i].to_vec()));
            }
        }
        last = Last::Word;
    }
    (last == Last::Word).then_some(tokens)
}

/// A search key as read: a key with its arguments, NOT, OR (of any number) or all of a list.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Leaf(Vec<Token>),
    Not(Box<Key>),
    Any(Vec<Key>),
    All(Vec<Key>),
}

/// The number of arguments after a key name (RFC 3501 §6.4.4, RFC 7162 MODSEQ aside); a
/// sequence set or an unknown name has none (imap-codec judges the result).
fn arguments(name: &[u8]) -> usize {
    const ONE: [&[u8]; 20] = [
        b"BCC",
        b"BEFORE",
        b"BODY",
        b"CC",
        b"FROM",
        b"KEYWORD",
        b"LARGER",
        b"ON",
        b"SENTBEFORE",
        b"SENTON",
        b"SENTSINCE",
        b"SINCE",
        b"SMALLER",
        b"SUBJECT",
        b"TEXT",
        b"TO",
        b"UID",
        b"UNKEYWORD",
        b"OLDER",
        b"YOUNGER",
    ];
    if name.eq_ignore_ascii_case(b"HEADER") {
        2
    } else if ONE.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        1
    } else {
        0
    }
}

/// A key with its depth: 1 for a leaf, one more than its deepest part otherwise.
#[derive(Debug)]
struct Node {
    key: Key,
    depth: usize,
}

/// A key started and waiting for its parts while reading.
enum Open {
    List(Vec<Node>),
    Not,
    Or(Option<Node>),
}

/// Reads one search key from `at`, without recursion (a stack of the keys started), joined as
/// it completes: NOT NOT dropped, an OR of ORs and a list in a list made one.
fn key(tokens: &[Token], at: &mut usize) -> Option<Node> {
    let mut started: Vec<Open> = Vec::new();
    loop {
        let token = tokens.get(*at)?.clone();
        *at += 1;
        let mut done = match token {
            Token::Open => {
                started.push(Open::List(Vec::new()));
                None
            }
            Token::Close => match started.pop() {
                Some(Open::List(items)) if !items.is_empty() => Some(joined(items, false)),
                _ => return None,
            },
            Token::Atom(name) if name.eq_ignore_ascii_case(b"NOT") => {
                started.push(Open::Not);
                None
            }
            Token::Atom(name) if name.eq_ignore_ascii_case(b"OR") => {
                started.push(Open::Or(None));
                None
            }
            Token::Atom(name) => Some(leaf(name, tokens, at)?),
            Token::Quoted(_) | Token::Literal(_) => return None,
        };
        while let Some(node) = done.take() {
            match started.last_mut() {
                None => return Some(node),
                Some(Open::List(items)) => items.push(node),
                Some(Open::Or(first @ None)) => *first = Some(node),
                Some(Open::Or(first)) => {
                    let a = first.take().expect("the first of two");
                    started.pop();
                    done = Some(joined(vec![a, node], true));
                }
                Some(Open::Not) => {
                    started.pop();
                    done = Some(match node.key {
                        Key::Not(inner) => Node {
                            key: *inner,
                            depth: node.depth - 1,
                        },
                        key => Node {
                            key: Key::Not(Box::new(key)),
                            depth: node.depth + 1,
                        },
                    });
                }
            }
        }
    }
}

/// A key name and its arguments.
fn leaf(name: Vec<u8>, tokens: &[Token], at: &mut usize) -> Option<Node> {
    // MODSEQ [entry-name entry-type-req] mod-sequence (RFC 7162 §3.1.5).
    let n = if name.eq_ignore_ascii_case(b"MODSEQ") {
        if matches!(tokens.get(*at)?, Token::Quoted(_) | Token::Literal(_)) {
            3
        } else {
            1
        }
    } else {
        arguments(&name)
    };
    let args = tokens.get(*at..*at + n)?;
    if args.iter().any(|t| matches!(t, Token::Open | Token::Close)) {
        return None;
    }
    let mut leaf = vec![Token::Atom(name)];
    leaf.extend(args.iter().cloned());
    *at += n;
    Some(Node {
        key: Key::Leaf(leaf),
        depth: 1,
    })
}

/// The items of an OR (`any`) or a list, with those of the same kind spliced in; one item
/// alone is itself. The longest spliced list, when long, is the one added to (OR and AND do
/// not depend on order): a chain of n ORs is joined in n steps, not n² (review: 100,000 keys
/// took a minute, and held up every other connection).
fn joined(items: Vec<Node>, any: bool) -> Node {
    let same_kind = |k: &Key| matches!((k, any), (Key::Any(_), true) | (Key::All(_), false));
    let longest = items
        .iter()
        .enumerate()
        .filter(|(_, n)| same_kind(&n.key))
        .max_by_key(|(_, n)| match &n.key {
            Key::Any(v) | Key::All(v) => v.len(),
            _ => 0,
        })
        .map(|(i, _)| i)
        // Short lists keep the order they were written in.
        .filter(|&i| matches!(&items[i].key, Key::Any(v) | Key::All(v) if v.len() > 64));
    let mut flat = Vec::new();
    let mut depth = 0;
    let mut items = items;
    if let Some(i) = longest {
        let base = items.swap_remove(i);
        depth = base.depth - 1;
        if let Key::Any(v) | Key::All(v) = base.key {
            flat = v;
        }
    }
    for item in items {
        match (item.key, any) {
            (Key::Any(more), true) | (Key::All(more), false) => {
                flat.extend(more);
                depth = depth.max(item.depth - 1);
            }
            (key, _) => {
                flat.push(key);
                depth = depth.max(item.depth);
            }
        }
    }
    if flat.len() == 1 {
        return Node {
            key: flat.pop().expect("one"),
            depth,
        };
    }
    Node {
        key: if any { Key::Any(flat) } else { Key::All(flat) },
        depth: depth + 1,
    }
}

fn write(key: &Key, out: &mut Vec<u8>) {
    match key {
        Key::Leaf(tokens) => {
            for (i, t) in tokens.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                t.write(out);
            }
        }
        Key::Not(inner) => {
            out.extend_from_slice(b"NOT ");
            write(inner, out);
        }
        Key::All(items) => {
            out.push(b'(');
            for (i, k) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write(k, out);
            }
            out.push(b')');
        }
        Key::Any(items) => write_any(items, out),
    }
}

/// `OR a b` over any number of keys, as a balanced tree; over more than
/// [`BALANCED_OR_KEYS`], `NOT (NOT a NOT b ...)`.
fn write_any(items: &[Key], out: &mut Vec<u8>) {
    if let [one] = items {
        return write(one, out);
    }
    if items.len() > BALANCED_OR_KEYS {
        out.extend_from_slice(b"NOT (");
        for (i, k) in items.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            match k {
                Key::Not(inner) => write(inner, out),
                other => {
                    out.extend_from_slice(b"NOT ");
                    write(other, out);
                }
            }
        }
        out.push(b')');
        return;
    }
    let (left, right) = items.split_at(items.len() / 2);
    out.extend_from_slice(b"OR ");
    write_any(left, out);
    out.push(b' ');
    write_any(right, out);
}

#[cfg(test)]
mod tests {
    use super::rebalanced;

    fn again(command: &str) -> Option<String> {
        rebalanced(command.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn chains_become_balanced_trees_with_the_same_meaning() {
        let ors = (0..10).map(|_| "OR ").collect::<String>();
        let keys = (0..11)
            .map(|i| format!("FROM u{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let line = format!("a1 UID SEARCH CHARSET UTF-8 {ors}{keys}\r\n");
        assert_eq!(
            again(&line).unwrap(),
            "a1 UID SEARCH CHARSET UTF-8 NOT (NOT FROM u0 NOT FROM u1 NOT FROM u2 NOT FROM u3 \
             NOT FROM u4 NOT FROM u5 NOT FROM u6 NOT FROM u7 NOT FROM u8 NOT FROM u9 NOT FROM u10)\r\n"
        );
        assert_eq!(
            again("t SEARCH NOT NOT NOT (((SEEN))) (DELETED (1:5 HEADER X \"a b\"))\r\n").unwrap(),
            "t SEARCH NOT SEEN DELETED 1:5 HEADER X \"a b\"\r\n"
        );
        assert_eq!(
            again("t SEARCH OR (FROM a TO b) OR SUBJECT {3+}\r\nxyz MODSEQ \"/flags/\\\\Seen\" all 5\r\n")
                .unwrap(),
            "t SEARCH OR (FROM a TO b) OR SUBJECT {3+}\r\nxyz MODSEQ \"/flags/\\\\Seen\" all 5\r\n"
        );
        // A quoted string with UTF-8 text becomes a literal, its escapes undone; other 8-bit
        // text stays as it was (BAD).
        assert_eq!(
            again("t SEARCH CHARSET UTF-8 OR BODY \"K\u{f6}ln\" SUBJECT \"a\\\"\u{e9}\\\\\"\r\n")
                .unwrap(),
            "t SEARCH CHARSET UTF-8 OR BODY {5}\r\nK\u{f6}ln SUBJECT {5}\r\na\"\u{e9}\\\r\n"
        );
        assert_eq!(
            rebalanced(b"t SEARCH BODY \"caf\xe9\"\r\n").unwrap(),
            b"t SEARCH BODY \"caf\xe9\"\r\n"
        );
        // Not a SEARCH, or cut short: left as it was (and BAD).
        assert_eq!(again("t FETCH 1 (FLAGS)\r\n"), None);
        assert_eq!(again("t SEARCH OR FROM a\r\n"), None);
        assert_eq!(again("t SEARCH (FROM a\r\n"), None);
        assert_eq!(again("t SEARCH SUBJECT {5}\r\nab\r\n"), None);
        // Spaced otherwise than RFC 3501 has it: refused as imap-codec refused it (review).
        assert_eq!(again("t SEARCH FROM u1(SEEN)\r\n"), None);
        assert_eq!(again("t UID  SEARCH SEEN\r\n"), None);
        assert_eq!(again("t SEARCH ( SEEN)\r\n"), None);
        assert_eq!(again("t SEARCH SEEN \r\n"), None);
        assert_eq!(again("t SEARCH ()\r\n"), None);
    }

    /// Chains of any length are read without recursion, in time linear in their length; past
    /// four keys an OR is written in De Morgan's form, three levels deep, also under a NOT or
    /// around a list (review: BAD from 65 keys so placed); what stays deeper than 256 levels
    /// once joined is refused.
    #[test]
    fn long_chains_keep_their_meaning_in_few_levels() {
        let chain = |n: usize| {
            let keys: Vec<String> = (0..n).map(|i| format!("UID {i}")).collect();
            format!("{}{}", "OR ".repeat(n - 1), keys.join(" "))
        };
        let out = again(&format!("t SEARCH NOT {}\r\n", chain(129))).unwrap();
        assert!(
            out.starts_with("t SEARCH NOT NOT (NOT UID 0 NOT UID 1 "),
            "{out}"
        );
        let out = again(&format!("t SEARCH NOT ({} SEEN)\r\n", chain(64))).unwrap();
        assert!(out.starts_with("t SEARCH NOT (NOT (NOT UID 0 "), "{out}");
        // Right-deep (OR a OR b ...): 100,000 keys, joined in linear time.
        let keys: Vec<String> = (0..100_000).map(|i| format!("OR UID {i}")).collect();
        let line = format!("t SEARCH {} SEEN\r\n", keys.join(" "));
        let out = again(&line).unwrap();
        assert_eq!(out.matches("NOT UID ").count(), 100_000);
        let keys: Vec<String> = (0..1000).map(|i| format!("FROM u{i}")).collect();
        let line = format!("t SEARCH {}{}\r\n", "OR ".repeat(999), keys.join(" "));
        let out = again(&line).unwrap();
        let negated: Vec<String> = keys.iter().map(|k| format!("NOT {k}")).collect();
        assert_eq!(out, format!("t SEARCH NOT ({})\r\n", negated.join(" ")));
        // Keys already negated lose the NOT instead of gaining a second one.
        let line = format!(
            "t SEARCH {}{} NOT SEEN\r\n",
            "OR ".repeat(999),
            keys[..999].join(" ")
        );
        let out = again(&line).unwrap();
        assert!(out.ends_with(" NOT FROM u998 SEEN)\r\n"), "{out}");
        assert_eq!(
            again(&format!("t SEARCH {}SEEN\r\n", "NOT ".repeat(5000))).unwrap(),
            "t SEARCH SEEN\r\n"
        );
        assert_eq!(
            again(&format!("t SEARCH {}DELETED\r\n", "NOT ".repeat(5001))).unwrap(),
            "t SEARCH NOT DELETED\r\n"
        );
        // A list and a NOT in turn cannot be joined: 5,000 levels stay refused.
        let deep = format!(
            "t SEARCH {}SEEN{}\r\n",
            "NOT (SEEN ".repeat(5000),
            ")".repeat(5000)
        );
        assert_eq!(again(&deep), None);
    }
}
