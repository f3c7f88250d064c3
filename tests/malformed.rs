//! Malformed packets and protocol violations over raw sockets: the offending
//! connection is closed, and nothing else is harmed (MQTT 3.1.1 section 4.8:
//! "the Server MUST close the Network Connection"). Every test also checks that a
//! well-behaved client connected beforehand still gets its messages and that the
//! process is alive.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Connect, Raw};
use starling_testkit::Broker;

const CONFIG: &str = "[mqtt]\nmax_packet_size = 1024\n";

/// How fast a bad connection must be closed.
const PROMPT: Duration = Duration::from_secs(2);

/// One kind of bad input.
struct Case {
    name: &'static str,
    /// Whether a valid CONNECT precedes `bytes`.
    connect_first: bool,
    bytes: Vec<u8>,
}

fn remaining_length_of_five_bytes() -> Case {
    Case {
        name: "remaining length with a fifth continuation byte",
        connect_first: true,
        bytes: vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    }
}

fn subscribe_with_reserved_flags_0() -> Case {
    Case {
        name: "SUBSCRIBE with flags 0000",
        connect_first: true,
        bytes: raw::packet(0x80, &raw::subscribe_body(1, &[("a/b", 1)])),
    }
}

fn oversize_publish_header_only() -> Case {
    // The fixed header announces 100 000 bytes; only the start of the body
    // follows. The broker must not wait for the rest.
    let mut bytes = vec![0x30];
    bytes.extend(raw::remaining_length(100_000));
    bytes.extend(raw::string(b"big/topic"));
    Case {
        name: "PUBLISH larger than max_packet_size, body never sent",
        connect_first: true,
        bytes,
    }
}

fn publish_before_connect() -> Case {
    Case {
        name: "PUBLISH before CONNECT",
        connect_first: false,
        bytes: raw::publish(b"good/x", 0, false, false, 0, b"sneaky"),
    }
}

fn second_connect() -> Case {
    Case {
        name: "second CONNECT",
        connect_first: true,
        bytes: Connect::v311("bad").encode(),
    }
}

fn invalid_utf8_topic() -> Case {
    Case {
        name: "PUBLISH with an ill-formed UTF-8 topic",
        connect_first: true,
        bytes: raw::publish(
            &[b'g', b'o', b'o', b'd', b'/', 0xC3, 0x28],
            0,
            false,
            false,
            0,
            b"x",
        ),
    }
}

fn null_character_in_topic() -> Case {
    Case {
        name: "PUBLISH with U+0000 in its topic",
        connect_first: true,
        bytes: raw::publish(b"good/\0", 0, false, false, 0, b"x"),
    }
}

fn wildcard_in_topic_name() -> Case {
    Case {
        name: "PUBLISH to a topic name with a wildcard",
        connect_first: true,
        bytes: raw::publish(b"good/+", 1, false, false, 3, b"x"),
    }
}

fn publish_qos_3() -> Case {
    let mut body = raw::string(b"good/x");
    body.extend_from_slice(&[0, 1]);
    body.extend_from_slice(b"x");
    Case {
        name: "PUBLISH with QoS 3",
        connect_first: true,
        bytes: raw::packet(0x36, &body),
    }
}

fn connect_reserved_flag_set() -> Case {
    let mut connect = Connect::v311("bad-flags");
    connect.reserved_flag = true;
    Case {
        name: "CONNECT with the reserved flag set",
        connect_first: false,
        bytes: connect.encode(),
    }
}

/// A broker and a well-behaved client subscribed to `good/#`.
async fn setup() -> (Broker, Client) {
    let broker = Broker::start_with(CONFIG).await;
    let mut good = Client::connect(client::options(broker.port, "good")).await;
    good.subscribe_ok("good/#", QoS::AtLeastOnce).await;
    (broker, good)
}

/// Sends the bad input on a new connection and asserts the broker closes it
/// promptly.
async fn assert_rejected(broker: &Broker, case: &Case) {
    let mut conn = Raw::tcp(broker.port).await;
    if case.connect_first {
        conn.send(&Connect::v311(&format!("bad-{}", broker.port)).encode())
            .await;
        let (_, code) = conn.expect(raw::WAIT).await.connack();
        assert_eq!(code, 0, "{}: CONNACK", case.name);
    }
    let sent = Instant::now();
    // The broker may close before it has read everything.
    let _ = conn.try_send(&case.bytes).await;
    let deadline = sent + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.read(left).await {
            raw::Read::Closed => return,
            raw::Read::Packet(packet) => {
                assert_ne!(
                    packet.kind(),
                    raw::kind::PUBLISH,
                    "{}: got a PUBLISH",
                    case.name
                );
            }
            raw::Read::Timeout => panic!("{}: connection still open after {PROMPT:?}", case.name),
        }
    }
}

/// The well-behaved client is still connected and still gets messages, and the
/// process is alive.
async fn assert_unharmed(broker: &mut Broker, good: &mut Client, marker: &str) {
    good.assert_connected();
    let mut publisher = Client::connect(client::options(broker.port, "good-pub")).await;
    publisher
        .publish("good/check", QoS::AtLeastOnce, false, marker.to_string())
        .await;
    publisher.disconnect().await;
    // Nothing the bad clients sent may have been delivered.
    let got = good.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], marker.as_bytes());
    good.assert_connected();
    broker.assert_alive().await;
}

async fn check(case: Case) {
    let (mut broker, mut good) = setup().await;
    assert_rejected(&broker, &case).await;
    assert_unharmed(&mut broker, &mut good, "still here").await;
}

#[tokio::test]
async fn mqtt_2_2_3_remaining_length_over_four_bytes_closes() {
    check(remaining_length_of_five_bytes()).await;
}

#[tokio::test]
async fn mqtt_3_8_1_1_subscribe_with_reserved_flags_closes() {
    check(subscribe_with_reserved_flags_0()).await;
}

#[tokio::test]
async fn oversize_packet_closes_without_waiting_for_the_body() {
    check(oversize_publish_header_only()).await;
}

#[tokio::test]
async fn mqtt_3_1_0_1_publish_before_connect_closes() {
    check(publish_before_connect()).await;
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_closes() {
    check(second_connect()).await;
}

#[tokio::test]
async fn mqtt_1_5_3_1_invalid_utf8_topic_closes() {
    check(invalid_utf8_topic()).await;
}

#[tokio::test]
async fn mqtt_1_5_3_2_null_character_in_topic_closes() {
    check(null_character_in_topic()).await;
}

#[tokio::test]
async fn mqtt_3_3_2_2_wildcard_in_topic_name_closes() {
    check(wildcard_in_topic_name()).await;
}

#[tokio::test]
async fn mqtt_3_3_1_4_publish_with_qos_3_closes() {
    check(publish_qos_3()).await;
}

#[tokio::test]
async fn mqtt_3_1_2_3_connect_with_reserved_flag_closes() {
    check(connect_reserved_flag_set()).await;
}

#[tokio::test]
async fn all_bad_inputs_in_a_row_leave_a_good_client_working() {
    let (mut broker, mut good) = setup().await;
    let cases = [
        remaining_length_of_five_bytes(),
        subscribe_with_reserved_flags_0(),
        oversize_publish_header_only(),
        publish_before_connect(),
        second_connect(),
        invalid_utf8_topic(),
        null_character_in_topic(),
        wildcard_in_topic_name(),
        publish_qos_3(),
        connect_reserved_flag_set(),
    ];
    for case in &cases {
        assert_rejected(&broker, case).await;
    }
    assert_unharmed(&mut broker, &mut good, "survived them all").await;
    good.assert_no_publish(Duration::from_millis(300)).await;
}

/// Bad input made the other way round: a valid packet written by Starling's own
/// encoder (`starling_proto`), then one field broken by hand. Each must close the
/// connection as the hand-written cases above do.
mod mutated {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use starling_proto::mqtt::{
        self, Connect, LastWill, Packet, ProtocolVersion, Publish, QoS, Subscribe,
    };

    use super::*;

    fn encoded(packet: &Packet) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        mqtt::encode(packet, ProtocolVersion::V3_1_1, &mut bytes).expect("a valid packet");
        bytes.to_vec()
    }

    /// PUBLISH "good/x" at `qos` with packet id 7 (0 at QoS 0): fixed header
    /// (2 bytes), topic length (2), topic (6), packet id (2 at QoS > 0).
    fn publish(qos: QoS) -> Vec<u8> {
        encoded(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Arc::from("good/x"),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
            payload: Bytes::from_static(b"mutant"),
            properties: Default::default(),
        }))
    }

    fn case(name: &'static str, connect_first: bool, bytes: Vec<u8>) -> Case {
        Case {
            name,
            connect_first,
            bytes,
        }
    }

    pub(super) fn cases() -> Vec<Case> {
        let mut cases = Vec::new();

        let mut bytes = publish(QoS::AtLeastOnce);
        bytes[10..12].copy_from_slice(&[0, 0]);
        cases.push(case(
            "QoS 1 PUBLISH with packet id 0 [MQTT-2.3.1-1]",
            true,
            bytes,
        ));

        let mut bytes = publish(QoS::AtMostOnce);
        bytes[0] |= 0x08;
        cases.push(case(
            "QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]",
            true,
            bytes,
        ));

        let mut bytes = publish(QoS::AtMostOnce);
        bytes[3] = 200;
        cases.push(case(
            "PUBLISH whose topic runs past the packet",
            true,
            bytes,
        ));

        let mut bytes = publish(QoS::AtMostOnce);
        bytes[4] = 0xC0;
        cases.push(case(
            "PUBLISH topic with an overlong UTF-8 sequence",
            true,
            bytes,
        ));

        let mut bytes = encoded(&Packet::PubRel(starling_proto::mqtt::Ack::new(3)));
        bytes[0] &= 0xF0;
        cases.push(case("PUBREL with flags 0000 [MQTT-3.6.1-1]", true, bytes));

        let mut bytes = encoded(&Packet::Subscribe(Subscribe {
            packet_id: 4,
            filters: vec![("good/#".into(), QoS::AtLeastOnce.into())],
            properties: Default::default(),
        }));
        let last = bytes.len() - 1;
        bytes[last] = 3;
        cases.push(case(
            "SUBSCRIBE asking for QoS 3 [MQTT-3-8.3-4]",
            true,
            bytes,
        ));

        let connect = |will: Option<LastWill>| Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive: 30,
            client_id: "mutant".into(),
            will,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let mut bytes = encoded(&Packet::Connect(connect(None)));
        bytes[7] = b'X';
        cases.push(case(
            "CONNECT naming protocol MQTX [MQTT-3.1.2-1]",
            false,
            bytes,
        ));

        let mut bytes = encoded(&Packet::Connect(connect(Some(LastWill {
            topic: Arc::from("good/will"),
            payload: Bytes::from_static(b"w"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }))));
        // Connect flags: will QoS (bits 3-4) set to 3.
        bytes[9] |= 0x18;
        cases.push(case(
            "CONNECT with will QoS 3 [MQTT-3.1.2-14]",
            false,
            bytes,
        ));

        let mut bytes = encoded(&Packet::Connect(connect(None)));
        // Will QoS 1 without the will flag.
        bytes[9] |= 0x08;
        cases.push(case(
            "CONNECT with a will QoS but no will [MQTT-3.1.2-13]",
            false,
            bytes,
        ));

        cases
    }
}

#[tokio::test]
async fn packets_from_our_encoder_with_one_field_broken_close_only_their_connection() {
    let (mut broker, mut good) = setup().await;
    for case in mutated::cases() {
        assert_rejected(&broker, &case).await;
    }
    assert_unharmed(&mut broker, &mut good, "survived the mutants").await;
    good.assert_no_publish(Duration::from_millis(300)).await;
}
