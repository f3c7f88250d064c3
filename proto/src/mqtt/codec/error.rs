//! What can go wrong reading or writing MQTT packets.
//!
//! Every decode error that a spec statement forbids names that statement, so that a
//! log line or a test failure points at the rule the peer broke. Statements are cited
//! from MQTT 3.1.1; rules without a numbered statement cite their section.

use crate::mqtt::topic::TopicError;
use crate::mqtt::v5::{PropertyError, ReasonCode};

/// Why bytes from a peer are not a valid packet.
///
/// A decode error means the connection must be closed; the buffer's contents are
/// then unspecified. The one exception is [`DecodeError::UnsupportedProtocolLevel`]:
/// the decoder has consumed that CONNECT, and the server answers it with CONNACK
/// return code 0x01 before closing [MQTT-3.1.2-2].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header announces a packet bigger than the configured maximum. Found
    /// from the fixed header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// The remaining length's fourth byte has its continuation bit set.
    #[error("remaining length longer than 4 bytes (MQTT 3.1.1 section 2.2.3)")]
    MalformedRemainingLength,
    /// Packet type 0 is reserved, and so is 15 before MQTT 5 (AUTH).
    #[error("reserved packet type {0} (MQTT 3.1.1 section 2.2.1)")]
    UnknownPacketType(u8),
    /// The fixed header's flags are not the ones the packet type requires.
    #[error("reserved flags {flags:#06b} in the fixed header of {packet_type} [MQTT-2.2.2-2]")]
    ReservedFlags {
        packet_type: &'static str,
        flags: u8,
    },
    /// PUBLISH with both QoS bits set.
    #[error("PUBLISH with QoS 3 [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// PUBLISH with QoS 0 and the DUP flag set.
    #[error("PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]")]
    DupWithQoS0,
    /// A string field is not well-formed UTF-8 (surrogates included).
    #[error("string is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// A string field contains U+0000.
    #[error("string contains U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
    /// The topic of a PUBLISH or a will is empty.
    #[error("empty topic name [MQTT-4.7.3-1]")]
    EmptyTopicName,
    /// The topic of a PUBLISH or a will contains `+` or `#`.
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// A filter in SUBSCRIBE or UNSUBSCRIBE is empty.
    #[error("empty topic filter [MQTT-4.7.3-1]")]
    EmptyTopicFilter,
    /// A filter in SUBSCRIBE or UNSUBSCRIBE misplaces a wildcard; the inner error
    /// names the statement [MQTT-4.7.1-2] or [MQTT-4.7.1-3].
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// A packet that needs a packet identifier carries 0.
    #[error("packet identifier 0 in {packet_type} [MQTT-2.3.1-1]")]
    ZeroPacketId { packet_type: &'static str },
    /// CONNECT names a protocol other than "MQTT" or "MQIsdp": close without CONNACK.
    #[error("unknown protocol name in CONNECT [MQTT-3.1.2-1]")]
    UnknownProtocolName,
    /// CONNECT names a known protocol at a level this server does not speak. The
    /// packet has been consumed; answer CONNACK 0x01, then close.
    #[error("unsupported protocol level {0} in CONNECT [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    /// Bit 0 of the CONNECT flags is set (MQTT 3.1.1).
    #[error("reserved flag set in CONNECT [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or will retain set without the will flag, or will QoS 3.
    #[error(
        "will QoS or retain set without the will flag, or will QoS 3 \
         [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-14] [MQTT-3.1.2-15]"
    )]
    WillFlagsInconsistent,
    /// The password flag is set without the user name flag (MQTT 3.1.1).
    #[error("password flag set without the user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// Bits 7-1 of the CONNACK acknowledge flags are set.
    #[error("reserved bits set in the CONNACK acknowledge flags (MQTT 3.1.1 section 3.2.2.1)")]
    ConnAckReservedFlags,
    /// CONNACK return codes 6-255 are reserved.
    #[error("reserved CONNACK return code {0} (MQTT 3.1.1 section 3.2.2.3)")]
    InvalidConnectReturnCode(u8),
    /// SUBSCRIBE without a single topic filter.
    #[error("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]")]
    EmptySubscribe,
    /// A SUBSCRIBE request byte with reserved bits set or QoS 3. (The statement's
    /// number is spelt this way in the specification.)
    #[error("reserved bits set or QoS 3 in SUBSCRIBE request byte {0:#04x} [MQTT-3-8.3-4]")]
    SubscribeReservedQoSBits(u8),
    /// A SUBACK return code other than 0x00, 0x01, 0x02 and 0x80.
    #[error("reserved SUBACK return code {0:#04x} [MQTT-3.9.3-2]")]
    InvalidSubAckCode(u8),
    /// UNSUBSCRIBE without a single topic filter.
    #[error("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
    /// A field runs past the end of the packet: the remaining length is too short
    /// for what the packet says it contains.
    #[error("{packet_type} ends inside a field (MQTT 3.1.1 section 2.2.3)")]
    Truncated { packet_type: &'static str },
    /// An MQTT 5 property list is malformed or breaks a property's rules.
    #[error("{packet_type}: {error}")]
    Property {
        packet_type: &'static str,
        error: PropertyError,
    },
    /// A reason code MQTT 5 does not define, or not for this packet.
    #[error("reason code {code:#04x} is not one {packet_type} may carry (MQTT 5.0 section 2.4)")]
    InvalidReasonCode { packet_type: &'static str, code: u8 },
    /// Retain Handling 3 in MQTT 5 subscription options: a Protocol Error.
    #[error("retain handling 3 in SUBSCRIBE options (MQTT 5.0 section 3.8.3.1)")]
    RetainHandling,
    /// An MQTT 5 PUBLISH with an empty topic and no Topic Alias.
    #[error("empty topic name without a topic alias (MQTT 5.0 section 3.3.2.1)")]
    EmptyTopicWithoutAlias,
    /// Bytes are left over after the last field the packet can contain.
    #[error("{count} unexpected bytes at the end of {packet_type} (MQTT 3.1.1 section 2.2.3)")]
    TrailingBytes {
        packet_type: &'static str,
        count: usize,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code a server answers this error with before closing
    /// the connection: 0x95 for a packet over the maximum size, 0x82 Protocol
    /// Error where the specification names one, 0x81 Malformed Packet for the
    /// rest [MQTT-4.13.1-1].
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::Property { error, .. } => error.reason_code(),
            DecodeError::RetainHandling
            | DecodeError::EmptyTopicWithoutAlias
            | DecodeError::PasswordWithoutUsername => ReasonCode::ProtocolError,
            DecodeError::UnsupportedProtocolLevel(_) => ReasonCode::UnsupportedProtocolVersion,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be written. The output buffer is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than its 2-byte length prefix can say.
    #[error("{field} is {len} bytes, more than the 65535 a length-prefixed field holds")]
    FieldTooLong { field: &'static str, len: usize },
    /// The packet's remaining length is over the 268,435,455 bytes MQTT can express.
    #[error("remaining length {remaining} exceeds 268435455 bytes (MQTT 3.1.1 section 2.2.3)")]
    PacketTooLarge { remaining: usize },
    /// A packet that needs a packet identifier was given 0.
    #[error("packet identifier 0 in {packet_type} [MQTT-2.3.1-1]")]
    ZeroPacketId { packet_type: &'static str },
    /// A QoS 0 PUBLISH with DUP set.
    #[error("PUBLISH with QoS 0 and DUP set [MQTT-3.3.1-2]")]
    DupWithQoS0,
    /// A packet the protocol version does not have (AUTH before MQTT 5).
    #[error("{packet_type} does not exist before MQTT 5")]
    NotInVersion { packet_type: &'static str },
}
