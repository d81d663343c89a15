//! What a subscriber is sent: the MQTT delivery rules applied to what the router forwards.
//!
//! rumqttd's router forwards every message at the subscription's QoS, keeps no per-subscription
//! options, and insists on acknowledgements in the order it sent the messages. This side sits
//! between the router and the client and puts the protocol right:
//! - delivery QoS is min(publish QoS, granted QoS) (MQTT 3.1.1 and 5, §3.8.4);
//! - No Local, Retain As Published and Retain Handling per subscription (MQTT 5 §3.8.3.1);
//! - the client's Receive Maximum (never more unacknowledged QoS 1/2 messages than it allows)
//!   and Maximum Packet Size (a message too large for it is dropped, counted);
//! - the client's own Subscription Identifiers, and no internal tags, on what it receives.
//!
//! Whatever the client is not sent, or is sent at a lower QoS, is acknowledged to the router
//! here, and every acknowledgement reaches the router in the order the router expects.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{
    Filter, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, Publish, PublishProperties, RetainForwardRule,
};
use rumqttd::Forward;

use crate::router::{TAG_FROM, TAG_QOS, TAG_RETAIN};

/// One subscription of a session, with the options the router does not keep.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub(crate) filter: String,
    pub(crate) qos: u8,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// Retained messages are wanted for the subscribe that made (or replaced) this one.
    pub(crate) retained_wanted: bool,
    /// The client's own Subscription Identifier (MQTT 5).
    pub(crate) client_id: Option<usize>,
}

/// A session's subscriptions, by the identifier the broker gave each in the router.
#[derive(Clone, Debug, Default)]
pub(crate) struct Subscriptions {
    by_id: HashMap<usize, Subscription>,
    by_filter: HashMap<String, usize>,
    next_id: usize,
}

impl Subscriptions {
    /// Adds or replaces the subscription to `filter`; returns the router identifier to tag it
    /// with and whether it replaced one.
    pub(crate) fn subscribe(&mut self, filter: &Filter, client_id: Option<usize>) -> (usize, bool) {
        let existed = self.by_filter.get(&filter.path).copied();
        let retained_wanted = match filter.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => existed.is_none(),
            RetainForwardRule::Never => false,
        };
        let id = existed.unwrap_or_else(|| {
            // Subscription identifiers run from 1 to 268,435,455 (MQTT 5 §3.8.2.1.2).
            self.next_id = self.next_id % 268_435_455 + 1;
            self.next_id
        });
        self.by_filter.insert(filter.path.clone(), id);
        self.by_id.insert(
            id,
            Subscription {
                filter: filter.path.clone(),
                qos: filter.qos as u8,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                retained_wanted,
                client_id,
            },
        );
        (id, existed.is_some())
    }

    /// Removes the subscription to `filter`; returns whether there was one.
    pub(crate) fn unsubscribe(&mut self, filter: &str) -> bool {
        match self.by_filter.remove(filter) {
            Some(id) => {
                self.by_id.remove(&id);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn has(&self, filter: &str) -> bool {
        self.by_filter.contains_key(filter)
    }

    /// Every subscription, with the router identifier it carries.
    pub(crate) fn all(&self) -> impl Iterator<Item = (usize, &Subscription)> {
        self.by_id.iter().map(|(id, s)| (*id, s))
    }

    pub(crate) fn filters(&self) -> impl Iterator<Item = &str> {
        self.by_filter.keys().map(String::as_str)
    }

    /// The subscription a forward came through: by the identifier the router attached, or,
    /// for one without (a message queued before a resumed session re-subscribed), by matching
    /// the topic. `Err` means no subscription of ours wants it: it must not be delivered.
    fn of(&self, ids: &[usize], topic: &[u8]) -> Result<&Subscription, ()> {
        if let Some(id) = ids.first() {
            return self.by_id.get(id).ok_or(());
        }
        let topic = std::str::from_utf8(topic).map_err(|_| ())?;
        if !topic.starts_with(|c: char| c.is_ascii()) {
            // rumqttd's matcher panics on these (and the broker never routes them).
            return Err(());
        }
        self.by_id
            .values()
            .filter(|s| rumqttd::protocol::matches(topic, &s.filter))
            .max_by_key(|s| s.qos)
            .ok_or(())
    }
}

/// The client's limits, from its CONNECT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    pub(crate) receive_maximum: usize,
    pub(crate) maximum_packet_size: usize,
}

/// A forward the router sent with QoS 1 or 2, until the router has every acknowledgement.
#[derive(Debug)]
struct Slot {
    /// Packet id the router gave it; the client sees the same id.
    pkid: u16,
    router_qos: u8,
    /// `true` once the router may be sent PUBACK (QoS 1) or PUBREC (QoS 2).
    first_done: bool,
    /// `true` once the router may be sent PUBCOMP (QoS 2 only).
    comp_done: bool,
}

/// What to send where, in order.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    Client(Packet),
    Router(Packet),
}

/// One connection's delivery state.
#[derive(Debug)]
pub(crate) struct Outbound {
    limits: ClientLimits,
    /// This connection's number (for No Local).
    me: u64,
    slots: VecDeque<Slot>,
    /// PUBCOMPs the router waits for, in the order it waits: (pkid, client done).
    owed_comps: VecDeque<(u16, bool)>,
    /// PUBRELs the router will send for the PUBRECs we sent it (each PUBREC brings one).
    rels_expected: VecDeque<u16>,
    /// QoS 1/2 messages the client has not finished acknowledging.
    client_inflight: usize,
    /// Messages held back until the client acknowledges others (Receive Maximum).
    held: VecDeque<Packet>,
}

impl Outbound {
    pub(crate) fn new(limits: ClientLimits, me: u64) -> Self {
        Self {
            limits,
            me,
            slots: VecDeque::new(),
            owed_comps: VecDeque::new(),
            rels_expected: VecDeque::new(),
            client_inflight: 0,
            held: VecDeque::new(),
        }
    }

    pub(crate) fn limits(&self) -> ClientLimits {
        self.limits
    }

    /// Takes one of the client's Receive Maximum slots for a message that does not come from
    /// the router (a command); `false` when the client has as many as it allows.
    pub(crate) fn reserve(&mut self) -> bool {
        let free = self.client_inflight < self.limits.receive_maximum;
        if free {
            self.client_inflight += 1;
        }
        free
    }

    /// Gives back a slot [`Outbound::reserve`] took: the client acknowledged that message.
    pub(crate) fn unreserve(&mut self, steps: &mut Vec<Step>) {
        self.client_inflight = self.client_inflight.saturating_sub(1);
        self.release_held(steps);
    }

    /// One message from the router.
    pub(crate) fn forward(
        &mut self,
        forward: Forward,
        subs: &Subscriptions,
        steps: &mut Vec<Step>,
    ) {
        let head = forward.publish.serialize();
        let router_qos = head.first().map_or(0, |h| (h >> 1) & 3);
        let pkid = head
            .get(1..3)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        if router_qos > 0 {
            self.slots.push_back(Slot {
                pkid,
                router_qos,
                first_done: false,
                comp_done: router_qos < 2,
            });
        }
        let Forward {
            cursor,
            publish,
            properties,
            ..
        } = forward;
        let mut properties = properties;
        let tags = Tags::take(properties.as_mut(), router_qos);
        let ids = properties
            .as_ref()
            .map(|p| p.subscription_identifiers.clone())
            .unwrap_or_default();
        let subscription = match subs.of(&ids, &publish.topic) {
            Ok(subscription) => subscription,
            Err(()) => {
                self.settled(pkid, steps);
                return;
            }
        };
        let retained_at_subscribe = cursor.is_none();
        let (no_local, rap, wanted, client_sub) = (
            subscription.no_local,
            subscription.retain_as_published,
            subscription.retained_wanted,
            subscription.client_id,
        );
        if (no_local && tags.from == Some(self.me)) || (retained_at_subscribe && !wanted) {
            self.settled(pkid, steps);
            return;
        }
        let retain = if retained_at_subscribe {
            true
        } else {
            rap && tags.retain
        };
        let qos = tags.qos.min(router_qos);
        if let Some(p) = properties.as_mut() {
            p.subscription_identifiers = client_sub.into_iter().collect();
            p.topic_alias = None;
        }
        let properties = properties.filter(|p| !is_empty(p));
        let packet = Packet::Publish(
            publish_with(&publish.topic, &publish.payload, qos, pkid, retain, false),
            properties,
        );
        if router_qos > 0 && qos == 0 {
            // Delivered at QoS 0: nothing will come back from the client for it.
            self.settled(pkid, steps);
            steps.push(Step::Client(packet));
            return;
        }
        if qos == 0 {
            steps.push(Step::Client(packet));
            return;
        }
        if qos < router_qos {
            // QoS 2 in the router, 1 to the client: its PUBACK ends both stages.
            if let Some(slot) = self.slot(pkid) {
                slot.comp_done = true;
            }
        }
        if self.client_inflight >= self.limits.receive_maximum {
            self.held.push_back(packet);
        } else {
            self.client_inflight += 1;
            steps.push(Step::Client(packet));
        }
    }

    /// The client cannot take a message it was about to be sent (larger than its Maximum
    /// Packet Size): it counts as delivered, and the router is acknowledged.
    pub(crate) fn undeliverable(&mut self, pkid: u16, qos: u8, steps: &mut Vec<Step>) {
        if qos > 0 {
            self.client_inflight = self.client_inflight.saturating_sub(1);
            self.release_held(steps);
        }
        if pkid != 0 {
            self.settled(pkid, steps);
        }
    }

    /// An acknowledgement from the client: PUBACK, PUBREC or PUBCOMP.
    pub(crate) fn client_ack(&mut self, packet: &Packet, steps: &mut Vec<Step>) {
        match packet {
            Packet::PubAck(ack, _) => {
                if let Some(slot) = self.slot(ack.pkid) {
                    slot.first_done = true;
                    self.client_inflight = self.client_inflight.saturating_sub(1);
                }
            }
            Packet::PubRec(rec, _) => {
                steps.push(Step::Client(Packet::PubRel(
                    PubRel {
                        pkid: rec.pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                )));
                if let Some(slot) = self.slot(rec.pkid) {
                    slot.first_done = true;
                }
            }
            Packet::PubComp(comp, _) => {
                // Only a message the client already PUBREC'd: the router may have given its
                // packet id to a newer message since.
                let matched = if let Some(slot) = self
                    .slots
                    .iter_mut()
                    .find(|s| s.pkid == comp.pkid && s.first_done && !s.comp_done)
                {
                    slot.comp_done = true;
                    true
                } else if let Some(owed) = self
                    .owed_comps
                    .iter_mut()
                    .find(|(p, done)| *p == comp.pkid && !*done)
                {
                    owed.1 = true;
                    true
                } else {
                    false
                };
                if matched {
                    self.client_inflight = self.client_inflight.saturating_sub(1);
                }
            }
            _ => return,
        }
        self.release(steps);
        self.release_held(steps);
    }

    /// A PUBREL the router sent for one of its QoS 2 messages. The client already had its
    /// PUBREL from us, and the router gets its PUBCOMP when the client completes; one the
    /// router sends for a message of an earlier connection (it resends them when a session
    /// resumes) is completed at once.
    pub(crate) fn router_pubrel(&mut self, pkid: u16, steps: &mut Vec<Step>) {
        match self.rels_expected.iter().position(|p| *p == pkid) {
            Some(at) => {
                self.rels_expected.remove(at);
            }
            None => steps.push(Step::Router(pubcomp(pkid))),
        }
    }

    fn slot(&mut self, pkid: u16) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|s| s.pkid == pkid && !(s.first_done && s.comp_done))
    }

    /// Nothing more will come from the client for `pkid`.
    fn settled(&mut self, pkid: u16, steps: &mut Vec<Step>) {
        if let Some(slot) = self.slot(pkid) {
            slot.first_done = true;
            slot.comp_done = true;
        }
        self.release(steps);
    }

    /// Sends the router every acknowledgement it can take, in its order.
    fn release(&mut self, steps: &mut Vec<Step>) {
        while self.slots.front().is_some_and(|s| s.first_done) {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            if slot.router_qos == 1 {
                steps.push(Step::Router(Packet::PubAck(
                    PubAck {
                        pkid: slot.pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                )));
            } else {
                steps.push(Step::Router(Packet::PubRec(
                    PubRec {
                        pkid: slot.pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                )));
                self.owed_comps.push_back((slot.pkid, slot.comp_done));
                self.rels_expected.push_back(slot.pkid);
            }
        }
        while self.owed_comps.front().is_some_and(|(_, done)| *done) {
            if let Some((pkid, _)) = self.owed_comps.pop_front() {
                steps.push(Step::Router(pubcomp(pkid)));
            }
        }
    }

    fn release_held(&mut self, steps: &mut Vec<Step>) {
        while self.client_inflight < self.limits.receive_maximum {
            let Some(packet) = self.held.pop_front() else {
                break;
            };
            self.client_inflight += 1;
            steps.push(Step::Client(packet));
        }
    }
}

fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

/// What the broker tagged a publish with before the router saw it.
struct Tags {
    qos: u8,
    retain: bool,
    from: Option<u64>,
}

impl Tags {
    /// Reads and removes the tags. A message without them (a local link's) is delivered as
    /// the router sent it.
    fn take(properties: Option<&mut PublishProperties>, router_qos: u8) -> Tags {
        let mut tags = Tags {
            qos: router_qos,
            retain: false,
            from: None,
        };
        if let Some(properties) = properties {
            properties.user_properties.retain(|(key, value)| {
                match key.as_str() {
                    TAG_QOS => tags.qos = value.parse().unwrap_or(router_qos).min(2),
                    TAG_RETAIN => tags.retain = value == "1",
                    TAG_FROM => tags.from = value.parse().ok(),
                    _ => return true,
                }
                false
            });
        }
        tags
    }
}

fn is_empty(p: &PublishProperties) -> bool {
    p.payload_format_indicator.is_none()
        && p.message_expiry_interval.is_none()
        && p.topic_alias.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.subscription_identifiers.is_empty()
        && p.content_type.is_none()
}

/// The QoS of a number (0, 1, 2; anything higher is 2).
pub(crate) fn qos_of(number: u8) -> rumqttd::protocol::QoS {
    rumqttd::protocol::qos(number.min(2)).unwrap_or(rumqttd::protocol::QoS::ExactlyOnce)
}

/// A publish with the QoS and packet id we choose (rumqttd keeps those fields private and
/// builds a publish with them only from its own serialised form).
pub(crate) fn publish_with(
    topic: &Bytes,
    payload: &Bytes,
    qos: u8,
    pkid: u16,
    retain: bool,
    dup: bool,
) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(
        0b0011_0000 | u8::from(retain) | (qos.min(2) << 1) | (u8::from(dup && qos > 0) << 3),
    );
    raw.put_u16(if qos == 0 { 0 } else { pkid });
    raw.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    raw.extend_from_slice(topic);
    raw.extend_from_slice(payload);
    Publish::deserialize(raw.freeze())
}

/// QoS and packet id of a publish (private fields in rumqttd).
#[cfg(test)]
fn qos_and_pkid_of(publish: &Publish) -> (u8, u16) {
    let head = publish.serialize();
    let qos = head.first().map_or(0, |h| (h >> 1) & 3);
    let pkid = head
        .get(1..3)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    (qos, pkid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{tagged, Origin};
    use rumqttd::protocol::QoS;

    fn filter(path: &str, qos: QoS) -> Filter {
        Filter {
            path: path.to_string(),
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }
    }

    /// What the router would forward: the tagged publish at the subscription's QoS.
    fn forward(topic: &str, origin: Origin, router_qos: u8, pkid: u16, sub_id: usize) -> Forward {
        let Packet::Publish(publish, Some(mut properties)) = tagged(
            Bytes::from(topic.to_string()),
            Bytes::from_static(b"x"),
            None,
            &origin,
        ) else {
            unreachable!("tagged builds a publish with properties")
        };
        properties.subscription_identifiers = vec![sub_id];
        Forward {
            cursor: Some((0, 0)),
            size: 0,
            publish: publish_with(
                &publish.topic,
                &publish.payload,
                router_qos,
                pkid,
                false,
                false,
            ),
            properties: Some(properties),
        }
    }

    fn origin(qos: u8, connection: u64) -> Origin {
        Origin {
            qos,
            retain: false,
            connection,
        }
    }

    fn limits(receive_maximum: usize) -> ClientLimits {
        ClientLimits {
            receive_maximum,
            maximum_packet_size: 1 << 20,
        }
    }

    fn client_publishes(steps: &[Step]) -> Vec<(u8, u16)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Client(Packet::Publish(p, props)) => {
                    assert!(props.as_ref().is_none_or(|p| p
                        .user_properties
                        .iter()
                        .all(|(k, _)| !k.starts_with("fieldline:"))));
                    Some(qos_and_pkid_of(p))
                }
                _ => None,
            })
            .collect()
    }

    fn router_acks(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Router(Packet::PubAck(a, _)) => Some(format!("ack{}", a.pkid)),
                Step::Router(Packet::PubRec(a, _)) => Some(format!("rec{}", a.pkid)),
                Step::Router(Packet::PubComp(a, _)) => Some(format!("comp{}", a.pkid)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn delivers_at_the_lower_of_publish_and_subscription_qos() {
        let mut subs = Subscriptions::default();
        let (id, _) = subs.subscribe(&filter("t/#", QoS::ExactlyOnce), None);
        let mut out = Outbound::new(limits(10), 1);
        let mut steps = Vec::new();
        out.forward(forward("t/a", origin(0, 9), 2, 1, id), &subs, &mut steps);
        out.forward(forward("t/a", origin(1, 9), 2, 2, id), &subs, &mut steps);
        out.forward(forward("t/a", origin(2, 9), 2, 3, id), &subs, &mut steps);
        assert_eq!(client_publishes(&steps), vec![(0, 0), (1, 2), (2, 3)]);
        // The QoS 0 delivery is settled with the router at once.
        assert_eq!(router_acks(&steps), vec!["rec1", "comp1"]);
    }

    #[test]
    fn acknowledges_the_router_in_its_order_whatever_order_the_client_uses() {
        let mut subs = Subscriptions::default();
        let (id, _) = subs.subscribe(&filter("t", QoS::AtLeastOnce), None);
        let mut out = Outbound::new(limits(10), 1);
        let mut steps = Vec::new();
        for pkid in 1..=3 {
            out.forward(forward("t", origin(1, 9), 1, pkid, id), &subs, &mut steps);
        }
        steps.clear();
        let ack = |pkid| {
            Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )
        };
        out.client_ack(&ack(3), &mut steps);
        out.client_ack(&ack(2), &mut steps);
        assert!(router_acks(&steps).is_empty(), "the router needs 1 first");
        out.client_ack(&ack(1), &mut steps);
        assert_eq!(router_acks(&steps), vec!["ack1", "ack2", "ack3"]);
    }

    #[test]
    fn holds_messages_beyond_the_clients_receive_maximum() {
        let mut subs = Subscriptions::default();
        let (id, _) = subs.subscribe(&filter("t", QoS::AtLeastOnce), None);
        let mut out = Outbound::new(limits(2), 1);
        let mut steps = Vec::new();
        for pkid in 1..=5 {
            out.forward(forward("t", origin(1, 9), 1, pkid, id), &subs, &mut steps);
        }
        assert_eq!(client_publishes(&steps), vec![(1, 1), (1, 2)]);
        steps.clear();
        out.client_ack(
            &Packet::PubAck(
                PubAck {
                    pkid: 1,
                    reason: PubAckReason::Success,
                },
                None,
            ),
            &mut steps,
        );
        assert_eq!(client_publishes(&steps), vec![(1, 3)]);
        assert_eq!(router_acks(&steps), vec!["ack1"]);
    }

    #[test]
    fn no_local_drops_the_connections_own_messages() {
        let mut subs = Subscriptions::default();
        let mut f = filter("t", QoS::AtLeastOnce);
        f.nolocal = true;
        let (id, _) = subs.subscribe(&f, None);
        let mut out = Outbound::new(limits(10), 7);
        let mut steps = Vec::new();
        out.forward(forward("t", origin(1, 7), 1, 1, id), &subs, &mut steps);
        assert!(client_publishes(&steps).is_empty());
        assert_eq!(router_acks(&steps), vec!["ack1"]);
        out.forward(forward("t", origin(1, 8), 1, 2, id), &subs, &mut steps);
        assert_eq!(client_publishes(&steps), vec![(1, 2)]);
    }

    #[test]
    fn qos_2_to_a_qos_2_client_completes_with_the_router_after_pubcomp() {
        let mut subs = Subscriptions::default();
        let (id, _) = subs.subscribe(&filter("t", QoS::ExactlyOnce), None);
        let mut out = Outbound::new(limits(10), 1);
        let mut steps = Vec::new();
        out.forward(forward("t", origin(2, 9), 2, 4, id), &subs, &mut steps);
        steps.clear();
        out.client_ack(
            &Packet::PubRec(
                PubRec {
                    pkid: 4,
                    reason: PubRecReason::Success,
                },
                None,
            ),
            &mut steps,
        );
        assert!(matches!(steps.first(), Some(Step::Client(Packet::PubRel(r, _))) if r.pkid == 4));
        assert_eq!(router_acks(&steps), vec!["rec4"]);
        steps.clear();
        out.router_pubrel(4, &mut steps);
        assert!(steps.is_empty(), "the client has not completed yet");
        // A PUBREL of an earlier connection's message is completed at once.
        out.router_pubrel(9, &mut steps);
        assert_eq!(router_acks(&steps), vec!["comp9"]);
        steps.clear();
        out.client_ack(
            &Packet::PubComp(
                PubComp {
                    pkid: 4,
                    reason: PubCompReason::Success,
                },
                None,
            ),
            &mut steps,
        );
        assert_eq!(router_acks(&steps), vec!["comp4"]);
    }

    #[test]
    fn retain_handling_and_retain_as_published() {
        let mut subs = Subscriptions::default();
        let mut f = filter("r", QoS::AtMostOnce);
        f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
        let (id, replaced) = subs.subscribe(&f, Some(42));
        assert!(!replaced);
        let mut out = Outbound::new(limits(10), 1);
        let mut steps = Vec::new();
        let mut retained = forward(
            "r",
            Origin {
                retain: true,
                ..origin(0, 9)
            },
            0,
            0,
            id,
        );
        retained.cursor = None;
        out.forward(retained.clone(), &subs, &mut steps);
        let Some(Step::Client(Packet::Publish(p, props))) = steps.first() else {
            panic!("a new subscription gets the retained message");
        };
        assert!(p.retain);
        assert_eq!(
            props.as_ref().map(|p| p.subscription_identifiers.clone()),
            Some(vec![42])
        );
        steps.clear();
        let (_, replaced) = subs.subscribe(&f, Some(42));
        assert!(replaced);
        out.forward(retained, &subs, &mut steps);
        assert!(steps.is_empty(), "not again for the same subscription");
        // Live: the retain flag only with Retain As Published.
        let live = forward(
            "r",
            Origin {
                retain: true,
                ..origin(0, 9)
            },
            0,
            0,
            id,
        );
        out.forward(live.clone(), &subs, &mut steps);
        assert!(matches!(steps.pop(), Some(Step::Client(Packet::Publish(p, _))) if !p.retain));
        f.preserve_retain = true;
        subs.subscribe(&f, None);
        out.forward(live, &subs, &mut steps);
        assert!(matches!(steps.pop(), Some(Step::Client(Packet::Publish(p, _))) if p.retain));
    }
}
