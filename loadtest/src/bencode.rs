//! Just enough bencode for rtpengine's ng protocol: integers, byte strings, lists and
//! dictionaries. Encoding writes dictionary keys sorted (a `BTreeMap` of byte strings), as the
//! format requires; decoding is total (any input gives a value or an error, never a panic) and
//! bounds nesting, since the bytes come from the network.

use std::collections::BTreeMap;

/// Deeper nesting than any ng message has (a delete reply nests about 8 levels).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("bencode ends early at byte {0}")]
    Truncated(usize),
    #[error("bencode: unexpected byte {byte:#04x} at {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bencode: bad integer at byte {0}")]
    BadInt(usize),
    #[error("bencode: nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("bencode: {0} bytes after the value")]
    Trailing(usize),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// A list of strings.
    pub fn strs(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::str(s)).collect())
    }

    /// `self[key]` if `self` is a dictionary holding it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The value as UTF-8 text, if it is a byte string that is.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes exactly one value filling all of `input`.
    pub fn decode(input: &[u8]) -> Result<Value, BencodeError> {
        let mut d = Decoder { input, pos: 0 };
        let v = d.value(0)?;
        match input.len() - d.pos {
            0 => Ok(v),
            n => Err(BencodeError::Trailing(n)),
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Truncated(self.pos))
    }

    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::TooDeep);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.number(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                while self.peek()? != b'e' {
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                self.pos += 1;
                Ok(Value::Dict(map))
            }
            byte => Err(BencodeError::Unexpected { byte, at: self.pos }),
        }
    }

    /// Digits (with an optional `-`) up to `end`, which is consumed.
    fn number(&mut self, end: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let rest = self.input.get(start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|b| *b == end)
            .ok_or(BencodeError::Truncated(self.input.len()))?;
        let text = rest
            .get(..len)
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or(BencodeError::BadInt(start))?;
        let n = text
            .parse::<i64>()
            .map_err(|_| BencodeError::BadInt(start))?;
        self.pos = start + len + 1;
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, BencodeError> {
        let at = self.pos;
        let len = usize::try_from(self.number(b':')?).map_err(|_| BencodeError::BadInt(at))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(BencodeError::Truncated(self.input.len()))?;
        let b = self
            .input
            .get(self.pos..end)
            .ok_or(BencodeError::Truncated(self.input.len()))?;
        self.pos = end;
        Ok(b.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out);
        out
    }

    #[test]
    fn encodes_like_the_ng_documentation() {
        // rtpengine's ng protocol documentation's ping example, and sorted keys.
        assert_eq!(
            enc(&Value::dict([("command", Value::str("ping"))])),
            b"d7:command4:pinge"
        );
        let v = Value::dict([
            ("sdp", Value::str("v=0")),
            ("call-id", Value::str("x")),
            ("flags", Value::strs(&["a", "bc"])),
            ("n", Value::Int(-3)),
        ]);
        assert_eq!(enc(&v), b"d7:call-id1:x5:flagsl1:a2:bce1:ni-3e3:sdp3:v=0e");
    }

    #[test]
    fn decodes_what_it_encodes() {
        let v = Value::dict([
            ("result", Value::str("ok")),
            (
                "totals",
                Value::dict([("RTP", Value::dict([("packets", Value::Int(42))]))]),
            ),
            ("list", Value::List(vec![Value::Int(0), Value::str("")])),
        ]);
        let back = Value::decode(&enc(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(
            back.get("totals")
                .and_then(|t| t.get("RTP"))
                .and_then(|r| r.get("packets"))
                .and_then(Value::as_int),
            Some(42)
        );
    }

    #[test]
    fn refuses_malformed_input_without_panicking() {
        for bad in [
            &b""[..],
            b"d",
            b"i12",
            b"ie",
            b"i1x2e",
            b"5:abc",
            b"99999999999999999999999:x",
            b"-1:x",
            b"x",
            b"d3:keye",
            b"le1",
            b"l",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = [vec![b'l'; 100], vec![b'e'; 100]].concat();
        assert_eq!(Value::decode(&deep), Err(BencodeError::TooDeep));
    }
}
