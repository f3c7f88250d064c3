#!/usr/bin/env python3
"""Times two cluster behaviours with an independent MQTT client (paho-mqtt 2.x).

  will    Connects a subscriber to `wills/#` on one node and COUNT clients with
          QoS 1 wills (`wills/N`) to another, SIGKILLs that node's process, and
          times each will from the kill to its arrival at the subscriber.
  resume  A persistent session subscribes at QoS 1 on one node and disconnects;
          a publisher sends it one QoS 1 message; the session reconnects to
          another node. Times from the start of that TCP connect to the message.

Prints one JSON line; exits 1 if the probe itself could not run (a connect or
subscribe that failed). Whether the figures meet a target is for the caller.
Times come from time.monotonic(); every wait has a deadline.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
STEP_TIMEOUT = 10.0  # seconds for one CONNACK, SUBACK, PUBACK or DISCONNECT


class ProbeError(Exception):
    pass


class Client:
    """A paho client on its own network thread, with events for what we wait on."""

    def __init__(self, client_id, clean_session, will=None):
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.session_present = None
        self.connect_rc = None
        self.on_message = None
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        # A probe that reconnects by itself would hide what we measure.
        self.mqtt.reconnect_delay_set(min_delay=60, max_delay=60)
        if will:
            self.mqtt.will_set(will[0], will[1], qos=1, retain=False)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.mqtt.on_disconnect = lambda c, u, flags, rc, p: self.disconnected.set()
        self.mqtt.on_message = lambda c, u, msg: self.on_message and self.on_message(msg)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_rc = reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def connect(self, port, what):
        self.mqtt.connect(HOST, port, keepalive=60)
        self.mqtt.loop_start()
        wait(self.connected, f"CONNACK for {what}")
        if self.connect_rc.is_failure:
            raise ProbeError(f"{what}: CONNACK {self.connect_rc}")

    def subscribe(self, topic, what):
        self.mqtt.subscribe(topic, qos=1)
        wait(self.subscribed, f"SUBACK for {what}")

    def disconnect(self):
        """A clean DISCONNECT: the broker discards any will."""
        self.mqtt.disconnect()
        wait(self.disconnected, "clean disconnect")
        self.mqtt.loop_stop()


def wait(event, what, timeout=STEP_TIMEOUT):
    if not event.wait(timeout):
        raise ProbeError(f"no {what} within {timeout} s")


def probe_will(args):
    token = uuid.uuid4().hex[:8]
    arrivals = {}  # topic -> seconds after the kill; only the first copy
    copies = {}
    lock = threading.Lock()
    all_in = threading.Event()
    killed_at = None

    def on_message(msg):
        now = time.monotonic()
        if msg.payload.decode(errors="replace") != token:
            return
        with lock:
            copies[msg.topic] = copies.get(msg.topic, 0) + 1
            if killed_at is not None and msg.topic not in arrivals:
                arrivals[msg.topic] = now - killed_at
            if len(arrivals) >= args.count:
                all_in.set()

    sub = Client(f"will-sub-{token}", clean_session=True)
    sub.on_message = on_message
    sub.connect(args.sub_port, "the subscriber")
    sub.subscribe("wills/#", "wills/#")

    holders = []
    for i in range(args.count):
        c = Client(f"will-{token}-{i}", clean_session=True, will=(f"wills/{i}", token))
        c.connect(args.will_port, f"will client {i}")
        holders.append(c)
    # Stop their network threads (without a DISCONNECT, which would cancel the
    # wills) so that nothing reconnects once the node is gone.
    for c in holders:
        c.mqtt.loop_stop()

    with lock:
        killed_at = time.monotonic()
    os.kill(args.kill_pid, signal.SIGKILL)
    all_in.wait(args.timeout)
    # Anything that is still on its way (a duplicate) gets a moment to show up.
    time.sleep(0.5)

    with lock:
        latencies = sorted(arrivals.values())
        dup = sum(n - 1 for n in copies.values())
    sub.disconnect()
    return {
        "probe": "will",
        "expected": args.count,
        "received": len(latencies),
        "duplicates": dup,
        "latency_ms": [round(s * 1000, 1) for s in latencies],
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "timeout_s": args.timeout,
    }


def probe_resume(args):
    token = uuid.uuid4().hex[:8]
    runs = []
    for i in range(args.iterations):
        client_id = f"resume-{token}-{i}"
        topic = f"resume/{token}/{i}"

        session = Client(client_id, clean_session=False)
        session.connect(args.session_port, "the persistent session")
        session.subscribe(topic, topic)
        session.disconnect()

        pub = Client(f"resume-pub-{token}-{i}", clean_session=True)
        pub.connect(args.pub_port, "the publisher")
        info = pub.mqtt.publish(topic, b"queued while away", qos=1)
        info.wait_for_publish(timeout=STEP_TIMEOUT)
        if not info.is_published():
            raise ProbeError(f"no PUBACK within {STEP_TIMEOUT} s")
        pub.disconnect()

        arrived = threading.Event()
        got = {}

        def on_message(msg, topic=topic, got=got, arrived=arrived):
            if msg.topic == topic and "at" not in got:
                got["at"] = time.monotonic()
                arrived.set()

        back = Client(client_id, clean_session=False)
        back.on_message = on_message
        started = time.monotonic()
        back.connect(args.resume_port, "the resumed session")
        connack_s = time.monotonic() - started
        arrived.wait(args.timeout)
        runs.append({
            "latency_ms": round((got["at"] - started) * 1000, 1) if "at" in got else None,
            "connack_ms": round(connack_s * 1000, 1),
            "session_present": bool(back.session_present),
        })
        back.disconnect()

    latencies = [r["latency_ms"] for r in runs]
    return {
        "probe": "resume",
        "iterations": args.iterations,
        "received": sum(1 for v in latencies if v is not None),
        "latency_ms": latencies,
        "max_ms": max(latencies) if None not in latencies else None,
        "connack_ms": [r["connack_ms"] for r in runs],
        "session_present": [r["session_present"] for r in runs],
        "timeout_s": args.timeout,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    w = sub.add_parser("will")
    w.add_argument("--sub-port", type=int, required=True, help="MQTT port of the subscriber's node")
    w.add_argument("--will-port", type=int, required=True, help="MQTT port of the node to kill")
    w.add_argument("--kill-pid", type=int, required=True, help="process id of the node to kill")
    w.add_argument("--count", type=int, default=5)
    w.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the wills")
    r = sub.add_parser("resume")
    r.add_argument("--session-port", type=int, required=True, help="node where the session subscribes")
    r.add_argument("--pub-port", type=int, required=True, help="node the publisher uses")
    r.add_argument("--resume-port", type=int, required=True, help="node the session reconnects to")
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the message")
    args = parser.parse_args()
    try:
        result = probe_will(args) if args.probe == "will" else probe_resume(args)
    except (ProbeError, OSError) as e:
        print(json.dumps({"probe": args.probe, "error": str(e)}))
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
