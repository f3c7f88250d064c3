//! The forwarding streams against a real gRPC server on loopback: order, exactly-once
//! handling across a restart of the receiver's listener, and the ways a send fails.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use starling_cluster::{
    forward_service, ForwardError, ForwardHandler, Forwarder, Hold, MAX_FRAME_BYTES,
};
use starling_proto::cluster::forward_server::{Forward, ForwardServer};
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;

/// An upper bound for any one condition a test waits on.
const DEADLINE: Duration = Duration::from_secs(20);
const FRAME_BYTES: usize = 256;

/// Records every frame handled, in order.
struct Recorder {
    /// One lock around the journal; held only inside `handle` and by readers.
    frames: Mutex<Vec<(u64, u64)>>,
    /// How many frames were handled, for waiters.
    count: watch::Sender<usize>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            frames: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        })
    }

    /// The (sender, frame index) of every frame handled, in order.
    fn frames(&self) -> Vec<(u64, u64)> {
        self.frames.lock().expect("recorder lock").clone()
    }

    async fn wait_for(&self, n: usize) {
        let mut count = self.count.subscribe();
        tokio::time::timeout(DEADLINE, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} frames not handled in time"))
            .expect("recorder alive");
    }
}

impl Recorder {
    fn record(&self, from: u64, frame: &Bytes) {
        let index = u64::from_be_bytes(frame[..8].try_into().expect("frame index"));
        let mut frames = self.frames.lock().expect("recorder lock");
        frames.push((from, index));
        self.count.send_replace(frames.len());
    }
}

impl ForwardHandler for Recorder {
    fn handle(&self, from: u64, frame: Bytes) -> Option<Hold> {
        self.record(from, &frame);
        None
    }
}

/// A frame of `FRAME_BYTES` carrying its index.
fn frame(index: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME_BYTES);
    b.put_u64(index);
    b.resize(FRAME_BYTES, 0xa5);
    b.freeze()
}

/// A gRPC server on its own runtime and thread, so that stopping it drops every
/// connection at once, as a crash would.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `service` on 127.0.0.1:`port` (0: any free port).
    fn start<T: Forward>(port: u16, service: ForwardServer<T>) -> Server {
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = bind(port).await;
                bound_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("test waits for the address");
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener));
                tokio::select! {
                    r = serve => r.expect("server failed"),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task with it.
            drop(runtime);
        });
        let addr = bound_rx.recv().expect("server bound");
        Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        let thread = self.thread.take().expect("running");
        tokio::task::spawn_blocking(move || thread.join().expect("server thread"))
            .await
            .expect("join");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds 127.0.0.1:`port`; a port just released may take a moment to come back.
async fn bind(port: u16) -> tokio::net::TcpListener {
    let give_up = Instant::now() + DEADLINE;
    loop {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        let bound = socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .and_then(|()| socket.listen(1024));
        match bound {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < give_up => {
                eprintln!("bind 127.0.0.1:{port}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
        }
    }
}

/// An address where nothing listens.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

/// Polls `fut` once: a send that fails fast must be ready at once.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    pin!(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// Waits until `cond` holds, checking every few milliseconds, up to `DEADLINE`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends frames `0..n` to node 2, at most `in_flight` unacknowledged at once, and
/// returns each frame's result.
async fn send_all(
    forwarder: &Forwarder,
    n: u64,
    in_flight: usize,
    timeout: Duration,
) -> Vec<Result<(), ForwardError>> {
    let mut pending = VecDeque::new();
    let mut results = Vec::with_capacity(n as usize);
    for i in 0..n {
        if pending.len() >= in_flight {
            let oldest = pending.pop_front().expect("in flight");
            results.push(oldest.await);
        }
        pending.push_back(forwarder.send(2, frame(i), timeout));
    }
    for fut in pending {
        results.push(fut.await);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_frames_are_handled_once_in_order() {
    const N: u64 = 20_000;
    let recorder = Recorder::new();
    let server = Server::start(0, forward_service(recorder.clone()));
    let forwarder = Forwarder::new(1, 4096);
    forwarder.set_peer(2, server.addr.to_string());

    // Warm up: the first frame opens the stream.
    forwarder
        .send(2, frame(u64::MAX), DEADLINE)
        .await
        .expect("first frame");
    let started = Instant::now();
    let results = send_all(&forwarder, N, 4096, DEADLINE).await;
    let elapsed = started.elapsed();
    println!(
        "forwarded {N} frames of {FRAME_BYTES} B in {elapsed:?}: {:.0} frames/s",
        N as f64 / elapsed.as_secs_f64()
    );

    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "frame {i}: {r:?}");
    }
    let handled: Vec<u64> = recorder
        .frames()
        .into_iter()
        .skip(1)
        .map(|(from, i)| {
            assert_eq!(from, 1);
            i
        })
        .collect();
    assert_eq!(handled, (0..N).collect::<Vec<_>>());
    let stats = forwarder.stats();
    assert_eq!((stats.sent, stats.acked), (N + 1, N + 1));
    assert_eq!((stats.dropped, stats.resent, stats.errors), (0, 0, 0));
    assert_eq!(stats.peers.len(), 1);
    assert_eq!((stats.peers[0].queued, stats.peers[0].unacked), (0, 0));
    assert!(stats.peers[0].connected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_survive_a_restart_of_the_receivers_listener() {
    const N: u64 = 5_000;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let recorder = Recorder::new();
    // The receiving node keeps running; only its listener and connections go away.
    let service = forward_service(recorder.clone());
    let server = Server::start(0, service.clone());
    let port = server.addr.port();
    let forwarder = Forwarder::new(1, 512);
    forwarder.set_peer(2, server.addr.to_string());

    let outage = {
        let recorder = recorder.clone();
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            recorder.wait_for(1_000).await;
            server.stop().await;
            // Down, and at least one reconnect attempt refused.
            wait_until("the sender noticed", || {
                let stats = forwarder.stats();
                stats.errors >= 2 && !stats.peers[0].connected
            })
            .await;
            let handled_during_outage = recorder.frames().len();
            let server = Server::start(port, service);
            (server, handled_during_outage)
        })
    };

    let results = tokio::time::timeout(DEADLINE * 2, send_all(&forwarder, N, 256, TIMEOUT))
        .await
        .expect("every send resolves");
    let (server, handled_before_restart) = outage.await.expect("outage task");
    assert!(
        handled_before_restart < N as usize,
        "the outage came too late"
    );

    let ok: Vec<u64> = (0..N)
        .filter(|&i| match &results[i as usize] {
            Ok(()) => true,
            Err(ForwardError::Timeout(2)) => false,
            Err(e) => panic!("frame {i}: {e:?}"),
        })
        .collect();
    // Frames that timed out stay queued, so in the end every frame is handled.
    recorder.wait_for(N as usize).await;
    let handled: Vec<u64> = recorder.frames().into_iter().map(|(_, i)| i).collect();
    assert_eq!(
        handled,
        (0..N).collect::<Vec<_>>(),
        "each frame once, in order"
    );
    assert!(ok.iter().all(|&i| i < N));

    let stats = forwarder.stats();
    println!(
        "after the restart: {stats:?}, {} of {N} acknowledged in time",
        ok.len()
    );
    assert!(stats.errors >= 2);
    assert_eq!(stats.sent, N);
    wait_until("every frame acknowledged", || forwarder.stats().acked == N).await;
    server.stop().await;
}

/// Large frames fill a peer's buffer by bytes long before its frame count:
/// what a node holds for a peer is bounded whatever the payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_is_bounded_in_bytes_as_well_as_frames() {
    const BYTES: usize = 4 << 20;
    let forwarder = Forwarder::with_dialer(1, 1024, BYTES, starling_cluster::Dialer::default());
    forwarder.set_peer(2, dead_addr());
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let mut held = Vec::new();
    let refused_at = loop {
        let send = forwarder.send(2, big.clone(), Duration::from_millis(300));
        let mut send = Box::pin(send);
        match poll_once(send.as_mut()) {
            Poll::Ready(Err(ForwardError::BufferFull(2))) => break held.len(),
            Poll::Ready(other) => panic!("unexpected {other:?}"),
            Poll::Pending => held.push(send),
        }
        assert!(held.len() <= 8, "no byte bound: {} MiB held", held.len());
    };
    assert_eq!(
        refused_at,
        BYTES >> 20,
        "frames of 1 MiB under a 4 MiB bound"
    );
    // A small frame is refused too: the bound is on what is held, and that is
    // full until the peer acknowledges something.
    let small = forwarder.send(2, Bytes::from_static(b"x"), Duration::from_millis(300));
    assert!(matches!(
        poll_once(Box::pin(small).as_mut()),
        Poll::Ready(Err(ForwardError::BufferFull(2)))
    ));
    for send in held {
        assert!(matches!(send.await, Err(ForwardError::Timeout(2))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_full_fails_at_once_while_the_peer_is_down() {
    const BUFFER: usize = 8;
    let forwarder = Forwarder::new(1, BUFFER);
    forwarder.set_peer(2, dead_addr());

    let mut queued = Vec::new();
    let full_at = loop {
        let send = forwarder.send(2, frame(queued.len() as u64), Duration::from_millis(300));
        let mut send = Box::pin(send);
        match poll_once(send.as_mut()) {
            Poll::Ready(Err(ForwardError::BufferFull(2))) => break queued.len(),
            Poll::Ready(other) => panic!("unexpected {other:?}"),
            Poll::Pending => queued.push(send),
        }
        assert!(queued.len() <= 2 * BUFFER, "the buffer never filled");
    };
    // The queue holds BUFFER frames; the stream task may hold as many more.
    assert!(
        (BUFFER..=2 * BUFFER).contains(&full_at),
        "full after {full_at}"
    );
    let stats = forwarder.stats();
    assert_eq!(stats.dropped, 1);
    assert!(stats.peers[0].queued <= BUFFER && stats.peers[0].unacked <= BUFFER);
    assert!(!stats.peers[0].connected);
    // A peer that is not connected holds nobody back: its frames fail instead.
    assert!(!forwarder.is_congested());

    // The queued frames are never acknowledged: they time out, and do not hang.
    for send in queued {
        assert!(matches!(send.await, Err(ForwardError::Timeout(2))));
    }
    assert_eq!(forwarder.stats().timeouts, full_at as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_removed_peers_fail() {
    let forwarder = Forwarder::new(1, 8);
    let send = forwarder.send(2, frame(0), DEADLINE);
    assert!(matches!(
        poll_once(send),
        Poll::Ready(Err(ForwardError::UnknownPeer(2)))
    ));

    forwarder.set_peer(2, dead_addr());
    let pending = forwarder.send(2, frame(1), DEADLINE);
    forwarder.remove_peer(2);
    let r = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("a removed peer's frames fail at once");
    assert!(matches!(r, Err(ForwardError::Closed)), "{r:?}");
    assert!(matches!(
        poll_once(forwarder.send(2, frame(2), DEADLINE)),
        Poll::Ready(Err(ForwardError::UnknownPeer(2)))
    ));
    assert!(forwarder.stats().peers.is_empty());

    forwarder.set_peer(3, dead_addr());
    let huge = Bytes::from(vec![0u8; MAX_FRAME_BYTES + 1]);
    assert!(matches!(
        poll_once(forwarder.send(3, huge, DEADLINE)),
        Poll::Ready(Err(ForwardError::TooLarge { to: 3, .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sender_starts_afresh() {
    let recorder = Recorder::new();
    let server = Server::start(0, forward_service(recorder.clone()));

    // Two forwarders with the same node id, one after the other: the second numbers
    // its frames from 1 again, and none of them may be taken for a duplicate.
    for round in 0..2u64 {
        let forwarder = Forwarder::new(1, 64);
        forwarder.set_peer(2, server.addr.to_string());
        let results = send_all(&forwarder, 10, 64, DEADLINE).await;
        assert!(
            results.iter().all(Result::is_ok),
            "round {round}: {results:?}"
        );
    }
    let handled: Vec<u64> = recorder.frames().into_iter().map(|(_, i)| i).collect();
    assert_eq!(handled, (0..10).chain(0..10).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_skips_frames_it_already_handled() {
    use starling_proto::cluster::forward_client::ForwardClient;
    use starling_proto::cluster::{ForwardAck, ForwardFrame};

    let recorder = Recorder::new();
    let server = Server::start(0, forward_service(recorder.clone()));
    let mut client = ForwardClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");

    // One sender stream (node 7, stream 42) over two gRPC streams, as after a
    // reconnect: the second starts again from frame 2, whose ack was "lost", in
    // one run of frames 2 to 4 (2 and 3 already handled), then frame 5 alone.
    let mut acks = Vec::new();
    let runs: [Vec<(u64, Vec<u64>)>; 2] = [
        vec![(1, vec![1]), (2, vec![2]), (3, vec![3])],
        vec![(2, vec![2, 3, 4]), (5, vec![5])],
    ];
    for runs in runs {
        let frames: Vec<ForwardFrame> = runs
            .into_iter()
            .map(|(seq, frames)| ForwardFrame {
                seq,
                frames: frames.into_iter().map(frame).collect(),
            })
            .collect();
        let mut request = tonic::Request::new(tokio_stream::iter(frames));
        request.metadata_mut().insert("x-starling-node", 7.into());
        request
            .metadata_mut()
            .insert("x-starling-stream", 42.into());
        let mut stream = client.stream(request).await.expect("open").into_inner();
        while let Some(ForwardAck { seq }) = stream.message().await.expect("ack") {
            acks.push(seq);
        }
    }
    let handled: Vec<(u64, u64)> = recorder.frames();
    assert_eq!(handled, (1..=5).map(|i| (7, i)).collect::<Vec<_>>());
    // Acks only grow within a stream and end with the last frame of each.
    assert_eq!(acks.iter().filter(|&&a| a == 3).count(), 1, "{acks:?}");
    assert_eq!(acks.last(), Some(&5), "{acks:?}");

    // A request without the sender's identity is refused.
    let request = tonic::Request::new(tokio_stream::iter(Vec::<ForwardFrame>::new()));
    let refused = client.stream(request).await.expect_err("no node id");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

/// Handles frames only while its gate is open: a peer that does not keep up.
struct Gated {
    open: watch::Receiver<bool>,
    inner: Arc<Recorder>,
}

impl ForwardHandler for Gated {
    fn handle(&self, from: u64, frame: Bytes) -> Option<Hold> {
        if *self.open.borrow() {
            return self.inner.handle(from, frame);
        }
        // Held until the gate opens: the stream takes nothing more meanwhile.
        let mut open = self.open.clone();
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            inner.record(from, &frame);
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_peer_that_falls_behind_congests_until_it_catches_up() {
    const BUFFER: usize = 64;
    let (gate, open) = watch::channel(true);
    let recorder = Recorder::new();
    let server = Server::start(
        0,
        forward_service(Arc::new(Gated {
            open,
            inner: recorder.clone(),
        })),
    );
    let forwarder = Forwarder::new(1, BUFFER);
    forwarder.set_peer(2, server.addr.to_string());
    // Connected, and not congested while the peer keeps up.
    forwarder
        .send(2, frame(0), DEADLINE)
        .await
        .expect("first frame");
    assert!(!forwarder.is_congested());

    // The peer stops handling: the window fills, then the queue passes half.
    gate.send_replace(false);
    let mut sent = 1u64;
    let started = Instant::now();
    while !forwarder.is_congested() {
        assert!(started.elapsed() < DEADLINE, "never congested");
        match forwarder.send_detached(2, frame(sent)) {
            Ok(()) => sent += 1,
            Err(e) => panic!("refused before congestion was signalled: {e}"),
        }
        if sent % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(sent as usize >= BUFFER / 2, "congested after {sent} frames");
    // Congestion is read from the queue, which the stream task drains into
    // its window while the window has room. Fill both, so that nothing can
    // drain until the peer acknowledges: then the sender stays congested.
    loop {
        assert!(started.elapsed() < DEADLINE, "never full");
        match forwarder.send_detached(2, frame(sent)) {
            Ok(()) => sent += 1,
            Err(ForwardError::BufferFull(2)) => break,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(forwarder.is_congested());
    assert_eq!(
        recorder.frames().len(),
        1,
        "a held frame stops its stream: nothing after it is handled"
    );
    let relieved = forwarder.relieved();
    let mut relieved = pin!(relieved);
    assert!(poll_once(relieved.as_mut()).is_pending());

    // The peer catches up: congestion ends, and every frame is handled once.
    gate.send_replace(true);
    tokio::time::timeout(DEADLINE, relieved)
        .await
        .expect("relieved in time");
    recorder.wait_for(sent as usize).await;
    let handled: Vec<u64> = recorder.frames().into_iter().map(|(_, i)| i).collect();
    assert_eq!(handled, (0..sent).collect::<Vec<_>>());
    assert!(!forwarder.is_congested());
    server.stop().await;
}
