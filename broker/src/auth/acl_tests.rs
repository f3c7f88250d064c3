use super::*;

fn acl(text: &str) -> AclFile {
    match AclFile::parse(text) {
        Ok(acl) => acl,
        Err(e) => panic!("{e}"),
    }
}

/// The syntax error of `text`, with its line.
fn syntax_error(text: &str) -> (usize, SyntaxError) {
    match AclFile::parse(text) {
        Err(AclError::Syntax { line, error }) => (line, error),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// What a client may do on a topic: "", "r", "w" or "rw".
fn rights(acl: &AclFile, client_id: &str, username: Option<&str>, topic: &str) -> &'static str {
    match (
        acl.check_receive(client_id, username, topic),
        acl.check_publish(client_id, username, topic),
    ) {
        (false, false) => "",
        (true, false) => "r",
        (false, true) => "w",
        (true, true) => "rw",
    }
}

// --- Blocks ---------------------------------------------------------------

#[test]
fn rules_before_the_first_user_line_are_for_anonymous_clients() {
    let acl = acl("topic read public/#\nuser alice\ntopic alice/#\n");
    assert_eq!(rights(&acl, "c1", None, "public/news"), "r");
    assert_eq!(rights(&acl, "c1", None, "alice/x"), "");
    // A client with a username never gets the anonymous rules.
    assert_eq!(rights(&acl, "c1", Some("alice"), "public/news"), "");
    assert_eq!(rights(&acl, "c1", Some("bob"), "public/news"), "");
}

#[test]
fn user_blocks_apply_to_their_user_only() {
    let acl = acl("\
user alice
topic readwrite alice/#
user bob
topic read alice/status
topic write bob/#
");
    assert_eq!(rights(&acl, "c1", Some("alice"), "alice/status"), "rw");
    assert_eq!(rights(&acl, "c1", Some("alice"), "bob/x"), "");
    assert_eq!(rights(&acl, "c2", Some("bob"), "alice/status"), "r");
    assert_eq!(rights(&acl, "c2", Some("bob"), "alice/other"), "");
    assert_eq!(rights(&acl, "c2", Some("bob"), "bob/x/y"), "w");
    // Usernames are compared exactly; unknown users and anonymous clients get
    // nothing here.
    assert_eq!(rights(&acl, "c3", Some("Alice"), "alice/status"), "");
    assert_eq!(rights(&acl, "c3", Some("carol"), "alice/status"), "");
    assert_eq!(rights(&acl, "c3", None, "alice/status"), "");
}

#[test]
fn two_blocks_of_one_user_are_merged() {
    let acl = acl("user alice\ntopic read a\nuser bob\ntopic b\nuser alice\ntopic write c\n");
    assert_eq!(rights(&acl, "c", Some("alice"), "a"), "r");
    assert_eq!(rights(&acl, "c", Some("alice"), "c"), "w");
    assert_eq!(rights(&acl, "c", Some("alice"), "b"), "");
}

#[test]
fn a_username_may_contain_spaces() {
    let acl = acl("user  Alice Smith  \ntopic a\n");
    assert_eq!(rights(&acl, "c", Some("Alice Smith"), "a"), "rw");
    assert_eq!(rights(&acl, "c", Some("Alice"), "a"), "");
}

// --- Access words -----------------------------------------------------------

#[test]
fn access_words() {
    let acl = acl("\
topic read r/#
topic write w/#
topic readwrite rw/#
topic both/#
topic deny rw/denied
");
    assert_eq!(rights(&acl, "c", None, "r/x"), "r");
    assert_eq!(rights(&acl, "c", None, "w/x"), "w");
    assert_eq!(rights(&acl, "c", None, "rw/x"), "rw");
    assert_eq!(
        rights(&acl, "c", None, "both/x"),
        "rw",
        "no access word is readwrite"
    );
    assert_eq!(rights(&acl, "c", None, "rw/denied"), "");
    assert_eq!(rights(&acl, "c", None, "other"), "", "no matching rule");
    assert!(acl.check("c", None, "r/x", Access::Read));
    assert!(!acl.check("c", None, "r/x", Access::Write));
}

#[test]
fn read_and_write_rules_add_up() {
    let acl = acl("topic read a/#\ntopic write a/b\n");
    assert_eq!(rights(&acl, "c", None, "a/b"), "rw");
    assert_eq!(rights(&acl, "c", None, "a/c"), "r");
}

#[test]
fn one_word_after_topic_is_the_filter_even_an_access_word() {
    // As Mosquitto: the access word is optional, so a lone word is the filter.
    let acl = acl("topic read\ntopic deny\n");
    assert_eq!(rights(&acl, "c", None, "read"), "rw");
    assert_eq!(rights(&acl, "c", None, "deny"), "rw");
}

// --- Deny -------------------------------------------------------------------

#[test]
fn deny_wins_whatever_the_order() {
    for text in [
        "topic readwrite a/#\ntopic deny a/secret/#\n",
        "topic deny a/secret/#\ntopic readwrite a/#\n",
    ] {
        let acl = acl(text);
        assert_eq!(rights(&acl, "c", None, "a/public"), "rw", "{text}");
        assert_eq!(rights(&acl, "c", None, "a/secret"), "", "{text}");
        assert_eq!(rights(&acl, "c", None, "a/secret/x"), "", "{text}");
    }
}

#[test]
fn a_deny_pattern_wins_over_a_user_rule_and_the_other_way_round() {
    let acl = acl("\
user alice
topic readwrite #
topic deny private/alice
pattern deny devices/%c/config
pattern readwrite private/%u
");
    assert_eq!(
        rights(&acl, "dev1", Some("alice"), "devices/dev2/config"),
        "rw"
    );
    assert_eq!(
        rights(&acl, "dev1", Some("alice"), "devices/dev1/config"),
        ""
    );
    // The pattern grants private/alice, the user block denies it.
    assert_eq!(rights(&acl, "dev1", Some("alice"), "private/alice"), "");
    assert_eq!(rights(&acl, "dev1", Some("bob"), "private/bob"), "rw");
    assert_eq!(rights(&acl, "dev1", Some("bob"), "private/alice"), "");
}

#[test]
fn deny_only_refuses() {
    let acl = acl("topic deny a\n");
    assert_eq!(rights(&acl, "c", None, "a"), "");
    assert_eq!(rights(&acl, "c", None, "b"), "");
}

// --- Patterns ---------------------------------------------------------------

#[test]
fn patterns_substitute_client_id_and_username() {
    let acl = acl("\
pattern readwrite clients/%c/#
pattern read users/%u/inbox/#
pattern write devices/%c-%u/status
pattern read 100%/%cpu/%c
");
    assert_eq!(rights(&acl, "dev1", None, "clients/dev1/x"), "rw");
    assert_eq!(rights(&acl, "dev1", None, "clients/dev1"), "rw");
    assert_eq!(rights(&acl, "dev1", None, "clients/dev2/x"), "");
    assert_eq!(
        rights(&acl, "dev1", Some("alice"), "users/alice/inbox/1"),
        "r"
    );
    assert_eq!(rights(&acl, "dev1", Some("alice"), "users/bob/inbox/1"), "");
    // Anywhere in a level, as Mosquitto substitutes them.
    assert_eq!(
        rights(&acl, "dev1", Some("alice"), "devices/dev1-alice/status"),
        "w"
    );
    assert_eq!(
        rights(&acl, "dev1", Some("alice"), "devices/dev1-bob/status"),
        ""
    );
    // `%` before anything but `c` or `u` is itself: "100%/" then "%c" then "pu/".
    assert_eq!(rights(&acl, "dev1", None, "100%/dev1pu/dev1"), "r");
    // Patterns apply to every client, with or without a user block.
    let with_users = self::acl("user alice\ntopic a\npattern clients/%c/#\n");
    assert_eq!(rights(&with_users, "x", Some("alice"), "clients/x/1"), "rw");
    assert_eq!(rights(&with_users, "x", Some("bob"), "clients/x/1"), "rw");
    assert_eq!(rights(&with_users, "x", None, "clients/x/1"), "rw");
}

#[test]
fn a_username_pattern_never_applies_without_a_username() {
    let acl = acl("pattern read users/%u/#\npattern read clients/%c/%u\n");
    assert_eq!(rights(&acl, "c", None, "users//x"), "");
    assert_eq!(rights(&acl, "c", None, "users/%u/x"), "");
    assert_eq!(rights(&acl, "c", None, "clients/c/"), "");
    assert_eq!(
        rights(&acl, "c", Some(""), "users//x"),
        "r",
        "an empty username is one"
    );
    assert_eq!(rights(&acl, "c", Some("u"), "clients/c/u"), "r");
    // Nor does a deny pattern with %u.
    let deny = self::acl("pattern deny %u/#\npattern #\n");
    assert_eq!(rights(&deny, "c", None, "x/y"), "rw");
    assert_eq!(rights(&deny, "c", Some("x"), "x/y"), "");
    assert_eq!(rights(&deny, "c", Some("z"), "x/y"), "rw");
}

#[test]
fn wildcards_in_a_username_or_client_id_never_match_a_pattern() {
    let acl = acl("\
pattern readwrite users/%u/#
pattern readwrite clients/%c/#
pattern read public/#
");
    for username in ["#", "+", "a+b", "x#", "a/#"] {
        for topic in [
            "users/a/x",
            "users/x",
            "users/#/x",
            "public/news",
            "clients/c/x",
        ] {
            assert_eq!(
                rights(&acl, "c", Some(username), topic),
                "",
                "{username} {topic}"
            );
        }
        assert!(!acl.check_subscribe("c", Some(username), "users/a/#"));
        assert!(!acl.check_subscribe("c", Some(username), "public/#"));
    }
    for client_id in ["#", "+", "dev+", "a/#"] {
        for topic in ["clients/x/y", "clients/dev/y", "users/u/x", "public/news"] {
            assert_eq!(
                rights(&acl, client_id, Some("u"), topic),
                "",
                "{client_id} {topic}"
            );
            assert_eq!(
                rights(&acl, client_id, None, topic),
                "",
                "{client_id} {topic}"
            );
        }
    }
    // A normal client still gets the patterns.
    assert_eq!(rights(&acl, "c", Some("u"), "users/u/x"), "rw");
    assert_eq!(rights(&acl, "c", Some("u"), "public/news"), "r");
}

#[test]
fn a_client_with_wildcards_keeps_its_user_block_and_the_deny_patterns() {
    let acl = acl("\
user a#
topic readwrite data/#
pattern deny data/private/#
pattern deny data/%u/#
");
    assert_eq!(rights(&acl, "c", Some("a#"), "data/x"), "rw");
    assert_eq!(rights(&acl, "c", Some("a#"), "data/private/x"), "");
    // `data/%u/#` taken literally is `data/a#/#`, which no topic matches; it does
    // not become `data/a#` nor `data/#`.
    assert_eq!(rights(&acl, "c", Some("a#"), "data/a/x"), "rw");
}

#[test]
fn a_slash_in_a_client_id_is_substituted_as_is() {
    // As Mosquitto (since 1.4.13): `/` is allowed in substitutions.
    let acl = acl("pattern clients/%c/#\n");
    assert_eq!(rights(&acl, "bob/x", None, "clients/bob/x/1"), "rw");
    assert_eq!(rights(&acl, "bob/x", None, "clients/bob/1"), "");
}

// --- $ topics ---------------------------------------------------------------

#[test]
fn mqtt_4_7_2_1_wildcards_at_the_first_level_do_not_match_dollar_topics() {
    let acl = acl("topic #\ntopic +/uptime\ntopic +/+/#\n");
    assert_eq!(rights(&acl, "c", None, "a/uptime"), "rw");
    assert_eq!(rights(&acl, "c", None, "$SYS/uptime"), "");
    assert_eq!(rights(&acl, "c", None, "$SYS/broker/uptime"), "");
    assert_eq!(rights(&acl, "c", None, "$share"), "");
    assert!(!acl.check_subscribe("c", None, "$SYS/#"));
    assert!(acl.check_subscribe("c", None, "#"));
}

#[test]
fn dollar_rules_match_dollar_topics() {
    let acl = acl("topic read $SYS/#\ntopic $app/+/state\n");
    assert_eq!(rights(&acl, "c", None, "$SYS/broker/uptime"), "r");
    assert_eq!(rights(&acl, "c", None, "$SYS"), "r");
    assert_eq!(rights(&acl, "c", None, "$app/x/state"), "rw");
    assert_eq!(rights(&acl, "c", None, "SYS/broker"), "");
    assert!(acl.check_subscribe("c", None, "$SYS/broker/#"));
    assert!(acl.check_subscribe("c", None, "$app/+/state"));
    assert!(!acl.check_subscribe("c", None, "#"));
}

#[test]
fn a_deny_of_everything_leaves_dollar_topics_alone() {
    let acl = acl("topic read $SYS/#\ntopic deny #\n");
    assert_eq!(rights(&acl, "c", None, "$SYS/uptime"), "r");
    // `pattern write $SYS/broker/connection/%c/state` from Mosquitto's example.
    let bridge = self::acl("pattern write $SYS/broker/connection/%c/state\n");
    assert_eq!(
        rights(&bridge, "br1", None, "$SYS/broker/connection/br1/state"),
        "w"
    );
    assert_eq!(
        rights(&bridge, "br1", None, "$SYS/broker/connection/br2/state"),
        ""
    );
}

// --- Topic names ------------------------------------------------------------

#[test]
fn invalid_topic_names_are_refused() {
    let acl = acl("topic #\n");
    assert!(acl.check_publish("c", None, "a/b"));
    for topic in ["", "a/+", "+", "#", "a/#", "a\0b"] {
        assert!(!acl.check_publish("c", None, topic), "{topic:?}");
        assert!(!acl.check_receive("c", None, topic), "{topic:?}");
    }
}

#[test]
fn the_empty_file_refuses_everything() {
    for text in ["", "\n\n", "# nothing\n"] {
        let acl = acl(text);
        assert!(acl.is_empty());
        assert_eq!(rights(&acl, "c", None, "a"), "");
        assert_eq!(rights(&acl, "c", Some("u"), "a"), "");
        assert!(!acl.check_subscribe("c", None, "a"));
    }
    assert_eq!(AclFile::default(), acl(""));
    assert!(!self::acl("user u\ntopic a").is_empty());
}

// --- Subscriptions ----------------------------------------------------------

#[test]
fn a_subscription_needs_a_read_rule_covering_its_filter() {
    let acl = acl("\
topic read a/#
topic read x/b
topic write w/#
topic read s/+
topic deny a/secret/#
");
    assert!(acl.check_subscribe("c", None, "a/#"));
    assert!(acl.check_subscribe("c", None, "a/+/c"));
    assert!(acl.check_subscribe("c", None, "a/b"));
    assert!(acl.check_subscribe("c", None, "a"));
    assert!(acl.check_subscribe("c", None, "x/b"));
    assert!(
        !acl.check_subscribe("c", None, "x/+"),
        "x/b does not cover x/+"
    );
    assert!(!acl.check_subscribe("c", None, "x/#"));
    assert!(!acl.check_subscribe("c", None, "#"));
    assert!(!acl.check_subscribe("c", None, "+/b"));
    assert!(!acl.check_subscribe("c", None, "w/#"), "write is not read");
    assert!(acl.check_subscribe("c", None, "s/+"));
    assert!(
        !acl.check_subscribe("c", None, "s/#"),
        "s/# matches s itself"
    );
    // A deny covering the filter refuses it...
    assert!(!acl.check_subscribe("c", None, "a/secret/#"));
    assert!(!acl.check_subscribe("c", None, "a/secret/+/x"));
    assert!(!acl.check_subscribe("c", None, "a/secret"));
    // ... one covering only part of it does not: deliveries are checked one by one.
    assert!(acl.check_subscribe("c", None, "a/+"));
    assert!(!acl.check_receive("c", None, "a/secret"));
}

#[test]
fn subscriptions_through_patterns_and_user_blocks() {
    let acl = acl("user alice\ntopic read alice/#\npattern read clients/%c/#\n");
    assert!(acl.check_subscribe("c1", Some("alice"), "alice/+/x"));
    assert!(acl.check_subscribe("c1", Some("alice"), "clients/c1/#"));
    assert!(!acl.check_subscribe("c1", Some("alice"), "clients/+/#"));
    assert!(!acl.check_subscribe("c1", Some("bob"), "alice/+/x"));
    assert!(acl.check_subscribe("c1", Some("bob"), "clients/c1/+"));
}

#[test]
fn shared_and_invalid_subscriptions() {
    let acl = acl("topic read a/#\n");
    assert!(acl.check_subscribe("c", None, "$share/g/a/+/c"));
    assert!(!acl.check_subscribe("c", None, "$share/g/b"));
    assert!(!acl.check_subscribe("c", None, "$share/g"));
    assert!(!acl.check_subscribe("c", None, "$share//a/b"));
    for filter in ["", "a/#/b", "a/b#", "a/+b", "a/\0"] {
        assert!(!acl.check_subscribe("c", None, filter), "{filter:?}");
    }
}

#[test]
fn filter_covers_examples() {
    let yes = [
        ("a/#", "a/+/c"),
        ("a/#", "a/#"),
        ("a/#", "a"),
        ("a/#", "a/b/c/d"),
        ("a/+", "a/b"),
        ("a/+", "a/+"),
        ("+/+", "a/+"),
        ("#", "#"),
        ("#", "a/+/#"),
        ("+/#", "#"),
        ("#", "+/#"),
        ("$SYS/#", "$SYS/+/x"),
        ("a/+/#", "a/b/#"),
    ];
    let no = [
        ("a/b", "a/+"),
        ("a/+", "a/#"),
        ("a", "a/#"),
        ("a/+/#", "a/#"),
        ("a/b", "a/b/c"),
        ("a/b/c", "a/b"),
        ("#", "$SYS/#"),
        ("#", "$SYS"),
        ("+/#", "$SYS/x"),
        ("+/x", "$SYS/x"),
        ("a/#", "#"),
        ("+/+/#", "#"),
        ("+", "#"),
        ("a/b", "+/b"),
    ];
    for (rule, filter) in yes {
        assert!(filter_covers(rule, filter), "{rule} covers {filter}");
    }
    for (rule, filter) in no {
        assert!(
            !filter_covers(rule, filter),
            "{rule} does not cover {filter}"
        );
    }
}

/// `filter_covers(rule, filter)` is exactly "every topic matching `filter`
/// matches `rule`", checked over every small filter against every small topic
/// (levels the filters do not name, such as `z`, stand for all others).
#[test]
fn filter_covers_agrees_with_matching_every_topic() {
    fn all(levels: &[&str], max: usize, valid: impl Fn(&[&str]) -> bool) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec![]];
        let mut result = Vec::new();
        for _ in 0..max {
            let mut next = Vec::new();
            for prefix in &out {
                for level in levels {
                    let mut v = prefix.clone();
                    v.push(level);
                    if valid(&v) {
                        result.push(v.join("/"));
                    }
                    next.push(v);
                }
            }
            out = next;
        }
        result
    }
    let filters = all(&["a", "$s", "+", "#"], 3, |levels| {
        validate_topic_filter(&levels.join("/")).is_ok()
    });
    let topics = all(&["a", "b", "$s", ""], 4, |levels| {
        validate_topic_name(&levels.join("/")).is_ok()
    });
    assert!(filters.len() > 40 && topics.len() > 300);
    for rule in &filters {
        for filter in &filters {
            let expected = topics
                .iter()
                .all(|t| !filter_matches(filter, t) || filter_matches(rule, t));
            assert_eq!(filter_covers(rule, filter), expected, "{rule} vs {filter}");
        }
    }
}

// --- Parsing ----------------------------------------------------------------

#[test]
fn comments_blank_lines_and_whitespace() {
    let acl = acl("\
# a comment

   # an indented comment
\t
  topic read a/#   \r
\tuser\talice\t
topic\twrite\tb
");
    assert_eq!(rights(&acl, "c", None, "a/x"), "r");
    assert_eq!(rights(&acl, "c", Some("alice"), "b"), "w");
}

#[test]
fn crlf_files_and_a_byte_order_mark() {
    let acl = acl("\u{feff}topic read a\r\nuser bob\r\ntopic b\r\n");
    assert_eq!(rights(&acl, "c", None, "a"), "r");
    assert_eq!(rights(&acl, "c", Some("bob"), "b"), "rw");
}

#[test]
fn a_filter_may_contain_spaces_after_the_access_word() {
    let acl = acl("topic read rooms/lobby chat\ntopic   deny   rooms/lobby chat/x y  \n");
    assert_eq!(rights(&acl, "c", None, "rooms/lobby chat"), "r");
    assert_eq!(rights(&acl, "c", None, "rooms/lobby"), "");
    assert_eq!(rights(&acl, "c", None, "rooms/lobby chat/x y"), "");
    let pattern = self::acl("pattern write my room/%c/a b\n");
    assert_eq!(rights(&pattern, "c 1", None, "my room/c 1/a b"), "w");
    // Without the access word, the first word would be taken for one.
    assert_eq!(
        syntax_error("topic rooms/lobby chat\n"),
        (1, SyntaxError::UnknownAccess("rooms/lobby".into()))
    );
}

#[test]
fn mosquittos_example_file() {
    let acl = acl("\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
");
    assert_eq!(rights(&acl, "c", None, "$SYS/broker/load"), "r");
    assert_eq!(rights(&acl, "c", Some("roger"), "foo/bar"), "rw");
    assert_eq!(rights(&acl, "c", Some("roger"), "$SYS/broker/load"), "");
    assert_eq!(
        rights(&acl, "c", Some("x"), "$SYS/broker/connection/c/state"),
        "w"
    );
}

#[test]
fn syntax_errors_name_their_line() {
    let cases: &[(&str, usize, SyntaxError)] = &[
        (
            "topic a\nfrobnicate x\n",
            2,
            SyntaxError::UnknownKeyword("frobnicate".into()),
        ),
        (
            "# c\n\nTopic a\n",
            3,
            SyntaxError::UnknownKeyword("Topic".into()),
        ),
        ("user\n", 1, SyntaxError::MissingUsername),
        ("\n\nuser   \t\n", 3, SyntaxError::MissingUsername),
        ("topic\n", 1, SyntaxError::MissingFilter),
        ("pattern  \n", 1, SyntaxError::MissingFilter),
        (
            "topic a\n\ntopic rw a/b\n",
            3,
            SyntaxError::UnknownAccess("rw".into()),
        ),
        (
            "topic READ a\n",
            1,
            SyntaxError::UnknownAccess("READ".into()),
        ),
        (
            "user u\ntopic read a/#/b\n",
            2,
            SyntaxError::InvalidFilter {
                filter: "a/#/b".into(),
                error: TopicError::MisplacedMultiLevelWildcard,
            },
        ),
        (
            "pattern read a/%c+\n",
            1,
            SyntaxError::InvalidFilter {
                filter: "a/%c+".into(),
                error: TopicError::MisplacedSingleLevelWildcard,
            },
        ),
        (
            "#\n  #x\ntopic a#\n",
            3,
            SyntaxError::InvalidFilter {
                filter: "a#".into(),
                error: TopicError::MisplacedMultiLevelWildcard,
            },
        ),
    ];
    for (text, line, error) in cases {
        assert_eq!(syntax_error(text), (*line, error.clone()), "{text:?}");
    }
    let err = AclFile::parse("topic a\nuser\n").unwrap_err();
    assert_eq!(err.line(), Some(2));
    assert_eq!(
        err.to_string(),
        "ACL file line 2: missing username after 'user'"
    );
    let err = AclFile::parse("topic a\n\ntopic bad a\n").unwrap_err();
    assert!(err.to_string().starts_with("ACL file line 3: "), "{err}");
    assert!(err.to_string().contains("\"bad\""), "{err}");
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, "user alice\ntopic read a/#\n").unwrap();
    let acl = AclFile::load(&path).unwrap();
    assert!(acl.check_receive("c", Some("alice"), "a/b"));

    let missing = dir.path().join("missing");
    let err = AclFile::load(&missing).unwrap_err();
    assert!(matches!(err, AclError::Io { ref path, .. } if *path == missing));
    assert_eq!(err.line(), None);
    assert!(err.to_string().contains("missing"), "{err}");

    std::fs::write(&path, "topic a\nbogus\n").unwrap();
    assert_eq!(AclFile::load(&path).unwrap_err().line(), Some(2));
}
