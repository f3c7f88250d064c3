//! Topic name and topic filter validation (MQTT 3.1.1 section 4.7).
//!
//! The decoder uses these checks on every topic it reads from the wire; the broker
//! uses them on topics that reach it any other way (the admin API, configuration).
//! Matching filters against names is the subscription index's job, not this module's.

/// The longest topic a length-prefixed UTF-8 string can carry.
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why a topic name or topic filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Names and filters are at least one character long.
    #[error("topic is empty [MQTT-4.7.3-1]")]
    Empty,
    /// Names and filters fit in a length-prefixed string.
    #[error("topic is longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// U+0000 is not allowed anywhere in a topic.
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    /// A topic name (what is published to) contains `+` or `#`.
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInName,
    /// `#` appears other than as the whole of the last level.
    #[error("'#' is not the whole last level of the filter [MQTT-4.7.1-2]")]
    MisplacedMultiLevelWildcard,
    /// `+` appears other than as a whole level.
    #[error("'+' does not occupy a whole level of the filter [MQTT-4.7.1-3]")]
    MisplacedSingleLevelWildcard,
}

/// Checks a topic name: the topic of a PUBLISH or a will.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter: what SUBSCRIBE and UNSUBSCRIBE carry.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// A shared subscription's filter, `$share/{group}/{filter}` (MQTT 5 section
/// 4.8.2), split into its group and the filter it stands for; `None` for a
/// filter that is not shared. A group that is empty or holds a wildcard, or a
/// missing filter, is not a valid filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
pub fn shared_subscription(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::Empty));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(TopicError::MisplacedSingleLevelWildcard));
    }
    Some(validate_topic_filter(inner).map(|()| (group, inner)))
}

/// Whether a topic is reserved for the server (`$SYS/...` and the like): wildcards at
/// the first level do not match it [MQTT-4.7.2-1].
pub fn is_system_topic(name: &str) -> bool {
    name.starts_with('$')
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_split_into_group_and_filter() {
        assert_eq!(shared_subscription("a/b"), None);
        assert_eq!(shared_subscription("$share/g/a/+"), Some(Ok(("g", "a/+"))));
        assert!(matches!(shared_subscription("$share/g"), Some(Err(_))));
        assert!(matches!(shared_subscription("$share//a"), Some(Err(_))));
        assert!(matches!(shared_subscription("$share/g+/a"), Some(Err(_))));
        assert!(matches!(shared_subscription("$share/g/a#"), Some(Err(_))));
    }

    #[test]
    fn valid_names() {
        for name in [
            "a",
            "/",
            "a/b/c",
            "/a",
            "a/",
            "a//b",
            "$SYS/broker",
            "sport/tennis player1",
            "€/ü",
        ] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn mqtt_4_7_3_1_empty_name_and_filter_are_invalid() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_4_7_3_2_null_character_is_invalid() {
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_filter("a/\0"),
            Err(TopicError::NullCharacter)
        );
    }

    #[test]
    fn mqtt_4_7_3_3_topic_longer_than_65535_bytes_is_invalid() {
        let longest = "a".repeat(65535);
        assert_eq!(validate_topic_name(&longest), Ok(()));
        assert_eq!(validate_topic_filter(&longest), Ok(()));
        let too_long = "a".repeat(65536);
        assert_eq!(validate_topic_name(&too_long), Err(TopicError::TooLong));
        assert_eq!(validate_topic_filter(&too_long), Err(TopicError::TooLong));
    }

    #[test]
    fn mqtt_3_3_2_2_wildcards_in_topic_name_are_invalid() {
        for name in ["#", "+", "a/+/b", "a/#", "a+b", "a#"] {
            assert_eq!(
                validate_topic_name(name),
                Err(TopicError::WildcardInName),
                "{name:?}"
            );
        }
    }

    #[test]
    fn valid_filters() {
        for filter in [
            "#", "+", "+/+", "/+", "+/", "a/#", "a/+/b", "+/#", "/#", "a//b", "$SYS/#", "a/b",
        ] {
            assert_eq!(validate_topic_filter(filter), Ok(()), "{filter:?}");
        }
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_only_as_whole_last_level() {
        for filter in ["a#", "a/#/b", "#/", "##", "a/b#", "#/#"] {
            assert_eq!(
                validate_topic_filter(filter),
                Err(TopicError::MisplacedMultiLevelWildcard),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_only_as_whole_level() {
        for filter in ["a+", "+a", "a/b+/c", "++", "sport+"] {
            assert_eq!(
                validate_topic_filter(filter),
                Err(TopicError::MisplacedSingleLevelWildcard),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn system_topics_start_with_dollar() {
        assert!(is_system_topic("$SYS/broker/uptime"));
        assert!(is_system_topic("$"));
        assert!(!is_system_topic("SYS/$"));
        assert!(!is_system_topic(""));
    }
}
