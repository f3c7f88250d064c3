//! The MQTT 5.0 decoder on arbitrary bytes: a stream of packets read by the
//! rules of 5.0 (properties, reason codes), under a packet size limit taken
//! from the input. No panic, no packet over the limit, and no allocation beyond
//! what the bytes consumed justify.

#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_fuzz::{decode_stream, split_limit, Counting};
use starling_proto::mqtt::ProtocolVersion;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let Some((max_packet_size, stream)) = split_limit(data) else {
        return;
    };
    decode_stream(stream, max_packet_size, Some(ProtocolVersion::V5));
});
