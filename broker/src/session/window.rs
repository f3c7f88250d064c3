//! The in-flight window of what a session sends at QoS 1/2: packet ids, stages,
//! and the two sources of messages.
//!
//! - Queued: a persistent session's QoS 1/2 messages live in its replicated queue.
//!   Their packet ids follow from their queue sequence numbers (lower half of the
//!   id space), so any node resuming the session re-sends the same ids.
//! - Direct: everything else (clean sessions, retained messages sent on
//!   SUBSCRIBE) gets ids from a local counter in the upper half of the id space,
//!   so the two never collide.

use std::collections::{BTreeMap, VecDeque};

use starling_proto::mqtt::QoS;

use crate::registry::Delivery;

/// Packet ids 1..=QUEUE_IDS belong to queued messages.
const QUEUE_IDS: u16 = 32_767;

/// The packet id of the queued message with sequence number `seq`.
pub fn queue_packet_id(seq: u64) -> u16 {
    // The remainder is below QUEUE_IDS, so the conversion cannot fail.
    u16::try_from(seq % u64::from(QUEUE_IDS)).unwrap_or(0) + 1
}

/// Where a sent QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent at QoS 1, waiting for PUBACK.
    AwaitAck,
    /// PUBLISH sent at QoS 2, waiting for PUBREC.
    AwaitRec,
    /// PUBREC received; for queued messages, waiting for that to be committed
    /// before PUBREL is sent.
    Releasing,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

/// The in-flight window of one connection.
#[derive(Debug)]
pub struct Window {
    max_inflight: usize,
    max_pending: usize,
    /// Queued messages sent and not yet acknowledged: packet id -> (seq, stage).
    pub queued: BTreeMap<u16, (u64, Stage)>,
    /// Direct messages sent and not yet acknowledged: packet id -> stage.
    pub direct: BTreeMap<u16, Stage>,
    /// Those of them that came through a shared subscription, until the
    /// client has them (PUBACK, PUBREC): another member gets them if this
    /// connection ends first.
    pub shared: BTreeMap<u16, Delivery>,
    /// Direct QoS 1/2 messages waiting for room in the window.
    pending: VecDeque<Delivery>,
    next_direct_id: u16,
    /// The next queue sequence number to send.
    pub next_seq: u64,
    /// Queued messages below this sequence number may have been sent before: they
    /// go out with DUP set.
    pub dup_below: u64,
}

impl Window {
    pub fn new(max_inflight: u16, max_pending: usize) -> Window {
        Window {
            max_inflight: usize::from(max_inflight.clamp(1, QUEUE_IDS / 2)),
            max_pending,
            queued: BTreeMap::new(),
            direct: BTreeMap::new(),
            shared: BTreeMap::new(),
            pending: VecDeque::new(),
            next_direct_id: QUEUE_IDS + 1,
            next_seq: 0,
            dup_below: 0,
        }
    }

    pub fn inflight(&self) -> usize {
        self.queued.len() + self.direct.len()
    }

    pub fn room(&self) -> usize {
        self.max_inflight.saturating_sub(self.inflight())
    }

    /// Parks a direct QoS 1/2 delivery until the window has room.
    pub fn park(&mut self, delivery: Delivery) {
        self.pending.push_back(delivery);
    }

    /// False once `max_pending` deliveries are parked: the connection then stops
    /// taking messages from its mailbox, which makes publishers wait.
    pub fn can_park(&self) -> bool {
        self.pending.len() < self.max_pending
    }

    /// The next parked delivery that fits in the window, with its packet id.
    pub fn next_direct(&mut self) -> Option<(u16, Delivery)> {
        if self.room() == 0 {
            return None;
        }
        let delivery = self.pending.pop_front()?;
        let id = self.allocate_direct_id()?;
        let stage = match delivery.qos {
            QoS::ExactlyOnce => Stage::AwaitRec,
            _ => Stage::AwaitAck,
        };
        self.direct.insert(id, stage);
        if delivery.shared.is_some() {
            self.shared.insert(id, delivery.clone());
        }
        Some((id, delivery))
    }

    /// The deliveries of shared subscriptions the client does not have:
    /// those in flight without PUBACK or PUBREC, and those parked.
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut left: Vec<Delivery> = std::mem::take(&mut self.shared).into_values().collect();
        left.extend(self.pending.drain(..).filter(|d| d.shared.is_some()));
        left
    }

    fn allocate_direct_id(&mut self) -> Option<u16> {
        // The window is far smaller than the upper half, so a free id is near.
        for _ in 0..=QUEUE_IDS {
            let id = self.next_direct_id;
            self.next_direct_id = if id == u16::MAX {
                QUEUE_IDS + 1
            } else {
                id + 1
            };
            if !self.direct.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// True if `packet_id` belongs to a queued message.
    pub fn is_queue_id(packet_id: u16) -> bool {
        (1..=QUEUE_IDS).contains(&packet_id)
    }

    /// Records a queued message as sent. False if its packet id is still in use
    /// by an older message (the queue wrapped around the id space): wait.
    pub fn send_queued(&mut self, seq: u64, stage: Stage) -> bool {
        let id = queue_packet_id(seq);
        if self.queued.contains_key(&id) {
            return false;
        }
        self.queued.insert(id, (seq, stage));
        self.next_seq = seq + 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Message;
    use std::sync::Arc;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Message {
                topic: Arc::from("t"),
                payload: bytes::Bytes::from_static(b"x"),
                qos,
                retain: false,
                expires_at: None,
                arrival: Default::default(),
                props: None,
            },
            qos,
            ids: Vec::new(),
            retain: false,
            shared: None,
        }
    }

    #[test]
    fn queue_ids_stay_in_the_lower_half_and_never_zero() {
        for seq in [0, 1, 32_766, 32_767, 32_768, u64::MAX] {
            let id = queue_packet_id(seq);
            assert!(Window::is_queue_id(id), "seq {seq} gave {id}");
        }
        assert_eq!(queue_packet_id(0), 1);
        assert_eq!(queue_packet_id(32_767), 1);
    }

    #[test]
    fn window_limits_direct_messages_and_ids_are_upper_half() {
        let mut out = Window::new(2, 10);
        for _ in 0..3 {
            out.park(delivery(QoS::AtLeastOnce));
        }
        let (a, _) = out.next_direct().expect("first fits");
        let (b, _) = out.next_direct().expect("second fits");
        assert!(out.next_direct().is_none(), "window of 2 is full");
        assert!(!Window::is_queue_id(a) && !Window::is_queue_id(b));
        assert_ne!(a, b);
        out.direct.remove(&a);
        assert!(out.next_direct().is_some(), "an ack makes room");
    }

    #[test]
    fn parking_reports_when_full() {
        let mut out = Window::new(1, 2);
        assert!(out.can_park());
        out.park(delivery(QoS::AtLeastOnce));
        out.park(delivery(QoS::AtLeastOnce));
        assert!(!out.can_park());
    }

    #[test]
    fn queued_ids_in_use_are_not_reused() {
        let mut out = Window::new(10, 10);
        assert!(out.send_queued(5, Stage::AwaitAck));
        assert!(!out.send_queued(5 + 32_767, Stage::AwaitAck));
        assert_eq!(out.next_seq, 6);
    }
}
