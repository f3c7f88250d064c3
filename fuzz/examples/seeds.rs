//! Writes the seed corpus of every target under `corpus/`: real packets of each
//! type in MQTT 3.1.1 and 5.0, real cluster payloads, and small password, ACL
//! and config files. Run from `fuzz/` with `cargo run --example seeds`; the
//! output is committed, so this runs only when the formats change.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message as _;
use starling_broker::state::{Command, ConnId, Message, Target};
use starling_proto::cluster::{ForwardFrame, ProposeRequest, RaftRequest};
use starling_proto::mqtt::{
    self, Ack, Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};
use starling_storage::{Request, TypeConfig};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    mqtt_seeds(&root);
    cluster_seeds(&root);
    text_seeds(&root);
}

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn props() -> Properties {
    Properties {
        user_properties: vec![("k".into(), "v".into())],
        ..Properties::default()
    }
}

fn packets(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version.is_v5();
    let p = |p: Properties| if v5 { p.into() } else { Default::default() };
    let reason = |r| if v5 { r } else { ReasonCode::Success };
    vec![
        (
            "connect",
            Packet::Connect(Connect {
                protocol: version,
                clean_session: true,
                keep_alive: 30,
                client_id: "client-1".into(),
                will: Some(LastWill {
                    topic: Arc::from("clients/client-1/status"),
                    payload: Bytes::from_static(b"offline"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: p(Properties {
                        will_delay_interval: Some(5),
                        ..props()
                    }),
                }),
                username: Some("alice".into()),
                password: Some(Bytes::from_static(b"secret")),
                properties: p(Properties {
                    session_expiry_interval: Some(60),
                    receive_maximum: Some(10),
                    topic_alias_maximum: Some(8),
                    ..props()
                }),
            }),
        ),
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::Success,
                properties: p(Properties {
                    maximum_qos: Some(1),
                    assigned_client_identifier: Some("auto-1".into()),
                    ..Properties::default()
                }),
            }),
        ),
        (
            "publish0",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: Arc::from("sensors/kitchen/temp"),
                packet_id: 0,
                payload: Bytes::from_static(b"21.5"),
                properties: Default::default(),
            }),
        ),
        (
            "publish2",
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: Arc::from("a/b"),
                packet_id: 7,
                payload: Bytes::from_static(b"{\"x\":1}"),
                properties: p(Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("application/json".into()),
                    response_topic: Some("replies/1".into()),
                    correlation_data: Some(Bytes::from_static(b"id-1")),
                    topic_alias: Some(3),
                    subscription_identifiers: vec![1, 300],
                    ..props()
                }),
            }),
        ),
        (
            "puback",
            Packet::PubAck(Ack {
                packet_id: 7,
                reason: reason(ReasonCode::NoMatchingSubscribers),
                properties: p(props()),
            }),
        ),
        ("pubrec", Packet::PubRec(Ack::new(7))),
        ("pubrel", Packet::PubRel(Ack::new(7))),
        ("pubcomp", Packet::PubComp(Ack::new(7))),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: 8,
                filters: vec![
                    ("sensors/+/temp".into(), SubOptions::from(QoS::AtLeastOnce)),
                    ("$share/g/jobs/#".into(), SubOptions::from(QoS::ExactlyOnce)),
                ],
                properties: p(Properties {
                    subscription_identifiers: vec![1],
                    ..Properties::default()
                }),
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: 8,
                codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
                properties: Default::default(),
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 9,
                filters: vec!["sensors/+/temp".into()],
                properties: Default::default(),
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 9,
                codes: if v5 {
                    vec![ReasonCode::Success]
                } else {
                    vec![]
                },
                properties: Default::default(),
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(Disconnect {
                reason: reason(ReasonCode::DisconnectWithWillMessage),
                properties: p(Properties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("bye".into()),
                    ..Properties::default()
                }),
            }),
        ),
    ]
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    mqtt::encode(packet, version, &mut buf).unwrap();
    buf.to_vec()
}

fn mqtt_seeds(root: &Path) {
    for (version, target, tag) in [
        (ProtocolVersion::V3_1_1, "mqtt_decode_v311", 0u8),
        (ProtocolVersion::V5, "mqtt_decode_v5", 2u8),
    ] {
        let mut stream = vec![0u8];
        for (name, packet) in packets(version) {
            let bytes = encode(&packet, version);
            // The decoders: a limit byte (0: 1 MiB), then the packet.
            write(root, target, name, &[&[0u8][..], &bytes].concat());
            // The round trip, from bytes (mode 0) and as a seed of the
            // structured mode of this version (which reads it differently).
            write(
                root,
                "mqtt_roundtrip",
                &format!("{target}_{name}"),
                &[&[0u8][..], &bytes].concat(),
            );
            write(
                root,
                "mqtt_roundtrip",
                &format!("built_{target}_{name}"),
                &[&[1 | tag][..], &bytes].concat(),
            );
            stream.extend_from_slice(&bytes);
        }
        write(root, target, "stream", &stream);
    }
    // MQTT 3.1 CONNECT, and AUTH, which only 5.0 has.
    let connect31 = packets(ProtocolVersion::V3_1).swap_remove(0).1;
    write(
        root,
        "mqtt_decode_v311",
        "connect31",
        &[&[0u8][..], &encode(&connect31, ProtocolVersion::V3_1)].concat(),
    );
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"n,,n=alice,r=abc")),
            ..Properties::default()
        }
        .into(),
    });
    write(
        root,
        "mqtt_decode_v5",
        "auth",
        &[&[0u8][..], &encode(&auth, ProtocolVersion::V5)].concat(),
    );
}

fn cluster_seeds(root: &Path) {
    let t = "cluster_frames";
    let conn = ConnId {
        node: 1,
        incarnation: 2,
        local: 3,
    };
    let message = Message::new(
        Arc::from("a/b"),
        Bytes::from_static(b"hello"),
        QoS::AtLeastOnce,
        false,
    );
    let command = Command::Unsubscribe {
        client_id: Arc::from("client-1"),
        conn,
        filters: vec!["a/+".into()],
    };
    let command = postcard::to_allocvec(&command).unwrap();
    let request = Request {
        origin: 1,
        incarnation: 2,
        first_seq: 10,
        commands: vec![command.clone()],
    };
    let leader = CommittedLeaderId::new(3, 1);
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(leader, 4)),
        entries: vec![Entry {
            log_id: LogId::new(leader, 5),
            payload: EntryPayload::Normal(request.clone()),
        }],
        leader_commit: Some(LogId::new(leader, 4)),
    };
    let vote: VoteRequest<u64> = VoteRequest::new(Vote::new(4, 2), Some(LogId::new(leader, 5)));
    let append = postcard::to_allocvec(&append).unwrap();
    let vote = postcard::to_allocvec(&vote).unwrap();
    let propose = postcard::to_allocvec(&request).unwrap();
    // A JoinRequest { node_id, addr, relayed }, field by field.
    let join = postcard::to_allocvec(&(2u64, "10.0.0.2:7946", false)).unwrap();
    let target = Target {
        client_id: Arc::from("client-2"),
        qos: QoS::AtLeastOnce,
        queued: false,
        retain_as_published: false,
        ids: vec![1],
        shared: None,
    };
    // Frame::Publish(message, targets) and Frame::Sync(n), variant by variant.
    let publish_frame = postcard::to_allocvec(&(0u8, &message, vec![target])).unwrap();
    let sync_frame = postcard::to_allocvec(&(1u8, 42u64)).unwrap();
    let version = starling_cluster::fuzzing::VERSION;
    let raft = RaftRequest {
        version,
        data: append.clone().into(),
    }
    .encode_to_vec();
    let proposal = ProposeRequest {
        version,
        command: propose.clone().into(),
    }
    .encode_to_vec();
    let forward = ForwardFrame {
        seq: 1,
        frames: vec![publish_frame.clone().into(), sync_frame.clone().into()],
    }
    .encode_to_vec();
    let seeds: [(&str, u8, &[u8]); 11] = [
        ("append_entries", 0, &append),
        ("vote", 1, &vote),
        ("propose", 3, &propose),
        ("join", 4, &join),
        ("raft_envelope", 10, &raft),
        ("propose_envelope", 11, &proposal),
        ("forward_envelope", 12, &forward),
        ("frame_publish", 13, &publish_frame),
        ("frame_sync", 13, &sync_frame),
        ("command", 14, &command),
        ("snapshot", 15, &starling_broker::fuzzing::empty_snapshot()),
    ];
    for (name, selector, bytes) in seeds {
        write(root, t, name, &[&[selector][..], bytes].concat());
    }
}

fn text_seeds(root: &Path) {
    // Passwords: "secret" hashed as `starling passwd` does.
    let mut passwords = starling_broker::auth::PasswordFile::new();
    passwords.set("alice", b"secret").unwrap();
    passwords.set("bob", b"hunter2").unwrap();
    let passwords = format!("# users\n{}", passwords.to_text());
    let acl = "# anonymous clients\ntopic read public/#\n\nuser alice\ntopic readwrite alice/#\ntopic write sensors/+/temp\n\npattern readwrite clients/%c/#\npattern read users/%u/inbox\n";
    // The auth target reads an `Input` (arbitrary's layout): the text comes
    // first, its length in the last bytes; these seeds are the file alone.
    write(root, "auth_files", "passwords", passwords.as_bytes());
    write(root, "auth_files", "acl", acl.as_bytes());
    let config = "node_id = 1\ndata_dir = \"data\"\n\n[mqtt]\nlisten = \"127.0.0.1:1883\"\nmax_packet_size = 65536\n\n[cluster]\nlisten = \"127.0.0.1:7946\"\npeers = [\"1=127.0.0.1:7946\", \"2=127.0.0.2:7946\"]\n\n[auth]\nallow_anonymous = false\n";
    write(root, "config", "basic", config.as_bytes());
    write(
        root,
        "config",
        "with_settings",
        format!("{config}\n%%\nmqtt.max_inflight=16\ncluster.peers=1=a:7946,2=b:7946\n").as_bytes(),
    );
    write(
        root,
        "config",
        "example",
        starling::config::example().unwrap().as_bytes(),
    );
    // The trie reads a list of operations; any bytes make one.
    write(
        root,
        "topic_trie",
        "ops",
        b"\x00\x05a/b\x01\x02\x03\x00\x04a/+/c\x07\x03\x03a/b/c\x02",
    );
}
