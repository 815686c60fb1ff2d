//! Opening a client HBONE connection (TCP → mTLS → HTTP/2) and driving it in its own task,
//! with keepalive PINGs that detect a dead peer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tracing::{debug, Instrument};

use super::bufio::BufferedRead;
use super::{H2Settings, HboneError};

/// A live client connection: the handle to open streams on it and a flag its task sets when the
/// connection has ended.
pub(crate) struct ClientConn {
    pub sender: SendRequest<Bytes>,
    pub closed: Arc<AtomicBool>,
}

pub(crate) async fn open(
    addr: SocketAddr,
    socket: TcpSocket,
    tls: Arc<rustls::ClientConfig>,
    settings: &H2Settings,
) -> Result<ClientConn, HboneError> {
    let handshake = async {
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|source| HboneError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        // The verifier checks SPIFFE identities, not names; an IP server name also keeps rustls
        // from sending SNI, which HBONE does not use.
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = TlsConnector::from(tls)
            .connect(name, BufferedRead::new(tcp))
            .await
            .map_err(|source| HboneError::Tls { addr, source })?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(settings.tls_send_buffer()));
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HboneError::NoH2 { addr });
        }
        settings
            .client_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2Handshake { addr, source })
    };
    let (sender, mut connection) = tokio::time::timeout(settings.handshake_timeout, handshake)
        .await
        .map_err(|_| HboneError::Timeout {
            addr,
            secs: settings.handshake_timeout.as_secs_f64(),
        })??;

    let closed = Arc::new(AtomicBool::new(false));
    let closed_flag = closed.clone();
    let ping = connection.ping_pong();
    let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
    tokio::spawn(
        async move {
            tokio::select! {
                r = &mut connection => match r {
                    Ok(()) => debug!("connection closed"),
                    Err(e) => debug!(error = %e, "connection ended with error"),
                },
                () = keepalive(ping, interval, timeout) => {
                    debug!("peer stopped answering keepalive PINGs; closing connection");
                }
            }
            closed_flag.store(true, Ordering::Release);
        }
        .instrument(tracing::debug_span!("hbone_client_conn", peer = %addr)),
    );
    Ok(ClientConn { sender, closed })
}

/// Sends a PING every `interval`; returns only when one stays unanswered for `timeout`.
pub(crate) async fn keepalive(ping: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => {
                // The connection is closing (or already closed): its own task sees that; a
                // failed PING must not cut short streams that a graceful close lets finish.
                debug!(error = %e, "keepalive PING not sent");
                return std::future::pending().await;
            }
            Err(_) => return,
        }
    }
}
