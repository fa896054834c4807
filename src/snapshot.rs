//! The snapshot: everything the request path and the TLS resolver read, published as one value.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::acme::challenge::ChallengeIndex;
use crate::routing::RouteTable;
use crate::tls::CertIndex;

/// Immutable after construction; replaced as a whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every publication; 0 is the empty snapshot before the first one.
    pub generation: u64,
    pub routes: RouteTable,
    pub certs: CertIndex,
    /// Hosts whose ACME HTTP-01 challenges this replica answers.
    pub challenges: Arc<ChallengeIndex>,
}

/// The shared, atomically replaced current snapshot.
#[derive(Clone, Debug, Default)]
pub struct Published(Arc<ArcSwap<Snapshot>>);

impl Published {
    pub fn new(initial: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// The current snapshot, for the request path: no lock, no allocation. Do not hold the guard
    /// across an `.await`; use [`Self::load_full`] there.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.store(snapshot);
    }
}
