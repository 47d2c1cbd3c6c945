//! TLS on the client port (rustls with the `ring` provider): `wss://` without a proxy in front.
//! Certificates and key are PEM files, read once at start; a bad file is a start-up error.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor from a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("tls_cert_file {cert_file:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert_file {cert_file:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls_cert_file {cert_file:?}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("tls_key_file {key_file:?}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not match: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
