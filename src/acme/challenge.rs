//! Stateless HTTP-01: the answer to a challenge is `<token>.<account thumbprint>`, so every
//! replica that knows the account key (from its Secret) answers every token correctly, whichever
//! replica the CA reaches and whichever placed the order.

use std::sync::Arc;

use foldhash::HashMap;

/// Hosts pylon manages certificates for with ACME, and the thumbprint of each one's account.
#[derive(Debug, Default)]
pub struct ChallengeIndex {
    by_host: HashMap<Box<str>, Arc<str>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The key authorization to send back, `text/plain`.
    Respond(String),
    /// A host pylon manages, but not a token a CA would send: 404.
    BadToken,
    /// Not a host pylon orders certificates for: routed like any other request.
    NotManaged,
}

impl ChallengeIndex {
    pub fn insert(&mut self, host: &str, thumbprint: Arc<str>) {
        self.by_host.entry(host.into()).or_insert(thumbprint);
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    pub fn manages(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }

    pub fn answer(&self, host: Option<&str>, token: &str) -> Answer {
        let Some(thumbprint) = host.and_then(|h| self.by_host.get(h)) else {
            return Answer::NotManaged;
        };
        if !valid_token(token) {
            return Answer::BadToken;
        }
        Answer::Respond(format!("{token}.{thumbprint}"))
    }
}

/// ACME tokens are base64url (RFC 8555 §8.3) with at least 128 bits of entropy.
pub fn valid_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_valid_tokens_for_managed_hosts() {
        let mut index = ChallengeIndex::default();
        index.insert("app.test", "THUMB".into());
        let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        assert_eq!(
            index.answer(Some("app.test"), token),
            Answer::Respond(format!("{token}.THUMB"))
        );
        assert_eq!(index.answer(Some("app.test"), "short"), Answer::BadToken);
        assert_eq!(
            index.answer(Some("app.test"), "../../etc/passwd-xxxxxxxxxxx"),
            Answer::BadToken
        );
        assert_eq!(index.answer(Some("other.test"), token), Answer::NotManaged);
        assert_eq!(index.answer(None, token), Answer::NotManaged);
    }
}
