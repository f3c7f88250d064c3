//! Topic matching (MQTT 3.1.1 section 4.7, unchanged in 5.0): the subscription index
//! that every publish is matched against, and a one-filter matcher for retained
//! messages.
//!
//! Filters reaching this module are already validated (`#` only as the last level,
//! wildcards only as whole levels); shared-subscription prefixes (`$share/group/`)
//! are stripped by the caller.

mod trie;

#[cfg(test)]
mod naive;

pub use trie::{filter_matches, SubscriptionTrie};
