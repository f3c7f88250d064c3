//! MQTT 5.0 properties and reason codes (sections 2.2.2 and 2.4 of the 5.0
//! specification), the parts every MQTT 5 packet shares.
//!
//! [`Properties`] holds one packet's properties as typed fields. Decoding
//! checks what section 2.2.2.2 and each property's own rules demand: a property
//! not allowed in the packet it came in, a value of the wrong type or length,
//! or a property list longer than its packet is a Malformed Packet (0x81); a
//! property given twice (except User Property, and Subscription Identifier in
//! PUBLISH) or a value outside its range is a Protocol Error (0x82). The error
//! says which, as [`PropertyError::reason_code`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::EncodeError;

/// The packets (and the will, inside CONNECT) that carry properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

use PropertyContext as P;

/// A reason code of MQTT 5.0 (section 2.4). The same byte means different
/// things in different packets (0x00 is Success, Normal disconnection and
/// Granted QoS 0); the names here are the most general.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    const ALL: [ReasonCode; 43] = [
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::GrantedQoS2,
        ReasonCode::DisconnectWithWillMessage,
        ReasonCode::NoMatchingSubscribers,
        ReasonCode::NoSubscriptionExisted,
        ReasonCode::ContinueAuthentication,
        ReasonCode::ReAuthenticate,
        ReasonCode::UnspecifiedError,
        ReasonCode::MalformedPacket,
        ReasonCode::ProtocolError,
        ReasonCode::ImplementationSpecificError,
        ReasonCode::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid,
        ReasonCode::BadUserNameOrPassword,
        ReasonCode::NotAuthorized,
        ReasonCode::ServerUnavailable,
        ReasonCode::ServerBusy,
        ReasonCode::Banned,
        ReasonCode::ServerShuttingDown,
        ReasonCode::BadAuthenticationMethod,
        ReasonCode::KeepAliveTimeout,
        ReasonCode::SessionTakenOver,
        ReasonCode::TopicFilterInvalid,
        ReasonCode::TopicNameInvalid,
        ReasonCode::PacketIdentifierInUse,
        ReasonCode::PacketIdentifierNotFound,
        ReasonCode::ReceiveMaximumExceeded,
        ReasonCode::TopicAliasInvalid,
        ReasonCode::PacketTooLarge,
        ReasonCode::MessageRateTooHigh,
        ReasonCode::QuotaExceeded,
        ReasonCode::AdministrativeAction,
        ReasonCode::PayloadFormatInvalid,
        ReasonCode::RetainNotSupported,
        ReasonCode::QoSNotSupported,
        ReasonCode::UseAnotherServer,
        ReasonCode::ServerMoved,
        ReasonCode::SharedSubscriptionsNotSupported,
        ReasonCode::ConnectionRateExceeded,
        ReasonCode::MaximumConnectTime,
        ReasonCode::SubscriptionIdentifiersNotSupported,
        ReasonCode::WildcardSubscriptionsNotSupported,
    ];

    /// The reason code with this byte, if MQTT 5.0 defines one.
    pub fn from_u8(byte: u8) -> Option<ReasonCode> {
        ReasonCode::ALL.into_iter().find(|code| *code as u8 == byte)
    }

    /// Codes of 0x80 and above report a failure [MQTT-2.4].
    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether the packet named `packet_type` (as the specification spells
    /// it) may carry this code (sections 3.2.2.2, 3.4.2.1 to 3.7.2.1, 3.9.3,
    /// 3.11.3, 3.14.2.1 and 3.15.2.1).
    pub fn allowed_in(self, packet_type: &str) -> bool {
        let allowed: &[u8] = match packet_type {
            "CONNACK" => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            "PUBACK" | "PUBREC" => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
            "PUBREL" | "PUBCOMP" => &[0x00, 0x92],
            "SUBACK" => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            "UNSUBACK" => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            "DISCONNECT" => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            "AUTH" => &[0x00, 0x18, 0x19],
            _ => return false,
        };
        allowed.contains(&(self as u8))
    }

    /// The SUBACK code that grants `qos`.
    pub fn granted(qos: crate::mqtt::QoS) -> ReasonCode {
        match qos {
            crate::mqtt::QoS::AtMostOnce => ReasonCode::Success,
            crate::mqtt::QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            crate::mqtt::QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// The CONNACK return code of MQTT 3.1 / 3.1.1 that says the same: the
    /// six codes it has, and 0x03 Server unavailable for everything else.
    pub fn connack_v3(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
            _ => 3,
        }
    }

    /// The reason code a 3.1 / 3.1.1 CONNACK return code means.
    pub fn from_connack_v3(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }
}

/// Why a property list is not valid, with the reason code the specification
/// names for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// The list, or one value, runs past the bytes it may take.
    #[error("property list truncated (MQTT 5.0 section 2.2.2)")]
    Truncated,
    /// A Variable Byte Integer of more than four bytes.
    #[error("variable byte integer longer than 4 bytes (MQTT 5.0 section 1.5.5)")]
    MalformedVarint,
    /// An identifier MQTT 5.0 does not define.
    #[error("unknown property identifier {0:#04x} (MQTT 5.0 section 2.2.2.2)")]
    UnknownProperty(u32),
    /// A property the packet may not carry.
    #[error("property {id:#04x} is not allowed in {context:?} (MQTT 5.0 section 2.2.2.2)")]
    NotAllowed { id: u8, context: PropertyContext },
    /// A string that is not well-formed UTF-8 or contains U+0000.
    #[error("property {0:#04x}: string is not valid UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8(u8),
    /// The same property twice where only one is allowed.
    #[error("property {0:#04x} given more than once")]
    Duplicate(u8),
    /// A value outside what the property allows (0 for Receive Maximum, 2 for
    /// a flag byte, 0 for a Subscription Identifier, ...).
    #[error("property {0:#04x} has a value it may not have")]
    BadValue(u8),
}

impl PropertyError {
    /// The reason code a receiver answers this error with (section 2.2.2.2 and
    /// each property's rules): 0x81 Malformed Packet or 0x82 Protocol Error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            PropertyError::Duplicate(_) | PropertyError::BadValue(_) => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// The properties of one packet. A property the packet did not carry is
/// `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH (one per matching subscription), one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// In the order they came; the same name may appear more than once.
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// No property at all, for [`Props`] to hand out.
static EMPTY: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

/// A packet's properties as the packet holds them: nothing allocated when it
/// has none, which is most packets (all of them before MQTT 5), so that
/// packets stay small on the hot path. Reads and writes go to [`Properties`]
/// through `Deref`; a write allocates.
#[derive(Clone, Default)]
pub struct Props(Option<Box<Properties>>);

impl std::ops::Deref for Props {
    type Target = Properties;

    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for Props {
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Properties> for Props {
    fn from(properties: Properties) -> Props {
        if properties.is_empty() {
            Props(None)
        } else {
            Props(Some(Box::new(properties)))
        }
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

impl PartialEq<Properties> for Props {
    fn eq(&self, other: &Properties) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Where each property may appear (MQTT 5.0 section 2.2.2.2, table 2-4).
fn allowed(id: u8, context: PropertyContext) -> bool {
    match id {
        0x01..=0x03 | 0x08 | 0x09 => matches!(context, P::Publish | P::Will),
        0x0B => matches!(context, P::Publish | P::Subscribe),
        0x11 => matches!(context, P::Connect | P::ConnAck | P::Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28..=0x2A => context == P::ConnAck,
        0x15 | 0x16 => matches!(context, P::Connect | P::ConnAck | P::Auth),
        0x17 | 0x19 => context == P::Connect,
        0x18 => context == P::Will,
        0x1C => matches!(context, P::ConnAck | P::Disconnect),
        0x1F => !matches!(
            context,
            P::Connect | P::Will | P::Publish | P::Subscribe | P::Unsubscribe
        ),
        0x21 | 0x22 | 0x27 => matches!(context, P::Connect | P::ConnAck),
        0x23 => context == P::Publish,
        0x26 => true,
        _ => false,
    }
}

/// A Variable Byte Integer (MQTT 5.0 section 1.5.5): at most 4 bytes.
pub fn read_varint(buf: &mut Bytes) -> Result<u32, PropertyError> {
    let mut value = 0u32;
    for i in 0..4 {
        if buf.is_empty() {
            return Err(PropertyError::Truncated);
        }
        let byte = buf.get_u8();
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(PropertyError::MalformedVarint)
}

/// The bytes `value` takes as a Variable Byte Integer.
pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The largest value a Variable Byte Integer carries.
pub const VARINT_MAX: u32 = 268_435_455;

/// Writes `value` as a Variable Byte Integer; callers keep it within
/// [`VARINT_MAX`].
pub fn put_varint(buf: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

fn take(buf: &mut Bytes, n: usize) -> Result<Bytes, PropertyError> {
    if buf.len() < n {
        return Err(PropertyError::Truncated);
    }
    Ok(buf.split_to(n))
}

fn u16_of(buf: &mut Bytes) -> Result<u16, PropertyError> {
    Ok(take(buf, 2)?.get_u16())
}

fn u32_of(buf: &mut Bytes) -> Result<u32, PropertyError> {
    Ok(take(buf, 4)?.get_u32())
}

fn binary_of(buf: &mut Bytes) -> Result<Bytes, PropertyError> {
    let len = usize::from(u16_of(buf)?);
    take(buf, len)
}

fn string_of(buf: &mut Bytes, id: u8) -> Result<String, PropertyError> {
    let raw = binary_of(buf)?;
    let text = std::str::from_utf8(&raw).map_err(|_| PropertyError::InvalidUtf8(id))?;
    if text.contains('\0') {
        return Err(PropertyError::InvalidUtf8(id));
    }
    Ok(text.to_owned())
}

/// Sets `slot` once; a second value is a Protocol Error.
fn once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), PropertyError> {
    if slot.is_some() {
        return Err(PropertyError::Duplicate(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte that may only be 0 or 1.
fn flag(buf: &mut Bytes, id: u8) -> Result<u8, PropertyError> {
    match take(buf, 1)?.get_u8() {
        value @ (0 | 1) => Ok(value),
        _ => Err(PropertyError::BadValue(id)),
    }
}

/// A two-byte value that may not be 0.
fn nonzero_u16(buf: &mut Bytes, id: u8) -> Result<u16, PropertyError> {
    match u16_of(buf)? {
        0 => Err(PropertyError::BadValue(id)),
        value => Ok(value),
    }
}

impl Properties {
    /// True when the packet carries no property at all.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.subscription_identifiers.is_empty()
            && self.session_expiry_interval.is_none()
            && self.assigned_client_identifier.is_none()
            && self.server_keep_alive.is_none()
            && self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.request_problem_information.is_none()
            && self.will_delay_interval.is_none()
            && self.request_response_information.is_none()
            && self.response_information.is_none()
            && self.server_reference.is_none()
            && self.reason_string.is_none()
            && self.receive_maximum.is_none()
            && self.topic_alias_maximum.is_none()
            && self.topic_alias.is_none()
            && self.maximum_qos.is_none()
            && self.retain_available.is_none()
            && self.user_properties.is_empty()
            && self.maximum_packet_size.is_none()
            && self.wildcard_subscription_available.is_none()
            && self.subscription_identifier_available.is_none()
            && self.shared_subscription_available.is_none()
    }

    /// Reads a property list (its Variable Byte Integer length, then the
    /// properties) from the front of `buf`, for a packet of `context`.
    pub fn decode(buf: &mut Bytes, context: PropertyContext) -> Result<Properties, PropertyError> {
        let len = usize::try_from(read_varint(buf)?).map_err(|_| PropertyError::Truncated)?;
        let mut list = take(buf, len)?;
        let mut p = Properties::default();
        while !list.is_empty() {
            let raw_id = read_varint(&mut list)?;
            let id = u8::try_from(raw_id).map_err(|_| PropertyError::UnknownProperty(raw_id))?;
            if !allowed(id, context) {
                return Err(if id_known(id) {
                    PropertyError::NotAllowed { id, context }
                } else {
                    PropertyError::UnknownProperty(raw_id)
                });
            }
            let b = &mut list;
            match id {
                0x01 => once(&mut p.payload_format_indicator, id, flag(b, id)?)?,
                0x02 => once(&mut p.message_expiry_interval, id, u32_of(b)?)?,
                0x03 => once(&mut p.content_type, id, string_of(b, id)?)?,
                0x08 => once(&mut p.response_topic, id, string_of(b, id)?)?,
                0x09 => once(&mut p.correlation_data, id, binary_of(b)?)?,
                0x0B => {
                    let value = read_varint(b)?;
                    if value == 0 {
                        return Err(PropertyError::BadValue(id));
                    }
                    if context == P::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(PropertyError::Duplicate(id));
                    }
                    p.subscription_identifiers.push(value);
                }
                0x11 => once(&mut p.session_expiry_interval, id, u32_of(b)?)?,
                0x12 => once(&mut p.assigned_client_identifier, id, string_of(b, id)?)?,
                0x13 => once(&mut p.server_keep_alive, id, u16_of(b)?)?,
                0x15 => once(&mut p.authentication_method, id, string_of(b, id)?)?,
                0x16 => once(&mut p.authentication_data, id, binary_of(b)?)?,
                0x17 => once(&mut p.request_problem_information, id, flag(b, id)?)?,
                0x18 => once(&mut p.will_delay_interval, id, u32_of(b)?)?,
                0x19 => once(&mut p.request_response_information, id, flag(b, id)?)?,
                0x1A => once(&mut p.response_information, id, string_of(b, id)?)?,
                0x1C => once(&mut p.server_reference, id, string_of(b, id)?)?,
                0x1F => once(&mut p.reason_string, id, string_of(b, id)?)?,
                0x21 => once(&mut p.receive_maximum, id, nonzero_u16(b, id)?)?,
                0x22 => once(&mut p.topic_alias_maximum, id, u16_of(b)?)?,
                0x23 => once(&mut p.topic_alias, id, nonzero_u16(b, id)?)?,
                0x24 => once(&mut p.maximum_qos, id, flag(b, id)?)?,
                0x25 => once(&mut p.retain_available, id, flag(b, id)?)?,
                0x26 => {
                    let name = string_of(b, id)?;
                    let value = string_of(b, id)?;
                    p.user_properties.push((name, value));
                }
                0x27 => match u32_of(b)? {
                    0 => return Err(PropertyError::BadValue(id)),
                    value => once(&mut p.maximum_packet_size, id, value)?,
                },
                0x28 => once(&mut p.wildcard_subscription_available, id, flag(b, id)?)?,
                0x29 => once(&mut p.subscription_identifier_available, id, flag(b, id)?)?,
                0x2A => once(&mut p.shared_subscription_available, id, flag(b, id)?)?,
                _ => return Err(PropertyError::UnknownProperty(raw_id)),
            }
        }
        Ok(p)
    }

    /// The bytes of the property list without its length prefix.
    fn body(&self) -> Result<BytesMut, EncodeError> {
        let mut b = BytesMut::new();
        let put_string = |b: &mut BytesMut, id: u8, s: &str| {
            b.put_u8(id);
            put_prefixed(b, s.as_bytes())
        };
        if let Some(v) = self.payload_format_indicator {
            b.put_u8(0x01);
            b.put_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            b.put_u8(0x02);
            b.put_u32(v);
        }
        if let Some(v) = &self.content_type {
            put_string(&mut b, 0x03, v)?;
        }
        if let Some(v) = &self.response_topic {
            put_string(&mut b, 0x08, v)?;
        }
        if let Some(v) = &self.correlation_data {
            b.put_u8(0x09);
            put_prefixed(&mut b, v)?;
        }
        for v in &self.subscription_identifiers {
            if *v > VARINT_MAX {
                return Err(EncodeError::FieldTooLong {
                    field: "subscription identifier",
                    len: *v as usize,
                });
            }
            b.put_u8(0x0B);
            put_varint(&mut b, *v);
        }
        if let Some(v) = self.session_expiry_interval {
            b.put_u8(0x11);
            b.put_u32(v);
        }
        if let Some(v) = &self.assigned_client_identifier {
            put_string(&mut b, 0x12, v)?;
        }
        if let Some(v) = self.server_keep_alive {
            b.put_u8(0x13);
            b.put_u16(v);
        }
        if let Some(v) = &self.authentication_method {
            put_string(&mut b, 0x15, v)?;
        }
        if let Some(v) = &self.authentication_data {
            b.put_u8(0x16);
            put_prefixed(&mut b, v)?;
        }
        for (id, v) in [
            (0x17, self.request_problem_information),
            (0x19, self.request_response_information),
        ] {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u8(v);
            }
        }
        if let Some(v) = self.will_delay_interval {
            b.put_u8(0x18);
            b.put_u32(v);
        }
        if let Some(v) = &self.response_information {
            put_string(&mut b, 0x1A, v)?;
        }
        if let Some(v) = &self.server_reference {
            put_string(&mut b, 0x1C, v)?;
        }
        if let Some(v) = &self.reason_string {
            put_string(&mut b, 0x1F, v)?;
        }
        for (id, v) in [
            (0x21, self.receive_maximum),
            (0x22, self.topic_alias_maximum),
            (0x23, self.topic_alias),
        ] {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u16(v);
            }
        }
        for (id, v) in [(0x24, self.maximum_qos), (0x25, self.retain_available)] {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u8(v);
            }
        }
        for (name, value) in &self.user_properties {
            b.put_u8(0x26);
            put_prefixed(&mut b, name.as_bytes())?;
            put_prefixed(&mut b, value.as_bytes())?;
        }
        if let Some(v) = self.maximum_packet_size {
            b.put_u8(0x27);
            b.put_u32(v);
        }
        for (id, v) in [
            (0x28, self.wildcard_subscription_available),
            (0x29, self.subscription_identifier_available),
            (0x2A, self.shared_subscription_available),
        ] {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u8(v);
            }
        }
        Ok(b)
    }

    /// Writes the property list, its length first.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let body = self.body()?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|len| *len <= VARINT_MAX)
            .ok_or(EncodeError::FieldTooLong {
                field: "properties",
                len: body.len(),
            })?;
        put_varint(buf, len);
        buf.put_slice(&body);
        Ok(())
    }

    /// The bytes [`Properties::encode`] writes.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        if self.is_empty() {
            return Ok(1);
        }
        let len = self.body()?.len();
        Ok(varint_len(u32::try_from(len).unwrap_or(VARINT_MAX)) + len)
    }
}

/// Whether MQTT 5.0 defines property `id` at all.
fn id_known(id: u8) -> bool {
    [
        P::Connect,
        P::Will,
        P::ConnAck,
        P::Publish,
        P::PubAck,
        P::Subscribe,
        P::Disconnect,
        P::Auth,
    ]
    .into_iter()
    .any(|context| allowed(id, context))
}

/// Writes a two-byte length and `data`; longer than 65,535 bytes is an error.
fn put_prefixed(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "property",
        len: data.len(),
    })?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests;
