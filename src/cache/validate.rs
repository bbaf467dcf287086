//! Input rules of the cache API: keys, versions, `Content-Range` of uploads, `Range` of
//! downloads, and the coverage check of a commit.

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 512;
/// Longest version accepted.
pub const MAX_VERSION_LEN: usize = 512;
/// Most keys in one lookup.
pub const MAX_LOOKUP_KEYS: usize = 10;

/// A key: 1-512 characters, no `..`, `\`, NUL (or other control characters), leading `/`,
/// or comma.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars().count() <= MAX_KEY_LEN
        && !k.contains("..")
        && !k.starts_with('/')
        && !k.chars().any(|c| c == '\\' || c == ',' || c.is_control())
}

/// A version: 1-512 characters without control characters or commas.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.chars().count() <= MAX_VERSION_LEN
        && !v.chars().any(|c| c == ',' || c.is_control())
}

/// Parses `bytes S-E/*` (or `bytes S-E/TOTAL`) into the inclusive range `(S, E)`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    if total != "*" && total.parse::<u64>().is_err() {
        return None;
    }
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    (s <= e).then_some((s, e))
}

/// Result of matching a `Range` header against a length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No (usable) range: the whole body.
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses a single-range `Range: bytes=...` header (multiple ranges are answered in full).
pub fn parse_range(v: Option<&str>, len: u64) -> RangeReq {
    let Some(spec) = v.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((s, e)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (s, e) = (s.trim(), e.trim());
    let (start, end) = if s.is_empty() {
        let Ok(n) = e.parse::<u64>() else {
            return RangeReq::Full;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let Ok(start) = s.parse::<u64>() else {
            return RangeReq::Full;
        };
        let end = if e.is_empty() {
            len.saturating_sub(1)
        } else {
            match e.parse::<u64>() {
                Ok(x) => x.min(len.saturating_sub(1)),
                Err(_) => return RangeReq::Full,
            }
        };
        if start >= len || start > end {
            return RangeReq::Unsatisfiable;
        }
        (start, end)
    };
    RangeReq::Part(start, end)
}

/// True when the half-open ranges cover exactly `[0, size)`: no gap, nothing past `size`.
pub fn covers_exactly(mut ranges: Vec<(i64, i64)>, size: i64) -> bool {
    ranges.sort_unstable();
    let mut covered = 0i64;
    for (s, e) in ranges {
        if s > covered || e > size {
            return false;
        }
        covered = covered.max(e);
    }
    covered == size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key("npm-linux-abc123"));
        assert!(valid_key("a/b"));
        for bad in ["", "/abs", "a/../b", "..", "a\\b", "a\0b", "a,b", "a\nb"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
        assert!(valid_key(&"k".repeat(512)));
        assert!(!valid_key(&"k".repeat(513)));
        assert!(valid_version(&"f".repeat(512)));
        assert!(!valid_version(&"f".repeat(513)));
        assert!(!valid_version(""));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, 9)));
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes 9-0/*"), None);
        assert_eq!(parse_content_range("bytes -1-9/*"), None);
        assert_eq!(parse_content_range("items 0-9/*"), None);
        assert_eq!(parse_content_range("bytes 0-9"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeReq::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeReq::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeReq::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=2-100"), 10), RangeReq::Part(2, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeReq::Full);
        assert!(covers_exactly(vec![(5, 10), (0, 5)], 10));
        assert!(covers_exactly(vec![(0, 6), (4, 10)], 10));
        assert!(!covers_exactly(vec![(0, 4), (5, 10)], 10));
        assert!(!covers_exactly(vec![(0, 11)], 10));
        assert!(!covers_exactly(vec![(0, 9)], 10));
        assert!(covers_exactly(vec![], 0));
    }
}
