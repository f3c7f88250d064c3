//! What the fuzz targets share: an allocator that counts, so that a target can
//! check that decoding some input allocated no more than that input justifies,
//! and the MQTT decode loop of the two decoder targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use starling_proto::mqtt::{self, Packet, ProtocolVersion};

/// The system allocator, with a count of the bytes live and the most live at
/// once since [`reset_peak`]. libFuzzer runs the target on one thread; the
/// counters are atomics only because a global allocator must be `Sync`.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged;
// only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// Starts a new measurement: the peak becomes what is live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The most bytes live at once since [`reset_peak`], above what was live then.
pub fn peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// The bytes live now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Heap bytes a decoded packet may take per byte of its encoding: a SUBSCRIBE
/// filter of one character is 4 bytes on the wire and a `(String, SubOptions)`
/// of 32 bytes plus its text in memory, and a vector may hold twice what it
/// uses while it grows.
pub const BYTES_PER_WIRE_BYTE: usize = 24;
/// Heap bytes any packet may take whatever its size: the boxed MQTT 5
/// properties, a will, and the first allocation of each vector.
pub const BYTES_PER_PACKET: usize = 4096;

/// Splits a decoder target's input into a packet size limit, from its first
/// byte (0: the broker's default of 1 MiB; otherwise from 10 bytes up, in
/// steps of 8), and the stream to decode. `None` for an empty input.
pub fn split_limit(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&limit, stream) = data.split_first()?;
    let max_packet_size = match limit {
        0 => 1024 * 1024,
        n => 2 + usize::from(n) * 8,
    };
    Some((max_packet_size, stream))
}

/// Decodes packets off `input` as a connection does, with `max_packet_size`
/// as its limit, until the buffer is used up or a packet is refused. Checks
/// that no packet is larger than the limit or than its bytes, and that no call
/// of the decoder allocates more than the bytes it consumed justify (a length
/// field that claims more than is there must not be trusted). Returns the
/// packets decoded.
pub fn decode_stream(
    input: &[u8],
    max_packet_size: usize,
    mut version: Option<ProtocolVersion>,
) -> Vec<Packet> {
    let mut buf = BytesMut::from(input);
    let mut packets = Vec::new();
    loop {
        let before = buf.len();
        let base = live();
        reset_peak();
        let result = mqtt::decode(&mut buf, max_packet_size, version);
        let allocated = peak_since(base);
        let consumed = before - buf.len();
        assert!(
            allocated <= BYTES_PER_PACKET + BYTES_PER_WIRE_BYTE * consumed,
            "decoding {consumed} bytes allocated {allocated} bytes: {result:?}"
        );
        match result {
            Ok(Some(packet)) => {
                assert!(consumed > 0, "a packet from no bytes: {packet:?}");
                assert!(
                    consumed <= max_packet_size,
                    "a packet of {consumed} bytes over the limit of {max_packet_size}"
                );
                if let Packet::Connect(connect) = &packet {
                    version.get_or_insert(connect.protocol);
                }
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(consumed, 0, "bytes consumed without a packet");
                return packets;
            }
            Err(_) => return packets,
        }
    }
}
