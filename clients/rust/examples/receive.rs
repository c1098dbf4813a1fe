//! Receive messages as they come (each once, in inbox order, across reconnects), mark each
//! conversation read, and save the cursor to resume from next time.
//!
//! ```sh
//! cargo run -p roam-client --example receive -- raw://127.0.0.1:8444 data/tls/cert.pem "$(roam token --user alice)"
//! ```

use roam_client::client::{Client, ClientConfig, Trust};
use roam_client::session::{Event, SessionConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [server, ca, token] = args()?;
    let mut session = SessionConfig::new(token, "example-receive", vec![server]);
    // Where the last run stopped (an app keeps it in its storage).
    session.cursor = std::fs::read_to_string("receive.cursor")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let config = ClientConfig::new(session, Trust::CaFile(ca.into()));
    let (client, mut events) = Client::connect(config)?;
    while let Some(event) = events.next().await {
        match event {
            Event::Message(m) => {
                println!(
                    "{} {}: {}",
                    m.seq,
                    m.from,
                    String::from_utf8_lossy(&m.content)
                );
                // The conversation is named by the peer (or the group) and counted in
                // conversation_seq.
                let peer = if m.to.starts_with("group:") {
                    &m.to
                } else {
                    &m.from
                };
                client.read(peer, m.conversation_seq)?;
                std::fs::write("receive.cursor", m.seq.to_string())?;
            }
            Event::Connected(reply) => eprintln!("connected as {}", reply.user_id),
            Event::ConnectionLost(why) => eprintln!("connection lost ({why:?}), reconnecting"),
            Event::Closed(why) => return Err(why.into()),
            _ => {}
        }
    }
    Ok(())
}

fn args() -> Result<[String; 3], Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.try_into()
        .map_err(|_| "usage: receive SERVER CA_FILE TOKEN".into())
}
