//! SIP over TLS (RFC 3261 §26; SPEC W1): the certificate a `tls:` listener serves, and the
//! handshake between the TCP listener's accept and the shared connection layer (or, for `wss:`,
//! the WebSocket upgrade). Everything
//! after the handshake — framing, limits, keep-alives, the writer — is `connection.rs`'s.

use super::connection::{self, ConnectionSettings};
use crate::config::TlsFiles;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The acceptor of every `tls:` listener, from PEM files; one readable line when they are not
/// usable (missing, no certificate, a key that does not match).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let cert_path = files.cert.display();
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {cert_path}: no certificate in the file"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS handshake of an accepted connection. It counts as a message (SPEC W3): one that is
/// not done within `--tcp-message-timeout` — a peer that never finishes it, or plaintext on
/// the TLS port — closes the connection. `None` when it failed.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    settings: &ConnectionSettings,
    shutdown: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let accepting = acceptor.accept(stream);
    connection::handshake(
        "TLS handshake",
        "tls_handshake",
        peer,
        settings,
        shutdown,
        accepting,
    )
    .await
}
