//! A minimal MQTT client connection: one socket, a read buffer that the codec decodes
//! in place, and a write buffer flushed once per batch.
//!
//! It knows the connection-level protocol only (CONNECT/CONNACK, keep-alive pings,
//! a DISCONNECT from an MQTT 5 broker); the publishing and subscribing flows live in
//! their own modules and drive it. The bytes go over plain TCP or over a WebSocket
//! (one binary frame per packet out; frames in are appended to the read buffer,
//! which reassembles packets whatever the framing).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use starling_proto::mqtt::{
    decode, encode, ConnAck, Connect, DecodeError, EncodeError, Packet, Properties,
    ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cli::Transport;

/// Largest packet we accept from the broker: bench payloads are small, and a bigger
/// packet means something is wrong.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// The WebSocket path requested; brokers commonly serve MQTT at /mqtt.
const WS_PATH: &str = "/mqtt";

/// Session Expiry Interval sent with MQTT 5 and `--clean false`: never expire,
/// as a 3.1.1 persistent session does (MQTT 5 ends a session with its connection
/// unless told otherwise).
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    #[error("malformed packet from broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("connection refused by broker: {0:?}")]
    Refused(ReasonCode),
    #[error("broker sent DISCONNECT: {0:?}")]
    Disconnected(ReasonCode),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("broker closed the connection")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> ClientError {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ClientError::Closed
            }
            tungstenite::Error::Io(e) => ClientError::Io(e),
            e => ClientError::WebSocket(Box::new(e)),
        }
    }
}

/// What a client says in CONNECT, and how it reaches the broker.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub client_id: String,
    pub clean: bool,
    pub keepalive: u16,
    pub protocol: ProtocolVersion,
    pub transport: Transport,
    pub timeout: Duration,
    /// How much to make room for before each socket read: small for idle
    /// connections (thousands of them), larger for busy ones.
    pub read_chunk: usize,
}

/// What carries the bytes.
#[derive(Debug)]
enum Link {
    Tcp(TcpStream),
    /// Boxed: its state is large, and plain TCP clients should not carry it.
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

#[derive(Debug)]
pub struct Client {
    link: Link,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// WebSocket only: where each packet queued in `wbuf` ends, one frame each.
    frame_ends: Vec<usize>,
    /// WebSocket only: how the stream ended while frames already read were being
    /// handed over; reported by the next read.
    ended: Option<ClientError>,
    version: ProtocolVersion,
    read_chunk: usize,
    /// Half the keep-alive: a PINGREQ goes out after this much silence from us.
    ping_every: Option<Duration>,
    last_write: Instant,
    ping_outstanding: bool,
}

impl Client {
    /// Opens a TCP connection (from `source` if given), upgrades it to a WebSocket
    /// if asked, and completes CONNECT/CONNACK, all within the timeout.
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
        let read_chunk = opts.read_chunk.max(64);
        let link = match opts.transport {
            Transport::Tcp => Link::Tcp(stream),
            Transport::Ws => {
                Link::WebSocket(Box::new(Self::upgrade(addr, stream, read_chunk).await?))
            }
        };
        let mut client = Client {
            link,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            frame_ends: Vec::new(),
            ended: None,
            version: opts.protocol,
            read_chunk,
            ping_every: Self::ping_every(opts.keepalive),
            last_write: Instant::now(),
            ping_outstanding: false,
        };
        let mut properties = Properties::default();
        if opts.protocol.is_v5() && !opts.clean {
            properties.session_expiry_interval = Some(SESSION_NEVER_EXPIRES);
        }
        client.queue(&Packet::Connect(Connect {
            protocol: opts.protocol,
            clean_session: opts.clean,
            keep_alive: opts.keepalive,
            client_id: opts.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: properties.into(),
        }))?;
        client.flush().await?;
        loop {
            match client.next_packet()? {
                Some(Packet::ConnAck(ack)) if ack.code == ReasonCode::Success => {
                    // An MQTT 5 broker may impose its own keep-alive [MQTT-3.2.2-21].
                    if let Some(keepalive) = ack.properties.server_keep_alive {
                        client.ping_every = Self::ping_every(keepalive);
                    }
                    return Ok((client, ack));
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

    fn ping_every(keepalive: u16) -> Option<Duration> {
        (keepalive > 0).then(|| Duration::from_secs(u64::from(keepalive)) / 2)
    }

    /// The WebSocket handshake: GET ws://ADDR/mqtt offering the subprotocol "mqtt",
    /// which the broker must choose (tungstenite checks that).
    async fn upgrade(
        addr: SocketAddr,
        stream: TcpStream,
        read_chunk: usize,
    ) -> Result<WebSocketStream<TcpStream>, ClientError> {
        let mut request = format!("ws://{addr}{WS_PATH}").into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        // The read buffer is allocated whole up front: size it like ours.
        let config = WebSocketConfig::default().read_buffer_size(read_chunk);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(ws)
    }

    /// Reads what the socket has into the read buffer; fails when the broker closed.
    ///
    /// Cancel safe (it only awaits `read_buf`, or the next WebSocket message), so it
    /// can race timers in `select!`.
    pub async fn read_more(&mut self) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Tcp(stream) => {
                make_room(&mut self.rbuf, self.read_chunk);
                if stream.read_buf(&mut self.rbuf).await? == 0 {
                    return Err(ClientError::Closed);
                }
                Ok(())
            }
            Link::WebSocket(ws) => {
                if let Some(e) = self.ended.take() {
                    return Err(e);
                }
                while !take_message(ws.next().await, &mut self.rbuf, self.read_chunk)? {}
                // A broker may send every packet in a frame of its own: take what
                // else has arrived, up to a chunk's worth, as one socket read would.
                while self.rbuf.len() < self.read_chunk {
                    let Some(message) = ws.next().now_or_never() else {
                        break;
                    };
                    if let Err(e) = take_message(message, &mut self.rbuf, self.read_chunk) {
                        self.ended = Some(e);
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads what is already there without waiting; false if nothing was.
    pub fn try_read_more(&mut self) -> Result<bool, ClientError> {
        match &mut self.link {
            Link::Tcp(stream) => {
                make_room(&mut self.rbuf, self.read_chunk);
                match stream.try_read_buf(&mut self.rbuf) {
                    Ok(0) => Err(ClientError::Closed),
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Link::WebSocket(_) if self.ended.is_some() => {
                Err(self.ended.take().unwrap_or(ClientError::Closed))
            }
            // One poll: a message if one is ready (a control frame counts as
            // something read), nothing if it would have to wait.
            Link::WebSocket(ws) => match ws.next().now_or_never() {
                None => Ok(false),
                Some(message) => {
                    take_message(message, &mut self.rbuf, self.read_chunk)?;
                    Ok(true)
                }
            },
        }
    }

    /// The next whole packet already buffered, if any. PINGRESP is handled here, and
    /// a DISCONNECT from an MQTT 5 broker ends the connection with its reason.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ClientError> {
        loop {
            match decode(&mut self.rbuf, MAX_PACKET, Some(self.version))? {
                Some(Packet::PingResp) => self.ping_outstanding = false,
                Some(Packet::Disconnect(d)) => return Err(ClientError::Disconnected(d.reason)),
                other => return Ok(other),
            }
        }
    }

    /// Appends a packet to the write buffer; nothing is sent until [`Client::flush`].
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        encode(packet, self.version, &mut self.wbuf)?;
        if let Link::WebSocket(_) = self.link {
            self.frame_ends.push(self.wbuf.len());
        }
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match &mut self.link {
            Link::Tcp(stream) => {
                stream.write_all(&self.wbuf).await?;
                self.wbuf.clear();
            }
            Link::WebSocket(ws) => {
                // Each packet one binary frame. `split_to` hands its bytes over
                // without copying; the frame is copied (and masked) into the
                // WebSocket's own buffer, after which `wbuf` may reuse the memory.
                let mut start = 0;
                for &end in &self.frame_ends {
                    let frame = self.wbuf.split_to(end - start).freeze();
                    start = end;
                    ws.feed(Message::Binary(frame)).await?;
                }
                self.frame_ends.clear();
                ws.flush().await?;
            }
        }
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

    /// Sends DISCONNECT and closes the write side (or the WebSocket); errors are of
    /// no interest by then.
    pub async fn disconnect(mut self) {
        if self.queue(&Packet::Disconnect(Default::default())).is_ok() && self.flush().await.is_ok()
        {
            match &mut self.link {
                Link::Tcp(stream) => {
                    let _ = stream.shutdown().await;
                }
                Link::WebSocket(ws) => {
                    // A close frame; the broker's answer is not waited for.
                    let _ = futures::SinkExt::close(ws).await;
                }
            }
        }
    }
}

/// Decoded payloads share the read buffer's memory; `reserve` reuses it once they
/// are dropped, and otherwise starts a fresh chunk.
fn make_room(rbuf: &mut BytesMut, read_chunk: usize) {
    if rbuf.capacity() - rbuf.len() < read_chunk / 4 {
        rbuf.reserve(read_chunk);
    }
}

/// Takes one WebSocket message: a binary frame's bytes go to the read buffer (true);
/// control frames are skipped (false; tungstenite answers pings itself), and text,
/// a close or the end of the stream end the connection.
fn take_message(
    message: Option<Result<Message, tungstenite::Error>>,
    rbuf: &mut BytesMut,
    read_chunk: usize,
) -> Result<bool, ClientError> {
    match message {
        Some(Ok(Message::Binary(data))) => {
            make_room(rbuf, read_chunk);
            rbuf.extend_from_slice(&data);
            Ok(true)
        }
        Some(Ok(Message::Text(_))) => Err(ClientError::Protocol(
            "a text frame: MQTT over WebSocket is binary".into(),
        )),
        Some(Ok(Message::Close(_))) | None => Err(ClientError::Closed),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(false),
        Some(Err(e)) => Err(e.into()),
    }
}
