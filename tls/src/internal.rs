//! Mutual TLS for the internal port (`internal.tls = true`): both sides present a
//! certificate signed by the deployment's internal CA and verify the other's against it
//! (TLS 1.3, ALPN `h2`). The shared internal key is still sent on every call.
//!
//! Without configured files, [`dev_pki`] generates a development CA and one leaf certificate
//! (for `localhost`, `127.0.0.1`, `::1`; usable as server and client) into a directory, once;
//! other processes of the deployment point at copies of the same three files.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;

use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;

use crate::{CertKey, TlsError, load_pem, roots_from_pem};

/// File names of the development PKI inside its directory.
pub const CA_FILE: &str = "ca.pem";
/// The leaf certificate (signed by the CA).
pub const CERT_FILE: &str = "node.pem";
/// The leaf's private key.
pub const KEY_FILE: &str = "node-key.pem";

/// Where the internal port's CA, certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// PEM: the CA certificate(s) peers' certificates must chain to.
    pub ca: PathBuf,
    /// PEM: this process's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: its private key.
    pub key: PathBuf,
}

/// The development PKI in `dir`: loaded if `dir` holds it, otherwise generated (a CA whose
/// key is not kept, and a leaf for local names signed by it; the leaf's key readable by the
/// owner only). Returns its paths and whether it was generated now.
pub fn dev_pki(dir: &Path) -> Result<(Pki, bool), TlsError> {
    let pki = Pki {
        ca: dir.join(CA_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };
    if pki.ca.exists() || pki.cert.exists() || pki.key.exists() {
        return Ok((pki, false));
    }
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "roam internal development CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut leaf = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "roam internal node");
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let write = |path: &Path, contents: &str, mode: u32| -> Result<(), TlsError> {
        crate::write_private(path, contents.as_bytes(), mode).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write(&pki.key, &leaf_key.serialize_pem(), 0o600)?;
    write(&pki.cert, &leaf_cert.pem(), 0o644)?;
    write(&pki.ca, &ca_cert.pem(), 0o644)?;
    tracing::info!(dir = %dir.display(), "generated a development CA and certificate for the internal port");
    Ok((pki, true))
}

fn cert_key(pki: &Pki) -> Result<CertKey, TlsError> {
    load_pem(&pki.cert, &pki.key)
}

/// The internal port's server configuration: TLS 1.3, ALPN `h2`, and a client certificate
/// chaining to `pki.ca` required.
pub fn server_config(pki: &Pki) -> Result<Arc<ServerConfig>, TlsError> {
    let cert = cert_key(pki)?;
    let roots = Arc::new(roots_from_pem(&pki.ca)?);
    let verifier = WebPkiClientVerifier::builder(roots)
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain, cert.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of a caller of the internal port: TLS 1.3, ALPN `h2`, trusting
/// `pki.ca`, presenting `pki.cert`.
pub fn client_config(pki: &Pki) -> Result<Arc<ClientConfig>, TlsError> {
    let cert = cert_key(pki)?;
    let roots = roots_from_pem(&pki.ca)?;
    let mut config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_client_auth_cert(cert.chain, cert.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `host:port` and runs the TLS handshake with `config` (the server's name is
/// `host`, checked against its certificate).
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp =
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A client TLS stream on the internal port, as hyper reads and writes it.
pub type ClientStream = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

/// The connector for tonic's `Endpoint::connect_with_connector`: each connection is HTTP/2
/// inside mutual TLS to the URI's host and port ([`connect`] with the client configuration
/// from [`client_config`]). Used by the edge's link to core and core's ID service client.
#[derive(Clone)]
pub struct Connector(Arc<ClientConfig>);

impl Connector {
    /// A connector presenting `config`'s certificate.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self(config)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = ClientStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ClientStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("localhost");
            let port = uri.port_u16().unwrap_or(80);
            connect(config, host, port).await.map(TokioIo::new)
        })
    }
}

/// Accepts the TLS handshake of a caller on the internal port.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_sides_verify_each_other_and_a_caller_without_a_certificate_is_refused() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (pki, generated) = dev_pki(dir.path()).unwrap();
        assert!(generated);
        assert_eq!(dev_pki(dir.path()).unwrap(), (pki.clone(), false), "reused");
        let server = server_config(&pki).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                results.push(accept(server.clone(), tcp).await.is_ok());
            }
            results
        });
        let client = client_config(&pki).unwrap();
        let ok = connect(client, "127.0.0.1", port).await;
        assert!(ok.is_ok(), "{ok:?}");
        // A client that trusts the CA but has no certificate of its own.
        let roots = roots_from_pem(&pki.ca).unwrap();
        let anonymous = crate::client_config(roots, &[b"h2"]);
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(anonymous)
            .connect(name, tcp)
            .await
            .unwrap();
        // TLS 1.3: the client learns of the refusal on its first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 16];
        assert!(matches!(tls.read(&mut buf).await, Ok(0) | Err(_)));
        assert_eq!(serve.await.unwrap(), [true, false]);
    }
}
