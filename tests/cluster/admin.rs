//! The admin API across a cluster: what one node shows of clients held by
//! another, and operators' actions taken on one node and carried out where
//! the client is.

use std::time::Duration;

use rumqttc::QoS;
use serde_json::Value;

use starling_testkit::client::{self, Client, Ended};
use starling_testkit::cluster::{http_request, http_request_with_body, Cluster};
use starling_testkit::subscribers::Subscriber;
use starling_testkit::traffic::{assert_delivered_in_order, wait_until, Live, Publisher};

const WAIT: Duration = Duration::from_secs(10);

/// A request to node `id`'s admin API: the status and the body as JSON
/// (`Null` when empty).
async fn api(cluster: &Cluster, id: u64, method: &str, path: &str, body: &str) -> (u16, Value) {
    let port = cluster.node(id).http;
    let (status, text) = if body.is_empty() {
        http_request(port, method, path, WAIT).await
    } else {
        http_request_with_body(port, method, path, body, WAIT).await
    }
    .unwrap_or_else(|| panic!("node {id} answers {method} {path}"));
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, json)
}

#[tokio::test]
async fn any_node_shows_and_acts_on_every_client() {
    let cluster = Cluster::start(3).await;

    // The cluster as each node sees it: three members, one leader.
    let (status, view) = api(&cluster, 1, "GET", "/api/v1/cluster", "").await;
    assert_eq!(status, 200, "{view}");
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    let leaders: Vec<_> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{view}");
    assert!(members.iter().all(|m| m["up"] == true), "{view}");
    let leader = leaders[0]["id"].as_u64().unwrap();
    let (_, on_leader) = api(&cluster, leader, "GET", "/api/v1/cluster", "").await;
    assert!(
        on_leader["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["id"] != leader)
            .all(|m| m["lag"].is_u64()),
        "the leader knows each follower's lag: {on_leader}"
    );

    // A persistent subscriber on node 2, seen from node 1.
    let mut options = client::options(cluster.mqtt(2), "api-sub");
    options.set_clean_session(false);
    let mut sub = Client::connect(options.clone()).await;
    sub.subscribe_ok("api/#", QoS::AtLeastOnce).await;
    let (status, list) = api(&cluster, 1, "GET", "/api/v1/clients?prefix=api-", "").await;
    assert_eq!(status, 200, "{list}");
    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{list}");
    assert_eq!(clients[0]["client_id"], "api-sub");
    assert_eq!(clients[0]["node"], 2);
    assert_eq!(clients[0]["protocol"], 4);
    assert_eq!(clients[0]["connected"], true);
    let (_, detail) = api(&cluster, 3, "GET", "/api/v1/clients/api-sub", "").await;
    assert_eq!(detail["subscriptions"][0]["filter"], "api/#", "{detail}");
    assert!(
        detail["mailbox"].is_null(),
        "node 3 does not hold it: {detail}"
    );
    let (_, detail) = api(&cluster, 2, "GET", "/api/v1/clients/api-sub", "").await;
    assert_eq!(
        detail["mailbox"]["messages"], 0,
        "node 2 holds it: {detail}"
    );
    let (_, matching) = api(&cluster, 3, "GET", "/api/v1/subscriptions?topic=api/x", "").await;
    assert_eq!(
        matching["subscriptions"][0]["client_id"], "api-sub",
        "{matching}"
    );
    let (status, none) = api(&cluster, 1, "GET", "/api/v1/clients?node=3", "").await;
    assert_eq!(
        (status, none["clients"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    // Published as the broker on node 3: retained, and delivered on node 2.
    let body = r#"{"topic":"api/t","payload":"from the API","qos":1,"retain":true}"#;
    let (status, answer) = api(&cluster, 3, "POST", "/api/v1/publish", body).await;
    assert_eq!(status, 200, "{answer}");
    let got = sub.recv_publish(WAIT).await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("api/t", &b"from the API"[..])
    );
    let (status, retained) = api(&cluster, 1, "GET", "/api/v1/retained/api/t", "").await;
    assert_eq!(status, 200);
    assert_eq!(retained["payload"], "from the API", "{retained}");
    let (_, listed) = api(&cluster, 2, "GET", "/api/v1/retained?filter=api/%2B", "").await;
    assert_eq!(
        listed["retained"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let (status, _) = api(&cluster, 2, "DELETE", "/api/v1/retained/api/t", "").await;
    assert_eq!(status, 204);
    let (status, gone) = api(&cluster, 1, "GET", "/api/v1/retained/api/t", "").await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "not_found");
    sub.assert_no_publish(Duration::from_millis(300)).await;

    // A connected session cannot be deleted; disconnecting it from node 1
    // closes it on node 2.
    let (status, refused) = api(&cluster, 1, "DELETE", "/api/v1/sessions/api-sub", "").await;
    assert_eq!(status, 409, "{refused}");
    sub.assert_connected();
    let (status, _) = api(&cluster, 1, "DELETE", "/api/v1/clients/api-sub", "").await;
    assert_eq!(status, 204);
    let deadline = tokio::time::Instant::now() + WAIT;
    while sub.ended().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 did not close the kicked client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(sub.ended(), Some(Ended::Error(_))),
        "{:?}",
        sub.ended()
    );
    // Its node commits the disconnection a moment after closing it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, offline) = api(&cluster, 3, "GET", "/api/v1/sessions?connected=false", "").await;
        if offline["clients"][0]["client_id"] == "api-sub" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session is not shown offline: {offline}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = api(&cluster, 3, "DELETE", "/api/v1/sessions/api-sub", "").await;
    assert_eq!(status, 204);
    let again = Client::connect(options).await;
    assert!(!again.session_present, "the session was deleted");
    let (status, _) = api(&cluster, 2, "DELETE", "/api/v1/clients/nobody", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn leadership_moves_when_asked_on_any_node_and_nothing_acknowledged_is_lost() {
    let cluster = Cluster::start(3).await;
    let everyone = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let sub = Subscriber::start(&everyone, 2, "lt-sub", &[("lt/q", 1)]).await;
    let mut publisher = Publisher::start_resending(&everyone, 3, "lt-pub", "lt/q", 1);
    publisher
        .wait_progress(20, WAIT, "before the transfer")
        .await;

    for round in 0..2 {
        let before = cluster.leader().await.expect("a leader");
        // Asked of a node that does not lead.
        let asker = cluster.ids().into_iter().find(|id| *id != before).unwrap();
        let path = "/api/v1/cluster/leader/transfer";
        let (status, moved) = api(&cluster, asker, "POST", path, "").await;
        assert_eq!(status, 200, "round {round}: {moved}");
        assert_eq!(moved["previous"], before, "{moved}");
        let after = moved["leader"].as_u64().expect("the new leader");
        assert_ne!(after, before, "{moved}");
        let deadline = tokio::time::Instant::now() + WAIT;
        while cluster.leader().await != Some(after) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the nodes agree that node {after} leads"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // It steps down once it hears from the new leader.
        while !cluster
            .node(before)
            .log_text()
            .contains("stepped down: another node leads")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {before} says it stepped down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publisher
            .wait_progress(20, WAIT, &format!("after transfer {round}"))
            .await;
    }

    let acked = publisher.finish().await;
    wait_until(WAIT, || sub.done_waiting("lt/q", &acked)).await;
    let got = sub.finish().await;
    assert_delivered_in_order("lt-sub", &got, "lt/q", &acked);
    for node in cluster.ids() {
        assert_eq!(cluster.readyz(node).await, Some(200), "node {node} ready");
    }
}

#[tokio::test]
async fn a_lone_voter_has_no_one_to_hand_leadership_to() {
    let cluster = Cluster::start(1).await;
    let (status, body) = api(&cluster, 1, "POST", "/api/v1/cluster/leader/transfer", "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "alone", "{body}");
}
