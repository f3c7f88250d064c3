//! The subscription trie: topic filter -> subscribers, matched level by level.
//!
//! Each node stands for a filter prefix. Literal levels are children in a map, the
//! `+` level is one separate child, and subscribers of `prefix/#` live on the node of
//! `prefix` itself. Matching a topic therefore visits at most the literal path plus
//! the `+` branches that exist, whatever the number of filters, and never allocates
//! unless more than [`INLINE_PENDING`] `+` branches are pending at once.
//!
//! Filters and topics come from the network and may have tens of thousands of
//! levels, so nothing here recurses along the depth of the trie: matching keeps an
//! explicit stack, pruning walks the path twice, and nodes are dropped iteratively.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::mem;

/// A subscriber set switches from a vector to a map past this size.
///
/// Matching only iterates over subscribers, which is fastest on a vector; the key is
/// looked up only on subscribe and unsubscribe. Comparing a short key (a client id)
/// costs a few nanoseconds and hashing it with SipHash about twenty, so a linear scan
/// wins up to roughly this size, while a map keeps a filter shared by thousands of
/// clients O(1) per subscribe.
const SMALL_MAX: usize = 16;

/// Pending `+` branches held on the stack while matching; more spill into a vector.
const INLINE_PENDING: usize = 32;

/// A subscription index: topic filter -> subscribers, each with a value.
///
/// `K` identifies a subscriber (a client id, a node id); `V` is what the subscription
/// carries (granted QoS, options). One key holds at most one value per filter.
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

struct Node<K, V> {
    /// Children by literal level; the empty string is a level like any other.
    children: HashMap<Box<str>, Node<K, V>>,
    /// The child reached through a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends at this node.
    exact: Subscribers<K, V>,
    /// Subscribers whose filter is this node's prefix followed by `/#` (or `#` alone
    /// at the root).
    hash: Subscribers<K, V>,
}

enum Subscribers<K, V> {
    Small(Vec<(K, V)>),
    Large(HashMap<K, V>),
}

impl<K: Eq + Hash + Clone, V: Clone> SubscriptionTrie<K, V> {
    pub fn new() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: 0,
        }
    }

    /// Adds or replaces `key`'s entry for `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (path, hash) = split_filter(filter);
        let mut node = &mut self.root;
        for level in levels(path) {
            node = node.child_or_insert(level);
        }
        let set = if hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        let previous = set.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key`'s entry for `filter`; returns it. Prunes empty nodes.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (path, hash) = split_filter(filter);
        let mut node = &mut self.root;
        for level in levels(path) {
            node = node.child_mut(level)?;
        }
        let set = if hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        let removed = set.remove(key)?;
        let now_empty = node.is_empty();
        self.len -= 1;
        if let (true, Some(path)) = (now_empty, path) {
            self.prune(path);
        }
        Some(removed)
    }

    /// Calls `f(key, value)` for every subscription whose filter matches `topic`.
    ///
    /// A key subscribed with two overlapping filters is reported once per filter;
    /// the caller merges (MQTT lets the server pick the highest QoS). The order is
    /// unspecified.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let mut pending = Pending::new(&self.root);
        // [MQTT-4.7.2-1] A filter starting with a wildcard does not match a topic
        // starting with `$`; only the root's `#` and `+` are such filters.
        let mut wildcards = !topic.starts_with('$');
        let mut next: Option<Frame<'_, K, V>> = Some((&self.root, Some(topic)));
        while let Some((mut node, mut rest)) = next.take().or_else(|| pending.pop()) {
            loop {
                // `#` also matches its parent level, so it fires whether or not
                // levels remain.
                if wildcards {
                    node.hash.for_each(&mut f);
                }
                let Some(remaining) = rest else {
                    node.exact.for_each(&mut f);
                    break;
                };
                let (level, tail) = split_level(remaining);
                let plus = if wildcards {
                    node.plus.as_deref()
                } else {
                    None
                };
                wildcards = true;
                rest = tail;
                node = match (node.children.get(level), plus) {
                    (Some(literal), Some(plus)) => {
                        pending.push((plus, tail));
                        literal
                    }
                    (Some(literal), None) => literal,
                    (None, Some(plus)) => plus,
                    (None, None) => break,
                };
            }
        }
    }

    /// Collects the matches of `topic`, as [`Self::for_each_match`] reports them.
    pub fn matches(&self, topic: &str) -> Vec<(K, V)> {
        let mut out = Vec::new();
        self.for_each_match(topic, |k, v| out.push((k.clone(), v.clone())));
        out
    }

    /// The number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cuts off the chain of nodes along `path` that became empty after a removal
    /// at its end, by removing one edge from the deepest node that stays.
    fn prune(&mut self, path: &str) {
        // The root stays; so does any node with subscribers or a second edge.
        let mut keep = 0;
        let mut node = &self.root;
        for (depth, level) in path.split('/').enumerate() {
            if depth > 0 && (node.has_subscribers() || node.edge_count() > 1) {
                keep = depth;
            }
            match node.child(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let mut node = &mut self.root;
        let mut levels = path.split('/');
        for level in levels.by_ref().take(keep) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(level) = levels.next() {
            node.remove_child(level);
        }
    }

    #[cfg(test)]
    pub(super) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Shows the size only: printing a trie of a million filters helps nobody.
impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Whether `topic` (a topic name, no wildcards) matches `filter`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    // [MQTT-4.7.2-1]
    if topic.starts_with('$') {
        if let Some("+" | "#") = filter.split('/').next() {
            return false;
        }
    }
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` is last and matches the parent level as well as any below it.
            (Some("#"), _) => return true,
            (Some(f), Some(t)) if f == "+" || f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits a filter into its path before any `#` (None for `#` alone) and whether it
/// ends in `#`.
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

fn levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|p| p.split('/'))
}

/// The first level of `rest` and what follows it (None when it was the last one).
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// A node still to visit, with the topic levels left to match below it.
type Frame<'a, K, V> = (&'a Node<K, V>, Option<&'a str>);

/// The `+` branches not yet followed while matching: a fixed array on the stack, so
/// that an ordinary publish does not allocate, and a vector for deep wildcard chains.
struct Pending<'a, K, V> {
    inline: [Frame<'a, K, V>; INLINE_PENDING],
    len: usize,
    spill: Vec<Frame<'a, K, V>>,
}

impl<'a, K, V> Pending<'a, K, V> {
    /// `filler` only initialises unused slots.
    fn new(filler: &'a Node<K, V>) -> Self {
        Pending {
            inline: [(filler, None); INLINE_PENDING],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: Frame<'a, K, V>) {
        if self.len < INLINE_PENDING {
            self.inline[self.len] = frame;
            self.len += 1;
        } else {
            self.spill.push(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame<'a, K, V>> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            exact: Subscribers::Small(Vec::new()),
            hash: Subscribers::Small(Vec::new()),
        }
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if level == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.entry(level.into()).or_default()
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level);
        }
    }

    fn edge_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }

    fn has_subscribers(&self) -> bool {
        !self.exact.is_empty() || !self.hash.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.has_subscribers() && self.edge_count() == 0
    }
}

impl<K, V> Node<K, V> {
    fn detach_children(&mut self, out: &mut Vec<Node<K, V>>) {
        out.extend(self.children.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

/// Dropping iteratively: the derived, recursive drop of a chain of tens of thousands
/// of nodes (one filter with that many levels) would overflow the stack.
impl<K, V> Drop for Node<K, V> {
    fn drop(&mut self) {
        let mut orphans = Vec::new();
        self.detach_children(&mut orphans);
        while let Some(mut orphan) = orphans.pop() {
            orphan.detach_children(&mut orphans);
        }
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subscribers::Small(entries) => {
                if let Some((_, slot)) = entries.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(slot, value));
                }
                if entries.len() < SMALL_MAX {
                    entries.push((key, value));
                } else {
                    let mut map: HashMap<K, V> = entries.drain(..).collect();
                    map.insert(key, value);
                    *self = Subscribers::Large(map);
                }
                None
            }
            Subscribers::Large(map) => map.insert(key, value),
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Subscribers::Small(entries) => {
                let index = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.swap_remove(index).1)
            }
            Subscribers::Large(map) => {
                let removed = map.remove(key)?;
                // Back to a vector well below the threshold (so that a set hovering
                // around it does not convert on every change): a shrunken map keeps
                // its buckets, and matching would iterate over all of them.
                if map.len() <= SMALL_MAX / 2 {
                    *self = Subscribers::Small(map.drain().collect());
                }
                Some(removed)
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Subscribers::Small(entries) => entries.is_empty(),
            Subscribers::Large(map) => map.is_empty(),
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn for_each(&self, f: &mut impl FnMut(&K, &V)) {
        match self {
            Subscribers::Small(entries) => entries.iter().for_each(|(k, v)| f(k, v)),
            Subscribers::Large(map) => map.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

#[cfg(test)]
#[path = "trie_tests.rs"]
mod tests;
