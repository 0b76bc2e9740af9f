//! The `sealpost` binary: parses arguments, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Capabilities given to this process as ambient ones (sealpost-queue.service gives
    // CAP_DAC_READ_SEARCH, to read the users' drop files) stay this process's own: its gpg,
    // gpg-agent and gpg-worker children must not inherit them (review: the agent it started
    // had CAP_DAC_READ_SEARCH, able to read any file). The call changes nothing else, and
    // fails harmlessly on a kernel without ambient capabilities.
    // SAFETY: prctl with integer arguments only; no memory is passed.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    // Past a file size limit (`ulimit -f`, a cron job's or an MTA's) the kernel kills the
    // writer with SIGXFSZ: sendmail died without a word and left its half-written spool file
    // (review). Ignored, as Postfix's commands ignore it, the write fails with EFBIG instead,
    // and that is an error like a full disk: reported, cleaned up, the exit code a sysexits one.
    // SAFETY: setting a signal's disposition to SIG_IGN; no handler runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // No core file: every sealpost process holds mail, decrypted or not yet encrypted (review:
    // a sendmail -bs aborted mid-DATA with cores on left the message body in ./core). Not
    // dumpable also keeps other processes of the same user from reading its memory.
    // SAFETY: setrlimit and prctl with constant arguments; nothing else is touched.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    // A message buffer of a megabyte or more is mapped on its own and given back when freed.
    // glibc's threshold otherwise rises to the largest buffer freed so far (up to 32 MB), and
    // later ones come from the heap, which seldom shrinks: delivering a 22 MB ciphertext left
    // 197 MB resident, 141 MB with this.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt with constant arguments, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    // Linked as /usr/sbin/sendmail (or mailq, newaliases): the sendmail(1) command line.
    // Read as bytes: `std::env::args` panics on an argument that is not UTF-8 (a Latin-1 -F
    // name), which would exit 101 instead of a sysexits code (review).
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv: Vec<String> = raw
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if matches!(program.as_str(), "sendmail" | "mailq" | "newaliases") {
        return sealpost::sendmail::main_os(&program, &raw[1..], None);
    }
    // `sealpost [--config FILE] sendmail WORDS...`: the words go to sendmail as they are.
    // Through clap, a `--` right after `sendmail` was taken as clap's own end of options and
    // lost, so `sealpost sendmail -- -x@y` read -x@y as flags, unlike `sendmail -- -x@y`
    // (review).
    if let Some((config, at)) = sendmail_words(&raw) {
        return sealpost::sendmail::main_os("sendmail", &raw[at..], config.as_deref());
    }
    // `deliver` runs as an MTA's delivery agent, where any exit code but 75 (and the few
    // it documents) bounces the message: a typo in the MTA's command line or a panic must keep
    // the mail queued instead (EX_TEMPFAIL) until the administrator sees the log.
    let delivering = argv.iter().skip(1).any(|a| a == "deliver");
    if delivering {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("sealpost: internal error, the MTA keeps the message: {info}");
            std::process::exit(75);
        }));
    }
    match sealpost::cli::Cli::try_parse() {
        Ok(args) => sealpost::cli::main(args),
        Err(e) if e.use_stderr() => {
            // Usage errors exit 64 (EX_USAGE, sysexits(3)) with clap's reason on one line; 75
            // for deliver (above).
            let text = e.to_string();
            let reason: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!(
                "sealpost: {}",
                reason.join(" ").trim_start_matches("error: ")
            );
            ExitCode::from(if delivering { 75 } else { 64 })
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            ExitCode::SUCCESS
        }
    }
}

/// For `sealpost [--config FILE] sendmail ...`: the `--config` given (None without one) and
/// where the words after `sendmail` start. None for any other command line, and for one
/// clap must answer (`--config` twice or without a value). Read as bytes: a path need not be
/// UTF-8 (review: `--config=` with a Latin-1 path went to clap, which ate the `--`).
fn sendmail_words(raw: &[std::ffi::OsString]) -> Option<(Option<std::path::PathBuf>, usize)> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut config = None;
    let mut i = 1;
    while let Some(word) = raw.get(i) {
        let bytes = word.as_bytes();
        let given = if bytes == b"--config" {
            i += 2;
            raw.get(i - 1)?.clone()
        } else if let Some(path) = bytes.strip_prefix(b"--config=") {
            i += 1;
            std::ffi::OsString::from_vec(path.to_vec())
        } else {
            return (bytes == b"sendmail").then_some((config, i + 1));
        };
        if config.replace(std::path::PathBuf::from(given)).is_some() {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sendmail_words;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    fn words(list: &[&[u8]]) -> Vec<OsString> {
        list.iter()
            .map(|w| OsString::from_vec(w.to_vec()))
            .collect()
    }

    /// The words after `sendmail` go to sendmail untouched, `--` first among them, with the
    /// `--config` given in either form, a path that is not UTF-8 too; anything else is clap's.
    #[test]
    fn sendmail_words_are_passed_on_as_they_are() {
        let latin1 = b"/etc/s\xe9alpost.toml";
        for (line, config, at) in [
            (words(&[b"sealpost", b"sendmail", b"--", b"-t"]), None, 2),
            (
                words(&[b"sealpost", b"--config", latin1, b"sendmail", b"--"]),
                Some(latin1),
                4,
            ),
            (
                words(&[b"sealpost", b"--config=/etc/s\xe9alpost.toml", b"sendmail"]),
                Some(latin1),
                3,
            ),
        ] {
            let (got, start) = sendmail_words(&line).expect("a sendmail command line");
            assert_eq!(start, at);
            assert_eq!(
                got.map(|p| p.into_os_string().into_vec()),
                config.map(|c| c.to_vec())
            );
        }
        for line in [
            words(&[b"sealpost", b"sync", b"--once"]),
            words(&[b"sealpost", b"--config"]),
            words(&[
                b"sealpost",
                b"--config",
                b"a",
                b"--config",
                b"b",
                b"sendmail",
            ]),
            words(&[b"sealpost", b"-V"]),
        ] {
            assert!(sendmail_words(&line).is_none(), "{line:?}");
        }
    }
}
