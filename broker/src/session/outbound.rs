//! What a session sends to its client: deliveries, the window they pass
//! through at QoS 1/2, and the acknowledgements that free it.

use starling_proto::mqtt::{Packet, Publish, QoS};

use super::window::{queue_packet_id, Stage, Window};
use super::{log, Session, Then, View, Wait};
use crate::registry::Delivery;
use crate::state::{Command, Message};

impl Session {
    /// The window, allocated on first use.
    pub(super) fn window(&mut self, view: &impl View) -> &mut Window {
        self.out.get_or_insert_with(|| {
            let config = view.config();
            Box::new(Window::new(config.max_inflight, config.max_queued_messages))
        })
    }

    /// A message for this client from the router.
    pub(super) fn deliver(&mut self, delivery: Delivery, view: &impl View) {
        if delivery.qos == QoS::AtMostOnce {
            self.send_publish(&delivery.message, QoS::AtMostOnce, 0, false, view);
        } else {
            self.window(view).park(delivery);
            self.fill_window(view);
        }
    }

    fn send_publish(
        &mut self,
        message: &Message,
        qos: QoS,
        packet_id: u16,
        dup: bool,
        view: &impl View,
    ) {
        let publish = Publish {
            dup,
            qos,
            retain: message.retain,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
        };
        view.metrics().sent(qos);
        self.send(&Packet::Publish(publish));
    }

    /// Sends as many queued and parked messages as the window allows.
    pub(super) fn fill_window(&mut self, view: &impl View) {
        // A connection that is ending sends nothing more: when its session was
        // taken over, what it would send belongs to the new connection.
        if self.end.is_some() {
            return;
        }
        if let (true, Some(client_id)) = (self.persistent, self.client_id.clone()) {
            loop {
                let out = self.window(view);
                let (room, next_seq) = (out.room(), out.next_seq);
                if room == 0 {
                    break;
                }
                let batch = view.queued(&client_id, next_seq, room);
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
                    let out = self.window(view);
                    if !out.send_queued(seq, stage) {
                        return;
                    }
                    let dup = seq < out.dup_below;
                    if queued.released {
                        self.send(&Packet::PubRel(id));
                    } else {
                        self.send_publish(&queued.message, queued.qos, id, dup, view);
                    }
                }
            }
        }
        while let Some((id, delivery)) = self.out.as_mut().and_then(|out| out.next_direct()) {
            self.send_publish(&delivery.message, delivery.qos, id, false, view);
        }
    }

    /// PUBACK (expecting `AwaitAck`) or PUBCOMP (expecting `AwaitComp`).
    pub(super) fn acknowledged(&mut self, id: u16, expected: Stage, view: &impl View) {
        // A window that was never allocated has nothing in flight.
        let Some(out) = self.out.as_deref_mut() else {
            tracing::debug!(packet_id = id, "acknowledgement of nothing in flight");
            return;
        };
        if Window::is_queue_id(id) {
            match out.queued.get(&id) {
                Some(&(seq, stage)) if stage == expected => {
                    out.queued.remove(&id);
                    self.acked.push(seq);
                }
                _ => tracing::debug!(packet_id = id, "acknowledgement of nothing in flight"),
            }
        } else if out.direct.get(&id) == Some(&expected) {
            out.direct.remove(&id);
        } else {
            tracing::debug!(packet_id = id, "acknowledgement of nothing in flight");
        }
        self.fill_window(view);
    }

    /// PUBREC from the client.
    pub(super) fn received(&mut self, id: u16) {
        // A window that was never allocated has nothing in flight.
        let Some(out) = self.out.as_deref_mut() else {
            return;
        };
        if Window::is_queue_id(id) {
            let Some(&(seq, Stage::AwaitRec)) = out.queued.get(&id) else {
                return;
            };
            out.queued.insert(id, (seq, Stage::Releasing));
            let Some(from) = self.owner() else {
                return;
            };
            // PUBREL only once the PUBREC is committed: a node resuming this
            // session must not send the PUBLISH again after the client forgot it.
            self.propose(
                Command::Received { from, seq },
                Wait::Committed,
                Then::Released(id),
            );
        } else if let Some(stage) = out.direct.get_mut(&id) {
            if *stage == Stage::AwaitRec {
                *stage = Stage::AwaitComp;
                self.send(&Packet::PubRel(id));
            }
        }
    }

    /// The PUBREC of queued message `packet_id` committed: PUBREL.
    pub(super) fn released(&mut self, packet_id: u16) {
        let released = self
            .out
            .as_mut()
            .and_then(|out| out.queued.get_mut(&packet_id));
        if let Some((_, stage)) = released {
            *stage = Stage::AwaitComp;
            self.send(&Packet::PubRel(packet_id));
        }
    }

    /// Sends the retained messages matching newly accepted subscriptions, with
    /// retain = 1 [MQTT-3.3.1-6].
    pub(super) fn send_retained(&mut self, filters: &[(String, QoS)], view: &impl View) {
        let mut dropped = 0u64;
        for (filter, granted) in filters {
            for message in view.retained_matching(filter) {
                let qos = message.qos.min(*granted);
                // Bounded like any backlog of this client: what does not fit
                // behind the window is dropped and counted.
                if qos > QoS::AtMostOnce && !self.window(view).can_park() {
                    dropped += 1;
                    continue;
                }
                self.deliver(Delivery { message, qos }, view);
            }
        }
        if dropped > 0 {
            log!(
                self,
                info,
                dropped,
                "retained messages over this client's backlog bound dropped"
            );
            view.metrics().dropped_many("retained_backlog", dropped);
        }
    }
}
