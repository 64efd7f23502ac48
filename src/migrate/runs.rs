//! Sets of page ranges as sorted, disjoint, non-adjacent `[start, end)`
//! pairs: what was sent in earlier pre-copy rounds, what was written since.

/// A normalized set of byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSet(Vec<(u64, u64)>);

impl RunSet {
    /// The set covering `ranges` (any order, may overlap).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> RunSet {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().filter(|r| r.0 < r.1).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        RunSet(out)
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0).sum()
    }

    pub fn union(&self, other: &RunSet) -> RunSet {
        RunSet::from_ranges(self.0.iter().chain(other.0.iter()).copied())
    }

    pub fn intersect(&self, other: &RunSet) -> RunSet {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < a.len() && j < b.len() {
            let s = a[i].0.max(b[j].0);
            let e = a[i].1.min(b[j].1);
            if s < e {
                out.push((s, e));
            }
            if a[i].1 < b[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        RunSet(out)
    }

    pub fn subtract(&self, other: &RunSet) -> RunSet {
        let mut out = Vec::new();
        let b = &other.0;
        let mut j = 0;
        for &(s, e) in &self.0 {
            let mut cur = s;
            while j < b.len() && b[j].1 <= cur {
                j += 1;
            }
            let mut k = j;
            while cur < e && k < b.len() && b[k].0 < e {
                if b[k].0 > cur {
                    out.push((cur, b[k].0));
                }
                cur = cur.max(b[k].1);
                k += 1;
            }
            if cur < e {
                out.push((cur, e));
            }
        }
        RunSet(out)
    }

    /// Splits `[s, e)` into pieces, each tagged with whether it is in the set.
    pub fn split(&self, s: u64, e: u64) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        let mut cur = s;
        let i = self.0.partition_point(|r| r.1 <= s);
        for &(rs, re) in &self.0[i..] {
            if rs >= e {
                break;
            }
            if rs > cur {
                out.push((cur, rs, false));
            }
            let a = rs.max(cur);
            let b = re.min(e);
            if a < b {
                out.push((a, b, true));
            }
            cur = b;
        }
        if cur < e {
            out.push((cur, e, false));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_ops() {
        let a = RunSet::from_ranges([(10, 20), (0, 5), (5, 8), (15, 30), (40, 40)]);
        assert_eq!(a.ranges(), &[(0, 8), (10, 30)]);
        let b = RunSet::from_ranges([(4, 12), (25, 50)]);
        assert_eq!(a.intersect(&b).ranges(), &[(4, 8), (10, 12), (25, 30)]);
        assert_eq!(a.subtract(&b).ranges(), &[(0, 4), (12, 25)]);
        assert_eq!(b.subtract(&a).ranges(), &[(8, 10), (30, 50)]);
        assert_eq!(a.union(&b).ranges(), &[(0, 50)]);
        assert_eq!(a.bytes(), 28);
        assert!(RunSet::default().subtract(&a).is_empty());
        assert_eq!(a.subtract(&RunSet::default()), a);
    }

    #[test]
    fn split_tags_pieces() {
        let a = RunSet::from_ranges([(10, 20), (30, 40)]);
        assert_eq!(
            a.split(5, 35),
            vec![(5, 10, false), (10, 20, true), (20, 30, false), (30, 35, true)]
        );
        assert_eq!(a.split(12, 18), vec![(12, 18, true)]);
        assert_eq!(a.split(50, 60), vec![(50, 60, false)]);
    }
}
