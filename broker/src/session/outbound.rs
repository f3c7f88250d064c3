//! What a session sends to its client: deliveries, the window they pass
//! through at QoS 1/2, and the acknowledgements that free it.

use std::sync::Arc;

use starling_proto::mqtt::topic::shared_subscription;
use starling_proto::mqtt::{self, Ack, Packet, Publish, QoS, RetainHandling};

use super::aliases::Outbound;
use super::window::{queue_packet_id, Stage, Window};
use super::{log, Session, Then, View, Wait};
use crate::registry::Delivery;
use crate::state::{Command, Message, Subscription};

/// Whether a PUBLISH went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// Not sent, never will be: it expired, or is larger than the client
    /// takes. Counts as delivered [MQTT-3.1.2-25].
    Skipped,
}

/// One PUBLISH to send: a message and how it goes to this client.
struct Outgoing<'a> {
    message: &'a Message,
    qos: QoS,
    packet_id: u16,
    dup: bool,
    retain: bool,
    ids: &'a [u32],
}

impl Session {
    /// The window, allocated on first use.
    pub(super) fn window(&mut self, view: &impl View) -> &mut Window {
        let receive_maximum = self.client_receive_maximum;
        self.out.get_or_insert_with(|| {
            let config = view.config();
            // Never more in flight than the client takes [MQTT-3.3.4-7].
            let inflight = config.max_inflight.min(receive_maximum);
            Box::new(Window::new(inflight, config.max_queued_messages))
        })
    }

    /// A message for this client from the router.
    pub(super) fn deliver(&mut self, delivery: Delivery, view: &impl View) {
        if delivery.qos == QoS::AtMostOnce {
            let out = Outgoing {
                message: &delivery.message,
                qos: QoS::AtMostOnce,
                packet_id: 0,
                dup: false,
                retain: delivery.retain,
                ids: &delivery.ids,
            };
            self.send_publish(out, view);
        } else {
            self.window(view).park(delivery);
            self.fill_window(view);
        }
    }

    /// Sends one PUBLISH, unless its message expired or the packet is larger
    /// than the client takes. Toward MQTT 5 it carries the message's
    /// properties, what is left of its expiry interval [MQTT-3.3.2-6], the
    /// Subscription Identifiers it matched, and a topic alias if the client
    /// takes them.
    fn send_publish(&mut self, out: Outgoing<'_>, view: &impl View) -> Sent {
        let message = out.message;
        if !self.acl_allows_receive(&message.topic, view) {
            view.metrics().dropped("acl_denied");
            return Sent::Skipped;
        }
        let mut remaining = None;
        if let Some(at) = message.expires_at {
            let now = view.now_ms();
            if at <= now {
                view.metrics().dropped("expired");
                return Sent::Skipped;
            }
            remaining = Some(u32::try_from((at - now).div_ceil(1000)).unwrap_or(u32::MAX));
        }
        let mut publish = Publish {
            dup: out.dup,
            qos: out.qos,
            retain: out.retain,
            topic: message.topic.clone(),
            packet_id: out.packet_id,
            payload: message.payload.clone(),
            properties: Default::default(),
        };
        if self.is_v5() {
            // Written only when there is something to write: a write
            // allocates the packet's property list.
            if message.props.is_some() || remaining.is_some() || !out.ids.is_empty() {
                let p = &mut *publish.properties;
                if let Some(props) = &message.props {
                    p.payload_format_indicator = props.payload_format;
                    p.content_type.clone_from(&props.content_type);
                    p.response_topic.clone_from(&props.response_topic);
                    p.correlation_data.clone_from(&props.correlation_data);
                    p.user_properties.clone_from(&props.user_properties);
                }
                p.message_expiry_interval = remaining;
                p.subscription_identifiers.extend_from_slice(out.ids);
            }
            if let Some(max) = self.client_max_packet {
                let version = mqtt::ProtocolVersion::V5;
                let len = mqtt::encoded_len(&Packet::Publish(publish.clone()), version);
                if len.map_or(true, |len| len > max as usize) {
                    // [MQTT-3.1.2-24]: never larger than the client takes.
                    view.metrics().dropped("too_large_for_client");
                    return Sent::Skipped;
                }
            }
            if let Some(aliases) = self.aliases.as_deref_mut().filter(|a| a.sends()) {
                match aliases.outbound(&message.topic) {
                    Outbound::Plain => {}
                    Outbound::Set(alias) => publish.properties.topic_alias = Some(alias),
                    Outbound::Use(alias) => {
                        publish.properties.topic_alias = Some(alias);
                        publish.topic = Arc::from("");
                    }
                }
            }
        }
        view.metrics().sent(out.qos);
        if !out.dup {
            view.metrics().delivered(&message.arrival);
        }
        self.send(&Packet::Publish(publish));
        Sent::Yes
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
                        self.send(&Packet::PubRel(Ack::new(id)));
                        continue;
                    }
                    let outgoing = Outgoing {
                        message: &queued.message,
                        qos: queued.qos,
                        packet_id: id,
                        dup,
                        retain: queued.retain,
                        ids: &queued.ids,
                    };
                    if self.send_publish(outgoing, view) == Sent::Skipped {
                        // Done with as if the client had acknowledged it.
                        self.window(view).queued.remove(&id);
                        self.acked.push(seq);
                    }
                }
            }
        }
        while let Some((id, delivery)) = self.out.as_mut().and_then(|out| out.next_direct()) {
            let outgoing = Outgoing {
                message: &delivery.message,
                qos: delivery.qos,
                packet_id: id,
                dup: false,
                retain: delivery.retain,
                ids: &delivery.ids,
            };
            if self.send_publish(outgoing, view) == Sent::Skipped {
                if let Some(out) = self.out.as_mut() {
                    out.direct.remove(&id);
                    out.shared.remove(&id);
                }
            }
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
            out.shared.remove(&id);
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
                // The client has it: it is no longer another member's to get.
                out.shared.remove(&id);
                self.send(&Packet::PubRel(Ack::new(id)));
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
            self.send(&Packet::PubRel(Ack::new(packet_id)));
        }
    }

    /// Sends the retained messages matching newly accepted subscriptions, with
    /// retain = 1 [MQTT-3.3.1-6], as each one's Retain Handling asks
    /// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11]: always, only for a
    /// subscription that did not exist (`existed`), or never.
    pub(super) fn send_retained(
        &mut self,
        filters: &[(String, Subscription)],
        existed: &[bool],
        view: &impl View,
    ) {
        let mut dropped = 0u64;
        for (i, (filter, subscription)) in filters.iter().enumerate() {
            if shared_subscription(filter).is_some() {
                // Never for a shared subscription (MQTT 5 section 4.8.2): a
                // member joining its group is no new interest in the topic.
                continue;
            }
            let wanted = match subscription.options.retain_handling {
                RetainHandling::Always => true,
                RetainHandling::IfNew => !existed.get(i).copied().unwrap_or(false),
                RetainHandling::Never => false,
            };
            if !wanted {
                continue;
            }
            for message in view.retained_matching(filter) {
                let qos = message.qos.min(subscription.options.qos);
                // Bounded like any backlog of this client: what does not fit
                // behind the window is dropped and counted.
                if qos > QoS::AtMostOnce && !self.window(view).can_park() {
                    dropped += 1;
                    continue;
                }
                let ids = subscription.id.into_iter().collect();
                let delivery = Delivery {
                    message,
                    qos,
                    retain: true,
                    ids,
                    shared: None,
                };
                self.deliver(delivery, view);
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
