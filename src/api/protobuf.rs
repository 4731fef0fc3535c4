//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl 1.32+ and
//! other client-go programs send them, turned into the JSON objects the rest of the API
//! server handles.
//!
//! The body is the magic `k8s\0` and a `runtime.Unknown` envelope: the object's
//! apiVersion and kind, and the object itself encoded as its Kubernetes message. The
//! decoder is driven by the schemas of the Kubernetes API (`proto/k8s.io`, compiled into
//! a descriptor set at build time): Kubernetes names protobuf fields after their JSON
//! names, so walking the wire format with the descriptors yields the JSON object. Where
//! Go's JSON differs from the message structure, this module does what Go does:
//! - the well-known types: `Time` and `MicroTime` become RFC 3339 strings (the zero time
//!   is `null`, as Go writes it), `IntOrString` an int or a string, `Quantity` its
//!   string, `Duration` Go's duration text, `RawExtension` and `FieldsV1` the embedded
//!   JSON, bytes base64;
//! - the facts of `proto/json.txt`, derived from the Go struct tags by
//!   `proto/update.sh`: zero values of non-pointer `omitempty` scalars (which protobuf
//!   always carries) are dropped, embedded structs are inlined, and a few fields renamed.
//!
//! Unset optional fields, empty lists and empty maps are absent. Fields unknown to the
//! schemas are skipped, as kube-apiserver's protobuf decoding does.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use base64::Engine;
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use serde_json::{Map, Value};

use super::status::ApiError;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Deepest nesting of messages accepted (the schemas nest far less; embedded objects in
/// `RawExtension` could recurse without bound).
const MAX_DEPTH: usize = 64;

/// The compiled schemas of the served API groups.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s-descriptors.pb"));

/// The JSON facts derived from the Go types.
static JSON_FACTS: &str = include_str!("../../proto/json.txt");

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";

/// A decoding failure: always the client's body.
#[derive(Debug)]
struct Malformed(String);

type Decoded<T> = Result<T, Malformed>;

fn malformed<T>(msg: impl Into<String>) -> Decoded<T> {
    Err(Malformed(msg.into()))
}

/// What a field holds.
#[derive(Debug, Clone)]
enum Kind {
    Scalar(Type),
    /// A message, by full name (no leading dot).
    Message(String),
}

/// One field of a message, with its JSON name and rules.
#[derive(Debug, Clone)]
struct Field {
    json: String,
    kind: Kind,
    repeated: bool,
    /// Go drops the zero value (non-pointer `omitempty` scalar).
    omit_zero: bool,
    /// Go inlines the embedded struct's fields into the parent.
    inline: bool,
}

/// One message type.
#[derive(Debug, Default)]
struct MessageDef {
    fields: HashMap<u32, Field>,
    /// A `map<K, V>` entry (key = 1, value = 2).
    map_entry: bool,
}

/// All message types by full name.
struct Schema {
    messages: HashMap<String, MessageDef>,
}

static SCHEMA: LazyLock<Result<Schema, String>> =
    LazyLock::new(|| Schema::load(DESCRIPTORS, JSON_FACTS));

impl Schema {
    fn load(descriptors: &[u8], facts: &str) -> Result<Schema, String> {
        let set = prost_types::FileDescriptorSet::decode(descriptors)
            .map_err(|e| format!("embedded descriptor set: {e}"))?;
        let mut omit_zero = HashSet::new();
        let mut inline = HashSet::new();
        let mut rename = HashMap::new();
        for line in facts.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["omitzero", f] => {
                    omit_zero.insert(*f);
                }
                ["inline", f] => {
                    inline.insert(*f);
                }
                ["rename", f, json] => {
                    rename.insert(*f, *json);
                }
                [] => {}
                _ => return Err(format!("proto/json.txt: cannot read {line:?}")),
            }
        }
        let mut messages = HashMap::new();
        for file in &set.file {
            let package = file.package();
            for msg in &file.message_type {
                add_message(&mut messages, package, msg, &omit_zero, &inline, &rename);
            }
        }
        Ok(Schema { messages })
    }
}

fn add_message(
    out: &mut HashMap<String, MessageDef>,
    scope: &str,
    msg: &prost_types::DescriptorProto,
    omit_zero: &HashSet<&str>,
    inline: &HashSet<&str>,
    rename: &HashMap<&str, &str>,
) {
    let full = format!("{scope}.{}", msg.name());
    for nested in &msg.nested_type {
        add_message(out, &full, nested, omit_zero, inline, rename);
    }
    let mut def = MessageDef {
        map_entry: msg.options.as_ref().is_some_and(|o| o.map_entry()),
        ..Default::default()
    };
    for f in &msg.field {
        let Ok(number) = u32::try_from(f.number()) else {
            continue;
        };
        let path = format!("{full}.{}", f.name());
        let kind = match f.r#type() {
            Type::Message | Type::Group => {
                Kind::Message(f.type_name().trim_start_matches('.').to_string())
            }
            t => Kind::Scalar(t),
        };
        def.fields.insert(
            number,
            Field {
                json: rename
                    .get(path.as_str())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| f.name().to_string()),
                kind,
                repeated: f.label() == Label::Repeated,
                omit_zero: omit_zero.contains(path.as_str()),
                inline: inline.contains(path.as_str()),
            },
        );
    }
    out.insert(full, def);
}

/// The protobuf package of an apiVersion's schemas: `apps/v1` → `k8s.io.api.apps.v1`,
/// `rbac.authorization.k8s.io/v1` → `k8s.io.api.rbac.v1`, `v1` → `k8s.io.api.core.v1`.
fn package_of(api_version: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let short = group.split('.').next().unwrap_or("");
    let short = if short.is_empty() { "core" } else { short };
    format!("k8s.io.api.{short}.{version}")
}

/// Decodes a protobuf request body into the JSON object it encodes (with apiVersion and
/// kind from its envelope). Malformed bodies and kinds without a schema are a 400, an
/// envelope in an encoding other than protobuf or JSON a 415.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let schema = SCHEMA
        .as_ref()
        .map_err(|e| ApiError::internal(format!("protobuf schemas unavailable: {e}")))?;
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(ApiError::bad_request(
            "error decoding protobuf request body: it does not start with the Kubernetes protobuf prefix \"k8s\\x00\"",
        ));
    };
    schema.unknown(envelope, 0).map_err(|Malformed(m)| {
        ApiError::bad_request(format!("error decoding protobuf request body: {m}"))
    })?
}

impl Schema {
    /// A `runtime.Unknown` envelope: the outer result is the client's error (415 or
    /// 400 for a kind without a schema), the inner one a malformed body.
    fn unknown(&self, bytes: &[u8], depth: usize) -> Decoded<Result<Value, ApiError>> {
        let (mut api_version, mut kind) = (String::new(), String::new());
        let (mut raw, mut encoding, mut content_type): (&[u8], String, String) =
            (&[], String::new(), String::new());
        for field in Fields(bytes) {
            match field? {
                (1, Wire::Len(tm)) => {
                    for f in Fields(tm) {
                        match f? {
                            (1, Wire::Len(s)) => api_version = utf8(s),
                            (2, Wire::Len(s)) => kind = utf8(s),
                            _ => {}
                        }
                    }
                }
                (2, Wire::Len(r)) => raw = r,
                (3, Wire::Len(s)) => encoding = utf8(s),
                (4, Wire::Len(s)) => content_type = utf8(s),
                _ => {}
            }
        }
        if !encoding.is_empty() {
            return Ok(Err(ApiError::unsupported_media_type(&format!(
                "{MEDIA_TYPE} with content encoding {encoding:?}"
            ))));
        }
        let mut obj = match content_type.split(';').next().unwrap_or("").trim() {
            "" | MEDIA_TYPE => {
                let Some(message) = self.message_for(&api_version, &kind) else {
                    return Ok(Err(ApiError::bad_request(format!(
                        "no kind {kind:?} is registered for the protobuf encoding of version {api_version:?}"
                    ))));
                };
                Value::Object(self.message(message, raw, depth + 1)?)
            }
            "application/json" => match serde_json::from_slice(raw) {
                Ok(v @ Value::Object(_)) => v,
                _ => return malformed("the embedded JSON object is not valid"),
            },
            other => return Ok(Err(ApiError::unsupported_media_type(other))),
        };
        if let Value::Object(map) = &mut obj {
            if !api_version.is_empty() {
                map.insert("apiVersion".into(), Value::String(api_version));
            }
            if !kind.is_empty() {
                map.insert("kind".into(), Value::String(kind));
            }
        }
        Ok(Ok(obj))
    }

    /// The message of a kind: in its group's package, or meta/v1's for the options kinds
    /// (DeleteOptions…) every group version carries.
    fn message_for(&self, api_version: &str, kind: &str) -> Option<&str> {
        if kind.is_empty() {
            return None;
        }
        [
            format!("{}.{kind}", package_of(api_version)),
            format!("{META}.{kind}"),
        ]
        .into_iter()
        .find_map(|name| self.messages.get_key_value(&name).map(|(k, _)| k.as_str()))
    }

    /// A message as a JSON object.
    fn message(&self, name: &str, bytes: &[u8], depth: usize) -> Decoded<Map<String, Value>> {
        if depth > MAX_DEPTH {
            return malformed("objects are nested too deeply");
        }
        let Some(def) = self.messages.get(name) else {
            return malformed(format!("no schema for message {name}"));
        };
        // Repeated fields and maps collect their elements; a singular message given
        // several times is merged, as protobuf does, by decoding the concatenation.
        let mut singular: Vec<(u32, Value)> = Vec::new();
        let mut pieces: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut lists: Vec<(u32, Vec<Value>)> = Vec::new();
        let mut maps: Vec<(u32, Map<String, Value>)> = Vec::new();
        for field in Fields(bytes) {
            let (number, wire) = field?;
            let Some(f) = def.fields.get(&number) else {
                continue;
            };
            match (&f.kind, f.repeated) {
                (Kind::Scalar(t), false) => {
                    let v = scalar(*t, wire)?;
                    singular.retain(|(n, _)| *n != number);
                    singular.push((number, v));
                }
                (Kind::Scalar(t), true) => {
                    let values = match (wire, packable(*t)) {
                        (Wire::Len(packed), true) => packed_scalars(*t, packed)?,
                        (w, _) => vec![scalar(*t, w)?],
                    };
                    entry(&mut lists, number).extend(values);
                }
                (Kind::Message(m), repeated) => {
                    let Wire::Len(b) = wire else {
                        return malformed(format!("field {} is not a message", f.json));
                    };
                    let is_map = self.messages.get(m).is_some_and(|d| d.map_entry);
                    if is_map {
                        let (k, v) = self.map_entry(m, b, depth)?;
                        entry(&mut maps, number).insert(k, v);
                    } else if repeated {
                        let v = self.value(m, b, depth)?;
                        entry(&mut lists, number).push(v);
                    } else {
                        entry(&mut pieces, number).extend_from_slice(b);
                    }
                }
            }
        }
        let mut out = Map::new();
        for (number, v) in singular {
            let f = &def.fields[&number];
            if !(f.omit_zero && is_zero(&v)) {
                out.insert(f.json.clone(), v);
            }
        }
        for (number, b) in pieces {
            let f = &def.fields[&number];
            let Kind::Message(m) = &f.kind else { continue };
            match self.value(m, &b, depth)? {
                Value::Object(inner) if f.inline => out.extend(inner),
                v => {
                    out.insert(f.json.clone(), v);
                }
            }
        }
        for (number, items) in lists {
            out.insert(def.fields[&number].json.clone(), Value::Array(items));
        }
        for (number, entries) in maps {
            out.insert(def.fields[&number].json.clone(), Value::Object(entries));
        }
        Ok(out)
    }

    /// A message-typed value as Go's JSON has it (the zero time and an empty
    /// RawExtension are null).
    fn value(&self, name: &str, bytes: &[u8], depth: usize) -> Decoded<Value> {
        Ok(match name {
            TIME => time(bytes, false)?,
            MICRO_TIME => time(bytes, true)?,
            DURATION => Value::String(go_duration(int_field(bytes, 1)?)),
            INT_OR_STRING => int_or_string(bytes)?,
            QUANTITY => Value::String(string_field(bytes, 1)?.unwrap_or_else(|| "0".into())),
            RAW_EXTENSION | FIELDS_V1 => self.embedded(bytes, depth)?,
            _ => Value::Object(self.message(name, bytes, depth + 1)?),
        })
    }

    /// One `map<K, V>` entry: the key as a string, the value as JSON (a missing value is
    /// the zero value, as protobuf has it).
    fn map_entry(&self, name: &str, bytes: &[u8], depth: usize) -> Decoded<(String, Value)> {
        let Some(def) = self.messages.get(name) else {
            return malformed(format!("no schema for message {name}"));
        };
        let (mut key, mut value) = (None, None);
        for field in Fields(bytes) {
            let (number, wire) = field?;
            let Some(f) = def.fields.get(&number) else {
                continue;
            };
            match (&f.kind, number) {
                (Kind::Scalar(t), 1) => key = Some(scalar(*t, wire)?),
                (Kind::Scalar(t), 2) => value = Some(scalar(*t, wire)?),
                (Kind::Message(m), 2) => {
                    let Wire::Len(b) = wire else {
                        return malformed("map value is not a message");
                    };
                    value = Some(self.value(m, b, depth)?);
                }
                _ => {}
            }
        }
        let key = match key {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let value = match value {
            Some(v) => v,
            None => match def.fields.get(&2).map(|f| &f.kind) {
                Some(Kind::Scalar(t)) => zero(*t),
                Some(Kind::Message(m)) => self.value(m, &[], depth)?,
                None => Value::Null,
            },
        };
        Ok((key, value))
    }

    /// The object inside a RawExtension or FieldsV1: JSON, or a nested protobuf object.
    fn embedded(&self, bytes: &[u8], depth: usize) -> Decoded<Value> {
        let raw = bytes_field(bytes, 1)?.unwrap_or_default();
        if raw.is_empty() {
            return Ok(Value::Null);
        }
        if let Some(envelope) = raw.strip_prefix(MAGIC) {
            return match self.unknown(envelope, depth + 1)? {
                Ok(v) => Ok(v),
                Err(e) => malformed(format!("embedded object: {}", e.message)),
            };
        }
        serde_json::from_slice(raw)
            .or_else(|e| malformed(format!("embedded object is neither JSON nor protobuf: {e}")))
    }
}

fn entry<T: Default>(v: &mut Vec<(u32, T)>, number: u32) -> &mut T {
    let i = match v.iter().position(|(n, _)| *n == number) {
        Some(i) => i,
        None => {
            v.push((number, T::default()));
            v.len() - 1
        }
    };
    &mut v[i].1
}

/// One field's payload on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// The fields of an encoded message, in wire order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Decoded<(u32, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.0 = &[];
        }
        Some(item)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Decoded<(u32, Wire<'a>)> {
        let key = varint(&mut self.0)?;
        let number = u32::try_from(key >> 3).unwrap_or(0);
        if number == 0 {
            return malformed("invalid field number 0");
        }
        let wire = match key & 7 {
            0 => Wire::Varint(varint(&mut self.0)?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                take(&mut self.0, 8)?.try_into().unwrap_or_default(),
            )),
            2 => {
                let len = usize::try_from(varint(&mut self.0)?).unwrap_or(usize::MAX);
                Wire::Len(take(&mut self.0, len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                take(&mut self.0, 4)?.try_into().unwrap_or_default(),
            )),
            w => return malformed(format!("unsupported wire type {w} for field {number}")),
        };
        Ok((number, wire))
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Decoded<&'a [u8]> {
    if buf.len() < n {
        return malformed("truncated message");
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn varint(buf: &mut &[u8]) -> Decoded<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return malformed("truncated varint");
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    malformed("varint longer than 10 bytes")
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether repeated fields of this type may be packed.
fn packable(t: Type) -> bool {
    !matches!(t, Type::String | Type::Bytes | Type::Message | Type::Group)
}

fn packed_scalars(t: Type, mut b: &[u8]) -> Decoded<Vec<Value>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let w = match t {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => Wire::Fixed64(u64::from_le_bytes(
                take(&mut b, 8)?.try_into().unwrap_or_default(),
            )),
            Type::Float | Type::Fixed32 | Type::Sfixed32 => Wire::Fixed32(u32::from_le_bytes(
                take(&mut b, 4)?.try_into().unwrap_or_default(),
            )),
            _ => Wire::Varint(varint(&mut b)?),
        };
        out.push(scalar(t, w)?);
    }
    Ok(out)
}

/// A scalar as Go's JSON writes it (64-bit integers as numbers, bytes in base64).
fn scalar(t: Type, w: Wire) -> Decoded<Value> {
    use Type as T;
    let v = match (t, w) {
        (T::String, Wire::Len(b)) => Value::String(utf8(b)),
        (T::Bytes, Wire::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (T::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // Truncation to 32 bits is protobuf's rule for 32-bit varints.
        (T::Int32 | T::Enum, Wire::Varint(v)) => Value::from(v as i32),
        (T::Uint32, Wire::Varint(v)) => Value::from(v as u32),
        (T::Int64, Wire::Varint(v)) => Value::from(v as i64),
        (T::Uint64, Wire::Varint(v)) => Value::from(v),
        (T::Sint32, Wire::Varint(v)) => Value::from(((v as u32) >> 1) as i32 ^ -((v & 1) as i32)),
        (T::Sint64, Wire::Varint(v)) => Value::from((v >> 1) as i64 ^ -((v & 1) as i64)),
        (T::Fixed32, Wire::Fixed32(v)) => Value::from(v),
        (T::Sfixed32, Wire::Fixed32(v)) => Value::from(v as i32),
        (T::Float, Wire::Fixed32(v)) => float(f64::from(f32::from_bits(v)))?,
        (T::Fixed64, Wire::Fixed64(v)) => Value::from(v),
        (T::Sfixed64, Wire::Fixed64(v)) => Value::from(v as i64),
        (T::Double, Wire::Fixed64(v)) => float(f64::from_bits(v))?,
        (t, w) => return malformed(format!("a {t:?} field cannot be encoded as {w:?}")),
    };
    Ok(v)
}

fn float(f: f64) -> Decoded<Value> {
    match serde_json::Number::from_f64(f) {
        Some(n) => Ok(Value::Number(n)),
        None => malformed("a number that JSON cannot carry (NaN or infinite)"),
    }
}

/// The zero value of a scalar type.
fn zero(t: Type) -> Value {
    match t {
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        _ => Value::from(0),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// The last varint value of field `number` (protobuf: the last one wins), 0 if absent.
fn int_field(bytes: &[u8], number: u32) -> Decoded<i64> {
    let mut v = 0;
    for f in Fields(bytes) {
        if let (n, Wire::Varint(x)) = f? {
            if n == number {
                v = x as i64;
            }
        }
    }
    Ok(v)
}

fn bytes_field(bytes: &[u8], number: u32) -> Decoded<Option<&[u8]>> {
    let mut v = None;
    for f in Fields(bytes) {
        if let (n, Wire::Len(b)) = f? {
            if n == number {
                v = Some(b);
            }
        }
    }
    Ok(v)
}

fn string_field(bytes: &[u8], number: u32) -> Decoded<Option<String>> {
    Ok(bytes_field(bytes, number)?.map(utf8))
}

/// metav1.Time (RFC 3339, seconds) or MicroTime (six fractional digits); null for the
/// zero time.
fn time(bytes: &[u8], micro: bool) -> Decoded<Value> {
    let seconds = int_field(bytes, 1)?;
    let nanos = int_field(bytes, 2)?;
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000);
    let Some(t) = nanos.and_then(|n| chrono::DateTime::from_timestamp(seconds, n)) else {
        return malformed(format!("invalid time ({seconds} s, {nanos:?} ns)"));
    };
    let format = if micro {
        chrono::SecondsFormat::Micros
    } else {
        chrono::SecondsFormat::Secs
    };
    Ok(Value::String(t.to_rfc3339_opts(format, true)))
}

/// intstr.IntOrString {type, intVal, strVal}: type 1 is the string form.
fn int_or_string(bytes: &[u8]) -> Decoded<Value> {
    if int_field(bytes, 1)? == 1 {
        Ok(Value::String(string_field(bytes, 3)?.unwrap_or_default()))
    } else {
        Ok(Value::from(int_field(bytes, 2)? as i32))
    }
}

/// A duration in nanoseconds as Go's `time.Duration.String()` writes it: "1h2m3.5s",
/// "250ms", "0s".
fn go_duration(nanos: i64) -> String {
    fn frac(v: u64, digits: u32) -> String {
        let unit = 10u64.pow(digits);
        let (int, rest) = (v / unit, v % unit);
        if rest == 0 {
            return int.to_string();
        }
        let f = format!("{rest:0width$}", width = digits as usize);
        format!("{int}.{}", f.trim_end_matches('0'))
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let body = match u {
        0 => return "0s".into(),
        u if u < 1_000 => format!("{u}ns"),
        u if u < 1_000_000 => format!("{}µs", frac(u, 3)),
        u if u < 1_000_000_000 => format!("{}ms", frac(u, 6)),
        u => {
            let secs = frac(u % 60_000_000_000, 9);
            let mins = u / 60_000_000_000 % 60;
            let hours = u / 3_600_000_000_000;
            if hours > 0 {
                format!("{hours}h{mins}m{secs}s")
            } else if mins > 0 {
                format!("{mins}m{secs}s")
            } else {
                format!("{secs}s")
            }
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
#[path = "protobuf_tests.rs"]
mod tests;
