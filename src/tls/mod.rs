//! TLS: PEM parsing and validation, the certificate index and the rustls SNI resolver.
//!
//! Certificates are parsed and key-checked by [`Certificate::from_pem`] before they reach an
//! index; the resolver only looks names up in the published snapshot (no I/O, no locks).

mod certificate;
mod index;
mod resolver;

pub use certificate::{Certificate, Error, self_signed};
pub use index::{CertIndex, CertIndexBuilder, Matched};
pub use resolver::{ConnectionInfo, HandshakeCallbacks, SniResolver};

use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use pingora::tls::TlsAcceptor;
use prometheus::IntCounter;
use rustls::server::ProducesTickets;

/// Sets how clients resume TLS sessions on `acceptor` (`tls.session-resumption`).
///
/// On: stateless session tickets, so any client can resume. (rustls's default keeps sessions
/// in a 256-entry cache and hands out two tickets per connection, so on a busy listener a
/// client's session is gone after about 128 other connections.) Tickets are encrypted with
/// ChaCha20-Poly1305 under a random key that is replaced every 6 hours (a ticket lives 12);
/// the key never leaves the process, so a client that reaches another replica makes a full
/// handshake. TLS 1.3 resumption still runs an (EC)DHE exchange, no 0-RTT data is accepted,
/// and rustls resumes a session only for the server name it was made for. TLS 1.2 clients
/// without ticket support keep rustls's session cache.
///
/// Off: no tickets and no cache; every connection makes a full handshake.
///
/// `tickets_accepted` counts the tickets clients present that decrypt: resumed sessions.
pub fn set_session_resumption(
    acceptor: &mut Acceptor,
    enabled: bool,
    tickets_accepted: IntCounter,
) -> Result<(), rustls::Error> {
    let mut config = (**acceptor.acceptor.config()).clone();
    if enabled {
        config.ticketer = Arc::new(CountedTickets {
            inner: rustls::crypto::ring::Ticketer::new()?,
            accepted: tickets_accepted,
        });
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    acceptor.acceptor = TlsAcceptor::from(Arc::new(config));
    Ok(())
}

/// rustls's ticketer, counting the tickets that decrypt.
#[derive(Debug)]
struct CountedTickets {
    inner: Arc<dyn ProducesTickets>,
    accepted: IntCounter,
}

impl ProducesTickets for CountedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        if plain.is_some() {
            self.accepted.inc();
        }
        plain
    }
}
