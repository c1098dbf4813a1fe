//! Send one message and wait for its acknowledgement.
//!
//! ```sh
//! cargo run -p roam-client --example send -- raw://127.0.0.1:8444 data/tls/cert.pem "$(roam token --user bob)" alice "hello"
//! ```

use roam_client::client::{Client, ClientConfig, Trust};
use roam_client::session::SessionConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [server, ca, token, to, text] = args()?;
    let session = SessionConfig::new(token, "example-send", vec![server]);
    let config = ClientConfig::new(session, Trust::CaFile(ca.into()));
    let (client, _events) = Client::connect(config)?;
    // Retried under one client_msg_id across reconnects until the server stored it.
    let ack = client.send(&to, text.into_bytes()).await?;
    println!("stored: id={} seq={}", ack.id, ack.seq);
    client.close();
    Ok(())
}

fn args() -> Result<[String; 5], Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.try_into()
        .map_err(|_| "usage: send SERVER CA_FILE TOKEN TO TEXT".into())
}
