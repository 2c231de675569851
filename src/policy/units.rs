//! Human-readable sizes ("512M") and durations ("10s") used in policy files.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A byte count written as `N[K|M|G|T]` (binary multiples) or `"max"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(pub Option<u64>);

impl ByteSize {
    pub const fn bytes(n: u64) -> Self {
        ByteSize(Some(n))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_size(&s).map(ByteSize)
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(n) = self.0 else {
            return f.write_str("max");
        };
        const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        for (mult, suffix) in UNITS {
            if n != 0 && n.is_multiple_of(mult) {
                return write!(f, "{}{suffix}", n / mult);
            }
        }
        write!(f, "{n}")
    }
}

pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t == "max" {
        return Ok(None);
    }
    let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match &t[i..] {
                "K" | "k" | "KiB" => 1 << 10,
                "M" | "m" | "MiB" => 1 << 20,
                "G" | "g" | "GiB" => 1 << 30,
                "T" | "t" | "TiB" => 1 << 40,
                other => {
                    return Err(format!("invalid size {s:?}: unknown unit {other:?} (use K, M, G, T or \"max\")"));
                }
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {s:?}: expected a number with an optional K/M/G/T unit"))?;
    n.checked_mul(mult).map(Some).ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// A duration written as `N(ms|s|m|h)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).map(HumanDuration)
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        d.to_string()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("invalid duration {s:?}: missing unit (ms, s, m or h)"))?;
    let n: u64 = t[..split].parse().map_err(|_| format!("invalid duration {s:?}: expected a number followed by ms, s, m or h"))?;
    let ms = match &t[split..] {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!("invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"));
        }
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_round_trip() {
        assert_eq!(parse_size("512M").unwrap(), Some(512 << 20));
        assert_eq!(parse_size("2G").unwrap(), Some(2 << 30));
        assert_eq!(parse_size("0").unwrap(), Some(0));
        assert_eq!(parse_size("max").unwrap(), None);
        assert_eq!(ByteSize::bytes(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize::bytes(1000).to_string(), "1000");
    }

    #[test]
    fn bad_sizes_are_refused_with_the_value_named() {
        for bad in ["", "12X", "-1", "1.5G", "99999999999999T"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
