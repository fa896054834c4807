//! Sizes written the way nginx writes them: `1024`, `16k`, `8m`, `1g` (powers of 1024).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size like 1024, 16k, 8m or 1g")]
pub struct ParseSizeError(String);

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSizeError(s.to_owned());
        let t = s.trim();
        let (digits, unit) = match t.as_bytes().last() {
            Some(b'k' | b'K') => (&t[..t.len() - 1], 1u64 << 10),
            Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
            Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
            _ => (t, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(unit).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 1024, \"16k\" or \"8m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nginx_sizes() {
        assert_eq!("0".parse(), Ok(ByteSize(0)));
        assert_eq!("1024".parse(), Ok(ByteSize(1024)));
        assert_eq!("16k".parse(), Ok(ByteSize(16 * 1024)));
        assert_eq!("8M".parse(), Ok(ByteSize(8 << 20)));
        assert_eq!("1g".parse(), Ok(ByteSize(1 << 30)));
        for bad in ["", "k", "1.5m", "-1", "1t", "99999999999999999999g"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }
}
