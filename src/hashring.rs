//! The consistent hash ring of upstream tooz, point for point.
//!
//! A node with key `k` and weight `w` owns `partitions * w` points: point `i` (1-based) is the
//! digest of `k` repeated `i + 1` times (one hasher seeded with `k`, then fed `k` again before
//! each point). Digests compare as big-endian integers, which for digests of one width is the
//! same as comparing their bytes. Data `d` maps to the first point strictly greater than
//! digest(d) (Python's `bisect_right`), wrapping to the first point; replicas walk on from there.

use std::sync::OnceLock;

use digest::Digest;

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

/// Widest digest of any algorithm (sha512, blake2b).
pub const MAX_WIDTH: usize = 64;

/// A digest of at most [`MAX_WIDTH`] bytes, kept without an allocation.
#[derive(Clone, Copy)]
pub struct Output {
    bytes: [u8; MAX_WIDTH],
    len: usize,
}

impl Output {
    /// `None` when `digest` is wider than [`MAX_WIDTH`].
    pub fn new(digest: &[u8]) -> Option<Output> {
        let mut bytes = [0; MAX_WIDTH];
        bytes.get_mut(..digest.len())?.copy_from_slice(digest);
        Some(Output { bytes, len: digest.len() })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Runs `body` with `$d` bound to the digest type of `$algorithm`.
macro_rules! with_digest {
    ($algorithm:expr, $d:ident => $body:expr) => {
        match $algorithm {
            Algorithm::Md5 => { type $d = md5::Md5; $body }
            Algorithm::Sha1 => { type $d = sha1::Sha1; $body }
            Algorithm::Sha224 => { type $d = sha2::Sha224; $body }
            Algorithm::Sha256 => { type $d = sha2::Sha256; $body }
            Algorithm::Sha384 => { type $d = sha2::Sha384; $body }
            Algorithm::Sha512 => { type $d = sha2::Sha512; $body }
            Algorithm::Sha3_224 => { type $d = sha3::Sha3_224; $body }
            Algorithm::Sha3_256 => { type $d = sha3::Sha3_256; $body }
            Algorithm::Sha3_384 => { type $d = sha3::Sha3_384; $body }
            Algorithm::Sha3_512 => { type $d = sha3::Sha3_512; $body }
            Algorithm::Blake2b => { type $d = blake2::Blake2b512; $body }
            Algorithm::Blake2s => { type $d = blake2::Blake2s256; $body }
        }
    };
}

/// Calls `f` with each of the `count` points of `key`: one hasher seeded with `key`, fed
/// `key` again before each point.
fn chain<D: Digest + Clone>(key: &[u8], count: usize, mut f: impl FnMut(&[u8])) {
    let mut h = D::new();
    h.update(key);
    for _ in 0..count {
        h.update(key);
        f(&h.clone().finalize());
    }
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

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Output {
        // Every algorithm listed is at most MAX_WIDTH wide.
        with_digest!(self, D => Output::new(&D::digest(data)).unwrap_or(Output { bytes: [0; MAX_WIDTH], len: 0 }))
    }

    /// Calls `f` with each of the `count` ring points of a node whose key is `key`.
    pub fn for_each_point(self, key: &[u8], count: usize, f: impl FnMut(&[u8])) {
        with_digest!(self, D => chain::<D>(key, count, f))
    }

    /// The `count` ring points of a node whose key is `key`.
    pub fn points(self, key: &[u8], count: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(count);
        self.for_each_point(key, count, |p| out.push(p.to_vec()));
        out
    }
}

/// A ring point as a number: digests compare as big-endian integers.
pub trait Point: Ord + Copy {
    /// The point `digest` is, or `None` when it is too wide for this type.
    fn from_digest(digest: &[u8]) -> Option<Self>;
    fn to_bytes(&self) -> Vec<u8>;
}

impl Point for u128 {
    fn from_digest(digest: &[u8]) -> Option<u128> {
        let (high, low) = digest.split_at(digest.len().saturating_sub(16));
        high.iter()
            .all(|b| *b == 0)
            .then(|| low.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128))
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
}

/// A digest wider than 128 bits, left-padded with zeros to [`MAX_WIDTH`] bytes.
pub type Wide = [u8; MAX_WIDTH];

impl Point for Wide {
    fn from_digest(digest: &[u8]) -> Option<Wide> {
        let (high, low) = digest.split_at(digest.len().saturating_sub(MAX_WIDTH));
        high.iter().all(|b| *b == 0).then(|| {
            let mut p = [0; MAX_WIDTH];
            p[MAX_WIDTH - low.len()..].copy_from_slice(low);
            p
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.to_vec()
    }
}

/// The points of one width and the node index owning each.
pub struct Table<P> {
    /// Points in the order given (a later owner of the same point wins, as in upstream), or
    /// sorted without duplicates where `sorted` has been taken back.
    given: Vec<(P, u32)>,
    /// `given` sorted, duplicates resolved, for lookups: made on the first lookup after a
    /// change, so building a ring point by point sorts once, not once per node.
    sorted: OnceLock<(Vec<P>, Vec<u32>)>,
}

impl<P: Point> Table<P> {
    fn new() -> Table<P> {
        Table { given: Vec::new(), sorted: OnceLock::new() }
    }

    /// Makes `given` current before a change (taking back the sorted copy, if any).
    fn change(&mut self) -> &mut Vec<(P, u32)> {
        if let Some((points, owners)) = self.sorted.take() {
            self.given = points.into_iter().zip(owners).collect();
        }
        &mut self.given
    }

    fn insert(&mut self, point: P, owner: u32) {
        self.change().push((point, owner));
    }

    /// Removes every point of `digests`.
    fn remove(&mut self, digests: &[Vec<u8>]) {
        let mut gone: Vec<P> = digests.iter().filter_map(|d| P::from_digest(d)).collect();
        gone.sort_unstable();
        self.sorted();
        self.change().retain(|(p, _)| gone.binary_search(p).is_err());
    }

    fn sorted(&self) -> &(Vec<P>, Vec<u32>) {
        self.sorted.get_or_init(|| {
            let mut given = self.given.clone();
            given.sort_by_key(|(p, _)| *p); // stable: the last given of equal points wins
            let (mut points, mut owners) = (Vec::with_capacity(given.len()), Vec::with_capacity(given.len()));
            for (p, o) in given {
                if points.last() == Some(&p) {
                    *owners.last_mut().expect("as long as points") = o;
                } else {
                    points.push(p);
                    owners.push(o);
                }
            }
            (points, owners)
        })
    }

    /// Index of the first point strictly greater than `digest`, wrapped to 0 past the end.
    fn start(&self, digest: &[u8]) -> usize {
        let (points, _) = self.sorted();
        // A digest too wide for this table is greater than every point in it.
        let i = match P::from_digest(digest) {
            Some(d) => points.partition_point(|p| *p <= d),
            None => points.len(),
        };
        if i < points.len() {
            i
        } else {
            0
        }
    }
}

/// Ring points (digests) and the node index owning each: 128-bit points (md5) as integers,
/// wider ones as padded byte arrays, switched to once a wider point arrives.
pub enum Ring {
    Narrow(Table<u128>),
    Wide(Table<Wide>),
}

impl Default for Ring {
    fn default() -> Ring {
        Ring::Narrow(Table::new())
    }
}

/// Runs `body` with `$t` bound to the ring's table, whichever its width.
macro_rules! on_table {
    ($ring:expr, $t:ident => $body:expr) => {
        match $ring {
            Ring::Narrow($t) => $body,
            Ring::Wide($t) => $body,
        }
    };
}

impl Ring {
    pub fn new() -> Ring {
        Ring::default()
    }

    /// Gives `point` to `node` (a later owner of the same point wins, as in upstream).
    pub fn insert(&mut self, node: u32, point: &[u8]) {
        if let Ring::Narrow(t) = self {
            if let Some(p) = u128::from_digest(point) {
                return t.insert(p, node);
            }
            let given = t.change().iter().filter_map(|(p, o)| Some((Wide::from_digest(&p.to_bytes())?, *o))).collect();
            *self = Ring::Wide(Table { given, sorted: OnceLock::new() });
        }
        // Wider than any digest: cannot come from a hash function; kept out.
        if let (Ring::Wide(t), Some(p)) = (&mut *self, Wide::from_digest(point)) {
            t.insert(p, node);
        }
    }

    /// Removes the points `digests`.
    pub fn remove(&mut self, digests: &[Vec<u8>]) {
        on_table!(self, t => t.remove(digests))
    }

    pub fn len(&self) -> usize {
        on_table!(self, t => t.sorted().0.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points in order, as big-endian bytes, with their owners.
    pub fn points(&self) -> Vec<(Vec<u8>, u32)> {
        on_table!(self, t => {
            let (points, owners) = t.sorted();
            points.iter().zip(owners).map(|(p, o)| (p.to_bytes(), *o)).collect()
        })
    }

    fn owners(&self) -> &[u32] {
        on_table!(self, t => &t.sorted().1)
    }

    fn start(&self, digest: &[u8]) -> usize {
        on_table!(self, t => t.start(digest))
    }

    /// The owner of the point `digest` maps onto (None on an empty ring).
    pub fn owner(&self, digest: &[u8]) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        self.owners().get(self.start(digest)).copied()
    }

    /// Up to `wanted` distinct owners met walking the ring from `digest`, skipping ignored ones.
    pub fn walk(&self, digest: &[u8], wanted: usize, ignored: impl Fn(u32) -> bool) -> Vec<u32> {
        let owners = self.owners();
        let n = owners.len();
        let mut found: Vec<u32> = Vec::with_capacity(wanted.min(8));
        if n == 0 || wanted == 0 {
            return found;
        }
        let mut i = self.start(digest);
        // One full turn at most: afterwards every reachable owner has been seen.
        for _ in 0..n {
            let owner = owners[i];
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
            Algorithm::Md5.for_each_point(n.as_bytes(), partitions, |p| r.insert(i as u32, p));
        }
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
        let get = |data: &[u8], n: usize| names(&nodes, r.walk(Algorithm::Md5.digest(data).as_slice(), n, |_| false));
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
        assert_eq!(pts[0], Algorithm::Md5.digest(b"abab").as_slice());
        assert_eq!(pts[1], Algorithm::Md5.digest(b"ababab").as_slice());
        let pts = Algorithm::Sha256.points(b"k", 1);
        assert_eq!(pts[0], Algorithm::Sha256.digest(b"kk").as_slice());
    }

    #[test]
    fn ignore_and_empty() {
        let nodes = ["foo", "bar", "baz"];
        let r = ring(&nodes, 8);
        let d = Algorithm::Md5.digest(b"fake");
        let d = d.as_slice();
        assert_eq!(r.walk(d, 3, |i| i == 0).len(), 2);
        assert!(r.walk(d, 3, |_| true).is_empty());
        assert!(Ring::new().walk(d, 1, |_| false).is_empty());
    }

    #[test]
    fn later_owner_wins_and_removal_and_widening() {
        let mut r = Ring::new();
        r.insert(0, &[5; 16]);
        r.insert(1, &[9; 16]);
        assert_eq!(r.owner(&[0; 16]), Some(0));
        r.insert(2, &[5; 16]);
        assert_eq!((r.len(), r.owner(&[0; 16])), (2, Some(2)), "the later owner of a point wins");
        r.remove(&[vec![5; 16]]);
        assert_eq!((r.len(), r.owner(&[0; 16])), (1, Some(1)));
        assert_eq!(r.owner(&[0xff; 16]), Some(1), "wraps past the last point");
        r.insert(3, &[1; 20]);
        assert_eq!(r.len(), 2, "a wider point widens the ring, keeping the others");
        assert_eq!(r.owner(&[0; 16]), Some(1), "a narrow digest is a small number among wide points");
        assert_eq!(r.owner(&[0; 20]), Some(1));
        assert_eq!(r.owner(&[1; 20]), Some(1));
        assert_eq!(r.owner(&[0xff; 20]), Some(1));
        assert_eq!(r.points()[1], ([vec![0; 44], vec![1; 20]].concat(), 3));
    }
}
