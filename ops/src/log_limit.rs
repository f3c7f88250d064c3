//! Keeps a down peer from flooding the log. openraft logs a warning or an
//! error each time a replication or a vote to an unreachable peer fails:
//! several lines a second for as long as the peer is away. This filter lets
//! each such call site through once per [`QUIET`], and everything else
//! through untouched; the state changes (a peer silent, back, a new leader)
//! are logged once by our own code.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How long a repeated openraft warning or error stays quiet.
pub const QUIET: Duration = Duration::from_secs(60);

/// The targets whose repeats are held back.
const NOISY: &[&str] = &["openraft"];

/// A per-call-site limit on openraft's warnings and errors.
#[derive(Default)]
pub struct RepeatLimit {
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl RepeatLimit {
    /// Whether an event of `meta` is logged at `now`.
    fn admits(&self, meta: &Metadata<'_>, now: Instant) -> bool {
        if !meta.is_event()
            || *meta.level() > Level::WARN
            || !NOISY.iter().any(|t| meta.target().starts_with(t))
        {
            return true;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = meta.callsite();
        match last.get(&id) {
            Some(at) if now.duration_since(*at) < QUIET => false,
            _ => {
                last.insert(id, now);
                true
            }
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.admits(meta, Instant::now())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if NOISY.iter().any(|t| meta.target().starts_with(t)) && *meta.level() <= Level::WARN {
            // Asked at every event, so that repeats can be held back.
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::callsite::DefaultCallsite;
    use tracing::metadata::Kind;
    use tracing::{callsite, field};

    use super::*;

    macro_rules! site {
        ($name:ident, $target:expr, $level:expr) => {
            static $name: DefaultCallsite = DefaultCallsite::new(&META);
            static META: Metadata<'static> = Metadata::new(
                "event",
                $target,
                $level,
                None,
                None,
                None,
                field::FieldSet::new(&[], callsite::Identifier(&$name)),
                Kind::EVENT,
            );
        };
    }

    #[test]
    fn an_openraft_warning_repeats_once_a_minute_and_others_always() {
        mod replication {
            use super::*;
            site!(SITE, "openraft::replication", Level::WARN);
            pub fn meta() -> &'static Metadata<'static> {
                tracing::Callsite::metadata(&SITE)
            }
        }
        mod vote {
            use super::*;
            site!(SITE, "openraft::core", Level::ERROR);
            pub fn meta() -> &'static Metadata<'static> {
                tracing::Callsite::metadata(&SITE)
            }
        }
        mod ours {
            use super::*;
            site!(SITE, "starling_broker::events", Level::WARN);
            pub fn meta() -> &'static Metadata<'static> {
                tracing::Callsite::metadata(&SITE)
            }
        }
        mod info {
            use super::*;
            site!(SITE, "openraft::core", Level::INFO);
            pub fn meta() -> &'static Metadata<'static> {
                tracing::Callsite::metadata(&SITE)
            }
        }
        let limit = RepeatLimit::default();
        let t0 = Instant::now();
        assert!(limit.admits(replication::meta(), t0));
        assert!(!limit.admits(replication::meta(), t0 + Duration::from_secs(1)));
        assert!(!limit.admits(replication::meta(), t0 + Duration::from_secs(59)));
        assert!(
            limit.admits(vote::meta(), t0 + Duration::from_secs(1)),
            "per call site"
        );
        for s in 0..5 {
            let at = t0 + Duration::from_secs(s);
            assert!(
                limit.admits(ours::meta(), at),
                "our own warnings are never held"
            );
            assert!(limit.admits(info::meta(), at), "nor openraft's info");
        }
        assert!(limit.admits(replication::meta(), t0 + QUIET));
    }
}
