//! `starling_raft_fsync_seconds`: the histogram of this node's Raft fsyncs,
//! read from the storage's own counters at each scrape.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};
use starling_storage::timing::{TimingsSnapshot, BOUNDS};

const NAME: &str = "starling_raft_fsync_seconds";
const HELP: &str = "How long each fsync of the Raft log and its metadata took";

pub(crate) struct FsyncHistogram {
    node: starling_cluster::Node,
    desc: Desc,
}

impl FsyncHistogram {
    pub(crate) fn new(node: starling_cluster::Node) -> prometheus::Result<FsyncHistogram> {
        let desc = Desc::new(NAME.into(), HELP.into(), Vec::new(), Default::default())?;
        Ok(FsyncHistogram { node, desc })
    }
}

impl Collector for FsyncHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![family(&self.node.fsync_times())]
    }
}

/// The Prometheus histogram of `times`: cumulative buckets, count and sum.
fn family(times: &TimingsSnapshot) -> MetricFamily {
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(BOUNDS.len());
    for (bound, count) in BOUNDS.iter().zip(&times.buckets) {
        cumulative += count;
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(times.count);
    histogram.set_sample_sum(times.sum_seconds);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name(NAME.into());
    family.set_help(HELP.into());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn the_histogram_is_cumulative_with_count_and_sum() {
        let mut buckets = vec![0; BOUNDS.len() + 1];
        buckets[0] = 2;
        buckets[5] = 1;
        buckets[BOUNDS.len()] = 1;
        let times = TimingsSnapshot {
            buckets,
            count: 4,
            sum_seconds: 2.5,
        };
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&[family(&times)], &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("# TYPE starling_raft_fsync_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_bucket{le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_bucket{le=\"0.005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_bucket{le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_sum 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_raft_fsync_seconds_count 4\n"),
            "{text}"
        );
    }
}
