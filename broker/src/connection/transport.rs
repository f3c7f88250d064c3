//! What a connection reads from and writes to: a TCP socket, a WebSocket
//! over one (subprotocol "mqtt", MQTT 5.0 section 6 / 3.1.1 section 6), which
//! carries the same bytes in binary frames, or either over TLS.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Room made in the read buffer before each read from a socket.
const READ_CHUNK: usize = 4096;
/// The most read from a TLS stream at once: one record's plaintext.
const TLS_READ_CHUNK: usize = 16 * 1024;

pub(crate) enum Transport {
    Tcp(TcpStream),
    WebSocket(Box<WebSocketStream<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
    WebSocketTls(Box<WebSocketStream<TlsStream<TcpStream>>>),
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
            Transport::WebSocket(ws) => poll_read_websocket(ws, cx, buf),
            Transport::Tls(stream) => {
                // Read through a buffer on the stack, so that an idle
                // connection's buffer stays unallocated here too.
                let mut chunk = [0u8; TLS_READ_CHUNK];
                let mut read = ReadBuf::new(&mut chunk);
                ready!(Pin::new(stream.as_mut()).poll_read(cx, &mut read))?;
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Transport::WebSocketTls(ws) => poll_read_websocket(ws, cx, buf),
        }
    }

    /// Writes `bytes`: on a WebSocket, as one binary frame.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(stream) => stream.write_all(bytes).await,
            Transport::WebSocket(ws) => write_websocket(ws, bytes).await,
            Transport::Tls(stream) => {
                stream.write_all(bytes).await?;
                // rustls may hold records back until flushed.
                stream.flush().await
            }
            Transport::WebSocketTls(ws) => write_websocket(ws, bytes).await,
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
            Transport::Tls(stream) => {
                // close_notify, then FIN.
                let _ = stream.shutdown().await;
            }
            Transport::WebSocketTls(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}

/// Appends the next binary frame's bytes to `buf`: `Ok(0)` once the peer
/// closed; a text frame is an error.
fn poll_read_websocket<S>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
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
    }
}

/// Writes `bytes` as one binary frame.
async fn write_websocket<S>(ws: &mut WebSocketStream<S>, bytes: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Binary(Bytes::copy_from_slice(bytes)))
        .await
        .map_err(io::Error::other)
}
