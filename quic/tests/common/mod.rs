//! What the endpoint's tests share: a self-signed certificate and the configurations.

#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

pub(crate) const ALPN: &[u8] = b"test";

pub(crate) fn configs() -> (quinn_proto::ServerConfig, quinn::ClientConfig) {
    configs_with_alpn(ALPN, |_| {})
}

pub(crate) fn configs_with(
    server_transport: impl FnOnce(&mut quinn_proto::TransportConfig),
) -> (quinn_proto::ServerConfig, quinn::ClientConfig) {
    configs_with_alpn(ALPN, server_transport)
}

pub(crate) fn configs_with_alpn(
    alpn: &[u8],
    server_transport: impl FnOnce(&mut quinn_proto::TransportConfig),
) -> (quinn_proto::ServerConfig, quinn::ClientConfig) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = c.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![alpn.to_vec()];
    // 0-RTT: a stateful session cache (rustls offers early data only then).
    server.max_early_data_size = u32::MAX;
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    let server = quinn_proto::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    client.enable_early_data = true;
    let client = quinn_proto::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(server));
    let mut transport = quinn_proto::TransportConfig::default();
    server_transport(&mut transport);
    server.transport_config(Arc::new(transport));
    (server, quinn::ClientConfig::new(Arc::new(client)))
}

/// An endpoint with `config` that runs `serve` on each connection it accepts, in a task.
pub(crate) fn serve_each<F, Fut>(config: quinn_proto::ServerConfig, serve: F) -> roam_quic::Endpoint
where
    F: Fn(roam_quic::Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let endpoint = roam_quic::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            if let Ok(conn) = incoming.accept() {
                tokio::spawn(serve(conn));
            }
        }
    });
    endpoint
}

/// A quinn client endpoint on 127.0.0.1 with `config`, and its connection to `endpoint`
/// (the client endpoint is returned too: the connection ends with it).
pub(crate) async fn client_connection(
    endpoint: &roam_quic::Endpoint,
    config: quinn::ClientConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    let conn = client
        .connect(endpoint.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (client, conn)
}

/// Gives the client a 16 KiB stream receive window: what the server writes beyond it
/// waits for the client to read.
pub(crate) fn small_stream_window(client: &mut quinn::ClientConfig) {
    let mut small = quinn::TransportConfig::default();
    small.stream_receive_window(16_384u32.into());
    client.transport_config(Arc::new(small));
}
