//! Rendering of server responses (pure). Responses are written as bytes here rather than built
//! as imap-types values and encoded: FETCH serves stored message bytes and the precomputed
//! ENVELOPE/BODYSTRUCTURE without copying them into typed values, and one renderer for every
//! response keeps quoting rules in one place. Commands are parsed by imap-codec.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use super::names;

/// A buffer of response bytes.
#[derive(Debug, Default)]
pub struct Out {
    pub bytes: Vec<u8>,
    /// What came before `bytes`, when a literal was passed on from a stored message.
    done: Vec<Chunk>,
    /// Bytes of the rendered chunks in `done`.
    rendered_done: usize,
}

/// A piece of a response: bytes rendered here, or a stored message's bytes (all of them or a
/// part) passed on as they are. A FETCH of a 40 MB message then holds it once, not once read
/// and once more in the response.
#[derive(Debug)]
pub enum Chunk {
    Rendered(Vec<u8>),
    Stored(Arc<Vec<u8>>, Range<usize>),
}

impl Chunk {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Rendered(bytes) => bytes,
            Chunk::Stored(whole, range) => &whole[range.clone()],
        }
    }
}

/// Literals from a stored message at least this long are passed on, not copied.
const PASS_ON_AT: usize = 64 * 1024;

/// The unsigned integers IMAP responses carry (RFC 3501 number, nz-number; RFC 7162 mod-sequence).
pub trait Number {
    fn into_u64(self) -> u64;
}

macro_rules! number {
    ($($t:ty),*) => {
        $(impl Number for $t {
            fn into_u64(self) -> u64 {
                self as u64
            }
        }
        impl Number for &$t {
            fn into_u64(self) -> u64 {
                *self as u64
            }
        })*
    };
}
number!(u8, u16, u32, u64, usize);

impl Out {
    pub fn with_capacity(capacity: usize) -> Out {
        Out {
            bytes: Vec::with_capacity(capacity),
            done: Vec::new(),
            rendered_done: 0,
        }
    }

    /// Whether a literal of `len` bytes from a stored message is passed on rather than copied
    /// (see [`Out::stored_literal`]).
    pub fn passes_on(len: usize) -> bool {
        len >= PASS_ON_AT
    }

    /// Bytes rendered (copied or made) so far, not counting stored bytes passed on.
    pub fn rendered_len(&self) -> usize {
        self.rendered_done + self.bytes.len()
    }

    /// The response in its pieces, in order.
    pub fn into_chunks(mut self) -> Vec<Chunk> {
        if !self.bytes.is_empty() {
            self.done.push(Chunk::Rendered(self.bytes));
        }
        self.done
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        self.bytes.extend_from_slice(text.as_bytes());
        self
    }

    /// A decimal number (written digit by digit: FETCH responses carry several per message).
    pub fn num(&mut self, n: impl Number) -> &mut Self {
        let mut n = n.into_u64();
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes.extend_from_slice(&digits[at..]);
        self
    }

    pub fn crlf(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// An IMAP string (RFC 3501 §4.3): quoted when it can be, a literal otherwise.
    pub fn string(&mut self, value: &[u8]) -> &mut Self {
        if can_quote(value) {
            self.bytes.push(b'"');
            for &b in value {
                if b == b'"' || b == b'\\' {
                    self.bytes.push(b'\\');
                }
                self.bytes.push(b);
            }
            self.bytes.push(b'"');
        } else {
            self.literal(value);
        }
        self
    }

    /// A literal of `value`. A literal may not hold NUL (RFC 3501 §9, RFC 9051 §9: CHAR8 is
    /// %x01-ff; only BINARY's literal8 may, and it is not offered), while a stored message may
    /// (`deliver` and `import` keep what came): each NUL goes out as 0x80, as Dovecot sends
    /// it, so the length and RFC822.SIZE stay those of the stored bytes (review: sent as is).
    pub fn literal(&mut self, value: &[u8]) -> &mut Self {
        self.num_literal_header(value.len());
        let at = self.bytes.len();
        self.bytes.extend_from_slice(value);
        for b in &mut self.bytes[at..] {
            if *b == 0 {
                *b = 0x80;
            }
        }
        self
    }

    /// A literal of `value`, which is `whole` or a part of it when it comes from the stored
    /// message: a long one is passed on without a copy. Any other `value` is copied.
    pub fn stored_literal(&mut self, whole: &Arc<Vec<u8>>, value: &[u8]) -> &mut Self {
        let start = (value.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        let within = start <= whole.len() && value.len() <= whole.len() - start;
        if !within || !Out::passes_on(value.len()) || value.contains(&0) {
            return self.literal(value);
        }
        self.num_literal_header(value.len());
        self.rendered_done += self.bytes.len();
        self.done
            .push(Chunk::Rendered(std::mem::take(&mut self.bytes)));
        self.done
            .push(Chunk::Stored(whole.clone(), start..start + value.len()));
        self
    }

    fn num_literal_header(&mut self, len: usize) {
        self.bytes.push(b'{');
        self.num(len);
        self.bytes.extend_from_slice(b"}\r\n");
    }

    /// A mailbox name: modified UTF-7 (RFC 3501 §5.1.3), quoted or literal.
    pub fn mailbox(&mut self, name: &str) -> &mut Self {
        self.string(names::encode(name).as_bytes())
    }

    /// A flag list, "(\Seen $Label1)".
    pub fn flags<'a>(&mut self, flags: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.bytes.push(b'(');
        for (i, flag) in flags.into_iter().enumerate() {
            if i > 0 {
                self.bytes.push(b' ');
            }
            self.bytes.extend_from_slice(flag.as_bytes());
        }
        self.bytes.push(b')');
        self
    }

    /// The mailbox's FLAGS and PERMANENTFLAGS (RFC 3501 §7.2.6, §7.1): the system flags and
    /// the keywords in use; a read-only session may change none.
    pub fn flags_lists(&mut self, keywords: &[String], read_only: bool) -> &mut Self {
        let system = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];
        let all = || {
            system
                .into_iter()
                .chain(keywords.iter().map(String::as_str))
        };
        self.text("* FLAGS ").flags(all()).crlf();
        self.text("* OK [PERMANENTFLAGS ");
        if read_only {
            self.text("()");
        } else {
            self.flags(all().chain(["\\*"]));
        }
        self.text("] Flags permitted").crlf()
    }

    /// An unsolicited flag update, "* 3 FETCH (UID 7 FLAGS (\Seen) MODSEQ (12))"; MODSEQ only
    /// when given (RFC 7162 §3.1.4.1: once CONDSTORE is on).
    pub fn flags_fetch<'a>(
        &mut self,
        seq: u32,
        uid: u32,
        flags: impl IntoIterator<Item = &'a str>,
        modseq: Option<u64>,
    ) -> &mut Self {
        self.text("* ")
            .num(seq)
            .text(" FETCH (UID ")
            .num(uid)
            .text(" FLAGS ");
        self.flags(flags);
        if let Some(modseq) = modseq {
            self.text(" MODSEQ (").num(modseq).text(")");
        }
        self.text(")").crlf()
    }

    /// A tagged or untagged status line: "<tag> OK [code] text".
    pub fn status(&mut self, tag: &str, kind: &str, code: Option<&str>, text: &str) -> &mut Self {
        self.text(tag).text(" ").text(kind).text(" ");
        if let Some(code) = code {
            self.text("[").text(code).text("] ");
        }
        // RFC 3501 §9 text: 7-bit, no CR or LF. An error's wording may hold a name in UTF-8
        // or a line break (a store error), which would end the line early.
        if text
            .bytes()
            .all(|b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n')
        {
            return self.text(text).crlf();
        }
        // Other characters as modified UTF-7, the spelling the client gave a mailbox name in
        // (review: `"W?rk" has child mailboxes` for DELETE "W&APY-rk").
        let clean: String = text
            .chars()
            .map(|c| match c {
                '\r' | '\n' => ' ',
                '\0' => '?',
                c => c,
            })
            .collect();
        self.text(&super::names::encode(&clean)).crlf()
    }
}

/// RFC 3501 §9 quoted: TEXT-CHAR without CR, LF or 8-bit; long values go as literals.
fn can_quote(value: &[u8]) -> bool {
    value.len() < 1024
        && value
            .iter()
            .all(|&b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n')
}

/// A set of numbers in RFC 3501 sequence-set syntax, ranges compressed ("1:3,7,9:10").
pub fn sequence_set(numbers: &[u32]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    ordered_set(&sorted)
}

/// The same numbers in the given order (RFC 4315 COPYUID pairs source and destination sets
/// by position, so they must not be sorted independently).
pub fn ordered_set(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && numbers[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = numbers[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}:{end}");
        }
        i += 1;
    }
    out
}

/// INTERNALDATE, RFC 3501 §9 date-time: "17-Jul-1996 02:44:25 -0700".
pub fn internal_date(unix: i64, tz_minutes: i32) -> String {
    let local = unix + i64::from(tz_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let sign = if tz_minutes < 0 { '-' } else { '+' };
    let tz = tz_minutes.unsigned_abs();
    format!(
        "{d:02}-{}-{y:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        crate::store::MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        tz / 60,
        tz % 60
    )
}

/// Inverse of `days_from_civil` (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NUL, which a literal may not hold, goes out as 0x80 (the length stays), also from a
    /// long stored message, which is then copied.
    #[test]
    fn literals_carry_no_nul() {
        let whole: Arc<Vec<u8>> = Arc::new(
            (0..200_000u32)
                .map(|i| if i % 1000 == 7 { 0 } else { b'a' })
                .collect(),
        );
        for value in [&whole[..], &whole[..100], b"a\0b".as_slice()] {
            let mut out = Out::default();
            out.stored_literal(&whole, value);
            let sent: Vec<u8> = out
                .into_chunks()
                .iter()
                .flat_map(|c| c.as_slice())
                .copied()
                .collect();
            let header = format!("{{{}}}\r\n", value.len());
            assert!(sent.starts_with(header.as_bytes()));
            let body = &sent[header.len()..];
            assert_eq!(body.len(), value.len());
            assert!(!body.contains(&0));
            assert_eq!(
                body.iter().filter(|&&b| b == 0x80).count(),
                value.iter().filter(|&&b| b == 0).count()
            );
        }
    }

    /// A long literal from the stored message is passed on as a range of it, with the
    /// rendered bytes around it in order; short ones and bytes from elsewhere are copied.
    /// Either way the response is byte for byte what a copy would give.
    #[test]
    fn long_literals_of_the_stored_message_are_passed_on() {
        let whole: Arc<Vec<u8>> = Arc::new((0..200_000u32).map(|i| (i % 251 + 1) as u8).collect());
        let elsewhere = whole[..PASS_ON_AT].to_vec();
        let cases: [(&[u8], usize); 4] = [
            (&whole[..], 1),
            (&whole[1000..1000 + PASS_ON_AT], 1),
            (&whole[1000..1000 + PASS_ON_AT - 1], 0),
            (&elsewhere, 0),
        ];
        for (value, passed_on) in cases {
            let mut out = Out::default();
            out.text("* 1 FETCH (BODY[] ")
                .stored_literal(&whole, value)
                .text(")")
                .crlf();
            let chunks = out.into_chunks();
            let stored: Vec<&Range<usize>> = chunks
                .iter()
                .filter_map(|c| match c {
                    Chunk::Stored(_, range) => Some(range),
                    Chunk::Rendered(_) => None,
                })
                .collect();
            assert_eq!(stored.len(), passed_on, "{} bytes", value.len());
            let mut copied = Out::default();
            copied
                .text("* 1 FETCH (BODY[] ")
                .literal(value)
                .text(")")
                .crlf();
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.as_slice()).copied().collect();
            assert!(joined == copied.bytes, "{} bytes", value.len());
        }
    }

    #[test]
    fn strings_quote_or_literal() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"plain", b"\"plain\""),
            (b"a \"q\" \\", b"\"a \\\"q\\\" \\\\\""),
            (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
            ("caf\u{e9}".as_bytes(), b"{5}\r\ncaf\xc3\xa9"),
        ];
        for (value, expected) in cases {
            let mut out = Out::default();
            out.string(value);
            assert_eq!(out.bytes, expected, "{value:?}");
        }
    }

    #[test]
    fn status_text_is_one_line_of_seven_bit_text() {
        let mut out = Out::default();
        out.status(
            "a1",
            "NO",
            Some("CANNOT"),
            "Entw\u{fc}rfe: bad\r\n* 1 EXISTS",
        );
        assert_eq!(
            out.bytes,
            b"a1 NO [CANNOT] Entw&APw-rfe: bad  * 1 EXISTS\r\n"
        );
    }

    #[test]
    fn sets_compress_ranges() {
        assert_eq!(sequence_set(&[5, 1, 2, 3, 9, 10]), "1:3,5,9:10");
        assert_eq!(ordered_set(&[7, 8, 3, 4, 10]), "7:8,3:4,10");
        assert_eq!(sequence_set(&[]), "");
    }

    #[test]
    fn internal_dates() {
        assert_eq!(internal_date(0, 0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(
            internal_date(837_596_665, -420),
            "17-Jul-1996 02:44:25 -0700"
        );
        assert_eq!(
            internal_date(1_795_174_215, 60),
            "20-Nov-2026 12:30:15 +0100"
        );
    }
}
