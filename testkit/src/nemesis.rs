//! A nemesis for a running `Cluster`: at random, bounded intervals drawn from
//! a seeded generator it inflicts one fault at a time, heals it, waits until
//! every node is ready again, and writes each fault into the `history`.
//!
//! The faults: kill -9 and restart; SIGSTOP and SIGCONT; a node cut off from
//! the others (a minority of one against a majority); a bridge (two nodes
//! that cannot hear each other, both still hearing the third); one-way loss
//! (packets from one node to another dropped, the other direction kept); and
//! delay. `tc netem` needs the `sch_netem` kernel module, which a container
//! often lacks, so delay is made by the process instead: the node is stopped
//! and continued in short cycles, and everything it sends or receives waits
//! up to a cycle.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::history::{Event, Recorder};

/// A small xorshift64* generator: the same seed gives the same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero, and nearby seeds far apart.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0), from the better high bits.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next_u64() >> 32) % n
    }

    /// True with `percent` per cent chance.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration in `lo..=hi`, to the millisecond.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ms = lo.as_millis() as u64;
        let hi_ms = hi.as_millis() as u64;
        Duration::from_millis(lo_ms + self.below(hi_ms.saturating_sub(lo_ms) + 1))
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// `items` in a random order.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Pause,
    Isolate,
    Bridge,
    OneWay,
    Delay,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Isolate,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Delay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Isolate => "isolate",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::Delay => "delay",
        }
    }
}

/// How long faults last and how long the cluster rests between them.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub gap: (Duration, Duration),
    pub length: (Duration, Duration),
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            gap: (Duration::from_millis(500), Duration::from_secs(4)),
            length: (Duration::from_secs(1), Duration::from_secs(6)),
        }
    }
}

/// How long every node has to be ready again after a fault is healed.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(45);

/// Inflicts faults until `until`; returns how many of each kind. Every fault
/// is healed and the cluster ready on every node when it returns.
pub async fn run(
    cluster: &mut Cluster,
    recorder: &Recorder,
    rng: &mut Rng,
    schedule: Schedule,
    until: Instant,
) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    // Faults are drawn from a bag holding each kind once, refilled in a new
    // order when empty, so that even a short run sees every kind.
    let mut bag: Vec<Fault> = Vec::new();
    loop {
        tokio::time::sleep(rng.between(schedule.gap.0, schedule.gap.1)).await;
        let length = rng.between(schedule.length.0, schedule.length.1);
        if Instant::now() + length >= until {
            return counts;
        }
        if bag.is_empty() {
            bag = Fault::ALL.to_vec();
            rng.shuffle(&mut bag);
        }
        let fault = bag.pop().expect("refilled");
        let mut ids = cluster.ids();
        rng.shuffle(&mut ids);
        let (a, b) = (ids[0], ids[1]);
        let nodes = match fault {
            Fault::Bridge | Fault::OneWay => vec![a, b],
            _ => vec![a],
        };
        eprintln!("nemesis: {} on {nodes:?} for {length:?}", fault.name());
        recorder.record(Event::FaultStart {
            t: recorder.now(),
            kind: fault.name().to_owned(),
            nodes,
        });
        *counts.entry(fault.name()).or_default() += 1;
        match fault {
            Fault::Kill => {
                cluster.kill9(a);
                tokio::time::sleep(length).await;
                cluster.restart(a).await;
            }
            Fault::Pause => {
                cluster.sigstop(a);
                tokio::time::sleep(length).await;
                cluster.sigcont(a);
            }
            Fault::Isolate => {
                let cut = cluster.cut_off(a);
                tokio::time::sleep(length).await;
                cut.heal();
            }
            Fault::Bridge => {
                let cut = cluster.drop_links(&[(a, b), (b, a)]);
                tokio::time::sleep(length).await;
                cut.heal();
            }
            Fault::OneWay => {
                let cut = cluster.drop_links(&[(a, b)]);
                tokio::time::sleep(length).await;
                cut.heal();
            }
            Fault::Delay => {
                let end = Instant::now() + length;
                while Instant::now() < end {
                    cluster.sigstop(a);
                    tokio::time::sleep(
                        rng.between(Duration::from_millis(30), Duration::from_millis(200)),
                    )
                    .await;
                    cluster.sigcont(a);
                    tokio::time::sleep(
                        rng.between(Duration::from_millis(30), Duration::from_millis(120)),
                    )
                    .await;
                }
            }
        }
        wait_all_ready(cluster).await;
        recorder.record(Event::FaultEnd {
            t: recorder.now(),
            kind: fault.name().to_owned(),
        });
    }
}

/// Waits until every node answers 200 on `/readyz`; panics after
/// `RECOVERY_TIMEOUT`: a healed cluster must come back.
pub async fn wait_all_ready(cluster: &Cluster) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    for id in cluster.ids() {
        while cluster.readyz(id).await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "node {id} not ready within {RECOVERY_TIMEOUT:?} after the faults were healed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let picks: Vec<u64> = (0..20).map(|_| a.below(6)).collect();
        assert_eq!(picks, (0..20).map(|_| b.below(6)).collect::<Vec<_>>());
        assert!(picks.iter().any(|p| *p != picks[0]), "{picks:?}");
        let d = a.between(Duration::from_millis(5), Duration::from_millis(9));
        assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(9));
    }
}
