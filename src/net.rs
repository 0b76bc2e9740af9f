//! Client-side network helpers shared by the relay (SMTP) and the sync (IMAP): the TLS client
//! configuration and the loopback rule for cleartext connections.

use std::net::IpAddr;
use std::sync::Arc;

/// Whether `host` names this machine's loopback interface (where cleartext is allowed: the
/// traffic never crosses a network).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS client that verifies the server's certificate against `ca_pem` (PEM certificates)
/// when given, else against the system's CA store, and names `alpn` as its application
/// protocol when given (IANA's registry has "imap" but nothing for SMTP).
pub fn tls_client_config(
    ca_pem: Option<&[u8]>,
    alpn: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable certificate: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system store may hold certificates rustls cannot use; skip them.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to trust".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Ok(Arc::new(client))
}
