//! The HTTP server: `/healthz` (the process runs), `/readyz` (the node can serve
//! clients), `/metrics` (Prometheus text), the status page at `/` and the
//! admin API under `/api/v1`.
//!
//! Everything under `/api/` needs the admin token (`http.token` or
//! `http.token_file`) as `Authorization: Bearer <token>`, compared in
//! constant time. A node configured without a token serves the admin API to
//! loopback addresses only, for development on one machine. The probes, the
//! metrics and the status page's files stay open; the page reads the admin API.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Registry, TextEncoder};
use serde::Serialize;
use starling_broker::{Broker, BrokerError};
use starling_cluster::ClusterError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How long a graceful stop waits for requests in flight before closing their
/// connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP routes ask of the node. The binary serves a [`BrokerHandle`]; the
/// tests a fake, so that the routes are tested without starting Raft.
pub trait Node: Send + Sync + 'static {
    /// Whether the node can serve clients.
    fn is_ready(&self) -> bool;
    /// Takes this node out of the cluster's members.
    fn leave(&self) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>>;
    /// Has every node read its password and ACL files again.
    fn reload_auth(&self) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>>;
    /// The broker, for the admin API's routes; `None` while there is none.
    fn broker(&self) -> Option<Arc<Broker>>;
    /// Why the node is broken beyond serving (Raft stopped on a storage
    /// error), if it is: `/healthz` then fails.
    fn broken(&self) -> Option<String> {
        self.broker().and_then(|broker| broker.fatal())
    }
}

/// The future of a call on the broker, or of the error that says why there is
/// none.
fn with_broker<'a, F, Fut>(
    broker: Result<Arc<Broker>, ClusterError>,
    call: F,
) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + 'a>>
where
    F: FnOnce(Arc<Broker>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<(), BrokerError>> + Send + 'a,
{
    Box::pin(async move {
        match broker {
            Ok(broker) => call(broker).await,
            Err(e) => Err(e.into()),
        }
    })
}

/// The broker as the routes see it: none while it starts, so that `/healthz`
/// answers from the first moment. Only a `Weak` then: the binary needs to own the
/// broker alone to shut it down, so a route holds it for one call at most.
#[derive(Default)]
pub struct BrokerHandle(OnceLock<Weak<Broker>>);

impl BrokerHandle {
    /// A handle whose broker is still starting: not ready, and the admin API
    /// answers that there is no leader yet.
    pub fn starting() -> BrokerHandle {
        BrokerHandle::default()
    }

    /// The broker has started: the routes reach it from now on. Only the first
    /// call counts.
    pub fn started(&self, broker: Weak<Broker>) {
        let _ = self.0.set(broker);
    }

    /// The broker, `Unavailable` while it starts, `ShuttingDown` once it is gone.
    fn current(&self) -> Result<Arc<Broker>, ClusterError> {
        let broker = self.0.get().ok_or(ClusterError::Unavailable)?;
        broker.upgrade().ok_or(ClusterError::ShuttingDown)
    }
}

impl Node for BrokerHandle {
    fn is_ready(&self) -> bool {
        // Starting, or shutting down: then the node is not ready.
        self.current().is_ok_and(|broker| broker.is_ready())
    }

    fn leave(&self) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>> {
        with_broker(self.current(), |broker| async move {
            broker.leave().await?;
            // No longer a member, it cannot serve its clients: it drains them
            // to the members and stops.
            broker.request_drain();
            Ok(())
        })
    }

    fn reload_auth(&self) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>> {
        with_broker(self.current(), |broker| async move {
            broker.reload_auth_everywhere().await
        })
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.current().ok()
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) node: Arc<dyn Node>,
    registry: Registry,
}

/// The secret the admin API asks for. Never printed: `Debug` hides it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminToken(Option<Arc<str>>);

impl AdminToken {
    /// `None`: no token is configured.
    pub fn new(token: Option<String>) -> AdminToken {
        AdminToken(token.filter(|t| !t.is_empty()).map(Arc::from))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "<redacted>"
        } else {
            "<none>"
        })
    }
}

/// The routes, over the node and the metrics registry.
fn router(node: Arc<dyn Node>, registry: Registry, token: AdminToken) -> Router {
    let api = Router::new()
        .route("/api/v1/cluster/leave", post(leave))
        .route("/api/v1/auth/reload", post(reload_auth))
        .merge(crate::api::routes())
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::status::routes())
        .merge(api)
        .with_state(AppState { node, registry })
}

/// Lets a request to the admin API through with the right bearer token, or,
/// on a node without one, from a loopback address.
async fn require_token(
    State(token): State<AdminToken>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if admitted(&token, peer.ip(), authorization) {
        return next.run(request).await;
    }
    warn!(%peer, path = %request.uri().path(), "admin API request refused: no valid token");
    ApiError {
        status: if token.is_set() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        },
        code: "unauthorized",
        message: if token.is_set() {
            "the admin API needs Authorization: Bearer <http.token>".into()
        } else {
            "no admin token is configured: the admin API answers loopback addresses only".into()
        },
    }
    .into_response()
}

/// Whether a request from `peer` with this Authorization header may use the
/// admin API.
fn admitted(token: &AdminToken, peer: std::net::IpAddr, authorization: Option<&str>) -> bool {
    match &token.0 {
        None => peer.is_loopback(),
        Some(expected) => authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())),
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.node.broken() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {why}"),
        ),
    }
}

#[derive(Serialize)]
struct ReadyBody {
    ready: bool,
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyBody>) {
    let ready = state.node.is_ready();
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

#[derive(Serialize)]
struct LeftBody {
    left: bool,
    /// What happens now, in words.
    next: &'static str,
}

async fn leave(State(state): State<AppState>) -> Result<Json<LeftBody>, ApiError> {
    info!("leaving the cluster, as asked over http");
    match state.node.leave().await {
        Ok(()) => {
            info!("left the cluster");
            Ok(Json(LeftBody {
                left: true,
                next: "this node is no longer a member: it drains its clients to the \
                       others and stops; its data directory can be removed",
            }))
        }
        Err(e) => {
            warn!(error = %e, "cannot leave the cluster");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

#[derive(Serialize)]
struct ReloadedBody {
    reloaded: bool,
}

/// Has every node read its password and ACL files again. A file this node
/// cannot read or parse is a 422, and no node reloads.
async fn reload_auth(State(state): State<AppState>) -> Result<Json<ReloadedBody>, ApiError> {
    info!("reloading the password and ACL files on every node, as asked over http");
    match state.node.reload_auth().await {
        Ok(()) => Ok(Json(ReloadedBody { reloaded: true })),
        Err(BrokerError::AuthFiles(e)) => {
            warn!(error = %e, "password and ACL files not reloaded");
            Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_auth_file",
                message: e.to_string(),
            })
        }
        Err(e) => {
            warn!(error = %e, "cannot reload the password and ACL files");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

/// An error of the admin API, answered as
/// `{"error":{"code":"...","message":"..."}}`. The code is stable, for programs to
/// match on; the message is for people and may change.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    /// What the request names does not exist.
    pub(crate) fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message,
        }
    }

    /// The request itself is wrong.
    pub(crate) fn bad_request(message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message,
        }
    }

    /// The node cannot do it now (no leader, no quorum, stopping); worth retrying.
    pub(crate) fn unavailable(message: String) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
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
        node: Arc<dyn Node>,
        registry: Registry,
        token: AdminToken,
    ) -> io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(node, registry, token).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A node whose readiness the test sets, and whose `leave` fails with
    /// `leave_error` (when given) and counts its calls.
    #[derive(Default)]
    struct FakeNode {
        ready: AtomicBool,
        leave_error: Option<fn() -> BrokerError>,
        leaves: AtomicUsize,
    }

    impl Node for FakeNode {
        fn is_ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }

        fn leave(&self) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>> {
            self.leaves.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move { self.leave_error.map_or(Ok(()), |error| Err(error())) })
        }

        fn reload_auth(
            &self,
        ) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + '_>> {
            Box::pin(async { Ok(()) })
        }

        fn broker(&self) -> Option<Arc<Broker>> {
            None
        }
    }

    /// One request over a fresh connection: (status, content type, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        request_with(addr, method, path, "").await
    }

    /// A request with `headers` (each ending in CRLF) besides the usual ones.
    async fn request_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\
             {headers}Connection: close\r\n\r\n"
        );
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

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        request(addr, "GET", path).await
    }

    async fn start(node: Arc<FakeNode>, registry: Registry) -> HttpServer {
        let listener = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        HttpServer::serve(listener, node, registry, AdminToken::default()).unwrap()
    }

    #[test]
    fn the_admin_api_needs_the_token_or_loopback_without_one() {
        let local: std::net::IpAddr = [127, 0, 0, 1].into();
        let remote: std::net::IpAddr = [10, 1, 2, 3].into();
        let none = AdminToken::new(None);
        assert!(admitted(&none, local, None));
        assert!(!admitted(&none, remote, None), "no token: loopback only");
        let token = AdminToken::new(Some("s3cret".into()));
        assert!(admitted(&token, remote, Some("Bearer s3cret")));
        assert!(!admitted(&token, local, None), "a token binds loopback too");
        assert!(!admitted(&token, remote, Some("Bearer s3cre")));
        assert!(!admitted(&token, remote, Some("Bearer s3cret2")));
        assert!(!admitted(&token, remote, Some("Basic s3cret")));
        assert_eq!(format!("{token:?}"), "<redacted>");
    }

    #[tokio::test]
    async fn with_a_token_the_admin_api_answers_only_the_bearer() {
        let node = Arc::new(FakeNode::default());
        let listener = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let token = AdminToken::new(Some("s3cret".into()));
        let server = HttpServer::serve(listener, node, Registry::new(), token).unwrap();
        let addr = server.local_addr();
        let (status, _, body) = request(addr, "POST", "/api/v1/cluster/leave").await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
        let wrong = "Authorization: Bearer s3cre\r\n";
        let (status, _, _) = request_with(addr, "POST", "/api/v1/cluster/leave", wrong).await;
        assert_eq!(status, 401);
        let right = "Authorization: Bearer s3cret\r\n";
        let (status, _, body) = request_with(addr, "POST", "/api/v1/cluster/leave", right).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"left":true,"next":""#), "{body}");
        assert_eq!(get(addr, "/healthz").await.0, 200, "probes stay open");
        assert_eq!(get(addr, "/metrics").await.0, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn the_status_page_is_open_and_its_data_needs_the_token() {
        let node = Arc::new(FakeNode::default());
        let listener = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let token = AdminToken::new(Some("s3cret".into()));
        let server = HttpServer::serve(listener, node, Registry::new(), token).unwrap();
        let addr = server.local_addr();
        for (path, content_type, sample) in [
            (
                "/",
                "text/html; charset=utf-8",
                "<title>Starling status</title>",
            ),
            ("/status.css", "text/css; charset=utf-8", "--background"),
            (
                "/status.js",
                "text/javascript; charset=utf-8",
                "/api/v1/node",
            ),
        ] {
            let (status, got_type, body) = get(addr, path).await;
            assert_eq!((status, got_type.as_str()), (200, content_type), "{path}");
            assert!(body.contains(sample), "{path}: {body}");
        }
        let (status, _, _) = get(addr, "/api/v1/node").await;
        assert_eq!(status, 401, "the figures stay behind the token");
        server.stop().await;
    }

    #[tokio::test]
    async fn healthz_and_readyz() {
        let node = Arc::new(FakeNode::default());
        let server = start(node.clone(), Registry::new()).await;
        let addr = server.local_addr();

        assert_eq!(get(addr, "/healthz").await.2, "ok");
        assert_eq!(get(addr, "/healthz").await.0, 200);

        let (status, content_type, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, r#"{"ready":false}"#);

        node.ready.store(true, Ordering::Relaxed);
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
        let node = Arc::new(FakeNode::default());
        let server = start(node, registry).await;
        let (status, content_type, body) = get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("# TYPE starling_build_info gauge"), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn leave_answers_left() {
        let node = Arc::new(FakeNode::default());
        let server = start(node.clone(), Registry::new()).await;
        let addr = server.local_addr();

        let (status, content_type, body) = request(addr, "POST", "/api/v1/cluster/leave").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "application/json");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["left"], true);
        assert!(body["next"].as_str().unwrap().contains("stops"), "{body}");
        assert_eq!(node.leaves.load(Ordering::Relaxed), 1);

        // Leaving changes the cluster, so it is never a GET.
        assert_eq!(get(addr, "/api/v1/cluster/leave").await.0, 405);
        assert_eq!(node.leaves.load(Ordering::Relaxed), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn leave_failures_are_503_with_a_stable_error_shape() {
        let node = Arc::new(FakeNode {
            leave_error: Some(|| ClusterError::Unavailable.into()),
            ..FakeNode::default()
        });
        let server = start(node, Registry::new()).await;
        let (status, content_type, body) =
            request(server.local_addr(), "POST", "/api/v1/cluster/leave").await;
        assert_eq!(status, 503);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            body,
            r#"{"error":{"code":"unavailable","message":"no leader or no quorum"}}"#
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_stopped_broker_cannot_leave() {
        let handle = BrokerHandle::starting();
        handle.started(Weak::new());
        assert!(!handle.is_ready());
        let err = handle.leave().await.unwrap_err();
        assert!(
            matches!(err, BrokerError::Cluster(ClusterError::ShuttingDown)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_starting_broker_is_alive_but_not_ready() {
        let handle = Arc::new(BrokerHandle::starting());
        assert!(!handle.is_ready());
        let err = handle.leave().await.unwrap_err();
        assert!(
            matches!(err, BrokerError::Cluster(ClusterError::Unavailable)),
            "{err}"
        );
        let err = handle.reload_auth().await.unwrap_err();
        assert!(
            matches!(err, BrokerError::Cluster(ClusterError::Unavailable)),
            "{err}"
        );
        let listener = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let server =
            HttpServer::serve(listener, handle, Registry::new(), AdminToken::default()).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        let (status, _, body) = request(addr, "POST", "/api/v1/cluster/leave").await;
        assert_eq!(status, 503, "{body}");
        server.stop().await;
    }
}
