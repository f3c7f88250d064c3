//! The replicated clock: session expiry, delayed wills, expired messages.

use super::*;

fn tick(m: &Machine, now: u64) {
    assert_eq!(apply(m, Command::Tick { now }), Reply::Done);
}

fn connect_v5(m: &Machine, id: &str, c: ConnId, expiry: u32, will: Option<(Message, u32)>) {
    let (will, will_delay) = match will {
        Some((w, d)) => (Some(w), d),
        None => (None, 0),
    };
    apply(
        m,
        Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_start: false,
            session_expiry: expiry,
            will,
            will_delay,
            max_queued_messages: 10,
            max_queued_bytes: 1 << 20,
            info: ConnInfo::default(),
        },
    );
}

/// The connection `c` of `id` is lost (its will is due).
fn lose(m: &Machine, id: &str, c: ConnId) -> Reply {
    lose_at(m, id, c, 0)
}

/// As [`lose`], the loss seen by its node at `at` (ms since the epoch).
fn lose_at(m: &Machine, id: &str, c: ConnId, at: u64) -> Reply {
    drained_at(m, id, c, at, 0)
}

/// As [`lose_at`], by a drain of its node with `grace` seconds to come back.
fn drained_at(m: &Machine, id: &str, c: ConnId, at: u64, grace: u32) -> Reply {
    apply(
        m,
        Command::Disconnect {
            client_id: Arc::from(id),
            conn: c,
            publish_will: true,
            sent_below: None,
            session_expiry: None,
            at,
            will_grace: grace,
        },
    )
}

/// A 3.1.1 clean-session client with a will, as most devices are.
fn connect_clean_with_will(m: &Machine, id: &str, c: ConnId, will: &Message) {
    connect(m, id, c, true, Some(will.clone()));
}

#[test]
fn a_drained_client_that_comes_back_within_the_grace_has_no_will() {
    let m = machine(10);
    connect(&m, "sub", conn(9), true, None);
    subscribe(&m, "sub", conn(9), &[("will/#", QoS::AtLeastOnce)]);
    tick(&m, 1_000);
    let will = msg("will/a", QoS::AtLeastOnce, false, b"gone");
    connect_clean_with_will(&m, "a", conn(1), &will);
    assert_eq!(
        drained_at(&m, "a", conn(1), 1_000, 30),
        Reply::Disconnected { wills: 0 },
        "a clean session is kept for the grace, its will held back"
    );
    m.effects();
    tick(&m, 20_000);
    assert!(m.delivered().is_empty());
    // Back on another node, with a clean session again: no will, ever.
    connect_clean_with_will(&m, "a", conn(2), &will);
    m.effects();
    tick(&m, 100_000);
    assert!(m.delivered().is_empty(), "the client came back: not lost");
    // And its new connection's will still works as usual.
    assert_eq!(lose(&m, "a", conn(2)), Reply::Disconnected { wills: 1 });
}

#[test]
fn a_drained_client_that_never_comes_back_gets_its_will_once_after_the_grace() {
    let m = machine(10);
    connect(&m, "sub", conn(9), true, None);
    subscribe(&m, "sub", conn(9), &[("will/#", QoS::AtLeastOnce)]);
    tick(&m, 1_000);
    let will = msg("will/b", QoS::AtLeastOnce, false, b"gone");
    connect_clean_with_will(&m, "b", conn(1), &will);
    drained_at(&m, "b", conn(1), 1_000, 30);
    m.effects();
    tick(&m, 30_999);
    assert!(m.delivered().is_empty(), "not within the grace");
    tick(&m, 31_000);
    assert_eq!(m.delivered(), vec![will.clone()]);
    tick(&m, 90_000);
    assert!(m.delivered().is_empty(), "once");
    assert!(
        m.session_view("b").is_none(),
        "the clean session ended with the grace"
    );

    // An MQTT 5 Will Delay longer than the grace is kept.
    connect_v5(&m, "c", conn(3), 600, Some((will.clone(), 100)));
    drained_at(&m, "c", conn(3), 100_000, 30);
    m.effects();
    tick(&m, 199_999);
    assert!(m.delivered().is_empty());
    tick(&m, 200_000);
    assert_eq!(m.delivered(), vec![will]);
}

#[test]
fn only_the_current_incarnation_of_the_named_node_is_asked_to_drain() {
    let m = machine(10);
    apply(
        &m,
        Command::NodeStarted {
            node: 2,
            incarnation: 7,
        },
    );
    m.effects();
    assert_eq!(
        apply(&m, Command::DrainNode { node: 2 }),
        Reply::Found(true)
    );
    assert_eq!(
        m.effects(),
        vec![Effect::Drain {
            node: 2,
            incarnation: 7
        }]
    );
    assert_eq!(
        apply(&m, Command::DrainNode { node: 5 }),
        Reply::Found(false)
    );
    assert!(m.effects().is_empty());
}

#[test]
fn a_session_ends_once_its_expiry_passed_on_the_replicated_clock() {
    let m = machine(10);
    tick(&m, 10_000);
    connect_v5(&m, "s", conn(1), 5, None);
    subscribe(&m, "s", conn(1), &[("t", QoS::AtLeastOnce)]);
    disconnect(&m, "s", conn(1), None);
    tick(&m, 14_999);
    assert!(m.queue_head("s").is_none());
    publish(&m, msg("t", QoS::AtLeastOnce, false, b"kept"));
    assert_eq!(m.queued("s", 0, 10).len(), 1, "still a session at 4.999 s");
    // A clock that goes back changes nothing.
    tick(&m, 1_000);
    assert_eq!(m.clock(), 14_999);
    tick(&m, 15_000);
    assert!(m.queued("s", 0, 10).is_empty(), "gone after 5 s");
    assert!(
        m.targets("t", QoS::AtLeastOnce, None, Pick::Local)
            .is_empty(),
        "and its subscriptions with it"
    );
    // 0xFFFFFFFF never expires.
    connect_v5(&m, "forever", conn(2), NEVER_EXPIRES, None);
    subscribe(&m, "forever", conn(2), &[("t", QoS::AtLeastOnce)]);
    disconnect(&m, "forever", conn(2), None);
    tick(&m, u64::MAX / 2);
    assert_eq!(m.targets("t", QoS::AtLeastOnce, None, Pick::Local).len(), 1);
}

#[test]
fn a_delayed_will_is_published_when_due_unless_the_session_resumes() {
    let m = machine(10);
    connect(&m, "sub", conn(9), true, None);
    subscribe(&m, "sub", conn(9), &[("will/#", QoS::AtLeastOnce)]);
    tick(&m, 1_000);
    let will = msg("will/a", QoS::AtLeastOnce, false, b"gone");
    connect_v5(&m, "a", conn(1), 60, Some((will.clone(), 3)));
    assert_eq!(lose(&m, "a", conn(1)), Reply::Disconnected { wills: 0 });
    m.effects();
    tick(&m, 3_999);
    assert!(m.delivered().is_empty(), "not before its delay");
    tick(&m, 4_000);
    assert_eq!(m.delivered(), vec![will.clone()]);
    tick(&m, 9_000);
    assert!(m.delivered().is_empty(), "once");

    // Resumed in time: never published [MQTT-3.1.3-9].
    connect_v5(&m, "b", conn(2), 60, Some((will.clone(), 3)));
    lose(&m, "b", conn(2));
    connect_v5(&m, "b", conn(3), 60, None);
    m.effects();
    tick(&m, 20_000);
    assert!(m.delivered().is_empty());

    // The session ends before the delay: published then.
    connect_v5(&m, "c", conn(4), 2, Some((will.clone(), 30)));
    lose(&m, "c", conn(4));
    m.effects();
    tick(&m, 22_000);
    assert_eq!(m.delivered(), vec![will]);
}

#[test]
fn expired_retained_and_queued_messages_are_dropped_by_the_clock() {
    let m = machine(10);
    tick(&m, 1_000);
    let mut retained = msg("r", QoS::AtLeastOnce, true, b"r");
    retained.expires_at = Some(2_000);
    publish(&m, retained);
    connect_v5(&m, "s", conn(1), NEVER_EXPIRES, None);
    subscribe(&m, "s", conn(1), &[("q", QoS::AtLeastOnce)]);
    disconnect(&m, "s", conn(1), None);
    let mut queued = msg("q", QoS::AtLeastOnce, false, b"q");
    queued.expires_at = Some(2_000);
    publish(&m, queued);
    publish(&m, msg("q", QoS::AtLeastOnce, false, b"stays"));
    assert_eq!(m.retained_matching("r").len(), 1);
    tick(&m, 2_000);
    assert!(m.retained_matching("r").is_empty());
    let left = m.queued("s", 0, 10);
    assert_eq!(left.len(), 1);
    assert_eq!(&left[0].1.message.payload[..], b"stays");
}

#[test]
fn a_delay_counts_from_when_the_connection_ended_not_from_the_last_tick() {
    let m = machine(10);
    connect(&m, "sub", conn(9), true, None);
    subscribe(&m, "sub", conn(9), &[("will/#", QoS::AtLeastOnce)]);
    tick(&m, 1_000);
    let will = msg("will/a", QoS::AtLeastOnce, false, b"gone");
    connect_v5(&m, "a", conn(1), 60, Some((will.clone(), 3)));
    lose_at(&m, "a", conn(1), 1_900);
    m.effects();
    tick(&m, 4_899);
    assert!(m.delivered().is_empty(), "3 s after 1.9 s, not after 1 s");
    tick(&m, 4_900);
    assert_eq!(m.delivered(), vec![will]);
}
