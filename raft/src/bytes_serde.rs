//! Serde for byte vectors as one byte string instead of a sequence of numbers.
//!
//! bincode writes both forms identically (a u64 length, then the bytes), so records
//! written either way read back the same; decoding a byte string is one copy where a
//! sequence is a call per byte, which made reading stored values the store's hottest path.

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `v` as a byte string.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads a byte string (or, from self-describing formats, a sequence of bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// The same for optional byte vectors.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as an optional byte string.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Wrapped(b)),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Owned>::deserialize(d)?.map(|o| o.0))
    }

    struct Wrapped<'a>(&'a [u8]);

    impl serde::Serialize for Wrapped<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, s)
        }
    }

    struct Owned(Vec<u8>);

    impl<'de> Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d).map(Owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Old {
        a: Vec<u8>,
        b: Option<Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct New {
        #[serde(with = "super")]
        a: Vec<u8>,
        #[serde(with = "super::option")]
        b: Option<Vec<u8>>,
    }

    #[test]
    fn bincode_form_is_unchanged_both_ways() {
        let old = Old {
            a: b"value \x00\xff".to_vec(),
            b: Some(b"end".to_vec()),
        };
        let new = New {
            a: old.a.clone(),
            b: old.b.clone(),
        };
        let old_bytes = bincode::serialize(&old).expect("encode old");
        assert_eq!(old_bytes, bincode::serialize(&new).expect("encode new"));
        let read: New = bincode::deserialize(&old_bytes).expect("decode as new");
        assert_eq!(read, new);
        let none = Old { a: vec![], b: None };
        let read: New =
            bincode::deserialize(&bincode::serialize(&none).expect("encode")).expect("decode");
        assert_eq!(read, New { a: vec![], b: None });
    }

    #[test]
    fn json_reads_number_arrays() {
        let read: New = serde_json::from_str(r#"{"a":[1,2,3],"b":[4]}"#).expect("json");
        assert_eq!(read.a, vec![1, 2, 3]);
        assert_eq!(read.b, Some(vec![4]));
    }
}
