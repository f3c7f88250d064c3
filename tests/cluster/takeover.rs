//! Two connections claim one client id at the same moment: whichever Connect
//! commits last owns the session, the other is closed, and the owner gets
//! every message acknowledged to a publisher afterwards, also when both
//! connections are on one node and the loser closes after the winner attached.

use std::time::Duration;

use rumqttc::QoS;
use tokio::time::Instant;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::Cluster;
use starling_testkit::raw::{self, Connect, Raw, Read};

const ROUNDS: u64 = 100;

/// Waits until one of `a` and `b` is closed by the broker; returns the other.
async fn survivor(mut a: Raw, mut b: Raw, round: u64) -> Raw {
    let deadline = Instant::now() + raw::WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "round {round}: both connections of one client id still open"
        );
        if matches!(a.read(Duration::from_millis(20)).await, Read::Closed) {
            return b;
        }
        if matches!(b.read(Duration::from_millis(20)).await, Read::Closed) {
            return a;
        }
    }
}

#[tokio::test]
async fn racing_connects_leave_one_owner_that_gets_every_acknowledged_message() {
    let cluster = Cluster::start_fast(3).await;
    let mut publisher = Client::connect(client::options(cluster.mqtt(3), "t-pub")).await;
    for round in 0..ROUNDS {
        // Even rounds race across nodes 1 and 2, odd rounds on one node.
        let (first, second) = if round % 2 == 0 {
            (1, 2)
        } else {
            (1 + round % 3, 1 + round % 3)
        };
        let connect = Connect::v311(&format!("t-race-{round}"));
        let (a, b) = tokio::join!(
            Raw::try_connect_with(cluster.mqtt(first), &connect),
            Raw::try_connect_with(cluster.mqtt(second), &connect),
        );
        let mut winner = match (a, b) {
            (Ok((a, _, 0)), Ok((b, _, 0))) => survivor(a, b, round).await,
            // Closed before its CONNACK: it lost before it was answered.
            (Ok((a, _, 0)), _) => a,
            (_, Ok((b, _, 0))) => b,
            other => panic!(
                "round {round}: neither connection accepted: {:?}",
                other.0.err()
            ),
        };
        let topic = format!("t/race/{round}");
        winner.subscribe(1, &[(topic.as_str(), 1)]).await;
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, format!("m{round}"))
            .await;
        let got = winner.expect_publish(raw::WAIT).await;
        assert_eq!(got.topic, topic, "round {round}");
        assert_eq!(
            &got.payload[..],
            format!("m{round}").as_bytes(),
            "round {round}"
        );
        winner.send(&raw::puback(got.pkid)).await;
        winner.send(&raw::DISCONNECT).await;
    }
}
