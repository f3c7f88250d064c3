//! The MQTT-over-TCP listener: accepts sockets while a semaphore caps how many
//! connections are served at once, and spawns one task per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::registry::Stop;
use crate::Shared;

/// How long a stopping node waits for its connections to close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often connections are checked for an expired keepalive.
const EXPIRY_SWEEP: Duration = Duration::from_millis(250);

/// Asks connections whose keepalive (or CONNECT timeout) has run out to end, until
/// shutdown. One timer for the whole node instead of one per connection.
pub(crate) async fn expiry_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sweep.tick() => shared.registry.expire(),
        }
    }
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            permit = permits.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let accepted = tokio::select! {
                    _ = shutdown.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let f = crate::connection::serve(shared.clone(), stream, peer, permit);
                        tracing::warn!(size = std::mem::size_of_val(&f), "TMP fut");
                        tasks.spawn(f);
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little
                        // rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    shared.registry.stop_all(Stop::NodeStopping);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "connections still open at shutdown, aborted"
        );
        tasks.abort_all();
    }
}
