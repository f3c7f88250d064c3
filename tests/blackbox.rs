//! Black-box tests of a single-node broker: each test starts a real `starling`
//! process on free loopback ports with its own data directory, and speaks MQTT
//! to it with an independent client (rumqttc, or paho-mqtt in Python), raw
//! sockets, or Debian's mosquitto clients. One test binary, so the harness is
//! linked once.

#[path = "attack.rs"]
mod attack;
#[path = "auth.rs"]
mod auth;
#[path = "bench_smoke.rs"]
mod bench_smoke;
#[path = "cli_clients.rs"]
mod cli_clients;
#[path = "connect.rs"]
mod connect;
#[path = "ctl.rs"]
mod ctl;
#[path = "disk.rs"]
mod disk;
#[path = "durability.rs"]
mod durability;
#[path = "limits.rs"]
mod limits;
#[path = "malformed.rs"]
mod malformed;
#[path = "mqtt5.rs"]
mod mqtt5;
#[path = "publish_qos.rs"]
mod publish_qos;
#[path = "retained_will.rs"]
mod retained_will;
#[path = "sessions.rs"]
mod sessions;
#[path = "slow_subscriber.rs"]
mod slow_subscriber;
#[path = "startup.rs"]
mod startup;
#[path = "sys.rs"]
mod sys;
#[path = "tls.rs"]
mod tls;
#[path = "websocket.rs"]
mod websocket;
