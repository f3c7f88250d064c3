//! MQTT 5 topic aliases (section 3.3.2.3.4), both ways.
//!
//! Inbound, the client sets an alias by sending a topic with it, and uses it by
//! sending an empty topic; it may use 1 up to the Topic Alias Maximum we
//! announced in CONNACK. Outbound, we give the first topics a client is sent
//! aliases up to the maximum it announced in CONNECT, and send each of those
//! topics as an empty string afterwards. Aliases live as long as the network
//! connection [MQTT-3.3.2-7]: a resumed session starts with none.

use std::collections::HashMap;
use std::sync::Arc;

use starling_proto::mqtt::ReasonCode;

#[derive(Debug, Default)]
pub(crate) struct Aliases {
    /// Ours to announce: the highest alias the client may use.
    inbound_max: u16,
    inbound: HashMap<u16, Arc<str>>,
    /// The client's: the highest alias we may use.
    outbound_max: u16,
    outbound: HashMap<Arc<str>, u16>,
}

/// How to send a topic to the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// The topic itself, without an alias.
    Plain,
    /// The topic, setting this alias.
    Set(u16),
    /// An empty topic and this alias.
    Use(u16),
}

impl Aliases {
    pub fn new(inbound_max: u16, outbound_max: u16) -> Aliases {
        Aliases {
            inbound_max,
            outbound_max,
            ..Aliases::default()
        }
    }

    /// The topic of an inbound PUBLISH with `alias`: `topic` itself, which
    /// now sets the alias, or, when empty, what the alias was set to. The
    /// error is the reason code to disconnect with: 0x94 for an alias over our
    /// maximum, 0x82 for an empty topic with an alias never set.
    pub fn resolve(&mut self, topic: Arc<str>, alias: u16) -> Result<Arc<str>, ReasonCode> {
        if alias == 0 || alias > self.inbound_max {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if topic.is_empty() {
            return self
                .inbound
                .get(&alias)
                .cloned()
                .ok_or(ReasonCode::ProtocolError);
        }
        self.inbound.insert(alias, topic.clone());
        Ok(topic)
    }

    /// How to send `topic`: once an alias is set for it, by the alias alone;
    /// while aliases are left, by setting a new one.
    pub fn outbound(&mut self, topic: &Arc<str>) -> Outbound {
        if let Some(alias) = self.outbound.get(topic) {
            return Outbound::Use(*alias);
        }
        let next = u16::try_from(self.outbound.len() + 1).unwrap_or(u16::MAX);
        if next > self.outbound_max {
            return Outbound::Plain;
        }
        self.outbound.insert(topic.clone(), next);
        Outbound::Set(next)
    }

    /// Whether the client accepts aliases from us at all.
    pub fn sends(&self) -> bool {
        self.outbound_max > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases_are_set_then_used_and_bounded() {
        let mut aliases = Aliases::new(2, 0);
        let topic: Arc<str> = Arc::from("a/b");
        assert_eq!(aliases.resolve(topic.clone(), 1), Ok(topic.clone()));
        assert_eq!(aliases.resolve(Arc::from(""), 1), Ok(topic));
        assert_eq!(
            aliases.resolve(Arc::from(""), 2),
            Err(ReasonCode::ProtocolError),
            "never set"
        );
        assert_eq!(
            aliases.resolve(Arc::from("x"), 3),
            Err(ReasonCode::TopicAliasInvalid),
            "over our maximum"
        );
        assert_eq!(
            aliases.resolve(Arc::from("x"), 0),
            Err(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn outbound_aliases_are_given_until_the_clients_maximum() {
        let mut aliases = Aliases::new(0, 1);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert_eq!(aliases.outbound(&a), Outbound::Set(1));
        assert_eq!(aliases.outbound(&a), Outbound::Use(1));
        assert_eq!(aliases.outbound(&b), Outbound::Plain, "none left");
        assert!(!Aliases::new(5, 0).sends());
    }
}
