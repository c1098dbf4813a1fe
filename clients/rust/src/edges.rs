//! The edge list from the app's backend: the business API's `GET /api/v1/edges` answer
//! (docs/api.md), which the backend hands its clients (the API key stays on the backend).
//!
//! [`addresses_of`] turns the answer into the SDK's edge addresses, in the answer's order
//! (nearest region first, then weight and load); for each edge its transports in the SDK's
//! order of preference: `quic://` (raw frames over QUIC, `raw_quic`), `raw://` (`raw`),
//! `wss://` (`client_tcp`). [`fetch`] GETs a URL (`http://` or `https://`, HTTP/1.1) and does
//! that; the [`crate::client::Client`] calls it before it first connects and again whenever a
//! whole round of the list has failed (see [`crate::client::ClientConfig::edges_url`]).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why the edge list could not be had.
#[derive(Debug, Error)]
pub enum EdgeListError {
    /// The URL is not `http://host[:port]/path` or `https://…`.
    #[error("edge list URL {0}: expected http:// or https://host[:port]/path")]
    BadUrl(String),
    /// Connecting or the HTTP exchange failed.
    #[error("edge list {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The answer was not a 2xx with the `{"edges": [...]}` shape.
    #[error("edge list: {0}")]
    Answer(String),
}

/// The SDK's edge addresses in an `{"edges": [{"addresses": {...}}, ...]}` answer, in order.
pub fn addresses_of(body: &[u8]) -> Result<Vec<String>, EdgeListError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| EdgeListError::Answer(e.to_string()))?;
    let edges = v["edges"]
        .as_array()
        .ok_or_else(|| EdgeListError::Answer("no \"edges\" array".into()))?;
    let mut out = Vec::new();
    for edge in edges {
        let addresses = &edge["addresses"];
        for (transport, scheme) in [("raw_quic", "quic"), ("raw", "raw"), ("client_tcp", "wss")] {
            if let Some(addr) = addresses[transport].as_str().filter(|a| !a.is_empty()) {
                out.push(format!("{scheme}://{addr}"));
            }
        }
    }
    Ok(out)
}

/// GETs `url` and returns the edge addresses in its answer. `https://` verifies the server
/// with `tls` (which must offer ALPN `http/1.1`).
pub async fn fetch(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Vec<String>, EdgeListError> {
    let bad = || EdgeListError::BadUrl(url.to_owned());
    let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let (host, hostport) = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, authority.to_owned())
        }
        _ => (
            authority,
            format!("{authority}:{}", if secure { 443 } else { 80 }),
        ),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let fail = |message: String| EdgeListError::Fetch {
        url: url.to_owned(),
        message,
    };
    let tcp = TcpStream::connect(&hostport)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let request = http::Request::get(path)
        .header("host", authority)
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let (status, body) = if secure {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(e.to_string()))?;
        get(TokioIo::new(stream), request).await
    } else {
        get(TokioIo::new(tcp), request).await
    }
    .map_err(fail)?;
    if !(200..300).contains(&status) {
        return Err(EdgeListError::Answer(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    addresses_of(&body)
}

async fn get<T>(io: T, request: http::Request<Empty<Bytes>>) -> Result<(u16, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_business_apis_answer_becomes_addresses_in_order() {
        let body = br#"{"edges": [
            {"id": "bj-1", "addresses": {"client_tcp": "bj-1:8443", "raw": "bj-1:8444",
                                         "client_quic": "bj-1:8443", "raw_quic": "bj-1:8444"}},
            {"id": "sh-1", "addresses": {"client_tcp": "sh-1:8443", "raw": ""}}
        ]}"#;
        assert_eq!(
            addresses_of(body).unwrap(),
            [
                "quic://bj-1:8444",
                "raw://bj-1:8444",
                "wss://bj-1:8443",
                "wss://sh-1:8443"
            ]
        );
        assert_eq!(
            addresses_of(br#"{"edges": []}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(addresses_of(b"{}").is_err());
        assert!(addresses_of(b"not json").is_err());
    }
}
