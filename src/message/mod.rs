//! Pure MIME handling for the outgoing path: no I/O here.
//!
//! - [`parse`]: splits a raw message into its header fields (exact bytes, in order) and learns
//!   what the rewrite core needs (From address, whether it is already encrypted).
//! - [`canonical`]: builds the 7-bit-safe, CRLF content entity that gets signed (RFC 3156 §3/§5).
//! - [`mime`]: renders the RFC 3156 containers (multipart/signed, multipart/encrypted), the
//!   RFC 9788 header-protected payload and the Autocrypt header.
//! - [`encoding`]: quoted-printable and base64 writers with the RFC 3156 extra rules.

pub mod canonical;
pub mod encoding;
pub mod mime;
pub mod parse;

pub use parse::{HeaderField, ParsedMessage};

/// Why a byte string cannot be treated as a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("empty input: no message to process")]
    Empty,
    #[error("not an RFC 5322 message: {0}")]
    NotAMessage(&'static str),
}
