#!/usr/bin/env python3
"""MQTT 5 behaviour of Starling, checked with independent clients.

    python3 tests/mqtt5.py <scenario> <port>

Every scenario is a function below (SCENARIOS names them). It talks to a broker
already listening on 127.0.0.1:<port>, through paho-mqtt 2 (MQTT 5,
CallbackAPIVersion.VERSION2) where a well-behaved client does, and through a
raw socket with MQTT 5 packets written by hand (struct) where the exact bytes
matter or paho cannot send them. It prints what it saw, and exits 0 when every
check held, 1 with a message naming the failed check otherwise. Every wait is
bounded. tests/mqtt5.rs starts the brokers and runs each scenario.
"""

import base64
import hashlib
import hmac
import os
import queue
import socket
import struct
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
# How long anything expected may take to arrive.
WAIT = 5.0
# How long nothing must arrive when nothing is expected.
QUIET = 1.0


class Failure(Exception):
    """A check that did not hold."""


def say(*args):
    print(*args, flush=True)


def check(condition, message):
    if not condition:
        raise Failure(message)


def check_eq(got, want, what):
    if got != want:
        raise Failure(f"{what}: expected {want!r}, got {got!r}")


# ---------------------------------------------------------------------------
# Raw MQTT 5 (and 3.1.1) packets, written and read by hand from the spec.
# ---------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    8, 9, 10, 11, 12, 13, 14)
PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
    11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
WILL_DELAY = 0x18
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

BYTE, U16, U32, VARINT, STRING, BINARY, PAIR = range(7)
PROPERTY_TYPES = {
    0x01: BYTE, 0x02: U32, 0x03: STRING, 0x08: STRING, 0x09: BINARY,
    0x0B: VARINT, 0x11: U32, 0x12: STRING, 0x13: U16, 0x15: STRING,
    0x16: BINARY, 0x17: BYTE, 0x18: U32, 0x19: BYTE, 0x1A: STRING,
    0x1C: STRING, 0x1F: STRING, 0x21: U16, 0x22: U16, 0x23: U16, 0x24: BYTE,
    0x25: BYTE, 0x26: PAIR, 0x27: U32, 0x28: BYTE, 0x29: BYTE, 0x2A: BYTE,
}


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf, i):
    value, shift = 0, 0
    for _ in range(4):
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    raise Failure(f"variable byte integer longer than 4 bytes in {buf.hex()}")


def u16(n):
    return struct.pack(">H", n)


def u32(n):
    return struct.pack(">I", n)


def lstr(data):
    """A two-byte length, then the bytes (a str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode()
    return u16(len(data)) + data


def props(*items):
    """A property list: its length, then (identifier, value) pairs."""
    body = b""
    for ident, value in items:
        kind = PROPERTY_TYPES[ident]
        body += varint(ident)
        if kind == BYTE:
            body += bytes([value])
        elif kind == U16:
            body += u16(value)
        elif kind == U32:
            body += u32(value)
        elif kind == VARINT:
            body += varint(value)
        elif kind in (STRING, BINARY):
            body += lstr(value)
        else:
            body += lstr(value[0]) + lstr(value[1])
    return varint(len(body)) + body


def parse_props(buf, i):
    """The property list at buf[i:] as {identifier: [values]}, and the index
    after it."""
    length, i = read_varint(buf, i)
    end = i + length
    check(end <= len(buf), f"property list runs past its packet: {buf.hex()}")
    found = {}
    while i < end:
        ident, i = read_varint(buf, i)
        check(ident in PROPERTY_TYPES, f"unknown property {ident:#04x} in {buf.hex()}")
        kind = PROPERTY_TYPES[ident]
        if kind == BYTE:
            value, i = buf[i], i + 1
        elif kind == U16:
            value, i = struct.unpack_from(">H", buf, i)[0], i + 2
        elif kind == U32:
            value, i = struct.unpack_from(">I", buf, i)[0], i + 4
        elif kind == VARINT:
            value, i = read_varint(buf, i)
        else:
            n = struct.unpack_from(">H", buf, i)[0]
            value, i = bytes(buf[i + 2:i + 2 + n]), i + 2 + n
            if kind == STRING:
                value = value.decode()
            elif kind == PAIR:
                m = struct.unpack_from(">H", buf, i)[0]
                value, i = (value.decode(), bytes(buf[i + 2:i + 2 + m]).decode()), i + 2 + m
        found.setdefault(ident, []).append(value)
    check(i == end, f"property list does not end where its length says: {buf.hex()}")
    return found, end


def one(found, ident):
    """The single value of property `ident`, or None."""
    values = found.get(ident, [])
    check(len(values) <= 1, f"property {ident:#04x} given {len(values)} times")
    return values[0] if values else None


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


def connect_v5(client_id, clean_start=True, keep_alive=60, properties=None, will=None):
    """CONNECT of MQTT 5. `will`: (topic, payload, qos, retain, will properties)."""
    flags = 0x02 if clean_start else 0x00
    payload = lstr(client_id)
    if will is not None:
        topic, message, qos, retain, will_props = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += will_props + lstr(topic) + lstr(message)
    body = lstr("MQTT") + bytes([5, flags]) + u16(keep_alive)
    body += properties if properties is not None else props()
    return packet(0x10, body + payload)


def connect_v311(client_id, clean_session=True, keep_alive=60):
    flags = 0x02 if clean_session else 0x00
    body = lstr("MQTT") + bytes([4, flags]) + u16(keep_alive) + lstr(client_id)
    return packet(0x10, body)


def publish_v5(topic, payload, qos=0, retain=False, packet_id=0, properties=None):
    body = lstr(topic)
    if qos:
        body += u16(packet_id)
    body += properties if properties is not None else props()
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)


def subscribe_v5(packet_id, filters, properties=None):
    """`filters`: (filter, subscription options byte)."""
    body = u16(packet_id) + (properties if properties is not None else props())
    for topic_filter, options in filters:
        body += lstr(topic_filter) + bytes([options])
    return packet(0x82, body)


def subscribe_v311(packet_id, filters):
    body = u16(packet_id)
    for topic_filter, qos in filters:
        body += lstr(topic_filter) + bytes([qos])
    return packet(0x82, body)


def ack_v5(kind, packet_id, reason=0):
    first = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}[kind]
    return packet(first, u16(packet_id) + (bytes([reason]) if reason else b""))


def disconnect_v5(reason=0, properties=None):
    return packet(0xE0, bytes([reason]) + (properties if properties is not None else props()))


class Closed(Exception):
    """The broker closed the connection."""


class Packet:
    def __init__(self, kind, flags, body):
        self.kind, self.flags, self.body = kind, flags, body

    @property
    def name(self):
        return PACKET_NAMES.get(self.kind, f"type {self.kind}")

    def __repr__(self):
        return f"{self.name}(flags={self.flags:#x}, body={self.body.hex()})"


class Message:
    """A decoded PUBLISH."""

    def __init__(self, topic, payload, qos, retain, dup, packet_id, properties):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.dup, self.packet_id, self.properties = dup, packet_id, properties

    def __repr__(self):
        return (f"PUBLISH(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos}, "
                f"retain={self.retain}, id={self.packet_id}, props={self.properties})")


def decode_publish(pkt, v5=True):
    body = pkt.body
    qos = (pkt.flags >> 1) & 3
    n = struct.unpack_from(">H", body, 0)[0]
    topic = bytes(body[2:2 + n]).decode()
    i = 2 + n
    packet_id = 0
    if qos:
        packet_id = struct.unpack_from(">H", body, i)[0]
        i += 2
    found = {}
    if v5:
        found, i = parse_props(body, i)
    return Message(topic, bytes(body[i:]), qos, bool(pkt.flags & 1), bool(pkt.flags & 8),
                   packet_id, found)


def decode_ack(pkt):
    """(packet id, reason code, properties) of PUBACK, PUBREC, PUBREL, PUBCOMP."""
    body = pkt.body
    packet_id = struct.unpack_from(">H", body, 0)[0]
    reason = body[2] if len(body) > 2 else 0
    found = parse_props(body, 3)[0] if len(body) > 3 else {}
    return packet_id, reason, found


def decode_suback(pkt):
    """(packet id, properties, reason codes) of SUBACK or UNSUBACK."""
    packet_id = struct.unpack_from(">H", pkt.body, 0)[0]
    found, i = parse_props(pkt.body, 2)
    return packet_id, found, list(pkt.body[i:])


def decode_disconnect(pkt):
    reason = pkt.body[0] if pkt.body else 0
    found = parse_props(pkt.body, 1)[0] if len(pkt.body) > 1 else {}
    return reason, found


class Raw:
    """One TCP connection speaking hand-written MQTT."""

    def __init__(self, port, name):
        self.name = name
        self.sock = socket.create_connection((HOST, port), timeout=WAIT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            raise Closed(f"{self.name}: connection closed by the broker")
        self.buf += data
        return True

    def read(self, timeout=WAIT):
        """The next packet, or None if none came within `timeout`; Closed if
        the broker closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    byte = self.buf[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + length:
                    first = self.buf[0]
                    body = self.buf[i:i + length]
                    self.buf = self.buf[i + length:]
                    return Packet(first >> 4, first & 0x0F, body)
            if not self._fill(deadline):
                return None

    def expect(self, kind, timeout=WAIT):
        try:
            pkt = self.read(timeout)
        except Closed as closed:
            raise Failure(f"{self.name}: {PACKET_NAMES[kind]} expected, but {closed}") from None
        check(pkt is not None,
              f"{self.name}: no {PACKET_NAMES[kind]} within {timeout} s")
        if pkt.kind != kind:
            detail = repr(pkt)
            if pkt.kind == DISCONNECT:
                reason, found = decode_disconnect(pkt)
                detail = f"DISCONNECT reason {reason:#04x} {found}"
            raise Failure(f"{self.name}: {PACKET_NAMES[kind]} expected, got {detail}")
        return pkt

    def expect_publish(self, timeout=WAIT, v5=True):
        return decode_publish(self.expect(PUBLISH, timeout), v5)

    def expect_silence(self, duration=QUIET):
        try:
            pkt = self.read(duration)
        except Closed as closed:
            raise Failure(f"{self.name}: silence expected, but {closed}") from None
        check(pkt is None, f"{self.name}: nothing expected for {duration} s, got {pkt!r}")

    def expect_closed(self, timeout=WAIT, after=""):
        """Nothing more, then the connection closes within `timeout`."""
        try:
            pkt = self.read(timeout)
        except Closed:
            return
        rule = ""
        if after:
            rule = (f" after {after}: a sender of DISCONNECT must send no more packets and "
                    "close the connection [MQTT-3.14.4-1] [MQTT-3.14.4-2]")
        check(pkt is None, f"{self.name}: connection close expected{rule}, got {pkt!r}")
        raise Failure(f"{self.name}: connection still open {timeout} s later{rule}")

    def expect_disconnect(self, reason, timeout=WAIT):
        """DISCONNECT with `reason`, then the close of the connection."""
        got, found = decode_disconnect(self.expect(DISCONNECT, timeout))
        say(f"{self.name}: DISCONNECT reason {got:#04x} {found}")
        check_eq(got, reason, f"{self.name}: DISCONNECT reason code")
        self.expect_closed(after=f"DISCONNECT {reason:#04x}")

    def connect(self, connect_packet, v5=True):
        """Sends CONNECT; returns (session present, reason code, properties)."""
        self.send(connect_packet)
        pkt = self.expect(CONNACK)
        session_present = bool(pkt.body[0] & 1)
        reason = pkt.body[1]
        found = parse_props(pkt.body, 2)[0] if v5 else {}
        say(f"{self.name}: CONNACK session_present={int(session_present)} "
            f"reason={reason:#04x} {found}")
        return session_present, reason, found

    def ping(self):
        self.send(packet(0xC0, b""))
        self.expect(PINGRESP)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_v5(port, client_id, clean_start=True, properties=None, will=None):
    """A raw MQTT 5 client, connected (CONNACK Success checked)."""
    raw = Raw(port, client_id)
    session_present, reason, found = raw.connect(
        connect_v5(client_id, clean_start, properties=properties, will=will))
    check_eq(reason, 0, f"{client_id}: CONNACK reason code")
    raw.connack = found
    raw.session_present = session_present
    return raw


# ---------------------------------------------------------------------------
# paho-mqtt 2, driven from this thread through queues filled by its callbacks.
# ---------------------------------------------------------------------------


def code(reason):
    """The numeric value of a paho ReasonCode (or int)."""
    return reason if isinstance(reason, int) else reason.value


def prop(properties, name):
    """A paho Properties attribute, or None when absent."""
    return getattr(properties, name, None) if properties is not None else None


class Paho:
    """A paho-mqtt client on its own network thread."""

    def __init__(self, port, client_id, protocol=mqtt.MQTTv5, clean_session=None):
        self.port = port
        self.name = client_id or "(empty id)"
        kwargs = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = True if clean_session is None else clean_session
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kwargs)
        self.v5 = protocol == mqtt.MQTTv5
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.lock = threading.Condition()
        self.acks = {}
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = lambda _c, _u, message: self.messages.put(message)
        c.on_publish = self._on_ack
        c.on_subscribe = self._on_ack
        c.on_unsubscribe = self._on_ack

    def _on_connect(self, _client, _userdata, flags, reason_code, properties):
        self.connacks.put((flags.session_present, code(reason_code), properties))

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, properties):
        self.disconnects.put((code(reason_code), properties))

    def _on_ack(self, _client, _userdata, mid, reason, properties):
        with self.lock:
            self.acks[mid] = (reason, properties)
            self.lock.notify_all()

    def _wait_ack(self, mid, what):
        deadline = time.monotonic() + WAIT
        with self.lock:
            while mid not in self.acks:
                remaining = deadline - time.monotonic()
                check(remaining > 0, f"{self.name}: no answer to {what} within {WAIT} s")
                self.lock.wait(remaining)
            return self.acks.pop(mid)

    def connect(self, clean_start=True, keep_alive=60, properties=None, expect_reason=0):
        """Connects; returns (session present, CONNACK properties)."""
        if self.v5:
            self.client.connect(HOST, self.port, keep_alive, clean_start=clean_start,
                                properties=properties)
        else:
            self.client.connect(HOST, self.port, keep_alive)
        self.client.loop_start()
        try:
            session_present, reason, found = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.name}: no CONNACK within {WAIT} s") from None
        say(f"{self.name}: CONNACK session_present={int(session_present)} reason={reason:#04x} "
            f"{found}")
        check_eq(reason, expect_reason, f"{self.name}: CONNACK reason code")
        return bool(session_present), found

    def subscribe(self, topic_filter, qos=1, options=None, properties=None):
        """Subscribes one filter; returns its SUBACK reason code."""
        if self.v5:
            options = options or SubscribeOptions(qos=qos)
            result, mid = self.client.subscribe(topic_filter, options=options,
                                                properties=properties)
        else:
            result, mid = self.client.subscribe(topic_filter, qos)
        check_eq(result, mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe {topic_filter!r} sent")
        codes, _ = self._wait_ack(mid, f"SUBSCRIBE {topic_filter!r}")
        codes = [code(c) for c in codes]
        say(f"{self.name}: SUBACK {topic_filter!r} -> {[hex(c) for c in codes]}")
        check_eq(len(codes), 1, f"{self.name}: SUBACK codes for one filter")
        return codes[0]

    def subscribe_ok(self, topic_filter, qos=1, options=None, properties=None):
        granted = self.subscribe(topic_filter, qos, options, properties)
        want = options.QoS if options is not None else qos
        check_eq(granted, want, f"{self.name}: SUBACK for {topic_filter!r}")

    def unsubscribe(self, topic_filter):
        result, mid = self.client.unsubscribe(topic_filter)
        check_eq(result, mqtt.MQTT_ERR_SUCCESS, f"{self.name}: unsubscribe sent")
        codes, _ = self._wait_ack(mid, f"UNSUBSCRIBE {topic_filter!r}")
        codes = [code(c) for c in codes] if isinstance(codes, list) else [code(codes)]
        say(f"{self.name}: UNSUBACK {topic_filter!r} -> {[hex(c) for c in codes]}")
        return codes[0]

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes; at QoS 1 waits for PUBACK and returns its reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check_eq(info.rc, mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish to {topic!r} sent")
        if qos == 0:
            return None
        reason, _ = self._wait_ack(info.mid, f"PUBLISH to {topic!r}")
        say(f"{self.name}: PUBACK of {topic!r} reason {code(reason):#04x}")
        return code(reason)

    def publish_ok(self, topic, payload, qos=1, retain=False, properties=None):
        reason = self.publish(topic, payload, qos, retain, properties)
        check(reason in (None, 0x00, 0x10),
              f"{self.name}: PUBACK of {topic!r} has error reason {reason:#04x}")

    def expect_message(self, timeout=WAIT, what="a message"):
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.name}: expected {what}, none within {timeout} s") from None
        say(f"{self.name}: got topic={message.topic!r} payload={message.payload!r} "
            f"qos={message.qos} retain={int(message.retain)} props={message.properties}")
        return message

    def expect_no_message(self, duration=QUIET, what="nothing"):
        try:
            message = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise Failure(f"{self.name}: expected {what} for {duration} s, got topic="
                      f"{message.topic!r} payload={message.payload!r} retain={message.retain}")

    def disconnect(self):
        self.client.disconnect()
        try:
            self.disconnects.get(timeout=WAIT)
        except queue.Empty:
            raise Failure(f"{self.name}: DISCONNECT not done within {WAIT} s") from None
        self.client.loop_stop()


def v5_client(port, client_id, clean_start=True, properties=None):
    client = Paho(port, client_id)
    client.session_present, client.connack = client.connect(clean_start, properties=properties)
    return client


def connect_props(**values):
    p = Properties(PacketTypes.CONNECT)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def publish_props(**values):
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def sub_id(identifier):
    p = Properties(PacketTypes.SUBSCRIBE)
    p.SubscriptionIdentifier = identifier
    return p


# ---------------------------------------------------------------------------
# Scenarios.
# ---------------------------------------------------------------------------


def connack_properties(port):
    """CONNACK of a default broker tells an MQTT 5 client its limits."""
    client = v5_client(port, "cp-client")
    p = client.connack
    check_eq(prop(p, "TopicAliasMaximum"), 10, "Topic Alias Maximum")
    check_eq(prop(p, "MaximumPacketSize"), 1048576, "Maximum Packet Size")
    check_eq(prop(p, "WildcardSubscriptionAvailable"), 1, "Wildcard Subscription Available")
    check_eq(prop(p, "SubscriptionIdentifierAvailable"), 1,
             "Subscription Identifier Available")
    check_eq(prop(p, "SharedSubscriptionAvailable"), 0, "Shared Subscription Available")
    # The defaults of the rest: absent, or the default value.
    check(prop(p, "ReceiveMaximum") in (None, 65535), "Receive Maximum: absent or 65535")
    check(prop(p, "MaximumQoS") is None, "Maximum QoS: absent (QoS 2 is supported)")
    check(prop(p, "RetainAvailable") in (None, 1), "Retain Available: absent or 1")
    check(prop(p, "AssignedClientIdentifier") is None,
          "no Assigned Client Identifier for a client that named itself")
    client.disconnect()


def connack_limits(port):
    """A broker with receive_maximum 5, max_qos 1 and retain_available false says
    so in CONNACK, and refuses a retained and a QoS 2 PUBLISH with DISCONNECT."""
    client = v5_client(port, "cl-client")
    p = client.connack
    check_eq(prop(p, "ReceiveMaximum"), 5, "Receive Maximum")
    check_eq(prop(p, "MaximumQoS"), 1, "Maximum QoS")
    check_eq(prop(p, "RetainAvailable"), 0, "Retain Available")
    client.disconnect()

    raw = raw_v5(port, "cl-retain")
    # QoS 1 without retain is still fine.
    raw.send(publish_v5("cl/t", b"plain", qos=1, packet_id=1))
    packet_id, reason, _ = decode_ack(raw.expect(PUBACK))
    check_eq(packet_id, 1, "PUBACK packet id")
    check(reason in (0x00, 0x10), f"PUBACK of a plain QoS 1 PUBLISH: reason {reason:#04x}")
    raw.send(publish_v5("cl/t", b"retained", qos=0, retain=True))
    raw.expect_disconnect(0x9A)
    raw.close()

    raw = raw_v5(port, "cl-qos2")
    raw.send(publish_v5("cl/t", b"exactly once", qos=2, packet_id=1))
    raw.expect_disconnect(0x9B)
    raw.close()


def assigned_client_id(port):
    """An empty client id gets one assigned, named in CONNACK."""
    assigned = []
    for _ in range(2):
        client = v5_client(port, "")
        got = prop(client.connack, "AssignedClientIdentifier")
        check(isinstance(got, str) and got != "",
              f"Assigned Client Identifier: a non-empty string expected, got {got!r}")
        assigned.append(got)
        client.disconnect()
    check(assigned[0] != assigned[1], f"two connections got the same id {assigned[0]!r}")


def server_keep_alive(port):
    """A broker with max_keepalive 20 holds a client asking 60 to 20."""
    client = Paho(port, "ska-client")
    _, p = client.connect(keep_alive=60)
    check_eq(prop(p, "ServerKeepAlive"), 20, "Server Keep Alive for keepalive 60")
    client.disconnect()
    client = Paho(port, "ska-short")
    _, p = client.connect(keep_alive=10)
    check(prop(p, "ServerKeepAlive") in (None, 10),
          f"Server Keep Alive for keepalive 10: absent or 10, got {prop(p, 'ServerKeepAlive')}")
    client.disconnect()


def user_properties_and_request_response(port):
    """A PUBLISH's properties reach the subscriber unchanged; a request/response
    round trip through Response Topic and Correlation Data."""
    sub = v5_client(port, "up-sub")
    sub.subscribe_ok("up/t", qos=1)
    pub = v5_client(port, "up-pub")
    user = [("a", "1"), ("b", "2"), ("a", "3")]
    correlation = b"\x00\x01corr\xff"
    payload = '{"temp": 21.5, "unit": "\u00b0C"}'.encode()
    reason = pub.publish("up/t", payload, qos=1, properties=publish_props(
        UserProperty=user, ContentType="application/json", ResponseTopic="up/reply",
        CorrelationData=correlation, PayloadFormatIndicator=1))
    check_eq(reason, 0x00, "PUBACK reason (there is a subscriber)")
    message = sub.expect_message()
    check_eq(message.topic, "up/t", "topic")
    check_eq(message.payload, payload, "payload")
    check_eq(message.qos, 1, "QoS")
    p = message.properties
    check_eq(prop(p, "UserProperty"), user, "User Properties, in order")
    check_eq(prop(p, "ContentType"), "application/json", "Content Type")
    check_eq(prop(p, "ResponseTopic"), "up/reply", "Response Topic")
    check_eq(prop(p, "CorrelationData"), correlation, "Correlation Data")
    check_eq(prop(p, "PayloadFormatIndicator"), 1, "Payload Format Indicator")

    # Request/response (MQTT 5 section 4.10).
    responder = v5_client(port, "rr-responder")
    responder.subscribe_ok("req", qos=1)
    requester = v5_client(port, "rr-requester")
    requester.subscribe_ok("rr/resp/requester", qos=1)
    requester.publish_ok("req", b"ping", qos=1, properties=publish_props(
        ResponseTopic="rr/resp/requester", CorrelationData=b"request-42"))
    request = responder.expect_message(what="the request")
    check_eq(request.payload, b"ping", "request payload")
    response_topic = prop(request.properties, "ResponseTopic")
    check_eq(response_topic, "rr/resp/requester", "request's Response Topic")
    responder.publish_ok(response_topic, b"pong", qos=1, properties=publish_props(
        CorrelationData=prop(request.properties, "CorrelationData")))
    response = requester.expect_message(what="the response")
    check_eq(response.topic, "rr/resp/requester", "response topic")
    check_eq(response.payload, b"pong", "response payload")
    check_eq(prop(response.properties, "CorrelationData"), b"request-42",
             "response's Correlation Data")
    for client in (sub, pub, responder, requester):
        client.disconnect()


def message_expiry(port):
    """Message Expiry Interval: counted down when delivered, and a retained
    message is gone once it expired."""
    pub = v5_client(port, "me-pub")
    pub.publish_ok("me/t", b"short-lived", qos=1, retain=True,
                   properties=publish_props(MessageExpiryInterval=2))
    published = time.monotonic()
    early = v5_client(port, "me-early")
    early.subscribe_ok("me/t", qos=1)
    message = early.expect_message(what="the retained message")
    check_eq(message.payload, b"short-lived", "retained payload")
    check(message.retain, "retained message delivered with retain = 1")
    interval = prop(message.properties, "MessageExpiryInterval")
    check(interval is not None and 0 < interval <= 2,
          f"Message Expiry Interval of the retained message: 1 or 2 expected, got {interval}")

    live = v5_client(port, "me-live")
    live.subscribe_ok("me/live", qos=1)
    pub.publish_ok("me/live", b"long-lived", qos=1,
                   properties=publish_props(MessageExpiryInterval=60))
    message = live.expect_message()
    check_eq(message.payload, b"long-lived", "payload")
    interval = prop(message.properties, "MessageExpiryInterval")
    check(interval is not None and 1 <= interval <= 60,
          f"Message Expiry Interval of a live message: 1..60 expected, got {interval}")

    time.sleep(max(0.0, published + 3.0 - time.monotonic()))
    late = v5_client(port, "me-late")
    late.subscribe_ok("me/t", qos=1)
    late.expect_no_message(what="no retained message 3 s after it expired")
    for client in (pub, early, live, late):
        client.disconnect()


def no_local_and_retain_as_published(port):
    """No Local keeps a client's own messages from it; Retain As Published keeps
    the retain flag of live messages."""
    local = v5_client(port, "nl-self")
    local.subscribe_ok("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
    other = v5_client(port, "nl-other")
    other.subscribe_ok("nl/t", qos=1)
    local.publish_ok("nl/t", b"from self", qos=1)
    message = other.expect_message(what="the message of nl-self")
    check_eq(message.payload, b"from self", "payload at the other subscriber")
    local.expect_no_message(what="not its own message (No Local)")
    other.publish_ok("nl/t", b"from other", qos=1)
    message = local.expect_message(what="the other client's message")
    check_eq(message.payload, b"from other", "payload at the No Local subscriber")
    other.expect_message(what="its own message (no No Local)")

    keep = v5_client(port, "rap-keep")
    keep.subscribe_ok("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = v5_client(port, "rap-plain")
    plain.subscribe_ok("rap/t", qos=1)
    pub = v5_client(port, "rap-pub")
    pub.publish_ok("rap/t", b"live and retained", qos=1, retain=True)
    message = keep.expect_message()
    check_eq(message.payload, b"live and retained", "payload (Retain As Published)")
    check_eq(bool(message.retain), True, "retain flag with Retain As Published")
    message = plain.expect_message()
    check_eq(message.payload, b"live and retained", "payload (no Retain As Published)")
    check_eq(bool(message.retain), False, "retain flag without Retain As Published")
    for client in (local, other, keep, plain, pub):
        client.disconnect()


def retain_handling(port):
    """Retain Handling 0 always sends retained messages, 1 only for a new
    subscription, 2 never."""
    pub = v5_client(port, "rh-pub")
    pub.publish_ok("rh/t", b"kept", qos=1, retain=True)
    sub = v5_client(port, "rh-sub")

    sub.subscribe_ok("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
    message = sub.expect_message(what="the retained message (Retain Handling 0)")
    check_eq((message.topic, message.payload, bool(message.retain)), ("rh/t", b"kept", True),
             "retained message")

    sub.subscribe_ok("rh/t", options=SubscribeOptions(qos=1, retainHandling=1))
    sub.expect_no_message(what="nothing for an existing subscription (Retain Handling 1)")

    sub.subscribe_ok("rh/+", options=SubscribeOptions(qos=1, retainHandling=1))
    message = sub.expect_message(what="the retained message (Retain Handling 1, new filter)")
    check_eq((message.topic, message.payload, bool(message.retain)), ("rh/t", b"kept", True),
             "retained message")

    sub.subscribe_ok("rh/#", options=SubscribeOptions(qos=1, retainHandling=2))
    sub.expect_no_message(what="nothing (Retain Handling 2)")

    sub.subscribe_ok("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
    message = sub.expect_message(what="the retained message again (Retain Handling 0)")
    check_eq(message.payload, b"kept", "retained payload")
    sub.expect_no_message(what="one copy only")
    pub.disconnect()
    sub.disconnect()


def subscription_identifiers(port):
    """A message matching two subscriptions arrives once, with both
    Subscription Identifiers."""
    sub = v5_client(port, "si-sub")
    sub.subscribe_ok("si/#", qos=1, properties=sub_id(5))
    sub.subscribe_ok("si/a", qos=1, properties=sub_id(9))
    pub = v5_client(port, "si-pub")
    pub.publish_ok("si/a", b"both", qos=1)
    message = sub.expect_message()
    check_eq(message.payload, b"both", "payload")
    ids = prop(message.properties, "SubscriptionIdentifier")
    check(ids is not None, "Subscription Identifiers present")
    check_eq(sorted(ids), [5, 9], "Subscription Identifiers of si/a")
    sub.expect_no_message(what="a single copy")

    pub.publish_ok("si/b", b"one", qos=1)
    message = sub.expect_message()
    check_eq(message.payload, b"one", "payload")
    check_eq(prop(message.properties, "SubscriptionIdentifier"), [5],
             "Subscription Identifiers of si/b")
    pub.disconnect()
    sub.disconnect()


def topic_alias_inbound(port):
    """A client sets topic alias 1, then publishes by the alias alone; an alias
    above the announced maximum is a DISCONNECT 0x94."""
    sub = v5_client(port, "ta-sub")
    sub.subscribe_ok("ta/#", qos=1)
    pub = v5_client(port, "ta-pub")
    check_eq(prop(pub.connack, "TopicAliasMaximum"), 10, "Topic Alias Maximum")
    pub.publish_ok("ta/x", b"set alias", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish_ok("", b"by alias", qos=1, properties=publish_props(TopicAlias=1))
    pub.publish_ok("ta/y", b"alias 10", qos=1, properties=publish_props(TopicAlias=10))
    pub.publish_ok("", b"by alias 10", qos=1, properties=publish_props(TopicAlias=10))
    got = [(m.topic, m.payload) for m in (sub.expect_message() for _ in range(4))]
    check_eq(got, [("ta/x", b"set alias"), ("ta/x", b"by alias"), ("ta/y", b"alias 10"),
                   ("ta/y", b"by alias 10")], "messages at the subscriber")
    pub.disconnect()

    raw = raw_v5(port, "ta-over")
    raw.send(publish_v5("ta/z", b"alias 11", qos=1, packet_id=1,
                        properties=props((TOPIC_ALIAS, 11))))
    raw.expect_disconnect(0x94)
    raw.close()
    sub.expect_no_message(what="nothing from the refused PUBLISH")
    sub.disconnect()


def topic_alias_outbound(port):
    """A subscriber announcing Topic Alias Maximum 5 gets topics by alias once
    set; every message still resolves to its topic."""
    aliased = raw_v5(port, "tao-aliased", properties=props((TOPIC_ALIAS_MAXIMUM, 5)))
    aliased.send(subscribe_v5(1, [("tao/#", 1)]))
    check_eq(decode_suback(aliased.expect(SUBACK))[2], [1], "SUBACK")
    plain = raw_v5(port, "tao-plain")
    plain.send(subscribe_v5(1, [("tao/#", 1)]))
    check_eq(decode_suback(plain.expect(SUBACK))[2], [1], "SUBACK")

    pub = v5_client(port, "tao-pub")
    sent = [("tao/t", b"m1"), ("tao/t", b"m2"), ("tao/t", b"m3"), ("tao/u", b"m4"),
            ("tao/t", b"m5")]
    for topic, payload in sent:
        pub.publish_ok(topic, payload, qos=1)

    aliases = {}
    received = []
    for n in range(len(sent)):
        message = aliased.expect_publish()
        say(f"tao-aliased: {message}")
        aliased.send(ack_v5(PUBACK, message.packet_id))
        alias = one(message.properties, TOPIC_ALIAS)
        if alias is not None:
            check(1 <= alias <= 5, f"alias {alias} outside 1..5 announced")
            if message.topic:
                aliases[alias] = message.topic
            else:
                check(alias in aliases, f"alias {alias} used before it was set")
        else:
            check(message.topic != "", "an empty topic without a Topic Alias")
        topic = message.topic or aliases[alias]
        received.append((topic, message.payload))
        if n == 0:
            check(message.topic == "tao/t" and alias is not None,
                  f"the first PUBLISH sets an alias with its topic: {message}")
        if n == 1:
            check_eq((message.topic, alias), ("", 1),
                     "the second PUBLISH on tao/t: (empty topic, alias 1)")
    check_eq(received, sent, "messages at the aliasing subscriber, aliases resolved")

    for topic, payload in sent:
        message = plain.expect_publish()
        plain.send(ack_v5(PUBACK, message.packet_id))
        check_eq((message.topic, message.payload), (topic, payload),
                 "message at the subscriber without aliases")
        check(TOPIC_ALIAS not in message.properties,
              f"a Topic Alias sent to a client that announced none: {message}")
    aliased.send(disconnect_v5())
    plain.send(disconnect_v5())
    pub.disconnect()


def reason_codes(port):
    """PUBACK 0x10 and 0x99, SUBACK 0x8F and 0x9E, UNSUBACK 0x11."""
    client = v5_client(port, "rc-client")
    check_eq(client.publish("rc/nobody", b"anyone?", qos=1), 0x10,
             "PUBACK reason with no matching subscribers")
    check_eq(client.subscribe("$share/g/t", qos=1), 0x9E, "SUBACK reason for $share/g/t")
    check_eq(client.unsubscribe("rc/never"), 0x11, "UNSUBACK reason for a filter never subscribed")
    client.subscribe_ok("rc/mine", qos=1)
    check_eq(client.unsubscribe("rc/mine"), 0x00, "UNSUBACK reason for a subscribed filter")
    client.disconnect()

    raw = raw_v5(port, "rc-raw")
    # paho refuses to send a/#/b: one SUBSCRIBE with an invalid filter, a
    # shared one and a valid one gets a code for each, in order.
    raw.send(subscribe_v5(3, [("a/#/b", 1), ("$share/g/t", 1), ("rc/ok", 1)]))
    packet_id, _, codes = decode_suback(raw.expect(SUBACK))
    say(f"rc-raw: SUBACK id={packet_id} codes={[hex(c) for c in codes]}")
    check_eq(packet_id, 3, "SUBACK packet id")
    check_eq(codes, [0x8F, 0x9E, 0x01], "SUBACK reasons for a/#/b, $share/g/t, rc/ok")
    raw.send(publish_v5("rc/t", b"\xc3\x28 not utf-8", qos=1, packet_id=7,
                        properties=props((PAYLOAD_FORMAT, 1))))
    packet_id, reason, found = decode_ack(raw.expect(PUBACK))
    say(f"rc-raw: PUBACK id={packet_id} reason={reason:#04x} {found}")
    check_eq(packet_id, 7, "PUBACK packet id")
    check_eq(reason, 0x99, "PUBACK reason for a payload that is not UTF-8 (indicator 1)")
    raw.ping()
    raw.send(publish_v5("rc/t", "valid UTF-8 \u00e9".encode(), qos=1, packet_id=8,
                        properties=props((PAYLOAD_FORMAT, 1))))
    packet_id, reason, _ = decode_ack(raw.expect(PUBACK))
    check_eq((packet_id, reason), (8, 0x10), "PUBACK of a valid UTF-8 payload, no subscribers")
    raw.send(disconnect_v5())
    raw.close()


def session_expiry(port):
    """Session Expiry Interval: the session outlives its connection that long,
    and no longer; 0 ends it with the connection."""
    expiry = connect_props(SessionExpiryInterval=2)
    sub = v5_client(port, "se-sub", clean_start=True, properties=expiry)
    check(not sub.session_present, "session present = 0 on a clean start")
    sub.subscribe_ok("se/t", qos=1)
    sub.disconnect()
    pub = v5_client(port, "se-pub")
    check_eq(pub.publish("se/t", b"while away", qos=1), 0x00,
             "PUBACK reason (the offline session subscribes)")
    sub = v5_client(port, "se-sub", clean_start=False,
                    properties=connect_props(SessionExpiryInterval=2))
    check(sub.session_present, "session present = 1 when resumed within the interval")
    message = sub.expect_message(what="the message queued while away")
    check_eq((message.topic, message.payload), ("se/t", b"while away"), "queued message")
    sub.disconnect()
    left = time.monotonic()

    time.sleep(max(0.0, left + 4.0 - time.monotonic()))
    sub = v5_client(port, "se-sub", clean_start=False,
                    properties=connect_props(SessionExpiryInterval=2))
    check(not sub.session_present, "session present = 0 after the session expired")
    pub.publish_ok("se/t", b"after expiry", qos=1)
    sub.expect_no_message(what="nothing: the expired session's subscription is gone")
    sub.disconnect()

    zero = v5_client(port, "se-zero", clean_start=True)
    zero.subscribe_ok("se/z", qos=1)
    zero.disconnect()
    zero = v5_client(port, "se-zero", clean_start=False)
    check(not zero.session_present, "session present = 0 after Session Expiry 0")
    zero.disconnect()
    pub.disconnect()


def will_connect(client_id, topic, payload, will_delay, session_expiry, clean_start=True):
    will_props = props((WILL_DELAY, will_delay)) if will_delay else props()
    session = props((SESSION_EXPIRY, session_expiry)) if session_expiry else props()
    return connect_v5(client_id, clean_start, properties=session,
                      will=(topic, payload, 1, False, will_props))


def will_delay(port):
    """Will Delay Interval: the will waits that long; a reconnect within it
    cancels it; DISCONNECT 0x04 publishes it."""
    watcher = v5_client(port, "wd-watcher")
    watcher.subscribe_ok("wd/#", qos=1)

    # 1. Killed: the will comes after the delay, not before.
    raw = Raw(port, "wd-one")
    _, reason, _ = raw.connect(will_connect("wd-one", "wd/one", b"one is gone", 2, 10))
    check_eq(reason, 0, "CONNACK reason")
    raw.close()
    killed = time.monotonic()
    watcher.expect_no_message(duration=1.0, what="no will within 1 s (Will Delay 2)")
    message = watcher.expect_message(timeout=max(0.1, killed + 4.5 - time.monotonic()),
                                     what="the will within 4.5 s of the kill")
    say(f"wd-one: will arrived {time.monotonic() - killed:.2f} s after the kill")
    check_eq((message.topic, message.payload), ("wd/one", b"one is gone"), "will")

    # 2. Killed, then back within the delay: no will.
    raw = Raw(port, "wd-two")
    _, reason, _ = raw.connect(will_connect("wd-two", "wd/two", b"two is gone", 2, 10))
    check_eq(reason, 0, "CONNACK reason")
    raw.close()
    time.sleep(0.3)
    back = Raw(port, "wd-two-back")
    session_present, reason, _ = back.connect(
        connect_v5("wd-two", clean_start=False, properties=props((SESSION_EXPIRY, 10))))
    check_eq(reason, 0, "CONNACK reason of the reconnect")
    check(session_present, "session present = 1 (Session Expiry 10)")
    watcher.expect_no_message(duration=4.0, what="no will: the client came back within 2 s")
    back.send(disconnect_v5())
    back.close()

    # 3. DISCONNECT 0x04: the will is published.
    raw = Raw(port, "wd-three")
    _, reason, _ = raw.connect(will_connect("wd-three", "wd/three", b"three said so", 0, 0))
    check_eq(reason, 0, "CONNACK reason")
    raw.send(disconnect_v5(0x04))
    raw.expect_closed()
    message = watcher.expect_message(what="the will after DISCONNECT 0x04")
    check_eq((message.topic, message.payload), ("wd/three", b"three said so"), "will")
    watcher.expect_no_message(what="nothing more")
    watcher.disconnect()


def receive_maximum_exceeded(port):
    """With receive_maximum 2, a third QoS 2 PUBLISH awaiting PUBREL is a
    DISCONNECT 0x93."""
    raw = raw_v5(port, "rm-client")
    check_eq(one(raw.connack, RECEIVE_MAXIMUM), 2, "Receive Maximum in CONNACK")
    raw.send(b"".join(publish_v5("rm/t", b"m%d" % i, qos=2, packet_id=i) for i in (1, 2, 3)))
    recs = []
    while True:
        try:
            pkt = raw.read(WAIT)
        except Closed:
            raise Failure(f"connection closed without DISCONNECT 0x93 (PUBRECs {recs})") from None
        check(pkt is not None, f"no DISCONNECT within {WAIT} s (PUBRECs {recs})")
        if pkt.kind == PUBREC:
            packet_id, reason, _ = decode_ack(pkt)
            say(f"rm-client: PUBREC id={packet_id} reason={reason:#04x}")
            recs.append(packet_id)
            check(packet_id in (1, 2), f"PUBREC for packet {packet_id}: only 1 and 2 are within "
                  "the Receive Maximum")
            continue
        check_eq(pkt.kind, DISCONNECT, f"packet kind of {pkt!r}")
        reason, found = decode_disconnect(pkt)
        say(f"rm-client: DISCONNECT reason {reason:#04x} {found}")
        check_eq(reason, 0x93, "DISCONNECT reason code")
        break
    raw.expect_closed(after="DISCONNECT 0x93")
    raw.close()


def takeover_reason(port):
    """A second connection with the same client id: the first gets DISCONNECT
    0x8E."""
    first = raw_v5(port, "to-client")
    second = raw_v5(port, "to-client")
    first.expect_disconnect(0x8E)
    first.close()
    second.ping()
    second.send(disconnect_v5())
    second.close()


def interop_v311_v5(port):
    """MQTT 3.1.1 and MQTT 5 clients exchange messages and share a session."""
    # v5 to 3.1.1: the properties stay behind, the message goes through.
    old = Raw(port, "io-sub311")
    session_present, reason, _ = old.connect(connect_v311("io-sub311"), v5=False)
    check_eq((session_present, reason), (False, 0), "3.1.1 CONNACK")
    old.send(subscribe_v311(1, [("io/t", 1)]))
    suback = old.expect(SUBACK)
    check_eq(bytes(suback.body), b"\x00\x01\x01", "3.1.1 SUBACK")
    new = v5_client(port, "io-pub5")
    payload = b"hello 3.1.1"
    new.publish_ok("io/t", payload, qos=1, properties=publish_props(
        UserProperty=[("k", "v")], ContentType="text/plain", PayloadFormatIndicator=1,
        MessageExpiryInterval=60, ResponseTopic="io/reply", CorrelationData=b"c"))
    pkt = old.expect(PUBLISH)
    say(f"io-sub311: {pkt!r}")
    check_eq(len(pkt.body), 2 + len("io/t") + 2 + len(payload),
             "3.1.1 PUBLISH length: topic, packet id and payload only")
    message = decode_publish(pkt, v5=False)
    check_eq((message.topic, message.payload, message.qos), ("io/t", payload, 1),
             "message at the 3.1.1 subscriber")
    old.send(packet(0x40, u16(message.packet_id)))

    # 3.1.1 to v5.
    sub5 = v5_client(port, "io-sub5")
    sub5.subscribe_ok("io/five", qos=1)
    pub311 = Paho(port, "io-pub311", protocol=mqtt.MQTTv311)
    pub311.connect()
    pub311.publish_ok("io/five", b"from 3.1.1", qos=1)
    message = sub5.expect_message()
    check_eq((message.topic, message.payload), ("io/five", b"from 3.1.1"),
             "message at the v5 subscriber")
    check(prop(message.properties, "UserProperty") is None, "no User Properties invented")

    # A 3.1.1 persistent session resumed by MQTT 5, then by 3.1.1 again.
    sess = Paho(port, "io-sess", protocol=mqtt.MQTTv311, clean_session=False)
    sess.connect()
    sess.subscribe_ok("io/q", qos=1)
    sess.disconnect()
    pub311.publish_ok("io/q", b"queued for 3.1.1", qos=1)
    sess = v5_client(port, "io-sess", clean_start=False,
                     properties=connect_props(SessionExpiryInterval=60))
    check(sess.session_present, "session present = 1: the 3.1.1 session resumed by MQTT 5")
    message = sess.expect_message(what="the message queued for the 3.1.1 session")
    check_eq((message.topic, message.payload), ("io/q", b"queued for 3.1.1"), "queued message")
    sess.disconnect()
    pub311.publish_ok("io/q", b"queued for v5", qos=1)
    sess = Paho(port, "io-sess", protocol=mqtt.MQTTv311, clean_session=False)
    session_present, _ = sess.connect()
    check(session_present, "session present = 1: back as 3.1.1")
    message = sess.expect_message(what="the message queued for the v5 session")
    if message.payload == b"queued for 3.1.1":
        # paho sends PUBACK after its callback returns, so the DISCONNECT
        # above may have gone first: the message was not acknowledged and
        # comes again, flagged as a resend [MQTT-3.3.1-1].
        check(message.dup, f"an unacknowledged message comes again with DUP: {message!r}")
        message = sess.expect_message(what="the message queued for the v5 session")
    check_eq((message.topic, message.payload), ("io/q", b"queued for v5"), "queued message")
    sess.disconnect()
    for client in (sub5, pub311, new):
        client.disconnect()
    old.send(packet(0xE0, b""))
    old.close()



# ---------------------------------------------------------------------------
# Enhanced authentication: SCRAM-SHA-256 (RFC 5802, RFC 7677), the client
# side written here from the RFCs with hashlib and hmac.
# ---------------------------------------------------------------------------

AUTH = 15
AUTH_METHOD, AUTH_DATA = 0x15, 0x16
SCRAM = "SCRAM-SHA-256"


def scram_proof(password, salt, iterations, auth_message):
    """(ClientProof, ServerSignature) of RFC 5802 section 3."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    server_signature = hmac.new(server_key, auth_message.encode(), hashlib.sha256).digest()
    return proof, server_signature


def scram_connect(port, client_id, user, password):
    """Runs the exchange; returns (the CONNACK's reason, its properties, raw)."""
    raw = Raw(port, client_id)
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    raw.send(connect_v5(client_id, properties=props(
        (AUTH_METHOD, SCRAM), (AUTH_DATA, ("n,," + first_bare).encode()))))
    pkt = raw.read()
    check(pkt is not None, "an answer to CONNECT")
    if pkt.kind == CONNACK:
        return pkt.body[1], parse_props(pkt.body, 2)[0], raw
    check_eq(pkt.kind, AUTH, "the server's challenge")
    check_eq(pkt.body[0], 0x18, "AUTH reason: Continue authentication")
    found = parse_props(pkt.body, 1)[0]
    check_eq(one(found, AUTH_METHOD), SCRAM, "the method named in AUTH")
    server_first = one(found, AUTH_DATA).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    check(attrs["r"].startswith(nonce), f"the server nonce extends ours: {server_first}")
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}"
    proof, server_signature = scram_proof(
        password, base64.b64decode(attrs["s"]), int(attrs["i"]), auth_message)
    final = f"{final_bare},p={base64.b64encode(proof).decode()}"
    raw.send(packet(0xF0, bytes([0x18]) + props((AUTH_METHOD, SCRAM), (AUTH_DATA, final.encode()))))
    pkt = raw.expect(CONNACK)
    reason, found = pkt.body[1], parse_props(pkt.body, 2)[0]
    if reason == 0:
        check_eq(one(found, AUTH_METHOD), SCRAM, "CONNACK names the method")
        check_eq(one(found, AUTH_DATA).decode(),
                 "v=" + base64.b64encode(server_signature).decode(),
                 "the server proves it knows the password too")
    return reason, found, raw


def scram_auth(port):
    reason, _, raw = scram_connect(port, "scram-ok", "alice", "wonderland")
    check_eq(reason, 0, "CONNACK for the right password")
    raw.ping()
    # Re-authentication on the same connection: AUTH 0x19, then 0x18 / 0x00.
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=alice,r={nonce}"
    raw.send(packet(0xF0, bytes([0x19]) + props(
        (AUTH_METHOD, SCRAM), (AUTH_DATA, ("n,," + first_bare).encode()))))
    pkt = raw.expect(AUTH)
    check_eq(pkt.body[0], 0x18, "re-authentication continues")
    server_first = one(parse_props(pkt.body, 1)[0], AUTH_DATA).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    final_bare = f"c=biws,r={attrs['r']}"
    proof, _ = scram_proof("wonderland", base64.b64decode(attrs["s"]), int(attrs["i"]),
                           f"{first_bare},{server_first},{final_bare}")
    raw.send(packet(0xF0, bytes([0x18]) + props(
        (AUTH_METHOD, SCRAM),
        (AUTH_DATA, f"{final_bare},p={base64.b64encode(proof).decode()}".encode()))))
    pkt = raw.expect(AUTH)
    check_eq(pkt.body[0], 0x00, "re-authenticated")
    raw.ping()
    raw.close()

    reason, _, raw = scram_connect(port, "scram-bad", "alice", "looking-glass")
    check_eq(reason, 0x87, "CONNACK for a wrong password: Not authorized")
    raw.expect_closed()
    reason, _, raw = scram_connect(port, "scram-who", "mallory", "anything")
    check_eq(reason, 0x87, "an unknown user is refused like a wrong password")
    raw.expect_closed()
    # A method the server does not offer.
    raw = Raw(port, "other-method")
    session_present, reason, _ = raw.connect(
        connect_v5("other-method", properties=props((AUTH_METHOD, "KERBEROS"))))
    check_eq(reason, 0x8C, "CONNACK for an unknown method: Bad authentication method")


# ---------------------------------------------------------------------------
# Across the nodes of a cluster, and the 3.1.1 session bound.
# ---------------------------------------------------------------------------


def cross_node_properties(port1, port2):
    """Properties survive every path between nodes: a live QoS 0 and QoS 1
    forward, a retained message read on another node, and a will published
    by the other node."""
    user = [("z", "1"), ("a", "2"), ("z", "3")]
    sub = v5_client(port2, "xn-sub")
    sub.subscribe_ok("xn/#", qos=1)
    pub = v5_client(port1, "xn-pub")
    for qos in (0, 1):
        pub.publish("xn/live", f"q{qos}".encode(), qos=qos, properties=publish_props(
            UserProperty=user, ContentType="text/plain", ResponseTopic="xn/reply",
            CorrelationData=b"c-%d" % qos, PayloadFormatIndicator=1))
        message = sub.expect_message(what=f"the QoS {qos} message from the other node")
        p = message.properties
        check_eq(prop(p, "UserProperty"), user, f"QoS {qos}: User Properties, in order")
        check_eq(prop(p, "ContentType"), "text/plain", f"QoS {qos}: Content Type")
        check_eq(prop(p, "ResponseTopic"), "xn/reply", f"QoS {qos}: Response Topic")
        check_eq(prop(p, "CorrelationData"), b"c-%d" % qos, f"QoS {qos}: Correlation Data")
        check_eq(prop(p, "PayloadFormatIndicator"), 1, f"QoS {qos}: Payload Format")
    pub.publish_ok("xn-retained/t", b"kept", qos=1, retain=True, properties=publish_props(
        UserProperty=[("kept", "yes")], ContentType="text/plain"))
    late = v5_client(port2, "xn-late")
    late.subscribe_ok("xn-retained/#", qos=1)
    message = late.expect_message(what="the retained message, on the other node")
    check(message.retain, "sent with retain = 1")
    check_eq(prop(message.properties, "UserProperty"), [("kept", "yes")],
             "retained: User Properties")
    check_eq(prop(message.properties, "ContentType"), "text/plain", "retained: Content Type")
    # A will with properties, published when its connection on node 1 dies.
    will_props = props((USER_PROPERTY, ("why", "gone")), (CONTENT_TYPE, "text/plain"))
    doomed = raw_v5(port1, "xn-doomed", will=("xn/will", b"bye", 1, False, will_props))
    doomed.sock.shutdown(socket.SHUT_RDWR)
    doomed.close()
    message = sub.expect_message(what="the will, on the other node")
    check_eq((message.topic, message.payload), ("xn/will", b"bye"), "the will")
    check_eq(prop(message.properties, "UserProperty"), [("why", "gone")], "will: User Property")
    check_eq(prop(message.properties, "ContentType"), "text/plain", "will: Content Type")
    for client in (sub, pub, late):
        client.disconnect()


def persistent_session_expiry_v311(port):
    """With persistent_session_expiry = 2, a 3.1.1 persistent session is kept
    for 2 s after its connection ends, then removed."""
    first = Paho(port, "pse-311", protocol=mqtt.MQTTv311, clean_session=False)
    first.connect()
    first.subscribe_ok("pse/t", qos=1)
    first.disconnect()
    again = Paho(port, "pse-311", protocol=mqtt.MQTTv311, clean_session=False)
    session_present, _ = again.connect()
    check(session_present, "resumed within the expiry: session present = 1")
    again.disconnect()
    time.sleep(3.5)
    last = Paho(port, "pse-311", protocol=mqtt.MQTTv311, clean_session=False)
    session_present, _ = last.connect()
    check(not session_present, "3.5 s after an expiry of 2 s: session present = 0")
    last.disconnect()


def retained_limits(port):
    """With max_retained_messages = 2 and max_retained_bytes = 40: a retained
    PUBLISH that would store one more message, or pass the bytes, gets 0x97 in
    PUBACK and PUBREC (MQTT 5), is neither kept nor delivered; a 3.1.1 one is
    acknowledged and dropped; replacing and clearing are always accepted."""
    watcher = v5_client(port, "rl-watch")
    watcher.subscribe_ok("rl/#", qos=1)
    pub = v5_client(port, "rl-pub")
    check_eq(pub.publish("rl/1", b"one", qos=1, retain=True), 0x00, "first retained")
    check_eq(pub.publish("rl/2", b"two", qos=1, retain=True), 0x00, "second retained")
    watcher.expect_message(what="rl/1")
    watcher.expect_message(what="rl/2")
    check_eq(pub.publish("rl/3", b"three", qos=1, retain=True), 0x97,
             "PUBACK of a third retained message")
    raw = raw_v5(port, "rl-raw")
    raw.send(publish_v5("rl/3", b"three", qos=2, retain=True, packet_id=5))
    packet_id, reason, _ = decode_ack(raw.expect(PUBREC))
    check_eq((packet_id, reason), (5, 0x97), "PUBREC of a third retained message")
    raw.send(disconnect_v5())
    raw.close()
    watcher.expect_no_message(what="the refused retained messages")
    # 3.1.1: acknowledged, not kept.
    old = Paho(port, "rl-311", protocol=mqtt.MQTTv311)
    old.connect()
    check_eq(old.publish("rl/4", b"four", qos=1, retain=True), 0x00, "3.1.1 PUBACK")
    old.disconnect()
    watcher.expect_no_message(what="the refused 3.1.1 retained message")
    # Replacing one within the bytes is fine; growing past 40 bytes is not.
    check_eq(pub.publish("rl/1", b"uno", qos=1, retain=True), 0x00, "replacing rl/1")
    watcher.expect_message(what="the replaced rl/1")
    check_eq(pub.publish("rl/1", b"x" * 40, qos=1, retain=True), 0x97,
             "replacing rl/1 with more than the bytes allow")
    # Clearing makes room.
    check_eq(pub.publish("rl/2", b"", qos=1, retain=True), 0x00, "clearing rl/2")
    watcher.expect_message(what="the clearing of rl/2")
    check_eq(pub.publish("rl/3", b"three", qos=1, retain=True), 0x00, "rl/3 once there is room")
    watcher.expect_message(what="rl/3")
    late = v5_client(port, "rl-late")
    late.subscribe_ok("rl/#", qos=1)
    got = sorted((m.topic, m.payload) for m in
                 (late.expect_message(what="a retained message"),
                  late.expect_message(what="a retained message")))
    check_eq(got, [("rl/1", b"uno"), ("rl/3", b"three")], "the retained messages kept")
    late.expect_no_message(what="more retained messages")
    for client in (watcher, pub, late):
        client.disconnect()


def admin_kick(port, http_port):
    """DELETE /api/v1/clients/ID disconnects the client with DISCONNECT 0x98
    (Administrative action), as a lost connection: its will is published."""
    import urllib.request  # pylint: disable=import-outside-toplevel
    watcher = v5_client(port, "ak-watch")
    watcher.subscribe_ok("ak/will", qos=1)
    raw = raw_v5(port, "ak-raw", will=("ak/will", b"kicked", 1, False, props()))
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/v1/clients/ak-raw", method="DELETE")
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        check_eq(answer.status, 204, "DELETE /api/v1/clients/ak-raw")
    raw.expect_disconnect(0x98)
    message = watcher.expect_message(what="the will of the kicked client")
    check_eq((message.topic, message.payload), ("ak/will", b"kicked"), "the will")
    watcher.disconnect()


def metrics_move(port, http_port):
    """/metrics, read with the Prometheus project's own text parser, has the
    cluster-wide gauges from the first scrape, and they move as clients act."""
    import urllib.request  # pylint: disable=import-outside-toplevel
    from prometheus_client.parser import (  # pylint: disable=import-outside-toplevel
        text_string_to_metric_families)

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics",
                                    timeout=WAIT) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = sample.value
        return samples

    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    def wait_for(name, want, what, **labels):
        deadline = time.monotonic() + 5
        while True:
            got = value(scrape(), name, **labels)
            if got == want:
                return
            if time.monotonic() > deadline:
                check_eq(got, want, what)
            time.sleep(0.2)

    first = scrape()
    for name, labels in [("starling_sessions", {"state": "online"}),
                         ("starling_sessions", {"state": "offline"}),
                         ("starling_subscriptions", {"kind": "direct"}),
                         ("starling_subscriptions", {"kind": "shared"}),
                         ("starling_retained_messages", {}),
                         ("starling_retained_bytes", {}),
                         ("starling_queued_messages", {}),
                         ("starling_messages_dropped_total", {"reason": "queue_full"}),
                         ("starling_messages_dropped_total", {"reason": "retained_full"}),
                         ("starling_client_disconnects_total", {"reason": "slow_subscriber"}),
                         ("starling_auth_failures_total", {"reason": "wrong_password"}),
                         ("starling_protocol_errors_total", {"reason": "malformed"}),
                         ("starling_connections_refused_total", {"reason": "max_connections"})]:
        check_eq(value(first, name, **labels), 0.0, f"{name}{labels} at the first scrape")
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_threads", "process_start_time_seconds",
                 "starling_runtime_alive_tasks"):
        check((value(first, name) or 0) > 0, f"{name} under its standard name")
    check(value(first, "process_cpu_seconds_total") is not None, "process_cpu_seconds_total")
    for via in ("local", "forwarded", "replicated"):
        check_eq(value(first, "starling_delivery_latency_seconds_count", via=via), 0.0,
                 f"delivery latency via {via} at the first scrape")
    sub = Paho(port, "mm-sub", protocol=mqtt.MQTTv311, clean_session=False)
    sub.connect()
    sub.subscribe_ok("mm/#", qos=1)
    sub.subscribe_ok("$share/g/mm/#", qos=1)
    wait_for("starling_sessions", 1.0, "one session online", state="online")
    wait_for("starling_subscriptions", 1.0, "one direct subscription", kind="direct")
    wait_for("starling_subscriptions", 1.0, "one shared subscription", kind="shared")
    live = v5_client(port, "mm-live")
    live.subscribe_ok("mm/#", qos=0)
    pub = v5_client(port, "mm-pub")
    pub.publish_ok("mm/r", b"12345", qos=1, retain=True)
    wait_for("starling_retained_messages", 1.0, "one retained message")
    wait_for("starling_retained_bytes", 9.0, "its topic and payload bytes")
    samples = scrape()
    fsyncs = value(samples, "starling_raft_fsync_seconds_count")
    check(fsyncs is not None and fsyncs >= 1, f"fsyncs timed: {fsyncs}")
    check(value(samples, "starling_raft_fsync_seconds_bucket", le="+Inf") == fsyncs,
          "the +Inf bucket holds every fsync")
    batches = value(samples, "starling_raft_proposal_batch_commands_count")
    commands = value(samples, "starling_raft_proposal_batch_commands_sum")
    check(batches is not None and batches >= 1 and commands >= batches,
          f"proposal batches: {batches} carrying {commands} commands")
    check(value(samples, "starling_raft_proposal_batch_commands_bucket", le="+Inf") == batches,
          "the +Inf bucket holds every batch")
    received = value(scrape(), "starling_messages_received_total", qos="1")
    check(received is not None and received >= 1, f"QoS 1 messages received: {received}")
    # The retained QoS 1 message went through Raft, and was delivered from its
    # application; a QoS 0 one goes straight from the publisher's connection.
    check_eq(live.expect_message(what="mm/r").topic, "mm/r", "the live subscriber's message")
    pub.publish("mm/z", b"z", qos=0)
    check_eq(live.expect_message(what="mm/z").topic, "mm/z", "a QoS 0 message")
    samples = scrape()
    for via in ("local", "replicated"):
        timed = value(samples, "starling_delivery_latency_seconds_count", via=via)
        check(timed is not None and timed >= 1, f"deliveries via {via} timed: {timed}")
        check(value(samples, "starling_delivery_latency_seconds_bucket", via=via, le="+Inf")
              == timed, f"the +Inf bucket holds every delivery via {via}")
        check(value(samples, "starling_delivery_latency_seconds_sum", via=via) > 0,
              f"latency via {via} adds up to more than nothing")
    live.disconnect()
    sub.disconnect()
    wait_for("starling_sessions", 1.0, "the persistent session offline", state="offline")
    pub.publish_ok("mm/q", b"x", qos=1)
    # One copy for its subscription, one for its shared one's group.
    wait_for("starling_queued_messages", 2.0, "a message queued for it, twice")
    pub.disconnect()


def drain_v5(port, http_port):
    """A draining node tells its MQTT 5 clients DISCONNECT 0x8B (Server
    shutting down), with a reason string, before it stops."""
    import urllib.request  # pylint: disable=import-outside-toplevel
    raw = raw_v5(port, "dr-raw")
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/api/v1/nodes/1/drain", method="POST")
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        check_eq(answer.status, 200, "POST /api/v1/nodes/1/drain")
    reason, found = decode_disconnect(raw.expect(DISCONNECT))
    say(f"dr-raw: DISCONNECT {reason:#04x} {found}")
    check_eq(reason, 0x8B, "DISCONNECT reason of a draining node")
    check(REASON_STRING in found, "a reason string says why")
    raw.expect_closed(after="DISCONNECT 0x8B")

SCENARIOS = {
    f.__name__: f
    for f in (
        connack_properties,
        connack_limits,
        assigned_client_id,
        server_keep_alive,
        user_properties_and_request_response,
        message_expiry,
        no_local_and_retain_as_published,
        retain_handling,
        subscription_identifiers,
        topic_alias_inbound,
        topic_alias_outbound,
        reason_codes,
        session_expiry,
        will_delay,
        receive_maximum_exceeded,
        takeover_reason,
        interop_v311_v5,
        scram_auth,
        cross_node_properties,
        persistent_session_expiry_v311,
        retained_limits,
        admin_kick,
        metrics_move,
        drain_v5,
    )
}


def main(argv):
    if len(argv) < 3 or argv[1] not in SCENARIOS:
        print(f"usage: {argv[0]} <scenario> <port>...\nscenarios: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    name, ports = argv[1], [int(port) for port in argv[2:]]
    started = time.monotonic()
    try:
        SCENARIOS[name](*ports)
    except Failure as failure:
        print(f"FAIL {name}: {failure}", file=sys.stderr, flush=True)
        return 1
    except Exception:  # pylint: disable=broad-except
        print(f"ERROR {name}:", file=sys.stderr)
        traceback.print_exc()
        return 1
    say(f"PASS {name} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    EXIT = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Without waiting for the network threads a failed scenario left running.
    os._exit(EXIT)
