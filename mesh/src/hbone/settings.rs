//! HTTP/2 and connection tuning shared by the HBONE client and server, and the server's
//! bounds on what one peer may make it hold: concurrent streams, the size of a header block
//! (which also bounds a CONTINUATION flood), and streams reset before or by the server (the
//! rapid-reset defence).

use std::time::Duration;

/// Tuning for HBONE connections. Windows and keepalive follow Istio's ztunnel so that mixed
/// meshes behave alike: 4 MiB stream window, 16 MiB connection window, PING every 10 s.
/// Frames we accept are smaller than Istio's 1 MiB: a frame is buffered whole before its first
/// byte is delivered, and 1 MiB buffers come from fresh pages (page faults on every frame),
/// while 64 KiB frames reuse warm heap memory and cost nothing measurable in headers.
#[derive(Clone, Debug)]
pub struct H2Settings {
    /// Initial flow-control window of each stream (bytes in flight per tunnel).
    pub stream_window: u32,
    /// Flow-control window of the whole connection (bytes in flight over all its tunnels).
    pub connection_window: u32,
    /// Largest frame we accept (SETTINGS_MAX_FRAME_SIZE); HTTP/2 allows 16 KiB ..= 16 MiB - 1.
    pub max_frame_size: u32,
    /// Bytes a stream may queue for sending before its writer is made to wait.
    pub max_send_buffer: usize,
    /// Interval between keepalive PINGs on an otherwise quiet connection.
    pub keepalive_interval: Duration,
    /// How long a PING may stay unanswered before the connection is considered dead.
    pub keepalive_timeout: Duration,
    /// Client: concurrent tunnels per connection before the pool opens another connection.
    pub max_streams_per_connection: usize,
    /// Server: SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub max_concurrent_streams: u32,
    /// Client: a connection with no tunnels for this long is closed.
    pub idle_timeout: Duration,
    /// Client: an idle connection while the pool keeps another one to the same peer (the
    /// extra connections a burst of over `max_streams_per_connection` tunnels opened) is
    /// closed after this instead: each holds ~100 KiB on both ends (h2's stream tables keep
    /// the size the burst gave them), and one warm connection per peer is what the next
    /// tunnels need. At most `idle_timeout`.
    pub surplus_idle_timeout: Duration,
    /// Limit on TCP connect plus TLS and HTTP/2 handshakes.
    pub handshake_timeout: Duration,
    /// Server: SETTINGS_MAX_HEADER_LIST_SIZE, the largest decoded header block accepted. A
    /// CONNECT carries a few hundred bytes; a larger block gets 431 and a reset stream. h2
    /// also allows only as many CONTINUATION frames as this size needs at our frame size
    /// (at least 5), so a flood of them ends the connection with ENHANCE_YOUR_CALM after a
    /// few frames instead of growing a buffer (h2's default, 16 MiB, allowed 320).
    pub max_header_list_size: u32,
    /// Server: streams the peer opened and reset before we took them from h2's queue. Past
    /// this the connection ends with GOAWAY(ENHANCE_YOUR_CALM): the HTTP/2 rapid-reset attack
    /// (CVE-2023-44487) costs the attacker its connection.
    pub max_pending_accept_reset_streams: usize,
    /// Server: streams we reset because the peer broke the protocol on them; past this the
    /// connection ends with GOAWAY(ENHANCE_YOUR_CALM).
    pub max_local_error_reset_streams: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 64 << 10,
            max_send_buffer: 1 << 20,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_streams_per_connection: 100,
            max_concurrent_streams: 1000,
            idle_timeout: Duration::from_secs(60),
            surplus_idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_header_list_size: 16 << 10,
            // h2's own defaults today, written out so that a change of theirs is not a change
            // of ours.
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

impl H2Settings {
    pub(crate) fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.clamped_frame_size())
            .max_send_buffer_size(self.max_send_buffer)
            .enable_push(false);
        b
    }

    pub(crate) fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.clamped_frame_size())
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        b
    }

    /// How much output rustls may hold before it makes the writer wait. h2 hands it one DATA
    /// frame per write call; with rustls's default of 64 KiB a 64 KiB frame plus its header took
    /// two `writev`s, the second a few bytes: a packet of its own through the whole network
    /// path. Our frames are at most one relay read (256 KiB, `relay::MAX_READ`); twice that
    /// keeps every frame one write. Held only until the socket takes it.
    pub(crate) fn tls_send_buffer(&self) -> usize {
        512 << 10
    }

    // h2 panics on frame sizes outside the range HTTP/2 allows; clamp instead.
    fn clamped_frame_size(&self) -> u32 {
        self.max_frame_size.clamp(16 << 10, (16 << 20) - 1)
    }
}
