//! Stateless session tickets: the keys that encrypt them, this process's own or shared by every
//! replica (see `cluster::tickets`).
//!
//! A ticket is `key name (16 bytes) ‖ nonce (12) ‖ ChaCha20-Poly1305(session state) ‖ tag (16)`,
//! with the key name as associated data, so any process holding the named key can open it.
//! Tickets are encrypted under the newest shared key that every replica has had time to read,
//! and under this process's own key when there is no fresh shared key (outside a cluster, before
//! the Secret is read, or when nobody has rotated the shared keys for two periods: an API
//! server down for hours must not leave one key in use for ever).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// The length of a key's name, sent in clear at the start of every ticket.
pub const NAME_LEN: usize = 16;
/// The length of a ChaCha20-Poly1305 key.
pub const KEY_LEN: usize = 32;
/// The length of a key as stored: its name, then the key.
pub const MATERIAL_LEN: usize = NAME_LEN + KEY_LEN;
const TAG_LEN: usize = 16;
/// TLS 1.3 caps a ticket's lifetime at seven days (RFC 8446, 4.6.1).
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// One ticket key.
pub struct TicketKey {
    name: [u8; NAME_LEN],
    created: SystemTime,
    aead: LessSafeKey,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// A key from its stored form, [`MATERIAL_LEN`] bytes.
    pub fn from_material(material: &[u8], created: SystemTime) -> Result<Self, String> {
        if material.len() != MATERIAL_LEN {
            return Err(format!(
                "a ticket key is {MATERIAL_LEN} bytes (a 16-byte name and a 32-byte key), not {}",
                material.len()
            ));
        }
        let (name, key) = material.split_at(NAME_LEN);
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| "not a ChaCha20-Poly1305 key".to_owned())?;
        Ok(Self {
            name: name.try_into().expect("split at NAME_LEN"),
            created,
            aead: LessSafeKey::new(unbound),
        })
    }

    /// New random key material, to store or to use.
    pub fn generate_material() -> Result<[u8; MATERIAL_LEN], rustls::Error> {
        let mut material = [0u8; MATERIAL_LEN];
        SystemRandom::new()
            .fill(&mut material)
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok(material)
    }

    pub fn created(&self) -> SystemTime {
        self.created
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.name),
                &mut out[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::try_assume_unique_for_key(ticket.get(NAME_LEN..NAME_LEN + NONCE_LEN)?).ok()?;
        let mut sealed = ticket.get(NAME_LEN + NONCE_LEN..)?.to_vec();
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(&self.name), &mut sealed)
            .ok()?
            .len();
        sealed.truncate(plain_len);
        Some(sealed)
    }
}

/// The time every replica is given to read a new shared key before tickets are encrypted
/// under it: a quarter of the rotation period, at most a minute.
pub fn propagation(rotation: Duration) -> Duration {
    (rotation / 4).min(Duration::from_secs(60))
}

/// The ticket keys of one listener, and rustls's [`ProducesTickets`] over them.
#[derive(Debug)]
pub struct SessionTickets {
    rotation: Duration,
    /// Keys read from the shared Secret, oldest first.
    shared: ArcSwap<Vec<TicketKey>>,
    /// This process's own keys, oldest first: the current one and the two before it (a ticket
    /// lives two rotation periods).
    local: ArcSwap<Vec<Arc<TicketKey>>>,
    rotating: Mutex<()>,
    accepted: IntCounter,
    shared_keys: IntGauge,
}

impl SessionTickets {
    /// Keys replaced every `rotation`; `accepted` counts the tickets that decrypt (resumed
    /// sessions), `shared_keys` shows how many shared keys are in use.
    pub fn new(
        rotation: Duration,
        accepted: IntCounter,
        shared_keys: IntGauge,
    ) -> Result<Self, rustls::Error> {
        let first = local_key(SystemTime::now())?;
        Ok(Self {
            rotation,
            shared: ArcSwap::from_pointee(Vec::new()),
            local: ArcSwap::from_pointee(vec![Arc::new(first)]),
            rotating: Mutex::new(()),
            accepted,
            shared_keys,
        })
    }

    pub fn rotation(&self) -> Duration {
        self.rotation
    }

    /// Replaces the shared keys (an empty list: none, this process's own keys only).
    pub fn set_shared(&self, mut keys: Vec<TicketKey>) {
        keys.sort_by_key(|k| k.created);
        self.shared_keys.set(keys.len() as i64);
        self.shared.store(Arc::new(keys));
    }

    /// Encrypts under the chosen shared key, else under this process's own current key.
    fn with_encrypting_key<T>(&self, now: SystemTime, f: impl FnOnce(&TicketKey) -> T) -> Option<T> {
        let shared = self.shared.load();
        if let Some(key) = choose_shared(&shared, now, self.rotation) {
            return Some(f(key));
        }
        let local = self.local_key(now)?;
        Some(f(&local))
    }

    /// This process's current key, replaced once it is a rotation period old.
    fn local_key(&self, now: SystemTime) -> Option<Arc<TicketKey>> {
        let keys = self.local.load();
        let newest = keys.last()?;
        if !is_older_than(newest.created, now, self.rotation) {
            return Some(newest.clone());
        }
        let _guard = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.local.load();
        let newest = keys.last()?;
        if !is_older_than(newest.created, now, self.rotation) {
            return Some(newest.clone());
        }
        let fresh = Arc::new(local_key(now).ok()?);
        let mut next: Vec<Arc<TicketKey>> = keys.iter().rev().take(2).rev().cloned().collect();
        next.push(fresh.clone());
        self.local.store(Arc::new(next));
        Some(fresh)
    }
}

fn local_key(now: SystemTime) -> Result<TicketKey, rustls::Error> {
    let material = TicketKey::generate_material()?;
    Ok(TicketKey::from_material(&material, now).expect("generated material has the right length"))
}

fn is_older_than(created: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(created).is_ok_and(|a| a >= age)
}

/// The shared key to encrypt under: the newest one that is older than the propagation time (so
/// every replica has read it); the oldest when none is (a Secret just created); none when the
/// chosen key is two rotation periods old (nobody is rotating).
fn choose_shared(keys: &[TicketKey], now: SystemTime, rotation: Duration) -> Option<&TicketKey> {
    let settled = propagation(rotation);
    let key = keys
        .iter()
        .rev()
        .find(|k| is_older_than(k.created, now, settled))
        .or_else(|| keys.first())?;
    (!is_older_than(key.created, now, rotation * 2 + settled)).then_some(key)
}

impl ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// The lifetime clients are told: two rotation periods (a key encrypts for one period and
    /// is kept to decrypt for two more), at most seven days.
    fn lifetime(&self) -> u32 {
        (self.rotation * 2).min(MAX_LIFETIME).as_secs().max(1) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.with_encrypting_key(SystemTime::now(), |key| key.seal(plain))
            .flatten()
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let name = ticket.get(..NAME_LEN)?;
        let shared = self.shared.load();
        let plain = match shared.iter().find(|k| k.name == name) {
            Some(key) => key.open(ticket),
            None => {
                let local = self.local.load();
                local.iter().find(|k| k.name == name)?.open(ticket)
            }
        };
        if plain.is_some() {
            self.accepted.inc();
        }
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickets(rotation: Duration) -> SessionTickets {
        SessionTickets::new(
            rotation,
            IntCounter::new("a", "a").unwrap(),
            IntGauge::new("b", "b").unwrap(),
        )
        .unwrap()
    }

    fn key(created: SystemTime) -> TicketKey {
        TicketKey::from_material(&TicketKey::generate_material().unwrap(), created).unwrap()
    }

    #[test]
    fn a_ticket_opens_only_with_its_key_and_unaltered() {
        let a = tickets(Duration::from_secs(3600));
        let b = tickets(Duration::from_secs(3600));
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + 13 + TAG_LEN);
        assert_eq!(a.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(b.decrypt(&ticket), None, "another process's own key");
        let mut altered = ticket.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(a.decrypt(&altered), None);
        assert_eq!(a.decrypt(&ticket[..20]), None);
        assert_eq!(a.accepted.get(), 1);
    }

    #[test]
    fn replicas_with_the_same_shared_keys_open_each_others_tickets() {
        let now = SystemTime::now();
        let material = TicketKey::generate_material().unwrap();
        let (a, b) = (
            tickets(Duration::from_secs(3600)),
            tickets(Duration::from_secs(3600)),
        );
        for t in [&a, &b] {
            t.set_shared(vec![
                TicketKey::from_material(&material, now - Duration::from_secs(600)).unwrap(),
            ]);
        }
        let ticket = a.encrypt(b"state").unwrap();
        assert_eq!(&ticket[..NAME_LEN], &material[..NAME_LEN]);
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        // Without shared keys, a's tickets are its own again; the shared ones still open.
        a.set_shared(Vec::new());
        assert_eq!(b.decrypt(&a.encrypt(b"x").unwrap()), None);
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
    }

    #[test]
    fn the_encrypting_shared_key_is_the_newest_settled_one() {
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now();
        let keys = [now - hour * 7, now - hour, now - Duration::from_secs(10)].map(key);
        let name = |k: Option<&TicketKey>| k.map(|k| k.name);
        // The newest is 10 s old: replicas may not have it yet (propagation: 60 s).
        assert_eq!(name(choose_shared(&keys, now, hour * 6)), Some(keys[1].name));
        assert_eq!(
            name(choose_shared(&keys[2..], now, hour * 6)),
            Some(keys[2].name),
            "the only key"
        );
        assert_eq!(name(choose_shared(&keys[..1], now, hour * 6)), Some(keys[0].name));
        // Nobody rotated for two periods and a minute: this process's own keys again.
        assert_eq!(name(choose_shared(&keys[..1], now, hour * 3)), None);
        assert_eq!(name(choose_shared(&[], now, hour)), None);
    }

    #[test]
    fn own_keys_rotate_and_the_previous_one_still_opens() {
        let t = tickets(Duration::from_secs(3600));
        let old = t.encrypt(b"old").unwrap();
        let later = SystemTime::now() + Duration::from_secs(3601);
        let new = t
            .with_encrypting_key(later, |k| k.seal(b"new"))
            .flatten()
            .unwrap();
        assert_ne!(old[..NAME_LEN], new[..NAME_LEN]);
        assert_eq!(t.decrypt(&old).as_deref(), Some(&b"old"[..]));
        assert_eq!(t.decrypt(&new).as_deref(), Some(&b"new"[..]));
        assert_eq!(t.lifetime(), 7200);
        assert_eq!(
            tickets(Duration::from_secs(30 * 24 * 3600)).lifetime(),
            7 * 24 * 3600
        );
    }
}
