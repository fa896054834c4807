//! Client addresses behind trusted proxies (`proxy.trusted-proxies`): a CDN or another proxy in
//! front of pylon says who its client was in `X-Forwarded-For`; pylon believes it only from
//! the addresses it is told to trust.

use std::net::IpAddr;

use http::HeaderMap;

use crate::routing::Cidr;

/// The proxies whose `X-Forwarded-*` headers are believed. Empty: none (the default).
#[derive(Clone, Debug, Default)]
pub(super) struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub(super) fn new(prefixes: Vec<Cidr>) -> Self {
        Self(prefixes)
    }

    /// Whether a request from `peer` may carry forwarded headers.
    pub(super) fn trusts(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|p| p.contains(peer))
    }

    /// The client of a request that `peer` (trusted) forwarded: walking `X-Forwarded-For` from
    /// its end, the first address that is not a trusted proxy, as nginx's `real_ip_recursive`
    /// does. An entry that is not an IP address ends the walk at the last address believed.
    pub(super) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        let values: Vec<&[u8]> = headers
            .get_all(super::headers::X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        for value in values.iter().rev() {
            for entry in value.rsplit(|b| *b == b',') {
                let Some(ip) = std::str::from_utf8(entry)
                    .ok()
                    .and_then(|e| e.trim().parse::<IpAddr>().ok())
                else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn trusted(prefixes: &[&str]) -> TrustedProxies {
        TrustedProxies::new(prefixes.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_last_address_not_trusted() {
        let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        let peer = ip("10.0.0.1");
        assert!(t.trusts(peer) && !t.trusts(ip("203.0.113.7")));
        assert_eq!(t.client(peer, &headers(&["203.0.113.7"])), ip("203.0.113.7"));
        // A client that sends its own X-Forwarded-For cannot choose its address.
        assert_eq!(
            t.client(peer, &headers(&["6.6.6.6, 203.0.113.7, 10.0.0.9"])),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            t.client(peer, &headers(&["6.6.6.6", "198.51.100.2, 2001:db8::5"])),
            ip("198.51.100.2")
        );
        // No header: the peer itself. Only trusted proxies: the first of them.
        assert_eq!(t.client(peer, &headers(&[])), peer);
        assert_eq!(t.client(peer, &headers(&["10.0.0.3, 10.0.0.2"])), ip("10.0.0.3"));
        // Garbage ends the walk at the last address believed.
        assert_eq!(t.client(peer, &headers(&["unknown, 10.0.0.2"])), ip("10.0.0.2"));
        assert_eq!(t.client(peer, &headers(&["203.0.113.7, not-an-ip"])), peer);
        assert_eq!(t.client(peer, &headers(&["203.0.113.7:443"])), peer, "no ports");
    }

    proptest! {
        /// Any `X-Forwarded-For` a client sends: the client found is the peer or an address
        /// from the list, and it is never a trusted proxy unless every address after it is one.
        #[test]
        fn any_forwarded_list_is_answered(
            lines in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
                        prop::sample::select(vec!["10.1.2.3", "10.0.0.9", "2001:db8::1", "::1"]).prop_map(str::to_owned),
                        "[ -~]{0,12}",
                    ],
                    0..5,
                ),
                0..4,
            ),
        ) {
            let t = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
            let peer = ip("10.0.0.1");
            let mut map = HeaderMap::new();
            let mut entries = Vec::new();
            for line in &lines {
                if let Ok(value) = line.join(",").parse() {
                    map.append("x-forwarded-for", value);
                    entries.extend(line.join(",").split(',').map(|e| e.trim().to_owned()));
                }
            }
            let client = t.client(peer, &map);
            // The walk from the end, written the slow way.
            let mut expected = peer;
            for entry in entries.iter().rev() {
                match entry.parse::<IpAddr>() {
                    Ok(ip) => {
                        expected = ip;
                        if !t.trusts(ip) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            prop_assert_eq!(client, expected);
        }
    }

    #[test]
    fn nobody_is_trusted_by_default() {
        assert!(!TrustedProxies::default().trusts(ip("127.0.0.1")));
    }
}
