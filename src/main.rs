//! The `sealpost` binary: parses arguments, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match sealpost::cli::Cli::try_parse() {
        Ok(args) => sealpost::cli::main(args),
        Err(e) if e.use_stderr() => {
            // Usage errors exit 64 (EX_USAGE, sysexits(3)) with clap's one-line reason.
            let text = e.to_string();
            eprintln!(
                "sealpost: {}",
                text.lines()
                    .next()
                    .unwrap_or("usage error")
                    .trim_start_matches("error: ")
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
