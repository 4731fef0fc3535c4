//! Sets of field paths, as `managedFields` records them (`fieldsV1`): which fields of an
//! object a field manager owns. Path elements are kube's: `f:<field>`, `k:<key fields as
//! JSON>` (an item of a keyed list), `v:<value as JSON>` (an item of a set).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::api::openapi::schema::{Node, Shape};

/// A set of field paths; a node is a member itself and/or holds members below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// The fields kube-apiserver leaves out of every manager's set: identity and bookkeeping.
const IGNORED_META: &[&str] = &[
    "f:name",
    "f:namespace",
    "f:uid",
    "f:resourceVersion",
    "f:generation",
    "f:creationTimestamp",
    "f:deletionTimestamp",
    "f:deletionGracePeriodSeconds",
    "f:managedFields",
    "f:selfLink",
];

impl FieldSet {
    /// The fields `obj` sets, by its schema `node` (kube's `ToFieldSet`, without the
    /// identity and bookkeeping fields).
    pub fn of(node: Node<'_>, obj: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        let mut path = Vec::new();
        collect(node, obj, &mut path, &mut set);
        set.children.remove("f:apiVersion");
        set.children.remove("f:kind");
        if let Some(meta) = set.children.get_mut("f:metadata") {
            for f in IGNORED_META {
                meta.children.remove(*f);
            }
            meta.member = false;
        }
        set.prune();
        set
    }

    /// Whether no path is a member.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    /// Whether `path` is a member.
    pub fn contains(&self, path: &[String]) -> bool {
        let mut node = self;
        for pe in path {
            match node.children.get(pe) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member
    }

    /// Whether `path` is a member with nothing below it.
    pub fn is_leaf(&self, path: &[String]) -> bool {
        let mut node = self;
        for pe in path {
            match node.children.get(pe) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member && node.children.values().all(FieldSet::is_empty)
    }

    /// Every member path, parents before their children.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.walk(&mut path, &mut out);
        out
    }

    fn walk(&self, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(path.clone());
        }
        for (pe, child) in &self.children {
            path.push(pe.clone());
            child.walk(path, out);
            path.pop();
        }
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (pe, child) in &other.children {
            self.children.entry(pe.clone()).or_default().union(child);
        }
    }

    /// Removes every member of `other`.
    pub fn remove_all(&mut self, other: &FieldSet) {
        if other.member {
            self.member = false;
        }
        for (pe, child) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                mine.remove_all(child);
            }
        }
        self.prune();
    }

    /// The members of both.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(pe.clone(), both);
                }
            }
        }
        out
    }

    fn prune(&mut self) {
        self.children.retain(|_, c| {
            c.prune();
            !c.is_empty()
        });
    }

    /// The `fieldsV1` form: `{"f:spec": {"f:replicas": {}}}`, `".": {}` for a member
    /// that also has members below it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, child) in &self.children {
            m.insert(pe.clone(), child.to_json());
        }
        Value::Object(m)
    }

    /// Reads a `fieldsV1` tree (anything else gives the empty set).
    pub fn from_json(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (pe, child) in m {
                if pe == "." {
                    set.member = true;
                    continue;
                }
                let mut c = FieldSet::from_json(child);
                if child.as_object().is_some_and(Map::is_empty) {
                    c.member = true;
                }
                set.children.insert(pe.clone(), c);
            }
        }
        set
    }
}

/// `.spec.containers[name="a"].image`: a path as kube prints it in conflicts.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", keys.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// The path element of a keyed list's item: its key fields as JSON (sorted by name).
pub fn key_element(keys: &[String], item: &Value) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    (!m.is_empty()).then(|| format!("k:{}", Value::Object(m)))
}

fn collect(node: Node<'_>, v: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
    match (node.shape(v), v) {
        (Shape::Struct | Shape::Map, Value::Object(m)) => {
            let is_map = !node.has_fields();
            for (k, child) in m {
                let child_node = node.field(k).unwrap_or_else(|| node.free());
                path.push(format!("f:{k}"));
                collect(child_node, child, path, out);
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || is_map {
                    out.insert(path);
                }
                path.pop();
            }
        }
        (Shape::KeyedList(keys), Value::Array(items)) => {
            let item_node = node.items();
            for (i, item) in items.iter().enumerate() {
                path.push(key_element(&keys, item).unwrap_or_else(|| format!("i:{i}")));
                collect(item_node, item, path, out);
                out.insert(path);
                path.pop();
            }
        }
        (Shape::Set, Value::Array(items)) => {
            for item in items {
                path.push(format!("v:{item}"));
                out.insert(path);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path);
            }
        }
    }
}

/// The value at `path` in `obj`, if there is one.
pub fn value_at<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = obj;
    for pe in path {
        v = step(v, pe)?;
    }
    Some(v)
}

fn step<'v>(v: &'v Value, pe: &str) -> Option<&'v Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return v.get(f);
    }
    let items = v.as_array()?;
    item_position(items, pe).map(|i| &items[i])
}

/// Where the item named by `pe` (`k:…`, `v:…` or `i:…`) is in `items`.
pub fn item_position(items: &[Value], pe: &str) -> Option<usize> {
    if let Some(k) = pe.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        items
            .iter()
            .position(|item| keys.iter().all(|(k, v)| item.get(k) == Some(v)))
    } else if let Some(val) = pe.strip_prefix("v:") {
        let val: Value = serde_json::from_str(val).ok()?;
        items.iter().position(|item| *item == val)
    } else {
        pe.strip_prefix("i:")?
            .parse()
            .ok()
            .filter(|i| *i < items.len())
    }
}

/// Removes the value at `path` from `obj` (nothing when it is not there).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut v = obj;
    for pe in parents {
        let next = if let Some(f) = pe.strip_prefix("f:") {
            v.get_mut(f)
        } else {
            match v.as_array_mut() {
                Some(items) => match item_position(items, pe) {
                    Some(i) => items.get_mut(i),
                    None => None,
                },
                None => None,
            }
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = v.as_array_mut() {
        if let Some(i) = item_position(items, last) {
            items.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::schema::Schemas;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 80, "protocol": "TCP"}], "args": ["1", "2"]}
            ]}}}})
    }

    #[test]
    fn fields_of_an_object_are_kubes() {
        let schema = Schemas::builtin()
            .kind("apps/v1", "Deployment")
            .expect("schema");
        let set = FieldSet::of(schema, &deployment());
        assert_eq!(
            set.to_json(),
            json!({
                "f:metadata": {"f:annotations": {}, "f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    // LabelSelector is an atomic struct: owned as a whole.
                    "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"a\"}": {
                            ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}, "f:protocol": {}}},
                        }
                    }}}
                }
            })
        );
        assert_eq!(FieldSet::from_json(&set.to_json()), set);
        let image = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"a\"}",
            "f:image",
        ]
        .map(String::from);
        assert!(set.contains(&image));
        assert_eq!(
            display(&image),
            ".spec.template.spec.containers[name=\"a\"].image"
        );
        assert_eq!(value_at(&deployment(), &image), Some(&json!("x")));
    }

    #[test]
    fn set_algebra_prunes_what_becomes_empty() {
        let mut a = FieldSet::default();
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        a.insert(&p(&["f:spec", "f:replicas"]));
        a.insert(&p(&["f:spec", "f:paused"]));
        let mut b = FieldSet::default();
        b.insert(&p(&["f:spec", "f:replicas"]));
        assert_eq!(a.intersection(&b), b);
        a.remove_all(&b);
        assert_eq!(a.paths(), vec![p(&["f:spec", "f:paused"])]);
        a.remove_all(&a.clone());
        assert!(a.is_empty());
        assert_eq!(a.to_json(), json!({}));
        let mut obj = deployment();
        remove_at(
            &mut obj,
            &p(&[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"a\"}",
                "f:args",
            ]),
        );
        assert!(obj["spec"]["template"]["spec"]["containers"][0]
            .get("args")
            .is_none());
    }
}
