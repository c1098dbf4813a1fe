//! The business API on the admin listener (docs/api.md), client side: HTTP/1.1 over plain
//! TCP, the API key as a bearer token, JSON bodies.
//!
//! [`AdminConnection::connect`] opens one keep-alive connection (TCP_NODELAY; its driver runs
//! as a task of its own); [`AdminConnection::request`] sends one request on it and reads the
//! whole answer, whatever its status (the caller decides what a 429 or a 400 means).
//! [`request`] is the one-off form: a connection for one request.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::http;
pub use hyper::http::{HeaderMap, Method};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a call to the admin listener failed (an answer with an error status is not an
/// [`AdminError`]: it is an [`AdminResponse`]).
#[derive(Debug, Error)]
pub enum AdminError {
    /// The TCP connection could not be opened.
    #[error("admin connection: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed (the connection broke, or the answer was not HTTP/1.1).
    #[error("admin request: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (e.g. a path that is not a URI).
    #[error("bad admin request: {0}")]
    Request(#[from] http::Error),
}

/// A whole answer of the admin listener.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl AdminResponse {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A keep-alive HTTP/1.1 connection to the admin listener.
#[derive(Debug)]
pub struct AdminConnection {
    send: http1::SendRequest<Full<Bytes>>,
}

impl AdminConnection {
    /// Connects to the admin listener at `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, AdminError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        // Ends when `send` is dropped or the server closes the connection.
        tokio::spawn(conn);
        Ok(AdminConnection { send })
    }

    /// Waits until the connection can take a request (the previous answer is read).
    pub async fn ready(&mut self) -> Result<(), AdminError> {
        Ok(self.send.ready().await?)
    }

    /// Sends `method path` with `authorization: Bearer <key>` and, when `body` is given,
    /// `content-type: application/json`; reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Bytes>,
    ) -> Result<AdminResponse, AdminError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = self.send.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(AdminResponse {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str, key: &str) -> Result<AdminResponse, AdminError> {
        self.request(Method::GET, path, key, None).await
    }

    /// `POST path` of the JSON `body`.
    pub async fn post_json(
        &mut self,
        path: &str,
        key: &str,
        body: impl Into<Bytes>,
    ) -> Result<AdminResponse, AdminError> {
        self.request(Method::POST, path, key, Some(body.into()))
            .await
    }
}

/// One request on a connection of its own (see [`AdminConnection::request`]).
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Bytes>,
) -> Result<AdminResponse, AdminError> {
    AdminConnection::connect(addr)
        .await?
        .request(method, path, key, body)
        .await
}
