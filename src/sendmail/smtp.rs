//! `sendmail -bs`: an SMTP session (RFC 5321) on stdin/stdout, as Symfony Mailer and other
//! libraries use it to learn per-recipient results. Every accepted DATA is queued like a
//! `sendmail -bm` submission; replies are written one per command, so a pipelining client
//! (RFC 2920) works as well.

use std::io::{BufRead, Write};

use super::flags::Notify;
use super::input;
use crate::queue::spool::{self, Submission};
use crate::queue::{self, QueueConfig};

/// The transaction being built.
#[derive(Default)]
struct Transaction {
    sender: Option<String>,
    recipients: Vec<String>,
    envid: Option<String>,
    notify: Option<Notify>,
}

/// Runs the session until QUIT or end of input; returns how many messages were queued.
pub fn session(
    config: &QueueConfig,
    input: &mut impl BufRead,
    output: &mut impl Write,
    login: &str,
) -> std::io::Result<usize> {
    let domain = config.domain();
    let reply = |output: &mut dyn Write, text: &str| -> std::io::Result<()> {
        output.write_all(text.as_bytes())?;
        output.write_all(b"\r\n")?;
        output.flush()
    };
    reply(output, &format!("220 {domain} ESMTP sealpost"))?;
    let mut tx = Transaction::default();
    let mut queued = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(queued);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                tx = Transaction::default();
                reply(output, &format!("250-{domain}"))?;
                reply(output, "250-PIPELINING")?;
                reply(output, &format!("250-SIZE {}", config.max_message_bytes))?;
                reply(output, "250-8BITMIME")?;
                reply(output, "250-DSN")?;
                reply(output, "250 ENHANCEDSTATUSCODES")?;
            }
            "HELO" => {
                tx = Transaction::default();
                reply(output, &format!("250 {domain}"))?;
            }
            "MAIL" => match path_argument(rest, "FROM:") {
                _ if tx.sender.is_some() => reply(output, "503 5.5.1 Error: nested MAIL command")?,
                Some((sender, params))
                    if sender.is_empty() || sender.parse::<lettre::Address>().is_ok() =>
                {
                    if let Some(size) = param(&params, "SIZE").and_then(|s| s.parse::<usize>().ok())
                    {
                        if size > config.max_message_bytes {
                            reply(output, "552 5.3.4 Message size exceeds fixed limit")?;
                            continue;
                        }
                    }
                    tx.envid = param(&params, "ENVID");
                    tx.sender = Some(sender);
                    reply(output, "250 2.1.0 Ok")?;
                }
                Some((sender, _)) => reply(
                    output,
                    &format!("501 5.1.7 Bad sender address syntax: <{sender}>"),
                )?,
                None => reply(output, "501 5.5.4 Syntax: MAIL FROM:<address>")?,
            },
            "RCPT" => match path_argument(rest, "TO:") {
                _ if tx.sender.is_none() => reply(output, "503 5.5.1 Error: need MAIL command")?,
                Some((rcpt, params)) if rcpt.parse::<lettre::Address>().is_ok() => {
                    if let Some(n) = param(&params, "NOTIFY").and_then(|n| Notify::parse(&n)) {
                        tx.notify = Some(n);
                    }
                    input::push_unique(&mut tx.recipients, &rcpt);
                    reply(output, "250 2.1.5 Ok")?;
                }
                Some((rcpt, _)) => reply(
                    output,
                    &format!("501 5.1.3 Bad recipient address syntax: <{rcpt}>"),
                )?,
                None => reply(output, "501 5.5.4 Syntax: RCPT TO:<address>")?,
            },
            "DATA" => {
                if tx.sender.is_none() {
                    reply(output, "503 5.5.1 Error: need MAIL command")?;
                    continue;
                }
                if tx.recipients.is_empty() {
                    reply(output, "554 5.5.1 Error: no valid recipients")?;
                    continue;
                }
                reply(output, "354 End data with <CR><LF>.<CR><LF>")?;
                let (data, too_large) = read_data(input, config.max_message_bytes)?;
                let outcome = if too_large {
                    "552 5.3.4 Message size exceeds fixed limit".to_string()
                } else {
                    match queue_data(config, &tx, &data, login, &domain) {
                        Ok(id) => {
                            queued += 1;
                            format!("250 2.0.0 Ok: queued as {id}")
                        }
                        Err(Failure::Data(e)) => format!("554 5.6.0 {e}"),
                        Err(Failure::Spool(e)) => format!("451 4.3.0 {e}"),
                    }
                };
                tx = Transaction::default();
                reply(output, &outcome)?;
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
                return Ok(queued);
            }
            "" => reply(output, "500 5.5.2 Error: bad syntax")?,
            _ => reply(output, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

enum Failure {
    Data(String),
    Spool(String),
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
    let submission = Submission {
        sender,
        recipients: tx.recipients.clone(),
        notify: tx.notify.unwrap_or_default(),
        envid: tx.envid.clone(),
        message,
    };
    let incoming = config
        .ensure_incoming()
        .map_err(|e| Failure::Spool(e.to_string()))?;
    spool::write(&incoming, &id, &submission).map_err(|e| Failure::Spool(e.to_string()))?;
    Ok(id)
}

/// Reads DATA up to the lone ".", removing dot-stuffing (RFC 5321 §4.5.2). Returns the data
/// and whether it went past `limit` (the rest is read and discarded so the session goes on).
fn read_data(input: &mut impl BufRead, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    let mut too_large = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "end of input inside DATA",
            ));
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok((data, too_large));
        }
        let content = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + content.len() > limit {
            too_large = true;
            data.clear();
        }
        if !too_large {
            data.extend_from_slice(content);
        }
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
    let end = after.find('>')?;
    let path = after[..end].trim().to_string();
    let params = after[end + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

fn param(params: &[String], name: &str) -> Option<String> {
    params.iter().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case(name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let queued = session(&config, &mut script.as_bytes(), &mut out, "alice").unwrap();
        assert_eq!(queued, 1);
        let out = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "501", "354",
                "250", "250", "554", "250", "354", "554", "502", "221"
            ],
            "{out}"
        );
        let files: Vec<_> = std::fs::read_dir(config.incoming()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let s = spool::decode(&std::fs::read(files[0].as_ref().unwrap().path()).unwrap()).unwrap();
        assert_eq!(s.recipients, ["bob@example.org", "carol@example.org"]);
        assert_eq!(s.notify.as_str(), "never");
        let text = String::from_utf8(s.message).unwrap();
        assert!(
            text.contains("\r\n\r\n.dot line\r\n"),
            "dot-stuffing removed: {text}"
        );
        assert!(text.starts_with("From: alice@example.org\r\n"), "{text}");
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
    }
}
