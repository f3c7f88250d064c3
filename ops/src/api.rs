//! The admin API's routes over the cluster, clients, sessions, subscriptions
//! and retained messages, and publishing as the broker. JSON in and out;
//! errors are `{"error":{"code":"...","message":"..."}}` (see
//! [`crate::http::ApiError`]). Every route works from any node: reads come
//! from this node's copy of the replicated state, actions are committed
//! through Raft and carried out by the node that holds the client.
//!
//! Listings are pages in key order: `limit` (default 100, at most 1000) and
//! `after`, the `next` of the previous page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_broker::admin::{ClusterView, Deleted, NodeStats, Transfer};
use starling_broker::state::{Message, MessageProps, SessionView, SubscriptionView};
use starling_broker::Broker;
use starling_proto::mqtt::QoS;
use tracing::info;

use crate::http::{ApiError, AppState};

/// The default and the largest page.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The routes, with the paths and methods `openapi.json` documents.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/node", get(node))
        .route("/api/v1/cluster/members/{id}", delete(remove_member))
        .route("/api/v1/cluster/leader/transfer", post(transfer_leadership))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(kick))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}", get(client).delete(delete_session))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/retained", get(retained_list))
        .route(
            "/api/v1/retained/{*topic}",
            get(retained_one).delete(retained_delete),
        )
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/nodes/{id}/drain", post(drain))
}

#[derive(Serialize)]
struct Draining {
    draining: bool,
}

/// Asks node `id` (this one or another) to drain and stop, as SIGTERM does.
async fn drain(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Draining>, ApiError> {
    let broker = broker(&state)?;
    info!(node = id, "draining a node, as asked over http");
    match broker.drain_node(id).await {
        Ok(true) => Ok(Json(Draining { draining: true })),
        Ok(false) => Err(ApiError::not_found(format!("no live node {id}"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

#[derive(Serialize)]
struct Transferred {
    previous: u64,
    leader: u64,
}

/// Has the leader hand leadership to another voter; answers once this node
/// sees the new leader.
async fn transfer_leadership(State(state): State<AppState>) -> Result<Json<Transferred>, ApiError> {
    let broker = broker(&state)?;
    info!("moving leadership, as asked over http");
    let conflict = |code, message| ApiError {
        status: StatusCode::CONFLICT,
        code,
        message,
    };
    match broker.transfer_leadership().await {
        Ok(Transfer::Moved { from, to }) => Ok(Json(Transferred {
            previous: from,
            leader: to,
        })),
        Ok(Transfer::Alone { leader }) => Err(conflict(
            "alone",
            format!("node {leader} is the only voter: there is no one to hand leadership to"),
        )),
        Ok(Transfer::NoLeader) => Err(ApiError::unavailable(
            "no leader is known: an election is under way".into(),
        )),
        Ok(Transfer::TimedOut { leader }) => Err(ApiError::unavailable(format!(
            "no other node was elected in time: node {leader} leads on"
        ))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// The OpenAPI 3 description of the admin API, served as it is.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The broker, or 503 once it is gone (stopping) or before it exists.
fn broker(state: &AppState) -> Result<Arc<Broker>, ApiError> {
    state
        .node
        .broker()
        .ok_or_else(|| ApiError::unavailable("the node is not serving".into()))
}

async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(broker(&state)?.cluster_view()))
}

/// This node's own figures; the status page takes rates from two samples.
async fn node(State(state): State<AppState>) -> Result<Json<NodeStats>, ApiError> {
    Ok(Json(broker(&state)?.node_stats()))
}

async fn remove_member(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    let broker = broker(&state)?;
    info!(member = id, "removing a member, as asked over http");
    broker
        .remove_member(id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters and paging of the client and session listings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientQuery {
    /// Client ids starting with this.
    prefix: Option<String>,
    username: Option<String>,
    /// Connected to this node.
    node: Option<u64>,
    /// Protocol level: 3, 4 or 5.
    protocol: Option<u8>,
    connected: Option<bool>,
    limit: Option<usize>,
    after: Option<String>,
}

impl ClientQuery {
    fn keeps(&self, s: &SessionView) -> bool {
        self.prefix
            .as_deref()
            .is_none_or(|p| s.client_id.starts_with(p))
            && self
                .username
                .as_deref()
                .is_none_or(|u| s.username.as_deref() == Some(u))
            && self.node.is_none_or(|n| s.node == Some(n))
            && self.protocol.is_none_or(|p| s.protocol == p)
            && self.connected.is_none_or(|c| s.connected == c)
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

#[derive(Serialize)]
struct ClientList {
    clients: Vec<SessionView>,
    next: Option<String>,
}

async fn clients(
    State(state): State<AppState>,
    Query(query): Query<ClientQuery>,
) -> Result<Json<ClientList>, ApiError> {
    list(&state, &query, |_| true)
}

async fn sessions(
    State(state): State<AppState>,
    Query(query): Query<ClientQuery>,
) -> Result<Json<ClientList>, ApiError> {
    list(&state, &query, |s| s.persistent)
}

fn list(
    state: &AppState,
    query: &ClientQuery,
    also: impl Fn(&SessionView) -> bool,
) -> Result<Json<ClientList>, ApiError> {
    let broker = broker(state)?;
    let page = broker.sessions(query.after.as_deref(), query.limit(), |s| {
        query.keeps(s) && also(s)
    });
    Ok(Json(ClientList {
        clients: page.items,
        next: page.next,
    }))
}

#[derive(Serialize)]
struct ClientDetail {
    client: SessionView,
    subscriptions: Vec<SubscriptionView>,
    /// Deliveries waiting in the connection's mailbox; only from the node
    /// that holds the connection (`client.node`), `null` elsewhere.
    mailbox: Option<Mailbox>,
}

#[derive(Serialize)]
struct Mailbox {
    messages: usize,
    bytes: usize,
    /// QoS 1/2 messages sent and not yet acknowledged by the client.
    inflight: usize,
}

async fn client(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClientDetail>, ApiError> {
    let broker = broker(&state)?;
    let (client, subscriptions) = broker
        .session(&id)
        .ok_or_else(|| ApiError::not_found(format!("no client or session {id:?}")))?;
    let mailbox = broker
        .mailbox_depth(&id)
        .map(|(messages, bytes, inflight)| Mailbox {
            messages,
            bytes,
            inflight,
        });
    Ok(Json(ClientDetail {
        client,
        subscriptions,
        mailbox,
    }))
}

async fn kick(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let broker = broker(&state)?;
    info!(client_id = %id, "disconnecting a client, as asked over http");
    match broker.kick(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!("{id:?} is not connected"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let broker = broker(&state)?;
    info!(client_id = %id, "deleting a session, as asked over http");
    match broker.delete_session(&id).await {
        Ok(Deleted::Deleted) => Ok(StatusCode::NO_CONTENT),
        Ok(Deleted::NotFound) => Err(ApiError::not_found(format!("no session {id:?}"))),
        Ok(Deleted::Connected) => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "connected",
            message: format!("{id:?} is connected: disconnect it first"),
        }),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionQuery {
    /// The subscriptions of this client.
    client: Option<String>,
    /// The subscriptions whose filters match this topic.
    topic: Option<String>,
}

#[derive(Serialize)]
struct SubscriptionList {
    subscriptions: Vec<SubscriptionView>,
}

async fn subscriptions(
    State(state): State<AppState>,
    Query(query): Query<SubscriptionQuery>,
) -> Result<Json<SubscriptionList>, ApiError> {
    let broker = broker(&state)?;
    let subscriptions = match (query.client, query.topic) {
        (Some(client), None) => broker
            .session(&client)
            .map(|(_, subs)| subs)
            .ok_or_else(|| ApiError::not_found(format!("no client or session {client:?}")))?,
        (None, Some(topic)) => broker.subscribers(&topic),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of ?client=ID and ?topic=TOPIC".into(),
            ))
        }
    };
    Ok(Json(SubscriptionList { subscriptions }))
}

/// A message as the admin API shows it: the payload as text when it is
/// UTF-8, else base64.
#[derive(Debug, Serialize)]
struct MessageView {
    topic: String,
    qos: u8,
    retain: bool,
    payload: String,
    encoding: Encoding,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<PropertiesView>,
    /// When it expires (ms since the epoch), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Text,
    Base64,
}

/// The MQTT 5 properties a message carries.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertiesView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
    /// Seconds (publish only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_expiry_interval: Option<u32>,
}

fn message_view(m: &Message) -> MessageView {
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_owned(), Encoding::Text),
        Err(_) => (BASE64.encode(&m.payload), Encoding::Base64),
    };
    MessageView {
        topic: m.topic.to_string(),
        qos: m.qos as u8,
        retain: m.retain,
        payload,
        encoding,
        properties: m.props.as_deref().map(|p| PropertiesView {
            payload_format_indicator: p.payload_format,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.as_ref().map(|d| BASE64.encode(d)),
            user_properties: p.user_properties.clone(),
            message_expiry_interval: None,
        }),
        expires_at: m.expires_at,
    }
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetainedQuery {
    /// A topic filter; `#` (everything) by default.
    filter: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Serialize)]
struct RetainedList {
    retained: Vec<MessageView>,
    next: Option<String>,
}

async fn retained_list(
    State(state): State<AppState>,
    Query(query): Query<RetainedQuery>,
) -> Result<Json<RetainedList>, ApiError> {
    let broker = broker(&state)?;
    let filter = query.filter.as_deref().unwrap_or("#");
    starling_proto::mqtt::topic::validate_topic_filter(filter)
        .map_err(|e| ApiError::bad_request(format!("filter {filter:?}: {e}")))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let page = broker.retained_page(filter, query.after.as_deref(), limit);
    Ok(Json(RetainedList {
        retained: page.items.iter().map(message_view).collect(),
        next: page.next,
    }))
}

async fn retained_one(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let message = broker(&state)?
        .retained(&topic)
        .ok_or_else(|| ApiError::not_found(format!("no retained message on {topic:?}")))?;
    Ok(Json(message_view(&message)))
}

async fn retained_delete(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    let broker = broker(&state)?;
    info!(%topic, "clearing a retained message, as asked over http");
    match broker.clear_retained(&topic).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        ))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: Option<PropertiesView>,
}

#[derive(Serialize)]
struct Published {
    published: bool,
}

async fn publish(
    State(state): State<AppState>,
    body: Result<Json<PublishRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Published>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let message = to_message(request)?;
    let broker = broker(&state)?;
    broker
        .publish(message)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(Published { published: true }))
}

/// The message a publish request describes, checked as a client's PUBLISH
/// would be.
fn to_message(request: PublishRequest) -> Result<Message, ApiError> {
    starling_proto::mqtt::topic::validate_topic_name(&request.topic)
        .map_err(|e| ApiError::bad_request(format!("topic {:?}: {e}", request.topic)))?;
    let qos = QoS::from_u8(request.qos)
        .ok_or_else(|| ApiError::bad_request(format!("qos {} is not 0, 1 or 2", request.qos)))?;
    let payload = match request.encoding {
        Encoding::Text => Bytes::from(request.payload),
        Encoding::Base64 => Bytes::from(
            BASE64
                .decode(request.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
    };
    let mut message = Message::new(Arc::from(request.topic), payload, qos, request.retain);
    if let Some(p) = request.properties {
        let correlation_data = p
            .correlation_data
            .map(|d| BASE64.decode(d.as_bytes()))
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("correlation_data is not base64: {e}")))?
            .map(Bytes::from);
        message.expires_at = p
            .message_expiry_interval
            .map(|secs| starling_broker::clock::now_ms() + u64::from(secs) * 1000);
        let props = MessageProps {
            payload_format: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data,
            user_properties: p.user_properties,
        };
        if props != MessageProps::default() {
            message.props = Some(Arc::new(props));
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(path, method)` of every `.route(...)` under `/api/` in `source`,
    /// with axum's `{*name}` written as OpenAPI's `{name}`.
    fn routes_in(source: &str) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let call: String = rest
                .chars()
                .take_while(|c| *c != ';')
                .collect::<String>()
                .split("\n        .route")
                .next()
                .unwrap_or_default()
                .to_owned();
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            if !path.starts_with("/api/") {
                continue;
            }
            let path = path.replace("{*", "{");
            for method in ["get", "post", "put", "delete", "patch"] {
                if call.contains(&format!("{method}(")) {
                    found.insert((path.clone(), method.to_owned()));
                }
            }
        }
        found
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        let mut routed = routes_in(include_str!("api.rs"));
        routed.extend(routes_in(include_str!("http.rs")));
        assert!(routed.len() >= 15, "the route parser found {routed:?}");
        assert_eq!(documented, routed);
    }

    #[test]
    fn publish_requests_are_checked_like_a_publish() {
        let request = |json: &str| super::to_message(serde_json::from_str(json).unwrap());
        let m = request(
            r#"{"topic":"a/b","payload":"aGk=","encoding":"base64","qos":1,"retain":true,
                "properties":{"content_type":"text/plain","user_properties":[["k","v"]]}}"#,
        )
        .unwrap();
        assert_eq!(&m.payload[..], b"hi");
        assert_eq!((m.qos as u8, m.retain), (1, true));
        let props = m.props.as_deref().unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.user_properties, [("k".into(), "v".into())]);
        for bad in [
            r#"{"topic":"a/+"}"#,
            r#"{"topic":""}"#,
            r#"{"topic":"t","qos":3}"#,
            r#"{"topic":"t","payload":"!!","encoding":"base64"}"#,
        ] {
            let error = request(bad).unwrap_err();
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
