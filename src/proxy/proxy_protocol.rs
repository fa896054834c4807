//! The PROXY protocol (versions 1 and 2, as HAProxy specifies it): the header a load balancer
//! sends at the start of each connection, before any TLS, to say which client it carries.
//!
//! [`parse`] is pure: it reads a header from the bytes received so far, or says how it is
//! malformed. [`read_header`] reads one from a connection without keeping the bytes after it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Version 2's signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest header, CRLF included.
const V1_MAX: usize = 107;
/// Version 2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The largest version 2 header accepted: the addresses and TLVs load balancers add (AWS, GCP
/// and Azure send under 300 bytes) fit with room to spare; a client can make pylon hold no
/// more than this before the header is refused.
pub(super) const V2_MAX: usize = V2_FIXED + 2048;

/// A complete header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// Its length in bytes: what follows is the client's own data.
    pub(super) len: usize,
    /// The client's address, when the header carries one (not for `UNKNOWN`, `LOCAL` health
    /// checks, or families other than TCP over IPv4 and IPv6).
    pub(super) source: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    Complete(Header),
    /// More bytes are needed.
    Incomplete,
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Error {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("a PROXY protocol version 1 header is malformed: {0}")]
    V1(&'static str),
    #[error("a PROXY protocol version 2 header is malformed: {0}")]
    V2(&'static str),
    #[error("the PROXY protocol header is longer than {V2_MAX} bytes")]
    TooLong,
    #[error("the connection closed before the PROXY protocol header ended")]
    Closed,
}

impl Error {
    /// A short label for metrics.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Error::Missing => "missing",
            Error::V1(_) | Error::V2(_) => "malformed",
            Error::TooLong => "too_long",
            Error::Closed => "closed",
        }
    }
}

/// Reads a header from the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    let prefix_of = |whole: &[u8]| whole.starts_with(&buf[..buf.len().min(whole.len())]);
    if buf.len() >= SIGNATURE.len() && buf.starts_with(SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else if prefix_of(SIGNATURE) || prefix_of(b"PROXY ") {
        Ok(Parsed::Incomplete)
    } else {
        Err(Error::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Error::V1("no CRLF within 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| Error::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let source = match fields.next() {
        // The rest of an UNKNOWN line is ignored, as the specification says.
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let parts: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = parts[..] else {
                return Err(Error::V1("expected source, destination and two ports"));
            };
            let ip = |s: &str| -> Result<IpAddr, Error> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| Error::V1("an address is not an IP address"))?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(Error::V1("an address is not of the family named")),
                }
            };
            let port = |s: &str| -> Result<u16, Error> {
                let valid = !s.is_empty()
                    && s.len() <= 5
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'));
                s.parse()
                    .ok()
                    .filter(|_| valid)
                    .ok_or(Error::V1("a port is not a number from 0 to 65535"))
            };
            ip(dst)?;
            port(dport)?;
            Some(SocketAddr::new(ip(src)?, port(sport)?))
        }
        _ => return Err(Error::V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete(Header { len: end + 2, source }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (version_command, family) = (buf[12], buf[13]);
    if version_command >> 4 != 2 {
        return Err(Error::V2("the version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::V2("the command is not LOCAL or PROXY")),
    };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(Error::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[V2_FIXED..len];
    let source = match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = body.get(..12).ok_or(Error::V2("too short for IPv4 addresses"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        0x21 => {
            let a = body.get(..36).ok_or(Error::V2("too short for IPv6 addresses"))?;
            let octets: [u8; 16] = a[..16].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[32], a[33]])))
        }
        // UNSPEC, UDP and UNIX sockets: no TCP client address to report.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Err(Error::V2("unknown address family")),
    };
    Ok(Parsed::Complete(Header {
        len,
        // A LOCAL connection is the load balancer's own (a health check).
        source: source.filter(|_| !local),
    }))
}

/// Reads a header from `io`. Returns it and the bytes read after it (the start of the
/// client's own data, to be read again).
pub(super) async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<(Header, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = io.read(&mut chunk).await.map_err(|_| Error::Closed)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Parsed::Complete(header) = parse(&buf)? {
            return Ok((header, buf.split_off(header.len)));
        }
        if buf.len() > V2_MAX {
            return Err(Error::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn source(buf: &[u8]) -> Option<SocketAddr> {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h.source,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_1_headers() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Complete(Header {
                len: 43,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }))
        );
        assert_eq!(
            source(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n"),
            Some("[2001:db8::7]:65535".parse().unwrap())
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(source(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"), None);
        // Byte by byte, every prefix asks for more.
        for end in 0..43 {
            assert_eq!(parse(&h[..end]), Ok(Parsed::Incomplete), "{end}");
        }
    }

    #[test]
    fn malformed_version_1_headers_are_refused() {
        for (bad, why) in [
            (&b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n"[..], "two ports"),
            (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "family"),
            (b"PROXY TCP6 203.0.113.7 10.0.0.1 1 2\r\n", "family"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n", "port"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n", "port"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n", "port"),
            (b"PROXY TCP4  203.0.113.7 10.0.0.1 1 443\r\n", "two ports"),
            (b"PROXY TCP4 example.com 10.0.0.1 1 443\r\n", "IP address"),
            (
                b"PROXY UDP4 203.0.113.7 10.0.0.1 1 443\r\n",
                "TCP4, TCP6 or UNKNOWN",
            ),
        ] {
            let err = parse(bad).expect_err(std::str::from_utf8(bad).unwrap());
            assert!(err.to_string().contains(why), "{err}");
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err(Error::V1("no CRLF within 107 bytes")));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(Error::Missing), "a TLS ClientHello");
        assert_eq!(parse(b"PROXY"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn version_2_headers() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb];
        let h = v2(1, 0x11, &v4);
        assert_eq!(h.len(), 28);
        assert_eq!(
            parse(&[h.as_slice(), b"\x16\x03\x01"].concat()),
            Ok(Parsed::Complete(Header {
                len: 28,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }))
        );
        for end in 0..h.len() {
            assert_eq!(parse(&h[..end]), Ok(Parsed::Incomplete), "{end}");
        }
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80, 1, 187]);
        // TLVs after the addresses (here an AWS VPC endpoint ID) are skipped.
        v6.extend_from_slice(&[0xea, 0, 5, 1, b'v', b'p', b'c', b'e']);
        assert_eq!(
            source(&v2(1, 0x21, &v6)),
            Some("[2001:db8::7]:80".parse().unwrap())
        );
        assert_eq!(
            parse(&v2(1, 0x21, &v6)).map(|p| matches!(p, Parsed::Complete(h) if h.len == 16 + 44)),
            Ok(true)
        );
        // A health check of the load balancer's own, and families without a TCP client.
        assert_eq!(source(&v2(0, 0x11, &v4)), None);
        assert_eq!(source(&v2(0, 0x00, &[])), None);
        assert_eq!(source(&v2(1, 0x31, &[0; 216])), None);
    }

    #[test]
    fn malformed_version_2_headers_are_refused() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb];
        let mut wrong_version = v2(1, 0x11, &v4);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(Error::V2("the version is not 2")));
        assert_eq!(
            parse(&v2(2, 0x11, &v4)),
            Err(Error::V2("the command is not LOCAL or PROXY"))
        );
        assert_eq!(
            parse(&v2(1, 0x11, &v4[..8])),
            Err(Error::V2("too short for IPv4 addresses"))
        );
        assert_eq!(
            parse(&v2(1, 0x21, &v4)),
            Err(Error::V2("too short for IPv6 addresses"))
        );
        assert_eq!(parse(&v2(1, 0x41, &v4)), Err(Error::V2("unknown address family")));
        let mut huge = v2(1, 0x11, &v4);
        huge[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(parse(&huge[..16]), Err(Error::TooLong));
    }

    /// A valid header for `source` (version 1 or 2, with TLVs after a version 2 header's
    /// addresses), as a load balancer would send it.
    fn valid_header(source: SocketAddr, version: u8, tlvs: &[u8]) -> Vec<u8> {
        let (family, destination) = match source {
            SocketAddr::V4(_) => ("TCP4", IpAddr::from(Ipv4Addr::new(10, 0, 0, 1))),
            SocketAddr::V6(_) => ("TCP6", IpAddr::from(Ipv6Addr::LOCALHOST)),
        };
        if version == 1 {
            let (ip, port) = (source.ip(), source.port());
            return format!("PROXY {family} {ip} {destination} {port} 443\r\n").into_bytes();
        }
        let mut body = Vec::new();
        let family = match (source.ip(), destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                body.extend_from_slice(&s.octets());
                body.extend_from_slice(&d.octets());
                0x21
            }
            _ => unreachable!("one family"),
        };
        body.extend_from_slice(&source.port().to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(1, family, &body)
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    proptest! {
        /// Whatever a client sends first, parsing answers without panicking, and a complete
        /// header never claims more bytes than were received.
        #[test]
        fn arbitrary_bytes_are_answered(
            prefix in prop::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", &SIGNATURE[..]]),
            rest in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let buf = [prefix, &rest].concat();
            if let Ok(Parsed::Complete(h)) = parse(&buf) {
                prop_assert!(h.len <= buf.len());
            }
        }

        /// A valid header followed by the client's data: every prefix of the header asks for
        /// more, the whole gives its client and exact length, whatever follows it.
        #[test]
        fn valid_headers_are_read_exactly(
            source in address(),
            version in 1..=2u8,
            tlvs in prop::collection::vec(any::<u8>(), 0..64),
            data in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = valid_header(source, version, &tlvs);
            for end in 0..header.len() {
                prop_assert_eq!(parse(&header[..end]), Ok(Parsed::Incomplete));
            }
            let expected = Parsed::Complete(Header { len: header.len(), source: Some(source) });
            prop_assert_eq!(parse(&[header.as_slice(), &data].concat()), Ok(expected));
        }

        /// One byte of a valid header changed: refused, incomplete, or read as a header whose
        /// length stays within what was received; never a panic.
        #[test]
        fn corrupted_headers_are_answered(
            source in address(),
            version in 1..=2u8,
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut header = valid_header(source, version, &[]);
            let i = at.index(header.len());
            header[i] = byte;
            if let Ok(Parsed::Complete(h)) = parse(&header) {
                prop_assert!(h.len <= header.len());
            }
        }
    }

    #[tokio::test]
    async fn the_bytes_after_the_header_are_kept() {
        let mut data: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n\r\n";
        let (header, rest) = read_header(&mut data).await.unwrap();
        assert_eq!(header.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        let mut short: &[u8] = b"PROXY TCP4 203.0.113.7";
        assert_eq!(read_header(&mut short).await, Err(Error::Closed));
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(read_header(&mut plain).await, Err(Error::Missing));
    }
}
