//! The `sealpost` binary: parses arguments, sets up logging and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = sealpost::cli::Cli::parse();
    sealpost::cli::main(args)
}
