//! The IMAP server's TLS: a certificate from the configuration, or a self-signed one made with
//! rcgen at the first start and kept (openssl-made self-signed certificates are CA:TRUE, which
//! rustls refuses as a server certificate; DESIGN.md §4).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in the file")]
    NoKey { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("imap.certificate and imap.key must be set together")]
    HalfConfigured,
    /// Neither is configured, and the self-signed pair could not be made (a full disk, a
    /// state directory not writable): no setting to fix.
    #[error("making the self-signed certificate: {0}")]
    SelfSigned(Box<TlsError>),
}

/// The IANA ALPN protocol ID of IMAP.
pub const ALPN_IMAP: &[u8] = b"imap";

/// Where the certificate and key are: configured, or the generated pair in `state_dir`.
pub fn acceptor(
    certificate: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
) -> Result<TlsAcceptor, TlsError> {
    let (cert_path, key_path) = match (certificate, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        (None, None) => {
            let pair = (
                state_dir.join("imap-cert.pem"),
                state_dir.join("imap-key.pem"),
            );
            if !pair.0.exists() || !pair.1.exists() {
                generate(&pair.0, &pair.1).map_err(|e| TlsError::SelfSigned(Box::new(e)))?;
            }
            pair
        }
        _ => return Err(TlsError::HalfConfigured),
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| pem_error(&cert_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&cert_path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::NoKey {
        path: key_path.clone(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // ALPACA (cross-protocol attacks on TLS): a client that names its application protocol
    // must name IMAP, or rustls ends the handshake with no_application_protocol. A client
    // that names none, as most IMAP clients do, is served as before.
    config.alpn_protocols = vec![ALPN_IMAP.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
    }
}

/// A self-signed certificate for localhost, 127.0.0.1 and ::1; the key is written 0600.
pub fn generate(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let pair = rcgen::generate_simple_self_signed(names)?;
    if let Some(dir) = key_path.parent() {
        fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_file(key_path, pair.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, pair.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(certificate = %cert_path.display(), "imap: generated a self-signed certificate");
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Nothing half-written stays behind (review: an empty key file on a full disk).
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io)
}
