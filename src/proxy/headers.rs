//! Request headers pylon reads and sets: Host, forwarded headers, request ID, size limits.

use std::io::Write as _;

use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::routing::host::{MAX_HOST_LEN, normalize_request_host};

pub(super) const X_REQUEST_ID: &str = "x-request-id";
/// The same name, for lookups that would otherwise parse the string each time.
pub(super) const X_REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(X_REQUEST_ID);
pub(super) const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub(super) const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub(super) const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub(super) const X_FORWARDED_PORT: &str = "x-forwarded-port";
pub(super) const X_REAL_IP: &str = "x-real-ip";

/// The raw authority of a request: `:authority` (HTTP/2, absolute-form) or `Host`.
pub(super) fn authority(req: &RequestHeader) -> Option<&[u8]> {
    req.uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers.get(http::header::HOST).map(|h| h.as_bytes()))
        .filter(|a| !a.is_empty())
}

/// The normalised host to route by, in `buf`.
pub(super) fn routing_host<'b>(req: &RequestHeader, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    authority(req).and_then(|raw| normalize_request_host(raw, buf))
}

/// Size of the request line and header fields as sent in HTTP/1.1.
pub(super) fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    let fields: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields
}

/// Whether a `Transfer-Encoding` value is `chunked` alone, the only coding pylon accepts (as
/// nginx does); any other coding would reach the pod undone.
pub(super) fn only_chunked(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// An incoming request ID is kept when it is short, visible ASCII; otherwise a new one is made.
pub(super) fn usable_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic())
}

/// 32 random hex digits, like nginx's `$request_id`.
pub(super) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let mut n = fastrand::u128(..);
    for digit in id.iter_mut().rev() {
        *digit = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// An IP address as a header value, formatted without a heap allocation of its own.
/// IPv4 addresses, the common case, skip the formatting machinery.
pub(super) fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                len += write_decimal(octet, &mut buf[len..]);
            }
            len
        }
        std::net::IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

/// Writes `n` in decimal at the start of `out` (room for three digits); returns the length.
fn write_decimal(n: u8, out: &mut [u8]) -> usize {
    let digits = [n / 100, n / 10 % 10, n % 10];
    let skip = if n >= 100 {
        0
    } else if n >= 10 {
        1
    } else {
        2
    };
    let digits = &digits[skip..];
    for (slot, d) in out.iter_mut().zip(digits) {
        *slot = b'0' + d;
    }
    digits.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, new_request_id());
        assert!(usable_request_id(b"abc-123"));
        assert!(!usable_request_id(b"has space"));
        assert!(!usable_request_id(&[b'a'; 200]));
        assert_eq!(ip_header_value("10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(ip_header_value("0.0.0.0".parse().unwrap()), "0.0.0.0");
        assert_eq!(ip_header_value("255.100.99.10".parse().unwrap()), "255.100.99.10");
        for octet in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(octet, 9, 10, 199);
            assert_eq!(ip_header_value(ip.into()), ip.to_string().as_str());
        }
        assert_eq!(
            ip_header_value("2001:db8::ffff:1:2:3".parse().unwrap()),
            "2001:db8::ffff:1:2:3"
        );
    }

    #[test]
    fn chunked_is_the_only_transfer_coding() {
        for ok in [&b"chunked"[..], b"Chunked", b" CHUNKED "] {
            assert!(only_chunked(ok), "{ok:?}");
        }
        for refused in [
            &b"gzip, chunked"[..],
            b"chunked, gzip",
            b"identity",
            b"xchunked",
            b"",
        ] {
            assert!(!only_chunked(refused), "{refused:?}");
        }
    }

    #[test]
    fn host_comes_from_authority_or_host_header() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "Example.COM:8080").unwrap();
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(routing_host(&req, &mut buf), Some("example.com"));
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri(http::Uri::from_static("https://a.example.com/x"));
        req.insert_header("host", "ignored.example.com").unwrap();
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(routing_host(&req, &mut buf), Some("a.example.com"));
    }
}
