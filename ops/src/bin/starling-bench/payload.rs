//! The header every bench payload starts with, so that a subscriber can tell who sent
//! a message, where it falls in that publisher's sequence and how long it travelled.
//!
//! Layout (big endian): publisher index `u32`, sequence `u64`, send time `u64`
//! nanoseconds since the run started. The rest of the payload is filler.

use bytes::{BufMut, BytesMut};

/// Bytes taken by [`Header`] at the front of every payload.
pub const HEADER_LEN: usize = 4 + 8 + 8;

/// What a publisher stamps on each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds since the run started; only comparable within one bench process.
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header followed by filler up to `size` bytes (at least the header).
    pub fn write(&self, size: usize, buf: &mut BytesMut) {
        buf.reserve(size.max(HEADER_LEN));
        buf.put_u32(self.publisher);
        buf.put_u64(self.seq);
        buf.put_u64(self.sent_ns);
        // A fixed, non-zero filler: compressible links would otherwise flatter us less
        // or more depending on the run, and zeros hide off-by-one slicing bugs.
        buf.put_bytes(b'x', size.saturating_sub(HEADER_LEN));
    }

    /// Reads the header from the front of a payload; `None` if it is too short to
    /// carry one (a message that some other client published on our topics).
    pub fn read(payload: &[u8]) -> Option<Header> {
        let head = payload.get(..HEADER_LEN)?;
        let (publisher, rest) = head.split_at(4);
        let (seq, sent_ns) = rest.split_at(8);
        Some(Header {
            publisher: u32::from_be_bytes(publisher.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            sent_ns: u64::from_be_bytes(sent_ns.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    impl Header {
        fn to_payload(self, size: usize) -> Bytes {
            let mut buf = BytesMut::new();
            self.write(size, &mut buf);
            buf.freeze()
        }
    }

    #[test]
    fn header_round_trips_and_pads_to_size() {
        let header = Header {
            publisher: 7,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        let payload = header.to_payload(64);
        assert_eq!(payload.len(), 64);
        assert_eq!(Header::read(&payload), Some(header));
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == b'x'));
    }

    #[test]
    fn header_is_big_endian_at_fixed_offsets() {
        let payload = Header {
            publisher: 1,
            seq: 2,
            sent_ns: 3,
        }
        .to_payload(HEADER_LEN);
        let mut expected = vec![0, 0, 0, 1];
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(&payload[..], &expected[..]);
    }

    #[test]
    fn size_below_header_still_carries_the_header() {
        let header = Header {
            publisher: 0,
            seq: 0,
            sent_ns: 0,
        };
        assert_eq!(header.to_payload(3).len(), HEADER_LEN);
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(Header::read(&[0; HEADER_LEN - 1]), None);
        assert_eq!(Header::read(b""), None);
    }
}
