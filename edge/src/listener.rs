//! The accept loop every TCP listener of the edge shares: accept until shutdown (backing off
//! on accept errors such as EMFILE instead of spinning), one tracked task per connection
//! inside a `conn` span, then wait up to the drain timeout for those tasks to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug_span, warn};

/// Runs `serve` on every connection `listener` accepts until `shutdown`, then drains:
/// waits for every task on `tracker` (the connections' and any their requests spawned).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    transport: &'static str,
    shutdown: &CancellationToken,
    drain: Duration,
    tracker: TaskTracker,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, transport, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At debug level: with tens of thousands of connections an enabled span per
        // connection holds ≈ 0.45 KB of formatted fields each (RUST_LOG=roam_edge=debug
        // turns them on).
        let span = debug_span!("conn", %peer, transport);
        tracker.spawn(serve(tcp, peer).instrument(span));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            transport, "drain timeout: leaving the remaining connections to be cut at exit"
        );
    }
}
