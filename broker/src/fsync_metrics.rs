//! Histograms that the storage and the proposer keep in atomic buckets of
//! their own, turned into Prometheus histograms at each scrape:
//! `starling_raft_fsync_seconds` (this node's Raft fsyncs) and
//! `starling_raft_proposal_batch_commands` (commands per Raft entry).

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

const BATCH_NAME: &str = "starling_raft_proposal_batch_commands";
const BATCH_HELP: &str = "Commands carried by each Raft entry this node proposed";

pub(crate) struct BatchHistogram {
    node: starling_cluster::Node,
    desc: Desc,
}

impl BatchHistogram {
    pub(crate) fn new(node: starling_cluster::Node) -> prometheus::Result<BatchHistogram> {
        let desc = Desc::new(
            BATCH_NAME.into(),
            BATCH_HELP.into(),
            Vec::new(),
            Default::default(),
        )?;
        Ok(BatchHistogram { node, desc })
    }
}

impl Collector for BatchHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (buckets, commands) = self.node.batch_sizes();
        let bounds: Vec<f64> = starling_cluster::BATCH_BOUNDS
            .iter()
            .map(|b| *b as f64)
            .collect();
        let count = buckets.iter().sum();
        vec![histogram(
            BATCH_NAME,
            BATCH_HELP,
            &bounds,
            &buckets,
            count,
            commands as f64,
        )]
    }
}

/// The Prometheus histogram of `times`.
fn family(times: &TimingsSnapshot) -> MetricFamily {
    histogram(
        NAME,
        HELP,
        &BOUNDS,
        &times.buckets,
        times.count,
        times.sum_seconds,
    )
}

/// A Prometheus histogram from counts per bucket (not cumulative): cumulative
/// buckets, count and sum.
fn histogram(
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[u64],
    count: u64,
    sum: f64,
) -> MetricFamily {
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative += n;
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(count);
    histogram.set_sample_sum(sum);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
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
