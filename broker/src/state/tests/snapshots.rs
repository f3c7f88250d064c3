//! Snapshots: round trips, determinism, format, and payloads stored once.

use super::*;

#[test]
fn snapshot_restore_round_trip_rebuilds_routes() {
    let m = machine(10);
    connect(&m, "sub", conn(1), false, None);
    subscribe(&m, "sub", conn(1), &[("a/#", QoS::AtLeastOnce)]);
    publish(&m, msg("a/b", QoS::AtLeastOnce, false, b"q"));
    publish(&m, msg("r", QoS::AtMostOnce, true, b"kept"));
    let snapshot = m.snapshot()().expect("snapshot");

    let restored = machine(10);
    restored.restore(&snapshot).expect("restore");
    assert_eq!(restored.summary(), m.summary());
    assert!(restored
        .targets("a/x", QoS::AtLeastOnce, None, Pick::Local)
        .iter()
        .any(|t| t.queued));
    assert_eq!(restored.retained_matching("r").len(), 1);
    assert_eq!(
        restored.retained_usage(),
        (1, 5),
        "retained bytes counted again"
    );
    assert!(session_present(connect(
        &restored,
        "sub",
        conn(2),
        false,
        None
    )));
}

#[test]
fn applied_count_grows_with_every_command_and_survives_a_snapshot() {
    let m = machine(10);
    assert_eq!(m.applied(), 0);
    connect(&m, "a", conn(1), true, None);
    publish(&m, msg("t", QoS::AtMostOnce, false, b"x"));
    // The publisher's own Connect counts too.
    assert_eq!(m.applied(), 3);
    let restored = machine(10);
    restored
        .restore(&m.snapshot()().expect("snapshot"))
        .expect("restore");
    assert_eq!(restored.applied(), 3);
}

/// Apply reads no node's configuration and no clock: the same log gives the
/// same state, to the byte, on nodes configured differently.
#[test]
fn the_same_log_gives_byte_identical_snapshots_on_every_node() {
    let log = mixed_log();
    let a = machine(1);
    let b = machine(100_000);
    let replies_a = run(&a, &log);
    let replies_b = run(&b, &log);
    assert_eq!(replies_a, replies_b, "same replies");
    assert_eq!(a.effects(), b.effects(), "same effects");
    let snapshot = a.snapshot()().expect("snapshot");
    assert_eq!(snapshot, b.snapshot()().expect("snapshot"));
    // The queue limit that applied is the one the Connect carried (4), on both.
    // 4 of 6 queued, 1 acked, then p's will.
    assert_eq!(a.queued("s", 0, 100).len(), 4);
    // And a third node restored from the snapshot continues identically.
    let c = machine(7);
    c.restore(&snapshot).expect("restore");
    let more = [Command::Connect {
        client_id: Arc::from("s"),
        conn: conn(9),
        clean_start: false,
        session_expiry: NEVER_EXPIRES,
        will: None,
        will_delay: 0,
        max_queued_messages: 4,
        max_queued_bytes: 1 << 20,
        info: ConnInfo::default(),
    }];
    run(&a, &more);
    run(&c, &more);
    assert_eq!(
        a.snapshot()().expect("snapshot"),
        c.snapshot()().expect("snapshot")
    );
}

#[test]
fn restore_refuses_a_snapshot_of_another_format_with_a_clear_error() {
    let m = machine(10);
    connect(&m, "a", conn(1), false, None);
    let current = m.snapshot()().expect("snapshot");
    // What the first version wrote: the state alone, with no header.
    let previous = current[14..].to_vec();
    let err = machine(10).restore(&previous).expect_err("refused");
    assert!(err.contains("older version"), "{err}");
    let mut future = current.clone();
    future[4..6].copy_from_slice(&(snapshot::FORMAT + 1).to_be_bytes());
    let err = machine(10).restore(&future).expect_err("refused");
    assert!(
        err.contains(&format!("format {}", snapshot::FORMAT + 1)),
        "{err}"
    );
    // Nothing was replaced by a refused snapshot.
    let m2 = machine(10);
    m2.restore(&current).expect("restore");
    assert_eq!(m2.summary().sessions, 1);
}

/// A message queued for many persistent sessions is stored once in a
/// snapshot, and shared again once restored.
#[test]
fn a_payload_queued_for_many_sessions_is_stored_once() {
    const SESSIONS: usize = 100;
    const PAYLOAD: usize = 10_000;
    let m = machine(10);
    for i in 0..SESSIONS {
        let id = format!("s{i}");
        let c = conn(u64::try_from(i).expect("small"));
        connect(&m, &id, c, false, None);
        subscribe(&m, &id, c, &[("t", QoS::AtLeastOnce)]);
    }
    let payload: &'static [u8] = Box::leak(vec![7u8; PAYLOAD].into_boxed_slice());
    publish(&m, msg("t", QoS::AtLeastOnce, false, payload));
    let snapshot = m.snapshot()().expect("snapshot");
    assert!(
        snapshot.len() < 2 * PAYLOAD,
        "{} bytes for one payload of {PAYLOAD} queued {SESSIONS} times",
        snapshot.len()
    );
    let restored = machine(10);
    restored.restore(&snapshot).expect("restore");
    assert_eq!(restored.summary().queued_messages, SESSIONS);
    let first = restored.queued("s0", 0, 1);
    let last = restored.queued(&format!("s{}", SESSIONS - 1), 0, 1);
    assert!(Arc::ptr_eq(&first[0].1.message, &last[0].1.message));
    assert_eq!(restored.snapshot()().expect("snapshot"), snapshot);
}
