//! Small builders for the requests (ranges, puts, deletes, comparisons, transactions,
//! watches) and accessors on the responses, so callers read like the etcd operations they
//! are. The key-range rule is etcd's: a prefix `p` is the range `[p, p+1)` where `p+1` is `p`
//! with its last byte below 0xff incremented and what follows dropped.

use super::messages::*;

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`): `\0`,
/// meaning "to the end of the keyspace", when every byte is 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// Key and range end for "every key starting with `key`" (the empty prefix: every key).
fn prefix_range(key: &mut Vec<u8>, range_end: &mut Vec<u8>) {
    if key.is_empty() {
        *key = vec![0];
        *range_end = vec![0];
    } else {
        *range_end = prefix_end(key);
    }
}

impl RangeRequest {
    /// Reads the one key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> RangeRequest {
        RangeRequest { key: key.into(), ..RangeRequest::default() }
    }

    /// Reads every key starting with the key.
    pub fn prefix(mut self) -> RangeRequest {
        prefix_range(&mut self.key, &mut self.range_end);
        self
    }

    pub fn keys_only(mut self) -> RangeRequest {
        self.keys_only = true;
        self
    }

    pub fn count_only(mut self) -> RangeRequest {
        self.count_only = true;
        self
    }

    pub fn limit(mut self, limit: i64) -> RangeRequest {
        self.limit = limit;
        self
    }

    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> RangeRequest {
        self.sort_target = target as i32;
        self.sort_order = order as i32;
        self
    }
}

impl DeleteRangeRequest {
    /// Deletes the one key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> DeleteRangeRequest {
        DeleteRangeRequest { key: key.into(), range_end: Vec::new() }
    }
}

impl Compare {
    fn new(key: Vec<u8>, result: CompareResult, target: CompareTarget, with: CompareWith) -> Compare {
        Compare { result: result as i32, target: target as i32, key, with: Some(with), range_end: Vec::new() }
    }

    /// The key's version (0: absent) compared with `version`.
    pub fn version(key: impl Into<Vec<u8>>, result: CompareResult, version: i64) -> Compare {
        Compare::new(key.into(), result, CompareTarget::Version, CompareWith::Version(version))
    }

    /// The key's create revision (0: absent) compared with `revision`.
    pub fn create_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare::new(key.into(), result, CompareTarget::Create, CompareWith::CreateRevision(revision))
    }

    /// The key's last modification revision compared with `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, result: CompareResult, revision: i64) -> Compare {
        Compare::new(key.into(), result, CompareTarget::Mod, CompareWith::ModRevision(revision))
    }

    /// The key's value compared with `value`.
    pub fn value(key: impl Into<Vec<u8>>, result: CompareResult, value: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key.into(), result, CompareTarget::Value, CompareWith::Value(value.into()))
    }

    /// Compares every key starting with the key (all must satisfy it).
    pub fn prefix(mut self) -> Compare {
        prefix_range(&mut self.key, &mut self.range_end);
        self
    }
}

impl RequestOp {
    pub fn range(range: RangeRequest) -> RequestOp {
        RequestOp { request: Some(Request::Range(range)) }
    }

    /// Puts `value` at `key`, attached to `lease` (0: none).
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
        RequestOp { request: Some(Request::Put(PutRequest { key: key.into(), value: value.into(), lease })) }
    }

    /// Deletes the one key `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp { request: Some(Request::DeleteRange(DeleteRangeRequest::key(key))) }
    }
}

impl TxnRequest {
    /// A transaction whose success branch runs when every comparison holds.
    pub fn when(compare: impl IntoIterator<Item = Compare>) -> TxnRequest {
        TxnRequest { compare: compare.into_iter().collect(), ..TxnRequest::default() }
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = RequestOp>) -> TxnRequest {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = RequestOp>) -> TxnRequest {
        self.failure.extend(ops);
        self
    }
}

impl TxnResponse {
    /// The revision of the transaction (0 if etcd sent no header).
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }

    /// The answer to the `index`-th op of the branch that ran, if it was a range.
    pub fn range(&self, index: usize) -> Option<&RangeResponse> {
        match self.responses.get(index)?.response.as_ref()? {
            Response::Range(r) => Some(r),
            _ => None,
        }
    }
}

impl RangeResponse {
    /// The revision the range was read at (0 if etcd sent no header).
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }
}

impl WatchCreateRequest {
    /// Watches the one key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> WatchCreateRequest {
        WatchCreateRequest { key: key.into(), ..WatchCreateRequest::default() }
    }

    /// Watches every key starting with the key.
    pub fn prefix(mut self) -> WatchCreateRequest {
        prefix_range(&mut self.key, &mut self.range_end);
        self
    }

    /// Leaves out the events of this kind.
    pub fn without(mut self, filter: FilterType) -> WatchCreateRequest {
        self.filters.push(filter as i32);
        self
    }

    /// Reports events from `revision` on (0: from now).
    pub fn from_revision(mut self, revision: i64) -> WatchCreateRequest {
        self.start_revision = revision;
        self
    }
}

impl Event {
    pub fn is_delete(&self) -> bool {
        self.kind == EventType::Delete as i32
    }
}
