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
    /// The client-certificate verifier could not be built (e.g. no usable CA certificate).
    #[error("cannot verify client certificates: {0}")]
    Verifier(String),
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

/// How long a development certificate is valid: WebTransport's `serverCertificateHashes`
/// accepts only certificates valid for at most 14 days (ECDSA P-256, which rcgen uses).
pub const DEV_CERT_VALIDITY_SECS: u64 = 13 * 24 * 3600;
/// A development certificate that expires within this time is renewed at start.
pub const DEV_CERT_RENEW_SECS: u64 = 3 * 24 * 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the development certificate `cert` must be replaced at `now`: it expires within
/// [`DEV_CERT_RENEW_SECS`], is valid for longer than 14 days (an older, long-lived one), or its
/// validity cannot be read.
fn dev_cert_stale(cert: &CertificateDer<'_>, now: u64) -> bool {
    match validity(cert) {
        Some((not_before, not_after)) => {
            not_after.saturating_sub(not_before) > 14 * 24 * 3600
                || not_after < now.saturating_add(DEV_CERT_RENEW_SECS)
        }
        None => true,
    }
}

/// The SHA-256 hash of a certificate (DER), lower-case hex: what WebTransport's
/// `serverCertificateHashes` wants for a self-signed certificate.
pub fn cert_sha256_hex(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One DER item of `der`: (tag, contents, what follows).
fn der_item(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Seconds since 1970 of an X.509 UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn x509_time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy = num(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (num(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[..2])?, num(&rest[2..4])?);
    let (h, m, s) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian; Howard Hinnant's method).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// A certificate's validity (not before, not after), seconds since 1970.
fn validity(cert: &CertificateDer<'_>) -> Option<(u64, u64)> {
    let (_, certificate, _) = der_item(cert.as_ref())?;
    let (_, tbs, _) = der_item(certificate)?;
    let (tag, _, mut rest) = der_item(tbs)?;
    if tag != 0xa0 {
        // No explicit version: that item was the serial number.
        rest = der_item(tbs)?.2;
    } else {
        rest = der_item(rest)?.2; // serial number
    }
    let rest = der_item(rest)?.2; // signature algorithm
    let rest = der_item(rest)?.2; // issuer
    let (_, validity, _) = der_item(rest)?;
    let (t1, before, rest) = der_item(validity)?;
    let (t2, after, _) = der_item(rest)?;
    Some((x509_time(t1, before)?, x509_time(t2, after)?))
}

/// The development certificate in `dir` (`cert.pem`, `key.pem`): loaded if present and
/// valid for more than [`DEV_CERT_RENEW_SECS`] still, otherwise generated (self-signed
/// ECDSA P-256 for `localhost`, `127.0.0.1` and `::1`, valid for
/// [`DEV_CERT_VALIDITY_SECS`] — WebTransport's rules for certificates pinned by hash) and
/// written there, the key readable by the owner only. Returns the pair and whether it was
/// generated now.
pub fn dev_cert(dir: &Path) -> Result<(CertKey, bool), TlsError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        let loaded = load_pem(&cert_path, &key_path)?;
        let now = unix_now();
        if !dev_cert_stale(&loaded.chain[0], now) {
            return Ok((loaded, false));
        }
        tracing::info!(cert = %cert_path.display(), "the development certificate expires soon (or is not a short-lived one): renewing it");
        for path in [&cert_path, &key_path] {
            fs::remove_file(path).map_err(|source| TlsError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names)?;
    let now = i64::try_from(unix_now()).unwrap_or(0);
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    // An hour back for clocks slightly behind; the whole validity within 14 days.
    params.not_before = at(now - 3600);
    params.not_after = at(now - 3600 + DEV_CERT_VALIDITY_SECS as i64);
    let signing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&signing_key)?;
    let generated = rcgen::CertifiedKey { cert, signing_key };
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
    // One ticket per connection (rustls sends two by default): each is a stored session, and
    // a client resuming gets a fresh one, so a second would only take cache room (and memory
    // per connection) away from other clients.
    config.send_tls13_tickets = 1;
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

pub mod internal;
pub mod lean;

#[cfg(test)]
mod tests;
