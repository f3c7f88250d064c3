//! Benchmarks of the MQTT codec on PUBLISH, the packet a broker handles most.
//!
//! Each packet is decoded and encoded for QoS 0 and QoS 1 at three payload sizes;
//! throughput is reported in wire bytes, so the payload copy on encode shows
//! against the zero-copy decode. `read_loop` decodes a buffer of back-to-back
//! packets until the decoder asks for more bytes, as a connection does after a
//! large read, and reports packets per second.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use starling_proto::mqtt::{decode, encode, Packet, Properties, ProtocolVersion, Publish, QoS};

const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;
/// The broker's default `max_packet_size`.
const MAX_PACKET_SIZE: usize = 1024 * 1024;
const TOPIC: &str = "sensors/plant-7/line-3/temperature";
const PAYLOAD_SIZES: [(usize, &str); 3] = [(16, "16B"), (256, "256B"), (4096, "4KiB")];
/// Buffers prepared at a time for the single-packet decode: 16 of the largest
/// packet fit in a core's L2 cache.
const DECODE_BATCH: u64 = 16;
/// Packets in the buffer that `read_loop` drains.
const BATCH: usize = 100;

fn publish(topic: &str, qos: QoS, packet_id: u16, payload_len: usize) -> Packet {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        payload: Bytes::from(payload),
        properties: Properties::default().into(),
    })
}

fn wire(packet: &Packet) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, VERSION, &mut buf).expect("a valid PUBLISH encodes");
    buf
}

fn qos_name(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "qos0",
        QoS::AtLeastOnce => "qos1",
        QoS::ExactlyOnce => "qos2",
    }
}

fn publish_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for (size, size_name) in PAYLOAD_SIZES {
            let bytes = wire(&publish(TOPIC, qos, 42, size));
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_function(format!("{}/{size_name}", qos_name(qos)), |b| {
                // Each iteration needs its own buffer, as decoding consumes it; the
                // copies are made outside the timed section, a few at a time so that
                // they are still in cache, as a buffer just read from a socket is.
                b.iter_batched(
                    || bytes.clone(),
                    |mut buf| {
                        let packet = decode(&mut buf, MAX_PACKET_SIZE, Some(VERSION));
                        black_box(packet.expect("valid PUBLISH").expect("whole packet"))
                    },
                    BatchSize::NumIterations(DECODE_BATCH),
                )
            });
        }
    }
    group.finish();
}

fn publish_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_encode");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        for (size, size_name) in PAYLOAD_SIZES {
            let packet = publish(TOPIC, qos, 42, size);
            let len = wire(&packet).len();
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(format!("{}/{size_name}", qos_name(qos)), |b| {
                // A connection reuses its write buffer, so its capacity is kept.
                let mut buf = BytesMut::with_capacity(len);
                b.iter(|| {
                    buf.clear();
                    encode(black_box(&packet), VERSION, &mut buf).expect("valid PUBLISH");
                    black_box(&buf);
                })
            });
        }
    }
    group.finish();
}

fn read_loop(c: &mut Criterion) {
    let mut bytes = BytesMut::new();
    for i in 0..BATCH {
        let topic = format!("sensors/plant-7/line-{}/temperature", i % 8);
        let packet = publish(&topic, QoS::AtLeastOnce, i as u16 + 1, 256);
        encode(&packet, VERSION, &mut bytes).expect("valid PUBLISH");
    }
    let mut group = c.benchmark_group("read_loop");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("qos1/256B/x{BATCH}"), |b| {
        b.iter_batched(
            || bytes.clone(),
            |mut buf| {
                let mut decoded = 0;
                while let Some(packet) =
                    decode(&mut buf, MAX_PACKET_SIZE, Some(VERSION)).expect("valid PUBLISH")
                {
                    black_box(packet);
                    decoded += 1;
                }
                assert_eq!(decoded, BATCH);
            },
            // One fresh copy per iteration, so it is in cache like a buffer just
            // read; timing each iteration costs little against 100 packets.
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Shorter than criterion's defaults (3 s warm-up, 5 s measurement): these
    // functions take nanoseconds to microseconds, so 100 samples still fit.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = publish_decode, publish_encode, read_loop
}
criterion_main!(benches);
