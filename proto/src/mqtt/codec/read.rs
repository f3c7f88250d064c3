//! A cursor over one packet's body, with the field readers of MQTT 3.1.1 section 1.5.
//!
//! The body is a frozen `Bytes`, so binary fields and payloads are handed out
//! without copying. Every read checks the bytes left, and running out is
//! [`DecodeError::Truncated`]: the remaining length promised less than the fields say.

use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::error::DecodeError;
use crate::mqtt::topic::{validate_topic_filter, validate_topic_name, TopicError};
use crate::mqtt::v5::{Properties, PropertyContext, ReasonCode};

pub(super) struct Reader {
    body: Bytes,
    packet_type: &'static str,
}

impl Reader {
    pub(super) fn new(body: Bytes, packet_type: &'static str) -> Reader {
        Reader { body, packet_type }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet_type: self.packet_type,
        }
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.body.is_empty() {
            return Err(self.truncated());
        }
        Ok(self.body.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.body.len() < 2 {
            return Err(self.truncated());
        }
        Ok(self.body.get_u16())
    }

    /// A packet identifier, which is never 0 [MQTT-2.3.1-1].
    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId {
                packet_type: self.packet_type,
            }),
            id => Ok(id),
        }
    }

    /// Binary data: a 2-byte length, then that many bytes.
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.body.len() < len {
            return Err(self.truncated());
        }
        Ok(self.body.split_to(len))
    }

    /// A UTF-8 string: well-formed [MQTT-1.5.3-1] and without U+0000 [MQTT-1.5.3-2].
    fn utf8<T>(&mut self, convert: impl FnOnce(&str) -> T) -> Result<T, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(convert(text))
    }

    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        self.utf8(str::to_owned)
    }

    /// A string as an `Arc<str>`, unvalidated as a topic.
    pub(super) fn shared_string(&mut self) -> Result<Arc<str>, DecodeError> {
        self.utf8(|text| Arc::<str>::from(text))
    }

    /// An MQTT 5 property list, for a packet of `context`.
    pub(super) fn properties(
        &mut self,
        context: PropertyContext,
    ) -> Result<Properties, DecodeError> {
        Properties::decode(&mut self.body, context).map_err(|error| DecodeError::Property {
            packet_type: self.packet_type,
            error,
        })
    }

    /// An MQTT 5 reason code that this packet type may carry.
    pub(super) fn reason_code(&mut self) -> Result<ReasonCode, DecodeError> {
        let code = self.u8()?;
        ReasonCode::from_u8(code)
            .filter(|c| c.allowed_in(self.packet_type))
            .ok_or(DecodeError::InvalidReasonCode {
                packet_type: self.packet_type,
                code,
            })
    }

    /// A topic name: the topic of a PUBLISH or a will.
    pub(super) fn topic_name(&mut self) -> Result<Arc<str>, DecodeError> {
        let topic = self.shared_string()?;
        check_topic_name(&topic)?;
        Ok(topic)
    }

    /// A topic filter of SUBSCRIBE or UNSUBSCRIBE.
    pub(super) fn topic_filter(&mut self) -> Result<String, DecodeError> {
        let filter = self.string()?;
        validate_topic_filter(&filter).map_err(|e| match e {
            TopicError::Empty => DecodeError::EmptyTopicFilter,
            other => DecodeError::InvalidTopicFilter(other),
        })?;
        Ok(filter)
    }

    /// Everything left: a PUBLISH payload.
    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Checks that every byte of the body was read.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet_type: self.packet_type,
                count: self.body.len(),
            })
        }
    }
}

/// A topic name as a PUBLISH or a will must spell it.
pub(super) fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    validate_topic_name(topic).map_err(|e| match e {
        TopicError::Empty => DecodeError::EmptyTopicName,
        TopicError::NullCharacter => DecodeError::NullCharacter,
        // A wire string never exceeds 65535 bytes, so a wildcard is all that is left.
        _ => DecodeError::WildcardInTopicName,
    })
}
