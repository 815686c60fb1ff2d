//! Errors of the xDS client, worded for the operator who reads them in the log or on the admin
//! page.

/// Why the xDS client could not start, or why a stream to the server ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The configured address is not a URI tonic can connect to.
    #[error(
        "invalid xDS address {address:?}: {reason}; expected https://<host>:15012 with XDS_ROOT_CA, or http://<host>:15010 (XDS_ADDRESS)"
    )]
    InvalidAddress { address: String, reason: String },
    /// A token or cluster id that cannot be sent as an HTTP header.
    #[error("the xDS {what} contains characters not allowed in an HTTP header")]
    InvalidHeader { what: &'static str },
    /// Nothing to subscribe to.
    #[error("the xDS client has no resource type to subscribe to")]
    NoTypes,
    /// The TCP/HTTP/2 connection could not be made.
    #[error(
        "cannot connect to the xDS server at {address}: {message}; is amesh-controller running and reachable at {address}?"
    )]
    Connect { address: String, message: String },
    /// The server refused or broke the stream with a gRPC status.
    #[error("xDS stream to {address} failed ({code}): {message}{hint}")]
    Rpc {
        address: String,
        code: String,
        message: String,
        /// What to check for this kind of status (empty when there is nothing specific).
        hint: &'static str,
    },
    /// The server ended the stream cleanly; servers do this to rebalance or on shutdown.
    #[error("the xDS server at {address} closed the stream")]
    Closed { address: String },
    /// The client was shut down (or its task ended) before the awaited event.
    #[error("the xDS client has stopped")]
    Stopped,
}

impl XdsError {
    /// Istio's name for why a stream ended this way (the `reason` label of
    /// `istio_xds_connection_terminations_total`).
    pub fn termination_reason(&self) -> &'static str {
        match self {
            XdsError::Connect { .. } => "ConnectionError",
            XdsError::Closed { .. } => "Reconnect",
            _ => "Error",
        }
    }

    /// Classifies a gRPC status from the stream, with what to check for the common ones.
    pub(crate) fn from_status(address: &str, status: &tonic::Status) -> Self {
        let mut message = status.message().to_string();
        // Transport failures carry the cause (connection reset, h2 errors) as the source.
        push_sources(&mut message, std::error::Error::source(status));
        let hint = match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                "; check the node's token and CLUSTER_ID against what the controller accepts"
            }
            tonic::Code::Unimplemented => {
                "; is the server at that address an xDS server with delta ADS?"
            }
            tonic::Code::Unavailable => "; is amesh-controller running and reachable?",
            _ => "",
        };
        XdsError::Rpc {
            address: address.to_string(),
            code: format!("{:?}", status.code()),
            message,
            hint,
        }
    }
}

/// `error: cause: cause…`: tonic's transport errors hide the useful part (connection refused,
/// DNS failure) in their sources.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    push_sources(&mut message, error.source());
    message
}

pub(crate) fn push_sources(
    message: &mut String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) {
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause in their own text; say it once.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
}
