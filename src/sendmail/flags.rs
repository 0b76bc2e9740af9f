//! The sendmail(1) command line, with Postfix's meanings. Parsed by hand: the historical syntax
//! (`-oi` is option `o` with argument `i`, `-FCronDaemon` glues the argument, `-q` alone differs
//! from `-q30m`) is getopt(3), which clap does not speak. Postfix's option string is
//! `A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx`; every letter in it is accepted here, and
//! contrib/man/sealpost-sendmail.8 says for each what sealpost does with it.

use std::path::PathBuf;

/// What the invocation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// -bm (the default): read one message on stdin and queue it.
    Enqueue,
    /// -bs: an SMTP session on stdin/stdout.
    Smtp,
    /// -bp, or invoked as `mailq`: list the queue.
    ListQueue,
    /// -q: run the queue now.
    RunQueue,
    /// -bi, -I, or invoked as `newaliases`: sealpost has no alias database.
    NewAliases,
    /// -bh, -bH, -qINTERVAL: accepted and nothing to do (Postfix exits 0 for these too).
    Nothing,
}

/// DSN NOTIFY (RFC 3461 §4.1), from -N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    pub failure: bool,
    pub delay: bool,
    pub success: bool,
}

impl Default for Notify {
    /// Postfix's default: 'delay, failure'.
    fn default() -> Self {
        Notify {
            failure: true,
            delay: true,
            success: false,
        }
    }
}

impl Notify {
    /// Every notice either asks for.
    pub fn union(self, other: Notify) -> Notify {
        Notify {
            failure: self.failure || other.failure,
            delay: self.delay || other.delay,
            success: self.success || other.success,
        }
    }

    /// "never", or a comma-separated list of failure, delay, success.
    pub fn parse(value: &str) -> Option<Notify> {
        let mut n = Notify {
            failure: false,
            delay: false,
            success: false,
        };
        let words: Vec<String> = value
            .split([',', ' '])
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if words == ["never"] {
            return Some(n);
        }
        if words.is_empty() {
            return None;
        }
        for w in &words {
            match w.as_str() {
                "failure" => n.failure = true,
                "delay" => n.delay = true,
                "success" => n.success = true,
                _ => return None,
            }
        }
        Some(n)
    }

    pub fn as_str(&self) -> String {
        let mut words = Vec::new();
        if self.failure {
            words.push("failure");
        }
        if self.delay {
            words.push("delay");
        }
        if self.success {
            words.push("success");
        }
        if words.is_empty() {
            "never".into()
        } else {
            words.join(",")
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub mode: Mode,
    /// -f / -r: the envelope sender ("" is the null sender, `<>`).
    pub sender: Option<String>,
    /// -F: the sender's full name, used only when the message has no From field.
    pub full_name: Option<String>,
    /// -t: recipients also from To/Cc/Bcc (or the Resent- ones).
    pub extract_recipients: bool,
    /// Without -i/-oi a line holding only "." ends the message (sendmail's historic default).
    pub dot_ends_message: bool,
    /// -N.
    pub notify: Notify,
    /// -V: the envelope id for delivery status notifications (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// -C: the configuration file (sealpost's TOML, not Postfix's main.cf).
    pub config: Option<PathBuf>,
    /// -qI: run only this queue entry.
    pub queue_id: Option<String>,
    /// -v: more detail on stderr.
    pub verbose: u8,
    pub recipients: Vec<String>,
}

/// A command line that cannot be honoured: exit 64 (EX_USAGE) with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Option letters that take an argument (Postfix's getopt string).
const WITH_ARGUMENT: &str = "ABCFLNORVXbefhopqr";
/// Option letters without an argument.
const WITHOUT_ARGUMENT: &str = "GIUcimntvx";

/// Which of the arguments after the program name hold the value of -F (glued, `-FName`, or the
/// next word), by the same getopt walk as [`parse`]: a full name that is not UTF-8 text (a
/// Latin-1 name from the password file) is the one argument read with replacement characters
/// rather than refused, so a script's mail is not lost over its sender's display name.
pub fn full_name_arguments(args: &[&[u8]]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        i += 1;
        if arg == b"-q" {
            continue;
        }
        let Some(letters) = arg
            .strip_prefix(b"-")
            .filter(|l| !l.is_empty() && l != b"-")
        else {
            break;
        };
        for (at, &letter) in letters.iter().enumerate() {
            let letter = char::from(letter);
            if WITHOUT_ARGUMENT.contains(letter) {
                continue;
            }
            if !letter.is_ascii() || !WITH_ARGUMENT.contains(letter) {
                return found;
            }
            let glued = at + 1 < letters.len();
            if letter == 'F' {
                found.push(if glued { i - 1 } else { i });
            }
            if !glued {
                i += 1;
            }
            break;
        }
    }
    found
}

/// Parses the arguments after the program name. `program` is argv[0]'s file name: `mailq`
/// lists the queue and `newaliases` rebuilds aliases, as with Postfix.
pub fn parse<S: AsRef<str>>(program: &str, args: &[S]) -> Result<Invocation, UsageError> {
    let mut inv = Invocation {
        mode: match program {
            "mailq" => Mode::ListQueue,
            "newaliases" => Mode::NewAliases,
            _ => Mode::Enqueue,
        },
        sender: None,
        full_name: None,
        extract_recipients: false,
        dot_ends_message: true,
        notify: Notify::default(),
        envid: None,
        config: None,
        queue_id: None,
        verbose: 0,
        recipients: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_ref();
        i += 1;
        if arg == "--" {
            inv.recipients
                .extend(args[i..].iter().map(|a| a.as_ref().to_string()));
            break;
        }
        // `-q` alone is not getopt-compatible (its argument is optional).
        if arg == "-q" {
            inv.mode = Mode::RunQueue;
            continue;
        }
        if arg == "-XV" {
            return Err(usage("-XV (VERP) is not supported"));
        }
        // sendmail(1) has no long options: named whole, not as its letter "-" (review:
        // `--help` read "unknown option --").
        if arg.starts_with("--") {
            return Err(usage(&format!(
                "unknown option {arg} (sendmail has no long options; see sealpost-sendmail(8))"
            )));
        }
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty()) else {
            // getopt stops at the first operand; the rest are recipients.
            inv.recipients
                .extend(args[i - 1..].iter().map(|a| a.as_ref().to_string()));
            break;
        };
        for (at, letter) in letters.char_indices() {
            if WITHOUT_ARGUMENT.contains(letter) {
                flag(&mut inv, letter)?;
                continue;
            }
            if !WITH_ARGUMENT.contains(letter) {
                return Err(usage(&format!("unknown option -{letter}")));
            }
            let rest = &letters[at + letter.len_utf8()..];
            let value = if !rest.is_empty() {
                rest.to_string()
            } else if i < args.len() {
                i += 1;
                args[i - 1].as_ref().to_string()
            } else {
                return Err(usage(&format!("option -{letter} needs a value")));
            };
            option(&mut inv, letter, &value)?;
            break;
        }
    }
    if inv.extract_recipients && inv.mode != Mode::Enqueue {
        return Err(usage("-t can be used only in delivery mode"));
    }
    if !inv.recipients.is_empty() && !matches!(inv.mode, Mode::Enqueue | Mode::Nothing) {
        return Err(usage("recipients are allowed only in delivery mode"));
    }
    Ok(inv)
}

fn usage(text: &str) -> UsageError {
    UsageError(text.to_string())
}

fn flag(inv: &mut Invocation, letter: char) -> Result<(), UsageError> {
    match letter {
        't' => inv.extract_recipients = true,
        'i' => inv.dot_ends_message = false,
        'v' => inv.verbose = inv.verbose.saturating_add(1),
        'I' => inv.mode = Mode::NewAliases,
        'n' => return Err(usage("-n (no aliasing) is not supported")),
        // -G, -U (gateway / initial submission), -c, -m, -x: historic, no effect (as in Postfix).
        _ => {}
    }
    Ok(())
}

fn option(inv: &mut Invocation, letter: char, value: &str) -> Result<(), UsageError> {
    match letter {
        'f' | 'r' => {
            // Read as an address list, as Postfix reads it: `Alice <alice@x>` is alice@x;
            // `<>` and "" are the null sender.
            let found = super::address::scan(value.as_bytes());
            let sender = match found.first() {
                Some(first) => first.address.as_str(),
                None => value.trim().trim_start_matches('<').trim_end_matches('>'),
            };
            // A domain's root dot (`alice@example.org.`) goes, as for the recipients.
            let sender = super::input::without_root_dot(sender);
            // A bare local name is qualified later with [queue] domain: any a recipient may
            // be (`bounce+123`, review: refused here while taken as a recipient).
            let bare = super::address::is_local_name(sender);
            // A bare name must still make an address once qualified ("a..b" would not, and
            // every copy and the bounce would then fail after the caller heard success).
            let valid = if bare {
                format!("{sender}@localhost")
                    .parse::<lettre::Address>()
                    .is_ok()
            } else {
                sender.parse::<lettre::Address>().is_ok()
            };
            // A control character (a tab in a quoted local part) cannot go on over SMTP
            // (RFC 5321 §4.1.2): no sender either (review). Nor anywhere in the value: a CR LF
            // before an angle address made that the sender, quietly (review).
            if value.chars().any(char::is_control)
                || (!sender.is_empty() && (!valid || sender.chars().any(char::is_control)))
            {
                return Err(usage(&format!("-{letter} {value}: not an email address")));
            }
            inv.sender = Some(sender.to_string());
        }
        'F' => inv.full_name = Some(value.to_string()),
        'C' => inv.config = Some(PathBuf::from(value)),
        // A bad DSN value is ignored with a warning, as Postfix's sendmail does: refused, the
        // mail of a script that never looks at the exit code would be lost over a detail.
        'N' => match Notify::parse(value) {
            Some(notify) => inv.notify = notify,
            None => super::say(format_args!(
                "sendmail: warning: bad -N option value {value:?} -- ignored (say never, or a \
                 list of failure, delay, success)"
            )),
        },
        'V' => {
            if !crate::queue::relay::envid_ok(value) {
                super::say(format_args!(
                    "sendmail: warning: bad -V option value -- ignored (1 to 100 printable \
                     ASCII characters)"
                ));
            } else {
                inv.envid = Some(value.to_string());
            }
        }
        'B' if value != "7BIT" && value != "8BITMIME" => {
            return Err(usage("-B needs 7BIT or 8BITMIME"));
        }
        'b' => {
            inv.mode = match value.chars().next() {
                Some('m') => Mode::Enqueue,
                Some('s') => Mode::Smtp,
                Some('p') => Mode::ListQueue,
                Some('i') => Mode::NewAliases,
                Some('h' | 'H') => Mode::Nothing,
                Some('d') => return Err(usage(
                    "-bd: sealpost has no SMTP daemon mode; run `sealpost milter` behind an MTA",
                )),
                Some('v') => return Err(usage("-bv (address verification) is not supported")),
                _ => return Err(usage(&format!("unsupported: -b{value}"))),
            }
        }
        // -oi is -i, as is anything after it (`-oiTrue`, `-oi=true`: Postfix reads only the
        // option's first letter; review: the message was cut at a lone "."); -o7, -o8, -om,
        // -oem, -odi, -oA..., and `-o x` are ignored, as Postfix ignores them (they fall
        // through to the last arm).
        'o' if value.starts_with('i') => inv.dot_ends_message = false,
        'q' => {
            if let Some(id) = value.strip_prefix('I') {
                if id.is_empty() {
                    return Err(usage("specify: -qIqueueid"));
                }
                inv.mode = Mode::RunQueue;
                inv.queue_id = Some(id.to_string());
            } else if value.starts_with(|c: char| c.is_ascii_digit()) {
                // -q30m: a queue-run interval for a daemon; sealpost's timer does this.
                inv.mode = Mode::Nothing;
            } else {
                return Err(usage(&format!(
                    "-q{value} is not implemented (use -q or -qIqueueid)"
                )));
            }
        }
        'X' => return Err(usage(&format!("unsupported: -X{value}"))),
        // -B with a valid value; -A, -L, -O, -R, -e, -h, -p: historic or MTA-internal, ignored as Postfix ignores them.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(args: &[&str]) -> Invocation {
        parse("sendmail", args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn callers_command_lines() {
        // git send-email
        let i = ok(&["-i", "bob@example.org", "carol@example.org"]);
        assert_eq!(i.mode, Mode::Enqueue);
        assert!(!i.dot_ends_message && !i.extract_recipients);
        assert_eq!(i.recipients, ["bob@example.org", "carol@example.org"]);
        // cron
        let i = ok(&["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t"]);
        assert_eq!(i.full_name.as_deref(), Some("CronDaemon"));
        assert!(i.extract_recipients && !i.dot_ends_message && i.recipients.is_empty());
        // PHP mail()
        let i = ok(&["-t", "-i"]);
        assert!(i.extract_recipients && !i.dot_ends_message);
        // mutt
        for form in ["-oiTrue", "-oi=true"] {
            assert!(!ok(&[form, "bob@example.org"]).dot_ends_message, "{form}");
        }
        assert!(ok(&["-oIgnoreDots", "bob@example.org"]).dot_ends_message);
        let i = ok(&["-oem", "-oi", "--", "bob@example.org", "-weird@example.org"]);
        assert_eq!(i.recipients, ["bob@example.org", "-weird@example.org"]);
        assert!(!i.dot_ends_message);
        // Symfony Mailer
        assert_eq!(ok(&["-bs"]).mode, Mode::Smtp);
    }

    #[test]
    fn full_name_arguments_are_found_glued_or_separate() {
        let find = |args: &[&[u8]]| full_name_arguments(args);
        assert_eq!(find(&[b"-F", b"J\xfcrgen", b"bob@x"]), [1]);
        assert_eq!(find(&[b"-FJ\xfcrgen", b"-i", b"bob@x"]), [0]);
        assert_eq!(find(&[b"-tiF", b"x", b"-f", b"a@x", b"-Fy"]), [1, 4]);
        // -f's value is not a full name, nor is anything after an operand or `--`.
        assert!(find(&[b"-f", b"-F", b"bob@x"]).is_empty());
        assert!(find(&[b"bob@x", b"-F", b"x"]).is_empty());
        assert!(find(&[b"--", b"-Fx"]).is_empty());
        assert_eq!(find(&[b"-q", b"-Fx"]), [1]);
    }

    /// A sender with a control character (a tab in a quoted local part) is refused: SMTP
    /// cannot carry it (review).
    #[test]
    fn a_sender_with_a_control_character_is_refused() {
        assert!(parse("sendmail", &["-f", "\"a\tb\"@example.org", "bob@x.org"]).is_err());
        assert!(parse("sendmail", &["-f", "\"a b\"@example.org", "bob@x.org"]).is_ok());
        // Nor one around the address: a CR LF before an angle address made that the sender.
        let injected = "a@example.org\r\nRCPT TO:<x@y.example>";
        assert!(parse("sendmail", &["-f", injected, "bob@x.org"]).is_err());
    }

    #[test]
    fn arguments_glued_or_separate() {
        let i = ok(&["-f", "alice@example.org", "-Fx y", "bob@example.org"]);
        assert_eq!(i.sender.as_deref(), Some("alice@example.org"));
        assert_eq!(i.full_name.as_deref(), Some("x y"));
        let i = ok(&["-falice@example.org", "-ti", "-o", "i", "bob@example.org"]);
        assert_eq!(i.sender.as_deref(), Some("alice@example.org"));
        assert!(i.extract_recipients && !i.dot_ends_message);
        assert_eq!(ok(&["-f", "<>"]).sender.as_deref(), Some(""));
        assert_eq!(
            ok(&["-r", "<a@b.example>"]).sender.as_deref(),
            Some("a@b.example")
        );
        let i = ok(&[
            "-N", "never", "-V", "env-1", "-C", "/x.toml", "-B", "8BITMIME",
        ]);
        assert_eq!(i.notify, Notify::parse("never").unwrap());
        assert_eq!(i.envid.as_deref(), Some("env-1"));
        assert_eq!(i.config, Some(PathBuf::from("/x.toml")));
    }

    #[test]
    fn modes() {
        assert_eq!(ok(&["-bp"]).mode, Mode::ListQueue);
        assert_eq!(
            parse("mailq", &[] as &[&str]).unwrap().mode,
            Mode::ListQueue
        );
        assert_eq!(ok(&["-q"]).mode, Mode::RunQueue);
        let i = ok(&["-qIABC123"]);
        assert_eq!(
            (i.mode, i.queue_id.as_deref()),
            (Mode::RunQueue, Some("ABC123"))
        );
        assert_eq!(ok(&["-q30m"]).mode, Mode::Nothing);
        assert_eq!(ok(&["-bi"]).mode, Mode::NewAliases);
        assert_eq!(ok(&["-I"]).mode, Mode::NewAliases);
        assert_eq!(ok(&["-bh"]).mode, Mode::Nothing);
        // Ignored historic options still consume their argument.
        let i = ok(&[
            "-h",
            "17",
            "-L",
            "label",
            "-e",
            "x",
            "-oA/etc/aliases",
            "bob@example.org",
        ]);
        assert_eq!(i.recipients, ["bob@example.org"]);
    }

    #[test]
    fn usage_errors() {
        for (args, want) in [
            (&["-k"][..], "unknown option -k"),
            (&["--help"][..], "unknown option --help"),
            (&["-f"][..], "option -f needs a value"),
            (&["-f", "not an address"][..], "not an email address"),
            (&["-f", "a..b"][..], "not an email address"),
            (&["-bd"][..], "-bd"),
            (&["-bv", "x@example.org"][..], "-bv"),
            (&["-bz"][..], "unsupported: -bz"),
            (&["-n"][..], "-n"),
            (&["-B", "BINARYMIME"][..], "-B"),
            (&["-qRexample.org"][..], "not implemented"),
            (&["-qI"][..], "-qIqueueid"),
            (&["-XV"][..], "VERP"),
            (&["-bp", "-t"][..], "-t can be used only"),
            (
                &["-bp", "bob@example.org"][..],
                "recipients are allowed only",
            ),
        ] {
            let e = parse("sendmail", args).unwrap_err().0;
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_sender_with_a_display_name_is_its_address() {
        let inv = parse(
            "sendmail",
            &["-f", "Alice <alice@example.org>", "b@example.org"],
        );
        assert_eq!(inv.unwrap().sender.as_deref(), Some("alice@example.org"));
        for null in ["<>", ""] {
            let inv = parse("sendmail", &["-f", null, "b@example.org"]).unwrap();
            assert_eq!(inv.sender.as_deref(), Some(""), "{null:?}");
        }
        let inv = parse("sendmail", &["-f", "<root>", "b@example.org"]).unwrap();
        assert_eq!(inv.sender.as_deref(), Some("root"));
        let inv = parse("sendmail", &["-f", "alice@example.org.", "b@example.org"]).unwrap();
        assert_eq!(inv.sender.as_deref(), Some("alice@example.org"));
        // Any bare name a recipient may be (review: `bounce+123` was refused).
        let inv = parse("sendmail", &["-f", "bounce+123", "b@example.org"]).unwrap();
        assert_eq!(inv.sender.as_deref(), Some("bounce+123"));
    }

    /// As Postfix's sendmail: a bad -N or -V value is ignored (with a warning), the message
    /// still goes.
    #[test]
    fn bad_dsn_values_are_ignored() {
        let inv = parse(
            "sendmail",
            &["-N", "sometimes", "-V", "a\tb", "bob@example.org"],
        )
        .unwrap();
        assert_eq!(inv.notify, Notify::default());
        assert_eq!(inv.envid, None);
        // A space is printable (Postfix's allprint() takes it too).
        let inv = parse("sendmail", &["-V", "batch 42", "bob@example.org"]).unwrap();
        assert_eq!(inv.envid.as_deref(), Some("batch 42"));
        assert_eq!(inv.recipients, ["bob@example.org"]);
    }

    #[test]
    fn notify_values() {
        let n = Notify::parse("delay,failure").unwrap();
        assert!(n.failure && n.delay && !n.success);
        assert_eq!(Notify::parse("SUCCESS").unwrap().as_str(), "success");
        assert_eq!(Notify::parse("never").unwrap().as_str(), "never");
        assert!(Notify::parse("").is_none());
        assert!(Notify::parse("never,failure").is_none());
    }
}
