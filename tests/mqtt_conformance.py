#!/usr/bin/env python3
"""MQTT conformance checks of Fieldline's broker with a third-party client, paho-mqtt 2.x.

Run by tests/mqtt_conformance.rs against a freshly started broker:

    python3 tests/mqtt_conformance.py --host 127.0.0.1 --port 1883

Prints one line per check, "ok: ..." or "FAIL: ...", and exits 1 when any check failed (or
when the whole run takes longer than --timeout seconds). Checks, over MQTT 5 and 3.1.1:
keep-alive 0, QoS downgrade, topic aliases, No Local, and resuming a session.
"""

import argparse
import os
import queue
import signal
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 10.0  # seconds for any one thing the broker should do
QUIET = 1.0  # seconds of "nothing more arrives"

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}

HOST = "127.0.0.1"
PORT = 1883
RUN = "%d" % os.getpid()


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


class Conn:
    """One paho client with its network loop in a thread; what arrives goes into queues."""

    def __init__(self, client_id, protocol, clean_session=None):
        self.client_id = client_id
        self.protocol = protocol
        kwargs = {}
        if protocol != mqtt.MQTTv5 and clean_session is not None:
            kwargs["clean_session"] = clean_session
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            **kwargs,
        )
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.messages = queue.Queue()
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.looping = False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connacks.put((flags, reason_code, properties))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks.put((mid, reason_codes))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self.unsubacks.put((mid, reason_codes))

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()

    def connect(self, keepalive=30, clean_start=None, properties=None):
        """Connects; returns (session_present, connack properties). Fails unless accepted."""
        kwargs = {"keepalive": keepalive}
        if self.protocol == mqtt.MQTTv5:
            if clean_start is not None:
                kwargs["clean_start"] = clean_start
            if properties is not None:
                kwargs["properties"] = properties
        self.client.connect(HOST, PORT, **kwargs)
        self.client.loop_start()
        self.looping = True
        try:
            flags, reason_code, props = self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise CheckFailed("%s: no CONNACK within %ss" % (self.client_id, WAIT))
        expect(
            not reason_code.is_failure,
            "%s: CONNECT refused: %s" % (self.client_id, reason_code),
        )
        return flags.session_present, props

    def subscribe(self, topic, qos=1, options=None):
        """Subscribes; returns the granted reason codes as ints."""
        if options is not None:
            result, mid = self.client.subscribe(topic, options=options)
        else:
            result, mid = self.client.subscribe(topic, qos=qos)
        expect(result == mqtt.MQTT_ERR_SUCCESS, "%s: SUBSCRIBE not sent: %s" % (self.client_id, result))
        try:
            got_mid, reason_codes = self.subacks.get(timeout=WAIT)
        except queue.Empty:
            raise CheckFailed("%s: no SUBACK for %s within %ss" % (self.client_id, topic, WAIT))
        expect(got_mid == mid, "%s: SUBACK for mid %s, expected %s" % (self.client_id, got_mid, mid))
        return [rc.value for rc in reason_codes]

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and, at QoS 1 and 2, waits until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        expect(info.rc == mqtt.MQTT_ERR_SUCCESS, "%s: PUBLISH not sent: %s" % (self.client_id, info.rc))
        info.wait_for_publish(timeout=WAIT)
        expect(info.is_published(), "%s: %s not acknowledged within %ss" % (self.client_id, topic, WAIT))

    def message(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def messages_until(self, count, timeout=WAIT):
        """Up to `count` messages, waiting at most `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = self.message(timeout=left)
            if message is None:
                break
            got.append(message)
        return got

    def nothing_more(self, what, wait=QUIET):
        extra = self.message(timeout=wait)
        expect(
            extra is None,
            "%s: %s, but got %s %r" % (self.client_id, what, extra and extra.topic, extra and extra.payload),
        )

    def is_up(self):
        return self.client.is_connected() and not self.disconnected.is_set()

    def close(self):
        """A clean DISCONNECT; waits until the socket is closed."""
        if not self.looping:
            return
        try:
            if self.client.is_connected():
                self.client.disconnect()
                self.disconnected.wait(timeout=WAIT)
        finally:
            self.client.loop_stop()
            self.looping = False


def name(prefix, protocol):
    """A client id that is a valid Fieldline device id, unique per run and protocol."""
    return "%s-%s-%s" % (prefix, "v5" if protocol == mqtt.MQTTv5 else "v311", RUN)


def connect_properties(**values):
    props = Properties(PacketTypes.CONNECT)
    for key, value in values.items():
        setattr(props, key, value)
    return props


# ---------------------------------------------------------------------------------------------
# Checks. Each opens its own clients and closes them, and raises CheckFailed when it fails.


def check_keep_alive_zero(protocol):
    """MQTT 3.1.1 §3.1.2.10 / MQTT 5 §3.1.2.10: keep-alive 0 turns the mechanism off."""
    conn = Conn(name("paho-ka0", protocol), protocol)
    publisher = Conn(name("paho-ka0-pub", protocol), protocol)
    try:
        _, props = conn.connect(keepalive=0)
        if protocol == mqtt.MQTTv5 and props is not None:
            # MQTT 5 §3.2.2.3.14 lets a broker impose its own keep-alive; say so when it does.
            server_keep_alive = getattr(props, "ServerKeepAlive", None)
            if server_keep_alive not in (None, 0):
                print("note: the broker answered keep-alive 0 with Server Keep Alive %s" % server_keep_alive)
        topic = "paho/ka0/%s" % conn.client_id
        conn.subscribe(topic, qos=1)
        # paho sends no PINGREQ with keep-alive 0: the connection is silent from here on.
        time.sleep(3.0)
        expect(conn.is_up(), "the broker closed a keep-alive 0 connection after 3 s of silence")
        conn.publish(topic, b"still here", qos=1)
        message = conn.message()
        expect(message is not None and message.payload == b"still here", "own message not received back: %r" % message)
        publisher.connect()
        publisher.publish(topic, b"from another", qos=1)
        message = conn.message()
        expect(message is not None and message.payload == b"from another", "message from another client not received: %r" % message)
        expect(conn.is_up(), "connection dropped")
    finally:
        conn.close()
        publisher.close()


def check_qos_downgrade(protocol):
    """MQTT 3.1.1 §3.8.4 / MQTT 5 §3.8.4: delivered QoS = min(published QoS, subscription QoS)."""
    sub2 = Conn(name("paho-q2", protocol), protocol)
    sub1 = Conn(name("paho-q1", protocol), protocol)
    publisher = Conn(name("paho-qp", protocol), protocol)
    try:
        sub2.connect()
        sub1.connect()
        publisher.connect()
        base = "paho/qos/%s" % sub2.client_id
        granted = sub2.subscribe(base + "/two", qos=2)
        expect(granted == [2], "subscription at QoS 2 granted %s" % granted)
        granted = sub1.subscribe(base + "/one", qos=1)
        expect(granted == [1], "subscription at QoS 1 granted %s" % granted)
        for qos in (0, 1, 2):
            publisher.publish(base + "/two", str(qos).encode(), qos=qos)
        received = {}
        for message in sub2.messages_until(3):
            received[message.payload.decode()] = message.qos
        expect(received == {"0": 0, "1": 1, "2": 2}, "QoS 2 subscriber: published QoS -> received QoS %s" % received)
        publisher.publish(base + "/one", b"2", qos=2)
        message = sub1.message()
        expect(message is not None, "QoS 1 subscriber got nothing of a QoS 2 publish")
        expect(message.qos == 1, "QoS 2 publish to a QoS 1 subscription arrived at QoS %s" % message.qos)
        sub2.nothing_more("no duplicate deliveries")
    finally:
        sub2.close()
        sub1.close()
        publisher.close()


def check_topic_aliases():
    """MQTT 5 §3.3.2.3.4: whatever aliases are used, every delivered message has its own topic."""
    protocol = mqtt.MQTTv5
    sub = Conn(name("paho-alias-sub", protocol), protocol)
    publisher = Conn(name("paho-alias-pub", protocol), protocol)
    try:
        sub.connect(properties=connect_properties(TopicAliasMaximum=10))
        sub.subscribe("x/+", qos=1)
        _, props = publisher.connect()
        sent = []
        for round_ in range(3):
            for leaf in ("a", "b", "c"):
                payload = "%s-%d" % (leaf, round_)
                publisher.publish("x/" + leaf, payload.encode(), qos=1)
                sent.append(payload)
        # With aliases offered by the broker, the publisher may use one too.
        alias_max = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
        if alias_max and alias_max > 0:
            first = Properties(PacketTypes.PUBLISH)
            first.TopicAlias = 1
            publisher.publish("x/alias", b"alias-0", qos=1, properties=first)
            again = Properties(PacketTypes.PUBLISH)
            again.TopicAlias = 1
            publisher.publish("", b"alias-1", qos=1, properties=again)
            sent += ["alias-0", "alias-1"]
        received = []
        for message in sub.messages_until(len(sent)):
            payload = message.payload.decode()
            leaf = payload.split("-")[0]
            expect(message.topic != "", "message %r arrived with an empty topic" % payload)
            expect(
                message.topic == "x/" + leaf,
                "message %r arrived on %r, not x/%s" % (payload, message.topic, leaf),
            )
            alias = getattr(message.properties, "TopicAlias", None) if message.properties else None
            expect(alias is None, "the broker sent a topic alias (%s) to the subscriber" % alias)
            received.append(payload)
        expect(sorted(received) == sorted(sent), "sent %s, received %s" % (sorted(sent), sorted(received)))
        sub.nothing_more("nothing beyond what was sent")
    finally:
        sub.close()
        publisher.close()


def check_no_local():
    """MQTT 5 §3.8.3.1: with No Local, a client's own publishes are not sent back to it."""
    protocol = mqtt.MQTTv5
    conn = Conn(name("paho-nl", protocol), protocol)
    other = Conn(name("paho-nl-other", protocol), protocol)
    try:
        conn.connect()
        other.connect()
        topic = "paho/nl/%s" % conn.client_id
        conn.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
        conn.publish(topic, b"own", qos=1)
        other.publish(topic, b"other", qos=1)
        message = conn.message()
        expect(message is not None, "the other client's message never arrived")
        expect(message.payload == b"other", "No Local subscriber received %r first" % message.payload)
        conn.nothing_more("no own message")
        # Without No Local, the own message comes back.
        local = topic + "/local"
        conn.subscribe(local, options=SubscribeOptions(qos=1, noLocal=False))
        conn.publish(local, b"own again", qos=1)
        message = conn.message()
        expect(message is not None and message.payload == b"own again", "without No Local the own message must come back: %r" % message)
    finally:
        conn.close()
        other.close()


def check_session_resume(protocol):
    """MQTT 5 §3.1.2.11.2 / §3.2.2.1.1, MQTT 3.1.1 §3.1.2.4 / §3.2.2.2: a kept session is
    resumed with Session Present, and QoS 1 messages queued while away are delivered."""
    client_id = name("paho-sess", protocol)
    topic = "cmd/%s" % client_id
    publisher = Conn(name("paho-sess-pub", protocol), protocol)
    first = Conn(client_id, protocol, clean_session=False)
    second = None
    try:
        if protocol == mqtt.MQTTv5:
            present, _ = first.connect(clean_start=True, properties=connect_properties(SessionExpiryInterval=30))
        else:
            present, _ = first.connect()
        expect(not present, "a first connection reported a present session")
        first.subscribe(topic, qos=1)
        first.close()
        # Let the broker finish with the connection before publishing.
        time.sleep(0.5)
        publisher.connect()
        publisher.publish(topic, b"queued", qos=1)
        second = Conn(client_id, protocol, clean_session=False)
        if protocol == mqtt.MQTTv5:
            present, _ = second.connect(clean_start=False, properties=connect_properties(SessionExpiryInterval=30))
        else:
            present, _ = second.connect()
        expect(present, "reconnecting to a kept session: CONNACK session present is 0")
        message = second.message()
        expect(message is not None, "the message queued while away was not delivered")
        expect(message.payload == b"queued" and message.topic == topic, "got %s %r" % (message.topic, message.payload))
        expect(message.qos == 1, "queued message arrived at QoS %s" % message.qos)
    finally:
        first.close()
        if second is not None:
            second.close()
        publisher.close()


def check_session_not_kept(protocol):
    """MQTT 5 §3.1.2.11.2 (Session Expiry 0) / MQTT 3.1.1 §3.1.2.4 (CleanSession 1): nothing of
    the session is there after reconnecting."""
    client_id = name("paho-nosess", protocol)
    topic = "cmd/%s" % client_id
    publisher = Conn(name("paho-nosess-pub", protocol), protocol)
    first = Conn(client_id, protocol, clean_session=True)
    second = None
    try:
        if protocol == mqtt.MQTTv5:
            first.connect(clean_start=True, properties=connect_properties(SessionExpiryInterval=0))
        else:
            first.connect()
        first.subscribe(topic, qos=1)
        first.close()
        time.sleep(0.5)
        publisher.connect()
        publisher.publish(topic, b"lost", qos=1)
        second = Conn(client_id, protocol, clean_session=False)
        if protocol == mqtt.MQTTv5:
            present, _ = second.connect(clean_start=False)
        else:
            present, _ = second.connect()
        expect(not present, "no session was kept, yet CONNACK says session present")
        second.nothing_more("no message of a session that was not kept")
    finally:
        first.close()
        if second is not None:
            second.close()
        publisher.close()


def main():
    global HOST, PORT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--timeout", type=int, default=150, help="overall limit in seconds")
    args = parser.parse_args()
    HOST, PORT = args.host, args.port

    def overall_timeout(signum, frame):
        print("FAIL: the checks did not finish within %d s" % args.timeout, flush=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, overall_timeout)
    signal.alarm(args.timeout)

    v5, v311 = mqtt.MQTTv5, mqtt.MQTTv311
    checks = [
        ("keep-alive 0, MQTT 5", lambda: check_keep_alive_zero(v5)),
        ("keep-alive 0, MQTT 3.1.1", lambda: check_keep_alive_zero(v311)),
        ("QoS downgrade, MQTT 5", lambda: check_qos_downgrade(v5)),
        ("QoS downgrade, MQTT 3.1.1", lambda: check_qos_downgrade(v311)),
        ("topic aliases, MQTT 5", check_topic_aliases),
        ("No Local, MQTT 5", check_no_local),
        ("session resume (expiry 30 s), MQTT 5", lambda: check_session_resume(v5)),
        ("session resume (clean session 0), MQTT 3.1.1", lambda: check_session_resume(v311)),
        ("no session kept (expiry 0), MQTT 5", lambda: check_session_not_kept(v5)),
        ("no session kept (clean session 1), MQTT 3.1.1", lambda: check_session_not_kept(v311)),
    ]
    failures = 0
    for title, check in checks:
        try:
            check()
            print("ok: %s" % title, flush=True)
        except CheckFailed as e:
            failures += 1
            print("FAIL: %s: %s" % (title, e), flush=True)
        except Exception as e:  # a client error is a failure of the check, not of the script
            failures += 1
            print("FAIL: %s: %s: %s" % (title, type(e).__name__, e), flush=True)
            traceback.print_exc(file=sys.stdout)
    signal.alarm(0)
    print("paho-mqtt checks: %d of %d passed" % (len(checks) - failures, len(checks)), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
