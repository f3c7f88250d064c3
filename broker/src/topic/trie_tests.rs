use super::*;

/// A trie with one subscriber per filter, keyed by the filter itself, so that a
/// match reads as the list of filters that matched.
fn trie(filters: &[&str]) -> SubscriptionTrie<String, u8> {
    let mut trie = SubscriptionTrie::new();
    for filter in filters {
        trie.insert(filter, filter.to_string(), 0);
    }
    trie
}

fn matching(trie: &SubscriptionTrie<String, u8>, topic: &str) -> Vec<String> {
    let mut found: Vec<String> = trie.matches(topic).into_iter().map(|(k, _)| k).collect();
    found.sort();
    found
}

#[test]
fn mqtt_4_7_2_1_one_trie_mixes_dollar_and_wildcard_filters() {
    let trie = trie(&["#", "+/+", "$SYS/#", "$SYS/+", "$SYS/uptime"]);
    assert_eq!(
        matching(&trie, "$SYS/uptime"),
        ["$SYS/#", "$SYS/+", "$SYS/uptime"]
    );
    assert_eq!(matching(&trie, "sys/uptime"), ["#", "+/+"]);
}

#[test]
fn every_matching_filter_is_reported_once() {
    let trie = trie(&[
        "sport/tennis/player1",
        "sport/tennis/+",
        "sport/+/player1",
        "sport/#",
        "+/+/+",
        "#",
        "sport/tennis",
        "sport/tennis/player1/#",
        "sport/tennis/player2",
    ]);
    assert_eq!(
        matching(&trie, "sport/tennis/player1"),
        [
            "#",
            "+/+/+",
            "sport/#",
            "sport/+/player1",
            "sport/tennis/+",
            "sport/tennis/player1",
            "sport/tennis/player1/#",
        ]
    );
    assert!(matching(&trie, "$SYS/tennis/player1").is_empty());
}

#[test]
fn a_key_on_overlapping_filters_is_reported_per_filter() {
    let mut trie = SubscriptionTrie::new();
    trie.insert("a/+", "c1", 1);
    trie.insert("a/b", "c1", 2);
    trie.insert("a/b", "c2", 0);
    let mut found = trie.matches("a/b");
    found.sort();
    assert_eq!(found, [("c1", 1), ("c1", 2), ("c2", 0)]);
}

#[test]
fn insert_replaces_and_returns_the_previous_value() {
    let mut trie = SubscriptionTrie::new();
    assert_eq!(trie.insert("a/#", "c1", 0), None);
    assert_eq!(trie.insert("a/#", "c1", 2), Some(0));
    assert_eq!(trie.len(), 1);
    assert_eq!(trie.matches("a/x"), [("c1", 2)]);
}

#[test]
fn remove_returns_the_value_once() {
    let mut trie = SubscriptionTrie::new();
    trie.insert("a/+", "c1", 1);
    assert_eq!(trie.remove("a/+", &"c2"), None);
    assert_eq!(trie.remove("a/#", &"c1"), None);
    assert_eq!(trie.remove("a", &"c1"), None);
    assert_eq!(trie.remove("a/+/b", &"c1"), None);
    assert_eq!(trie.remove("a/+", &"c1"), Some(1));
    assert_eq!(trie.remove("a/+", &"c1"), None);
    assert!(trie.is_empty());
    assert!(trie.matches("a/b").is_empty());
}

#[test]
fn remove_prunes_nodes_left_empty() {
    let mut trie = SubscriptionTrie::new();
    trie.insert("a/b/c/d", 1, ());
    trie.insert("a/+/+/#", 1, ());
    trie.insert("#", 1, ());
    assert_eq!(trie.node_count(), 7);
    trie.remove("a/b/c/d", &1);
    assert_eq!(trie.node_count(), 4, "the literal chain below a goes");
    trie.remove("a/+/+/#", &1);
    assert_eq!(trie.node_count(), 1, "only the root is left");
    trie.remove("#", &1);
    assert_eq!(trie.node_count(), 1);
    assert!(trie.is_empty());
}

#[test]
fn remove_keeps_nodes_still_in_use() {
    let mut trie = SubscriptionTrie::new();
    trie.insert("a/b", 1, ());
    trie.insert("a/b", 2, ());
    trie.insert("a/b/c", 1, ());
    trie.insert("a/b/#", 1, ());
    trie.remove("a/b/c", &1);
    assert_eq!(trie.node_count(), 3);
    trie.remove("a/b", &1);
    assert_eq!(trie.node_count(), 3, "a/b still has a subscriber and a #");
    trie.remove("a/b/#", &1);
    assert_eq!(trie.node_count(), 3, "a/b still has a subscriber");
    trie.remove("a/b", &2);
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn len_counts_filter_key_pairs() {
    let mut trie = SubscriptionTrie::new();
    assert!(trie.is_empty());
    trie.insert("a", 1, ());
    trie.insert("a", 2, ());
    trie.insert("a", 2, ());
    trie.insert("a/#", 1, ());
    trie.insert("#", 1, ());
    assert_eq!(trie.len(), 4);
    trie.remove("a", &2);
    trie.remove("a", &2);
    assert_eq!(trie.len(), 3);
    assert!(!trie.is_empty());
}

#[test]
fn large_subscriber_sets_switch_to_a_map_and_back() {
    let mut trie = SubscriptionTrie::new();
    let count = 3 * SMALL_MAX as u32;
    for key in 0..count {
        assert_eq!(trie.insert("fan/out", key, key), None);
    }
    assert_eq!(trie.insert("fan/out", 7, 70), Some(7));
    let mut found = trie.matches("fan/out");
    found.sort();
    assert_eq!(found.len(), count as usize);
    assert_eq!(found[7], (7, 70));
    for key in 1..count {
        assert_eq!(
            trie.remove("fan/out", &key),
            Some(if key == 7 { 70 } else { key })
        );
    }
    assert_eq!(trie.matches("fan/out"), [(0, 0)]);
    assert_eq!(trie.insert("fan/out", 0, 1), Some(0));
    assert_eq!(trie.len(), 1);
}

#[test]
fn more_pending_plus_branches_than_fit_inline() {
    // Every literal node along the topic also has a `+` child, so the walk holds
    // one pending branch per level.
    let levels = INLINE_PENDING + 8;
    let mut trie = SubscriptionTrie::new();
    for depth in 0..=levels {
        let filter: Vec<&str> = std::iter::repeat_n("a", depth).chain(["+", "#"]).collect();
        trie.insert(&filter.join("/"), depth, ());
    }
    let topic = vec!["a"; levels + 1].join("/");
    let mut found: Vec<usize> = trie.matches(&topic).into_iter().map(|(k, _)| k).collect();
    found.sort();
    assert_eq!(found, (0..=levels).collect::<Vec<_>>());
}

#[test]
fn very_deep_filters_do_not_exhaust_the_stack() {
    // Near the 65,535-byte limit on a filter: one level per two bytes.
    let depth = 30_000;
    let literal = vec!["a"; depth].join("/");
    let plus = vec!["+"; depth].join("/");
    let mut trie = SubscriptionTrie::new();
    trie.insert(&literal, 1, ());
    trie.insert(&plus, 2, ());
    trie.insert(&format!("{literal}/#"), 3, ());
    let mut found: Vec<i32> = trie.matches(&literal).into_iter().map(|(k, _)| k).collect();
    found.sort();
    assert_eq!(found, [1, 2, 3]);
    assert!(filter_matches(&plus, &literal));
    assert_eq!(trie.remove(&plus, &2), Some(()));
    assert_eq!(trie.node_count(), depth + 1);
    trie.insert(&plus, 2, ());
    // Dropping the trie with both chains in place must not recurse either.
    drop(trie);
}
