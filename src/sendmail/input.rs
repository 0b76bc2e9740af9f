//! The message a caller hands to sendmail, made into one sealpost can queue: read with the
//! historic end-of-input rule, line ends made CRLF, checked by the same parser the rewrite
//! core uses, and completed with the fields RFC 5322 §3.6 requires (From, Date) and the
//! Message-ID threading wants. Pure apart from the reader.

use std::collections::HashSet;
use std::io::BufRead;

use crate::message::parse::starts_with_field;
use crate::message::{MessageError, ParsedMessage};

/// Input that cannot be queued: exit 65 (EX_DATAERR) with this reason.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("message larger than the limit of {limit} bytes ([queue] max_message_bytes)")]
    TooLarge { limit: usize },

    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("no recipients: name them on the command line or use -t with To/Cc/Bcc fields")]
    NoRecipients,
    #[error("recipient {0:?} is not an email address")]
    BadRecipient(String),
    #[error("cannot read the message: {0}")]
    Read(#[from] std::io::Error),
}

/// Reads one message. With `dot_ends_message` (no -i/-oi) a line holding only "." ends it, as
/// sendmail has always done. Stops with [`InputError::TooLarge`] past `limit` bytes.
pub fn read_message(
    reader: &mut impl BufRead,
    dot_ends_message: bool,
    limit: usize,
) -> Result<Vec<u8>, InputError> {
    let mut raw = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        // No line is read past the limit: `cat /dev/zero | sendmail` (one endless line) would
        // otherwise grow without bound before the size check (review).
        // Room for a whole ".\r\n" past the limit: with room for one byte only, the "." of
        // ".tail" read as a lone dot at the end, and a message at the limit lost its rest
        // (exit 0; review).
        let room = (limit - raw.len()) as u64 + 3;
        if std::io::Read::take(&mut *reader, room).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if dot_ends_message && matches!(line.as_slice(), b".\n" | b".\r\n" | b".") {
            break;
        }
        if raw.len() + line.len() > limit {
            return Err(InputError::TooLarge { limit });
        }
        raw.extend_from_slice(&line);
    }
    Ok(raw)
}

/// Every line end made CRLF (a bare LF is how Unix programs write mail; SMTP wants CRLF,
/// RFC 5321 §2.3.8), the message checked, and the missing origination fields added.
pub struct Completion<'a> {
    /// The envelope sender, used for a missing From ("" means the local user's address).
    pub from_address: &'a str,
    /// -F or $NAME: the display name of a missing From.
    pub full_name: Option<&'a str>,
    /// Seconds since the epoch for a missing Date.
    pub now: i64,
    /// The right-hand side of a missing Message-ID, and its unique left part.
    pub domain: &'a str,
    pub unique: &'a str,
}

pub fn complete(raw: &[u8], fill: &Completion<'_>) -> Result<Vec<u8>, InputError> {
    // "\r\r\n" ends one line. A CR that ends no line in the header is refused, as the core
    // refuses it: made a line break, it would end the header early (a Bcc then in the body).
    let ended = crate::message::encoding::line_ends(raw);
    if header_has_lone_cr(&ended) {
        return Err(MessageError::NotAMessage(
            "a header field holds a CR that does not end a line (RFC 5322 §2.2)",
        )
        .into());
    }
    let mut crlf = crate::message::encoding::crlf(&ended);
    // Leading mbox postmark lines ("From sender date", also ">From ") are dropped, as
    // Postfix's sendmail drops them; what follows may be a header or all body.
    while crate::message::parse::is_postmark(&crlf) || crlf.starts_with(b">From ") {
        let end = line_end(&crlf, 0);
        crlf.drain(..end);
    }
    if crlf.contains(&0) {
        return Err(
            MessageError::NotAMessage("it holds a NUL byte (RFC 5322 §2.3: text only)").into(),
        );
    }
    // Text without a header section ("echo hi | sendmail root") is all body, as Postfix
    // takes it: the origination fields added below become its header. So is no text at all
    // (`sendmail root </dev/null`, which Postfix queues too).
    let headerless = crlf.trim_ascii().is_empty() || !starts_with_field(&crlf);
    let crlf = if headerless {
        [&b"\r\n"[..], &crlf].concat()
    } else {
        crate::message::parse::header_ended(crlf, false)
    };
    let parsed = if headerless {
        None
    } else {
        Some(ParsedMessage::parse(crlf.clone())?)
    };
    if parsed
        .as_ref()
        .is_some_and(|p| p.long_line_in_sealed_part())
    {
        return Err(MessageError::NotAMessage(crate::message::parse::LONG_SEALED_LINE).into());
    }
    let has = |name: &str| {
        parsed
            .as_ref()
            .is_some_and(|p| p.fields().iter().any(|f| f.is(name)))
    };
    let mut added = String::new();
    if !has("From") {
        added.push_str(&format!(
            "From: {}\r\n",
            mailbox(fill.full_name, fill.from_address)
        ));
    }
    if !has("Date") {
        added.push_str(&format!(
            "Date: {}\r\n",
            mail_parser::DateTime::from_timestamp(fill.now).to_rfc822()
        ));
    }
    if !has("Message-ID") {
        added.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            fill.unique, fill.domain
        ));
    }
    let qualified = parsed
        .as_ref()
        .and_then(|p| qualified_header(p, fill.domain));
    let raw = match (&qualified, &parsed) {
        (Some(q), _) => &q[..],
        (None, Some(p)) => p.raw(),
        (None, None) => &crlf[..],
    };
    let mut out = Vec::with_capacity(added.len() + raw.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(raw);
    if headerless {
        // Checked as the message it now is.
        ParsedMessage::parse(out.clone())?;
    }
    Ok(out)
}

/// Whether a line of the header section (as [`header_ended`] finds its end: postmark lines
/// skipped; text that does not start with a field has none) holds a CR that ends no line. A
/// CR in the body is a line end, as Postfix takes it (review: progress output piped into
/// `sendmail`, "10%\r20%\r100%", was refused with exit 65 as a broken header). `ended` has
/// CRLF line ends but for such CRs.
fn header_has_lone_cr(ended: &[u8]) -> bool {
    let mut at = 0;
    let mut seen_field = false;
    while at < ended.len() {
        let end = line_end(ended, at);
        let line = &ended[at..end];
        let postmark = !seen_field
            && (crate::message::parse::is_postmark(line) || line.starts_with(b">From "));
        if !postmark {
            let text = line.strip_suffix(b"\r\n").unwrap_or(line);
            let continuation = seen_field && matches!(line.first(), Some(b' ' | b'\t'));
            if line.starts_with(b"\r\n") {
                return false;
            }
            if !(continuation || starts_with_field(line)) {
                // The line that ends the header: its text after a CR may not look like a
                // field either ("\rBcc: x"), which a reader taking the CR for a line end
                // would read as one.
                return seen_field && text.split(|b| *b == b'\r').skip(1).any(starts_with_field);
            }
            seen_field = true;
            if crate::message::encoding::has_lone_cr(text) {
                return true;
            }
        }
        at = end;
    }
    false
}

/// The index just past the line that starts at `at` (its CRLF included).
fn line_end(text: &[u8], at: usize) -> usize {
    text[at..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(text.len(), |p| at + p + 2)
}

/// Header fields that hold addresses (RFC 5322 §3.6.2, §3.6.3, §3.6.6).
const ADDRESS_FIELDS: [&str; 11] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
];

/// The message with `@domain` after each bare local name in its address fields (`To: root`,
/// `From: root (Cron Daemon)`), as Postfix's cleanup writes local submissions: sent on as it
/// was, such an address is no address to anyone else. None when nothing changed.
fn qualified_header(parsed: &ParsedMessage, domain: &str) -> Option<Vec<u8>> {
    let mut changed = false;
    let mut out = Vec::with_capacity(parsed.raw().len() + 64);
    for field in parsed.fields() {
        let value = field.raw_value();
        match ADDRESS_FIELDS
            .iter()
            .any(|n| field.is(n))
            .then(|| super::address::qualified(value, domain))
            .flatten()
        {
            Some(new_value) => {
                let name_and_colon = field.raw.len() - value.len() - 2;
                out.extend_from_slice(&field.raw[..name_and_colon]);
                out.extend_from_slice(&new_value);
                out.extend_from_slice(b"\r\n");
                changed = true;
            }
            None => out.extend_from_slice(&field.raw),
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(parsed.body());
    changed.then_some(out)
}

/// `Name <addr>` with the name quoted (RFC 5322 §3.2.4) or, when not ASCII, an RFC 2047
/// encoded word.
fn mailbox(name: Option<&str>, address: &str) -> String {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    match name {
        None => address.to_string(),
        Some(n) if n.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            let quoted = n.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{quoted}\" <{address}>")
        }
        // Encoded words on folded lines of at most 76 characters (RFC 2047 §2), the first
        // after "From:".
        Some(n) => {
            let name = n.replace(['\r', '\n'], " ");
            let words = crate::message::mime::encoded_words(name.as_bytes(), "From:".len());
            let words = String::from_utf8_lossy(words.trim_ascii_start()).into_owned();
            // The first line has "From: " before the words.
            let last = match words.rsplit_once("\r\n") {
                Some((_, last)) => last.len(),
                None => "From: ".len() + words.len(),
            };
            let fold = if last + address.len() + 3 > 76 {
                "\r\n"
            } else {
                ""
            };
            format!("{words}{fold} <{address}>")
        }
    }
}

/// The recipients -t finds: Resent-To/Cc/Bcc when the message has any Resent- recipient
/// field (a resent message, RFC 5322 §3.6.6), else To/Cc/Bcc; every address of those lists,
/// a bare local name too (`To: root`, for the caller to qualify). Lower-cased duplicates are
/// dropped; order is kept.
pub fn header_recipients(raw: &[u8]) -> Vec<String> {
    let Ok(message) = ParsedMessage::parse(raw.to_vec()) else {
        return Vec::new();
    };
    let resent = ["Resent-To", "Resent-Cc", "Resent-Bcc"];
    let plain = ["To", "Cc", "Bcc"];
    let names = if message
        .fields()
        .iter()
        .any(|f| resent.iter().any(|n| f.is(n)))
    {
        resent
    } else {
        plain
    };
    let mut out = UniqueAddresses::default();
    for name in names {
        for field in message.fields().iter().filter(|f| f.is(name)) {
            for found in super::address::scan(field.raw_value()) {
                for word in super::address::words(&found.address) {
                    out.push(word);
                }
            }
        }
    }
    out.into_vec()
}

/// A bare local name ("root", as cron's MAILTO often is) gets `@domain`, as Postfix's
/// append_at_myorigin does; a domain's root dot (`bob@example.org.`, an absolute DNS name) is
/// dropped; anything else is kept as it is.
pub fn qualify(address: &str, domain: &str) -> String {
    // Read as Postfix reads a header's address: a '>' left over with no '<' before it
    // (`To: a@example.org>`) goes, and a quoted local part alone (`To: "root"`) is that name
    // (review: exit 65 for both, where Postfix delivers).
    let address = match address.strip_suffix('>') {
        Some(a) if !a.is_empty() && !a.contains('<') => a,
        _ => address,
    };
    let address = address
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .filter(|a| super::address::is_local_name(a))
        .unwrap_or(address);
    if super::address::is_local_name(address) {
        return format!("{address}@{domain}");
    }
    without_root_dot(address).to_string()
}

/// `address` without its domain's one root dot (`bob@example.org.`, an absolute DNS name),
/// as Postfix drops it.
pub fn without_root_dot(address: &str) -> &str {
    match address.rsplit_once('@') {
        Some((local, host)) => {
            &address[..local.len() + 1 + crate::rewrite::policy::without_root_dot(host).len()]
        }
        None => address,
    }
}

/// Addresses in the order first given, each once (compared ignoring ASCII case). A set of
/// the lower-cased ones makes each addition O(1): `-t` on a header of 18,000 Bcc addresses
/// took 23 s comparing each with all before it.
#[derive(Debug, Default)]
pub struct UniqueAddresses {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl UniqueAddresses {
    /// Adds `address` unless an equal one (ignoring case) is there already.
    pub fn push(&mut self, address: &str) {
        if self.seen.insert(address.to_ascii_lowercase()) {
            self.list.push(address.to_string());
        }
    }

    pub fn into_vec(self) -> Vec<String> {
        self.list
    }
}

/// Checks the recipients are addresses (RFC 5321 path syntax, via lettre's strict parser):
/// returns the recipients to queue and the ones that are not addresses. As Postfix's sendmail
/// does, a message with at least one address goes to it, and the queue reports the others to
/// the sender (553 5.1.3), rather than the whole message being refused over one bad word; a
/// script that does not look at the exit code would lose it. A recipient with a blank or a
/// control character (a name without an address, `Cc: "Smith, Bob"`) is queued with each such
/// character written `\x{HEX}`: no line of the spool may hold a line break, and SMTP has no
/// way to carry a blank or a tab (RFC 5321 §4.1.2: no control character in a quoted string;
/// review: a raw tab went to the relay in RCPT TO), so it is never sent, only reported
/// (review: the whole message was refused with 65, where Postfix delivers to the others).
/// Refused (exit 65): no address at all.
pub fn check_recipients(recipients: Vec<String>) -> Result<(Vec<String>, Vec<String>), InputError> {
    if recipients.is_empty() {
        return Err(InputError::NoRecipients);
    }
    let queued: Vec<String> = recipients.into_iter().map(storable).collect();
    // One that starts with "-" is an option out of place, not an address (Postfix's
    // allow_min_user = no: 5.1.3), also with an "@" in it (review: -falice@example.org after
    // the recipients got a copy).
    let (good, bad): (Vec<&String>, Vec<&String>) = queued
        .iter()
        .partition(|r| !r.starts_with('-') && r.parse::<lettre::Address>().is_ok());
    if good.is_empty() {
        return Err(InputError::BadRecipient(bad[0].clone()));
    }
    let bad = bad.into_iter().cloned().collect();
    Ok((queued, bad))
}

/// A recipient as the spool keeps it: one with a blank or a control character with each of
/// those and each `"` written `\x{HEX}` (a backslash outside quotes: no address then, as a
/// quoted local part would make `"a\x{9}b"@x` one), the empty one `<>`.
fn storable(recipient: String) -> String {
    if recipient.is_empty() {
        return "<>".into();
    }
    if !recipient
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return recipient;
    }
    recipient
        .chars()
        .map(|c| match c {
            c if c.is_whitespace() || c.is_control() || c == '"' => {
                format!("\\x{{{:X}}}", c as u32)
            }
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill() -> Completion<'static> {
        Completion {
            from_address: "cron@host.example",
            full_name: Some("Cron Daemon"),
            now: 1_700_000_000,
            domain: "host.example",
            unique: "q1",
        }
    }

    #[test]
    fn dot_rule_and_limit() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        let all = read_message(&mut &input[..], false, 1000).unwrap();
        assert_eq!(all, input);
        let cut = read_message(&mut &input[..], true, 1000).unwrap();
        assert_eq!(cut, b"Subject: x\n\nline\n");
        // ".." is not the end (the caller did not dot-stuff: sendmail input is not SMTP).
        let cut = read_message(&mut &b"S: x\n\n..\n"[..], true, 1000).unwrap();
        assert_eq!(cut, b"S: x\n\n..\n");
        assert!(matches!(
            read_message(&mut &input[..], false, 10),
            Err(InputError::TooLarge { limit: 10 })
        ));
        // A message exactly at the limit, then a line starting with ".": too large, not cut
        // at that "." (review: exit 0 without the rest).
        let at_limit = b"Subject: x\n\n123\n.tail\nmore\n";
        assert!(matches!(
            read_message(&mut &at_limit[..], true, 16),
            Err(InputError::TooLarge { limit: 16 })
        ));
        assert_eq!(
            read_message(&mut &b"Subject: x\n\n123\n.\n"[..], true, 16).unwrap(),
            b"Subject: x\n\n123\n"
        );
        // One endless line stops at the limit (review: it was read whole first, 308 MB of
        // memory for 300 MB of input, and `cat /dev/zero` without end).
        let mut endless = std::io::BufReader::new(std::io::repeat(b'a'));
        assert!(matches!(
            read_message(&mut endless, false, 100_000),
            Err(InputError::TooLarge { limit: 100_000 })
        ));
    }

    #[test]
    fn completes_lf_message() {
        let out = complete(b"To: bob@example.org\nSubject: hi\n\nbody\n", &fill()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("From: \"Cron Daemon\" <cron@host.example>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <q1@host.example>\r\nTo: bob@example.org\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    /// `echo hi | sendmail root`: no header at all, so all of it is body (as Postfix takes
    /// it); binary data is still refused.
    #[test]
    fn headerless_text_is_a_body() {
        let out =
            String::from_utf8(complete(b"hi there\nsecond line\n", &fill()).unwrap()).unwrap();
        let (header, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            header.starts_with("From: ") && header.contains("\r\nDate: "),
            "{out}"
        );
        assert!(header.contains("\r\nMessage-ID: <"), "{out}");
        assert_eq!(body, "hi there\r\nsecond line\r\n");
        let out =
            String::from_utf8(complete(b"\nafter an empty line\n", &fill()).unwrap()).unwrap();
        assert!(
            out.ends_with("\r\n\r\n\r\nafter an empty line\r\n"),
            "{out:?}"
        );
        assert!(complete(b"\x00\x01garbage\n", &fill()).is_err());
        // The obsolete "Name : value" is a header field, not body.
        assert!(
            complete(b"Subject : hi\nTo: x@example.org\n\nbody\n", &fill())
                .unwrap()
                .ends_with(b"Subject : hi\r\nTo: x@example.org\r\n\r\nbody\r\n")
        );
        assert!(complete(b"Subject: x\n\nbody\n", &fill())
            .unwrap()
            .ends_with(b"Subject: x\r\n\r\nbody\r\n"));
    }

    /// A CR that ends no line is refused only in the header, where it could split a field
    /// ("Subject: a\rBcc: x"); in the body, progress output among it, it is a line end
    /// (review: headerless text or a body after a header without a blank line got exit 65).
    #[test]
    fn a_bare_cr_is_refused_in_the_header_only() {
        for body in [
            &b"downloading 10%\r20%\r100%\ndone\n"[..],
            b"Subject: Alert\nDisk full\r90%\n",
            b"Subject: Alert\n\nDisk full\r90%\n",
            b"From someone Thu Jan  1 00:00:00 2026\nprogress 1\r2\n",
        ] {
            let out = complete(body, &fill()).unwrap_or_else(|e| panic!("{body:?}: {e}"));
            assert!(!crate::message::encoding::has_lone_cr(&out), "{out:?}");
        }
        for header in [
            &b"Subject: a\rBcc: x@example.org\n\nbody\n"[..],
            b"Subject: a\n b\rBcc: x@example.org\n\nbody\n",
            b"Subject: a\n\rBcc: x@example.org\n\nbody\n",
            b"Subject: a\ntext\rBcc: x@example.org\n",
        ] {
            assert!(complete(header, &fill()).is_err(), "{header:?}");
        }
    }

    #[test]
    fn keeps_present_fields() {
        let msg = b"From: a@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb\r\n";
        assert_eq!(complete(msg, &fill()).unwrap(), msg);
    }

    #[test]
    fn names_are_quoted_or_encoded() {
        assert_eq!(mailbox(Some("A \"B\""), "a@x"), "\"A \\\"B\\\"\" <a@x>");
        assert_eq!(mailbox(Some("Zoë"), "a@x"), "=?UTF-8?B?Wm/Dqw==?= <a@x>");
        // A long name: several encoded words of at most 75 characters, folded.
        let long = mailbox(Some(&"Zoë Ünïcødé ".repeat(8)), "a@x");
        let field = format!("From: {long}");
        assert!(field.split("\r\n").all(|l| l.len() <= 76), "{field}");
        let words = long.split_whitespace().filter(|w| w.starts_with("=?"));
        assert!(
            words.clone().count() > 1 && words.clone().all(|w| w.len() <= 75),
            "{long}"
        );
        let field = format!("{field}\r\n\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse(field.as_bytes())
            .unwrap();
        let from = parsed.from().and_then(|a| a.first()).unwrap();
        assert_eq!(from.name(), Some("Zoë Ünïcødé ".repeat(8).trim()));
        // A short name and a long address: the address on a line of its own.
        let field = format!(
            "From: {}",
            mailbox(Some("Zoë Ünïcødé"), "sender.name.here@example-mail.org")
        );
        assert!(field.split("\r\n").all(|l| l.len() <= 76), "{field}");
        assert_eq!(mailbox(None, "a@x"), "a@x");
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [&b"\x00\x01\x02binary\xff\xfe"[..], b"Subject: x\n\n\x00\n"] {
            assert!(complete(bad, &fill()).is_err(), "{bad:?}");
        }
        // A CR that ends no line in the header: made a line break, it would end the header.
        assert!(complete(b"X-A: a\rBcc: c@x.org\r\n\r\nbody\r\n", &fill()).is_err());
    }

    /// A client's "\r\r\n" ends one line: the header is whole, its Bcc a field (and gone
    /// from every copy), not body text.
    #[test]
    fn doubled_crs_end_one_line() {
        let msg = b"From: a@x.org\r\r\nBcc: c@x.org\r\r\nSubject: s\r\r\n\r\r\nbody\r\r\n";
        let out = String::from_utf8(complete(msg, &fill()).unwrap()).unwrap();
        let (header, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(header.contains("\r\nBcc: c@x.org\r\nSubject: s"), "{out:?}");
        assert_eq!(body, "body\r\n");
    }

    /// `sendmail root </dev/null` queues a message with only the added fields, as Postfix.
    #[test]
    fn no_text_is_an_empty_message() {
        for empty in [&b""[..], b"\n\n"] {
            let out = String::from_utf8(complete(empty, &fill()).unwrap()).unwrap();
            let (header, _) = out.split_once("\r\n\r\n").unwrap();
            assert!(
                header.starts_with("From: ") && header.contains("\r\nDate: "),
                "{out:?}"
            );
        }
    }

    /// A line that is no field ends the header, and is body: nothing is lost.
    #[test]
    fn a_missing_blank_line_after_the_header_loses_nothing() {
        let out = complete(
            b"Subject: Alert\nTo: root\n  (ops)\nDisk full on /var\nmore\n",
            &fill(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(
                "Subject: Alert\r\nTo: root@host.example\r\n  (ops)\r\n\r\nDisk full on /var\r\nmore\r\n"
            ),
            "{text:?}"
        );
        // The blank line in its place is left alone; a postmark line is no field.
        let msg = b"From alice Sat Dec  5 03:00:00 2026\nSubject: x\nbody line\n";
        let text = String::from_utf8(complete(msg, &fill()).unwrap()).unwrap();
        assert!(
            text.ends_with("Subject: x\r\n\r\nbody line\r\n"),
            "{text:?}"
        );
        // Postmark lines and nothing else, or then only body: queued, as by Postfix.
        for (msg, body) in [
            (&b"From backup job: 3 errors\n"[..], "\r\n\r\n"),
            (
                b"From a Sat Dec  5 03:00:00 2026\n>From b\nbody only\n",
                "\r\n\r\nbody only\r\n",
            ),
            (
                b"From a Sat Dec  5 03:00:00 2026\n\nafter blank\n",
                "\r\n\r\nafter blank\r\n",
            ),
        ] {
            let text = String::from_utf8(complete(msg, &fill()).unwrap()).unwrap();
            assert!(
                text.starts_with("From: ") && text.ends_with(body),
                "{text:?}"
            );
        }
    }

    /// cron's `From: root (Cron Daemon)` and `To: root`: qualified as Postfix's cleanup does.
    #[test]
    fn bare_local_names_in_the_header_are_qualified() {
        let msg = b"From: root (Cron Daemon)\nTo: root, Ops <ops>\nCc: bob@example.org\nSubject: root\n\nroot\n";
        let text = String::from_utf8(complete(msg, &fill()).unwrap()).unwrap();
        assert!(
            text.contains(
                "From: root@host.example (Cron Daemon)\r\nTo: root@host.example, Ops <ops@host.example>\r\nCc: bob@example.org\r\nSubject: root\r\n\r\nroot\r\n"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn recipients_from_fields() {
        let msg = b"To: Bob <bob@example.org>, carol@example.org\r\nCc: team: dave@example.org;\r\nBcc: eve@example.org, BOB@example.org\r\n\r\n";
        assert_eq!(
            header_recipients(msg),
            [
                "bob@example.org",
                "carol@example.org",
                "dave@example.org",
                "eve@example.org"
            ]
        );
        let bare = b"To: admin@example.org, ops\r\nCc: root (Cron Daemon)\r\n\r\n";
        assert_eq!(
            header_recipients(bare),
            ["admin@example.org", "ops", "root"]
        );
        let resent = b"To: bob@example.org\r\nResent-To: frank@example.org\r\n\r\n";
        assert_eq!(header_recipients(resent), ["frank@example.org"]);
        assert_eq!(qualify("root", "host.example"), "root@host.example");
        assert_eq!(
            qualify("bob@example.org", "host.example"),
            "bob@example.org"
        );
        assert_eq!(qualify("not an address", "host.example"), "not an address");
        assert_eq!(qualify("", "host.example"), "");
        assert_eq!(qualify("\"root\"", "host.example"), "root@host.example");
        assert_eq!(qualify("a@example.org>", "host.example"), "a@example.org");
        assert_eq!(qualify("\"a b\"", "host.example"), "\"a b\"");
        let check = |list: &[&str]| check_recipients(list.iter().map(|r| r.to_string()).collect());
        assert!(check(&[]).is_err());
        assert!(check(&["not an address"]).is_err());
        assert!(check(&["bob@"]).is_err());
        assert!(check(&["\"Smith, Bob\""]).is_err());
        let (queued, bad) = check(&["bob@example.org"]).unwrap();
        assert!(queued == ["bob@example.org"] && bad.is_empty());
        let (queued, bad) = check(&["bob@example.org", "bob@"]).unwrap();
        assert!(queued == ["bob@example.org", "bob@"] && bad == ["bob@"]);
        // Beside an address, one with a blank or a control character is queued written so
        // that no line break or blank is left in it, to be reported, never sent.
        for (unstorable, kept) in [
            ("a\nrcpt evil@x", "a\\x{A}rcpt\\x{20}evil@x"),
            ("Bob Smith", "Bob\\x{20}Smith"),
            ("\"a\tb\"@example.org", "\\x{22}a\\x{9}b\\x{22}@example.org"),
            ("\"Smith, Bob\"", "\\x{22}Smith,\\x{20}Bob\\x{22}"),
            ("a\u{85}b", "a\\x{85}b"),
            ("", "<>"),
        ] {
            let (queued, bad) = check(&["bob@example.org", unstorable]).unwrap();
            assert_eq!(queued, ["bob@example.org", kept], "{unstorable:?}");
            assert_eq!(bad, [kept]);
        }
    }
}
