//! What the xDS client hands received resources to.

use amesh_proto::envoy::service::discovery::v3::Resource;

/// Applies the resources of one xDS response to the local config.
///
/// Called once per `DeltaDiscoveryResponse`, from the client's task, one call at a time.
/// The call must be all-or-nothing: `Err` means nothing was applied, the client NACKs the
/// response with the message and keeps reporting the versions it held before, so a later
/// reconnect asks the server for what this handler really has.
pub trait ResourceHandler: Send + Sync + 'static {
    /// Upserts `upserts` and removes the resources named in `removed` (names the handler
    /// does not hold may appear there and are ignored) for `type_url`. `Err(message)` rejects
    /// the whole response; the message goes back to the server in the NACK, so it should say
    /// which resource was wrong and why.
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String>;
}

/// The node proxy's config store takes xDS updates all-or-nothing: a rejected update leaves the
/// previous snapshot in place and its message becomes the NACK.
impl ResourceHandler for crate::state::StateStore {
    fn apply(
        &self,
        type_url: &str,
        upserts: Vec<Resource>,
        removed: &[String],
    ) -> Result<(), String> {
        self.apply_delta(type_url, upserts, removed)
            .map_err(|e| e.to_string())
    }
}
