//! What a peer node can send to the cluster port, decoded as this node decodes
//! it: the protobuf envelopes of `cluster.proto`, the postcard payloads inside
//! them (openraft's messages, proposals, membership requests, and the replies
//! to this node's own requests), the broker's forwarded frames, the commands
//! of the Raft log and the MQTT state of a snapshot. No panic; what decodes
//! encodes and decodes again; and no decoder allocates far beyond its input
//! (a length in the input must not size an allocation by itself).

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use starling_cluster::fuzzing::{decode_payload, PAYLOAD_KINDS, VERSION};
use starling_fuzz::{live, peak_since, reset_peak, Counting};
use starling_proto::cluster::{
    ForwardAck, ForwardFrame, MembershipReply, MembershipRequest, ProposeReply, ProposeRequest,
    RaftReply, RaftRequest, SnapshotChunk,
};

#[global_allocator]
static ALLOC: Counting = Counting;

/// What a decoder may allocate per input byte, and whatever the input: serde
/// sizes a vector's first allocation from the length the input declares, up to
/// 1 MiB, and the snapshot decoder keeps a table of messages besides the state.
const PER_BYTE: usize = 64;
const FIXED: usize = 16 << 20;

fn envelope<M: Message + Default + Clone + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let message = M::decode(data).ok()?;
    let again = message.encode_to_vec();
    assert_eq!(M::decode(again.as_slice()).ok(), Some(message.clone()));
    Some(message)
}

fn payloads(version: u32, data: &[u8]) {
    for kind in 0..PAYLOAD_KINDS {
        let _ = decode_payload(kind, version, data);
    }
}

fn run(selector: u8, data: &[u8]) {
    match selector % 16 {
        kind @ 0..=9 => {
            let _ = decode_payload(kind, VERSION, data);
        }
        10 => {
            if let Some(m) = envelope::<RaftRequest>(data) {
                payloads(m.version, &m.data);
            }
            if let Some(m) = envelope::<RaftReply>(data) {
                payloads(m.version, &m.data);
            }
            if let Some(m) = envelope::<SnapshotChunk>(data) {
                let _ = decode_payload(2, m.version, &m.header);
            }
        }
        11 => {
            if let Some(m) = envelope::<ProposeRequest>(data) {
                let _ = decode_payload(3, m.version, &m.command);
            }
            if let Some(m) = envelope::<ProposeReply>(data) {
                let _ = decode_payload(9, m.version, &m.data);
            }
            if let Some(m) = envelope::<MembershipRequest>(data) {
                let _ = decode_payload(4, m.version, &m.data);
                let _ = decode_payload(5, m.version, &m.data);
            }
            let _ = envelope::<MembershipReply>(data);
        }
        12 => {
            if let Some(m) = envelope::<ForwardFrame>(data) {
                for frame in &m.frames {
                    let _ = starling_broker::fuzzing::forward_frame(frame);
                }
            }
            let _ = envelope::<ForwardAck>(data);
        }
        13 => {
            let _ = starling_broker::fuzzing::forward_frame(data);
        }
        14 => {
            let _ = starling_broker::fuzzing::command(data);
        }
        _ => {
            let _ = starling_broker::fuzzing::snapshot(data);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let base = live();
    reset_peak();
    run(selector, rest);
    let allocated = peak_since(base);
    assert!(
        allocated <= FIXED + PER_BYTE * rest.len(),
        "selector {selector}: {} input bytes allocated {allocated} bytes",
        rest.len()
    );
});
