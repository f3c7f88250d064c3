//! The MQTT-over-TCP listener: accepts sockets while a semaphore caps how many
//! connections are served at once, and spawns one task per connection; and the
//! node's one keepalive sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::registry::Stop;
use crate::Shared;

use crate::timeouts;

/// Asks connections whose keepalive (or CONNECT timeout) has run out to end, until
/// shutdown. One timer for the whole node instead of one per connection.
pub(crate) async fn expiry_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut sweep = tokio::time::interval(timeouts::EXPIRY_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sweep.tick() => shared.registry.expire(shared.config.slow_subscriber_after()),
        }
    }
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let all = u32::try_from(
        shared
            .config
            .max_connections
            .clamp(1, Semaphore::MAX_PERMITS),
    )
    .unwrap_or(u32::MAX);
    let max = all as usize;
    // Every connection task holds a permit until it ends: the permits are also
    // how shutdown knows when every connection has closed, without keeping a
    // handle per connection.
    let permits = Arc::new(Semaphore::new(max));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            permit = permits.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let accepted = tokio::select! {
                    _ = shutdown.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(crate::connection::serve(shared.clone(), stream, peer, permit));
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
    let drained = tokio::time::timeout(timeouts::DRAIN, permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(
            left = max - permits.available_permits(),
            "connections still open at shutdown; they end with the runtime"
        );
    }
}
