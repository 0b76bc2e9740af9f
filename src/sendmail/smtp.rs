//! `sendmail -bs`: an SMTP session (RFC 5321) on stdin/stdout, as Symfony Mailer and other
//! libraries use it to learn per-recipient results. Every accepted DATA is queued like a
//! `sendmail -bm` submission; replies are written one per command, so a pipelining client
//! (RFC 2920) works as well.

use std::io::{BufRead, Write};

use super::flags::Notify;
use super::input;
use crate::queue::relay::xtext_decode as xtext;
use crate::queue::spool::{self, RecipientDsn, Submission};
use crate::queue::{self, QueueConfig};

/// Longest command line, CRLF included (Postfix's line_length_limit).
const MAX_COMMAND: usize = 2048;

/// Most recipients of one message (Postfix's smtpd_recipient_limit).
const MAX_RECIPIENTS: usize = 1000;

/// DATA is read in pieces of at most this size, so a line without end costs no more memory
/// than the message size limit allows.
const DATA_PIECE: usize = 64 * 1024;

/// The transaction being built.
#[derive(Default)]
struct Transaction {
    sender: Option<String>,
    recipients: Vec<String>,
    envid: Option<String>,
    /// Each recipient's NOTIFY (RFC 3461 §4.1), the default where none was given.
    notify: Vec<Notify>,
    /// Each recipient's ORCPT (RFC 3461 §4.2), decoded.
    orcpt: Vec<Option<String>>,
    /// MAIL declared SMTPUTF8 (RFC 6531 §3.4): addresses may be UTF-8.
    smtputf8: bool,
}

/// Postfix's refusal of a UTF-8 address in a transaction that did not declare SMTPUTF8.
const UNDECLARED_UTF8: &str = "553 5.6.7 Must declare SMTPUTF8 to send unicode address";

impl Transaction {
    /// Each recipient's own NOTIFY and ORCPT for the queue, when any differs from the
    /// default: the queue goes by them, for its reports and for what it passes on.
    fn recipient_dsn(&self) -> Vec<RecipientDsn> {
        let plain = self.notify.iter().all(|n| *n == Notify::default())
            && self.orcpt.iter().all(Option::is_none);
        if plain {
            return Vec::new();
        }
        self.recipients
            .iter()
            .zip(&self.notify)
            .zip(&self.orcpt)
            .map(|((address, notify), orcpt)| RecipientDsn {
                address: address.clone(),
                notify: *notify,
                orcpt: orcpt.clone(),
            })
            .collect()
    }

    /// The message's NOTIFY, for a queue that reads no recipient's own: a report goes when
    /// any recipient wants one.
    fn notify(&self) -> Notify {
        let never = Notify {
            failure: false,
            delay: false,
            success: false,
        };
        self.notify.iter().fold(never, |all, n| all.union(*n))
    }
}

/// Runs the session until QUIT or end of input. `queued` counts the messages queued, also
/// when the session ends in an error (input ended inside DATA, output gone): those were
/// answered 250 and must be delivered all the same.
pub fn session(
    config: &QueueConfig,
    input: &mut impl BufRead,
    output: &mut impl Write,
    login: &str,
    queued: &mut usize,
) -> std::io::Result<()> {
    let domain = config.domain();
    // Every reply printable US-ASCII (RFC 5321 §4.2), echoed addresses and option names
    // too: an 8-bit sender or a RCPT with ESC or NUL came back as it was (review).
    let reply = |output: &mut dyn Write, text: &str| -> std::io::Result<()> {
        output.write_all(ascii(text).as_bytes())?;
        output.write_all(b"\r\n")?;
        output.flush()
    };
    reply(output, &format!("220 {domain} ESMTP sealpost"))?;
    let mut tx = Transaction::default();
    let mut line = Vec::new();
    loop {
        if !read_line(input, &mut line, MAX_COMMAND)? {
            return Ok(());
        }
        if !line.ends_with(b"\n") && line.len() == MAX_COMMAND {
            // The rest of the line is read and dropped; nothing of it is a command.
            while read_line(input, &mut line, MAX_COMMAND)? && !line.ends_with(b"\n") {}
            reply(output, "500 5.5.2 Error: line too long")?;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if rest.is_empty() => {
                reply(output, &format!("501 5.5.4 Syntax: {verb} hostname"))?
            }
            "EHLO" => {
                tx = Transaction::default();
                reply(output, &format!("250-{domain}"))?;
                reply(output, "250-PIPELINING")?;
                reply(output, &format!("250-SIZE {}", config.max_message_bytes))?;
                reply(output, "250-8BITMIME")?;
                reply(output, "250-DSN")?;
                reply(output, "250-SMTPUTF8")?;
                reply(output, "250 ENHANCEDSTATUSCODES")?;
            }
            "HELO" => {
                tx = Transaction::default();
                reply(output, &format!("250 {domain}"))?;
            }
            "MAIL" => match path_argument(rest, "FROM:") {
                _ if tx.sender.is_some() => reply(output, "503 5.5.1 Error: nested MAIL command")?,
                Some((sender, params)) => {
                    // RFC 5321 §4.1.1.2 and Appendix C: a source route is accepted and
                    // ignored, as Postfix does (review: 501).
                    let sender = input::qualify(crate::rewrite::without_route(&sender), &domain);
                    // A control character (a tab in a quoted local part) cannot go on over
                    // SMTP (RFC 5321 §4.1.2): refused here, as on the command line.
                    if !sender.is_empty()
                        && (sender.parse::<lettre::Address>().is_err()
                            || sender.chars().any(char::is_control))
                    {
                        reply(
                            output,
                            &format!("501 5.1.7 Bad sender address syntax: <{sender}>"),
                        )?;
                        continue;
                    }
                    match mail_parameters(&params, config.max_message_bytes) {
                        Ok((_, smtputf8)) if !smtputf8 && !sender.is_ascii() => {
                            reply(output, UNDECLARED_UTF8)?
                        }
                        Ok((envid, smtputf8)) => {
                            tx.envid = envid;
                            tx.smtputf8 = smtputf8;
                            tx.sender = Some(sender);
                            reply(output, "250 2.1.0 Ok")?;
                        }
                        Err(refusal) => reply(output, &refusal)?,
                    }
                }
                None => reply(output, "501 5.5.4 Syntax: MAIL FROM:<address>")?,
            },
            "RCPT" => match path_argument(rest, "TO:") {
                _ if tx.sender.is_none() => reply(output, "503 5.5.1 Error: need MAIL command")?,
                Some((rcpt, params)) => {
                    // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted. A
                    // source route is ignored (§4.1.1.3, Appendix C).
                    let rcpt = input::qualify(crate::rewrite::without_route(&rcpt), &domain);
                    if rcpt.parse::<lettre::Address>().is_err()
                        || rcpt.chars().any(char::is_control)
                    {
                        reply(
                            output,
                            &format!("501 5.1.3 Bad recipient address syntax: <{rcpt}>"),
                        )?;
                        continue;
                    }
                    if !tx.smtputf8 && !rcpt.is_ascii() {
                        reply(output, UNDECLARED_UTF8)?;
                        continue;
                    }
                    let (notify, orcpt) = match rcpt_parameters(&params) {
                        Ok(given) => given,
                        Err(refusal) => {
                            reply(output, &refusal)?;
                            continue;
                        }
                    };
                    // Another spelling of one named before (case, quotes, an international
                    // domain's other form) is the same recipient: one copy, as the queue
                    // makes it.
                    let named = tx
                        .recipients
                        .iter()
                        .position(|r| crate::rewrite::same_recipient(r, &rcpt));
                    if let Some(i) = named {
                        // Named again: one copy, with every notice either RCPT asked for
                        // (none given stands for the default) and the first ORCPT.
                        tx.notify[i] = tx.notify[i].union(notify.unwrap_or_default());
                        if tx.orcpt[i].is_none() {
                            tx.orcpt[i] = orcpt;
                        }
                        reply(output, "250 2.1.5 Ok")?;
                    } else if tx.recipients.len() >= MAX_RECIPIENTS {
                        reply(output, "452 4.5.3 Error: too many recipients")?;
                    } else {
                        tx.recipients.push(rcpt);
                        tx.notify.push(notify.unwrap_or_default());
                        tx.orcpt.push(orcpt);
                        reply(output, "250 2.1.5 Ok")?;
                    }
                }
                None => reply(output, "501 5.5.4 Syntax: RCPT TO:<address>")?,
            },
            "DATA" => {
                // RFC 5321 §4.1.1.4: DATA takes no parameter (review: "DATA x" was taken).
                if !rest.trim().is_empty() {
                    reply(output, "501 5.5.4 Syntax: DATA")?;
                    continue;
                }
                if tx.sender.is_none() {
                    reply(output, "503 5.5.1 Error: need MAIL command")?;
                    continue;
                }
                if tx.recipients.is_empty() {
                    reply(output, "554 5.5.1 Error: no valid recipients")?;
                    continue;
                }
                reply(output, "354 End data with <CR><LF>.<CR><LF>")?;
                // A client that ends its commands with a bare LF (a shell script's printf)
                // ends its data the same way.
                let bare_lf_client = !line.ends_with(b"\r\n");
                let (data, too_large) = read_data(input, config.max_message_bytes, bare_lf_client)?;
                let outcome = if too_large {
                    "552 5.3.4 Message size exceeds fixed limit".to_string()
                } else {
                    match queue_data(config, &tx, &data, login, &domain) {
                        Ok(id) => {
                            *queued += 1;
                            format!("250 2.0.0 Ok: queued as {id}")
                        }
                        Err(Failure::TooLarge) => {
                            "552 5.3.4 Message size exceeds fixed limit".to_string()
                        }
                        // RFC 5321 §4.2: reply text is printable US-ASCII.
                        Err(Failure::Data(e)) => format!("554 5.6.0 {}", ascii(&e.to_string())),
                        Err(Failure::Spool(e)) => format!("451 4.3.0 {e}"),
                    }
                };
                tx = Transaction::default();
                reply(output, &outcome)?;
            }
            // RFC 5321 §4.1.1.5, §4.1.1.10: no parameters (Postfix: 501).
            "RSET" | "QUIT" if !rest.is_empty() => {
                reply(output, &format!("501 5.5.4 Syntax: {verb}"))?
            }
            "RSET" => {
                tx = Transaction::default();
                reply(output, "250 2.0.0 Ok")?;
            }
            "NOOP" => reply(output, "250 2.0.0 Ok")?,
            "VRFY" => reply(
                output,
                "252 2.0.0 Cannot verify; send some mail and we will try",
            )?,
            "HELP" => reply(
                output,
                "214 2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT",
            )?,
            "QUIT" => {
                reply(output, "221 2.0.0 Bye")?;
                return Ok(());
            }
            "" => reply(output, "500 5.5.2 Error: bad syntax")?,
            _ => reply(output, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

enum Failure {
    /// Over the limit once completed (bare LF made CRLF, fields added).
    TooLarge,
    Data(String),
    Spool(String),
}

/// Reply text as RFC 5321 §4.2 has it, printable US-ASCII: "§" (in sealpost's reasons) as
/// "section ", anything else outside it as "?".
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '§' => out.push_str("section "),
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// Checks MAIL's parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 3461 RET and ENVID); returns
/// the ENVID, or the reply refusing them.
fn mail_parameters(params: &[String], limit: usize) -> Result<(Option<String>, bool), String> {
    let mut envid = None;
    let mut smtputf8 = false;
    let mut seen = Vec::new();
    for p in params {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        let key = once(&mut seen, key)?;
        match key.as_str() {
            "SIZE" => match value.parse::<u64>() {
                Ok(size) if size > limit as u64 => {
                    return Err("552 5.3.4 Message size exceeds fixed limit".into())
                }
                Ok(_) => {}
                // RFC 1870 §6: up to 20 digits, which may not fit: larger than any limit
                // (Postfix: 552).
                Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err("552 5.3.4 Message size exceeds fixed limit".into())
                }
                Err(_) => return Err("501 5.5.4 Bad SIZE parameter".into()),
            },
            "BODY"
                if ["7BIT", "8BITMIME"]
                    .iter()
                    .any(|b| value.eq_ignore_ascii_case(b)) => {}
            // Well formed but not offered (RFC 3030's BINARYMIME): 555, as Postfix answers.
            "BODY" if value.eq_ignore_ascii_case("BINARYMIME") => {
                return Err("555 5.5.4 Unsupported option: BODY=BINARYMIME".into())
            }
            "BODY" => return Err("501 5.5.4 Bad BODY parameter".into()),
            "RET"
                if ["FULL", "HDRS"]
                    .iter()
                    .any(|r| value.eq_ignore_ascii_case(r)) => {}
            "RET" => return Err("501 5.5.4 Bad RET parameter".into()),
            // As for -V.
            "ENVID" => match xtext(value) {
                Some(id) if crate::queue::relay::envid_ok(&id) => envid = Some(id),
                _ => return Err("501 5.5.4 Bad ENVID parameter".into()),
            },
            "SMTPUTF8" if value.is_empty() && !p.contains('=') => smtputf8 = true,
            "SMTPUTF8" => return Err("501 5.5.4 Bad SMTPUTF8 parameter".into()),
            _ => return Err(format!("555 5.5.4 Unsupported option: {key}")),
        }
    }
    Ok((envid, smtputf8))
}

/// Checks RCPT's parameters (RFC 3461 NOTIFY and ORCPT); returns the NOTIFY given and the
/// ORCPT (decoded; one that is not printable ASCII is checked, then dropped), or the reply
/// refusing them.
fn rcpt_parameters(params: &[String]) -> Result<(Option<Notify>, Option<String>), String> {
    let mut notify = None;
    let mut orcpt = None;
    let mut seen = Vec::new();
    for p in params {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        let key = once(&mut seen, key)?;
        match key.as_str() {
            "NOTIFY" => match Notify::parse(value) {
                Some(n) => notify = Some(n),
                None => return Err("501 5.5.4 Bad NOTIFY parameter".into()),
            },
            // The original recipient is only for reports, which name the recipient as given.
            "ORCPT" => match xtext(value) {
                Some(v) if crate::queue::relay::orcpt_ok(&v) => orcpt = Some(v),
                // Well formed but for a control byte: taken, not passed on.
                Some(v) if crate::queue::relay::orcpt_form(&v) => {}
                _ => return Err("501 5.5.4 Bad ORCPT parameter".into()),
            },
            _ => return Err(format!("555 5.5.4 Unsupported option: {key}")),
        }
    }
    Ok((notify, orcpt))
}

/// `key` in upper case, unless a parameter of that name came before in the same command
/// (RFC 5321 §4.1.1.11 leaves no room for two: Postfix refuses them too).
fn once(seen: &mut Vec<String>, key: &str) -> Result<String, String> {
    let key = key.to_ascii_uppercase();
    if seen.contains(&key) {
        return Err(format!("501 5.5.4 Duplicate {key} parameter"));
    }
    seen.push(key.clone());
    Ok(key)
}

fn queue_data(
    config: &QueueConfig,
    tx: &Transaction,
    data: &[u8],
    login: &str,
    domain: &str,
) -> Result<String, Failure> {
    let now = queue::now();
    let id = spool::new_id(now);
    let sender = tx.sender.clone().unwrap_or_default();
    let login_address = format!("{login}@{domain}");
    let unique = format!("{id}.{}", spool::new_id(now));
    let message = input::complete(
        data,
        &input::Completion {
            from_address: if sender.is_empty() {
                &login_address
            } else {
                &sender
            },
            full_name: None,
            now,
            domain,
            unique: &unique,
        },
    )
    .map_err(|e| Failure::Data(e.to_string()))?;
    // read_data limited what came in; completing it can make it larger (bare LF to CRLF).
    if message.len() > config.max_message_bytes {
        return Err(Failure::TooLarge);
    }
    let submission = Submission {
        sender,
        recipients: tx.recipients.clone(),
        notify: tx.notify(),
        envid: tx.envid.clone(),
        recipient_dsn: tx.recipient_dsn(),
        message,
    };
    let incoming = config
        .ensure_incoming_to_submit()
        .map_err(|e| Failure::Spool(e.to_string()))?;
    spool::write(&incoming, &id, &submission, config.spool_file_limit()).map_err(|e| match e {
        spool::SpoolError::TooLarge { .. } => Failure::TooLarge,
        e => Failure::Spool(e.to_string()),
    })?;
    Ok(id)
}

/// Reads one line, up to and including its LF, into `line`, at most `max` bytes of it (a
/// longer line comes in pieces: no LF at the end). False at end of input.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<bool> {
    line.clear();
    while line.len() < max && !line.ends_with(b"\n") {
        let buffer = input.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        let room = &buffer[..buffer.len().min(max - line.len())];
        let take = room
            .iter()
            .position(|&b| b == b'\n')
            .map_or(room.len(), |at| at + 1);
        line.extend_from_slice(&room[..take]);
        input.consume(take);
    }
    Ok(!line.is_empty())
}

/// Reads DATA up to its end, removing dot-stuffing (RFC 5321 §4.5.2). Returns the data and
/// whether it went past `limit` (the rest is read and dropped so the session goes on).
///
/// From a client that sent DATA with CRLF, only <CRLF>.<CRLF> ends the data, as Postfix's
/// smtpd_forbid_bare_newline=normalize has it: a "." line after a line that ended in a bare
/// LF, or ending in one itself, is content. Otherwise text that such a client dot-stuffs only
/// after CRLF could end the data early and have its rest read as commands: a second message
/// the client never sent (SMTP smuggling). A `bare_lf_client` (its DATA line ended in a bare
/// LF) splits its lines at LF and dot-stuffs them so: a "." line after any line end ends its
/// data, as Postfix 3.7's smtpd takes it (review: such a session's data never ended, and its
/// message was not sent).
fn read_data(
    input: &mut impl BufRead,
    limit: usize,
    bare_lf_client: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    let mut too_large = false;
    let mut piece = Vec::new();
    // Where the piece starts: at a line's start, and after a CRLF (the DATA command's).
    let mut line_start = true;
    let mut after_crlf = true;
    let mut cr_last = false;
    loop {
        if !read_line(input, &mut piece, DATA_PIECE)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "end of input inside DATA",
            ));
        }
        if line_start && (piece == b".\r\n" && after_crlf || piece == b".\n" && bare_lf_client) {
            return Ok((data, too_large));
        }
        let content = match piece.strip_prefix(b".") {
            Some(rest) if line_start => rest,
            _ => &piece[..],
        };
        if data.len() + content.len() > limit {
            too_large = true;
            data = Vec::new();
        }
        if !too_large {
            data.extend_from_slice(content);
        }
        line_start = piece.ends_with(b"\n");
        if line_start {
            after_crlf = piece.ends_with(b"\r\n") || (piece == b"\n" && cr_last);
        }
        cr_last = piece.ends_with(b"\r");
    }
}

/// `FROM:<addr> PARAMS` → (addr, params). Accepts a space after the colon, as many clients send.
fn path_argument(rest: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start();
    let after = after.strip_prefix('<')?;
    // The first '>' outside a quoted string (`<"a>b"@x>`, RFC 5321 §4.1.2).
    let mut quoted = false;
    let mut escaped = false;
    let end = after.char_indices().find_map(|(at, c)| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(at),
            _ => {}
        }
        None
    })?;
    let path = after[..end].trim().to_string();
    let params = after[end + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3461 parameters of a -bs session: ENVID may hold spaces, xtext in lower case is
    /// taken, a parameter given twice or an ORCPT without a type or an address is refused.
    #[test]
    fn dsn_parameters_of_a_session() {
        let p = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            mail_parameters(&p(&["ENVID=batch+2042", "RET=hdrs"]), 100),
            Ok((Some("batch 42".into()), false))
        );
        assert_eq!(
            mail_parameters(&p(&["ENVID=id+2bx", "smtputf8"]), 100),
            Ok((Some("id+x".into()), true))
        );
        for bad in [
            &["ENVID=a", "envid=b"][..],
            &["RET=FULL", "RET=HDRS"],
            &["ENVID=+0D"],
            &["ENVID="],
            &["SMTPUTF8=yes"],
        ] {
            assert!(
                mail_parameters(&p(bad), 100)
                    .unwrap_err()
                    .starts_with("501 "),
                "{bad:?}"
            );
        }
        assert!(rcpt_parameters(&p(&["NOTIFY=NEVER", "ORCPT=rfc822;a+2Bb@x"])).is_ok());
        // A control byte: taken, not passed on; over 500 characters: refused.
        assert_eq!(rcpt_parameters(&p(&["ORCPT=x400;a+0Db"])), Ok((None, None)));
        let long = format!("ORCPT=rfc822;{}", "+3D".repeat(600));
        assert!(rcpt_parameters(&p(&[long.as_str()])).is_err());
        for bad in [
            &["NOTIFY=NEVER", "NOTIFY=SUCCESS"][..],
            &["ORCPT=;x"],
            &["ORCPT=rfc822;"],
            &["ORCPT=rfc822;a", "orcpt=rfc822;b"],
        ] {
            assert!(
                rcpt_parameters(&p(bad)).unwrap_err().starts_with("501 "),
                "{bad:?}"
            );
        }
    }

    /// Replies are printable US-ASCII whatever the client sent (RFC 5321 §4.2).
    #[test]
    fn replies_echo_no_8_bit_or_control_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            dir: dir.path().to_path_buf(),
            domain: Some("host.example".into()),
            ..QueueConfig::default()
        };
        std::fs::create_dir_all(config.incoming()).unwrap();
        let script: &[u8] = b"EHLO client\r\nMAIL FROM:<caf\xe9@example.org>\r\n\
MAIL FROM:<a@example.org>\r\nRCPT TO:<b\x1b[31m@example.org>\r\nRCPT TO:<b@example.org> X\x1b=1\r\nQUIT\r\n";
        let mut out = Vec::new();
        let mut queued = 0;
        session(&config, &mut &script[..], &mut out, "alice", &mut queued).unwrap();
        assert!(
            out.iter()
                .all(|&b| (b' '..=b'~').contains(&b) || b == b'\r' || b == b'\n'),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out).matches("\n5").count(), 3);
    }

    #[test]
    fn a_session_queues_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            dir: dir.path().to_path_buf(),
            domain: Some("host.example".into()),
            max_message_bytes: 4096,
            ..QueueConfig::default()
        };
        std::fs::create_dir_all(config.incoming()).unwrap();
        let script = "EHLO client\r\nMAIL FROM:<alice@example.org> SIZE=100\r\nRCPT TO:<bob@example.org>\r\nRCPT TO: <carol@example.org> NOTIFY=NEVER\r\nRCPT TO:<not an address>\r\nDATA\r\nSubject: hi\r\n\r\n..dot line\r\n.\r\nMAIL FROM:<alice@example.org>\r\nDATA\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nbinary \u{0} data\r\n.\r\nBOGUS\r\nQUIT\r\n";
        let mut out = Vec::new();
        let mut queued = 0;
        session(
            &config,
            &mut script.as_bytes(),
            &mut out,
            "alice",
            &mut queued,
        )
        .unwrap();
        assert_eq!(queued, 1);
        let out = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250", "501",
                "354", "250", "250", "554", "250", "354", "554", "502", "221"
            ],
            "{out}"
        );
        let files: Vec<_> = std::fs::read_dir(config.incoming()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let s = spool::decode(&std::fs::read(files[0].as_ref().unwrap().path()).unwrap()).unwrap();
        assert_eq!(s.recipients, ["bob@example.org", "carol@example.org"]);
        // bob gave no NOTIFY (the default), carol NEVER: reports go for failures.
        assert_eq!(s.notify.as_str(), "failure,delay");
        let text = String::from_utf8(s.message).unwrap();
        assert!(
            text.contains("\r\n\r\n.dot line\r\n"),
            "dot-stuffing removed: {text}"
        );
        assert!(text.starts_with("From: alice@example.org\r\n"), "{text}");
    }

    /// A source route is accepted and ignored (RFC 5321 Appendix C; review: 501), and a
    /// refusal's text is US-ASCII (RFC 5321 §4.2; review: a "§" went out as UTF-8).
    #[test]
    fn source_routes_are_ignored_and_replies_are_ascii() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let script = "EHLO client\r\nMAIL FROM:<@r.example:alice@example.org>\r\n\
            RCPT TO:<@r.example,@s.example:bob@example.org>\r\nDATA\r\nSubject: a\r\n\r\nx\r\n.\r\n\
            MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
            Subject: a\rBcc: x@example.org\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, codes, queued, _) = run_with_text(&config, script.as_bytes());
        assert_eq!(queued.len(), 1);
        assert!(out.is_ascii(), "{out}");
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "354", "250",
                "250", "250", "354", "554", "221"
            ],
            "{out}"
        );
        assert!(out.contains("(RFC 5322 section 2.2)"), "{out}");
        let s = &queued[0];
        assert_eq!(s.sender, "alice@example.org");
        assert_eq!(s.recipients, ["bob@example.org"]);
    }

    fn config(dir: &std::path::Path, limit: usize) -> QueueConfig {
        let config = QueueConfig {
            dir: dir.to_path_buf(),
            domain: Some("host.example".into()),
            max_message_bytes: limit,
            ..QueueConfig::default()
        };
        std::fs::create_dir_all(config.incoming()).unwrap();
        config
    }

    /// Two spellings of one recipient (case, a needless quote) are one, with every notice
    /// either RCPT asked for and the first ORCPT given; the others keep their own.
    #[test]
    fn spellings_of_a_recipient_share_their_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), QueueConfig::default().max_message_bytes);
        let script = "EHLO c\r\nMAIL FROM:<alice@example.org>\r\n\
            RCPT TO:<bob@example.org> NOTIFY=NEVER\r\n\
            RCPT TO:<\"Bob\"@example.org> NOTIFY=SUCCESS ORCPT=rfc822;b@x.example\r\n\
            RCPT TO:<carol@example.org>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\nQUIT\r\n";
        let (_, submissions, _) = run(&config, script.as_bytes());
        let s = &submissions[0];
        assert_eq!(s.recipients, ["bob@example.org", "carol@example.org"]);
        assert_eq!(s.recipient_dsn.len(), 2);
        assert_eq!(s.recipient_dsn[0].notify.as_str(), "success");
        assert_eq!(
            s.recipient_dsn[0].orcpt.as_deref(),
            Some("rfc822;b@x.example")
        );
        assert_eq!(s.recipient_dsn[1].notify, Notify::default());
    }

    /// Codes as Postfix answers them (review): a SIZE of more digits than fit is larger than
    /// the limit (552), BINARYMIME is well formed but not offered (555), RSET and QUIT take
    /// no parameter (501, and the session goes on).
    #[test]
    fn parameters_and_arguments_get_postfixs_codes() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let script = "EHLO c\r\nMAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n\
            MAIL FROM:<a@example.org> SIZE=12x\r\nMAIL FROM:<a@example.org> BODY=BINARYMIME\r\n\
            RSET x\r\nQUIT now\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
            DATA\r\nSubject: s\r\n\r\nx\r\n.\r\nQUIT\r\n";
        let (out, codes, queued, _) = run_with_text(&config, script.as_bytes());
        assert_eq!(
            codes[8..],
            ["552", "501", "555", "501", "501", "250", "250", "354", "250", "221"],
            "{out}"
        );
        assert_eq!(queued.len(), 1);
    }

    /// Runs `script`; returns the reply codes, the queued submissions and the session's end.
    fn run(config: &QueueConfig, script: &[u8]) -> (Vec<String>, Vec<Submission>, bool) {
        let (_, codes, submissions, ended) = run_with_text(config, script);
        (codes, submissions, ended)
    }

    /// [`run`], with the replies' text first.
    fn run_with_text(
        config: &QueueConfig,
        script: &[u8],
    ) -> (String, Vec<String>, Vec<Submission>, bool) {
        let mut out = Vec::new();
        let mut queued = 0;
        let ended = session(config, &mut &script[..], &mut out, "alice", &mut queued);
        let out = String::from_utf8(out).unwrap();
        let codes = out.lines().map(|l| l[..3].to_string()).collect();
        let mut queue: Vec<_> = std::fs::read_dir(config.incoming())
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        queue.sort();
        let submissions: Vec<Submission> = queue
            .iter()
            .map(|p| spool::decode(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        assert_eq!(queued, submissions.len());
        (out, codes, submissions, ended.is_ok())
    }

    /// A UTF-8 address needs SMTPUTF8 on MAIL (RFC 6531 §3.4), as Postfix answers (review: taken
    /// without it, though EHLO did not offer SMTPUTF8); with it, the message is queued.
    #[test]
    fn utf8_addresses_need_smtputf8() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let script = "EHLO c\r\nMAIL FROM:<jörg@example.org>\r\nMAIL FROM:<a@example.org>\r\n\
            RCPT TO:<jörg@example.org>\r\nRSET\r\nMAIL FROM:<jörg@example.org> SMTPUTF8\r\n\
            RCPT TO:<zoë@example.org>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\nQUIT\r\n";
        let (out, codes, queued, _) = run_with_text(&config, script.as_bytes());
        assert!(out.contains("250-SMTPUTF8\r\n"), "{out}");
        assert_eq!(
            codes[8..],
            ["553", "250", "553", "250", "250", "250", "354", "250", "221"],
            "{out}"
        );
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].sender, "jörg@example.org");
        assert_eq!(queued[0].recipients, ["zoë@example.org"]);
    }

    /// Only <CRLF>.<CRLF> ends DATA: a "." line after a bare LF is content, so text that ends
    /// the data early cannot have its rest read as a second transaction.
    #[test]
    fn a_dot_after_a_bare_newline_does_not_end_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let script = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\
            Subject: one\r\n\r\nhi\n.\r\nMAIL FROM:<ceo@example.org>\r\nRCPT TO:<x@example.org>\r\n\
            DATA\r\nSubject: smuggled\r\n\r\nx\n.\nstill one\r\n.\r\nQUIT\r\n";
        let (codes, queued, ended) = run(&config, script);
        assert!(ended);
        // EHLO's seven lines, MAIL, RCPT, DATA, the one message, QUIT.
        assert_eq!(codes[8..], ["250", "250", "354", "250", "221"]);
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].recipients, ["b@example.org"]);
        let text = String::from_utf8_lossy(&queued[0].message).into_owned();
        assert!(text.contains("MAIL FROM:<ceo@example.org>"), "{text}");
        assert!(text.ends_with("still one\r\n"), "{text}");
    }

    /// A client that speaks in bare LF throughout (`printf ... | sendmail -bs`) ends its data
    /// with ".\n", and dot-stuffs at LF: its message is queued whole, its QUIT answered.
    #[test]
    fn a_bare_lf_client_ends_its_data_with_a_bare_lf_dot() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let script = b"HELO c\nMAIL FROM:<a@example.org>\nRCPT TO:<b@example.org>\nDATA\n\
            Subject: lf\n\nhi\n..stuffed\n.\nQUIT\n";
        let (codes, queued, ended) = run(&config, script);
        assert!(ended);
        assert_eq!(codes, ["220", "250", "250", "250", "354", "250", "221"]);
        assert_eq!(queued.len(), 1);
        let text = String::from_utf8_lossy(&queued[0].message).into_owned();
        assert!(text.ends_with("\r\n\r\nhi\r\n.stuffed\r\n"), "{text}");
    }

    #[test]
    fn parameters_names_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let long = format!("NOOP {}\r\n", "x".repeat(5000));
        let lf_body = "\n".repeat(3000);
        let script = format!(
            "EHLO\r\nEHLO c\r\n{long}\
             MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n\
             MAIL FROM:<a@example.org> SIZE=big\r\n\
             MAIL FROM:<a@example.org> ENVID=a+ZZ\r\n\
             MAIL FROM:<a@example.org> ENVID=env+2B1 RET=HDRS BODY=8BITMIME\r\n\
             RCPT TO:<Postmaster> NOTIFY=NEVER\r\n\
             RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS\r\n\
             RCPT TO:<b@example.org> XFOO=1\r\n\
             RCPT TO:<b@example.org> NOTIFY=NEVER ORCPT=rfc822;b+40example.org\r\n\
             DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n\
             MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n\
             DATA\r\nSubject: s\n\n{lf_body}\r\n.\r\n\
             MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: cut\r\n"
        );
        let (codes, queued, ended) = run(&config, script.as_bytes());
        assert!(!ended, "input ended inside DATA");
        assert_eq!(
            codes,
            [
                "220", "501", "250", "250", "250", "250", "250", "250", "250", "500", "501", "501",
                "501", "250", "250", "501", "555", "250", "354", "250", "250", "250", "354", "552",
                "250", "250", "354"
            ]
        );
        // The one message queued is counted although the session ended in an error.
        assert_eq!(queued.len(), 1);
        let s = &queued[0];
        assert_eq!(s.recipients, ["Postmaster@host.example", "b@example.org"]);
        assert_eq!(s.envid.as_deref(), Some("env+1"));
        assert_eq!(s.notify.as_str(), "never");
    }

    #[test]
    fn paths() {
        assert_eq!(
            path_argument("FROM:<a@b.c> SIZE=10", "FROM:"),
            Some(("a@b.c".into(), vec!["SIZE=10".into()]))
        );
        assert_eq!(
            path_argument("from: <>", "FROM:"),
            Some((String::new(), vec![]))
        );
        assert_eq!(path_argument("TO:a@b.c", "TO:"), None);
        assert_eq!(
            path_argument("TO:<\"a>b\\\">\"@x> NOTIFY=NEVER", "TO:"),
            Some(("\"a>b\\\">\"@x".into(), vec!["NOTIFY=NEVER".into()]))
        );
    }
}
