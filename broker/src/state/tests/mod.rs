//! The state machine driven by commands alone: no Raft, no sockets.

use std::sync::Arc;

use bytes::Bytes;
use starling_proto::mqtt::QoS;
use starling_storage::StateMachine;

use super::*;

mod admin;
mod expiry;
mod fencing;
mod sessions;
mod shared;
mod snapshots;

const NODE: u64 = 1;

/// The Raft term every command of these tests is applied in.
const TERM: u64 = 1;

fn conn(local: u64) -> ConnId {
    ConnId {
        node: NODE,
        incarnation: 1,
        local,
    }
}

/// Keeps the effects of every command, in order.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Effect>>);

impl Dispatch for Recorder {
    fn dispatch(&self, _: &MqttMachine, effects: Vec<Effect>) {
        self.0.lock().expect("recorder").extend(effects);
    }
}

/// A machine whose connections ask for queues of `max_queued` messages.
struct Machine {
    machine: MqttMachine,
    max_queued: u32,
    max_queued_bytes: u64,
    effects: Arc<Recorder>,
}

impl std::ops::Deref for Machine {
    type Target = MqttMachine;
    fn deref(&self) -> &MqttMachine {
        &self.machine
    }
}

impl Machine {
    /// The effects since the last call.
    fn effects(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.effects.0.lock().expect("recorder"))
    }

    /// The messages the effects since the last call deliver directly.
    fn delivered(&self) -> Vec<Message> {
        self.effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Deliver { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }
}

fn machine(max_queued: u32) -> Machine {
    let effects = Arc::new(Recorder::default());
    Machine {
        machine: MqttMachine::new(effects.clone()),
        max_queued,
        max_queued_bytes: 1 << 30,
        effects,
    }
}

fn owner(id: &str, c: ConnId) -> Owner {
    Owner {
        client_id: Arc::from(id),
        conn: c,
    }
}

fn msg(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Message {
    Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain,
        expires_at: None,
        arrival: Default::default(),
        props: None,
    }
}

fn apply(m: &MqttMachine, command: Command) -> Reply {
    let bytes = postcard::to_allocvec(&command).expect("encode");
    let (_, _, reply): Envelope = postcard::from_bytes(&m.apply(TERM, &bytes)).expect("decode");
    reply
}

fn connect(m: &Machine, id: &str, c: ConnId, clean: bool, will: Option<Message>) -> Reply {
    connect_with(m, id, c, clean, will, ConnInfo::default())
}

/// `connect`, with the connection's details for the admin API.
fn connect_with(
    m: &Machine,
    id: &str,
    c: ConnId,
    clean: bool,
    will: Option<Message>,
    info: ConnInfo,
) -> Reply {
    apply(
        m,
        Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_start: clean,
            session_expiry: if clean { 0 } else { NEVER_EXPIRES },
            will,
            will_delay: 0,
            max_queued_messages: m.max_queued,
            max_queued_bytes: m.max_queued_bytes,
            info,
        },
    )
}

fn subscribe(m: &Machine, id: &str, c: ConnId, filters: &[(&str, QoS)]) {
    let filters: Vec<_> = filters
        .iter()
        .map(|(f, q)| (f.to_string(), Subscription::from(*q)))
        .collect();
    let count = filters.len();
    let reply = apply(
        m,
        Command::Subscribe {
            client_id: Arc::from(id),
            conn: c,
            filters,
        },
    );
    assert!(matches!(reply, Reply::Existed(existed) if existed.len() == count));
}

/// The client that publishes in these tests, connected on first use.
const PUBLISHER: &str = "publisher";

fn publisher(m: &Machine) -> Owner {
    let c = conn(999);
    if m.location(PUBLISHER).is_none() {
        connect(m, PUBLISHER, c, true, None);
    }
    owner(PUBLISHER, c)
}

fn publish(m: &Machine, message: Message) -> Reply {
    let from = publisher(m);
    apply(
        m,
        Command::Publish {
            message,
            from,
            qos2_packet_id: None,
            deliver: true,
            retained_limit: None,
        },
    )
}

fn session_present(reply: Reply) -> bool {
    match reply {
        Reply::Connected {
            session_present, ..
        } => session_present,
        other => panic!("not a Connected reply: {other:?}"),
    }
}

fn disconnect(m: &Machine, id: &str, c: ConnId, sent_below: Option<u64>) -> Reply {
    apply(
        m,
        Command::Disconnect {
            client_id: Arc::from(id),
            conn: c,
            publish_will: false,
            sent_below,
            session_expiry: None,
            at: 0,
            will_grace: 0,
        },
    )
}

/// A persistent QoS 2 subscriber `id` on `c` with `n` messages queued.
fn qos2_subscriber_with_queue(m: &Machine, id: &str, c: ConnId, n: usize) {
    connect(m, id, c, false, None);
    subscribe(m, id, c, &[("t", QoS::ExactlyOnce)]);
    for _ in 0..n {
        publish(m, msg("t", QoS::ExactlyOnce, false, b"x"));
    }
}

/// A log of every kind of command, as a cluster of two nodes might commit it.
fn mixed_log() -> Vec<Command> {
    let remote = |local| ConnId {
        node: 2,
        incarnation: 1,
        local,
    };
    let will = |t: &str| Some(msg(t, QoS::AtLeastOnce, false, b"gone"));
    let mut log = vec![
        Command::NodeStarted {
            node: NODE,
            incarnation: 1,
        },
        Command::NodeStarted {
            node: 2,
            incarnation: 1,
        },
    ];
    for (id, c, clean) in [
        ("p", conn(1), false),
        ("s", remote(1), false),
        ("c", remote(2), true),
    ] {
        log.push(Command::Connect {
            client_id: Arc::from(id),
            conn: c,
            clean_start: clean,
            session_expiry: if clean { 0 } else { NEVER_EXPIRES },
            will: will(&format!("w/{id}")),
            will_delay: 0,
            max_queued_messages: 4,
            max_queued_bytes: 1 << 20,
            info: ConnInfo::default(),
        });
    }
    for (id, c) in [("s", remote(1)), ("c", remote(2))] {
        log.push(Command::Subscribe {
            client_id: Arc::from(id),
            conn: c,
            filters: vec![
                ("t/#".into(), QoS::ExactlyOnce.into()),
                ("w/#".into(), QoS::AtLeastOnce.into()),
            ],
        });
    }
    for i in 0..6u16 {
        log.push(Command::Publish {
            message: msg("t/x", QoS::ExactlyOnce, i % 2 == 0, b"payload"),
            from: owner("p", conn(1)),
            qos2_packet_id: Some(i),
            deliver: true,
            retained_limit: None,
        });
    }
    log.push(Command::Release {
        from: owner("p", conn(1)),
        packet_id: 0,
    });
    log.push(Command::Received {
        from: owner("s", remote(1)),
        seq: 1,
    });
    log.push(Command::Ack {
        from: owner("s", remote(1)),
        seqs: vec![0],
    });
    log.push(Command::NodeDown {
        node: 2,
        incarnation: 1,
        term: TERM,
    });
    log.push(Command::Disconnect {
        client_id: Arc::from("p"),
        conn: conn(1),
        publish_will: true,
        sent_below: Some(0),
        session_expiry: None,
        at: 0,
        will_grace: 0,
    });
    log
}

fn run(m: &MqttMachine, log: &[Command]) -> Vec<Vec<u8>> {
    log.iter()
        .map(|c| m.apply(TERM, &postcard::to_allocvec(c).expect("encode")))
        .collect()
}
