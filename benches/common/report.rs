//! BENCHMARKS.md holds one `## ` section per benchmark; each benchmark rewrites only its own
//! section, so `make bench` can run them one after the other (or one alone) into one file.

use std::path::{Path, PathBuf};

/// What every benchmark does first: sets its environment to what a deployed sealpost would
/// have, and returns the `--out FILE` argument (`make bench` gives BENCHMARKS.md). Without it
/// the section is printed, not written: a trial run (fewer messages, under a profiler) never
/// replaces the figures of a full one.
///
/// `cargo bench` runs the benchmark with `LD_LIBRARY_PATH` naming its build directories, and
/// every program the benchmark starts would inherit it: gpg (the floor's and the one GPGME
/// starts), Postfix, Dovecot, sealpost. Each gpg start then looked for each of its shared
/// libraries in those directories first, 182 failed opens (strace) before it found them
/// where the system keeps them. No installed program has that variable, so it goes.
pub fn start() -> Option<PathBuf> {
    // The first thing main does, before the benchmark starts any thread.
    std::env::remove_var("LD_LIBRARY_PATH");
    std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
}

/// The first line of what `program args` prints (a version banner), trimmed; empty when it
/// cannot run.
pub fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Replaces the section that starts with the line `heading` (a `## ` line) up to the next
/// `## ` line, or appends it; `body` is everything after the heading line. Without a file the
/// section goes to standard output.
pub fn write_section(path: Option<&Path>, heading: &str, body: &str) {
    let Some(path) = path else {
        println!("{heading}\n\n{body}");
        return;
    };
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let mut out = String::new();
    let mut lines = old.lines().peekable();
    let mut replaced = false;
    while let Some(line) = lines.next() {
        if line == heading {
            while lines.peek().is_some_and(|l| !l.starts_with("## ")) {
                lines.next();
            }
            push_section(&mut out, heading, body);
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        push_section(&mut out, heading, body);
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn push_section(out: &mut String, heading: &str, body: &str) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(heading);
    out.push_str("\n\n");
    out.push_str(body.trim_end());
    out.push_str("\n\n");
}
