//! What a connection reads from and writes to: a TCP socket, or a WebSocket
//! over one (subprotocol "mqtt", MQTT 5.0 section 6 / 3.1.1 section 6), which
//! carries the same bytes in binary frames.

use std::io;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Room made in the read buffer before each read from a socket.
const READ_CHUNK: usize = 4096;

pub(crate) enum Transport {
    Tcp(TcpStream),
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

impl Transport {
    /// Appends what the peer sent to `buf`: `Ok(0)` once it has closed. A TCP
    /// socket is read only once readable, so that an idle connection's buffer
    /// stays unallocated.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(stream) => loop {
                ready!(stream.poll_read_ready(cx))?;
                buf.reserve(READ_CHUNK);
                match stream.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
            Transport::WebSocket(ws) => loop {
                match ready!(ws.poll_next_unpin(cx)) {
                    None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(0)),
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                    Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                        buf.extend_from_slice(&data);
                        return Poll::Ready(Ok(data.len()));
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a text frame: MQTT over WebSocket is binary [MQTT-6.0.0-1]",
                        )))
                    }
                    // A ping is answered with the next write; flushed here so
                    // that an idle connection answers it too.
                    Some(Ok(Message::Ping(_))) => {
                        let _ = ws.poll_flush_unpin(cx);
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Writes `bytes`: on a WebSocket, as one binary frame.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(bytes).await,
            Transport::WebSocket(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the way to the peer.
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Transport::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            Transport::WebSocket(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}
