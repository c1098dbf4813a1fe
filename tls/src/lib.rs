//! # roam-tls — every TLS decision Roam makes, in one place
//!
//! Owns the rustls configuration of every listener and client: TLS 1.3 only (1.2 and older
//! are refused at the handshake), the ALPN sets ([`ALPN_TCP`] for the client port, [`ALPN_QUIC`]
//! for HTTP/3, [`ALPN_RAW`] for the raw frame port), PEM loading with errors that name the
//! file and the fault ([`load_pem`]), the self-signed development certificate that
//! `roam serve` generates into `<data>/tls/` when none is configured ([`dev_cert`]), and the
//! one crypto provider (ring) installed at start-up ([`install_crypto_provider`]).
//!
//! Flow: [`install_crypto_provider`] once → [`load_pem`] or [`dev_cert`] gives a
//! [`CertKey`] → [`server_config`] with an ALPN set gives an `Arc<ServerConfig>` for
//! tokio-rustls or quinn. Clients (the SDK, tests, `roam bench`) use [`client_config`] with
//! the roots from [`roots_from_pem`].
//!
//! The edge's TCP listeners terminate TLS with [`lean`]: [`lean::LeanTlsAcceptor`] runs the
//! handshake with rustls over the configuration from [`server_config`] and yields a
//! [`lean::LeanTlsStream`] (tokio `AsyncRead` + `AsyncWrite`) whose TLS 1.3 record layer —
//! framing, padding, alerts, `KeyUpdate`, the alert owed for every fault — is ours
//! (`lean/records.rs`), so that an idle connection holds no buffers. It lives here, not in
//! the edge, because which alert a malformed record earns or when a key is refreshed is a TLS
//! decision like the protocol versions; a crate of its own would have split that policy
//! again for no gain (it needs the same rustls, and the edge is its only user). Apart from
//! that stream, which is generic over its transport, this crate does no I/O beyond reading
//! and writing PEM.

#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;

/// ALPN for the TCP client port: HTTP/2 first, then HTTP/1.1.
pub const ALPN_TCP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for the QUIC client port.
pub const ALPN_QUIC: &[&[u8]] = &[b"h3"];
/// ALPN for the raw frame port (frames back to back on the TLS stream).
pub const ALPN_RAW: &[&[u8]] = &[b"roam/1"];

/// File names of the development certificate inside its directory.
pub const DEV_CERT_FILE: &str = "cert.pem";
/// File name of the development key inside its directory.
pub const DEV_KEY_FILE: &str = "key.pem";

/// What went wrong with a certificate, a key or a TLS configuration.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read (missing, unreadable).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no PEM certificate.
    #[error("{path} holds no PEM certificate (expected a \"BEGIN CERTIFICATE\" block)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A file holds no usable PEM private key, or is not PEM at all.
    #[error("{path} holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1): {detail}")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// A PEM block is malformed.
    #[error("{path} is not valid PEM: {detail}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{path}: unsupported private key")]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The private key is not the certificate's.
    #[error("private key {key} does not match certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Writing the development certificate failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// rcgen could not generate the development certificate.
    #[error("cannot generate a development certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Config(#[from] rustls::Error),
}

/// A certificate chain and its private key, checked to belong together.
#[derive(Debug)]
pub struct CertKey {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the chain was read from (for messages and the start-up banner).
    pub cert_path: PathBuf,
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent; call at start-up
/// (and in tests) before building any configuration.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads the certificates of a PEM file (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Loads a certificate chain and its key from PEM files and checks that they match.
pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<CertKey, TlsError> {
    install_crypto_provider();
    let chain = load_certs(cert_path)?;
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoPrivateKey {
        path: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
        TlsError::UnsupportedKey {
            path: key_path.to_owned(),
            source,
        }
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
    })?;
    Ok(CertKey {
        chain,
        key,
        cert_path: cert_path.to_owned(),
    })
}

/// A self-signed certificate for `names`, in memory, with the roots that trust it: for
/// tests and tools that run a private server and its clients in one process.
pub fn self_signed(names: &[&str]) -> Result<(CertKey, RootCertStore), TlsError> {
    let generated = rcgen::generate_simple_self_signed(
        names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    )?;
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone())?;
    let cert_key = CertKey {
        chain: vec![cert],
        key,
        cert_path: PathBuf::from("(in memory)"),
    };
    Ok((cert_key, roots))
}

/// The development certificate in `dir` (`cert.pem`, `key.pem`): loaded if present,
/// otherwise generated (self-signed for `localhost`, `127.0.0.1` and `::1`) and written there,
/// the key readable by the owner only. Returns the pair and whether it was generated now.
pub fn dev_cert(dir: &Path) -> Result<(CertKey, bool), TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        return Ok((load_pem(&cert_path, &key_path)?, false));
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let write = |path: &Path, contents: &str, mode: u32| -> Result<(), TlsError> {
        write_private(path, contents.as_bytes(), mode).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write(&key_path, &generated.signing_key.serialize_pem(), 0o600)?;
    write(&cert_path, &generated.cert.pem(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed development certificate");
    Ok((load_pem(&cert_path, &key_path)?, true))
}

fn write_private(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A server configuration: TLS 1.3 only, the given ALPN protocols, no client certificates.
pub fn server_config(cert: &CertKey, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Resumption sessions a QUIC listener remembers (each a few hundred bytes): a returning
/// client within the last this-many handshakes resumes, with 0-RTT.
pub const QUIC_SESSION_CACHE: usize = 16 * 1024;

/// A server configuration for QUIC (quinn's `QuicServerConfig` wraps it): the same
/// certificate and policy as [`server_config`] — TLS 1.3 only, which QUIC requires anyway —
/// with the ALPN set of the QUIC listener ([`ALPN_QUIC`] or [`ALPN_RAW`]), and 0-RTT:
/// resumption is stateful (a server-side cache of [`QUIC_SESSION_CACHE`] sessions; rustls
/// allows early data only so) and each ticket is taken from the cache when used, so a
/// replayed ClientHello finds none and gets a full handshake. What early data may *do* is the
/// edge's decision (only idempotent openings; see roam_edge::quic).
pub fn quic_server_config(cert: &CertKey, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // quinn wants 0 or u32::MAX: QUIC's own flow control bounds early data.
    config.max_early_data_size = u32::MAX;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(QUIC_SESSION_CACHE);
    Ok(Arc::new(config))
}

/// A client configuration for QUIC: as [`client_config`], with early data (0-RTT) on when
/// resuming. Reuse one configuration across connections: its session store is what lets a
/// returning client resume.
pub fn quic_client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    install_crypto_provider();
    let mut config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_early_data = true;
    Arc::new(config)
}

/// Root certificates from a PEM file: e.g. the development certificate, for clients of a
/// development server.
pub fn roots_from_pem(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A client configuration: TLS 1.3 only, trusting `roots`, offering `alpn`.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    install_crypto_provider();
    let mut config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub mod lean;

#[cfg(test)]
mod tests;
