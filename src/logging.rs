//! Log output: `tracing` for pylon's own events, and a bridge for pingora's `log` records that
//! quiets what clients cause every day.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the `tracing` subscriber (stderr) and the bridge for pingora's `log` records.
pub fn init(config: &LogConfig) {
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
    if log::set_boxed_logger(Box::new(PingoraLog)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// What a pingora log line means to an operator.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Clients closing connections, scanners sending garbage: logged at debug.
    ClientNoise,
    /// One request failed upstream; the access log and metrics have it too: logged as a warning.
    RequestFailure,
    Other,
}

fn classify(message: &str) -> Kind {
    if message.starts_with("H2 handshake error")
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

struct PingoraLog;

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
            classify("Fail to proxy: Downstream ReadError context: Peer closed connection"),
            Kind::ClientNoise
        );
        assert_eq!(classify("H2 handshake error Connection reset"), Kind::ClientNoise);
        assert_eq!(
            classify("Fail to proxy: Upstream ConnectRefused"),
            Kind::RequestFailure
        );
        assert_eq!(classify("Server starting"), Kind::Other);
    }
}
