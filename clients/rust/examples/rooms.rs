//! Join a room and print its ephemeral pushes (sent with `POST /api/v1/push/rooms`); the
//! room is joined again after every reconnect.
//!
//! ```sh
//! cargo run -p roam-client --example rooms -- wss://127.0.0.1:8443 data/tls/cert.pem "$(roam token --user alice)" lobby
//! ```

use roam_client::client::{Client, ClientConfig, Trust};
use roam_client::session::{Event, SessionConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [server, ca, token, room] = args()?;
    let session = SessionConfig::new(token, "example-rooms", vec![server]);
    let config = ClientConfig::new(session, Trust::CaFile(ca.into()));
    let (client, mut events) = Client::connect(config)?;
    client.join_room(&room)?;
    while let Some(event) = events.next().await {
        match event {
            Event::Rooms(rooms) => eprintln!("in rooms {rooms:?}"),
            Event::Ephemeral(push) => {
                println!("[{}] {}", push.room, String::from_utf8_lossy(&push.content));
            }
            Event::Closed(why) => return Err(why.into()),
            _ => {}
        }
    }
    Ok(())
}

fn args() -> Result<[String; 4], Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.try_into()
        .map_err(|_| "usage: rooms SERVER CA_FILE TOKEN ROOM".into())
}
