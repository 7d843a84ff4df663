//! The consistent hash ring of upstream tooz, point for point.
//!
//! A node with key `k` and weight `w` owns `partitions * w` points: point `i` (1-based) is the
//! digest of `k` repeated `i + 1` times (one hasher seeded with `k`, then fed `k` again before
//! each point). Digests compare as big-endian integers, which for digests of one width is the
//! same as comparing their bytes. Data `d` maps to the first point strictly greater than
//! digest(d) (Python's `bisect_right`), wrapping to the first point; replicas walk on from there.

use std::collections::BTreeMap;

use digest::{Digest, DynDigest};

/// A hash function the core computes itself (the names are `hashlib`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
    Blake2b,
    Blake2s,
}

impl Algorithm {
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha224" => Algorithm::Sha224,
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            "sha3_224" => Algorithm::Sha3_224,
            "sha3_256" => Algorithm::Sha3_256,
            "sha3_384" => Algorithm::Sha3_384,
            "sha3_512" => Algorithm::Sha3_512,
            "blake2b" => Algorithm::Blake2b,
            "blake2s" => Algorithm::Blake2s,
            _ => return None,
        })
    }

    fn hasher(self) -> Box<dyn DynDigest> {
        match self {
            Algorithm::Md5 => Box::new(md5::Md5::new()),
            Algorithm::Sha1 => Box::new(sha1::Sha1::new()),
            Algorithm::Sha224 => Box::new(sha2::Sha224::new()),
            Algorithm::Sha256 => Box::new(sha2::Sha256::new()),
            Algorithm::Sha384 => Box::new(sha2::Sha384::new()),
            Algorithm::Sha512 => Box::new(sha2::Sha512::new()),
            Algorithm::Sha3_224 => Box::new(sha3::Sha3_224::new()),
            Algorithm::Sha3_256 => Box::new(sha3::Sha3_256::new()),
            Algorithm::Sha3_384 => Box::new(sha3::Sha3_384::new()),
            Algorithm::Sha3_512 => Box::new(sha3::Sha3_512::new()),
            Algorithm::Blake2b => Box::new(blake2::Blake2b512::new()),
            Algorithm::Blake2s => Box::new(blake2::Blake2s256::new()),
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        if self == Algorithm::Md5 {
            return md5::Md5::digest(data).to_vec();
        }
        self.digest_dyn(data)
    }

    fn digest_dyn(self, data: &[u8]) -> Vec<u8> {
        let mut h = self.hasher();
        h.update(data);
        h.finalize().to_vec()
    }

    /// The `count` ring points of a node whose key is `key`.
    pub fn points(self, key: &[u8], count: usize) -> Vec<Vec<u8>> {
        let mut h = self.hasher();
        h.update(key);
        (0..count)
            .map(|_| {
                h.update(key);
                h.box_clone().finalize().to_vec()
            })
            .collect()
    }
}

/// Ring points (digests) and the node index owning each.
#[derive(Default)]
pub struct Ring {
    points: BTreeMap<Vec<u8>, u32>,
    /// Sorted copy of `points` for lookups: the digests back to back, and their owners.
    flat: Vec<u8>,
    width: usize,
    owners: Vec<u32>,
    /// The same points as integers when every digest fits 128 bits (md5): faster to search.
    narrow: Vec<u128>,
}

/// A digest of at most 16 bytes as the integer Python's `int(hexdigest, 16)` gives.
pub fn narrow(digest: &[u8]) -> Option<u128> {
    (digest.len() <= 16).then(|| digest.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128))
}

impl Ring {
    pub fn new() -> Ring {
        Ring::default()
    }

    /// Gives `points` to `node` (a later owner of the same point wins, as in upstream).
    pub fn insert(&mut self, node: u32, points: Vec<Vec<u8>>) {
        for p in points {
            self.points.insert(p, node);
        }
    }

    pub fn remove(&mut self, points: &[Vec<u8>]) {
        for p in points {
            self.points.remove(p);
        }
    }

    /// Rebuilds the lookup arrays; call after a batch of inserts/removes.
    pub fn rebuild(&mut self) {
        self.width = self.points.keys().map(Vec::len).max().unwrap_or(0);
        self.flat.clear();
        self.owners.clear();
        self.narrow.clear();
        self.flat.reserve(self.width * self.points.len());
        for (p, owner) in &self.points {
            // Python compares digests as integers: left-pad shorter ones (one algorithm per ring,
            // so this only matters for digests injected by hand).
            self.flat.extend(std::iter::repeat(0).take(self.width - p.len()));
            self.flat.extend_from_slice(p);
            self.owners.push(*owner);
        }
        if self.width <= 16 {
            self.narrow = self.points.keys().filter_map(|p| narrow(p)).collect();
        }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    pub fn points(&self) -> impl Iterator<Item = (&Vec<u8>, &u32)> {
        self.points.iter()
    }

    fn point(&self, i: usize) -> &[u8] {
        &self.flat[i * self.width..(i + 1) * self.width]
    }

    /// Index of the first point strictly greater than `digest`, wrapped to 0 past the end.
    pub fn start(&self, digest: &[u8]) -> usize {
        let n = self.owners.len();
        if n == 0 {
            return 0;
        }
        if let (true, Some(d)) = (self.width <= 16, narrow(digest)) {
            let i = self.narrow.partition_point(|p| *p <= d);
            return if i < n { i } else { 0 };
        }
        let padded;
        let d = if digest.len() < self.width {
            padded = [vec![0; self.width - digest.len()], digest.to_vec()].concat();
            &padded[..]
        } else {
            digest
        };
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if d < self.point(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo < n {
            lo
        } else {
            0
        }
    }

    /// The owner of the point `digest` maps onto (None on an empty ring).
    pub fn owner(&self, digest: &[u8]) -> Option<u32> {
        self.owners.get(self.start(digest)).copied()
    }

    /// Up to `wanted` distinct owners met walking the ring from `digest`, skipping ignored ones.
    pub fn walk(&self, digest: &[u8], wanted: usize, ignored: impl Fn(u32) -> bool) -> Vec<u32> {
        let n = self.owners.len();
        let mut found: Vec<u32> = Vec::with_capacity(wanted.min(8));
        if n == 0 || wanted == 0 {
            return found;
        }
        let mut i = self.start(digest);
        // One full turn at most: afterwards every reachable owner has been seen.
        for _ in 0..n {
            let owner = self.owners[i];
            if !found.contains(&owner) && !ignored(owner) {
                found.push(owner);
                if found.len() == wanted {
                    break;
                }
            }
            i = if i + 1 < n { i + 1 } else { 0 };
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nodes: &[&str], partitions: usize) -> Ring {
        let mut r = Ring::new();
        for (i, n) in nodes.iter().enumerate() {
            r.insert(i as u32, Algorithm::Md5.points(n.as_bytes(), partitions));
        }
        r.rebuild();
        r
    }

    fn names(nodes: &[&str], idx: Vec<u32>) -> Vec<String> {
        let mut v: Vec<String> = idx.into_iter().map(|i| nodes[i as usize].to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn upstream_vectors() {
        let nodes = ["foo", "bar", "baz"];
        let r = ring(&nodes, 32);
        assert_eq!(r.len(), 96);
        let get = |data: &[u8], n: usize| names(&nodes, r.walk(&Algorithm::Md5.digest(data), n, |_| false));
        assert_eq!(get(b"fake", 1), ["foo"]);
        assert_eq!(get(b"fake", 2), ["bar", "foo"]);
        assert_eq!(get(b"fake-again", 1), ["bar"]);
        assert_eq!(get(b"fake-again", 3), ["bar", "baz", "foo"]);
        assert_eq!(get(b"x", 1), ["foo"]);
        assert_eq!(get(b"x", 2), ["baz", "foo"]);
    }

    #[test]
    fn points_chain_the_key() {
        let pts = Algorithm::Md5.points(b"ab", 2);
        assert_eq!(pts[0], Algorithm::Md5.digest(b"abab"));
        assert_eq!(pts[1], Algorithm::Md5.digest(b"ababab"));
        let pts = Algorithm::Sha256.points(b"k", 1);
        assert_eq!(pts[0], Algorithm::Sha256.digest(b"kk"));
    }

    #[test]
    fn ignore_and_empty() {
        let nodes = ["foo", "bar", "baz"];
        let r = ring(&nodes, 8);
        let d = Algorithm::Md5.digest(b"fake");
        assert_eq!(r.walk(&d, 3, |i| i == 0).len(), 2);
        assert!(r.walk(&d, 3, |_| true).is_empty());
        assert!(Ring::new().walk(&d, 1, |_| false).is_empty());
    }
}
