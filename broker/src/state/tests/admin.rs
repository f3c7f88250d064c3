//! The operators' commands and the admin API's views of the state.

use super::*;

fn with_info(m: &Machine, id: &str, c: ConnId, clean: bool, address: &str) {
    let info = ConnInfo {
        address: address.into(),
        protocol: 5,
        keep_alive: 30,
        username: Some("alice".into()),
        connected_at: 1234,
    };
    let will = Some(msg("will", QoS::AtLeastOnce, false, b"bye"));
    connect_with(m, id, c, clean, will, info);
}

#[test]
fn kick_asks_the_holding_node_and_says_whether_it_was_connected() {
    let m = machine(10);
    with_info(&m, "c", conn(1), true, "10.0.0.1:5000");
    m.effects();
    assert_eq!(
        apply(
            &m,
            Command::Kick {
                client_id: Arc::from("c")
            }
        ),
        Reply::Found(true)
    );
    assert_eq!(m.effects(), vec![Effect::AdminKick(conn(1))]);
    assert_eq!(
        apply(
            &m,
            Command::Kick {
                client_id: Arc::from("nobody")
            }
        ),
        Reply::Found(false)
    );
    assert!(m.effects().is_empty());
}

#[test]
fn only_an_offline_session_can_be_deleted() {
    let m = machine(10);
    with_info(&m, "p", conn(1), false, "a:1");
    subscribe(&m, "p", conn(1), &[("t/#", QoS::AtLeastOnce)]);
    let delete = || Command::DeleteSession {
        client_id: Arc::from("p"),
    };
    assert_eq!(apply(&m, delete()), Reply::InUse);
    disconnect(&m, "p", conn(1), None);
    publish(&m, msg("t/1", QoS::AtLeastOnce, false, b"queued"));
    assert_eq!(m.queued("p", 0, 10).len(), 1);
    assert_eq!(apply(&m, delete()), Reply::Found(true));
    assert!(m.session_view("p").is_none());
    assert!(
        m.targets("t/1", QoS::AtLeastOnce, None, Pick::Local)
            .is_empty(),
        "its routes went with it"
    );
    assert_eq!(apply(&m, delete()), Reply::Found(false));
}

#[test]
fn the_broker_publishes_like_a_client_and_clears_retained_messages_quietly() {
    let m = machine(10);
    with_info(&m, "p", conn(1), false, "a:1");
    subscribe(&m, "p", conn(1), &[("r/#", QoS::AtLeastOnce)]);
    disconnect(&m, "p", conn(1), None);
    let reply = apply(
        &m,
        Command::BrokerPublish {
            message: msg("r/1", QoS::AtLeastOnce, true, b"from the broker"),
        },
    );
    assert_eq!(reply, Reply::Published { duplicate: false });
    assert_eq!(
        m.queued("p", 0, 10).len(),
        1,
        "queued for the offline session"
    );
    assert_eq!(
        m.retained("r/1").unwrap().payload,
        Bytes::from_static(b"from the broker")
    );
    assert_eq!(m.retained_usage(), (1, 3 + 15));
    let clear = || Command::ClearRetained {
        topic: Arc::from("r/1"),
    };
    assert_eq!(apply(&m, clear()), Reply::Found(true));
    assert_eq!(m.retained_usage(), (0, 0));
    assert_eq!(m.queued("p", 0, 10).len(), 1, "clearing delivers nothing");
    assert_eq!(apply(&m, clear()), Reply::Found(false));
}

#[test]
fn views_page_sessions_and_retained_messages_in_order() {
    let m = machine(10);
    for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        with_info(&m, id, conn(i as u64 + 1), false, &format!("10.0.0.{i}:1"));
    }
    subscribe(
        &m,
        "c",
        conn(3),
        &[("x/+", QoS::AtLeastOnce), ("$share/g/x/#", QoS::AtMostOnce)],
    );
    disconnect(&m, "d", conn(4), None);

    let first = m.sessions_page(None, 2, |_| true);
    let ids: Vec<_> = first.items.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(first.next.as_deref(), Some("b"));
    let rest = m.sessions_page(first.next.as_deref(), 10, |_| true);
    let ids: Vec<_> = rest.items.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, ["c", "d", "e"]);
    assert_eq!(rest.next, None);
    let offline = m.sessions_page(None, 10, |s| !s.connected);
    assert_eq!(offline.items.len(), 1);
    let d = &offline.items[0];
    assert_eq!(
        (d.client_id.as_str(), d.node, d.persistent),
        ("d", None, true)
    );
    assert!(d.disconnected_at.is_some());

    let (c, subs) = m.session_view("c").unwrap();
    assert_eq!(c.node, Some(conn(3).node));
    assert_eq!(c.address, "10.0.0.2:1");
    assert_eq!((c.protocol, c.keep_alive, c.connected_at), (5, 30, 1234));
    assert_eq!(c.username.as_deref(), Some("alice"));
    assert!(c.has_will);
    assert_eq!(c.subscriptions, 2);
    assert_eq!(subs.len(), 2);
    let matching: Vec<_> = m
        .subscribers("x/y")
        .into_iter()
        .map(|s| (s.client_id, s.filter))
        .collect();
    assert_eq!(
        matching,
        [
            ("c".to_owned(), "$share/g/x/#".to_owned()),
            ("c".to_owned(), "x/+".to_owned())
        ]
    );

    for topic in ["r/1", "r/2", "q/1", "r/3"] {
        publish(&m, msg(topic, QoS::AtMostOnce, true, b"v"));
    }
    let page = m.retained_page("r/#", None, 2);
    let topics: Vec<_> = page.items.iter().map(|r| &*r.topic).collect();
    assert_eq!(topics, ["r/1", "r/2"]);
    let page = m.retained_page("r/#", page.next.as_deref(), 2);
    let topics: Vec<_> = page.items.iter().map(|r| &*r.topic).collect();
    assert_eq!(topics, ["r/3"]);
    assert_eq!(page.next, None);
}

#[test]
fn connections_are_counted_by_the_node_that_holds_them() {
    let m = machine(10);
    let on = |node, local| ConnId {
        node,
        incarnation: 1,
        local,
    };
    with_info(&m, "a", on(1, 1), false, "a:1");
    with_info(&m, "b", on(2, 1), true, "b:1");
    with_info(&m, "c", on(2, 2), false, "c:1");
    with_info(&m, "d", on(3, 1), false, "d:1");
    disconnect(&m, "d", on(3, 1), None);
    let counts: Vec<_> = m.connections_by_node().into_iter().collect();
    assert_eq!(
        counts,
        [(1, 1), (2, 2)],
        "an offline session counts nowhere"
    );
}
