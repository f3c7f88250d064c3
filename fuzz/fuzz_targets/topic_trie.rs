//! The subscription trie against a matcher written plainly from MQTT 3.1.1
//! section 4.7: arbitrary inserts and removals of (filter, key) entries, and
//! for arbitrary topics the trie's matches must be exactly the entries whose
//! filter the plain matcher says matches. `filter_matches` (the one-filter
//! matcher for retained messages) must agree too.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use starling_broker::topic::{filter_matches, SubscriptionTrie};
use starling_fuzz::Counting;
use starling_proto::mqtt::topic::{validate_topic_filter, validate_topic_name};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Levels that make filters and topics collide often, a `$` level (special
/// first), an empty level and a multi-byte character.
const LEVELS: &[&str] = &["a", "b", "", "$x", "ab", "\u{e9}"];

#[derive(Debug)]
enum Op {
    Insert(String, u8, u16),
    Remove(String, u8),
    Match(String),
}

fn level(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    Ok(LEVELS[u.choose_index(LEVELS.len())?].to_owned())
}

fn path(u: &mut Unstructured, wildcards: bool) -> Result<String> {
    if u.ratio(1, 16)? {
        // Anything at all; invalid ones are skipped below.
        return u.arbitrary();
    }
    let n = u.int_in_range(1..=5)?;
    let mut levels = Vec::with_capacity(n);
    for i in 0..n {
        let choice = if wildcards { u.int_in_range(0..=4)? } else { 4 };
        levels.push(match choice {
            0 => "+".to_owned(),
            1 if i + 1 == n => "#".to_owned(),
            _ => level(u)?,
        });
    }
    Ok(levels.join("/"))
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Op> {
        Ok(match u.int_in_range(0..=3)? {
            0 | 1 => Op::Insert(path(u, true)?, u.int_in_range(0..=3)?, u.arbitrary()?),
            2 => Op::Remove(path(u, true)?, u.int_in_range(0..=3)?),
            _ => Op::Match(path(u, false)?),
        })
    }
}

/// Whether `topic` matches `filter`: split both into levels and compare them
/// one by one.
fn plain_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match `$` topics.
    if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            // `#` matches its parent level and any number of levels below.
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut trie: SubscriptionTrie<u8, u16> = SubscriptionTrie::new();
    let mut model: BTreeMap<(String, u8), u16> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(filter, key, value) => {
                if validate_topic_filter(&filter).is_err() {
                    continue;
                }
                let old = trie.insert(&filter, key, value);
                assert_eq!(old, model.insert((filter, key), value));
            }
            Op::Remove(filter, key) => {
                if validate_topic_filter(&filter).is_err() {
                    continue;
                }
                let old = trie.remove(&filter, &key);
                assert_eq!(old, model.remove(&(filter, key)));
            }
            Op::Match(topic) => {
                if validate_topic_name(&topic).is_err() {
                    continue;
                }
                let mut got = trie.matches(&topic);
                got.sort_unstable();
                let mut want: Vec<(u8, u16)> = model
                    .iter()
                    .filter(|((filter, _), _)| plain_matches(filter, &topic))
                    .map(|((_, key), value)| (*key, *value))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "matches of {topic:?} in {model:?}");
                for (filter, _) in model.keys() {
                    assert_eq!(
                        filter_matches(filter, &topic),
                        plain_matches(filter, &topic),
                        "filter_matches({filter:?}, {topic:?})"
                    );
                }
            }
        }
        assert_eq!(trie.len(), model.len());
        assert_eq!(trie.is_empty(), model.is_empty());
    }
    // Everything removed, the trie is empty again.
    for (filter, key) in model.keys() {
        assert!(trie.remove(filter, key).is_some());
    }
    assert!(trie.is_empty());
});
