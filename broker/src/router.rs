//! Our side of rumqttd's router: the links connections use to reach subscribers.
//!
//! The router (one thread) keeps subscriptions, retained messages and kept sessions, and hands
//! each link the messages for its filters. Connections are served by our own tasks
//! (the `connection` module), which attach a router link only when they need one: when they
//! subscribe, or resume a session the router keeps. An idle device, or one that only publishes,
//! costs the router nothing (a router link pre-allocates queues of a few hundred packets).
//! Publishes reach the router through one shared ingress link, and only when a subscription
//! wants them (see the `interest` module).
//!
//! Every publish handed to the router is QoS 0 and carries, in user properties the outbound side
//! strips again, what delivery needs but the router drops: the publish's own QoS (delivery is
//! at most that), its retain flag (Retain As Published) and the connection it came from (No
//! Local).

use std::collections::VecDeque;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, PublishProperties};
use rumqttd::Notification;

/// The router refused or is gone. rumqttd's own error carries whole packets (over 800
/// bytes), so only its message is kept.
#[derive(Debug, thiserror::Error)]
#[error("MQTT router: {0}")]
pub(crate) struct RouterError(String);

impl From<LinkError> for RouterError {
    fn from(e: LinkError) -> Self {
        RouterError(e.to_string())
    }
}

type Attach =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), RouterError> + Send + Sync;

/// The router thread, reachable only through links. rumqttd does not export the type of the
/// router's inbox, so the closure that attaches links holds it.
pub(crate) struct Router {
    /// Attaches a link by its router name, asking the router to keep its session or not.
    attach: Box<Attach>,
}

/// A client's link name in the router. The router keys sessions by it and refuses names with
/// `+ $ # /` (which client ids may hold), so those are escaped, and every client name starts
/// with `c:` so that none can collide with the broker's own links.
fn router_name(client_id: &str) -> String {
    let mut name = String::with_capacity(client_id.len() + 2);
    name.push_str("c:");
    for c in client_id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => name.push_str(&format!("%{:02X}", c as u32)),
            c => name.push(c),
        }
    }
    name
}

impl Router {
    /// Starts rumqttd's router thread.
    pub(crate) fn spawn(config: rumqttd::RouterConfig) -> Router {
        let inbox = rumqttd::Router::new(0, config).spawn();
        Router {
            attach: Box::new(move |name, keep| {
                LinkBuilder::new(name, inbox.clone())
                    .clean_session(!keep)
                    // Server-to-client topic aliases are not offered: rumqttd keys them by
                    // subscription filter, so a wildcard subscriber would get one topic's
                    // messages under another's alias.
                    .topic_alias_max(0)
                    .dynamic_filters(true)
                    .build()
                    .map_err(RouterError::from)
            }),
        }
    }
}

/// User property keys the broker adds to publishes inside the router and strips on delivery.
/// A client's own properties under these keys are dropped when it publishes.
pub(crate) const TAG_QOS: &str = "fieldline:qos";
pub(crate) const TAG_RETAIN: &str = "fieldline:retain";
pub(crate) const TAG_FROM: &str = "fieldline:from";

/// Can the router take a publish to `topic`? rumqttd slices a topic's first byte as a string
/// (`topic[..1]`), which panics its thread when the first character is not ASCII, and drops
/// the link that sent a topic that is not UTF-8. Such publishes still reach the pipeline;
/// they are not forwarded to MQTT subscribers.
pub(crate) fn routable(topic: &[u8]) -> bool {
    topic.first().is_some_and(u8::is_ascii) && std::str::from_utf8(topic).is_ok()
}

/// What the router needs to know of a publish besides topic and payload.
pub(crate) struct Origin {
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Our number of the connection that published it.
    pub(crate) connection: u64,
}

/// Builds the QoS 0 publish the router stores and forwards, with the origin as tags.
pub(crate) fn tagged(
    topic: Bytes,
    payload: Bytes,
    properties: Option<PublishProperties>,
    origin: &Origin,
) -> Packet {
    let mut properties = properties.unwrap_or_default();
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    properties
        .user_properties
        .retain(|(key, _)| !key.starts_with("fieldline:"));
    properties
        .user_properties
        .push((TAG_QOS.to_string(), origin.qos.to_string()));
    if origin.retain {
        properties
            .user_properties
            .push((TAG_RETAIN.to_string(), "1".to_string()));
    }
    properties
        .user_properties
        .push((TAG_FROM.to_string(), origin.connection.to_string()));
    Packet::Publish(
        Publish::new(topic, payload, origin.retain),
        Some(properties),
    )
}

/// One attached link: how a connection talks to the router.
pub(crate) struct Link {
    pub(crate) tx: LinkTx,
    pub(crate) rx: LinkRx,
    /// The router ended this link itself (it dropped our channel); nothing more may be sent
    /// under its id, which the router may already have given to another link.
    pub(crate) gone: bool,
}

impl Link {
    /// Attaches `client_id` to the router. `keep` asks the router to keep the session's
    /// subscriptions and unacknowledged messages when the link ends (and to resume one it
    /// kept). Returns the link and whether the router resumed a session.
    ///
    /// The router answers synchronously through a channel, so this blocks its thread briefly.
    pub(crate) fn attach(
        router: &Router,
        client_id: &str,
        keep: bool,
    ) -> Result<(Link, bool), RouterError> {
        let name = router_name(client_id);
        let (tx, rx, ack) = tokio::task::block_in_place(|| (router.attach)(&name, keep))?;
        let resumed = match Option::<Packet>::from(ack) {
            Some(Packet::ConnAck(ack, _)) => ack.session_present,
            _ => false,
        };
        Ok((
            Link {
                tx,
                rx,
                gone: false,
            },
            resumed,
        ))
    }

    /// Hands packets to the router, waking it once for all of them.
    pub(crate) fn send(
        &mut self,
        packets: impl IntoIterator<Item = Packet>,
    ) -> Result<(), RouterError> {
        let mut pending: VecDeque<Packet> = packets.into_iter().collect();
        let Some(last) = pending.pop_back() else {
            return Ok(());
        };
        self.tx.buffer().extend(pending);
        // `send` pushes the packet and wakes the router for everything in the buffer. It is
        // `async` but never awaits (a plain channel send into an inbox of 1,000 wake-ups),
        // so one poll completes it.
        if let Some(sent) = futures_util::FutureExt::now_or_never(self.tx.send(last)) {
            sent?;
        }
        Ok(())
    }

    /// Ends the link as a clean disconnect: the router keeps the session if the link asked
    /// it to, and publishes no will (the broker publishes wills itself).
    pub(crate) fn detach(mut self) {
        if self.gone {
            return;
        }
        let disconnect = Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        );
        if let Err(e) = self.send([disconnect]) {
            tracing::debug!(error = %e, "router link already gone at detach");
        }
    }

    /// Waits for the router's next batch of notifications.
    pub(crate) async fn next(&mut self) -> Result<Vec<Notification>, RouterError> {
        let first = self.rx.next().await?;
        let mut batch: Vec<Notification> = first.into_iter().collect();
        // The router wakes a link once for a batch; the rest is already in the link's cache.
        while let Ok(Some(more)) = self.rx.recv_deadline(std::time::Instant::now()) {
            batch.push(more);
        }
        Ok(batch)
    }
}

/// Drops a session the router keeps for `client_id`: attaching with a clean session makes
/// the router discard what it kept, and a clean disconnect then ends that link.
pub(crate) fn purge(router: &Router, client_id: &str) {
    match Link::attach(router, client_id, false) {
        Ok((link, _)) => link.detach(),
        Err(e) => {
            tracing::warn!(client_id, error = %e, "cannot reach the router to drop a session")
        }
    }
}

/// The one link every connection's publishes reach the router through. The router sends it
/// nothing it needs (its publishes are QoS 0), but a link must be read or it stalls, so a task
/// drains it.
pub(crate) struct Ingress {
    tx: std::sync::Mutex<LinkTx>,
}

impl Ingress {
    pub(crate) fn open(router: &Router) -> Result<Ingress, RouterError> {
        // Client links are named `c:…` (see [`router_name`]), so no client id can take this one.
        let (tx, mut rx, _) =
            tokio::task::block_in_place(|| (router.attach)("fieldline-ingress", false))?;
        tokio::spawn(async move {
            loop {
                match rx.next().await {
                    Ok(Some(Notification::Unschedule)) => {
                        if rx.wake().await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            tracing::error!("the router closed the ingress link; subscribers get no more messages");
        });
        Ok(Ingress {
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// Hands one publish (built by [`tagged`]) to the router.
    pub(crate) fn publish(&self, packet: Packet) {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        // `send` is `async` but never awaits (see [`Link::send`]).
        if let Some(Err(e)) = futures_util::FutureExt::now_or_never(tx.send(packet)) {
            metrics::counter!("fieldline_broker_router_errors_total").increment(1);
            tracing::warn!(error = %e, "cannot hand a publish to the router");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::router_name;

    #[test]
    fn router_names_escape_what_the_router_refuses_and_never_collide() {
        assert_eq!(router_name("truck-7"), "c:truck-7");
        assert_eq!(router_name("a/b+c#d$e%f"), "c:a%2Fb%2Bc%23d%24e%25f");
        // The escape character is escaped too, so distinct ids stay distinct.
        assert_ne!(router_name("a%2F"), router_name("a/"));
    }
}
