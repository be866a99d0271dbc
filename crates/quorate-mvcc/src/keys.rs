//! etcd's key-range conventions: an empty `range_end` means the single key,
//! `range_end == "\0"` means every key >= `key`, anything else is `[key, range_end)`.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means unbounded.
    Span {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0u8] {
            KeyRange::Span {
                start: key.to_vec(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_slice() == k,
            KeyRange::Span { start, end } => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
        }
    }

    /// True when no key can be in the range (e.g. `range_end <= key`).
    pub fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Span { start, end } => end.as_ref().is_some_and(|e| e <= start),
        }
    }

    /// Whether two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let (a0, a1) = self.bounds();
        let (b0, b1) = other.bounds();
        // [a0, a1) and [b0, b1) intersect iff a0 < b1 && b0 < a1 (None = +inf).
        let lt = |x: &[u8], end: &Option<Vec<u8>>| end.as_ref().is_none_or(|e| x < e.as_slice());
        lt(&a0, &b1) && lt(&b0, &a1)
    }

    /// Half-open bounds; a single key `k` is `[k, k\0)`.
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Span { start, end } => (start.clone(), end.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_range_conventions() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        let all_from = KeyRange::new(b"b", b"\0");
        assert!(all_from.contains(b"zzz") && !all_from.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0") && all.contains(b"a"));
        let span = KeyRange::new(b"a", b"c");
        assert!(span.contains(b"b") && !span.contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
    }

    #[test]
    fn overlap_of_single_keys_and_spans() {
        let a = KeyRange::new(b"a", b"");
        assert!(a.overlaps(&KeyRange::new(b"a", b"")));
        assert!(!a.overlaps(&KeyRange::new(b"b", b"")));
        assert!(a.overlaps(&KeyRange::new(b"", b"\0")));
        assert!(!a.overlaps(&KeyRange::new(b"a\0", b"b")));
        assert!(KeyRange::new(b"a", b"c").overlaps(&KeyRange::new(b"b", b"\0")));
        assert!(!KeyRange::new(b"a", b"b").overlaps(&KeyRange::new(b"b", b"c")));
    }
}
