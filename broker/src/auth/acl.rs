//! Access control lists in Mosquitto's `acl_file` format (mosquitto.conf(5)),
//! parsed and evaluated. Nothing here does IO except [`AclFile::load`], which
//! reads the file.
//!
//! ```text
//! # Before any `user` line: rules for clients without a username.
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! topic read rooms/lobby chat        # after an access word, the rest is the filter
//!
//! # Rules for every client: %c is its client id, %u its username.
//! pattern write devices/%c/status
//! pattern read users/%u/inbox/#
//! ```
//!
//! The lines, each trimmed of leading and trailing whitespace:
//!
//! - `user <username>` starts the block of that user (the rest of the line is the
//!   name, spaces included). Two blocks of one user are merged.
//! - `topic [read|write|readwrite|deny] <filter>` is a rule of the current user
//!   block or, before the first `user` line, of anonymous clients (those that
//!   connected without a username). Without an access word the rule grants
//!   `readwrite`. As in Mosquitto, a line with one word after `topic` is a rule for
//!   that word as a filter (`topic read` grants readwrite on the topic `read`), and
//!   a filter containing spaces needs the access word: everything after it is the
//!   filter.
//! - `pattern [read|write|readwrite|deny] <filter>` is a rule for every client,
//!   where `%c` stands for its client id and `%u` for its username. A pattern with
//!   `%u` does not apply to a client without a username. Mosquitto's manual asks
//!   for a placeholder to be a whole level, but its code substitutes them
//!   anywhere (`devices/%c-data`), and so does this one; any other `%` is itself.
//! - Blank lines and lines starting with `#` are ignored.
//!
//! Anything else, an unknown access word or an invalid topic filter is an error
//! naming the line ([`AclError::Syntax`]).
//!
//! # Evaluation
//!
//! The rules that apply to a client are those of its user block (or of the
//! anonymous block, for a client without a username) and every pattern. Then:
//!
//! 1. if a `deny` rule matches, access is refused;
//! 2. otherwise access is granted if a rule matches and grants it (`read` for
//!    [`Access::Read`], `write` for [`Access::Write`], `readwrite` for both);
//! 3. otherwise (no rule matches) access is refused. An empty file refuses all.
//!
//! Matching follows MQTT (section 4.7): `+` matches one level, `#` any number of
//! trailing levels including none, and a filter starting with a wildcard does not
//! match a topic starting with `$` [MQTT-4.7.2-1], so `topic read #` grants nothing
//! under `$SYS`; `topic read $SYS/#` does.
//!
//! A client id or username containing `+` or `#` could turn a pattern into a
//! wider filter (a client named `#` matching `devices/%c/#` everywhere). As
//! Mosquitto does since CVE-2017-7650, such a client gets nothing from any
//! allowing pattern (its user block still applies). Deny patterns still apply to
//! it, except those substituting the offending value: taken literally, as it is,
//! that value yields a level no valid topic has, so they could match nothing. A
//! `/` in a client id or username is substituted as is, as in Mosquitto: with
//! `clients/%c/#`, a client id `bob/x` reaches `clients/bob/x/#`, inside the space
//! of client `bob`. Use `%u` with authenticated usernames where that matters.
//!
//! # Differences from Mosquitto 2
//!
//! - Mosquitto tries the user block first, denies before allows, and returns at
//!   the first match, so an allowing user rule wins over a denying pattern. Here
//!   any matching `deny`, user rule or pattern, wins.
//! - Mosquitto's own ACL file does not restrict subscribing, only what a client
//!   publishes and receives. [`AclFile::check_subscribe`] does; see there.
//! - Comments may be indented and words may be separated by tabs as well as
//!   spaces (Mosquitto takes `#` only in the first column, spaces only).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use starling_proto::mqtt::topic::{
    shared_subscription, validate_topic_filter, validate_topic_name, TopicError,
};

use crate::topic::filter_matches;

/// What a client asks to do on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive messages: be sent a PUBLISH, or subscribe.
    Read,
    /// Publish (including a will message).
    Write,
}

/// The access word of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    Read,
    Write,
    ReadWrite,
    /// Refuses both, whatever other rules grant.
    Deny,
}

impl Grant {
    fn parse(word: &str) -> Option<Grant> {
        match word {
            "read" => Some(Grant::Read),
            "write" => Some(Grant::Write),
            "readwrite" => Some(Grant::ReadWrite),
            "deny" => Some(Grant::Deny),
            _ => None,
        }
    }

    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grant::Read => "read",
            Grant::Write => "write",
            Grant::ReadWrite => "readwrite",
            Grant::Deny => "deny",
        })
    }
}

/// A `topic` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: String,
}

/// A `pattern` rule, its filter cut at each `%c` and `%u`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    grant: Grant,
    /// The filter as written.
    text: String,
    pieces: Vec<Piece>,
    uses_client_id: bool,
    uses_username: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    ClientId,
    Username,
}

impl Pattern {
    fn new(grant: Grant, text: &str) -> Pattern {
        // As Mosquitto: from left to right, `%c` and `%u` are placeholders and any
        // other `%` is itself.
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let placeholder = match (c, chars.clone().next()) {
                ('%', Some('c')) => Piece::ClientId,
                ('%', Some('u')) => Piece::Username,
                _ => {
                    literal.push(c);
                    continue;
                }
            };
            chars.next();
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(placeholder);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Pattern {
            grant,
            text: text.to_owned(),
            uses_client_id: pieces.contains(&Piece::ClientId),
            uses_username: pieces.contains(&Piece::Username),
            pieces,
        }
    }

    /// The filter this pattern stands for with `client`, written into `buf` when it
    /// has placeholders; `None` when it does not apply to `client` (`%u` without a
    /// username).
    fn filter<'a>(&'a self, client: &Client<'_>, buf: &'a mut String) -> Option<&'a str> {
        if !self.uses_client_id && !self.uses_username {
            return Some(&self.text);
        }
        if self.uses_username && client.username.is_none() {
            return None;
        }
        buf.clear();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => buf.push_str(text),
                Piece::ClientId => buf.push_str(client.id),
                Piece::Username => buf.push_str(client.username.unwrap_or_default()),
            }
        }
        Some(buf)
    }

    /// Whether this pattern substitutes a value of `client` containing a wildcard.
    fn substitutes_wildcard(&self, client: &Client<'_>) -> bool {
        (self.uses_client_id && has_wildcard(client.id))
            || (self.uses_username && client.username.is_some_and(has_wildcard))
    }
}

/// Who is asking.
struct Client<'a> {
    id: &'a str,
    username: Option<&'a str>,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['+', '#'])
}

/// A parsed ACL file. [`Default`] is the empty file, which refuses everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    /// `topic` rules before the first `user` line.
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Pattern>,
}

impl AclFile {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        // None until the first `user` line: the anonymous block.
        let mut user: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let syntax = |error| AclError::Syntax {
                line: index + 1,
                error,
            };
            let line = if index == 0 {
                line.strip_prefix('\u{feff}').unwrap_or(line)
            } else {
                line
            };
            let line = trim(line);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(syntax(SyntaxError::MissingUsername));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (first, after) = split_word(rest);
                    let (grant, filter) = match (first, after) {
                        ("", _) => return Err(syntax(SyntaxError::MissingFilter)),
                        (filter, "") => (Grant::ReadWrite, filter),
                        (word, filter) => match Grant::parse(word) {
                            Some(grant) => (grant, filter),
                            None => return Err(syntax(SyntaxError::UnknownAccess(word.into()))),
                        },
                    };
                    if let Err(error) = validate_topic_filter(filter) {
                        return Err(syntax(SyntaxError::InvalidFilter {
                            filter: filter.to_owned(),
                            error,
                        }));
                    }
                    if keyword == "pattern" {
                        acl.patterns.push(Pattern::new(grant, filter));
                    } else {
                        let rules = match &user {
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                            None => &mut acl.anonymous,
                        };
                        rules.push(Rule {
                            grant,
                            filter: filter.to_owned(),
                        });
                    }
                }
                other => return Err(syntax(SyntaxError::UnknownKeyword(other.into()))),
            }
        }
        Ok(acl)
    }

    /// Reads and parses the ACL file at `path` (UTF-8).
    pub fn load(path: impl AsRef<Path>) -> Result<AclFile, AclError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_owned(),
            source,
        })?;
        AclFile::parse(&text)
    }

    /// True when the file has no rule at all (and so refuses everything).
    pub fn is_empty(&self) -> bool {
        self.anonymous.is_empty() && self.users.is_empty() && self.patterns.is_empty()
    }

    /// May this client publish to `topic`? A topic name that is not valid (empty,
    /// or with a wildcard) is refused.
    pub fn check_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.check(client_id, username, topic, Access::Write)
    }

    /// May this client be sent a message published to `topic`?
    pub fn check_receive(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.check(client_id, username, topic, Access::Read)
    }

    /// May this client `access` `topic`, a topic name (not a filter)? See the
    /// [module documentation](self) for the rules.
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        if validate_topic_name(topic).is_err() {
            return false;
        }
        self.decide(client_id, username, access, |filter| {
            filter_matches(filter, topic)
        })
    }

    /// May this client subscribe to `filter`? Mosquitto's ACL file does not
    /// restrict subscribing; this does, simply:
    ///
    /// the subscription is allowed if and only if a rule granting `read` (or
    /// `readwrite`) to this client covers the filter, that is, matches every topic
    /// the filter matches ([`filter_covers`]), and no `deny` rule covers it.
    ///
    /// So with `topic read a/#`, subscribing to `a/+/c` is allowed and to `#` is
    /// not; with `topic read a/b`, `a/+` is refused although it would receive
    /// `a/b`. A deny rule that covers only part of the filter does not refuse the
    /// subscription (with `topic read a/#` and `topic deny a/secret`, `a/+` is
    /// allowed): [`AclFile::check_receive`] must still filter each delivery.
    /// Coverage is per rule: rules `a` and `a/+/#` together match every topic
    /// that `a/#` matches, but neither alone does, so `a/#` is refused.
    ///
    /// A shared subscription `$share/{group}/{filter}` is checked as its `filter`.
    /// An invalid filter is refused.
    pub fn check_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let filter = match shared_subscription(filter) {
            Some(Ok((_group, inner))) => inner,
            Some(Err(_)) => return false,
            None => filter,
        };
        if validate_topic_filter(filter).is_err() {
            return false;
        }
        self.decide(client_id, username, Access::Read, |rule| {
            filter_covers(rule, filter)
        })
    }

    /// Deny wins, then any grant, else refused; `applies(rule filter)` says whether
    /// a rule concerns what is asked.
    fn decide(
        &self,
        client_id: &str,
        username: Option<&str>,
        access: Access,
        applies: impl Fn(&str) -> bool,
    ) -> bool {
        let client = Client {
            id: client_id,
            username,
        };
        let rules = match username {
            Some(name) => self.users.get(name).map(Vec::as_slice),
            None => Some(self.anonymous.as_slice()),
        };
        let mut granted = false;
        for rule in rules.unwrap_or_default() {
            if applies(&rule.filter) {
                match rule.grant {
                    Grant::Deny => return false,
                    grant => granted |= grant.allows(access),
                }
            }
        }
        // CVE-2017-7650: no allowing pattern applies to such a client.
        let dangerous = has_wildcard(client_id) || username.is_some_and(has_wildcard);
        let mut buf = String::new();
        for pattern in &self.patterns {
            match pattern.grant {
                // Taken literally, a substituted `+` or `#` makes a level that no
                // valid topic has, so the pattern matches nothing.
                Grant::Deny if pattern.substitutes_wildcard(&client) => continue,
                Grant::Deny => {}
                _ if dangerous || granted || !pattern.grant.allows(access) => continue,
                _ => {}
            }
            let Some(filter) = pattern.filter(&client, &mut buf) else {
                continue;
            };
            if applies(filter) {
                match pattern.grant {
                    Grant::Deny => return false,
                    _ => granted = true,
                }
            }
        }
        granted
    }
}

/// Whether the topic filter `rule` matches every topic name that `filter` matches
/// (both valid filters, per MQTT section 4.7): `a/#` covers `a/+/c`, `a` and
/// `a/#`; `+/#` covers `#`; `a/b` does not cover `a/+`; `#` does not cover
/// `$SYS/#` [MQTT-4.7.2-1].
pub fn filter_covers(rule: &str, filter: &str) -> bool {
    if filter == "#" {
        // Every topic not starting with `$`: one level or more.
        return rule == "#" || rule == "+/#";
    }
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (rule_levels.next(), filter_levels.next()) {
            // `#` matches whatever remains, the parent level included.
            (Some("#"), _) => return true,
            (None, None) => return true,
            // The filter matches topics with fewer levels, or more, than the rule.
            (None, Some(_)) | (Some(_), None) => return false,
            // `#` in the filter also matches its parent, which has too few levels
            // for the rest of the rule.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(r), Some(f)) if r == f && f != "+" => {}
            _ => return false,
        }
    }
}

/// Why an ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("ACL file line {line}: {error}")]
    Syntax {
        /// From 1.
        line: usize,
        error: SyntaxError,
    },
}

impl AclError {
    /// The line at fault, for a syntax error.
    pub fn line(&self) -> Option<usize> {
        match self {
            AclError::Io { .. } => None,
            AclError::Syntax { line, .. } => Some(*line),
        }
    }
}

/// What is wrong with a line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("unknown keyword {0:?} (expected user, topic or pattern)")]
    UnknownKeyword(String),
    #[error("missing username after 'user'")]
    MissingUsername,
    #[error("missing topic filter")]
    MissingFilter,
    #[error("unknown access {0:?} (expected read, write, readwrite or deny)")]
    UnknownAccess(String),
    #[error("invalid topic filter {filter:?}: {error}")]
    InvalidFilter { filter: String, error: TopicError },
}

/// ASCII whitespace, as the separators of the format (spaces and tabs, and the
/// `\r` of a CRLF file).
fn is_blank(c: char) -> bool {
    c.is_ascii_whitespace()
}

fn trim(s: &str) -> &str {
    s.trim_matches(is_blank)
}

/// The first word of `s` (already trimmed) and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(is_blank) {
        Some((word, rest)) => (word, trim(rest)),
        None => (s, ""),
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
