//! The MQTT listeners (over TCP, and over WebSocket, TLS and WebSocket over TLS
//! when enabled): accept sockets while a semaphore caps how many connections
//! are served at once, and spawn one task per connection; and the node's one
//! keepalive sweep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::WebSocketStream;

use crate::connection::Transport;
use crate::registry::Stop;
use crate::tls::Tls;
use crate::{BrokerError, Shared};

/// The sockets a node accepts clients on.
pub(crate) struct Listeners {
    pub(crate) mqtt: TcpListener,
    /// The WebSocket listener, and the path it serves MQTT on.
    pub(crate) websocket: Option<(TcpListener, Arc<str>)>,
    /// The listeners over TLS, if any is on.
    pub(crate) secure: Option<Secure>,
}

/// The listeners over TLS and the certificates they share.
pub(crate) struct Secure {
    pub(crate) tls: Arc<Tls>,
    /// MQTT over TLS.
    pub(crate) mqtt: Option<TcpListener>,
    /// WebSocket over TLS, and the path it serves MQTT on.
    pub(crate) websocket: Option<(TcpListener, Arc<str>)>,
}

/// Which listener a socket came from, with what serving it takes.
enum Via {
    Tcp,
    WebSocket(Arc<str>),
    Tls(Arc<Tls>),
    WebSocketTls(Arc<Tls>, Arc<str>),
}

/// Binds `addr`; a taken port fails the start.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let error = |source| BrokerError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// Accepts on `listener`, or never if there is none: a socket, and how it is
/// served.
async fn accept_on(
    listener: Option<(&TcpListener, Via)>,
) -> std::io::Result<(TcpStream, SocketAddr, Via)> {
    match listener {
        Some((listener, via)) => {
            let (stream, peer) = listener.accept().await?;
            Ok((stream, peer, via))
        }
        None => std::future::pending().await,
    }
}

/// Serves one socket: at once over TCP; otherwise once its handshakes (TLS,
/// WebSocket, or both) are done, within the time a client has to send CONNECT.
fn spawn_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    via: Via,
) {
    let _ = stream.set_nodelay(true);
    if let Via::Tcp = via {
        tokio::spawn(crate::connection::serve(
            shared.clone(),
            Transport::Tcp(stream),
            peer,
            permit,
            None,
        ));
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(shared.config.connect_deadline(), handshake(stream, via)).await {
            Ok(Ok((transport, identity))) => {
                crate::connection::serve(shared, transport, peer, permit, identity).await;
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "handshake failed"),
            Err(_) => tracing::debug!(%peer, "handshake not done in time"),
        }
    });
}

/// The handshakes `via` takes: what the connection then reads and writes, and
/// the username the client's certificate gives it.
async fn handshake(stream: TcpStream, via: Via) -> Result<(Transport, Option<String>), String> {
    Ok(match via {
        Via::Tcp => (Transport::Tcp(stream), None),
        Via::WebSocket(path) => {
            let ws = upgrade(stream, &path).await?;
            (Transport::WebSocket(Box::new(ws)), None)
        }
        Via::Tls(tls) => {
            let (stream, identity) = secure(stream, &tls).await?;
            (Transport::Tls(Box::new(stream)), identity)
        }
        Via::WebSocketTls(tls, path) => {
            let (stream, identity) = secure(stream, &tls).await?;
            let ws = upgrade(stream, &path).await?;
            (Transport::WebSocketTls(Box::new(ws)), identity)
        }
    })
}

/// The TLS handshake, and the username the client's certificate gives.
async fn secure(
    stream: TcpStream,
    tls: &Tls,
) -> Result<(TlsStream<TcpStream>, Option<String>), String> {
    let stream = tls
        .acceptor()
        .accept(stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let identity = tls
        .identity(stream.get_ref().1.peer_certificates())
        .map_err(|e| format!("TLS: {e}"))?;
    Ok((stream, identity))
}

/// The WebSocket upgrade, on `path` for the MQTT subprotocol.
async fn upgrade<S>(stream: S, path: &str) -> Result<WebSocketStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // tungstenite's callback type: its error is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let choose = |request: &Request, response| choose_mqtt(path, request, response);
    tokio_tungstenite::accept_hdr_async(stream, choose)
        .await
        .map_err(|e| format!("WebSocket: {e}"))
}

/// Accepts a WebSocket upgrade on `path` only, for the subprotocol "mqtt"
/// (or "mqttv3.1", which older clients offer), and names the one chosen in
/// the answer [MQTT-6.0.0-3] [MQTT-6.0.0-4].
// The signature is tungstenite's handshake callback: its error is a whole
// HTTP response, large by nature.
#[allow(clippy::result_large_err)]
fn choose_mqtt(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status, why: &str| {
        let mut refusal = ErrorResponse::new(Some(why.to_owned()));
        *refusal.status_mut() = status;
        Err(refusal)
    };
    if request.uri().path() != path {
        return refuse(StatusCode::NOT_FOUND, "MQTT is served on another path");
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let chosen = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|ours| offered.iter().any(|p| p.eq_ignore_ascii_case(ours)));
    let Some(chosen) = chosen else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the subprotocol \"mqtt\" is required",
        );
    };
    response
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
    Ok(response)
}

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
    listeners: Listeners,
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
    let mut rates = ConnectionRates::new(shared.config.max_connection_rate_per_ip);
    loop {
        let websocket = listeners
            .websocket
            .as_ref()
            .map(|(listener, path)| (listener, Via::WebSocket(path.clone())));
        let secure = listeners.secure.as_ref();
        let tls = secure.and_then(|s| Some((s.mqtt.as_ref()?, Via::Tls(s.tls.clone()))));
        let websocket_tls = secure.and_then(|s| {
            let (listener, path) = s.websocket.as_ref()?;
            Some((listener, Via::WebSocketTls(s.tls.clone(), path.clone())))
        });
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listeners.mqtt.accept() => {
                accepted.map(|(stream, peer)| (stream, peer, Via::Tcp))
            }
            accepted = accept_on(websocket) => accepted,
            accepted = accept_on(tls) => accepted,
            accepted = accept_on(websocket_tls) => accepted,
        };
        match accepted {
            Ok((stream, peer, via)) => {
                // Refused at once rather than left in the accept queue,
                // where they would hold the kernel's backlog and the
                // client's timeout: counted, and closed.
                if !rates.admit(peer.ip(), tokio::time::Instant::now()) {
                    tracing::debug!(%peer, "connection refused: too many from this address");
                    shared.metrics.connection_refused("rate_per_ip");
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "connection refused: max_connections reached");
                    shared.metrics.connection_refused("max_connections");
                    continue;
                };
                spawn_connection(&shared, stream, peer, permit, via);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listeners);
    shared.registry.stop_all(Stop::NodeStopping);
    let timeout = Duration::from_secs(shared.config.drain_timeout.max(1));
    let drained = tokio::time::timeout(timeout, permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(
            left = max - permits.available_permits(),
            "connections still open at shutdown; they end with the runtime"
        );
    }
}

/// New connections per second from each address, at most `max` (0: no
/// limit): a window of one second per address, forgotten once it is over.
struct ConnectionRates {
    max: u32,
    windows: std::collections::HashMap<std::net::IpAddr, (tokio::time::Instant, u32)>,
}

impl ConnectionRates {
    fn new(max: u32) -> ConnectionRates {
        ConnectionRates {
            max,
            windows: std::collections::HashMap::new(),
        }
    }

    /// Whether one more connection from `ip` is let in at `now`.
    fn admit(&mut self, ip: std::net::IpAddr, now: tokio::time::Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        if self.windows.len() > 10_000 {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
        }
        let (start, count) = self.windows.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rates_are_counted_per_address_per_second() {
        let (a, b) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let now = tokio::time::Instant::now();
        let mut rates = ConnectionRates::new(2);
        assert!(rates.admit(a, now) && rates.admit(a, now));
        assert!(!rates.admit(a, now), "a third within the second");
        assert!(rates.admit(b, now), "another address has its own");
        let later = now + Duration::from_millis(1_001);
        assert!(rates.admit(a, later), "a new second");
        let mut unlimited = ConnectionRates::new(0);
        assert!((0..1_000).all(|_| unlimited.admit(a, now)));
    }
}
