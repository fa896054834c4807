//! Writing to the API server in cluster mode: certificate and account Secrets (server-side
//! apply, never over a Secret pylon did not create), the Lease that elects the one process that
//! orders certificates and writes status, Ingress status, and Events on the objects users look at.

pub mod events;
pub mod lease;
pub mod secrets;
pub mod status;
pub mod tickets;

/// The field manager of everything pylon applies.
pub const FIELD_MANAGER: &str = "pylon";
