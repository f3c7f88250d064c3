//! Black-box tests of a cluster: each test starts real `starling` processes on
//! free loopback ports, each with its own data directory, speaks MQTT to them
//! with independent clients (rumqttc and raw sockets), and inflicts the faults
//! a cluster exists to survive: kill -9, restarts, SIGSTOP, network partitions,
//! joins and leaves. One test loads the status page in headless chromium.
//!
//! Clusters run one at a time (see `starling_testkit::cluster`), so this
//! binary takes a few minutes.

#[path = "cluster/admin.rs"]
mod admin;
#[path = "cluster/auth.rs"]
mod auth;
#[path = "cluster/consistency.rs"]
mod consistency;
#[path = "cluster/drain.rs"]
mod drain;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/forward_metrics.rs"]
mod forward_metrics;
#[path = "cluster/large.rs"]
mod large;
#[path = "cluster/live_minority.rs"]
mod live_minority;
#[path = "cluster/membership.rs"]
mod membership;
#[path = "cluster/mqtt5.rs"]
mod mqtt5;
#[path = "cluster/nemesis.rs"]
mod nemesis;
#[path = "cluster/partitions.rs"]
mod partitions;
#[path = "cluster/quiet_logs.rs"]
mod quiet_logs;
#[path = "cluster/recovery.rs"]
mod recovery;
#[path = "cluster/resend.rs"]
mod resend;
#[path = "cluster/sessions.rs"]
mod sessions;
#[path = "cluster/shared.rs"]
mod shared;
#[path = "cluster/status.rs"]
mod status;
#[path = "cluster/sys.rs"]
mod sys;
#[path = "cluster/takeover.rs"]
mod takeover;
#[path = "cluster/tls.rs"]
mod tls;
#[path = "cluster/wills.rs"]
mod wills;
