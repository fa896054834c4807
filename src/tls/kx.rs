//! The key exchange groups of pylon's listeners, each counting the key exchanges it makes, for
//! `pylon_tls_key_exchanges_total{group}` (how many clients use the post-quantum hybrid).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{Error, NamedGroup, ProtocolVersion};

/// aws-lc-rs's default groups (X25519, P-256, P-384, X25519MLKEM768), in its order.
static GROUPS: LazyLock<Vec<Counted>> = LazyLock::new(|| {
    rustls::crypto::aws_lc_rs::DEFAULT_KX_GROUPS
        .iter()
        .map(|&inner| Counted {
            inner,
            count: AtomicU64::new(0),
        })
        .collect()
});

/// The groups, for a `CryptoProvider`.
pub(super) fn groups() -> Vec<&'static dyn SupportedKxGroup> {
    GROUPS
        .iter()
        .map(|g| g as &'static dyn SupportedKxGroup)
        .collect()
}

/// Each group's name (`X25519MLKEM768`, `X25519`, `secp256r1`, …) and its key exchanges so far.
pub fn counts() -> impl Iterator<Item = (String, u64)> {
    GROUPS
        .iter()
        .map(|g| (format!("{:?}", g.inner.name()), g.count.load(Ordering::Relaxed)))
}

struct Counted {
    inner: &'static dyn SupportedKxGroup,
    count: AtomicU64,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl SupportedKxGroup for Counted {
    /// TLS 1.2: the server's share first, the client's later.
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.start()
    }

    /// TLS 1.3: the client's share is known.
    fn start_and_complete(&self, peer_pub_key: &[u8]) -> Result<CompletedKeyExchange, Error> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.start_and_complete(peer_pub_key)
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}
