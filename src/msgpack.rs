//! MessagePack values, encoded byte-for-byte as `msgpack.packb(use_bin_type=True)` does and
//! decoded as `unpackb(raw=False)` does. This is the format upstream tooz (oslo.serialization's
//! msgpackutils) stores capabilities and file-driver records in, so peers read each other's data.

use crate::error::{Error, Result};

/// Nesting deeper than this is refused, as msgpack-python refuses it.
pub const MAX_DEPTH: usize = 512;

/// Extension type codes used by oslo.serialization.
pub mod ext {
    pub const UUID: i8 = 0;
    pub const DATETIME: i8 = 1;
    pub const COUNT: i8 = 2;
    pub const NETADDR: i8 = 3;
    pub const SET: i8 = 4;
    pub const FROZENSET: i8 = 5;
    pub const XMLRPC_DATETIME: i8 = 6;
    pub const DATE: i8 = 7;
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Ext(i8, Vec<u8>),
}

impl Value {
    /// Looks a key up in a map whose keys may be `str` or (in legacy records) `bytes`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(items) => items.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                Value::Bin(b) if b == key.as_bytes() => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bin(b) => Some(b),
            Value::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    pub fn map_of(items: Vec<(&str, Value)>) -> Value {
        Value::Map(items.into_iter().map(|(k, v)| (Value::Str(k.to_owned()), v)).collect())
    }
}

// ---------------------------------------------------------------- encoding

pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_value(&mut out, v);
    out
}

fn write_len(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, m8: Option<u8>, m16: u8, m32: u8) {
    match (fix, m8) {
        (Some((base, max)), _) if n <= max => out.push(base | n as u8),
        (_, Some(m8)) if n <= 0xff => out.extend_from_slice(&[m8, n as u8]),
        _ if n <= 0xffff => {
            out.push(m16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(m32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

fn write_uint(out: &mut Vec<u8>, u: u64) {
    if u < 0x80 {
        out.push(u as u8);
    } else if u <= 0xff {
        out.extend_from_slice(&[0xcc, u as u8]);
    } else if u <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        write_uint(out, i as u64);
    } else if i >= -32 {
        out.push(i as i8 as u8);
    } else if i >= i8::MIN as i64 {
        out.extend_from_slice(&[0xd0, i as i8 as u8]);
    } else if i >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(i) => write_int(out, *i),
        Value::UInt(u) => write_uint(out, *u),
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Str(s) => {
            write_len(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            write_len(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            write_len(out, items.len(), Some((0x90, 15)), None, 0xdc, 0xdd);
            items.iter().for_each(|item| write_value(out, item));
        }
        Value::Map(items) => {
            write_len(out, items.len(), Some((0x80, 15)), None, 0xde, 0xdf);
            for (k, item) in items {
                write_value(out, k);
                write_value(out, item);
            }
        }
        Value::Ext(code, data) => {
            match data.len() {
                1 => out.push(0xd4),
                2 => out.push(0xd5),
                4 => out.push(0xd6),
                8 => out.push(0xd7),
                16 => out.push(0xd8),
                n => write_len(out, n, None, Some(0xc7), 0xc8, 0xc9),
            }
            out.push(*code as u8);
            out.extend_from_slice(data);
        }
    }
}

// ---------------------------------------------------------------- decoding

pub fn decode(data: &[u8]) -> Result<Value> {
    let mut r = Reader { data, pos: 0 };
    let v = r.value(0)?;
    if r.pos != data.len() {
        return Err(Error::Serialization(format!(
            "unpack failed: {} extra bytes after the data",
            data.len() - r.pos
        )));
    }
    Ok(v)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

fn truncated() -> Error {
    Error::Serialization("unpack failed: data is truncated".into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(truncated)?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }

    fn str(&mut self, n: usize) -> Result<Value> {
        let raw = self.take(n)?;
        std::str::from_utf8(raw)
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|e| Error::Serialization(format!("unpack failed: invalid UTF-8 in str: {e}")))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value> {
        // Every element takes at least one byte: a bogus length cannot make us allocate much.
        let mut items = Vec::with_capacity(n.min(self.data.len() - self.pos));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value> {
        let mut items = Vec::with_capacity(n.min((self.data.len() - self.pos) / 2));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            items.push((k, v));
        }
        Ok(Value::Map(items))
    }

    fn ext(&mut self, n: usize) -> Result<Value> {
        let code = self.byte()? as i8;
        Ok(Value::Ext(code, self.take(n)?.to_vec()))
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(Error::Serialization("unpack failed: nesting is too deep".into()));
        }
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => Value::Int(m as i64),
            0x80..=0x8f => return self.map((m & 0x0f) as usize, depth),
            0x90..=0x9f => return self.array((m & 0x0f) as usize, depth),
            0xa0..=0xbf => return self.str((m & 0x1f) as usize),
            0xc0 => Value::Nil,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 | 0xc5 | 0xc6 => {
                let n = self.be(1 << (m - 0xc4))? as usize;
                Value::Bin(self.take(n)?.to_vec())
            }
            0xc7 | 0xc8 | 0xc9 => {
                let n = self.be(1 << (m - 0xc7))? as usize;
                return self.ext(n);
            }
            0xca => Value::Float(f32::from_bits(self.be(4)? as u32) as f64),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => {
                let u = self.be(1 << (m - 0xcc))?;
                i64::try_from(u).map(Value::Int).unwrap_or(Value::UInt(u))
            }
            0xd0 => Value::Int(self.be(1)? as u8 as i8 as i64),
            0xd1 => Value::Int(self.be(2)? as u16 as i16 as i64),
            0xd2 => Value::Int(self.be(4)? as u32 as i32 as i64),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xd4..=0xd8 => return self.ext(1 << (m - 0xd4)),
            0xd9 | 0xda | 0xdb => {
                let n = self.be(1 << (m - 0xd9))? as usize;
                return self.str(n);
            }
            0xdc | 0xdd => {
                let n = self.be(2 << (m - 0xdc))? as usize;
                return self.array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.be(2 << (m - 0xde))? as usize;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::Int(m as i8 as i64),
            0xc1 => return Err(Error::Serialization("unpack failed: reserved byte 0xc1".into())),
        })
    }
}

// ---------------------------------------------------------------- oslo datetime extension

/// A naive (zone-less) wall-clock time, as oslo stores `datetime` objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaiveTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub microsecond: i64,
}

impl NaiveTime {
    pub fn now_local() -> NaiveTime {
        use chrono::{Datelike, Timelike};
        let now = chrono::Local::now().naive_local();
        NaiveTime {
            year: now.year() as i64,
            month: now.month() as i64,
            day: now.day() as i64,
            hour: now.hour() as i64,
            minute: now.minute() as i64,
            second: now.second() as i64,
            microsecond: (now.nanosecond() / 1000).min(999_999) as i64,
        }
    }

    /// The ext-1 value oslo writes: a nested msgpack map in the key order below.
    pub fn to_ext(&self) -> Value {
        let map = Value::map_of(vec![
            ("day", Value::Int(self.day)),
            ("month", Value::Int(self.month)),
            ("year", Value::Int(self.year)),
            ("hour", Value::Int(self.hour)),
            ("minute", Value::Int(self.minute)),
            ("second", Value::Int(self.second)),
            ("microsecond", Value::Int(self.microsecond)),
        ]);
        Value::Ext(ext::DATETIME, encode(&map))
    }

    pub fn from_ext(v: &Value) -> Option<NaiveTime> {
        let Value::Ext(ext::DATETIME, payload) = v else { return None };
        let map = decode(payload).ok()?;
        let f = |k: &str| map.get(k).and_then(Value::as_int);
        Some(NaiveTime {
            year: f("year")?,
            month: f("month")?,
            day: f("day")?,
            hour: f("hour")?,
            minute: f("minute")?,
            second: f("second")?,
            microsecond: f("microsecond").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn oslo_vectors() {
        assert_eq!(hex(&encode(&Value::Nil)), "c0");
        let caps = Value::map_of(vec![("weight", Value::Int(1))]);
        assert_eq!(hex(&encode(&caps)), "81a677656967687401");
        let dt = NaiveTime { year: 2024, month: 1, day: 2, hour: 3, minute: 4, second: 5, microsecond: 6 };
        assert_eq!(
            hex(&encode(&dt.to_ext())),
            "c73801".to_owned()
                + "87a364617902a56d6f6e746801a479656172cd07e8a4686f757203a66d696e75746504"
                + "a67365636f6e6405ab6d6963726f7365636f6e6406"
        );
        assert_eq!(NaiveTime::from_ext(&dt.to_ext()), Some(dt));
    }

    #[test]
    fn integers_use_the_smallest_form() {
        let cases: &[(i64, &str)] = &[
            (0, "00"), (127, "7f"), (128, "cc80"), (256, "cd0100"), (65536, "ce00010000"),
            (1 << 32, "cf0000000100000000"), (-1, "ff"), (-32, "e0"), (-33, "d0df"),
            (-129, "d1ff7f"), (-32769, "d2ffff7fff"), (i64::MIN, "d38000000000000000"),
        ];
        for (i, want) in cases {
            let enc = encode(&Value::Int(*i));
            assert_eq!(hex(&enc), *want, "{i}");
            assert_eq!(decode(&enc).unwrap(), Value::Int(*i));
        }
        assert_eq!(decode(&encode(&Value::UInt(u64::MAX))).unwrap(), Value::UInt(u64::MAX));
    }

    #[test]
    fn round_trip_containers() {
        let v = Value::Array(vec![
            Value::Str("x".repeat(40)),
            Value::Bin(vec![0; 300]),
            Value::Float(1.5),
            Value::Bool(true),
            Value::Map(vec![(Value::Bin(b"k".to_vec()), Value::Ext(5, vec![1, 2, 3]))]),
            Value::Array((0..20).map(Value::Int).collect()),
        ]);
        assert_eq!(decode(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\xc1", b"\xdb\xff\xff\xff\xff", b"\x92\x01", b"\xa3ab", b"\xa2\xff\xfe", b"\x01\x02"] {
            assert!(matches!(decode(bad), Err(Error::Serialization(_))), "{bad:?}");
        }
        // Unoptimised builds use big frames; the runtime's threads get 8 MiB stacks too.
        let deep = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| decode(&vec![0x91u8; 100_000]).is_err())
            .unwrap();
        assert!(deep.join().unwrap());
        // A huge claimed length does not allocate.
        assert!(decode(b"\xdd\xff\xff\xff\xff").is_err());
    }
}
