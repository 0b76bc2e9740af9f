//! SEARCH and UID SEARCH (RFC 3501 §6.4.4, RFC 7162 MODSEQ). The key tree is evaluated per
//! message; header and body text are parsed only for messages and keys that need them.
//! Strings match as case-insensitive substrings of the decoded text (RFC 2047 words in headers,
//! transfer encodings and charsets in bodies), as RFC 3501 §6.4.4 asks.

use chrono::Datelike;
use imap_next::imap_types::core::Charset;
use imap_next::imap_types::core::Vec1;
use imap_next::imap_types::datetime::NaiveDate;
use imap_next::imap_types::search::SearchKey;
use mail_parser::{HeaderValue, MessageParser, PartType};

use super::render::Out;
use super::sequence;
use super::session::{CmdError, CmdResult, Done, Session};
use crate::store::{days_from_civil, ContentData, MessageRow, Need};

const BATCH: usize = 1024;
/// Bytes of whole messages in memory at once (at least one message).
const BUDGET: u64 = 4 << 20;

/// Body text needs only the MIME headers; the others (Received, address lists...) are skipped
/// unparsed.
static BODY_PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .default_header_ignore()
});

/// One message under evaluation, with its text parsed on first use.
pub struct Candidate<'a> {
    pub seq: u32,
    pub row: &'a MessageRow,
    pub recent: bool,
    pub content: &'a ContentData,
    /// (session's message count, mailbox's largest UID) for "*".
    pub count: u32,
    pub largest_uid: u32,
    headers: Option<Vec<(String, String, String)>>,
    body: Option<String>,
    part_headers: Option<String>,
}

impl<'a> Candidate<'a> {
    pub fn new(
        seq: u32,
        row: &'a MessageRow,
        recent: bool,
        content: &'a ContentData,
        count: u32,
        largest_uid: u32,
    ) -> Self {
        Candidate {
            seq,
            row,
            recent,
            content,
            count,
            largest_uid,
            headers: None,
            body: None,
            part_headers: None,
        }
    }

    fn source(&self) -> &[u8] {
        if self.content.raw.is_empty() {
            &self.content.header
        } else {
            &self.content.raw
        }
    }

    /// Every header field as (lower-case name, decoded value, value as written), the values
    /// in comparison form. The written one (unfolded; empty when it holds RFC 2047 encoded
    /// words, which only the decoded one reads right) serves HEADER: RFC 3501 §6.4.4
    /// searches the field's text, so `HEADER Message-ID "<id@x>"` must match the brackets
    /// the decoded form drops, and `HEADER Content-Type "boundary"` a parameter.
    fn headers(&mut self) -> &[(String, String, String)] {
        if self.headers.is_none() {
            let mut out = Vec::new();
            // A last field without a line end (a header-only message) has no value for
            // mail-parser: it is read with one (review: SEARCH SUBJECT missed it, which
            // Dovecot finds).
            let ended;
            let source = match self.source() {
                s if s.ends_with(b"\n") => s,
                s => {
                    ended = [s, b"\r\n"].concat();
                    &ended[..]
                }
            };
            if let Some(message) = crate::message::parse::mail_parser().parse_headers(source) {
                for header in message.headers() {
                    let name = header.name().to_ascii_lowercase();
                    let written = source
                        .get(header.offset_start as usize..header.offset_end as usize)
                        .map(|v| {
                            String::from_utf8_lossy(v)
                                .replace(['\r', '\n'], "")
                                .trim()
                                .to_string()
                        })
                        .unwrap_or_default();
                    let written = if written.contains("=?") {
                        String::new()
                    } else {
                        fold(&written)
                    };
                    out.push((name, fold(&value_text(header.value())), written));
                }
            }
            self.headers = Some(out);
        }
        self.headers.as_deref().unwrap_or_default()
    }

    /// Whether a field `name` holds `needle`: in its decoded value, and with `as_written`
    /// (HEADER) also in its text as written.
    fn header_contains(&mut self, name: &str, needle: &str, as_written: bool) -> bool {
        let name = name.to_ascii_lowercase();
        let needle = fold(needle);
        self.headers().iter().any(|(n, v, w)| {
            *n == name && (v.contains(&needle) || (as_written && w.contains(&needle)))
        })
    }

    fn body(&mut self) -> &str {
        if self.body.is_none() {
            let mut text = String::new();
            if let Some(message) = parse_body(self.source()) {
                body_text(&message, &mut text);
            }
            self.body = Some(text);
        }
        self.body.as_deref().unwrap_or_default()
    }

    /// The header blocks of the body's parts and attached messages, as written and folded:
    /// TEXT searches them too (a file name, an attached message's Received), as Dovecot does.
    fn part_headers(&mut self) -> &str {
        if self.part_headers.is_none() {
            let mut text = String::new();
            let source = self.source();
            if let Some(message) = parse_body(source) {
                part_header_text(&message, source, &mut text);
            }
            self.part_headers = Some(text);
        }
        self.part_headers.as_deref().unwrap_or_default()
    }

    /// The day of the Date field as written, time and zone disregarded (RFC 3501 §6.4.4);
    /// read by [`written_day`], else as mail-parser reads the whole date. A message without
    /// a Date field that reads was sent on 1 January 1970, as Dovecot takes it (its sent date
    /// 0): SENTBEFORE finds it (fixture 41 has none).
    fn sent_date(&mut self) -> Option<i64> {
        let epoch = || days_from_civil(1970, 1, 1);
        // The first Date field, as Dovecot reads it (mail-parser keeps the last).
        let Some((_, field)) = super::section::fields(self.source())
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(b"date"))
        else {
            return epoch();
        };
        let value = field
            .iter()
            .position(|&b| b == b':')
            .map(|colon| String::from_utf8_lossy(&field[colon + 1..]).into_owned())
            .unwrap_or_default();
        if let Some((year, month, day)) = written_day(&value) {
            return days_from_civil(year, month, day);
        }
        let Some(date) = mail_parser::DateTime::parse_rfc822(&value) else {
            return epoch();
        };
        days_from_civil(
            i64::from(date.year),
            u32::from(date.month),
            u32::from(date.day),
        )
        .or_else(epoch)
    }
}

/// The day, month and year of an RFC 5322 date-time (§3.3, and the obsolete forms of §4.3:
/// a two- or three-digit year, comments, no day name): the first number of one or two digits
/// followed by a month name and a year. mail-parser read no date from some legal forms
/// (`11 Jan 2024 12:00 GMT`: no day name, with an obsolete zone), and SENTON missed them.
fn written_day(value: &str) -> Option<(i64, u32, u32)> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut text = String::with_capacity(value.len());
    let mut depth = 0u32;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => text.push(' '),
            c if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(3).find_map(|w| {
        let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
            n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(w[0], 1..=2) || !digits(w[2], 2..=4) {
            return None;
        }
        let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(w[1]))? as u32 + 1;
        let day: u32 = w[0].parse().ok().filter(|d| (1..=31).contains(d))?;
        let year: i64 = w[2].parse().ok()?;
        // RFC 5322 §4.3: 00-49 are 2000-2049, 50-99 and three digits count from 1900.
        let year = match w[2].len() {
            2 if year < 50 => 2000 + year,
            2 | 3 => 1900 + year,
            _ => year,
        };
        Some((year, month, day))
    })
}

/// The message parsed for body searches; None for one that nests attached messages too
/// deeply ([`crate::message::parse::MAX_NESTING`]): its body text is not searched (review:
/// parsing it overflowed the stack and took the server down).
fn parse_body(raw: &[u8]) -> Option<crate::message::parse::Bounded<'_>> {
    crate::message::parse::parse_bounded_with(&BODY_PARSER, raw)
        .ok()
        .flatten()
}

/// The folded text of every text part, including those of attached messages (their bodies
/// are part of the body being searched, as for Dovecot; their header blocks are not), and of
/// the other message/* parts (a bounce's message/delivery-status, a read receipt's
/// message/disposition-notification), which Dovecot searches as text too (review: a search
/// for a bounce's Final-Recipient found nothing). Walked with a list rather than recursion:
/// attached messages may nest thousands deep.
fn body_text(message: &mail_parser::Message<'_>, text: &mut String) {
    let mut waiting = vec![message];
    while let Some(message) = waiting.pop() {
        // Reversed, so that the pops read the parts in order.
        let mut inner = Vec::new();
        for part in &message.parts {
            match &part.body {
                PartType::Text(t) | PartType::Html(t) => {
                    text.push_str(&fold(t));
                    text.push('\n');
                }
                PartType::Message(m) => inner.push(m),
                PartType::Binary(b) | PartType::InlineBinary(b)
                    if mail_parser::MimeHeaders::content_type(part).is_some_and(|ct| {
                        ct.ctype().eq_ignore_ascii_case("message")
                            || ct.ctype().eq_ignore_ascii_case("text")
                    }) =>
                {
                    text.push_str(&fold(&String::from_utf8_lossy(b)));
                    text.push('\n');
                }
                _ => {}
            }
        }
        waiting.extend(inner.into_iter().rev());
    }
}

/// The folded header blocks of `message`'s parts (not its own), and of attached messages in
/// it; offsets outside `raw` (an encoded attachment's) are left out. Walked with a list, as
/// [`body_text`].
fn part_header_text(message: &mail_parser::Message<'_>, raw: &[u8], text: &mut String) {
    let mut waiting = vec![(message, true)];
    while let Some((message, top)) = waiting.pop() {
        let mut inner = Vec::new();
        for (i, part) in message.parts.iter().enumerate() {
            if !(top && i == 0) {
                if let Some(header) =
                    raw.get(part.offset_header as usize..part.offset_body as usize)
                {
                    text.push_str(&fold(
                        &String::from_utf8_lossy(header).replace(['\r', '\n'], " "),
                    ));
                    text.push('\n');
                }
            }
            if let PartType::Message(m) = &part.body {
                if part.encoding == mail_parser::Encoding::None {
                    inner.push((m, false));
                }
            }
        }
        waiting.extend(inner.into_iter().rev());
    }
}

/// Decoded text of a header value, addresses as "Name <addr>".
fn value_text(value: &HeaderValue<'_>) -> String {
    match value {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(list) => list.join(" "),
        HeaderValue::Address(address) => {
            let mailbox = |a: &mail_parser::Addr<'_>| match (&a.name, &a.address) {
                (Some(n), Some(addr)) => format!("{n} <{addr}>"),
                (None, Some(addr)) => addr.to_string(),
                (Some(n), None) => n.to_string(),
                (None, None) => String::new(),
            };
            match address {
                mail_parser::Address::List(list) => {
                    list.iter().map(mailbox).collect::<Vec<_>>().join(", ")
                }
                // A group's name is searched too, as it is in the envelope (RFC 3501 §7.4.2):
                // `TO friends` finds "To: Friends: a@x, b@y;" and "undisclosed-recipients:;".
                mail_parser::Address::Group(groups) => groups
                    .iter()
                    .map(|g| {
                        let members: Vec<String> = g.addresses.iter().map(mailbox).collect();
                        format!(
                            "{}: {};",
                            g.name.as_deref().unwrap_or(""),
                            members.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        }
        HeaderValue::DateTime(d) => d.to_rfc822(),
        HeaderValue::ContentType(ct) => {
            let mut s = ct.c_type.to_string();
            if let Some(sub) = &ct.c_subtype {
                s.push('/');
                s.push_str(sub);
            }
            s
        }
        HeaderValue::Received(_) | HeaderValue::Empty => String::new(),
    }
}

/// The comparison form of text: lower case and compatibility-decomposed, its combining marks
/// kept, as Dovecot's i;unicode-casemap (RFC 5051) compares: "Réunion" contains "re" and
/// "réu", not "reu"; a search for "é" finds no plain "e" (review: with the marks dropped, it
/// found 36 messages of the corpus where Dovecot finds 2, and "Koln" found "Köln").
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    // ASCII is its own decomposition: most mail takes this path.
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.nfkd().flat_map(char::to_lowercase).collect()
}

fn day(date: &NaiveDate) -> i64 {
    let date = date.as_ref();
    days_from_civil(i64::from(date.year()), date.month(), date.day()).unwrap_or(0)
}

fn internal_day(row: &MessageRow) -> i64 {
    (row.internaldate.unix + i64::from(row.internaldate.tz_minutes) * 60).div_euclid(86_400)
}

fn text(bytes: &impl AsRef<[u8]>) -> String {
    String::from_utf8_lossy(bytes.as_ref()).into_owned()
}

/// Whether a message matches a key (RFC 3501 §6.4.4).
pub fn matches(key: &SearchKey<'_>, m: &mut Candidate<'_>) -> bool {
    use SearchKey as K;
    let flags = &m.row.flags;
    match key {
        K::And(keys) => keys.as_ref().iter().all(|k| matches(k, m)),
        K::Or(a, b) => matches(a, m) || matches(b, m),
        K::Not(k) => !matches(k, m),
        K::All => true,
        K::SequenceSet(set) => seq_in(set, m.seq, m.count),
        K::Uid(set) => sequence::contains_uid(set, m.row.uid, m.largest_uid),
        K::Answered => flags.contains("\\Answered"),
        K::Unanswered => !flags.contains("\\Answered"),
        K::Deleted => flags.contains("\\Deleted"),
        K::Undeleted => !flags.contains("\\Deleted"),
        K::Draft => flags.contains("\\Draft"),
        K::Undraft => !flags.contains("\\Draft"),
        K::Flagged => flags.contains("\\Flagged"),
        K::Unflagged => !flags.contains("\\Flagged"),
        K::Seen => flags.contains("\\Seen"),
        K::Unseen => !flags.contains("\\Seen"),
        K::Recent => m.recent,
        K::New => m.recent && !flags.contains("\\Seen"),
        K::Old => !m.recent,
        K::Keyword(k) => flags.contains(k.inner()),
        K::Unkeyword(k) => !flags.contains(k.inner()),
        K::Larger(n) => m.row.size > *n,
        K::Smaller(n) => m.row.size < *n,
        K::Before(d) => internal_day(m.row) < day(d),
        K::On(d) => internal_day(m.row) == day(d),
        K::Since(d) => internal_day(m.row) >= day(d),
        K::SentBefore(d) => m.sent_date().is_some_and(|s| s < day(d)),
        K::SentOn(d) => m.sent_date().is_some_and(|s| s == day(d)),
        K::SentSince(d) => m.sent_date().is_some_and(|s| s >= day(d)),
        K::From(s) => m.header_contains("from", &text(s), false),
        K::To(s) => m.header_contains("to", &text(s), false),
        K::Cc(s) => m.header_contains("cc", &text(s), false),
        K::Bcc(s) => m.header_contains("bcc", &text(s), false),
        K::Subject(s) => m.header_contains("subject", &text(s), false),
        K::Header(name, value) => m.header_contains(&text(name), &text(value), true),
        K::Body(s) => {
            let needle = fold(&text(s));
            m.body().contains(&needle)
        }
        // RFC 3501 §6.4.4: "in the header or body", so the header as written too: a
        // Received field (no decoded value), a Message-ID with its brackets.
        // A needle across a field's name and its value ("Subject: digest") is in the header
        // too (review: Dovecot finds it, sealpost did not).
        K::Text(s) => {
            let needle = fold(&text(s));
            let across = needle.contains(':');
            m.headers().iter().any(|(n, v, w)| {
                n.contains(&needle)
                    || v.contains(&needle)
                    || w.contains(&needle)
                    || (across
                        && (format!("{n}: {w}").contains(&needle)
                            || format!("{n}: {v}").contains(&needle)))
            }) || m.body().contains(&needle)
                || m.part_headers().contains(&needle)
        }
        K::ModSequence { modseq, .. } => m.row.modseq >= *modseq,
    }
}

fn seq_in(set: &imap_next::imap_types::sequence::SequenceSet, seq: u32, count: u32) -> bool {
    sequence::contains_uid(set, seq, count)
}

fn need_of(key: &SearchKey<'_>, need: &mut Need) {
    use SearchKey as K;
    match key {
        K::And(keys) => keys.as_ref().iter().for_each(|k| need_of(k, need)),
        K::Or(a, b) => {
            need_of(a, need);
            need_of(b, need);
        }
        K::Not(k) => need_of(k, need),
        K::From(_) | K::To(_) | K::Cc(_) | K::Bcc(_) | K::Subject(_) | K::Header(..) => {
            need.header = true;
            need.parts = true;
        }
        K::SentBefore(_) | K::SentOn(_) | K::SentSince(_) => {
            need.header = true;
            need.parts = true;
        }
        K::Body(_) | K::Text(_) => need.raw = true,
        _ => {}
    }
}

fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(k) => uses_modseq(k),
        _ => false,
    }
}

impl Session {
    pub(super) async fn search(
        &mut self,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> CmdResult {
        if let Some(charset) = &charset {
            let name = charset.as_ref().to_ascii_uppercase();
            if name != "UTF-8" && name != "US-ASCII" {
                return Err(CmdError::no(
                    Some("BADCHARSET (UTF-8 US-ASCII)"),
                    "Unsupported charset",
                ));
            }
        }
        let key = SearchKey::And(criteria);
        let modseq_used = uses_modseq(&key);
        if modseq_used {
            self.enable_condstore().await?;
        }
        let mut need = Need::default();
        need_of(&key, &mut need);
        if need.raw {
            need.header = false;
        }
        let selected = self.selected()?;
        let mailbox = selected.mailbox.id;
        let view: Vec<u32> = selected.uids.clone();
        let count = view.len() as u32;
        let largest_uid = view.last().copied().unwrap_or(0);
        let recent: Vec<bool> = view.iter().map(|&u| selected.is_recent(u)).collect();
        let store = self.shared.store.clone();
        let key = std::sync::Arc::new(key);
        let (found, highest) = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut highest = 0u64;
            let mut done = 0;
            while done < view.len() {
                let chunk = &view[done..view.len().min(done + BATCH)];
                let batch = store.fetch_batch(mailbox, chunk, need, BUDGET)?;
                for (row, content) in &batch.items {
                    let Ok(i) = chunk.binary_search(&row.uid) else {
                        continue;
                    };
                    let index = done + i;
                    let mut candidate = Candidate::new(
                        index as u32 + 1,
                        row,
                        recent[index],
                        content,
                        count,
                        largest_uid,
                    );
                    if matches(&key, &mut candidate) {
                        found.push((index as u32 + 1, row.uid));
                        highest = highest.max(row.modseq);
                    }
                }
                done += chunk.partition_point(|&u| u <= batch.through);
            }
            Ok::<_, crate::store::StoreError>((found, highest))
        })
        .await??;
        let mut out = Out::default();
        out.text("* SEARCH");
        for (seq, uid_value) in &found {
            out.text(" ").num(if uid { *uid_value } else { *seq });
        }
        // RFC 7162 §3.1.5: the highest MODSEQ of the matches when MODSEQ was searched.
        if modseq_used && !found.is_empty() {
            out.text(" (MODSEQ ").num(highest).text(")");
        }
        out.crlf();
        self.conn.write(&out.bytes).await?;
        Ok(Done::ok(if uid {
            "UID SEARCH completed"
        } else {
            "SEARCH completed"
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn the_written_day_of_every_date_form() {
        for (date, day) in [
            ("Thu, 11 Jan 2024 12:00:00 +0000", (2024, 1, 11)),
            ("11 Jan 2024 12:00 GMT", (2024, 1, 11)),
            ("Thu, 11 Jan 2024 12:00:00", (2024, 1, 11)),
            ("Thu, 11 Jan 2024 23:30:00 -0800", (2024, 1, 11)),
            ("(comment 3 Feb 2020) 1 jan 24 00:00 EST", (2024, 1, 1)),
            ("Mon,1 Mar 99 10:00 +0100", (1999, 3, 1)),
            ("5 Dec 101 00:00 UT", (2001, 12, 5)),
        ] {
            assert_eq!(super::written_day(date), Some(day), "{date}");
        }
        assert_eq!(super::written_day("yesterday"), None);
        assert_eq!(super::written_day("32 Jan 2024"), None);
    }

    #[test]
    fn folding_matches_with_and_without_the_ascii_shortcut() {
        assert_eq!(fold("Lunch AT Noon"), "lunch at noon");
        assert_eq!(fold("Réunion ÉTÉ"), "re\u{301}union e\u{301}te\u{301}");
        assert!(fold("Réunion").contains(&fold("RÉU")) && fold("Réunion").contains("re"));
        assert!(!fold("Réunion").contains(&fold("reu")));
        // Compatibility decomposition: the ligature and the full-width letters fold to ASCII.
        assert_eq!(fold("ﬁle ＡＢ"), "file ab");
    }
}
