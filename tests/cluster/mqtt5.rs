//! MQTT 5 across nodes: what a message carries besides its payload reaches
//! subscribers of other nodes, by every path (tests/mqtt5.py, paho-mqtt 2).

use starling_testkit::cluster::Cluster;
use starling_testkit::script;

#[tokio::test]
async fn properties_cross_nodes_live_retained_and_in_wills() {
    let cluster = Cluster::start(3).await;
    script::run("cross_node_properties", &[cluster.mqtt(1), cluster.mqtt(2)]).await;
}
