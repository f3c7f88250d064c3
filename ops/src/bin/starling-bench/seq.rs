//! Per-stream sequence accounting on the receiving side: which messages arrived, which
//! never did, which arrived twice and which arrived late.
//!
//! A stream is one (publisher, topic) pair. Publishers number their messages 0, 1, 2,
//! ...; a subscriber keeps one [`SeqTracker`] per stream. Missing numbers are kept as
//! ranges, so that a run which loses a million QoS 0 messages in a row costs one entry
//! rather than a million.

use std::collections::BTreeMap;

/// What one stream, or the sum of many, looked like.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqCounts {
    /// Distinct sequence numbers received.
    pub received: u64,
    /// Numbers that never arrived: gaps, plus the tail missing against the publisher's
    /// final count when that count is known.
    pub lost: u64,
    /// Numbers received more than once.
    pub dup: u64,
    /// Numbers that arrived after a higher one (and filled a gap).
    pub reordered: u64,
}

impl std::ops::AddAssign for SeqCounts {
    fn add_assign(&mut self, other: SeqCounts) {
        self.received += other.received;
        self.lost += other.lost;
        self.dup += other.dup;
        self.reordered += other.reordered;
    }
}

/// Sequence state of one stream.
#[derive(Debug, Default)]
pub struct SeqTracker {
    /// The next number that would be in order: every number below it was either
    /// received or is in `missing`.
    next: u64,
    /// Gaps not yet filled, as `start -> end` (end exclusive), non-overlapping.
    missing: BTreeMap<u64, u64>,
    received: u64,
    dup: u64,
    reordered: u64,
}

impl SeqTracker {
    /// Records one received number.
    pub fn record(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            self.received += 1;
        } else if seq > self.next {
            self.missing.insert(self.next, seq);
            self.next = seq + 1;
            self.received += 1;
        } else if self.take_missing(seq) {
            self.reordered += 1;
            self.received += 1;
        } else {
            self.dup += 1;
        }
    }

    /// Removes `seq` from the gap that holds it; false if no gap does (a duplicate).
    fn take_missing(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        true
    }

    /// True when every number below `sent` has arrived.
    pub fn complete(&self, sent: u64) -> bool {
        self.next >= sent && self.missing.range(..sent).next().is_none()
    }

    /// The counts, judged against the publisher's final count when it is known
    /// (`sent`), or against the highest number seen otherwise.
    pub fn counts(&self, sent: Option<u64>) -> SeqCounts {
        let gaps: u64 = self.missing.iter().map(|(start, end)| end - start).sum();
        let tail = sent.map_or(0, |sent| sent.saturating_sub(self.next));
        SeqCounts {
            received: self.received,
            lost: gaps + tail,
            dup: self.dup,
            reordered: self.reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.record(s);
        }
        t
    }

    #[test]
    fn in_order_stream_has_nothing_to_report() {
        let t = track(&[0, 1, 2, 3]);
        assert_eq!(
            t.counts(Some(4)),
            SeqCounts {
                received: 4,
                ..SeqCounts::default()
            }
        );
        assert!(t.complete(4));
    }

    #[test]
    fn gaps_count_as_lost() {
        let t = track(&[0, 3, 4, 9]);
        let c = t.counts(None);
        assert_eq!((c.received, c.lost, c.dup, c.reordered), (4, 2 + 4, 0, 0));
        assert!(!t.complete(10));
    }

    #[test]
    fn missing_tail_counts_as_lost_when_the_final_count_is_known() {
        let t = track(&[0, 1]);
        assert_eq!(t.counts(Some(5)).lost, 3);
        assert_eq!(t.counts(None).lost, 0);
        assert!(!t.complete(5));
    }

    #[test]
    fn late_arrival_fills_its_gap_and_counts_as_reordered() {
        let t = track(&[0, 2, 4, 1, 3]);
        let c = t.counts(Some(5));
        assert_eq!((c.received, c.lost, c.dup, c.reordered), (5, 0, 0, 2));
        assert!(t.complete(5));
    }

    #[test]
    fn filling_the_middle_of_a_gap_splits_it() {
        let t = track(&[0, 10, 5]);
        let c = t.counts(Some(11));
        assert_eq!((c.received, c.lost, c.reordered), (3, 8, 1));
    }

    #[test]
    fn repeats_count_as_dup_whether_in_order_or_late() {
        let t = track(&[0, 1, 1, 3, 2, 2, 0]);
        let c = t.counts(Some(4));
        assert_eq!((c.received, c.lost, c.dup, c.reordered), (4, 0, 3, 1));
    }

    #[test]
    fn stream_that_does_not_start_at_zero_lost_its_head() {
        let c = track(&[2, 3]).counts(Some(4));
        assert_eq!((c.received, c.lost), (2, 2));
    }

    #[test]
    fn counts_add_up() {
        let mut total = SeqCounts::default();
        total += track(&[0, 2]).counts(Some(3));
        total += track(&[0, 0]).counts(Some(1));
        assert_eq!(
            total,
            SeqCounts {
                received: 3,
                lost: 1,
                dup: 1,
                reordered: 0
            }
        );
    }
}
