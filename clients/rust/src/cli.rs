//! What `roam send` and `roam tail` do, apart from parsing and printing (the binary's part).
//!
//! Both run a [`Client`] for the token's user on a fresh device id (`cli-<random>`), so
//! several tails of one user do not replace each other.

use std::path::PathBuf;
use std::time::Duration;

use roam_proto::client::v1 as pb;
use thiserror::Error;

use crate::client::{Client, ClientConfig, ClientError, Trust};
use crate::session::{Ack, Event, SessionConfig};

/// The local server's raw port.
pub const LOCAL_SERVER: &str = "raw://127.0.0.1:8444";

/// Why `roam send` or `roam tail` failed.
#[derive(Debug, Error)]
pub enum CliError {
    /// The client failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `--server` is not an address the SDK can dial.
    #[error(
        "--server {0}: expected quic://HOST:PORT, raw://HOST:PORT, wss://HOST:PORT, https://HOST:PORT, h3://HOST:PORT, h2://HOST:PORT or HOST:PORT"
    )]
    BadServer(String),
    /// No acknowledgement in time.
    #[error("no acknowledgement within {0:?} (is the server at {1} running?)")]
    Timeout(Duration, String),
    /// The client stopped (the token was refused, the device kicked).
    #[error("{0}")]
    Closed(String),
}

/// Where and as whom `roam send` / `roam tail` connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The edge address (see [`normalize_server`]).
    pub server: String,
    /// The client token.
    pub token: String,
    /// Which certificate to accept.
    pub trust: Trust,
}

/// `quic://`, `raw://`, `wss://`, `h3://` and `h2://` addresses as they are; `https://HOST:PORT` as `wss://`; a bare
/// `HOST:PORT` as `raw://`.
pub fn normalize_server(server: &str) -> Result<String, CliError> {
    let bad = || CliError::BadServer(server.to_owned());
    let (scheme, rest) = server.split_once("://").unwrap_or(("raw", server));
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(bad());
    }
    match scheme {
        "raw" => Ok(format!("raw://{rest}")),
        "quic" => Ok(format!("quic://{rest}")),
        "h3" => Ok(format!("h3://{rest}")),
        "h2" => Ok(format!("h2://{rest}")),
        "wss" | "https" => Ok(format!("wss://{rest}")),
        _ => Err(bad()),
    }
}

fn client(target: &Target, cursor: u64) -> Result<(Client, crate::client::Events), CliError> {
    let device = format!("cli-{:08x}", rand::random::<u32>());
    let mut session = SessionConfig::new(
        target.token.clone(),
        device,
        vec![normalize_server(&target.server)?],
    );
    session.platform = "cli".into();
    session.cursor = cursor;
    Ok(Client::connect(ClientConfig::new(
        session,
        target.trust.clone(),
    ))?)
}

/// `roam send`: sends `text` to `to` and returns its acknowledgement, within `timeout`.
pub async fn send(
    target: &Target,
    to: &str,
    text: &str,
    timeout: Duration,
) -> Result<Ack, CliError> {
    let (client, mut events) = client(target, 0)?;
    let send = client.send(to, text.as_bytes().to_vec());
    // A refused token closes the client: say why instead of waiting out the timeout.
    let closed = async {
        loop {
            match events.next().await {
                Some(Event::Closed(why)) => return why,
                Some(_) => {}
                None => return "the client stopped".to_owned(),
            }
        }
    };
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, send) => match r {
            Ok(ack) => ack.map_err(CliError::from),
            Err(_) => Err(CliError::Timeout(timeout, target.server.clone())),
        },
        why = closed => Err(CliError::Closed(why)),
    };
    client.close();
    result
}

/// `roam tail`: every message of the token's user's inbox after `after`, in seq order, each
/// once, to `out` — across reconnects, until `out` fails or the client is closed for good.
pub async fn tail<E>(
    target: &Target,
    after: u64,
    mut out: impl FnMut(&pb::Message) -> Result<(), E>,
) -> Result<Result<(), E>, CliError> {
    let (client, mut events) = client(target, after)?;
    loop {
        match events.next().await {
            Some(Event::Message(m)) => {
                if let Err(e) = out(&m) {
                    client.close();
                    return Ok(Err(e));
                }
            }
            Some(Event::Closed(why)) => return Err(CliError::Closed(why)),
            Some(_) => {}
            None => return Err(CliError::Closed("the client stopped".into())),
        }
    }
}

/// A message as `roam tail` prints it: `<seq> <from> <content>`.
pub fn message_line(m: &pb::Message) -> String {
    format!(
        "{} {} {}",
        m.seq,
        m.from,
        String::from_utf8_lossy(&m.content)
    )
}

/// A message as `roam tail --json` prints it: one JSON object.
pub fn message_json(m: &pb::Message) -> serde_json::Value {
    serde_json::json!({
        "seq": m.seq,
        "id": m.id,
        "from": m.from,
        "to": m.to,
        "content": String::from_utf8_lossy(&m.content),
        "content_type": m.content_type,
        "created_at": m.created_at,
        "conversation_seq": m.conversation_seq,
    })
}

/// The trust `--ca` / `--insecure` ask for; neither: `default_ca` if it exists (the local
/// server's development certificate).
pub fn trust(ca: Option<PathBuf>, insecure: bool, default_ca: PathBuf) -> Result<Trust, CliError> {
    match (ca, insecure) {
        (_, true) => Ok(Trust::Insecure),
        (Some(ca), false) => Ok(Trust::CaFile(ca)),
        (None, false) if default_ca.exists() => Ok(Trust::CaFile(default_ca)),
        (None, false) => Err(CliError::Closed(format!(
            "no --ca FILE or --insecure, and no {} to trust",
            default_ca.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            normalize_server("127.0.0.1:8444").unwrap(),
            "raw://127.0.0.1:8444"
        );
        assert_eq!(normalize_server("raw://h:1").unwrap(), "raw://h:1");
        assert_eq!(normalize_server("https://h:8443/").unwrap(), "wss://h:8443");
        assert_eq!(normalize_server("wss://h:8443").unwrap(), "wss://h:8443");
        assert_eq!(normalize_server("h3://h:8443").unwrap(), "h3://h:8443");
        assert_eq!(normalize_server("h2://h:8443").unwrap(), "h2://h:8443");
        for bad in ["", "h", "ftp://h:1", "https://h:1/v1/ws", "raw://"] {
            assert!(normalize_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines() {
        let m = pb::Message {
            seq: 3,
            id: 9,
            from: "bob".into(),
            content: b"hi there".to_vec().into(),
            ..Default::default()
        };
        assert_eq!(message_line(&m), "3 bob hi there");
        assert_eq!(message_json(&m)["content"], "hi there");
    }
}
