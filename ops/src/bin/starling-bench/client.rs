//! A minimal MQTT client connection: one socket, a read buffer that the codec decodes
//! in place, and a write buffer flushed once per batch.
//!
//! It knows the connection-level protocol only (CONNECT/CONNACK, keep-alive pings);
//! the publishing and subscribing flows live in their own modules and drive it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use starling_proto::mqtt::{
    decode, encode, ConnAck, Connect, ConnectReturnCode, DecodeError, EncodeError, Packet,
    ProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

/// Largest packet we accept from the broker: bench payloads are small, and a bigger
/// packet means something is wrong.
const MAX_PACKET: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed packet from broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("connection refused by broker: {0:?}")]
    Refused(ConnectReturnCode),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("broker closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What a client says in CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub client_id: String,
    pub clean: bool,
    pub keepalive: u16,
    pub protocol: ProtocolVersion,
    pub timeout: Duration,
    /// How much to make room for before each socket read: small for idle
    /// connections (thousands of them), larger for busy ones.
    pub read_chunk: usize,
}

#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    read_chunk: usize,
    /// Half the keep-alive: a PINGREQ goes out after this much silence from us.
    ping_every: Option<Duration>,
    last_write: Instant,
    ping_outstanding: bool,
}

impl Client {
    /// Opens a TCP connection (from `source` if given) and completes CONNECT/CONNACK
    /// within the timeout.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        opts: &ConnectOpts,
    ) -> Result<(Client, ConnAck), ClientError> {
        timeout(opts.timeout, Self::connect_inner(addr, source, opts))
            .await
            .map_err(|_| ClientError::Timeout("CONNACK"))?
    }

    async fn connect_inner(
        addr: SocketAddr,
        source: Option<IpAddr>,
        opts: &ConnectOpts,
    ) -> Result<(Client, ConnAck), ClientError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            // Port 0: the kernel picks a free port on that source address, which is
            // what lets many source addresses exceed one address's port range.
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        // We batch writes ourselves; Nagle would only add latency to each batch.
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            version: opts.protocol,
            read_chunk: opts.read_chunk.max(64),
            ping_every: (opts.keepalive > 0)
                .then(|| Duration::from_secs(u64::from(opts.keepalive)) / 2),
            last_write: Instant::now(),
            ping_outstanding: false,
        };
        client.queue(&Packet::Connect(Connect {
            protocol: opts.protocol,
            clean_session: opts.clean,
            keep_alive: opts.keepalive,
            client_id: opts.client_id.clone(),
            will: None,
            username: None,
            password: None,
        }))?;
        client.flush().await?;
        loop {
            match client.next_packet()? {
                Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Accepted => {
                    return Ok((client, ack))
                }
                Some(Packet::ConnAck(ack)) => return Err(ClientError::Refused(ack.code)),
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "expected CONNACK, got {other:?}"
                    )))
                }
                None => client.read_more().await?,
            }
        }
    }

    /// Reads what the socket has into the read buffer; fails when the broker closed.
    ///
    /// Cancel safe (it only awaits `read_buf`), so it can race timers in `select!`.
    pub async fn read_more(&mut self) -> Result<(), ClientError> {
        self.make_room();
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Reads what is already there without waiting; false if nothing was.
    pub fn try_read_more(&mut self) -> Result<bool, ClientError> {
        self.make_room();
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Decoded payloads share the read buffer's memory; `reserve` reuses it once they
    /// are dropped, and otherwise starts a fresh chunk.
    fn make_room(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
            self.rbuf.reserve(self.read_chunk);
        }
    }

    /// The next whole packet already buffered, if any. PINGRESP is handled here.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ClientError> {
        loop {
            match decode(&mut self.rbuf, MAX_PACKET, Some(self.version))? {
                Some(Packet::PingResp) => self.ping_outstanding = false,
                other => return Ok(other),
            }
        }
    }

    /// Appends a packet to the write buffer; nothing is sent until [`Client::flush`].
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        encode(packet, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    /// When the keep-alive next needs attention, if it is on.
    pub fn ping_due(&self) -> Option<Instant> {
        self.ping_every.map(|every| self.last_write + every)
    }

    /// Called at [`Client::ping_due`]: queues a PINGREQ, or fails if the previous one
    /// got no answer in half a keep-alive.
    pub fn on_ping_due(&mut self) -> Result<(), ClientError> {
        if self.ping_outstanding {
            return Err(ClientError::Timeout("PINGRESP"));
        }
        self.ping_outstanding = true;
        self.queue(&Packet::PingReq)
    }

    /// Sends DISCONNECT and closes the write side; errors are of no interest by then.
    pub async fn disconnect(mut self) {
        if self.queue(&Packet::Disconnect).is_ok() && self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}
