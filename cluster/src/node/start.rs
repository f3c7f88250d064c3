//! Starting a node: configuration checked, the cluster listener bound, storage
//! opened, openraft started, the server serving, the cluster formed or joined,
//! then the proposer and the liveness monitor spawned.

use super::*;

fn raft_config(tuning: &Tuning) -> Result<Arc<openraft::Config>, ClusterError> {
    let config = openraft::Config {
        cluster_name: "starling".into(),
        // Also the timeout of every AppendEntries: a full batch plus the follower's
        // fsync must fit.
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // Entries per AppendEntries; the log store also caps the bytes of one read.
        max_payload_entries: 512,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_after_entries),
        // Never 0: a leader with a fully purged log could not catch a follower up.
        max_in_snapshot_log_to_keep: tuning.entries_kept_after_snapshot.max(1),
        // Purging waits for this many entries; never more than a snapshot interval,
        // or a small interval would never purge.
        purge_batch_size: tuning.snapshot_after_entries.clamp(1, 256),
        install_snapshot_timeout: 5_000,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ClusterError::Raft(e.to_string()))
}

fn validate(config: &NodeConfig) -> Result<(), ClusterError> {
    let bad = |s: &str| Err(ClusterError::Config(s.to_owned()));
    if !config.peers.is_empty() && !config.peers.contains_key(&config.node_id) {
        return bad("`peers` must include this node's own id");
    }
    if !config.peers.is_empty() && config.join.is_some() {
        return bad("set `peers` (bootstrap) or `join`, not both");
    }
    if config.node_down_after < Duration::from_millis(500) {
        return bad("`node_down_after` must be at least 500 ms (the election timeout)");
    }
    Ok(())
}

pub(super) async fn start(builder: NodeBuilder) -> Result<Node, ClusterError> {
    let NodeBuilder {
        config,
        tuning,
        state_machine,
        forward,
    } = builder;
    validate(&config)?;
    let storage_error = |e: &dyn std::fmt::Display| ClusterError::Storage(e.to_string());
    let raft_error = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
    let id = config.node_id;

    // Bound first: a port in use fails the start before anything is opened.
    let listen_error = |source| ClusterError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let cluster_addr = listener.local_addr().map_err(listen_error)?;
    let advertise = config
        .advertise
        .clone()
        .or_else(|| config.peers.get(&id).cloned())
        .unwrap_or_else(|| cluster_addr.to_string());

    let dir = config.data_dir.clone();
    let Storage {
        log_store,
        state_machine,
        handle: storage,
    } = tokio::task::spawn_blocking(move || Storage::open(&dir, state_machine))
        .await
        .map_err(|e| storage_error(&e))?
        .map_err(|e| storage_error(&e))?;
    let recovery = storage.recovery();

    let source = crate::network::source_for(config.listen);
    let dialer = crate::tls::Dialer::new(source, config.tls.as_ref());
    let peers = Arc::new(Peers::new(id, dialer));
    let raft = Raft::new(
        id,
        raft_config(&tuning)?,
        NetworkFactory {
            peers: peers.clone(),
        },
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| raft_error(&e))?;
    let was_initialized = raft.is_initialized().await.map_err(|e| raft_error(&e))?;

    let (stop, stop_rx) = watch::channel(false);
    let (stop_server, stop_server_rx) = watch::channel(false);
    let core = Arc::new(Core {
        id,
        raft,
        peers,
        node_down_after: config.node_down_after,
        stopping: stop_rx.clone(),
        silent: Mutex::new(Vec::new()),
        quorum: std::sync::atomic::AtomicBool::new(false),
        stepping_down: std::sync::atomic::AtomicBool::new(false),
    });
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "the cluster port listens beyond loopback without TLS: anyone who reaches it \
             can join, propose and forward; set [cluster.tls]"
        );
    }
    let tls = config.tls.as_ref().map(crate::tls::ClusterTls::server);
    let server = crate::server::spawn(listener, core.clone(), forward, tls, stop_server_rx)
        .map_err(|e| ClusterError::Config(format!("cluster TLS: {e}")))?;

    let alone = config.peers.is_empty() && config.join.is_none();
    let started = async {
        let initialized = membership::bootstrap(&core, &config.peers, alone, &advertise).await?;
        match &config.join {
            // A node that was a member already serves at once; asking again only
            // makes sure it is a voter.
            Some(seed) if was_initialized => {
                let (core, seed, advertise) = (core.clone(), seed.clone(), advertise.clone());
                let mut stop = stop_rx.clone();
                tokio::spawn(
                    async move {
                        let join = membership::join(
                            &core,
                            &seed,
                            &advertise,
                            Instant::now() + timeouts::JOIN,
                        );
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => {}
                            result = join => if let Err(e) = result {
                                error!(error = %e, seed, "could not rejoin as a voter");
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
            Some(seed) => {
                info!(seed, "asking to join the cluster");
                membership::join(&core, seed, &advertise, Instant::now() + timeouts::JOIN).await?;
            }
            None => {}
        }
        Ok(initialized)
    };
    let initialized_here = match started.await {
        Ok(initialized) => initialized,
        Err(e) => {
            stop_server.send_replace(true);
            let _ = core.raft.shutdown().await;
            let _ = tokio::time::timeout(timeouts::SERVER_STOP, server).await;
            return Err(e);
        }
    };

    let counters = Arc::new(Counters::default());
    let (queue, queue_rx) = mpsc::channel(tuning.queue_capacity.max(1));
    let proposer = Proposer {
        core: core.clone(),
        incarnation: storage.incarnation(),
        max_batch: config.max_batch,
        max_batch_bytes: tuning.max_batch_bytes,
        counters: counters.clone(),
    };
    let proposer = tokio::spawn(proposer.run(queue_rx, stop_rx.clone()).in_current_span());
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let monitor = Monitor::new(core.clone(), events.clone());
    let monitor = tokio::spawn(monitor.run(stop_rx.clone()).in_current_span());
    let compactor = crate::compaction::Compactor {
        core: core.clone(),
        storage: storage.clone(),
        max_log_bytes: tuning.max_log_bytes.max(1),
    };
    let compactor = tokio::spawn(compactor.run(stop_rx).in_current_span());

    info!(
        incarnation = storage.incarnation(),
        %cluster_addr,
        advertise,
        snapshot_index = ?recovery.snapshot_index,
        last_log_index = ?recovery.last_log_index,
        "raft node started"
    );
    Ok(Node {
        inner: Arc::new(Inner {
            core,
            queue,
            counters,
            storage,
            replay_to: recovery.last_log_index,
            initialized_here,
            cluster_addr,
            advertise,
            stop,
            stop_server,
            events,
            tasks: Mutex::new(Some(Tasks {
                proposer,
                monitor,
                compactor,
                server,
            })),
            stopped: OnceCell::new(),
        }),
    })
}
