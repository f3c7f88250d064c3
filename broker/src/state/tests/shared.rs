//! Shared subscriptions: one member of a group gets each message, chosen
//! alike on every node for a committed one.

use super::*;

/// The shared members an effect names, by client id.
fn shared_picks(effects: Vec<Effect>) -> Vec<Arc<str>> {
    effects
        .into_iter()
        .flat_map(|e| match e {
            Effect::Deliver { shared, .. } => shared,
            _ => Vec::new(),
        })
        .map(|t| t.client_id)
        .collect()
}

fn group_of_three(m: &Machine) {
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let c = conn(10 + i as u64);
        connect(m, id, c, true, None);
        subscribe(m, id, c, &[("$share/g/t/+", QoS::AtLeastOnce)]);
    }
}

#[test]
fn mqtt_4_8_2_each_message_reaches_one_member_in_turn_the_same_on_every_node() {
    let (m, n) = (machine(10), machine(10));
    for node in [&m, &n] {
        group_of_three(node);
        node.effects();
    }
    let mut picked = Vec::new();
    for _ in 0..6 {
        publish(&m, msg("t/x", QoS::AtLeastOnce, false, b"x"));
        publish(&n, msg("t/x", QoS::AtLeastOnce, false, b"x"));
        let here = shared_picks(m.effects());
        assert_eq!(here.len(), 1, "one member of the group");
        assert_eq!(here, shared_picks(n.effects()), "every node picks alike");
        picked.extend(here);
    }
    for member in ["a", "b", "c"] {
        assert_eq!(
            picked.iter().filter(|p| &***p == member).count(),
            2,
            "each member in turn: {picked:?}"
        );
    }
    // The shared subscription is no ordinary one: nobody gets a copy besides.
    assert!(m
        .targets("t/x", QoS::AtLeastOnce, None, Pick::None)
        .is_empty());
}

#[test]
fn connected_members_come_first_and_groups_are_independent() {
    let m = machine(10);
    group_of_three(&m);
    // "b" left (persistent, so still a member) and another group has one member.
    connect(&m, "p", conn(20), false, None);
    subscribe(&m, "p", conn(20), &[("$share/g/t/+", QoS::AtLeastOnce)]);
    disconnect(&m, "p", conn(20), None);
    connect(&m, "solo", conn(21), true, None);
    subscribe(&m, "solo", conn(21), &[("$share/h/t/x", QoS::AtMostOnce)]);
    for _ in 0..8 {
        let targets = m.targets("t/x", QoS::AtLeastOnce, None, Pick::Local);
        assert_eq!(targets.len(), 2, "one per group: {targets:?}");
        let g = targets
            .iter()
            .find(|t| t.shared.as_deref() == Some("$share/g/t/+"))
            .expect("group g");
        assert_ne!(&*g.client_id, "p", "an offline member is passed over");
        let h = targets
            .iter()
            .find(|t| t.shared.as_deref() == Some("$share/h/t/x"))
            .expect("group h");
        assert_eq!(&*h.client_id, "solo");
        assert_eq!(h.qos, QoS::AtMostOnce);
    }
}

#[test]
fn another_member_is_found_for_what_one_left_and_unsubscribing_leaves_the_group() {
    let m = machine(10);
    group_of_three(&m);
    let other = m
        .other_member("$share/g/t/+", "t/x", QoS::AtLeastOnce, "a")
        .expect("b or c");
    assert_ne!(&*other.client_id, "a");
    for id in ["b", "c"] {
        let c = conn(if id == "b" { 11 } else { 12 });
        apply(
            &m,
            Command::Unsubscribe {
                client_id: Arc::from(id),
                conn: c,
                filters: vec!["$share/g/t/+".into()],
            },
        );
    }
    assert!(m
        .other_member("$share/g/t/+", "t/x", QoS::AtLeastOnce, "a")
        .is_none());
}

#[test]
fn shared_membership_survives_a_snapshot() {
    let m = machine(10);
    group_of_three(&m);
    let restored = machine(10);
    restored
        .restore(&m.snapshot()().expect("snapshot"))
        .expect("restore");
    let targets = restored.targets("t/y", QoS::AtLeastOnce, None, Pick::Replicated(1));
    assert_eq!(targets.len(), 1);
    assert_eq!(
        targets,
        m.targets("t/y", QoS::AtLeastOnce, None, Pick::Replicated(1))
    );
}
