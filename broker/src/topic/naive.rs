//! Conformance tests of topic matching: a reference matcher written as plainly as
//! possible, the examples and rules of MQTT 3.1.1 section 4.7 checked against all
//! three matchers, and property tests that hold the trie and [`filter_matches`] to
//! the reference.
//!
//! The reference states the rule differently from the real code (count the levels,
//! then compare them pairwise) so that a shared misreading of the spec is less likely
//! to hide in both.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::{filter_matches, SubscriptionTrie};

/// Whether `topic` matches `filter`, straight from MQTT 3.1.1 section 4.7.
fn naive_matches(filter: &str, topic: &str) -> bool {
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    // [MQTT-4.7.2-1]
    if topic[0].starts_with('$') && (filter[0] == "+" || filter[0] == "#") {
        return false;
    }
    let (fixed, multi_level) = match filter.split_last() {
        Some((&"#", fixed)) => (fixed, true),
        _ => (&filter[..], false),
    };
    let levels_fit = if multi_level {
        topic.len() >= fixed.len()
    } else {
        topic.len() == fixed.len()
    };
    levels_fit && fixed.iter().zip(&topic).all(|(f, t)| *f == "+" || f == t)
}

/// Levels chosen so that filters and topics collide often: repeated literals, an
/// empty level, wildcards, and a `$` level (special only in first position).
const FILTER_LEVELS: &[&str] = &["a", "b", "", "+", "$x"];
const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$x"];

fn filter(max_levels: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..=max_levels),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
}

fn topic(max_levels: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=max_levels)
        .prop_map(|levels| levels.join("/"))
}

/// Every topic of up to `max_levels` levels over [`TOPIC_LEVELS`].
fn all_topics(max_levels: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut current: Vec<String> = TOPIC_LEVELS.iter().map(|l| l.to_string()).collect();
    for _ in 0..max_levels {
        all.extend(current.iter().cloned());
        current = current
            .iter()
            .flat_map(|t| TOPIC_LEVELS.iter().map(move |l| format!("{t}/{l}")))
            .collect();
    }
    all
}

/// The matches the naive matcher finds among `(filter, key, value)` entries, sorted.
fn expected<'a>(
    entries: impl IntoIterator<Item = (&'a String, u8, u16)>,
    topic: &str,
) -> Vec<(u8, u16)> {
    let mut found: Vec<(u8, u16)> = entries
        .into_iter()
        .filter(|(filter, _, _)| naive_matches(filter, topic))
        .map(|(_, key, value)| (key, value))
        .collect();
    found.sort_unstable();
    found
}

fn sorted_matches(trie: &SubscriptionTrie<u8, u16>, topic: &str) -> Vec<(u8, u16)> {
    let mut found = trie.matches(topic);
    found.sort_unstable();
    found
}

/// The nodes a pruned trie holds for these filters: the root and one per distinct
/// filter prefix, `#` excluded (its subscribers live on its parent).
fn expected_node_count<'a>(filters: impl IntoIterator<Item = &'a String>) -> usize {
    let mut prefixes = HashSet::new();
    for filter in filters {
        let levels: Vec<&str> = filter.split('/').filter(|l| *l != "#").collect();
        for end in 1..=levels.len() {
            prefixes.insert(levels[..end].to_vec());
        }
    }
    1 + prefixes.len()
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u8, u16),
    Remove(String, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (filter(3), 0..3u8, any::<u16>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
        (filter(3), 0..3u8).prop_map(|(f, k)| Op::Remove(f, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_matches_agree_with_naive_matcher(
        subscriptions in prop::collection::vec((filter(5), 0..3u8, any::<u16>()), 0..40),
        topics in prop::collection::vec(topic(6), 1..10),
    ) {
        let mut trie = SubscriptionTrie::new();
        let mut model = HashMap::new();
        for (filter, key, value) in &subscriptions {
            trie.insert(filter, *key, *value);
            model.insert((filter.clone(), *key), *value);
        }
        prop_assert_eq!(trie.len(), model.len());
        for topic in &topics {
            let want = expected(model.iter().map(|((f, k), v)| (f, *k, *v)), topic);
            prop_assert_eq!(sorted_matches(&trie, topic), want, "topic {:?}", topic);
        }
    }

    #[test]
    fn filter_matches_agrees_with_naive_matcher(filter in filter(5), topic in topic(6)) {
        prop_assert_eq!(
            filter_matches(&filter, &topic),
            naive_matches(&filter, &topic),
            "filter {:?} topic {:?}", filter, topic
        );
    }

    #[test]
    fn insert_and_remove_agree_with_a_vec_model(ops in prop::collection::vec(op(), 0..80)) {
        let mut trie = SubscriptionTrie::new();
        let mut model: Vec<(String, u8, u16)> = Vec::new();
        for op in &ops {
            match op {
                Op::Insert(filter, key, value) => {
                    let at = model.iter().position(|(f, k, _)| f == filter && k == key);
                    let previous = match at {
                        Some(i) => Some(std::mem::replace(&mut model[i].2, *value)),
                        None => {
                            model.push((filter.clone(), *key, *value));
                            None
                        }
                    };
                    prop_assert_eq!(trie.insert(filter, *key, *value), previous, "{:?}", op);
                }
                Op::Remove(filter, key) => {
                    let at = model.iter().position(|(f, k, _)| f == filter && k == key);
                    let removed = at.map(|i| model.swap_remove(i).2);
                    prop_assert_eq!(trie.remove(filter, key), removed, "{:?}", op);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
        }
        prop_assert_eq!(
            trie.node_count(),
            expected_node_count(model.iter().map(|(f, _, _)| f)),
            "nodes left behind"
        );
        for topic in all_topics(4) {
            let want = expected(model.iter().map(|(f, k, v)| (f, *k, *v)), &topic);
            prop_assert_eq!(sorted_matches(&trie, &topic), want, "topic {:?}", topic);
        }
    }
}

/// Checks `filter_matches`, a trie holding `filter` alone, and the reference matcher
/// against the answer the spec gives.
fn assert_matches(filter: &str, topic: &str, expected: bool) {
    assert_eq!(
        filter_matches(filter, topic),
        expected,
        "filter_matches({filter:?}, {topic:?})"
    );
    let mut trie = SubscriptionTrie::new();
    trie.insert(filter, (), ());
    let found = !trie.matches(topic).is_empty();
    assert_eq!(found, expected, "trie with {filter:?} matching {topic:?}");
    assert_eq!(
        naive_matches(filter, topic),
        expected,
        "naive_matches({filter:?}, {topic:?})"
    );
}

#[test]
fn mqtt_4_7_1_2_hash_matches_parent_level() {
    assert_matches("sport/#", "sport", true);
    assert_matches("sport/#", "sport/", true);
    assert_matches("sport/#", "sports", false);
    assert_matches("a/b/#", "a", false);
}

#[test]
fn mqtt_4_7_1_2_hash_matches_any_number_of_child_levels() {
    let filter = "sport/tennis/player1/#";
    assert_matches(filter, "sport/tennis/player1", true);
    assert_matches(filter, "sport/tennis/player1/ranking", true);
    assert_matches(filter, "sport/tennis/player1/score/wimbledon", true);
    assert_matches(filter, "sport/tennis/player2", false);
    assert_matches(filter, "sport/tennis", false);
}

#[test]
fn mqtt_4_7_1_2_lone_hash_matches_every_topic() {
    for topic in ["a", "/", "", "a/b/c", "//", "sport/tennis/player1"] {
        assert_matches("#", topic, true);
    }
}

#[test]
fn mqtt_4_7_1_3_plus_matches_exactly_one_level() {
    assert_matches("sport/tennis/+", "sport/tennis/player1", true);
    assert_matches("sport/tennis/+", "sport/tennis/player2", true);
    assert_matches("sport/tennis/+", "sport/tennis/player1/ranking", false);
    assert_matches("sport/+/player1", "sport/tennis/player1", true);
    assert_matches("sport/+/player1", "sport/player1", false);
    assert_matches("+", "a", true);
    assert_matches("+", "a/b", false);
}

#[test]
fn mqtt_4_7_1_3_plus_matches_an_empty_level() {
    assert_matches("sport/+", "sport", false);
    assert_matches("sport/+", "sport/", true);
    assert_matches("a/+/b", "a//b", true);
    assert_matches("+", "", true);
}

#[test]
fn mqtt_4_7_1_3_leading_separator_makes_an_empty_first_level() {
    assert_matches("+/+", "/finance", true);
    assert_matches("/+", "/finance", true);
    assert_matches("+", "/finance", false);
}

#[test]
fn mqtt_4_7_1_3_plus_combined_with_hash() {
    assert_matches("+/tennis/#", "sport/tennis", true);
    assert_matches("+/tennis/#", "sport/tennis/player1/ranking", true);
    assert_matches("+/tennis/#", "sport/golf", false);
    assert_matches("+/#", "a", true);
}

#[test]
fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() {
    assert_matches("#", "$SYS/broker/uptime", false);
    assert_matches("+/monitor/Clients", "$SYS/monitor/Clients", false);
    assert_matches("+", "$SYS", false);
    assert_matches("+/#", "$SYS", false);
    // Only the first level is special.
    assert_matches("a/#", "a/$SYS", true);
    assert_matches("a/+", "a/$SYS", true);
}

#[test]
fn mqtt_4_7_2_1_dollar_topics_matched_by_literal_first_level() {
    assert_matches("$SYS/#", "$SYS/broker/uptime", true);
    assert_matches("$SYS/#", "$SYS", true);
    assert_matches("$SYS/monitor/+", "$SYS/monitor/Clients", true);
    assert_matches("$SYS", "$SYS", true);
}

#[test]
fn mqtt_4_7_3_4_no_normalisation_of_case_spaces_or_separators() {
    assert_matches("ACCOUNTS", "Accounts", false);
    assert_matches("Accounts payable", "Accounts payable", true);
    assert_matches("Accounts payable", "Accounts  payable", false);
    assert_matches("finance", "/finance", false);
    assert_matches("a/b", "a//b", false);
    assert_matches("a//b", "a//b", true);
    assert_matches("a/", "a", false);
    assert_matches("a/+", "a", false);
}
