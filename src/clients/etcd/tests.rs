//! The messages against byte strings worked out by hand from the protobuf wire format: each
//! field is a varint key `field << 3 | wire type` (0 varint, 2 length-delimited), then a
//! varint or a varint length and the bytes. Proto3 leaves out fields at their default
//! value, except inside a oneof and in a non-empty repeated field.

use prost::Message;

use super::messages::*;
use super::prefix_end;

fn encoded(m: &impl Message) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn prefix_ends() {
    assert_eq!(prefix_end(b"g/"), b"g0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"a\xfe\xff\xff"), b"a\xff");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
}

#[test]
fn range_requests() {
    // key=1 "ab", range_end=2 "ac", keys_only=8 true.
    let r = RangeRequest::key("ab").prefix().keys_only();
    assert_eq!(encoded(&r), [0x0a, 2, b'a', b'b', 0x12, 2, b'a', b'c', 0x40, 1]);
    // limit=3 1, sort_order=5 ASCEND(1), sort_target=6 CREATE(2); fields in tag order.
    let r = RangeRequest::key("e/").prefix().sort(SortTarget::Create, SortOrder::Ascend).limit(1);
    assert_eq!(encoded(&r), [0x0a, 2, b'e', b'/', 0x12, 2, b'e', b'0', 0x18, 1, 0x28, 1, 0x30, 2]);
    // count_only=9.
    assert_eq!(encoded(&RangeRequest::key("k").count_only()), [0x0a, 1, b'k', 0x48, 1]);
    // The empty prefix is every key: key "\0", range_end "\0".
    assert_eq!(encoded(&RangeRequest::key("").prefix()), [0x0a, 1, 0, 0x12, 1, 0]);
}

#[test]
fn compares() {
    // result EQUAL(0) left out; target=2 CREATE(1); key=3; create_revision=5 sent though 0
    // (a oneof member).
    let c = Compare::create_revision("k", CompareResult::Equal, 0);
    assert_eq!(encoded(&c), [0x10, 1, 0x1a, 1, b'k', 0x28, 0]);
    // result=1 LESS(2), target MOD(2), mod_revision=6 300 (varint ac 02), range_end=64: key
    // 64 << 3 | 2 = 514, varint 82 04.
    let c = Compare::mod_revision("g/", CompareResult::Less, 300).prefix();
    assert_eq!(encoded(&c), [0x08, 2, 0x10, 2, 0x1a, 2, b'g', b'/', 0x30, 0xac, 0x02, 0x82, 0x04, 2, b'g', b'0']);
    let c = Compare::version("g/", CompareResult::NotEqual, 0);
    assert_eq!(encoded(&c), [0x08, 3, 0x1a, 2, b'g', b'/', 0x20, 0]);
}

#[test]
fn transaction() {
    let txn = TxnRequest::when([Compare::value("k", CompareResult::Equal, "t")])
        .and_then([RequestOp::put("k", "v", 7), RequestOp::delete("w")])
        .or_else([RequestOp::range(RangeRequest::key("k"))]);
    #[rustfmt::skip]
    let expected = [
        // compare=1: target=2 VALUE(3), key=3 "k", value=7 "t"
        0x0a, 8, 0x10, 3, 0x1a, 1, b'k', 0x3a, 1, b't',
        // success=2: request_put=2 {key=1 "k", value=2 "v", lease=3 7}
        0x12, 10, 0x12, 8, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 7,
        // success=2: request_delete_range=3 {key=1 "w"}
        0x12, 5, 0x1a, 3, 0x0a, 1, b'w',
        // failure=3: request_range=1 {key=1 "k"}
        0x1a, 5, 0x0a, 3, 0x0a, 1, b'k',
    ];
    assert_eq!(encoded(&txn), expected);
}

#[test]
fn lease_auth_and_watch_requests() {
    // ID=1 0x1234: varint b4 24.
    assert_eq!(encoded(&LeaseKeepAliveRequest { id: 0x1234 }), [0x08, 0xb4, 0x24]);
    // TTL=1 30, ID 0 left out.
    assert_eq!(encoded(&LeaseGrantRequest { ttl: 30, id: 0 }), [0x08, 30]);
    // int64, not zigzag: -1 is ten bytes.
    assert_eq!(encoded(&LeaseRevokeRequest { id: -1 }), [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(encoded(&AuthenticateRequest { name: "u".into(), password: "p".into() }), [0x0a, 1, b'u', 0x12, 1, b'p']);
    // create_request=1 {key=1 "/l", start_revision=3 5, filters=5 packed [NOPUT(0)]}
    let create = WatchCreateRequest::key("/l").without(FilterType::NoPut).from_revision(5);
    let w = WatchRequest { action: Some(WatchAction::Create(create)) };
    assert_eq!(encoded(&w), [0x0a, 9, 0x0a, 2, b'/', b'l', 0x18, 5, 0x2a, 1, 0]);
    assert_eq!(encoded(&WatchCreateRequest::key("g/").prefix()), [0x0a, 2, b'g', b'/', 0x12, 2, b'g', b'0']);
}

#[test]
fn decodes_a_transaction_response() {
    #[rustfmt::skip]
    let bytes = [
        // header=1 {revision=3 5}
        0x0a, 2, 0x18, 5,
        // succeeded=2 true
        0x10, 1,
        // responses=3: response_range=1 {kvs=2 {key "k", create_revision=2 3, value=5 "v",
        // lease=6 7}, count=4 1}
        0x1a, 16, 0x0a, 14, 0x12, 10, 0x0a, 1, b'k', 0x10, 3, 0x2a, 1, b'v', 0x30, 7, 0x20, 1,
        // responses=3: response_delete_range=3 {deleted=2 1}
        0x1a, 4, 0x1a, 2, 0x10, 1,
        // a field we do not know (15, varint): skipped
        0x78, 1,
    ];
    let r = TxnResponse::decode(&bytes[..]).unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision(), 5);
    let range = r.range(0).unwrap();
    assert_eq!(range.count, 1);
    assert_eq!(
        range.kvs,
        [KeyValue { key: b"k".to_vec(), create_revision: 3, mod_revision: 0, version: 0, value: b"v".to_vec(), lease: 7 }]
    );
    assert!(r.range(1).is_none(), "a delete's answer is not a range");
    assert_eq!(r.responses[1].response, Some(Response::DeleteRange(DeleteRangeResponse { header: None, deleted: 1 })));
    assert!(r.range(2).is_none());
}

#[test]
fn decodes_a_watch_response() {
    #[rustfmt::skip]
    let bytes = [
        0x0a, 2, 0x18, 9,
        // events=11 (key 0x5a): {type=1 DELETE, kv=2 {key "/l", mod_revision=3 9}}
        0x5a, 10, 0x08, 1, 0x12, 6, 0x0a, 2, b'/', b'l', 0x18, 9,
    ];
    let w = WatchResponse::decode(&bytes[..]).unwrap();
    assert!(!w.canceled && !w.created);
    assert_eq!(w.events.len(), 1);
    assert!(w.events[0].is_delete());
    assert_eq!(w.events[0].kv.as_ref().map(|kv| kv.key.as_slice()), Some(&b"/l"[..]));
    let put = Event { kind: EventType::Put as i32, kv: None };
    assert!(!put.is_delete());
}

#[test]
fn bad_answers_are_errors() {
    // Truncated in the middle of the header.
    assert!(TxnResponse::decode(&[0x0a, 5, 0x18][..]).is_err());
    // A varint that never ends.
    assert!(LeaseKeepAliveResponse::decode(&[0x18, 0xff, 0xff][..]).is_err());
    // `succeeded` (varint) sent length-delimited.
    assert!(TxnResponse::decode(&[0x12, 1, 1][..]).is_err());
    // A token that is not UTF-8.
    assert!(AuthenticateResponse::decode(&[0x12, 1, 0xff][..]).is_err());
}
