//! Which process orders certificates: exactly one at a time. Every process serves traffic and
//! answers challenges; only the holder of the lock places orders.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

/// Leadership for ordering. Files mode: a lock file in the state directory; cluster mode: a
/// Lease.
#[async_trait]
pub trait Leadership: Send + Sync {
    /// Returns once this process may order certificates.
    async fn acquire(&self);
    /// Whether it still may; checked before every step of an order.
    fn is_leader(&self) -> bool;
}

/// An exclusive lock on `<state-dir>/acme.lock`, held until the process exits (the operating
/// system releases it then, even after a crash).
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

impl FileLock {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            path: state_dir.join("acme.lock"),
            held: Mutex::new(None),
        }
    }

    fn try_take(&self) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if held.is_some() {
            return true;
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot open the ACME lock file");
                return false;
            }
        };
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                true
            }
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Leadership for FileLock {
    async fn acquire(&self) {
        let mut logged = false;
        while !self.try_take() {
            if !logged {
                tracing::info!(path = %self.path.display(), "another process orders certificates; waiting for its lock");
                logged = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    fn is_leader(&self) -> bool {
        self.held.lock().is_ok_and(|h| h.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileLock::new(dir.path().to_owned());
        let b = FileLock::new(dir.path().to_owned());
        a.acquire().await;
        assert!(a.is_leader());
        assert!(!b.try_take());
        drop(a);
        assert!(b.try_take(), "released when the holder goes away");
        assert!(b.is_leader());
    }
}
