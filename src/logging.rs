//! Log output: `tracing` for pylon's own events, and a bridge for pingora's `log` records that
//! counts TLS handshake failures and quiets what clients cause every day.

use std::io::IsTerminal;
use std::sync::Arc;

use prometheus::IntCounter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the `tracing` subscriber (stderr) and the bridge for pingora's `log` records.
pub fn init(config: &LogConfig, handshake_failures: IntCounter) {
    let filter = EnvFilter::builder()
        .parse(&config.level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    let bridge = PingoraLog {
        handshake_failures: Arc::new(handshake_failures),
    };
    if log::set_boxed_logger(Box::new(bridge)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// What a pingora log line means to an operator.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A TLS handshake failed or timed out: counted, logged at debug.
    HandshakeFailure,
    /// Clients closing connections, scanners sending garbage: logged at debug.
    ClientNoise,
    /// One request failed upstream; the access log and metrics have it too: logged as a warning.
    RequestFailure,
    Other,
}

fn classify(message: &str) -> Kind {
    if message.starts_with("Downstream handshake error")
        || message.starts_with("Downstream handshake timeout")
    {
        Kind::HandshakeFailure
    } else if message.starts_with("H2 handshake error")
        || message.contains("Downstream ConnectionClosed")
        || message.contains("Peer closed connection")
        || message.starts_with("Fail to proxy: Downstream")
    {
        Kind::ClientNoise
    } else if message.starts_with("Fail to proxy") {
        Kind::RequestFailure
    } else {
        Kind::Other
    }
}

struct PingoraLog {
    handshake_failures: Arc<IntCounter>,
}

impl log::Log for PingoraLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let target = record.target();
        match classify(&message) {
            Kind::HandshakeFailure => {
                self.handshake_failures.inc();
                tracing::debug!(target: "pingora", source = target, "{message}");
            }
            Kind::ClientNoise => tracing::debug!(target: "pingora", source = target, "{message}"),
            Kind::RequestFailure => tracing::warn!(target: "pingora", source = target, "{message}"),
            Kind::Other => match record.level() {
                log::Level::Error => {
                    tracing::error!(target: "pingora", source = target, "{message}")
                }
                log::Level::Warn => tracing::warn!(target: "pingora", source = target, "{message}"),
                _ => tracing::debug!(target: "pingora", source = target, "{message}"),
            },
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_pingora_lines() {
        assert_eq!(
            classify("Downstream handshake error from 127.0.0.1:5555: TLSHandshakeFailure"),
            Kind::HandshakeFailure
        );
        assert_eq!(classify("H2 handshake error Connection reset"), Kind::ClientNoise);
        assert_eq!(
            classify("Fail to proxy: Upstream ConnectRefused"),
            Kind::RequestFailure
        );
        assert_eq!(classify("Server starting"), Kind::Other);
    }
}
