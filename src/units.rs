//! Parsing of human-written quantities: sizes (`512M`), durations (`30s`, `5m`) and fractional CPU counts.
//!
//! Every parser returns a [`UnitError`] that names what was wrong and what a valid value looks like, so the CLI
//! can print one line and exit 125 without having changed anything.

use std::time::Duration;

/// A quantity that did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error(
        "invalid size {0:?}: use a whole number with an optional K, M, G or T suffix, e.g. 512M"
    )]
    Size(String),
    #[error("invalid duration {0:?}: use a number with a unit ms, s, m or h, e.g. 30s or 5m")]
    Duration(String),
    #[error("invalid CPU count {0:?}: use a number greater than 0, e.g. 0.5 or 2")]
    Cpus(String),
}

/// Parses a byte size: `1048576`, `64k`, `512M`, `2G`, `1T` (binary multiples, case-insensitive, optional `B`/`iB`).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (digits, mult) = match t.chars().last().ok_or_else(err)? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(mult).ok_or_else(err)
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    let t = s.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    if !v.is_finite() || v <= 0.0 || num.starts_with(['+', '-']) {
        return Err(err());
    }
    let ms = v * unit_ms as f64;
    if ms < 1.0 || ms > (u64::MAX / 2) as f64 {
        return Err(err());
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Parses a CPU count (`0.5`, `2`); must be > 0 and at most 1024.
pub fn parse_cpus(s: &str) -> Result<f64, UnitError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| UnitError::Cpus(s.to_string()))?;
    if !v.is_finite() || v <= 0.0 || v > 1024.0 {
        return Err(UnitError::Cpus(s.to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        for bad in ["", "M", "-1M", "1.5G", "12X", "1e9", " ", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        for bad in ["", "0s", "-1s", "abc", "1d", "NaNs", "infs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        for bad in ["0", "-1", "x", "NaN", "inf", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
