//! What a connection sends to its client: deliveries, and at QoS 1/2 the in-flight
//! window, packet ids, and the two sources of messages.
//!
//! - Queued: a persistent session's QoS 1/2 messages live in its replicated queue.
//!   Their packet ids follow from their queue sequence numbers (lower half of the
//!   id space), so any node resuming the session re-sends the same ids.
//! - Direct: everything else (clean sessions, retained messages sent on
//!   SUBSCRIBE) gets ids from a local counter in the upper half of the id space,
//!   so the two never collide.

use std::collections::{BTreeMap, VecDeque};

use starling_proto::mqtt::{Packet, Publish, QoS};

use super::Connection;
use crate::registry::Delivery;
use crate::state::Message;

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
pub struct Outbound {
    max_inflight: usize,
    max_pending: usize,
    /// Queued messages sent and not yet acknowledged: packet id -> (seq, stage).
    pub queued: BTreeMap<u16, (u64, Stage)>,
    /// Direct messages sent and not yet acknowledged: packet id -> stage.
    pub direct: BTreeMap<u16, Stage>,
    /// Direct QoS 1/2 messages waiting for room in the window.
    pending: VecDeque<Delivery>,
    next_direct_id: u16,
    /// The next queue sequence number to send.
    pub next_seq: u64,
    /// Queued messages below this sequence number may have been sent before: they
    /// go out with DUP set.
    pub dup_below: u64,
}

impl Outbound {
    pub fn new(max_inflight: u16, max_pending: usize) -> Outbound {
        Outbound {
            max_inflight: usize::from(max_inflight.clamp(1, QUEUE_IDS / 2)),
            max_pending,
            queued: BTreeMap::new(),
            direct: BTreeMap::new(),
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
        Some((id, delivery))
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

/// Sending to the client: the window, and what fills it.
impl Connection {
    /// The window, allocated on first use.
    pub(super) fn out(&mut self) -> &mut Outbound {
        let config = &self.shared.config;
        self.out.get_or_insert_with(|| {
            Box::new(Outbound::new(
                config.max_inflight,
                config.max_queued_messages,
            ))
        })
    }

    /// Moves deliveries from the mailbox into the window while it has room.
    /// Nothing is sent to the client before its CONNACK.
    pub(super) fn take_mail(&mut self) {
        if !self.connacked {
            return;
        }
        while self.out.as_ref().is_none_or(|out| out.can_park()) && self.end.is_none() {
            let Some(delivery) = self.mailbox.pop() else {
                break;
            };
            self.deliver(delivery);
        }
    }

    /// A message for this client from the router.
    pub(super) fn deliver(&mut self, delivery: Delivery) {
        if delivery.qos == QoS::AtMostOnce {
            self.send_publish(&delivery.message, QoS::AtMostOnce, 0, false);
        } else {
            self.out().park(delivery);
            self.fill_window();
        }
    }

    pub(super) fn send_publish(&mut self, message: &Message, qos: QoS, packet_id: u16, dup: bool) {
        let publish = Publish {
            dup,
            qos,
            retain: message.retain,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
        };
        self.shared.metrics.sent(qos);
        self.send(&Packet::Publish(publish));
    }

    /// Sends as many queued and parked messages as the window allows.
    pub(super) fn fill_window(&mut self) {
        // A connection asked to stop (its session taken over) sends nothing
        // more: what it would send belongs to the new connection.
        if self.mailbox.stopped().is_some() {
            return;
        }
        if let (true, Some(client_id)) = (self.persistent, self.client_id.clone()) {
            loop {
                let out = self.out();
                let (room, next_seq) = (out.room(), out.next_seq);
                if room == 0 {
                    break;
                }
                let batch = self.shared.machine.queued(&client_id, next_seq, room);
                if batch.is_empty() {
                    break;
                }
                for (seq, queued) in batch {
                    let id = queue_packet_id(seq);
                    let stage = match (queued.qos, queued.released) {
                        (_, true) => Stage::AwaitComp,
                        (QoS::ExactlyOnce, false) => Stage::AwaitRec,
                        _ => Stage::AwaitAck,
                    };
                    if !self.out().send_queued(seq, stage) {
                        return;
                    }
                    if queued.released {
                        self.send(&Packet::PubRel(id));
                    } else {
                        let dup = seq < self.out().dup_below;
                        self.send_publish(&queued.message, queued.qos, id, dup);
                    }
                }
            }
        }
        while let Some((id, delivery)) = self.out.as_mut().and_then(|out| out.next_direct()) {
            self.send_publish(&delivery.message, delivery.qos, id, false);
        }
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
            },
            qos,
        }
    }

    #[test]
    fn queue_ids_stay_in_the_lower_half_and_never_zero() {
        for seq in [0, 1, 32_766, 32_767, 32_768, u64::MAX] {
            let id = queue_packet_id(seq);
            assert!(Outbound::is_queue_id(id), "seq {seq} gave {id}");
        }
        assert_eq!(queue_packet_id(0), 1);
        assert_eq!(queue_packet_id(32_767), 1);
    }

    #[test]
    fn window_limits_direct_messages_and_ids_are_upper_half() {
        let mut out = Outbound::new(2, 10);
        for _ in 0..3 {
            out.park(delivery(QoS::AtLeastOnce));
        }
        let (a, _) = out.next_direct().expect("first fits");
        let (b, _) = out.next_direct().expect("second fits");
        assert!(out.next_direct().is_none(), "window of 2 is full");
        assert!(!Outbound::is_queue_id(a) && !Outbound::is_queue_id(b));
        assert_ne!(a, b);
        out.direct.remove(&a);
        assert!(out.next_direct().is_some(), "an ack makes room");
    }

    #[test]
    fn parking_reports_when_full() {
        let mut out = Outbound::new(1, 2);
        assert!(out.can_park());
        out.park(delivery(QoS::AtLeastOnce));
        out.park(delivery(QoS::AtLeastOnce));
        assert!(!out.can_park());
    }

    #[test]
    fn queued_ids_in_use_are_not_reused() {
        let mut out = Outbound::new(10, 10);
        assert!(out.send_queued(5, Stage::AwaitAck));
        assert!(!out.send_queued(5 + 32_767, Stage::AwaitAck));
        assert_eq!(out.next_seq, 6);
    }
}
