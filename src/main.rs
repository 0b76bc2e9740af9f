//! The `sealpost` binary: parses arguments, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Linked as /usr/sbin/sendmail (or mailq, newaliases): the sendmail(1) command line.
    let argv: Vec<String> = std::env::args().collect();
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if matches!(program.as_str(), "sendmail" | "mailq" | "newaliases") {
        return sealpost::sendmail::main(&program, &argv[1..], None);
    }
    match sealpost::cli::Cli::try_parse() {
        Ok(args) => sealpost::cli::main(args),
        Err(e) if e.use_stderr() => {
            // Usage errors exit 64 (EX_USAGE, sysexits(3)) with clap's reason on one line.
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
            ExitCode::from(64)
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            ExitCode::SUCCESS
        }
    }
}
