//! Exactly once for a publisher that behaves as real persistent-session
//! clients do: when its node stops, it resumes its session on another node at
//! once and sends again what it had in flight (PUBLISH with DUP, or PUBREL).
//! Whatever the stopped node had still in the pipeline for the old connection
//! must not publish a second copy once the new node has released the id.

use std::time::Duration;

use starling_testkit::cluster::Cluster;
use starling_testkit::subscribers::Subscriber;
use starling_testkit::traffic::{assert_delivered_in_order, wait_until, Live, Publisher};

const TOPIC: &str = "r/q2";
/// Longest wait for a publisher to get a given number of new acks.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(15);
/// Longest wait, once publishing stopped, for every acknowledged message.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

async fn resending_qos2_publisher_loses_and_repeats_nothing(stop: Stop) {
    let mut cluster = Cluster::start_fast(3).await;
    let everyone = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let subscriber = Subscriber::start(&everyone, 2, "r-sub", &[(TOPIC, 2)]).await;
    // The publisher knows nodes 1 and 3: when node 1 stops it resumes on 3.
    let its_nodes = Live::new([(1, cluster.mqtt(1)), (3, cluster.mqtt(3))]);
    let mut publisher = Publisher::start_resending(&its_nodes, 1, "r-pub", TOPIC, 2);
    publisher
        .wait_progress(100, PROGRESS_DEADLINE, "before the stop")
        .await;

    its_nodes.remove(1);
    everyone.remove(1);
    match stop {
        Stop::Term => {
            cluster.sigterm(1).await;
        }
        Stop::Kill => cluster.kill9(1),
    }
    publisher
        .wait_progress(
            200,
            PROGRESS_DEADLINE,
            &format!("after {stop:?} of its node"),
        )
        .await;

    let acked = publisher.finish().await;
    let delivered = wait_until(DELIVERY_DEADLINE, || subscriber.done_waiting(TOPIC, &acked)).await;
    eprintln!("every acknowledged message delivered in time: {delivered}");
    // Give a late duplicate the chance to show up before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = subscriber.finish().await;
    assert_delivered_in_order("r-sub", &deliveries, TOPIC, &acked);
    let duplicates = deliveries.duplicates(TOPIC);
    assert!(
        duplicates.is_empty(),
        "QoS 2 messages delivered more than once after {stop:?} (sequence number -> times): \
         {duplicates:?}"
    );
}

#[tokio::test]
async fn qos2_exactly_once_when_a_resending_publisher_moves_after_sigterm() {
    resending_qos2_publisher_loses_and_repeats_nothing(Stop::Term).await;
}

#[tokio::test]
async fn qos2_exactly_once_when_a_resending_publisher_moves_after_kill9() {
    resending_qos2_publisher_loses_and_repeats_nothing(Stop::Kill).await;
}
