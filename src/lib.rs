//! sealpost: an OpenPGP mail system. Outgoing mail gets one signed and, when the recipient has
//! a key, encrypted copy per recipient; incoming mail is decrypted into a local store and
//! served over IMAP (later issues).
//!
//! # Architecture
//!
//! ```text
//!  raw message + envelope ──> message::parse ──> rewrite::plan (pure: policy × key lookups)
//!                                    │                         │ per recipient: encrypt | sign |
//!                                    ▼                         │ clear | pass | reject | defer
//!                         message::canonical (7-bit, CRLF      ▼
//!                         content entity, built once) ──> rewrite::Rewriter ──> keys::KeyService
//!                                    │                    (one signature,       (GPGME on a bounded
//!                                    ▼                     one encryption        worker pool, deadline
//!                         message::mime (RFC 3156 +        per copy)             per op, cached lookups)
//!                         RFC 9788 containers)                 │
//!                                                              ▼
//!                                                  copies → front-ends (cli `rewrite`, milter,
//!                                                  sendmail drop-in) relay them
//! ```
//!
//! - [`config`]: the TOML configuration and its errors (file, line, key).
//! - [`logging`]: stderr / syslog (mail facility) / journald, and the logging policy.
//! - [`keys`]: GnuPG through GPGME: key resolution, signing, encryption, decryption; in the
//!   binary GPGME runs in `sealpost gpg-worker` child processes (see [`keys::worker`]).
//! - [`message`]: pure MIME: parsing, canonical form, PGP/MIME rendering.
//! - [`rewrite`]: the per-recipient core every outgoing front-end calls.
//! - [`store`]: the local message store (SQLite): content once by hash, state per mailbox,
//!   expunge tombstones, the change journal; `sealpost import`.
//! - [`imap`]: the local IMAP server over the store (TLS/STARTTLS, IMAP4rev1 + extensions);
//!   pure layers for summaries, sections, names, rendering, search.
//! - [`incoming`]: the `imap`, `import` and `passwd` subcommands.
//! - [`milter`]: the core inside Postfix: in-place rewrite for one recipient, journaled
//!   re-injection of the other recipients' copies.
//! - [`sendmail`]: the /usr/sbin/sendmail drop-in (Postfix flags, -bs, exit codes).
//! - [`queue`]: its durable queue: drop directory, SQLite state per recipient, the runner,
//!   the relay (lettre, TLS required), non-delivery reports.
//! - [`shutdown`]: SIGTERM/SIGINT for the daemons.
//! - [`cli`]: the `sealpost` subcommands (`rewrite`, `demo`, `imap`, `import`, `passwd`,
//!   `deliver`, `sendmail`, `queue`, `milter`).
//!
//! # Logging policy
//!
//! One info line per recipient decision with the message id, the recipient, the decision and
//! the key fingerprint or reason. Failures that defer mail are warnings. Protocol transcripts
//! only at trace level. Passwords, key material and message bodies are never logged.

pub mod cli;
pub mod config;
pub mod demo;
pub mod imap;
pub mod inbound;
pub mod incoming;
pub mod keys;
pub mod logging;
pub mod message;
pub mod milter;
pub mod net;
pub mod queue;
pub mod reserve;
pub mod rewrite;
pub mod sendmail;
pub mod shutdown;
pub mod store;
pub mod sync;
