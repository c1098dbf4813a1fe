use super::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn dev_in(dir: &tempfile::TempDir) -> CertKey {
    dev_cert(dir.path()).unwrap().0
}

#[test]
fn dev_cert_is_generated_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, generated) = dev_cert(dir.path()).unwrap();
    assert!(generated);
    let (second, generated) = dev_cert(dir.path()).unwrap();
    assert!(!generated);
    assert_eq!(first.chain, second.chain);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.path().join(DEV_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn x509_times_read_as_unix_seconds() {
    assert_eq!(x509_time(0x18, b"20250101000000Z"), Some(1_735_689_600));
    assert_eq!(x509_time(0x17, b"250101000000Z"), Some(1_735_689_600));
    assert_eq!(x509_time(0x17, b"700101000001Z"), Some(1));
    assert_eq!(x509_time(0x17, b"2501010000Z"), None);
}

#[test]
fn dev_cert_is_short_lived_ecdsa_and_renewed_when_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = dev_cert(dir.path()).unwrap();
    let (before, after) = validity(&cert.chain[0]).unwrap();
    let now = unix_now();
    assert!(after - before <= 14 * 24 * 3600, "WebTransport's 14 days");
    assert!(after > now + 12 * 24 * 3600 && before <= now);
    assert!(
        matches!(&cert.key, PrivateKeyDer::Pkcs8(_)),
        "rcgen's PKCS#8 key"
    );
    let signer = rustls::crypto::ring::sign::any_supported_type(&cert.key).unwrap();
    assert_eq!(signer.algorithm(), rustls::SignatureAlgorithm::ECDSA);
    assert_eq!(cert_sha256_hex(&cert.chain[0]).len(), 64);

    // A long-lived development certificate (as older versions wrote) is replaced at start.
    let old = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    fs::write(dir.path().join(DEV_CERT_FILE), old.cert.pem()).unwrap();
    fs::write(
        dir.path().join(DEV_KEY_FILE),
        old.signing_key.serialize_pem(),
    )
    .unwrap();
    let (renewed, generated) = dev_cert(dir.path()).unwrap();
    assert!(generated);
    assert_ne!(renewed.chain[0], old.cert.der().clone());
    // So is one about to expire; a fresh one is kept.
    assert!(dev_cert_stale(&renewed.chain[0], now + 11 * 24 * 3600));
    assert!(!dev_cert_stale(&renewed.chain[0], now));
}

#[test]
fn load_errors_name_the_file_and_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = load_pem(&missing, &missing).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "hello, not a certificate\n").unwrap();
    let err = load_pem(&garbage, &garbage).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

    let cert = dev_in(&dir);
    let err = load_pem(&cert.cert_path, &garbage).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
}

#[test]
fn a_key_from_another_certificate_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    dev_in(&a);
    dev_in(&b);
    let err = load_pem(&a.path().join(DEV_CERT_FILE), &b.path().join(DEV_KEY_FILE)).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
}

/// Runs one handshake over an in-memory pipe; returns the negotiated (version, ALPN) or the
/// client's error.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<(rustls::ProtocolVersion, Option<Vec<u8>>), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let name = ServerName::try_from("localhost").unwrap();
    let result = async {
        let mut tls = TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        let (_, conn) = tls.get_ref();
        Ok((
            conn.protocol_version().unwrap(),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        ))
    }
    .await;
    let _ = server_task.await;
    result
}

fn client_trusting(dir: &tempfile::TempDir, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config(
        roots_from_pem(&dir.path().join(DEV_CERT_FILE)).unwrap(),
        alpn,
    )
}

#[tokio::test]
async fn tls13_with_alpn_h2_or_http11() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_config(&dev_in(&dir), ALPN_TCP).unwrap();
    for (offer, want) in [
        (ALPN_TCP, &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let (version, alpn) = handshake(server.clone(), client_trusting(&dir, offer))
            .await
            .unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(alpn.as_deref(), Some(want));
    }
}

#[tokio::test]
async fn tls12_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_config(&dev_in(&dir), ALPN_TCP).unwrap();
    let roots = roots_from_pem(&dir.path().join(DEV_CERT_FILE)).unwrap();
    let tls12_only = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = handshake(server, Arc::new(tls12_only)).await.unwrap_err();
    assert!(err.to_lowercase().contains("version"), "{err}");
}

#[tokio::test]
async fn unknown_alpn_is_refused_and_raw_alpn_is_separate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dev_in(&dir);
    let tcp = server_config(&cert, ALPN_TCP).unwrap();
    let err = handshake(tcp, client_trusting(&dir, ALPN_RAW))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("protocol"), "{err}");
    let raw = server_config(&cert, ALPN_RAW).unwrap();
    let (_, alpn) = handshake(raw, client_trusting(&dir, ALPN_RAW))
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(ALPN_RAW[0]));
}
