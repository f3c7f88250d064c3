//! What the admin API reads of the replicated state: sessions, their
//! subscriptions and retained messages, as plain serializable records, in
//! pages ordered by client id or topic. Every node holds the same state, so
//! any node answers these alike (up to how far it has applied).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;

use super::{MqttMachine, Session, NEVER_EXPIRES};
use crate::topic::filter_matches;

/// One session, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    pub client_id: String,
    pub connected: bool,
    /// The node holding its connection, if connected.
    pub node: Option<u64>,
    /// Of its latest connection: address, protocol level, keepalive,
    /// username, and when it connected (ms since the epoch).
    pub address: String,
    pub protocol: u8,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub connected_at: u64,
    /// When its connection ended (ms since the epoch), if it did.
    pub disconnected_at: Option<u64>,
    /// Seconds it outlives its connection; `None`: never expires.
    pub session_expiry: Option<u32>,
    /// Whether it outlives its connection at all (persistent).
    pub persistent: bool,
    pub subscriptions: usize,
    /// QoS 1/2 messages waiting in (or sent from and unacknowledged in) its
    /// replicated queue, and their payload bytes.
    pub queued_messages: usize,
    pub queued_bytes: u64,
    pub has_will: bool,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// Counts over the whole replicated state, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Sessions with a connection, and without one (persistent, offline).
    pub online: usize,
    pub offline: usize,
    /// Subscriptions, and of those the shared ones (`$share/...`).
    pub subscriptions: usize,
    pub shared_subscriptions: usize,
    /// Messages in the queues of persistent sessions.
    pub queued_messages: usize,
    pub retained_messages: usize,
    pub retained_bytes: u64,
}

/// One page of a listing, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
}

fn session_view(client_id: &str, s: &Session) -> SessionView {
    SessionView {
        client_id: client_id.to_owned(),
        connected: s.conn.is_some(),
        node: s.conn.map(|c| c.node),
        address: s.info.address.clone(),
        protocol: s.info.protocol,
        keep_alive: s.info.keep_alive,
        username: s.info.username.clone(),
        connected_at: s.info.connected_at,
        disconnected_at: s.ended_at,
        session_expiry: (s.expiry != NEVER_EXPIRES).then_some(s.expiry),
        persistent: !s.clean,
        subscriptions: s.subscriptions.len(),
        queued_messages: s.queue.len(),
        queued_bytes: s.queued_bytes,
        has_will: s.will.is_some(),
    }
}

/// Up to `limit` items of `entries` (sorted by key, from after `after`) that
/// `keep` selects.
fn page<'a, V: 'a, T>(
    entries: impl Iterator<Item = (&'a str, V)>,
    limit: usize,
    mut view: impl FnMut(&str, V) -> Option<T>,
) -> Page<T> {
    let mut items = Vec::new();
    let mut last = None;
    for (key, value) in entries {
        if items.len() == limit {
            return Page { items, next: last };
        }
        if let Some(item) = view(key, value) {
            items.push(item);
            last = Some(key.to_owned());
        }
    }
    Page { items, next: None }
}

fn after_bound(after: Option<&str>) -> Bound<&str> {
    after.map_or(Bound::Unbounded, Bound::Excluded)
}

impl MqttMachine {
    /// Sessions by client id, after `after`, those `keep` selects, at most
    /// `limit`.
    pub fn sessions_page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&SessionView) -> bool,
    ) -> Page<SessionView> {
        let state = self.lock();
        let range = state
            .sessions
            .range::<str, _>((after_bound(after), Bound::Unbounded))
            .map(|(id, s)| (&**id, s));
        page(range, limit, |id, s| {
            Some(session_view(id, s)).filter(|v| keep(v))
        })
    }

    /// The session of `client_id`, with its subscriptions.
    pub fn session_view(&self, client_id: &str) -> Option<(SessionView, Vec<SubscriptionView>)> {
        let state = self.lock();
        let s = state.sessions.get(client_id)?;
        let subscriptions = s
            .subscriptions
            .iter()
            .map(|(filter, sub)| subscription_view(client_id, filter, sub))
            .collect();
        Some((session_view(client_id, s), subscriptions))
    }

    /// Every subscription whose filter matches `topic`, by client id.
    pub fn subscribers(&self, topic: &str) -> Vec<SubscriptionView> {
        let state = self.lock();
        state
            .sessions
            .iter()
            .flat_map(|(id, s)| {
                s.subscriptions
                    .iter()
                    .filter(|(filter, _)| subscription_matches(filter, topic))
                    .map(move |(filter, sub)| subscription_view(id, filter, sub))
            })
            .collect()
    }

    /// Retained messages by topic, after `after`, whose topic matches
    /// `filter`, at most `limit`.
    pub fn retained_page(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Page<super::Message> {
        let state = self.lock();
        let range = state
            .retained
            .range::<str, _>((after_bound(after), Bound::Unbounded))
            .map(|(topic, m)| (&**topic, m));
        page(range, limit, |topic, m| {
            filter_matches(filter, topic).then(|| m.clone())
        })
    }

    /// Counts sessions, subscriptions, queued and retained messages: one
    /// pass over the sessions, under the state's lock.
    pub fn census(&self) -> Census {
        let state = self.lock();
        let mut census = Census {
            retained_messages: state.retained.len(),
            retained_bytes: state.retained_bytes,
            ..Census::default()
        };
        for s in state.sessions.values() {
            if s.conn.is_some() {
                census.online += 1;
            } else {
                census.offline += 1;
            }
            census.subscriptions += s.subscriptions.len();
            census.shared_subscriptions += s
                .subscriptions
                .keys()
                .filter(|f| f.starts_with("$share/"))
                .count();
            census.queued_messages += s.queue.len();
        }
        census
    }

    /// How many sessions each node holds a connection of, by node id; nodes
    /// holding none are left out.
    pub fn connections_by_node(&self) -> BTreeMap<u64, usize> {
        let state = self.lock();
        let mut counts = BTreeMap::new();
        for conn in state.sessions.values().filter_map(|s| s.conn) {
            *counts.entry(conn.node).or_default() += 1;
        }
        counts
    }

    /// The retained message of `topic`, if any.
    pub fn retained(&self, topic: &str) -> Option<super::Message> {
        self.lock().retained.get(topic).cloned()
    }
}

fn subscription_view(client_id: &str, filter: &str, sub: &super::Subscription) -> SubscriptionView {
    SubscriptionView {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
        qos: sub.options.qos as u8,
        no_local: sub.options.no_local,
        retain_as_published: sub.options.retain_as_published,
        retain_handling: sub.options.retain_handling as u8,
        subscription_id: sub.id,
    }
}

/// Whether subscription `filter` (shared ones included) takes `topic`.
fn subscription_matches(filter: &str, topic: &str) -> bool {
    match starling_proto::mqtt::topic::shared_subscription(filter) {
        Some(Ok((_, inner))) => filter_matches(inner, topic),
        _ => filter_matches(filter, topic),
    }
}
