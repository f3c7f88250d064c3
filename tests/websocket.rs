//! MQTT over WebSocket: a client speaking through tokio-tungstenite (the
//! WebSocket side) and `testkit::raw` (the MQTT bytes, written by hand from
//! the spec), against a real broker with the WebSocket listener enabled,
//! exchanging messages with a TCP client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Connect};
use starling_testkit::{free_port, Broker};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn broker_with_websocket() -> (Broker, u16) {
    let port = free_port();
    let config = format!("[websocket]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n");
    (Broker::start_with(&config).await, port)
}

/// Opens a WebSocket to `port`, offering `protocol`; the answer's protocol too.
async fn open(port: u16, protocol: Option<&str>) -> Result<(Ws, Option<String>), String> {
    open_path(port, "/mqtt", protocol).await
}

/// Opens a WebSocket to `path` on `port`, offering `protocol`.
async fn open_path(
    port: u16,
    path: &str,
    protocol: Option<&str>,
) -> Result<(Ws, Option<String>), String> {
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .expect("a request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).expect("a header"),
        );
    }
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, chosen))
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.expect("send");
}

/// The next binary frame's bytes.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        let message = tokio::time::timeout(raw::WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("a valid frame");
        match message {
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("a binary frame expected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_client_exchanges_messages_with_a_tcp_client() {
    let (broker, ws_port) = broker_with_websocket().await;
    let (mut ws, chosen) = open(ws_port, Some("mqtt")).await.expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqtt"), "[MQTT-6.0.0-4]");

    send(&mut ws, Connect::v311("ws-client").encode()).await;
    assert_eq!(
        next_binary(&mut ws).await,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK"
    );
    send(&mut ws, raw::subscribe(1, &[("ws/in", 1)])).await;
    assert_eq!(
        next_binary(&mut ws).await,
        [0x90, 0x03, 0x00, 0x01, 0x01],
        "SUBACK"
    );

    // TCP to WebSocket.
    let mut tcp = Client::connect(client::options(broker.port, "tcp-client")).await;
    tcp.subscribe_ok("ws/out", QoS::AtLeastOnce).await;
    tcp.publish("ws/in", QoS::AtLeastOnce, false, "to the browser")
        .await;
    let publish = next_binary(&mut ws).await;
    assert_eq!(publish[0] & 0xF0, 0x30, "PUBLISH");
    assert!(publish.ends_with(b"to the browser"));
    let pkid = u16::from_be_bytes([publish[9], publish[10]]);
    send(&mut ws, raw::puback(pkid)).await;

    // WebSocket to TCP, QoS 1: PUBACK back over the WebSocket.
    send(
        &mut ws,
        raw::publish(b"ws/out", 1, false, false, 9, b"from the browser"),
    )
    .await;
    assert_eq!(
        next_binary(&mut ws).await,
        [0x40, 0x02, 0x00, 0x09],
        "PUBACK"
    );
    let got = tcp.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"from the browser");

    // One MQTT packet may span frames, and one frame may hold several.
    let mut ping_twice = raw::PINGREQ.to_vec();
    ping_twice.extend(raw::PINGREQ);
    send(&mut ws, ping_twice[..1].to_vec()).await;
    send(&mut ws, ping_twice[1..].to_vec()).await;
    let mut answers = next_binary(&mut ws).await;
    if answers.len() < 4 {
        answers.extend(next_binary(&mut ws).await);
    }
    assert_eq!(answers, [raw::PINGRESP, raw::PINGRESP].concat());
}

#[tokio::test]
async fn an_upgrade_without_the_mqtt_subprotocol_is_refused() {
    let (_broker, ws_port) = broker_with_websocket().await;
    let refused = open(ws_port, None).await;
    assert!(refused.is_err(), "[MQTT-6.0.0-3]: no subprotocol offered");
    let refused = open(ws_port, Some("chat")).await;
    assert!(refused.is_err(), "another subprotocol only");
    let refused = open_path(ws_port, "/elsewhere", Some("mqtt")).await;
    assert!(
        refused.is_err_and(|e| e.contains("404")),
        "MQTT is served on /mqtt only"
    );
}

#[tokio::test]
async fn the_older_subprotocol_name_mqttv3_1_is_accepted_too() {
    let (_broker, ws_port) = broker_with_websocket().await;
    let (mut ws, chosen) = open(ws_port, Some("chat, mqttv3.1"))
        .await
        .expect("upgraded");
    assert_eq!(chosen.as_deref(), Some("mqttv3.1"));
    send(&mut ws, Connect::v311("old-name").encode()).await;
    assert_eq!(next_binary(&mut ws).await, [0x20, 0x02, 0x00, 0x00]);
    let (_, chosen) = open(ws_port, Some("mqttv3.1, mqtt"))
        .await
        .expect("upgraded");
    assert_eq!(chosen.as_deref(), Some("mqtt"), "the current name first");
}

#[tokio::test]
async fn a_text_frame_closes_only_that_connection() {
    let (mut broker, ws_port) = broker_with_websocket().await;
    let mut good = Client::connect(client::options(broker.port, "good")).await;
    good.subscribe_ok("good/#", QoS::AtLeastOnce).await;
    let (mut ws, _) = open(ws_port, Some("mqtt")).await.expect("upgrade");
    send(&mut ws, Connect::v311("texter").encode()).await;
    assert_eq!(next_binary(&mut ws).await, [0x20, 0x02, 0x00, 0x00]);
    ws.send(Message::Text("PINGREQ".into()))
        .await
        .expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "[MQTT-6.0.0-1]: closed after a text frame");
    let mut publisher = Client::connect(client::options(broker.port, "pub")).await;
    publisher
        .publish("good/check", QoS::AtLeastOnce, false, "fine")
        .await;
    assert_eq!(&good.recv_publish(raw::WAIT).await.payload[..], b"fine");
    broker.assert_alive().await;
}

/// The same through a client users run: paho-mqtt 2 (Python) with its
/// WebSocket transport, publishing to and receiving from itself.
#[tokio::test]
async fn paho_mqtt_over_websocket_publishes_and_receives_at_qos_1() {
    let (_broker, ws_port) = broker_with_websocket().await;
    const SCRIPT: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
got = []
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets")
c.on_message = lambda client, userdata, message: got.append(message.payload)
c.connect("127.0.0.1", int(sys.argv[1]), 30)
c.loop_start()
c.subscribe("paho/#", qos=1)[0] == mqtt.MQTT_ERR_SUCCESS or sys.exit("subscribe failed")
time.sleep(0.5)
c.publish("paho/ws", b"over websocket", qos=1).wait_for_publish(5)
deadline = time.time() + 5
while not got and time.time() < deadline:
    time.sleep(0.05)
c.disconnect()
c.loop_stop()
print(got)
sys.exit(0 if got == [b"over websocket"] else 1)
"#;
    let port = ws_port.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", SCRIPT, &port])
            .output()
    })
    .await
    .expect("the blocking task")
    .expect("python3 runs (install paho-mqtt: pip install paho-mqtt)");
    assert!(
        output.status.success(),
        "paho-mqtt over WebSocket failed (is paho-mqtt 2 installed? pip install paho-mqtt)\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
