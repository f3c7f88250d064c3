//! The HTTP server: `/healthz` (the process runs), `/readyz` (the node can serve
//! clients) and `/metrics` (Prometheus text).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Registry, TextEncoder};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

/// How long a graceful stop waits for requests in flight before closing their
/// connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Answers whether the node can serve clients. It must not keep the broker alive: the
/// binary needs to own the broker alone to shut it down.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct AppState {
    ready: Readiness,
    registry: Registry,
}

/// The routes, over the broker's readiness and the metrics registry.
fn router(ready: Readiness, registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { ready, registry })
}

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyBody>) {
    let ready = (state.ready)();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyBody { ready }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    match encoder.encode_to_string(&state.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            warn!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A running HTTP server.
pub struct HttpServer {
    local_addr: SocketAddr,
    /// Tells the serving task to stop accepting and finish its requests.
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl HttpServer {
    /// Binds `addr`. Done before the broker starts, so that a taken port fails fast.
    pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    /// Serves the routes on `listener` until `stop` is called.
    pub fn serve(
        listener: TcpListener,
        ready: Readiness,
        registry: Registry,
    ) -> io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server =
            axum::serve(listener, router(ready, registry)).with_graceful_shutdown(async move {
                // A dropped sender stops the server as well.
                let _ = stopped.await;
            });
        let task = tokio::spawn(async move { server.await });
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address the server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits, at most `STOP_GRACE`, for the requests
    /// in flight.
    pub async fn stop(self) {
        let HttpServer { stop, mut task, .. } = self;
        let _ = stop.send(());
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "http server failed"),
            Ok(Err(e)) => warn!(error = %e, "http server task failed"),
            Err(_) => {
                warn!(
                    grace = ?STOP_GRACE,
                    "http requests still in flight after the grace period; closing them"
                );
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// One request over a fresh connection: (status, content type, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (status, content_type, body.to_owned())
    }

    async fn start(ready: Arc<AtomicBool>, registry: Registry) -> HttpServer {
        let listener = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let readiness: Readiness = Arc::new(move || ready.load(Ordering::Relaxed));
        HttpServer::serve(listener, readiness, registry).unwrap()
    }

    #[tokio::test]
    async fn healthz_and_readyz() {
        let ready = Arc::new(AtomicBool::new(false));
        let server = start(ready.clone(), Registry::new()).await;
        let addr = server.local_addr();

        assert_eq!(get(addr, "/healthz").await.2, "ok");
        assert_eq!(get(addr, "/healthz").await.0, 200);

        let (status, content_type, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, r#"{"ready":false}"#);

        ready.store(true, Ordering::Relaxed);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"ready":true}"#);

        assert_eq!(get(addr, "/nope").await.0, 404);
        server.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let registry = Registry::new();
        crate::telemetry::register_process_metrics(&registry).unwrap();
        let server = start(Arc::new(AtomicBool::new(true)), registry).await;
        let (status, content_type, body) = get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("# TYPE starling_build_info gauge"), "{body}");
        server.stop().await;
    }
}
