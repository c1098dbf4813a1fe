//! The private `roam serve` of a run, and what the scenarios that use one share: the one
//! place its configuration is written, its lifetime around a run, its listener addresses,
//! its API key and tokens from its data directory, and JSON from its admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use roam_client::admin::AdminConnection;

use crate::child::ChildServer;
use crate::report::Report;

/// What every private server of `roam bench` has in its configuration file, before the
/// scenario's own keys ([`start`]): the limits a load generator on loopback must not hit
/// are switched off here: up to ~10k connections come from one loopback address, thousands
/// handshaking at once, so the per-address and handshake caps are off (the admin and
/// internal ports' per-address shares too: push workers each hold an admin connection).
const BENCH_TOML: &str = "[limits]\nmax_conns_per_ip = 0\nmax_handshakes = 0\nmax_handshakes_per_ip = 0\nadmin_max_conns_per_ip = 0\ninternal_max_conns_per_ip = 0\n";

/// The configuration of the scenarios that hold idle clients (idle-conns, room-fanout):
/// heartbeats far apart, so the server never closes them as idle during a run.
pub(crate) const QUIET_CLIENTS_TOML: &str =
    "[core]\nheartbeat_min_secs = 300\nheartbeat_max_secs = 300\n";

/// Starts a private server: this binary (`exe`) as `roam serve` with [`BENCH_TOML`] and
/// `scenario_toml`.
pub(crate) fn start(exe: &Path, scenario_toml: &str) -> Result<ChildServer> {
    ChildServer::start(exe, &format!("{BENCH_TOML}{scenario_toml}"))
}

/// Starts a private server (see [`start`]), runs `run` against it, then stops it whatever
/// `run` returned. `run`'s error comes first; a server that exits unsuccessfully fails an
/// otherwise good run.
pub(crate) fn with_server(
    exe: &Path,
    scenario_toml: &str,
    run: impl FnOnce(&ChildServer) -> Result<Report>,
) -> Result<Report> {
    let server = start(exe, scenario_toml)?;
    let result = run(&server);
    let stopped = server.stop();
    let report = result?;
    let status = stopped?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    Ok(report)
}

/// The address of `server`'s listener `name` (e.g. "admin").
pub(crate) fn listener(server: &ChildServer, name: &str) -> Result<SocketAddr> {
    server
        .addr(name)
        .with_context(|| format!("the server reported no {name} address"))
}

/// The API key the child server wrote.
pub(crate) fn api_key(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("api-key");
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(key.trim().to_owned())
}

/// The internal-port key of a child server (its `<data>/internal-key`).
pub(crate) fn internal_key(data_dir: &Path) -> Result<roam_proto::internal_auth::InternalKey> {
    let key = roam_core::secret_file::load_or_create(&data_dir.join("internal-key"), 32)?;
    Ok(roam_proto::internal_auth::InternalKey::from_bytes(&key))
}

/// Seconds since the Unix epoch (the `now` of minted tokens).
pub(crate) fn unix_now() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// `GET path` on the admin listener (a connection of its own); the JSON body of a 200
/// answer.
pub(crate) async fn admin_get(
    admin: SocketAddr,
    key: &str,
    path: &str,
) -> Result<serde_json::Value> {
    let get = async {
        AdminConnection::connect(admin)
            .await?
            .get(path, key)
            .await
            .map_err(anyhow::Error::from)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| anyhow!("GET {path}: no answer within 10 s"))?
        .with_context(|| format!("GET {path}"))?;
    if response.status != 200 {
        bail!("GET {path}: HTTP {}", response.status);
    }
    response
        .json()
        .with_context(|| format!("GET {path}: not JSON: {:?}", response.body))
}
