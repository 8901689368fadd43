//! A SIP-over-TLS client for tests (SPEC W1), trusting the throwaway test CA in
//! `tests/data/tls/` that signed the server's certificate (127.0.0.1, localhost).

use super::TestDb;
use super::sip::Reply;
use registrar::config::{Overrides, Settings};
use registrar::server::{self, Running};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

pub fn cert() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls/cert.pem")
}

pub fn ca() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls/ca.pem")
}

pub fn key() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls/key.pem")
}

/// A server on `db` with `listen` and the test certificate for its `tls:`/`wss:` listeners,
/// authentication and the HTTP listener off unless `flags` say otherwise.
pub async fn serve(db: &TestDb, listen: &[&str], flags: Overrides) -> Running {
    let flags = Overrides {
        listen: listen.iter().map(|l| l.to_string()).collect(),
        http_listen: flags.http_listen.or(Some("off".into())),
        auth: flags.auth.or(Some(registrar::auth::AuthMode::Off)),
        tls_cert: Some(cert()),
        tls_key: Some(key()),
        ..flags
    };
    let settings = Settings::load(None, Some(db.url.clone()), flags).expect("settings");
    server::start(&settings, db.second_store().await)
        .await
        .expect("server starts")
}

/// A TLS connection to `addr`, handshake done, trusting the test CA.
pub async fn connect(addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca()).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

pub struct Tls {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Tls {
    /// A TLS connection to the server's first `tls:` listener, handshake done.
    pub async fn to(server: &Running) -> Tls {
        Tls {
            stream: connect(server.tls[0]).await,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Whatever arrives within `wait` (at least one read), or `None` when closed or silent.
    pub async fn read_some(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => Some(chunk[..n].to_vec()),
            _ => None,
        }
    }

    /// The next framed reply, or `None` if the connection closed or `wait` passed.
    pub async fn recv(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = super::sip::take_frame(&mut self.buf) {
                return Some(Reply::parse(&frame));
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn ask(&mut self, text: &str) -> Reply {
        self.send(text.as_bytes()).await;
        self.recv(Duration::from_secs(5))
            .await
            .expect("a reply within 5 s")
    }
}
