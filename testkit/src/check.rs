//! Judges a `history`: what a broker must never do, whatever faults it went
//! through, stated over what the clients saw.
//!
//! - an acknowledged message a subscriber (subscribed before it was sent)
//!   never received: `Lost`;
//! - a QoS 2 delivery handed to one subscriber twice: `Qos2Duplicate`;
//! - a QoS 1 message on one subscriber connection more often than its
//!   publisher sent it: `Qos1Duplicate` (a copy on a later connection is a
//!   redelivery, which QoS 1 allows; the broker's DUP flag is recorded, not
//!   judged);
//! - acknowledged messages of one publisher first delivered out of order:
//!   `Reordered`;
//! - a retained read older than a write acknowledged before the read began:
//!   `StaleRetained`;
//! - a will delivered twice, missing after a connection ended without
//!   DISCONNECT, or delivered after a clean DISCONNECT that no fault came
//!   near: `WillDuplicated`, `WillMissing`, `WillUnexpected`;
//! - a persistent session reconnecting without its session: `SessionLost`;
//! - a delivery of something nobody published: `Phantom`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::Event;

/// How close (µs) a fault must come to a cleanly closed will connection for
/// its will to be excused: a DISCONNECT that reached a node just before it was
/// killed or cut off may never have been committed.
pub const FAULT_MARGIN_US: u64 = 3_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Lost,
    Qos2Duplicate,
    Qos1Duplicate,
    Reordered,
    StaleRetained,
    WillMissing,
    WillDuplicated,
    WillUnexpected,
    SessionLost,
    Phantom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: Kind,
    pub detail: String,
}

/// What `check` counted and found.
#[derive(Debug, Default)]
pub struct Report {
    pub published: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub resent: usize,
    pub deliveries: usize,
    pub connects: usize,
    pub retained_reads: usize,
    pub will_clients: usize,
    pub will_deliveries: usize,
    /// Faults begun, by kind.
    pub faults: BTreeMap<String, usize>,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Operations a client performed: publishes, connections, retained reads
    /// and will connections.
    pub fn operations(&self) -> usize {
        self.published + self.connects + self.retained_reads + self.will_clients
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    fn anomaly(&mut self, kind: Kind, detail: String) {
        self.anomalies.push(Anomaly { kind, detail });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "operations {}: {} publishes ({} acknowledged, {} unknown, {} resent), \
             {} connects, {} retained reads, {} will clients",
            self.operations(),
            self.published,
            self.acknowledged,
            self.unknown,
            self.resent,
            self.connects,
            self.retained_reads,
            self.will_clients
        )?;
        writeln!(
            f,
            "deliveries {}, will deliveries {}",
            self.deliveries, self.will_deliveries
        )?;
        writeln!(
            f,
            "faults {}: {:?}",
            self.faults.values().sum::<usize>(),
            self.faults
        )?;
        let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for anomaly in &self.anomalies {
            *by_kind.entry(anomaly.kind).or_default() += 1;
        }
        writeln!(f, "anomalies {}: {by_kind:?}", self.anomalies.len())?;
        for anomaly in self.anomalies.iter().take(40) {
            writeln!(f, "  {:?}: {}", anomaly.kind, anomaly.detail)?;
        }
        Ok(())
    }
}

/// Whether MQTT topic filter `filter` matches `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (part, Some(level)) if part == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// One published message, by (topic, seq).
#[derive(Default)]
struct Message {
    qos: u8,
    retain: bool,
    invoked: Option<u64>,
    acked: Option<u64>,
    /// PUBLISH packets the publisher sent for it.
    transmissions: u32,
}

/// One copy of a message at a subscriber.
struct Copy {
    t: u64,
    conn: u32,
    qos: u8,
    fresh: bool,
}

/// The life of one will client.
#[derive(Default)]
struct WillLife {
    connected: u64,
    topic: String,
    /// (t, accepted, clean) of its end.
    end: Option<(u64, bool, bool)>,
}

pub fn check(events: &[Event]) -> Report {
    let mut report = Report::default();
    let mut messages: HashMap<(String, u32), Message> = HashMap::new();
    // subscriber -> (filter, granted at)
    let mut subscriptions: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    // (subscriber, topic, seq) -> copies
    let mut copies: BTreeMap<(String, String, u32), Vec<Copy>> = BTreeMap::new();
    let mut connects: BTreeMap<String, Vec<(u64, bool, bool)>> = BTreeMap::new();
    let mut reads = Vec::new();
    let mut wills: BTreeMap<String, WillLife> = BTreeMap::new();
    // (subscriber, will of) -> (connection, QoS) of each fresh delivery
    let mut will_copies: BTreeMap<(String, String), Vec<(u32, u8)>> = BTreeMap::new();
    let mut faults: Vec<(u64, u64)> = Vec::new();
    let mut open_fault: Option<u64> = None;

    for event in events {
        match event {
            Event::Connect {
                t,
                client,
                clean,
                session_present,
                ..
            } => {
                report.connects += 1;
                connects
                    .entry(client.clone())
                    .or_default()
                    .push((*t, *clean, *session_present));
            }
            Event::Subscribed {
                t, client, filter, ..
            } => {
                let subs = subscriptions.entry(client.clone()).or_default();
                if !subs.iter().any(|(f, _)| f == filter) {
                    subs.push((filter.clone(), *t));
                }
            }
            Event::Invoke {
                t,
                topic,
                seq,
                qos,
                retain,
                ..
            } => {
                report.published += 1;
                let message = messages.entry((topic.clone(), *seq)).or_default();
                message.qos = *qos;
                message.retain = *retain;
                message.invoked = Some(*t);
                message.transmissions += 1;
            }
            Event::Resend { topic, seq, .. } => {
                report.resent += 1;
                messages
                    .entry((topic.clone(), *seq))
                    .or_default()
                    .transmissions += 1;
            }
            Event::Ok { t, topic, seq, .. } => {
                report.acknowledged += 1;
                messages.entry((topic.clone(), *seq)).or_default().acked = Some(*t);
            }
            Event::Unknown { .. } => report.unknown += 1,
            Event::Delivery {
                t,
                client,
                conn,
                topic,
                seq,
                qos,
                fresh,
                ..
            } => {
                report.deliveries += 1;
                copies
                    .entry((client.clone(), topic.clone(), *seq))
                    .or_default()
                    .push(Copy {
                        t: *t,
                        conn: *conn,
                        qos: *qos,
                        fresh: *fresh,
                    });
            }
            Event::RetainedRead {
                t_start,
                client,
                node,
                topic,
                value,
                ..
            } => {
                report.retained_reads += 1;
                reads.push((*t_start, client.clone(), *node, topic.clone(), *value));
            }
            Event::WillConnect {
                t, client, topic, ..
            } => {
                report.will_clients += 1;
                let life = wills.entry(client.clone()).or_default();
                life.connected = *t;
                life.topic = topic.clone();
            }
            Event::WillEnd {
                t,
                client,
                accepted,
                clean,
            } => {
                wills.entry(client.clone()).or_default().end = Some((*t, *accepted, *clean));
            }
            Event::WillDelivery {
                client,
                of,
                conn,
                qos,
                ..
            } => {
                report.will_deliveries += 1;
                will_copies
                    .entry((client.clone(), of.clone()))
                    .or_default()
                    .push((*conn, *qos));
            }
            Event::FaultStart { t, kind, .. } => {
                *report.faults.entry(kind.clone()).or_default() += 1;
                if let Some(start) = open_fault.replace(*t) {
                    faults.push((start, *t));
                }
            }
            Event::FaultEnd { t, .. } => {
                if let Some(start) = open_fault.take() {
                    faults.push((start, *t));
                }
            }
        }
    }
    if let Some(start) = open_fault {
        faults.push((start, u64::MAX));
    }

    check_sessions(&mut report, &connects);
    check_deliveries(&mut report, &messages, &subscriptions, &copies);
    check_retained(&mut report, &messages, &reads);
    check_wills(&mut report, &wills, &will_copies, &subscriptions, &faults);
    report
}

/// When `subscriber` first held a subscription matching `topic`.
fn subscribed_at(subs: &[(String, u64)], topic: &str) -> Option<u64> {
    subs.iter()
        .filter(|(filter, _)| matches(filter, topic))
        .map(|(_, t)| *t)
        .min()
}

fn check_sessions(report: &mut Report, connects: &BTreeMap<String, Vec<(u64, bool, bool)>>) {
    for (client, list) in connects {
        for (i, (t, clean, present)) in list.iter().enumerate() {
            if i > 0 && !clean && !present {
                report.anomaly(
                    Kind::SessionLost,
                    format!("{client}: connection {} at {t} µs had no session", i + 1),
                );
            }
        }
    }
}

fn check_deliveries(
    report: &mut Report,
    messages: &HashMap<(String, u32), Message>,
    subscriptions: &BTreeMap<String, Vec<(String, u64)>>,
    copies: &BTreeMap<(String, String, u32), Vec<Copy>>,
) {
    for ((subscriber, topic, seq), list) in copies {
        let Some(message) = messages
            .get(&(topic.clone(), *seq))
            .filter(|m| m.invoked.is_some())
        else {
            report.anomaly(
                Kind::Phantom,
                format!("{subscriber} got {topic} #{seq}, which was never published"),
            );
            continue;
        };
        let fresh_qos2 = list.iter().filter(|c| c.qos == 2 && c.fresh).count();
        if fresh_qos2 > 1 {
            report.anomaly(
                Kind::Qos2Duplicate,
                format!("{subscriber} got {topic} #{seq} {fresh_qos2} times at QoS 2"),
            );
        }
        let allowed = if message.qos == 1 {
            message.transmissions.max(1)
        } else {
            1
        };
        let mut per_conn: BTreeMap<u32, u32> = BTreeMap::new();
        for copy in list.iter().filter(|c| c.qos == 1) {
            *per_conn.entry(copy.conn).or_default() += 1;
        }
        for (conn, count) in per_conn {
            if count > allowed {
                report.anomaly(
                    Kind::Qos1Duplicate,
                    format!(
                        "{subscriber} got {topic} #{seq} {count} times on connection {conn}, \
                         sent {allowed} times"
                    ),
                );
            }
        }
    }

    // Lost, and the order of first deliveries, per subscriber and topic.
    let mut topics: BTreeMap<&str, Vec<(u32, &Message)>> = BTreeMap::new();
    for ((topic, seq), message) in messages {
        if message.acked.is_some() && message.qos > 0 {
            topics.entry(topic).or_default().push((*seq, message));
        }
    }
    for (subscriber, subs) in subscriptions {
        for (topic, acked) in &mut topics {
            let Some(since) = subscribed_at(subs, topic) else {
                continue;
            };
            acked.sort_by_key(|(seq, _)| *seq);
            let mut firsts = Vec::new();
            for (seq, message) in acked.iter() {
                if message.invoked.is_some_and(|t| t < since) {
                    continue;
                }
                match copies.get(&(subscriber.clone(), topic.to_string(), *seq)) {
                    Some(list) => {
                        let first = list.iter().map(|c| c.t).min().unwrap_or(0);
                        firsts.push((first, *seq));
                    }
                    None => report.anomaly(
                        Kind::Lost,
                        format!("{subscriber} never got {topic} #{seq}, acknowledged"),
                    ),
                }
            }
            firsts.sort();
            for pair in firsts.windows(2) {
                let ((_, before), (_, after)) = (pair[0], pair[1]);
                if after < before {
                    report.anomaly(
                        Kind::Reordered,
                        format!("{subscriber} first got {topic} #{after} after #{before}"),
                    );
                }
            }
        }
    }
}

fn check_retained(
    report: &mut Report,
    messages: &HashMap<(String, u32), Message>,
    reads: &[(u64, String, u64, String, Option<u32>)],
) {
    for (t_start, client, node, topic, value) in reads {
        let newest_acked = messages
            .iter()
            .filter(|((t, _), m)| t == topic && m.retain && m.acked.is_some_and(|a| a < *t_start))
            .map(|((_, seq), _)| *seq)
            .max();
        let Some(newest) = newest_acked else {
            continue;
        };
        if value.is_none_or(|v| v < newest) {
            report.anomaly(
                Kind::StaleRetained,
                format!(
                    "{client} on node {node} read {topic} = {value:?} at {t_start} µs, \
                     but #{newest} was acknowledged before"
                ),
            );
        }
    }
}

fn check_wills(
    report: &mut Report,
    wills: &BTreeMap<String, WillLife>,
    will_copies: &BTreeMap<(String, String), Vec<(u32, u8)>>,
    subscriptions: &BTreeMap<String, Vec<(String, u64)>>,
    faults: &[(u64, u64)],
) {
    for (subscriber, of) in will_copies.keys() {
        if !wills.contains_key(of) {
            report.anomaly(
                Kind::WillUnexpected,
                format!("{subscriber} got a will of {of}, which never connected with one"),
            );
        }
    }
    for (client, life) in wills {
        let end = life.end.map_or(u64::MAX, |(t, _, _)| t);
        let near_fault = faults.iter().any(|(start, stop)| {
            *start <= end.saturating_add(FAULT_MARGIN_US) && *stop >= life.connected
        });
        for (subscriber, subs) in subscriptions {
            if subscribed_at(subs, &life.topic).is_none_or(|t| t > life.connected) {
                continue;
            }
            let got = will_count(will_copies.get(&(subscriber.clone(), client.clone())));
            let (min, max) = match life.end {
                Some((_, true, false)) => (1, 1),
                Some((_, true, true)) if !near_fault => (0, 0),
                _ => (0, 1),
            };
            let how = match life.end {
                Some((_, true, false)) => "ended without DISCONNECT",
                Some((_, true, true)) => "disconnected cleanly",
                Some((_, false, _)) => "never accepted",
                None => "never ended",
            };
            if got < min {
                report.anomaly(
                    Kind::WillMissing,
                    format!("{subscriber} never got the will of {client} ({how})"),
                );
            } else if got > 1 {
                report.anomaly(
                    Kind::WillDuplicated,
                    format!("{subscriber} got the will of {client} {got} times ({how})"),
                );
            } else if got > max {
                report.anomaly(
                    Kind::WillUnexpected,
                    format!("{subscriber} got the will of {client} ({how}, no fault near)"),
                );
            }
        }
    }
}

/// How many times a will was published, as one subscriber can tell: every
/// QoS 2 delivery counts (exactly once), QoS 1 ones only within one
/// connection (a copy on a later connection may be a redelivery).
fn will_count(copies: Option<&Vec<(u32, u8)>>) -> usize {
    let Some(copies) = copies else {
        return 0;
    };
    let exactly_once = copies.iter().filter(|(_, qos)| *qos == 2).count();
    let mut per_conn: BTreeMap<u32, usize> = BTreeMap::new();
    for (conn, _) in copies.iter().filter(|(_, qos)| *qos < 2) {
        *per_conn.entry(*conn).or_default() += 1;
    }
    exactly_once.max(per_conn.values().copied().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "sub";
    const TOPIC: &str = "h/data/p";
    /// Not under the subscriber's filter.
    const RET: &str = "r/ret";

    /// A history builder with a subscriber on `h/#` from t = 1.
    struct H(Vec<Event>);

    impl H {
        fn new() -> H {
            H(vec![
                Event::Connect {
                    t: 0,
                    client: SUB.into(),
                    node: 1,
                    conn: 1,
                    clean: false,
                    session_present: false,
                },
                Event::Subscribed {
                    t: 1,
                    client: SUB.into(),
                    node: 1,
                    filter: "h/#".into(),
                },
            ])
        }

        fn publish(mut self, t: u64, topic: &str, seq: u32, qos: u8, retain: bool) -> H {
            self.0.push(Event::Invoke {
                t,
                client: "pub".into(),
                node: 2,
                topic: topic.into(),
                seq,
                qos,
                retain,
            });
            self
        }

        fn resend(mut self, t: u64, seq: u32) -> H {
            self.0.push(Event::Resend {
                t,
                client: "pub".into(),
                node: 3,
                topic: TOPIC.into(),
                seq,
            });
            self
        }

        fn ok(mut self, t: u64, topic: &str, seq: u32) -> H {
            self.0.push(Event::Ok {
                t,
                client: "pub".into(),
                node: 2,
                topic: topic.into(),
                seq,
            });
            self
        }

        fn deliver(mut self, t: u64, conn: u32, seq: u32, qos: u8, fresh: bool) -> H {
            self.0.push(Event::Delivery {
                t,
                client: SUB.into(),
                node: 1,
                conn,
                topic: TOPIC.into(),
                seq,
                qos,
                dup: !fresh,
                retain: false,
                fresh,
            });
            self
        }

        fn reconnect(mut self, t: u64, conn: u32, session_present: bool) -> H {
            self.0.push(Event::Connect {
                t,
                client: SUB.into(),
                node: 3,
                conn,
                clean: false,
                session_present,
            });
            self
        }

        fn read(mut self, t_start: u64, value: Option<u32>) -> H {
            self.0.push(Event::RetainedRead {
                t_start,
                t: t_start + 5,
                client: "reader".into(),
                node: 3,
                topic: RET.into(),
                value,
            });
            self
        }

        fn will(mut self, t: u64, client: &str, end: u64, clean: bool) -> H {
            self.0.push(Event::WillConnect {
                t,
                client: client.into(),
                node: 2,
                topic: format!("h/will/{client}"),
            });
            self.0.push(Event::WillEnd {
                t: end,
                client: client.into(),
                accepted: true,
                clean,
            });
            self
        }

        fn will_delivery(self, t: u64, of: &str) -> H {
            self.will_delivery_on(t, of, 1, 2)
        }

        fn will_delivery_on(mut self, t: u64, of: &str, conn: u32, qos: u8) -> H {
            self.0.push(Event::WillDelivery {
                t,
                client: SUB.into(),
                node: 1,
                conn,
                of: of.into(),
                qos,
            });
            self
        }

        fn fault(mut self, start: u64, end: u64) -> H {
            self.0.push(Event::FaultStart {
                t: start,
                kind: "kill".into(),
                nodes: vec![2],
            });
            self.0.push(Event::FaultEnd {
                t: end,
                kind: "kill".into(),
            });
            self
        }

        /// The anomaly kinds found, sorted.
        fn kinds(self) -> Vec<Kind> {
            let mut events = self.0;
            events.sort_by_key(|e| match e {
                Event::RetainedRead { t_start, .. } => *t_start,
                Event::Connect { t, .. }
                | Event::Subscribed { t, .. }
                | Event::Invoke { t, .. }
                | Event::Resend { t, .. }
                | Event::Ok { t, .. }
                | Event::Unknown { t, .. }
                | Event::Delivery { t, .. }
                | Event::WillConnect { t, .. }
                | Event::WillEnd { t, .. }
                | Event::WillDelivery { t, .. }
                | Event::FaultStart { t, .. }
                | Event::FaultEnd { t, .. } => *t,
            });
            let mut kinds: Vec<Kind> = check(&events).anomalies.iter().map(|a| a.kind).collect();
            kinds.sort();
            kinds
        }
    }

    /// Two messages at each QoS, a retained write read back, a will after a
    /// dropped connection and none after a clean one, a session resumed, a
    /// QoS 1 redelivery on a new connection: nothing to report.
    fn clean() -> H {
        H::new()
            .publish(10, TOPIC, 0, 1, false)
            .ok(12, TOPIC, 0)
            .deliver(13, 1, 0, 1, true)
            .publish(14, TOPIC, 1, 2, false)
            .ok(16, TOPIC, 1)
            .deliver(15, 1, 1, 2, true)
            .deliver(17, 1, 1, 2, false)
            .reconnect(20, 2, true)
            .deliver(21, 2, 0, 1, false)
            .publish(30, RET, 5, 1, true)
            .ok(31, RET, 5)
            .read(40, Some(5))
            .will(50, "w1", 60, false)
            .will_delivery(61, "w1")
            .will(70, "w2", 80, true)
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        assert_eq!(clean().kinds(), vec![]);
        let report = check(&clean().0);
        assert_eq!(report.published, 3);
        assert_eq!(report.acknowledged, 3);
        assert_eq!(report.will_clients, 2);
    }

    #[test]
    fn an_acknowledged_message_never_delivered_is_lost() {
        let h = clean().publish(90, TOPIC, 2, 1, false).ok(91, TOPIC, 2);
        assert_eq!(h.kinds(), vec![Kind::Lost]);
    }

    #[test]
    fn an_unacknowledged_message_may_be_missing() {
        let h = clean().publish(90, TOPIC, 2, 1, false);
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn a_message_sent_before_the_subscription_may_be_missing() {
        let h = clean()
            .publish(0, "h/early", 0, 1, false)
            .ok(0, "h/early", 0);
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn qos2_delivered_twice_is_a_duplicate_even_across_connections() {
        let h = clean().reconnect(90, 3, true).deliver(91, 3, 1, 2, true);
        assert_eq!(h.kinds(), vec![Kind::Qos2Duplicate]);
    }

    #[test]
    fn qos1_twice_on_one_connection_is_a_duplicate_unless_sent_twice() {
        let h = clean().deliver(90, 2, 0, 1, false);
        assert_eq!(h.kinds(), vec![Kind::Qos1Duplicate]);
        let h = clean().resend(85, 0).deliver(90, 2, 0, 1, false);
        assert_eq!(h.kinds(), vec![]);
    }

    #[test]
    fn acknowledged_messages_first_delivered_out_of_order_are_reordered() {
        let h = H::new()
            .publish(10, TOPIC, 0, 1, false)
            .publish(11, TOPIC, 1, 1, false)
            .ok(12, TOPIC, 0)
            .ok(13, TOPIC, 1)
            .deliver(14, 1, 1, 1, true)
            .deliver(15, 1, 0, 1, true);
        assert_eq!(h.kinds(), vec![Kind::Reordered]);
    }

    #[test]
    fn a_retained_read_older_than_an_acknowledged_write_is_stale() {
        let h = clean()
            .publish(90, RET, 6, 1, true)
            .ok(91, RET, 6)
            .read(92, Some(5));
        assert_eq!(h.kinds(), vec![Kind::StaleRetained]);
        // A read that began before the ack may see the older value.
        let h = clean()
            .publish(90, RET, 6, 1, true)
            .read(91, Some(5))
            .ok(92, RET, 6);
        assert_eq!(h.kinds(), vec![]);
        let h = clean().read(92, None);
        assert_eq!(h.kinds(), vec![Kind::StaleRetained]);
    }

    #[test]
    fn wills_come_once_after_a_drop_and_never_after_a_clean_disconnect() {
        let h = clean().will(90, "w3", 95, false);
        assert_eq!(h.kinds(), vec![Kind::WillMissing]);
        let h = clean().will_delivery(99, "w1");
        assert_eq!(h.kinds(), vec![Kind::WillDuplicated]);
        let h = clean().will_delivery(99, "w2");
        assert_eq!(h.kinds(), vec![Kind::WillUnexpected]);
        // A fault near a clean disconnect excuses one will, not two.
        let h = clean().fault(81, 90).will_delivery(99, "w2");
        assert_eq!(h.kinds(), vec![]);
        let h = clean()
            .fault(81, 90)
            .will_delivery(99, "w2")
            .will_delivery(100, "w2");
        assert_eq!(h.kinds(), vec![Kind::WillDuplicated]);
        // At QoS 1, a copy on a later connection is a redelivery.
        let h = clean()
            .will(90, "w3", 95, false)
            .will_delivery_on(96, "w3", 1, 1)
            .will_delivery_on(97, "w3", 2, 1);
        assert_eq!(h.kinds(), vec![]);
        let h = clean()
            .will(90, "w3", 95, false)
            .will_delivery_on(96, "w3", 1, 1)
            .will_delivery_on(97, "w3", 1, 1);
        assert_eq!(h.kinds(), vec![Kind::WillDuplicated]);
        let h = clean().will_delivery(99, "nobody");
        assert_eq!(h.kinds(), vec![Kind::WillUnexpected]);
    }

    #[test]
    fn a_persistent_session_reconnecting_without_its_session_is_lost() {
        let h = clean().reconnect(90, 3, false);
        assert_eq!(h.kinds(), vec![Kind::SessionLost]);
    }

    #[test]
    fn a_delivery_of_something_never_published_is_a_phantom() {
        let h = clean().deliver(90, 2, 9, 1, true);
        assert_eq!(h.kinds(), vec![Kind::Phantom]);
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("h/#", "h/data/p"));
        assert!(matches("h/+/p", "h/data/p"));
        assert!(!matches("h/+", "h/data/p"));
        assert!(matches("h/data/p", "h/data/p"));
        assert!(!matches("h/data", "h/data/p"));
    }
}
