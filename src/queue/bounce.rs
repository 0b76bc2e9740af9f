//! Delivery status notifications (RFC 3464 multipart/report): what the sender of a queued
//! message gets back for each recipient that cannot be delivered, and for each recipient that
//! asked to hear of success when the relay takes no DSN parameters ("relayed", RFC 3461
//! §5.2.2). A report carries the original header only, never the body (RFC 3461 RET=HDRS):
//! the body may be exactly the plaintext that policy refused to send in clear, and the report
//! itself leaves through the relay.

/// What a report says happened to its recipients (RFC 3464 §2.3.3, Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not delivered, for good.
    Failed,
    /// Handed to a relay that does not announce DSN: the sender asked to hear of success,
    /// and no notice will come from further on (RFC 3461 §5.2.2).
    Relayed,
}

/// One recipient a report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub recipient: String,
    /// RFC 3463 status, e.g. "5.7.1" (or "2.0.0" when relayed).
    pub status: String,
    /// Why, as one line (an SMTP reply, or sealpost's reason); for a relayed recipient, the
    /// relay's reply.
    pub diagnostic: String,
    /// The client's ORCPT (RFC 3461 §4.2, decoded: `rfc822;bob@example.org`), quoted as the
    /// Original-Recipient field (RFC 3464 §2.3.1).
    pub original: Option<String>,
}

/// The report's inputs.
pub struct Report<'a> {
    /// Reporting-MTA.
    pub hostname: &'a str,
    /// The domain of the From (MAILER-DAEMON@domain) and of the Message-ID.
    pub domain: &'a str,
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub envid: Option<&'a str>,
    pub arrived: i64,
    pub now: i64,
    pub unique: &'a str,
    /// The original message (its header section is quoted).
    pub original: &'a [u8],
    /// Every recipient has this action: failures and relayed notices are separate reports,
    /// with a Subject of their own, as Postfix sends them.
    pub action: Action,
    pub recipients: &'a [Recipient],
}

/// The RFC 3463 status in a reply text ("550 5.1.1 ..." → "5.1.1"), else `default`. Its
/// class is `default`'s, the outcome's: a relay's "550 4.2.2 mailbox full" failed the
/// recipient, and a report saying Action: failed with Status: 4.2.2 contradicts itself
/// (RFC 3463 §2: the class says whether it failed for good; review).
pub fn status_of(text: &str, default: &str) -> String {
    text.split_whitespace()
        .take(3)
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(
            || default.to_string(),
            |found| format!("{}{}", &default[..1], &found[1..]),
        )
}

/// An address as a delivery-status field takes it: `rfc822; a@b`, or for an address with
/// UTF-8 (RFC 6533 §3) `utf-8; ` and the utf-8-addr-xtext form, which keeps the report 7-bit:
/// every character but the printable ASCII ones other than `+`, `=` and `\` as `\x{HEX}`.
fn typed_address(address: &str) -> String {
    if address.is_ascii() {
        return format!("rfc822; {address}");
    }
    let mut out = String::from("utf-8; ");
    for c in address.chars() {
        if matches!(c, '!'..='~') && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out
}

/// Renders the report (CRLF; 7-bit but for a UTF-8 address in the notification text).
pub fn render(r: &Report<'_>) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", r.queue_id, r.unique, r.hostname);
    let date = |t: i64| mail_parser::DateTime::from_timestamp(t).to_rfc822();
    let (subject, what, action, quoted) = match r.action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to the recipients below. The reasons are\r\n\
             given with each.",
            "failed",
            "Undelivered Message Headers",
        ),
        Action::Relayed => (
            "Successful Mail Delivery Report",
            "Your message was handed to the next mail server for the recipients below, as\r\n\
             you asked to be told. That server does not send delivery notices (it has no\r\n\
             DSN), so this is the last notice of success you will get; errors further on may\r\n\
             still be reported by other systems.",
            "relayed",
            "Message Headers",
        ),
    };
    let mut text = format!(
        "This is the sealpost mail system at host {host}.\r\n\r\n\
         {what} The header of your message is attached; its body is not.\r\n\r\n",
        host = r.hostname
    );
    for f in r.recipients {
        let line = format!("<{}>: {}", f.recipient, ascii_line(&f.diagnostic));
        text.push_str(&wrapped(&line));
    }
    // RFC 3464 §2.2: Original-Envelope-Id, when there is one, comes first.
    let mut status = String::new();
    if let Some(envid) = r.envid {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!("Reporting-MTA: dns; {}\r\n", r.hostname));
    status.push_str(&format!("X-Sealpost-Queue-ID: {}\r\n", r.queue_id));
    status.push_str(&format!("Arrival-Date: {}\r\n", date(r.arrived)));
    for f in r.recipients {
        // RFC 3464 §2.3.6: "smtp" only for a reply a server gave; sealpost's own reasons
        // (encryption required, the queue lifetime over) are of a type of its own. Long
        // diagnostics are cut to keep the line within RFC 5322's 998 octets.
        let diagnostic = ascii_line(&f.diagnostic);
        let kind = if is_smtp_reply(&diagnostic) {
            "smtp"
        } else {
            "x-sealpost"
        };
        let diagnostic: String = diagnostic.chars().take(900).collect();
        status.push_str("\r\n");
        if let Some(original) = &f.original {
            status.push_str(&format!("Original-Recipient: {}\r\n", ascii_line(original)));
        }
        status.push_str(&format!(
            "Final-Recipient: {}\r\nAction: {action}\r\nStatus: {}\r\nDiagnostic-Code: {kind}; {diagnostic}\r\n",
            typed_address(&f.recipient),
            f.status,
        ));
    }
    let header_end = r
        .original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(r.original.len(), |i| i + 2);
    // Blind recipients are not quoted: the report crosses the relay, often in clear, and
    // Postfix, too, removes Bcc before a message is queued.
    let headers = crate::inbound::strip_field(
        &crate::inbound::strip_field(&r.original[..header_end], "Bcc"),
        "Resent-Bcc",
    );

    let mut out = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{domain}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{unique}.{id}@{domain}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset={charset}\r\n\
         \r\n\
         {text}\r\n\
         --{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         {status}\r\n\
         --{boundary}\r\n\
         Content-Description: {quoted}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n",
        charset = if text.is_ascii() { "us-ascii" } else { "utf-8" },
        domain = r.domain,
        sender = r.sender,
        date = date(r.now),
        unique = r.unique,
        id = r.queue_id,
    )
    .into_bytes();
    // The quoted header may hold 8-bit text (RFC 6532); keep it as it was: text/rfc822-headers
    // is quoted verbatim, and the report is signed/encrypted as a whole by the rewrite core.
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// `report` (made by [`render`]) with its quoted header cut to what the outer header of an
/// encrypted copy shows ([`crate::message::mime::outer_fields_encrypted`], RFC 9788
/// hcp_baseline): the Subject replaced by `obscured_subject`; Comments, Keywords, the other
/// copies of the Subject (Thread-Topic...), Autocrypt-Gossip and the MIME fields left out. For a report that leaves without encryption: the original's
/// encrypted copies kept these from the relay, and the report about them keeps them too. A
/// quoted header that does not parse is left out whole.
pub fn obscure(report: &[u8], obscured_subject: &str) -> Vec<u8> {
    const PART: &[u8] = b"Content-Type: text/rfc822-headers\r\n\r\n";
    let find_last =
        |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).rposition(|w| w == needle);
    let Some(start) = find_last(report, PART).map(|at| at + PART.len()) else {
        return report.to_vec();
    };
    // The quoted header ends with its CRLF, then the CRLF before the closing boundary.
    let end = find_last(&report[start..], b"\r\n--").map_or(report.len(), |at| start + at);
    let mut quoted = report[start..end].to_vec();
    quoted.extend_from_slice(b"\r\n");
    let kept = match crate::message::ParsedMessage::parse(quoted) {
        Ok(header) => {
            crate::message::mime::outer_fields_encrypted(header.fields(), obscured_subject)
        }
        Err(_) => Vec::new(),
    };
    let mut out = report[..start].to_vec();
    for field in &kept {
        out.extend_from_slice(&field.raw);
    }
    out.extend_from_slice(&report[end..]);
    out
}

/// Plans the copy of a report for its recipient (the sender of the failed message) with the
/// reports core. Unless that copy is encrypted, the report's quoted header is [`obscure`]d
/// first, where the core protects headers (`[policy] header_protection`).
pub async fn prepare<'a>(
    reports: &'a crate::rewrite::Rewriter,
    envelope: &crate::rewrite::Envelope,
    report: Vec<u8>,
) -> Result<crate::rewrite::Prepared<'a>, crate::rewrite::RewriteError> {
    use crate::rewrite::Prepared;
    let policy = reports.policy();
    if !policy.header_protection {
        return reports.prepare(envelope, report).await;
    }
    let obscured = obscure(&report, &policy.obscured_subject);
    match reports.prepare(envelope, report).await? {
        Prepared::Copies(planned) if !planned.all_encrypted() => {
            reports.prepare(envelope, obscured).await
        }
        prepared => Ok(prepared),
    }
}

/// Whether a diagnostic is an SMTP server's reply: a 2xx, 4xx or 5xx code first.
fn is_smtp_reply(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 4
        && matches!(b[0], b'2' | b'4' | b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && matches!(b[3], b' ' | b'-')
}

/// One printable ASCII line (diagnostics come from servers and may hold anything).
/// `line` as text lines of at most 78 characters where it has blanks (the lines after the
/// first indented), and never over 998 octets (RFC 5322 §2.1.1): a relay's multi-line reply
/// joined into one line made a line of 1,539 octets, which a strict relay refuses, and a
/// report that fails is only logged (review). Each line ends with CRLF.
fn wrapped(line: &str) -> String {
    const WIDTH: usize = 78;
    const PIECE: usize = 980;
    let mut out = String::with_capacity(line.len() + 16);
    let mut current = String::new();
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        // A word no line holds is cut into pieces.
        let chars: Vec<char> = word.chars().collect();
        for piece in chars.chunks(PIECE) {
            let piece: String = piece.iter().collect();
            let started = !current.trim_start().is_empty();
            if started && current.len() + 1 + piece.len() > WIDTH {
                out.push_str(&current);
                out.push_str("\r\n");
                current = "    ".into();
            } else if started {
                current.push(' ');
            }
            current.push_str(&piece);
        }
    }
    out.push_str(&current);
    out.push_str("\r\n");
    out
}

fn ascii_line(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { ' ' })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status_of("550 5.1.1 <x>: User unknown", "5.0.0"), "5.1.1");
        assert_eq!(
            status_of("permanent error (550): 5.7.1 no", "5.0.0"),
            "5.0.0"
        );
        assert_eq!(status_of("550 user unknown", "5.0.0"), "5.0.0");
        assert_eq!(status_of("5.7.1 no key", "5.0.0"), "5.7.1");
        assert_eq!(status_of("550 4.2.2 mailbox full", "5.0.0"), "5.2.2");
        let long = format!(
            "<b@x>: 550 5.7.1 {} {}",
            "word ".repeat(300),
            "y".repeat(2500)
        );
        let text = wrapped(&long);
        assert!(text.split("\r\n").all(|l| l.len() <= 998), "{text}");
        assert_eq!(
            text.split_whitespace().collect::<String>(),
            long.split_whitespace().collect::<String>()
        );
        assert_eq!(wrapped("<b@x>: 550 no"), "<b@x>: 550 no\r\n");
        assert_eq!(status_of("250 5.0.0 ok?", "2.0.0"), "2.0.0");
    }

    /// A report on one recipient of `original`.
    fn report_on(original: &[u8]) -> Vec<u8> {
        let failures = [
            Recipient {
                recipient: "bob@example.org".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 <bob@example.org>: User unknown\r\n".into(),
                original: Some("rfc822;Bob.Alias@example.org".into()),
            },
            Recipient {
                recipient: "dave@example.com".into(),
                status: "5.7.1".into(),
                diagnostic: "encryption required, no usable key".into(),
                original: None,
            },
        ];
        render(&Report {
            hostname: "host.example",
            domain: "example.org",
            queue_id: "ABC",
            sender: "alice@example.org",
            envid: Some("env1"),
            arrived: 1_700_000_000,
            now: 1_700_000_100,
            unique: "u1",
            original,
            action: Action::Failed,
            recipients: &failures,
        })
    }

    #[test]
    fn utf8_addresses_are_typed_as_rfc_6533_says() {
        assert_eq!(typed_address("bob@example.org"), "rfc822; bob@example.org");
        assert_eq!(
            typed_address("j\u{f6}rg+x@b\u{fc}cher.de"),
            "utf-8; j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.de"
        );
        let failures = [Recipient {
            recipient: "j\u{f6}rg@b\u{fc}cher.de".into(),
            status: "5.6.7".into(),
            diagnostic: "5.6.7 relay does not take international addresses".into(),
            original: None,
        }];
        let out = render(&Report {
            hostname: "host.example",
            domain: "example.org",
            queue_id: "ABC",
            sender: "alice@example.org",
            envid: None,
            arrived: 1_700_000_000,
            now: 1_700_000_100,
            unique: "u1",
            original: b"From: alice@example.org\r\n\r\nbody\r\n",
            action: Action::Failed,
            recipients: &failures,
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Final-Recipient: utf-8; j\\x{F6}rg@b\\x{FC}cher.de\r\n"));
        assert!(
            text.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{text}"
        );
        let status = text.split("message/delivery-status").nth(1).unwrap();
        assert!(status.split("--ABC").next().unwrap().is_ascii(), "{text}");
    }

    #[test]
    fn report_shape() {
        let original = b"From: alice@example.org\r\nbcc: hidden@example.net,\r\n \
            other@example.net\r\nSubject: secret plans\r\nResent-Bcc: r@example.net\r\n\r\n\
            the secret body\r\n";
        let out = report_on(original);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("To: <alice@example.org>\r\n"));
        assert!(text.contains("\r\n\r\nOriginal-Recipient: rfc822;Bob.Alias@example.org\r\nFinal-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: User unknown\r\n"));
        assert!(text.contains(
            "\r\n\r\nFinal-Recipient: rfc822; dave@example.com\r\nAction: failed\r\n\
             Status: 5.7.1\r\nDiagnostic-Code: x-sealpost; encryption required, no usable key\r\n"
        ));
        assert!(text.contains(
            "message/delivery-status\r\n\r\nOriginal-Envelope-Id: env1\r\nReporting-MTA: dns; host.example\r\n"
        ));
        assert!(text.contains("Subject: secret plans\r\n"));
        assert!(!text.contains("the secret body"), "never the body");
        assert!(
            !text.contains("example.net"),
            "never a blind recipient: {text}"
        );
        // It is a well-formed multipart/report the rest of sealpost can parse.
        let parsed = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(parsed.parts.len(), 4);
        assert!(crate::message::ParsedMessage::parse(out).is_ok());
    }

    #[test]
    fn a_relayed_notice_says_so_for_each_recipient() {
        let relayed = [Recipient {
            recipient: "bob@example.org".into(),
            status: "2.0.0".into(),
            diagnostic: "250 2.0.0 Ok: queued as 4AbC".into(),
            original: Some("rfc822;bob+lists@example.org".into()),
        }];
        let out = render(&Report {
            hostname: "host.example",
            domain: "example.org",
            queue_id: "ABC",
            sender: "alice@example.org",
            envid: None,
            arrived: 1_700_000_000,
            now: 1_700_000_100,
            unique: "u1",
            original: b"From: alice@example.org\r\nSubject: hi\r\n\r\nthe body\r\n",
            action: Action::Relayed,
            recipients: &relayed,
        });
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("Subject: Successful Mail Delivery Report\r\n"),
            "{text}"
        );
        assert!(text.contains(
            "\r\n\r\nOriginal-Recipient: rfc822;bob+lists@example.org\r\n\
             Final-Recipient: rfc822; bob@example.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n\
             Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4AbC\r\n"
        ));
        assert!(text.contains("<bob@example.org>: 250 2.0.0 Ok: queued as 4AbC\r\n"));
        assert!(text.contains("Content-Description: Message Headers\r\n"));
        assert!(!text.contains("Undelivered") && !text.contains("could not be delivered"));
        assert!(!text.contains("the body"), "never the body");
        let parsed = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(parsed.parts.len(), 4);
    }

    #[test]
    fn an_obscured_report_quotes_what_an_encrypted_copy_shows() {
        let original = "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: secret\r\n \
            plans\r\nKeywords: merger\r\nComments: quiet\r\nThread-Topic: secret plans\r\n\
            Message-ID: <m1@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n";
        let out = obscure(&report_on(original.as_bytes()), "[...]");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("Subject: [...]\r\n"), "{text}");
        for gone in ["secret", "plans", "merger", "quiet", "charset=utf-8"] {
            assert!(!text.contains(gone), "{gone}: {text}");
        }
        assert!(text.contains("\r\n\r\nFrom: alice@example.org\r\nTo: bob@example.org\r\n"));
        assert!(text.contains("Message-ID: <m1@example.org>\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@example.org"));
        assert!(text.ends_with("Message-ID: <m1@example.org>\r\n\r\n--ABC.u1/host.example--\r\n"));
        let parsed = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(parsed.parts.len(), 4);
    }
}
