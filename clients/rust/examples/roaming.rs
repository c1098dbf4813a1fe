//! A phone's connection: the edge list from the app's backend (its `GET /api/v1/edges`
//! answer), QUIC first with TCP as the fallback when UDP is blocked, and a network change
//! handed to the client (QUIC migrates the same connection; TCP reconnects and SYNCs).
//! Every message is printed once, in inbox order, whatever happens to the network.
//!
//! ```sh
//! # EDGES_URL: an app backend's endpoint answering the business API's edge list shape.
//! cargo run -p roam-client --example roaming -- http://127.0.0.1:3000/edges data/tls/cert.pem "$(roam token --user alice)"
//! ```
//! Type a local IP address (for example `127.0.0.2`) and Enter to simulate moving to another
//! network.

use std::net::IpAddr;

use roam_client::client::{Client, ClientConfig, Trust};
use roam_client::session::{Event, SessionConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [edges_url, ca, token] = args()?;
    // No configured edges: the list comes from `edges_url` before the first connection and
    // again whenever every edge of it failed.
    let session = SessionConfig::new(token, "example-roaming", Vec::new());
    let mut config = ClientConfig::new(session, Trust::CaFile(ca.into()));
    config.edges_url = Some(edges_url);
    let (client, mut events) = Client::connect(config)?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(line) => match line.trim().parse::<IpAddr>() {
                    Ok(local) => client.network_changed(local)?,
                    Err(e) => eprintln!("not an IP address ({e}): {line:?}"),
                },
                None => client.close(),
            },
            event = events.next() => match event {
                Some(Event::Message(m)) => println!(
                    "{} {}: {}",
                    m.seq,
                    m.from,
                    String::from_utf8_lossy(&m.content)
                ),
                Some(Event::Connected(reply)) => eprintln!("connected as {}", reply.user_id),
                Some(Event::ConnectionLost(why)) => eprintln!("connection lost ({why:?}), reconnecting"),
                Some(Event::Closed(why)) => return Err(why.into()),
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}

fn args() -> Result<[String; 3], Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.try_into()
        .map_err(|_| "usage: roaming EDGES_URL CA_FILE TOKEN".into())
}
