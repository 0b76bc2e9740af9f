//! Rendering of the PGP/MIME containers (RFC 3156) and of the header-protected payload
//! (RFC 9788). Pure functions over bytes.

use base64::Engine;
use mail_parser::MimeHeaders;

use super::canonical::ContentEntity;
use super::parse::HeaderField;

/// Which kind of protection the payload gets (RFC 9788 §2.1.1, the `hp` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Signed and encrypted: `hp="cipher"`.
    Cipher,
    /// Signed only: `hp="clear"`.
    Clear,
}

/// Trace and transport fields stay outside the cryptographic payload: they describe the route,
/// not the message, and are added again by every hop.
pub(crate) fn is_trace(field: &HeaderField) -> bool {
    [
        "Received",
        "Return-Path",
        "DKIM-Signature",
        "Authentication-Results",
        "X-Original-To",
        "Delivered-To",
    ]
    .iter()
    .any(|n| field.is(n))
        || field.name.len() > 4 && field.name[..4].eq_ignore_ascii_case("ARC-")
}

/// Fields made from the plaintext, which an encrypted copy's clear header must not carry:
/// signatures over it (DKIM, RFC 6376; ARC, RFC 8617; DomainKeys), whose `bh=` is the hash of
/// the plaintext body and `b=` signs the real Subject, so that anyone could confirm a guessed
/// body (a one-time code, a yes or no) or Subject offline (the copy's new body and Subject
/// break them anyway); and SpamAssassin's reports, whose template quotes the Subject and a
/// "Content preview" of the body, and its copy of a Subject it rewrote. Those that are no
/// trace fields stay inside, in the protected header.
fn is_plaintext_derived(field: &HeaderField) -> bool {
    [
        "DKIM-Signature",
        "X-Google-DKIM-Signature",
        "DomainKey-Signature",
        "X-Spam-Report",
        "X-Ham-Report",
        "X-Spam-Prev-Subject",
    ]
    .iter()
    .any(|n| field.is(n))
        || field.name.len() > 4 && field.name[..4].eq_ignore_ascii_case("ARC-")
}

/// Header fields of the outer message for an encrypted copy under RFC 9788's hcp_baseline
/// policy (§3.2.3): Subject replaced by `obscured_subject`, Comments and Keywords removed,
/// everything else kept, but the other fields that carry the Subject or a summary of the
/// text ([`SUBJECT_COPIES`]: they would show it in clear beside the obscured one),
/// Autocrypt-Gossip (other recipients' keys, only ever inside the encryption: Autocrypt
/// §2.7) and fields made from the plaintext ([`is_plaintext_derived`]). Structural (MIME)
/// fields are not included: the caller adds its own.
pub fn outer_fields_encrypted(fields: &[HeaderField], obscured_subject: &str) -> Vec<HeaderField> {
    fields
        .iter()
        .filter(|f| {
            !f.is_structural()
                && !f.is("Comments")
                && !f.is("Keywords")
                && !SUBJECT_COPIES.iter().any(|n| f.is(n))
                && !f.is("Autocrypt-Gossip")
                && !is_plaintext_derived(f)
        })
        .map(|f| {
            if f.is("Subject") {
                HeaderField::new(&f.name, obscured_subject)
            } else {
                seven_bit_unstructured(f)
            }
        })
        .collect()
}

/// The fields a mail client lists and threads a message by: all that the outer header of the
/// user's own copy stored upstream keeps ([`crate::rewrite::Policy::upload`]), with the trace
/// fields ([`is_trace`]; the protected header has none of them).
pub const LISTED_FIELDS: [&str; 9] = [
    "From",
    "Sender",
    "To",
    "Cc",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
];

/// `f` with 8-bit bytes in an unstructured value as RFC 2047 encoded words; else as it is.
fn seven_bit_unstructured(f: &HeaderField) -> HeaderField {
    if f.raw.iter().any(|b| *b >= 0x80) && is_unstructured(&f.name, &f.raw) {
        f.with_raw(signing_safe_field(&f.name, &f.raw))
    } else {
        f.clone()
    }
}

/// Header fields of the outer message for a signed-only copy: all non-structural fields,
/// an unstructured one with 8-bit bytes (a raw UTF-8 Subject) as RFC 2047 encoded words, so
/// that the copy is 7-bit for a relay without 8BITMIME whenever its structured fields are.
pub fn outer_fields_clear(fields: &[HeaderField]) -> Vec<HeaderField> {
    fields
        .iter()
        .filter(|f| !f.is_structural())
        .map(seven_bit_unstructured)
        .collect()
}

/// The longest header field a signed-only payload protects (a copy inside the signed part,
/// and its HP-Outer record). Relays cut longer ones: Postfix's cleanup cut a 108 KB field of
/// a signed copy re-injected through it to 59 KB, and a 60 KB References field as well, and
/// the signature no longer verified; one of 50 KB passed (review). Such a field (a
/// References of a thousand message IDs) stays in the outer header, unprotected, as without
/// header protection.
pub const MAX_SIGNED_FIELD: usize = 16 * 1024;

/// The cryptographic payload of RFC 9788: the original (non-structural, non-trace) header
/// fields, one HP-Outer field per outer non-structural field (§2.2), then the content entity
/// whose Content-Type carries the `hp` parameter.
pub fn protected_payload(
    original: &[HeaderField],
    outer: &[HeaderField],
    content: &ContentEntity,
    protection: Protection,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.body.len() + 2048);
    // In a signed-only payload, which travels in the clear, a field relays would cut stays
    // outside only (see MAX_SIGNED_FIELD); inside a ciphertext, nothing cuts it.
    let fits =
        |f: &&HeaderField| protection == Protection::Cipher || f.raw.len() <= MAX_SIGNED_FIELD;
    for f in original
        .iter()
        .filter(|f| !f.is_structural() && !is_trace(f))
        .filter(fits)
    {
        out.extend_from_slice(&signing_safe_field(&f.name, &f.raw));
    }
    for f in outer
        .iter()
        .filter(|f| !f.is_structural() && !is_trace(f))
        .filter(fits)
    {
        let field = [f.name.as_bytes(), b":", f.raw_value(), b"\r\n"].concat();
        // Folded again with its prefix: a first line of 998 octets would be 1,008 with it.
        let prefixed = [&b"HP-Outer: "[..], &signing_safe_field(&f.name, &field)].concat();
        out.extend_from_slice(&signing_safe_field("HP-Outer", &prefixed));
    }
    let hp = match protection {
        Protection::Cipher => "cipher",
        Protection::Clear => "clear",
    };
    let mut has_type = false;
    for f in &content.fields {
        if f.is("Content-Type") && !has_type {
            has_type = true;
            // The sender's own `hp` parameter goes: a second one, or a signed-only copy that
            // says hp="cipher", would tell the reader the wrong protection (review).
            // Trailing folding white space too: the parameter removed may have come after a
            // fold (`charset=utf-8\r\n ; hp=...`), which would leave a line of its own.
            let value = without_parameter(f.raw_value(), "hp");
            let value = value.trim_ascii_end();
            let value = value.strip_suffix(b";").unwrap_or(value).trim_ascii_end();
            let line = [f.name.as_bytes(), b":", value, b";\r\n"].concat();
            out.extend_from_slice(&signing_safe_field(&f.name, &line));
            out.extend_from_slice(format!(" hp=\"{hp}\"\r\n").as_bytes());
        } else {
            out.extend_from_slice(&signing_safe_field(&f.name, &f.raw));
        }
    }
    if !has_type {
        // RFC 2045 §5.2 default, made explicit so the hp parameter has a home.
        out.extend_from_slice(
            format!("Content-Type: text/plain; charset=\"us-ascii\";\r\n hp=\"{hp}\"\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&content.body);
    out
}

/// Fields that carry the Subject again or a summary of the text: Outlook's Thread-Topic,
/// Original-Subject (X.400 gateways, RFC 2156) and its X- form, Summary (Netnews, RFC 5536).
/// Kept out of an encrypted copy's outer header (review: Original-Subject and Summary went
/// out in clear).
const SUBJECT_COPIES: [&str; 4] = [
    "Thread-Topic",
    "Original-Subject",
    "X-Original-Subject",
    "Summary",
];

/// Unstructured fields (RFC 5322 §3.6.5, RFC 2045 §8, RFC 2076): their whole value may be
/// encoded words. So may an extension field's ("X-", RFC 5322 §3.6.8 optional fields are
/// unstructured) and User-Agent's, which MUAs show as text.
const UNSTRUCTURED: [&str; 6] = [
    "Subject",
    "Comments",
    "Thread-Topic",
    "Content-Description",
    "Organization",
    "User-Agent",
];

/// Whether the field `raw` (named `name`) may be written as encoded words. An extension
/// field that holds an address (X-Original-To: jörg@bücher.de) is no text: it is left be.
fn is_unstructured(name: &str, raw: &[u8]) -> bool {
    UNSTRUCTURED.iter().any(|u| u.eq_ignore_ascii_case(name))
        || (name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-")) && !raw.contains(&b'@'))
}

/// A header field as it may stand inside signed data (RFC 3156 §3: 7-bit, no trailing
/// whitespace, which transports may change): blanks at the end of each line dropped, and an
/// unstructured value with 8-bit bytes (a raw UTF-8 Subject from a script) written as RFC 2047
/// encoded words, which decode to the same text. `raw` is the whole field, CRLF-terminated.
/// 8-bit bytes in a structured field (a raw UTF-8 display name or file name) are kept. A line
/// over 998 octets (RFC 5322 §2.1.1) is folded before a blank where it has one.
pub fn signing_safe_field(name: &str, raw: &[u8]) -> Vec<u8> {
    // "From :" (blanks before the colon, allowed by RFC 5322 §4.5.3's obsolete syntax) is
    // written "From:": a line starting "From " in signed data is quoted ">From " by mbox
    // deliveries, and the signature no longer verifies. The same field either way.
    let named;
    let raw = match raw.iter().position(|b| *b == b':') {
        Some(colon) if colon > 0 && matches!(raw[colon - 1], b' ' | b'\t') => {
            let name_len = trim_blanks_end(&raw[..colon]).len();
            named = [&raw[..name_len], &raw[colon..]].concat();
            &named[..]
        }
        _ => raw,
    };
    let eight_bit = raw.iter().any(|b| *b >= 0x80);
    // Only in text people read: an X- field's long token (a relay's JSON, a URL) is for a
    // program, which would not decode it.
    let text_field = TEXT_FIELDS.iter().any(|t| t.eq_ignore_ascii_case(name));
    let long_words: Vec<&[u8]> = raw
        .split(|b| b" \t\r\n".contains(b))
        .filter(|w| text_field && w.len() > LONG_WORD)
        .collect();
    let long_word = long_words.iter().any(|w| !is_encoded_word(w));
    // An encoded word itself too long for any line (PHP's `'=?UTF-8?B?' . base64_encode($s)
    // . '?='` of a long Subject): the text it stands for is encoded again, in words that fit.
    let long_encoded = long_words.iter().any(|w| is_encoded_word(w));
    let colon = raw.iter().position(|b| *b == b':');
    let decoded = || {
        let block = [raw, &b"\r\n"[..]].concat();
        let message = crate::message::parse::mail_parser().parse_headers(&block[..])?;
        let text = message.header(name)?.as_text()?.trim().as_bytes().to_vec();
        Some(text)
    };
    let as_written = |colon: usize| {
        let value: Vec<u8> = raw[colon + 1..]
            .iter()
            .copied()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect();
        value.trim_ascii().to_vec()
    };
    // The text that goes out as encoded words, when any does. Decoded whole when it may be:
    // raw 8-bit text beside the long encoded word reads the same decoded when it is UTF-8
    // (review: written as it was, the long word stayed one 1,613-octet line, which a relay
    // broke, and the signature failed).
    let decodable = !eight_bit || std::str::from_utf8(raw).is_ok();
    let text = colon.and_then(|colon| {
        (long_encoded && decodable)
            .then(decoded)
            .flatten()
            .or_else(|| {
                ((eight_bit || long_word) && is_unstructured(name, raw)).then(|| as_written(colon))
            })
            .map(|text| (colon, text))
    });
    if let Some((colon, text)) = text {
        let mut out = raw[..=colon].to_vec();
        out.push(b' ');
        out.extend_from_slice(&encode_eight_bit_runs(&text, colon + 2, text_field));
        out.extend_from_slice(b"\r\n");
        // A long word left as it is (an X- field's token) is broken as any other.
        if out.split(|b| *b == b'\n').any(|l| l.len() > MAX_LINE + 1) {
            let mut broken = Vec::with_capacity(out.len() + 8);
            for (i, line) in out.split_inclusive(|b| *b == b'\n').enumerate() {
                let body = line.strip_suffix(b"\r\n").unwrap_or(line);
                fold_at_blanks(
                    &mut broken,
                    body,
                    MAX_LINE,
                    if i == 0 { colon + 1 } else { 0 },
                );
                if line.ends_with(b"\r\n") {
                    broken.extend_from_slice(b"\r\n");
                }
            }
            return broken;
        }
        return out;
    }
    let mut out = Vec::with_capacity(raw.len());
    // The name and its colon stay on the first line.
    let name_end = raw.iter().position(|b| *b == b':').map_or(0, |c| c + 1);
    for (i, line) in raw.split_inclusive(|b| *b == b'\n').enumerate() {
        let body = trim_blanks_end(line.strip_suffix(b"\r\n").unwrap_or(line));
        // A folded line of blanks only would become an empty line, which ends a header.
        if i > 0 && body.is_empty() {
            continue;
        }
        fold_at_blanks(&mut out, body, MAX_LINE, if i == 0 { name_end } else { 0 });
        if line.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// A word longer than this fits on no folded line (a blank, then the word): in the text
/// fields ([`TEXT_FIELDS`]) it is written as encoded words, which may be folded between them,
/// unless it is one already (PHP's `=?UTF-8?B?...?=` of a long Subject: encoded again, it
/// would read as that code).
const LONG_WORD: usize = MAX_LINE - 1;

/// The fields whose long words are encoded (see [`LONG_WORD`]).
const TEXT_FIELDS: [&str; 2] = ["Subject", "Comments"];

fn is_encoded_word(word: &[u8]) -> bool {
    word.starts_with(b"=?") && word.ends_with(b"?=")
}

/// RFC 5322 §2.1.1: no line over 998 octets, CRLF not counted.
const MAX_LINE: usize = 998;

/// Appends `line`, folded (CRLF inserted before a blank: unfolding gives back the same
/// bytes) wherever it would pass `max` octets and a blank allows: never within its first
/// `keep` bytes (a field's name and colon), and only after some text, so that no line folded
/// off is blanks only or ends in a blank. A stretch of `max` octets with no blank (a long
/// token: an 1,100-octet message id, a file name) is broken as Postfix's SMTP client breaks
/// it (`smtp_line_length_limit`): CRLF and a blank inserted, between characters, which adds
/// a blank to the value. Left whole, the line made every relay that keeps to RFC 5322
/// §2.1.1 refuse the copy ("500 Line too long"), and its recipient lost the mail (review).
fn fold_at_blanks(out: &mut Vec<u8>, mut line: &[u8], max: usize, mut keep: usize) {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    // Octets of `line` the output line at hand has room for: one less after an inserted blank.
    let mut room = max;
    while line.len() > room {
        let text = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
        let first = keep.max(text + 1);
        if first > room {
            break;
        }
        match line[first..=room]
            .iter()
            .rposition(blank)
            .map(|i| i + first)
        {
            Some(mut at) => {
                // Before the first blank of a run (the text before `first` ends in no blank).
                while at > first && blank(&line[at - 1]) {
                    at -= 1;
                }
                out.extend_from_slice(&line[..at]);
                out.extend_from_slice(b"\r\n");
                line = &line[at..];
                room = max;
            }
            None => {
                // A UTF-8 character stays whole.
                let mut at = room;
                while at > first && (line[at] & 0xC0) == 0x80 {
                    at -= 1;
                }
                out.extend_from_slice(&line[..at]);
                out.extend_from_slice(b"\r\n ");
                line = &line[at..];
                room = max - 1;
            }
        }
        keep = 0;
    }
    out.extend_from_slice(line);
}

fn trim_blanks_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// An unstructured value with its words of 8-bit bytes as encoded words and the rest as it
/// was (words that are encoded words already stay so). Adjacent 8-bit words are encoded
/// together with the blank between them, and so is the blank next to an encoded word that
/// was there: a decoder drops blanks between two encoded words (RFC 2047 §6.2). Folded
/// between words so that no line, the first one after its `first_line` characters of field
/// name included, passes 76 characters where a word allows (RFC 2047 §2).
fn encode_eight_bit_runs(value: &[u8], first_line: usize, long_words: bool) -> Vec<u8> {
    let blank = |b: u8| b == b' ' || b == b'\t';
    // Words with the blanks before each, as written: unstructured text keeps its blanks.
    let mut words: Vec<(usize, usize, usize)> = Vec::new();
    let mut at = 0;
    while at < value.len() {
        let gap = at;
        while at < value.len() && blank(value[at]) {
            at += 1;
        }
        let start = at;
        while at < value.len() && !blank(value[at]) {
            at += 1;
        }
        if start < at {
            words.push((gap, start, at));
        }
    }
    // A word longer than any line holds (the first: than its line holds after the field
    // name) is encoded too, unless it is an encoded word already.
    let first_start = words.first().map_or(0, |w| w.1);
    // Only in the text fields (`long_words`); elsewhere a long token is for a program.
    let room = |s: usize| match (long_words, s == first_start) {
        (false, _) => usize::MAX,
        (true, true) => MAX_LINE.saturating_sub(first_line),
        (true, false) => LONG_WORD,
    };
    let eight = |&(_, s, e): &(usize, usize, usize)| {
        (e - s > room(s) && !is_encoded_word(&value[s..e]))
            || value[s..e].iter().any(|b| *b >= 0x80)
    };
    let encoded = |&(_, s, e): &(usize, usize, usize)| is_encoded_word(&value[s..e]);
    // (the blanks before, the text): runs of 8-bit words become encoded words together with
    // the blanks between them, and with a blank next to an encoded word that was there (a
    // decoder drops blanks between two encoded words, RFC 2047 §6.2).
    let mut parts: Vec<(&[u8], Vec<u8>)> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let (gap, start, end) = words[i];
        if !eight(&words[i]) {
            parts.push((&value[gap..start], value[start..end].to_vec()));
            i += 1;
            continue;
        }
        let first = i;
        while i < words.len() && eight(&words[i]) {
            i += 1;
        }
        let mut from = start;
        let mut before: &[u8] = &value[gap..start];
        if first > 0 && encoded(&words[first - 1]) {
            from = gap;
            before = b" ";
        }
        let mut to = words[i - 1].2;
        if i < words.len() && encoded(&words[i]) {
            to = words[i].1;
            words[i].0 = to - 1;
        }
        let run = &value[from..to];
        // The first part follows the field name ("Subject: "), the others a blank.
        let column = if parts.is_empty() { first_line - 1 } else { 0 };
        parts.push((
            before,
            encoded_words(run, column).trim_ascii_start().to_vec(),
        ));
    }
    let mut out = Vec::with_capacity(value.len() * 2);
    let mut line = first_line;
    for (i, (before, part)) in parts.iter().enumerate() {
        let head = part.split(|b| *b == b'\r').next().unwrap_or(part).len();
        if i > 0 {
            // Unfolding gives back the blanks.
            if line + before.len() + head > 76 {
                out.extend_from_slice(b"\r\n");
                line = 0;
            }
            out.extend_from_slice(before);
            line += before.len();
        }
        out.extend_from_slice(part);
        line = match part.iter().rposition(|b| *b == b'\n') {
            Some(at) => part.len() - at - 1,
            None => line + part.len(),
        };
    }
    out
}

/// `text` as RFC 2047 "B" encoded words (UTF-8 when it is; else charset unknown-8bit,
/// RFC 1428), characters never split, each after a blank on a folded line of at most 76
/// characters (RFC 2047 §2); the first one after the `column` characters its line already
/// has (on a line of its own when it would not fit there at all).
pub(crate) fn encoded_words(text: &[u8], column: usize) -> Vec<u8> {
    use base64::Engine;
    let charset = if std::str::from_utf8(text).is_ok() {
        "UTF-8"
    } else {
        "unknown-8bit"
    };
    // "=?" charset "?B?" ... "?=" around the base64, after the blank.
    let overhead = 7 + charset.len() + 1;
    let fits = |column: usize| (76usize.saturating_sub(column + overhead) / 4) * 3;
    let mut out = Vec::with_capacity(text.len() * 2);
    let mut room = fits(column);
    if room < 3 {
        out.extend_from_slice(b"\r\n");
        room = fits(0);
    }
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + room).min(text.len());
        if charset == "UTF-8" {
            while std::str::from_utf8(&text[start..end]).is_err() && end > start + 1 {
                end -= 1;
            }
        }
        if start > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text[start..end]);
        out.extend_from_slice(format!(" =?{charset}?B?{b64}?=").as_bytes());
        start = end;
        room = fits(0);
    }
    out
}

/// A fresh boundary that occurs in none of `contents` (RFC 2046 §5.1.1).
pub fn boundary(contents: &[&[u8]]) -> String {
    loop {
        let mut bytes = [0u8; 15];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        let b = format!("sealpost-{}", hex::encode(bytes));
        if !contents.iter().any(|c| contains(c, b.as_bytes())) {
            return b;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A MIME entity made of a Content-Type value and a body.
#[derive(Debug, Clone)]
pub struct Container {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Container {
    /// The entity as bytes: its Content-Type field, a blank line, the body.
    pub fn to_entity(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 200);
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// RFC 3156 §5: multipart/signed around `signed` (the exact bytes that were signed) and an
/// armored detached signature. `micalg` comes from the signing result.
pub fn multipart_signed(signed: &[u8], signature: &[u8], micalg: &str) -> Container {
    let b = boundary(&[signed, signature]);
    let mut body = Vec::with_capacity(signed.len() + signature.len() + 400);
    body.extend_from_slice(b"This is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n");
    body.extend_from_slice(format!("--{b}\r\n").as_bytes());
    body.extend_from_slice(signed);
    // The CRLF before the delimiter belongs to the delimiter (RFC 2046 §5.1.1), not to the
    // signed data.
    body.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\
Content-Description: OpenPGP digital signature\r\n\
Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n",
    );
    body.extend_from_slice(&crlf_end(signature));
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    Container {
        content_type: format!(
            "multipart/signed; micalg=\"{micalg}\";\r\n protocol=\"application/pgp-signature\";\r\n boundary=\"{b}\""
        ),
        body,
    }
}

/// RFC 3156 §4: multipart/encrypted with the version part and the armored ciphertext.
pub fn multipart_encrypted(armored: &[u8]) -> Container {
    let b = boundary(&[armored]);
    let mut body = Vec::with_capacity(armored.len() + 500);
    body.extend_from_slice(b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n");
    body.extend_from_slice(format!("--{b}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Type: application/pgp-encrypted\r\n\
Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n",
    );
    body.extend_from_slice(format!("--{b}\r\n").as_bytes());
    body.extend_from_slice(
        b"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
Content-Description: OpenPGP encrypted message\r\n\
Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n",
    );
    body.extend_from_slice(&crlf_end(armored));
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    Container {
        content_type: format!(
            "multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n boundary=\"{b}\""
        ),
        body,
    }
}

/// Armor from gpg uses LF; the message needs CRLF and a final line break.
fn crlf_end(armor: &[u8]) -> Vec<u8> {
    let mut out = super::encoding::crlf(armor);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A whole message: outer fields, MIME-Version, the container's Content-Type, its body.
pub fn message(outer: &[HeaderField], container: &Container) -> Vec<u8> {
    // The outer fields are the client's (a 5,000-octet X- field or Subject, unfolded): one
    // with a line over 998 octets is made as the protected ones are (folded at blanks, a word
    // too long for any line encoded when the field is text), so no line breaks RFC 5322
    // §2.1.1 and no relay has to break it itself. A folded line of blanks only, which RFC 5322
    // §4.2 forbids generating (a parser may take it for the end of the header, and the
    // MIME structure below for body text), is dropped the same way (review).
    let mut fields: Vec<HeaderField> = outer
        .iter()
        .map(|f| {
            let mut f = f.clone();
            let mut lines = f.raw.split(|b| *b == b'\n');
            let blank = lines
                .clone()
                .skip(1)
                .any(|l| !l.is_empty() && l.trim_ascii().is_empty());
            if blank || lines.any(|l| l.len() > MAX_LINE + 1) {
                f.raw = signing_safe_field(&f.name, &f.raw);
            }
            f
        })
        .collect();
    fields.push(HeaderField::new("MIME-Version", "1.0"));
    fields.push(HeaderField::new("Content-Type", &container.content_type));
    // A multipart/signed around the sender's own signed 8-bit entity, kept byte for byte so
    // that the sender's signature still verifies, is 8-bit: labelled so (RFC 2045 §6.1,
    // RFC 2046 §5.1), since a relay converting for a next hop without 8BITMIME goes by the
    // labels (review: it was unlabelled, so 7bit).
    if container.body.iter().any(|&b| b >= 0x80) {
        fields.push(HeaderField::new("Content-Transfer-Encoding", "8bit"));
    }
    super::parse::assemble(&fields, &container.body)
}

/// A Content-Type value without the parameter `name` (any case, and its RFC 2231 forms
/// `name*`, `name*0`, ...). Parameters are split at the semicolons outside quoted strings
/// and comments; the rest is kept byte for byte.
fn without_parameter(value: &[u8], name: &str) -> Vec<u8> {
    let mut segments = Vec::new();
    let (mut start, mut quoted, mut depth, mut escaped) = (0, false, 0u32, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted || depth > 0 => escaped = true,
            b'"' if depth == 0 => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth = depth.saturating_sub(1),
            b';' if !quoted && depth == 0 => {
                segments.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&value[start..]);
    let is_named = |segment: &[u8]| {
        let attribute = segment.split(|b| *b == b'=').next().unwrap_or(&[]);
        let attribute = attribute.trim_ascii();
        let base = attribute.split(|b| *b == b'*').next().unwrap_or(&[]);
        base.eq_ignore_ascii_case(name.as_bytes())
    };
    let mut out = Vec::with_capacity(value.len());
    for (i, segment) in segments.into_iter().enumerate() {
        if i > 0 && is_named(segment) {
            continue;
        }
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(segment);
    }
    out
}

/// The Autocrypt header (Autocrypt Level 1 §2.1): `addr` and the key, base64, folded.
pub fn autocrypt_field(addr: &str, keydata: &[u8]) -> HeaderField {
    let b64 = base64::engine::general_purpose::STANDARD.encode(keydata);
    let mut value = format!("addr={addr}; keydata=");
    for chunk in b64.as_bytes().chunks(72) {
        value.push_str("\r\n ");
        value.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    HeaderField::new("Autocrypt", &value)
}

/// The micalg parameter value for a hash algorithm name reported by GnuPG (RFC 3156 §5:
/// "pgp-" and the lower-case name from RFC 4880 §9.4).
pub fn micalg(hash_name: &str) -> String {
    format!("pgp-{}", hash_name.to_ascii_lowercase())
}

/// A parsed multipart/`subtype` message and the ids of its top-level parts.
fn multipart_of<'a>(raw: &'a [u8], subtype: &str) -> Option<(mail_parser::Message<'a>, Vec<u32>)> {
    let message = crate::message::parse::mail_parser().parse(raw)?;
    let root = message.root_part();
    let ct = root.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart") || !ct.subtype()?.eq_ignore_ascii_case(subtype)
    {
        return None;
    }
    let mail_parser::PartType::Multipart(children) = &root.body else {
        return None;
    };
    let children = children.clone();
    Some((message, children))
}

/// The two halves of a multipart/signed message or entity (RFC 3156 §5): the exact signed
/// bytes (up to, not including, the CRLF before the delimiter) and the signature part's body.
pub fn signed_parts(raw: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (message, children) = multipart_of(raw, "signed")?;
    let [signed, signature] = children.as_slice() else {
        return None;
    };
    let signed = &message.parts[*signed as usize];
    let signature = &message.parts[*signature as usize];
    Some((
        raw[signed.offset_header as usize..signed.offset_end as usize].to_vec(),
        raw[signature.offset_body as usize..signature.offset_end as usize].to_vec(),
    ))
}

/// The armored ciphertext of a multipart/encrypted message (RFC 3156 §4), if it is one.
pub fn encrypted_payload(raw: &[u8]) -> Option<Vec<u8>> {
    let (message, children) = multipart_of(raw, "encrypted")?;
    let [_, payload] = children.as_slice() else {
        return None;
    };
    let part = &message.parts[*payload as usize];
    Some(raw[part.offset_body as usize..part.offset_end as usize].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multipart/signed around 8-bit data (the sender's own signed entity, kept as it came)
    /// is labelled 8bit; one around 7-bit data, or the ciphertext, has no label (7bit).
    #[test]
    fn a_message_carrying_8bit_data_is_labelled_so() {
        let from = HeaderField::new("From", "a@example.org");
        let label = "Content-Transfer-Encoding: 8bit\r\n";
        let signed = multipart_signed(
            "Content-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n".as_bytes(),
            b"-----BEGIN PGP SIGNATURE-----\r\n",
            "pgp-sha256",
        );
        let m = String::from_utf8(message(std::slice::from_ref(&from), &signed)).unwrap();
        assert!(m.contains(label), "{m}");
        let seven = multipart_signed(
            b"Content-Type: text/plain\r\n\r\nhi\r\n",
            b"sig",
            "pgp-sha256",
        );
        let m = String::from_utf8(message(std::slice::from_ref(&from), &seven)).unwrap();
        assert!(!m.contains("Content-Transfer-Encoding"), "{m}");
        let encrypted = multipart_encrypted(b"-----BEGIN PGP MESSAGE-----\r\n");
        let m = String::from_utf8(message(&[from], &encrypted)).unwrap();
        assert!(!m.contains("Content-Transfer-Encoding"), "{m}");
    }

    fn decoded_subject(field: &[u8]) -> String {
        let message = [field, b"\r\n"].concat();
        mail_parser::MessageParser::default()
            .parse(&message)
            .and_then(|m| m.subject().map(str::to_string))
            .unwrap_or_default()
    }

    #[test]
    fn signing_safe_fields_read_the_same() {
        // Partly encoded already: only the raw word is encoded, and reads the same.
        let f = signing_safe_field(
            "Subject",
            "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Köln\r\n".as_bytes(),
        );
        assert!(f.is_ascii(), "{}", String::from_utf8_lossy(&f));
        assert_eq!(decoded_subject(&f), "Grüße aus Köln");
        let f = signing_safe_field(
            "Subject",
            "Subject: Grüße Köln, =?UTF-8?Q?s=C3=BC=C3=9F?= ok \r\n".as_bytes(),
        );
        assert_eq!(decoded_subject(&f), "Grüße Köln, süß ok");
        // Every line within RFC 2047's 76 characters, the first one with its field name.
        let long = "Subject: Re: Einladung zur Jahresversammlung der Bürgerinitiative \
            Grünflächen im Stadtteil Süd-Ost, Tagesordnung und Anträge\r\n";
        let f = signing_safe_field("Subject", long.as_bytes());
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 76), "{text}");
        assert_eq!(decoded_subject(&f), long["Subject: ".len()..].trim_end());
        // A folded line of blanks only is dropped, never left as an empty line.
        let f = signing_safe_field("Subject", b"Subject: hello\r\n \r\n world \r\n");
        assert_eq!(f, b"Subject: hello\r\n world\r\n");
        // Unstructured text keeps its blanks, encoded or not.
        let f = signing_safe_field("Subject", "Subject: Grüße  aus\tKöln,  ok\r\n".as_bytes());
        assert_eq!(
            String::from_utf8(f).unwrap(),
            "Subject: =?UTF-8?B?R3LDvMOfZQ==?=  aus\t=?UTF-8?B?S8O2bG4s?=  ok\r\n"
        );
        // Extension fields are unstructured.
        let f = signing_safe_field("X-Note", "X-Note: Grüße\r\n".as_bytes());
        assert!(f.is_ascii(), "{}", String::from_utf8_lossy(&f));
        // Unless it holds an address.
        let to = "X-Original-To: jörg@bücher.de\r\n".as_bytes();
        assert_eq!(signing_safe_field("X-Original-To", to), to);
        // A line over 998 octets is folded before a blank; unfolded, it is the same.
        let long = format!("Cc: {}\r\n", vec!["someone@example.org"; 80].join(", "));
        let f = signing_safe_field("Cc", long.as_bytes());
        let text = String::from_utf8(f).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 998), "{text}");
        assert_eq!(text.replace("\r\n ", " "), long);
        // Two blanks between addresses: no folded line ends in one.
        let long = format!("Cc: {}\r\n", vec!["someone@example.org"; 80].join(",  "));
        let text = String::from_utf8(signing_safe_field("Cc", long.as_bytes())).unwrap();
        assert!(
            text.split("\r\n")
                .all(|l| l.len() <= 998 && !l.ends_with(' ')),
            "{text}"
        );
        assert_eq!(text.replace("\r\n", ""), long.trim_end());
        // Raw UTF-8 beside an encoded word too long for any line: the whole text encoded
        // again in words that fit (review: the long word stayed one 1,613-octet line).
        use base64::Engine as _;
        let word = base64::engine::general_purpose::STANDARD.encode("é".repeat(600));
        let subject = format!("Subject: Grüße =?UTF-8?B?{word}?=\r\n");
        let f = signing_safe_field("Subject", subject.as_bytes());
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 78), "{text}");
        assert_eq!(decoded_subject(&f), format!("Grüße {}", "é".repeat(600)));
    }

    #[test]
    fn signed_container_keeps_signed_bytes_exact() {
        let signed = b"Content-Type: text/plain\r\n\r\nhello\r\n";
        let c = multipart_signed(
            signed,
            b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n",
            "pgp-sha256",
        );
        let body = String::from_utf8(c.body.clone()).unwrap();
        let b = c
            .content_type
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        let first = body.split(&format!("--{b}\r\n")).nth(1).unwrap();
        assert_eq!(first.strip_suffix("\r\n").unwrap().as_bytes(), signed);
        assert!(c.content_type.contains("micalg=\"pgp-sha256\""));
        assert!(body.ends_with(&format!("--{b}--\r\n")));
    }

    #[test]
    fn encrypted_container_has_version_part() {
        let c =
            multipart_encrypted(b"-----BEGIN PGP MESSAGE-----\n\nxyz\n-----END PGP MESSAGE-----\n");
        let body = String::from_utf8(c.body).unwrap();
        assert!(body.contains("Content-Type: application/pgp-encrypted\r\n"));
        assert!(body.contains("\r\n\r\nVersion: 1\r\n"));
        assert!(body.contains("-----END PGP MESSAGE-----\r\n--"));
    }

    #[test]
    fn payload_carries_protected_headers_and_hp_outer() {
        let original = vec![
            HeaderField::new("From", "a@example.org"),
            HeaderField::new("Subject", "secret plans"),
            HeaderField::new("Received", "from x"),
            HeaderField::new("Thread-Topic", "secret plans"),
            HeaderField::new("Original-Subject", "secret plans"),
            HeaderField::new("x-original-subject", "secret plans"),
            HeaderField::new("Summary", "secret plans in brief"),
            HeaderField::new("Autocrypt-Gossip", "addr=c@example.org; keydata=AAAA"),
            HeaderField::new("Content-Type", "text/plain"),
            HeaderField::new("DKIM-Signature", "v=1; d=example.org; bh=mgmfKflj; b=x"),
            HeaderField::new("ARC-Message-Signature", "i=1; bh=mgmfKflj; b=y"),
            HeaderField::new("arc-seal", "i=1; b=z"),
            HeaderField::new("X-Google-DKIM-Signature", "v=1; bh=mgmfKflj"),
            HeaderField::new("Authentication-Results", "mx.example.org; dkim=pass"),
            HeaderField::new("X-Spam-Report", "Content preview: secret plans"),
            HeaderField::new("X-Spam-Prev-Subject", "secret plans"),
            HeaderField::new("X-Spam-Status", "No, score=-1.0"),
        ];
        let outer = outer_fields_encrypted(&original, "[...]");
        assert!(outer.iter().any(|f| f.raw == b"Subject: [...]\r\n"));
        for name in SUBJECT_COPIES.iter().chain(&["Autocrypt-Gossip"]) {
            assert!(!outer.iter().any(|f| f.is(name)), "no {name} in clear");
        }
        // Review: DKIM's bh= let anyone confirm a guessed body (a one-time code) offline.
        assert!(
            !outer.iter().any(|f| contains(&f.raw, b"bh=")),
            "no hash of the plaintext in clear: {outer:?}"
        );
        assert!(!outer.iter().any(|f| f.is("ARC-Seal")));
        assert!(outer.iter().any(|f| f.is("Authentication-Results")));
        assert!(outer.iter().any(|f| f.is("X-Spam-Status")));
        assert!(
            !outer.iter().any(|f| contains(&f.raw, b"secret")),
            "nothing of the plaintext outside: {outer:?}"
        );
        let content = ContentEntity {
            fields: vec![HeaderField::new(
                "Content-Type",
                "text/plain; charset=us-ascii",
            )],
            body: b"hi\r\n".to_vec(),
        };
        let p = String::from_utf8(protected_payload(
            &original,
            &outer,
            &content,
            Protection::Cipher,
        ))
        .unwrap();
        assert!(p.starts_with("From: a@example.org\r\nSubject: secret plans\r\n"));
        assert!(p.contains("HP-Outer: Subject: [...]\r\n"));
        // A long outer field: no line over 998 octets, with the HP-Outer prefix or without.
        let long = HeaderField::new("X-Long", &"y ".repeat(3000));
        let payload = protected_payload(
            &original,
            std::slice::from_ref(&long),
            &content,
            Protection::Clear,
        );
        let container = Container {
            content_type: "text/plain".into(),
            body: b"hi\r\n".to_vec(),
        };
        let m = message(&[long], &container);
        for bytes in [payload, m] {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("X-Long: y y"), "{text}");
            assert!(text.split("\r\n").all(|l| l.len() <= 998), "{text}");
        }
        // A field relays would cut is not signed in the clear; in a ciphertext it is kept.
        let huge = HeaderField::new("References", &"<a@b.example> ".repeat(2000));
        for (protection, kept) in [(Protection::Clear, false), (Protection::Cipher, true)] {
            let payload = protected_payload(
                std::slice::from_ref(&huge),
                std::slice::from_ref(&huge),
                &content,
                protection,
            );
            let text = String::from_utf8(payload).unwrap();
            assert_eq!(text.contains("References:"), kept, "{protection:?}");
            assert_eq!(
                text.contains("HP-Outer: References:"),
                kept,
                "{protection:?}"
            );
        }
        // The sender's own hp parameter, in any spelling, is not kept beside sealpost's.
        assert_eq!(
            without_parameter(
                b" text/plain; hp=\"cipher\";\r\n charset=utf-8; HP*0=\"x\"; a=\";hp=1\"",
                "hp"
            ),
            b" text/plain;\r\n charset=utf-8; a=\";hp=1\""
        );
        let folded = ContentEntity {
            fields: vec![HeaderField::new(
                "Content-Type",
                "text/plain; charset=utf-8\r\n ; hp=\"cipher\"",
            )],
            body: b"hi\r\n".to_vec(),
        };
        let clear = String::from_utf8(protected_payload(
            &original,
            &[],
            &folded,
            Protection::Clear,
        ))
        .unwrap();
        assert!(
            clear.contains("Content-Type: text/plain; charset=utf-8;\r\n hp=\"clear\"\r\n\r\nhi"),
            "{clear}"
        );
        let typed = ContentEntity {
            fields: vec![HeaderField::new(
                "Content-Type",
                "text/plain; hp=\"cipher\"",
            )],
            body: b"hi\r\n".to_vec(),
        };
        let clear = String::from_utf8(protected_payload(&original, &[], &typed, Protection::Clear))
            .unwrap();
        assert!(
            clear.contains("Content-Type: text/plain;\r\n hp=\"clear\"\r\n")
                && !clear.contains("cipher"),
            "{clear}"
        );
        // A folded line of blanks only in an outer field: dropped, the header does not end
        // there (review).
        let blank = HeaderField::new("X-Foo", "a\r\n \r\n b");
        let m = String::from_utf8(message(&[blank], &container)).unwrap();
        assert!(
            m.starts_with("X-Foo: a\r\n b\r\nMIME-Version: 1.0\r\n"),
            "{m}"
        );
        // One encoded word no line can hold: the text it stands for, in words that fit.
        let text = "Grüße aus Köln ".repeat(60);
        let encoded = format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
        );
        assert!(encoded.len() > 998);
        let f = signing_safe_field("Subject", format!("Subject: {encoded}\r\n").as_bytes());
        let folded = String::from_utf8(f.clone()).unwrap();
        assert!(folded.split("\r\n").all(|l| l.len() <= 998), "{folded}");
        assert_eq!(decoded_subject(&f), text.trim());
        // A word no line can hold, in a Subject: encoded words, which read the same.
        let word = "x".repeat(5000);
        let f = signing_safe_field("Subject", format!("Subject: a {word} b\r\n").as_bytes());
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= 998), "{text}");
        assert_eq!(decoded_subject(&f), format!("a {word} b"));
        // A first word that fits on no first line after "Subject: ", before a long one.
        let (first, long) = ("x".repeat(992), "y".repeat(2000));
        let f = signing_safe_field("Subject", format!("Subject: {first} {long}\r\n").as_bytes());
        let text = String::from_utf8(f.clone()).unwrap();
        assert!(
            text.split("\r\n").all(|l| l.len() <= 998),
            "a line over 998"
        );
        assert_eq!(decoded_subject(&f), format!("{first} {long}"));
        // A blank before the colon: never folded there; a run of blanks: no line of blanks.
        for raw in [
            format!("Subject :{}\r\n", "x".repeat(995)),
            format!("Subject: a  {}\r\n", "x".repeat(997)),
            format!("Subject: a{}b\r\n", " ".repeat(1500)),
        ] {
            let f = String::from_utf8(signing_safe_field("Subject", raw.as_bytes())).unwrap();
            assert!(
                f.split("\r\n").next().unwrap().contains(':'),
                "the colon stays"
            );
            assert!(
                f.split("\r\n")
                    .skip(1)
                    .all(|l| l.is_empty() || l.trim() != ""),
                "a line of blanks only"
            );
        }
        // An X- field with 8-bit text keeps its long token, not encoded, broken as Postfix's
        // SMTP client breaks it: CRLF and a blank inserted, no line over 998 octets.
        let token = "q".repeat(1500);
        let f = signing_safe_field(
            "X-Data",
            format!("X-Data: caf\u{e9} {token}\r\n").as_bytes(),
        );
        let f = String::from_utf8(f).unwrap();
        assert!(f.split("\r\n").all(|l| l.len() <= 998), "{f}");
        assert!(f.replace("\r\n ", "").contains(&token), "{f}");
        // Not encoded again: a long encoded word, and a long token of an X- field.
        let encoded = format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode("\u{fc}".repeat(700))
        );
        let f = signing_safe_field("Subject", format!("Subject: {encoded}\r\n").as_bytes());
        assert_eq!(decoded_subject(&f), "\u{fc}".repeat(700));
        let json = format!("{{\"a\":\"{}\"}}", "q".repeat(1500));
        let f = signing_safe_field("X-Data", format!("X-Data: {json}\r\n").as_bytes());
        // Folded at its only blank, then broken within the token; a multi-byte character is
        // never split.
        let f = String::from_utf8(f).unwrap();
        assert!(f.split("\r\n").all(|l| l.len() <= 998), "{f}");
        assert_eq!(f.replace("\r\n ", ""), format!("X-Data:{json}\r\n"));
        // 8-bit bytes in a structured field stay as they are: the break is between characters.
        let wide = format!(
            "Content-Disposition: attachment; filename=\"{}\"",
            "\u{e9}".repeat(700)
        );
        let f = signing_safe_field("Content-Disposition", format!("{wide}\r\n").as_bytes());
        let f = String::from_utf8(f).expect("no character split");
        assert!(f.split("\r\n").all(|l| l.len() <= 998), "{f}");
        assert_eq!(
            f.replace("\r\n ", ""),
            format!("{wide}\r\n").replace("; ", ";")
        );
        assert!(!p.contains("Received"));
        assert!(p.contains(
            "Content-Type: text/plain; charset=us-ascii;\r\n hp=\"cipher\"\r\n\r\nhi\r\n"
        ));
    }

    #[test]
    fn autocrypt_folds() {
        let f = autocrypt_field("a@example.org", &[7u8; 300]);
        assert!(f.raw.split(|&b| b == b'\n').all(|l| l.len() <= 78));
        assert!(f
            .raw
            .starts_with(b"Autocrypt: addr=a@example.org; keydata="));
    }

    #[test]
    fn micalg_is_lowercase() {
        assert_eq!(micalg("SHA512"), "pgp-sha512");
    }
}
