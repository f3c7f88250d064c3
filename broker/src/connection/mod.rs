//! One MQTT connection: the IO shell around a [`Session`]. A task owns the
//! socket, the read buffer, the mailbox and the futures of what the session
//! asked for, and polls them all at once. What woke it goes to the session as
//! events; the session's actions are carried out here, and its transmit buffer
//! is written once per round. Keepalive is enforced by the registry's expiry
//! sweep, which stops the connection through its mailbox.

mod transport;
mod view;

pub(crate) use transport::Transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::future::Future;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::registry::Mailbox;
use crate::session::{Action, Event, Session, Wait};
use crate::timeouts;
use crate::Shared;
use view::Live;

/// Outcomes a connection may wait for (commits, other nodes taking a message)
/// before it stops reading from its client.
const MAX_OUTSTANDING: usize = 256;

pub(crate) struct Connection {
    shared: Arc<Shared>,
    transport: Transport,
    rbuf: BytesMut,
    session: Session,
    outcomes: Outcomes,
    /// Deliveries from the router, and the signal that wakes this task.
    mailbox: Arc<Mailbox>,
    /// Resolves when the forwarder stops being congested; only while it is.
    relief: Option<BoxFuture<'static, ()>>,
}

/// Serves one accepted socket until it closes; `permit` is held until then.
/// `identity` is the username the client's TLS certificate gives it
/// (`[tls] use_identity_as_username`), if it does.
///
/// An idle connection costs what this future holds, so it keeps nothing that a
/// connection does not need while idle: buffers are allocated while there is
/// something to read or write, and what runs only at the end is boxed.
pub(crate) fn serve(
    shared: Arc<Shared>,
    transport: Transport,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    identity: Option<String>,
) -> impl Future<Output = ()> + Send + 'static {
    let conn = shared.next_conn_id();
    // At debug level: a span per connection costs a few hundred bytes while it
    // lives. Events worth seeing at info name the connection themselves.
    let span = tracing::debug_span!(
        "conn",
        node = shared.registry.node(),
        %peer,
        client_id = tracing::field::Empty
    );
    let mailbox = Arc::new(Mailbox::new(
        shared.config.mailbox_capacity,
        shared.config.mailbox_capacity_bytes,
    ));
    shared.registry.set_deadline(
        &mailbox,
        Some(Instant::now() + shared.config.connect_deadline()),
    );
    shared.registry.open(conn, mailbox.clone());
    shared.metrics.connections.inc();
    shared.metrics.connections_total.inc();
    let mut session = Session::new(conn, peer);
    if let Some(identity) = identity {
        session.set_identity(Arc::from(identity));
    }
    // Boxed: a future holds what it captures twice (once as captured, once as
    // moved into its body), and the connection is most of an idle task.
    let mut connection = Box::new(Connection {
        shared,
        transport,
        rbuf: BytesMut::new(),
        session,
        outcomes: Outcomes::default(),
        mailbox,
        relief: None,
    });
    async move {
        connection.run().await;
        Box::pin(connection.close()).await;
        connection.shared.metrics.connections.dec();
        drop(permit);
    }
    .instrument(span)
}

/// The outcomes a connection waits for, in the order they were asked for. Holds
/// no allocation while nothing is pending.
#[derive(Default)]
struct Outcomes(Option<Box<FuturesOrdered<BoxFuture<'static, Event>>>>);

impl Outcomes {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.len())
    }

    fn push_back(&mut self, future: BoxFuture<'static, Event>) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(future);
    }

    /// The oldest outcome, if it is ready.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Option<Event> {
        let pending = self.0.as_mut()?;
        let done = match pending.poll_next_unpin(cx) {
            Poll::Ready(done) => done,
            Poll::Pending => None,
        };
        if pending.is_empty() {
            self.0 = None;
        }
        done
    }
}

/// Outcomes handed to the session in one wake-up, at most: the answers they
/// produce go out in one write.
const OUTCOMES_PER_WAKEUP: usize = 256;

/// What woke a connection task; several at once where several were ready.
#[derive(Default)]
struct Wakeup {
    /// What a read from the client gave: bytes appended to the read buffer, 0
    /// at its end, or an error.
    read: Option<std::io::Result<usize>>,
    attention: bool,
    /// Outcomes that were ready, in order, up to `OUTCOMES_PER_WAKEUP`.
    outcomes: Vec<Event>,
}

impl Connection {
    async fn run(&mut self) {
        while self.session.end().is_none() {
            // While a peer node is not keeping up with what this node forwards to
            // it, clients are not read: publishers slow down to what the cluster
            // can carry instead of having their messages dropped.
            let congested = self.shared.forwarder.is_congested();
            if !congested {
                self.relief = None;
            } else if self.relief.is_none() {
                let shared = self.shared.clone();
                self.relief = Some(Box::pin(async move { shared.forwarder.relieved().await }));
            }
            // A client with many answers outstanding is not read until some
            // complete: flow control for publishers that outrun commits or slow
            // subscribers.
            let read = self.outcomes.len() < MAX_OUTSTANDING && !congested;
            // One poll of every source rather than a `select!` of futures: the
            // task of an idle connection holds no futures while it waits, and
            // what woke it is handled before the next await, so that its room
            // is not kept in the task either.
            let woken = std::future::poll_fn(|cx| self.poll_wakeup(cx, read)).await;
            let handled = self.on_wakeup(woken);
            self.take_mail();
            self.session.flush();
            self.mailbox.set_inflight(self.session.inflight());
            self.perform();
            self.write().await;
            // Waiting for readiness does not count against the task's budget,
            // and a publisher's socket is always ready: each packet handled
            // counts here, so that a busy publisher yields its worker to the
            // subscribers it feeds before their mailboxes overflow.
            for _ in 0..handled.max(1) {
                tokio::task::coop::consume_budget().await;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        self.session.handle(event, &Live(&self.shared));
    }

    /// Hands what woke the task to the session; returns how many packets were
    /// read.
    fn on_wakeup(&mut self, woken: Wakeup) -> usize {
        // A stop comes first: once the session is another connection's, this
        // one must send nothing more of it.
        if let Some(why) = self.mailbox.stopped() {
            self.handle(Event::Stop(why));
            return 0;
        }
        for outcome in woken.outcomes {
            self.handle(outcome);
        }
        if woken.attention {
            // The replicated queue may have grown.
            self.handle(Event::QueueGrew);
        }
        if let Some(Ok(read)) = woken.read {
            // One add per read, however many packets it brought.
            self.shared.metrics.bytes_received.inc_by(read as u64);
        }
        match woken.read {
            Some(Ok(0)) => {
                tracing::debug!("connection closed by the client");
                self.handle(Event::SocketClosed);
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "socket error");
                self.handle(Event::SocketClosed);
            }
            Some(Ok(_)) if self.session.end().is_none() => {
                let handled = self.session.input(&mut self.rbuf, &Live(&self.shared));
                if self.rbuf.is_empty() {
                    // Idle connections hold no read buffer.
                    self.rbuf = BytesMut::new();
                }
                return handled;
            }
            _ => {}
        }
        0
    }

    /// Polls what the task waits for: the socket (if `read`), the mailbox, the
    /// oldest pending outcome and, while congested, relief. Ready with all of
    /// them that are ready, so that none starves the others.
    fn poll_wakeup(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Wakeup> {
        let mut woken = Wakeup::default();
        if read {
            if let Poll::Ready(result) = self.transport.poll_read(cx, &mut self.rbuf) {
                woken.read = Some(result);
            }
        }
        woken.attention = self.mailbox.poll_attention(cx).is_ready();
        while woken.outcomes.len() < OUTCOMES_PER_WAKEUP {
            let Some(outcome) = self.outcomes.poll_next(cx) else {
                break;
            };
            woken.outcomes.push(outcome);
        }
        let relieved = match self.relief.as_mut() {
            Some(relief) => relief.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if woken.read.is_some() || woken.attention || !woken.outcomes.is_empty() || relieved {
            Poll::Ready(woken)
        } else {
            Poll::Pending
        }
    }

    /// Moves deliveries from the mailbox into the session while it takes them.
    fn take_mail(&mut self) {
        while self.session.wants_mail() {
            let Some(delivery) = self.mailbox.pop() else {
                break;
            };
            self.handle(Event::Mail(delivery));
        }
    }

    /// Carries out what the session asked for.
    fn perform(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Propose {
                    command,
                    wait,
                    then,
                } => {
                    let shared = self.shared.clone();
                    // Proposals must reach the proposer in the order the client
                    // sent its packets. A future's first poll is where it
                    // enqueues; under tokio's cooperative budget that poll could
                    // return Pending and the future be polled again after later
                    // ones, reordering one publisher's messages. `unconstrained`
                    // keeps the budget out of it.
                    self.outcomes
                        .push_back(Box::pin(tokio::task::unconstrained(async move {
                            let reply = match wait {
                                Wait::Committed => shared.propose(command).await,
                                Wait::Synced => shared.propose_synced(command).await,
                                Wait::Applied => shared.propose_applied(command).await,
                            };
                            Event::Committed {
                                then,
                                reply: reply.map_err(|e| e.to_string()),
                            }
                        })));
                }
                Action::Commit(command) => {
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = shared.propose(command).await {
                            tracing::debug!(error = %e, "acknowledgements not committed");
                        }
                    });
                }
                Action::Route { message, targets } => {
                    self.shared.route_detached_to(&message, targets)
                }
                Action::RouteThenAnswer {
                    message,
                    targets,
                    answer,
                } => match self.shared.route_to(&message, targets) {
                    // Answers go out in the order the packets came in
                    // [MQTT-4.6.0-2]: at once only if none is outstanding.
                    None if self.outcomes.len() == 0 => self.handle(Event::Routed {
                        answer,
                        accepted: true,
                    }),
                    None => self
                        .outcomes
                        .push_back(Box::pin(std::future::ready(Event::Routed {
                            answer,
                            accepted: true,
                        }))),
                    Some(forwarded) => self.outcomes.push_back(Box::pin(async move {
                        let accepted = forwarded.await;
                        Event::Routed { answer, accepted }
                    })),
                },
                Action::KeepAlive(keep_alive) => self
                    .shared
                    .registry
                    .set_deadline(&self.mailbox, Some(Instant::now() + keep_alive)),
            }
        }
    }

    /// Writes what the session has for the client.
    async fn write(&mut self) {
        if self.session.transmit().is_empty() {
            return;
        }
        // A client that stops reading must not hold this task (and the
        // publishers waiting on its mailbox) for longer than a slow subscriber
        // may.
        let slow_after = self.shared.config.slow_subscriber_after();
        let bytes = self.session.transmit().len() as u64;
        let write = self.transport.write_all(self.session.transmit());
        match tokio::time::timeout(slow_after, write).await {
            Ok(Ok(())) => self.shared.metrics.bytes_sent.inc_by(bytes),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                self.handle(Event::SocketClosed);
            }
            Err(_) => self.handle(Event::WriteStalled(slow_after)),
        }
        self.session.transmitted();
    }

    /// Ends the session's connection in the replicated state and frees the
    /// connection's place in the registry.
    async fn close(&mut self) {
        // First, so that publishers waiting for room in it go on at once.
        self.mailbox.close();
        // Bounded like any write: a client that reads nothing keeps the
        // FIN's way blocked too.
        let _ = tokio::time::timeout(timeouts::CLOSE, self.transport.shutdown()).await;
        let mut closing = self.session.closing(crate::clock::now_ms());
        let shared = self.shared.clone();
        // What came through shared subscriptions and never reached the client
        // goes to another member of its group.
        while let Some(delivery) = self.mailbox.pop() {
            if delivery.shared.is_some() {
                closing.redeliver.push(delivery);
            }
        }
        if let Some(client_id) = self.session.client_id() {
            for delivery in closing.redeliver {
                shared.redeliver(delivery, client_id);
            }
        }
        // Committed before the Disconnect, which ends this connection's right
        // to acknowledge anything for the session.
        if let Some(acks) = closing.acks {
            match tokio::time::timeout(timeouts::CLOSE, shared.propose(acks)).await {
                Ok(Ok(_)) => {}
                _ => tracing::debug!("acknowledgements not committed at close"),
            }
        }
        let client_id = self.session.client_id().cloned();
        if let Some(disconnect) = closing.disconnect {
            // The will, if any, is delivered by every node as it applies this.
            let id = client_id.as_deref().unwrap_or("");
            match tokio::time::timeout(timeouts::CLOSE, shared.propose(disconnect)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(client_id = id, error = %e, "disconnect not committed")
                }
                Err(_) => tracing::warn!(client_id = id, "disconnect not committed in time"),
            }
        }
        shared
            .registry
            .close(client_id.as_ref(), self.session.conn());
        tracing::debug!(end = ?self.session.end(), "connection closed");
    }
}
