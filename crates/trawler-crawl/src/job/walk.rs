//! Reading a job's fields from a JSON answer in one pass, without building
//! the document.
//!
//! The obvious way — parse the body into a `serde_json::Value`, then look
//! each pointer up — allocates a map, a string per key and one per string
//! value for every answer, to keep two numbers: at 16,700 answers a second
//! that was a visible share of the crawl's CPU. Instead the job's pointers
//! are compiled once into a small trie ([`Paths`]) and the body is walked
//! with serde's visitor API: members on a pointer's path are descended into,
//! every other value is skipped (still fully checked, so a malformed body is
//! still an error), and numbers are kept only where a pointer ends. Keys are
//! compared where they lie in the body; nothing is allocated unless a key
//! has escapes.
//!
//! The results are those of `Value::pointer` on the parsed document (a
//! property test holds the two together): RFC 6901 segments with `~1` and
//! `~0` unescaped, array elements by decimal index, the last of duplicate
//! keys wins.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::extract::NumberKind;

/// A compiled set of JSON pointers: one trie node per path segment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Paths {
    root: Node,
    fields: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Node {
    /// Members (or array indexes, as text) below this one.
    children: Vec<(String, Node)>,
    /// The fields whose pointer ends here: (slot, kind).
    ends: Vec<(usize, NumberKind)>,
}

/// What the walk found at one field's pointer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Found {
    /// Nothing: the pointer matched no value.
    Missing,
    /// A number of the declared kind.
    Number(f64),
    /// A value that is not a number of the declared kind.
    Wrong,
}

impl Paths {
    /// Compiles `pointers` (each starting with `/`), in slot order.
    pub(crate) fn new<'a>(pointers: impl IntoIterator<Item = (&'a str, NumberKind)>) -> Self {
        let mut paths = Paths::default();
        for (slot, (pointer, kind)) in pointers.into_iter().enumerate() {
            let mut node = &mut paths.root;
            for segment in pointer.split('/').skip(1) {
                let segment = segment.replace("~1", "/").replace("~0", "~");
                let at = match node.children.iter().position(|(s, _)| *s == segment) {
                    Some(at) => at,
                    None => {
                        node.children.push((segment, Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.ends.push((slot, kind));
            paths.fields = slot + 1;
        }
        paths
    }

    /// Walks `body` once; `found[slot]` is what each field's pointer holds.
    /// An error means the body is not one well-formed JSON document.
    pub(crate) fn walk(&self, body: &[u8], found: &mut [Found]) -> Result<(), serde_json::Error> {
        found.iter_mut().for_each(|f| *f = Found::Missing);
        let mut de = serde_json::Deserializer::from_slice(body);
        Walk {
            node: Some(&self.root),
            found,
        }
        .deserialize(&mut de)?;
        de.end()
    }

    /// How many fields the paths were compiled from.
    pub(crate) fn fields(&self) -> usize {
        self.fields
    }
}

/// Walks one value; `node` is its place in the trie (`None`: off every
/// pointer's path, just check and skip).
struct Walk<'p, 'f> {
    node: Option<&'p Node>,
    found: &'f mut [Found],
}

impl Walk<'_, '_> {
    fn number(self, integer: bool, v: f64) {
        if let Some(node) = self.node {
            for &(slot, kind) in &node.ends {
                self.found[slot] = match kind {
                    NumberKind::Integer if !integer => Found::Wrong,
                    _ => Found::Number(v),
                };
            }
        }
    }

    fn other(self) {
        if let Some(node) = self.node {
            for &(slot, _) in &node.ends {
                self.found[slot] = Found::Wrong;
            }
        }
    }
}

/// The child of `node` named `key`.
fn child<'p>(node: Option<&'p Node>, key: &str) -> Option<&'p Node> {
    node?
        .children
        .iter()
        .find(|(s, _)| s == key)
        .map(|(_, n)| n)
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.node {
            // Off every path: skip the value (serde_json still checks it).
            None => d.deserialize_ignored_any(IgnoredAny).map(drop),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(true, v as f64);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(true, v as f64);
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(false, v);
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { node, found } = self;
        // A pointer that ends at an object holds no number.
        for &(slot, _) in node.map_or(&[][..], |n| &n.ends) {
            found[slot] = Found::Wrong;
        }
        while let Some(next) = map.next_key_seed(Key(node))? {
            map.next_value_seed(Walk {
                node: next,
                found: &mut *found,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walk { node, found } = self;
        for &(slot, _) in node.map_or(&[][..], |n| &n.ends) {
            found[slot] = Found::Wrong;
        }
        let indexed = node.is_some_and(|n| !n.children.is_empty());
        let mut text = String::new();
        for index in 0usize.. {
            let next = if indexed {
                text.clear();
                use fmt::Write;
                let _ = write!(text, "{index}");
                child(node, &text)
            } else {
                None
            };
            let more = seq.next_element_seed(Walk {
                node: next,
                found: &mut *found,
            })?;
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Reads a member's key and finds it among the children of a node,
/// without keeping the key.
struct Key<'p>(Option<&'p Node>);

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<&'p Node>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<&'p Node>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(child(self.0, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: parse the document, look the pointer up.
    fn by_value(body: &[u8], pointer: &str, kind: NumberKind) -> Option<Found> {
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(match json.pointer(pointer) {
            None => Found::Missing,
            Some(v) => match kind {
                NumberKind::Integer => v
                    .as_i64()
                    .map(|v| v as f64)
                    .or_else(|| v.as_u64().map(|v| v as f64))
                    .map_or(Found::Wrong, Found::Number),
                NumberKind::Float => v.as_f64().map_or(Found::Wrong, Found::Number),
            },
        })
    }

    fn walk(body: &[u8], pointers: &[(&str, NumberKind)]) -> Option<Vec<Found>> {
        let paths = Paths::new(pointers.iter().copied());
        let mut found = vec![Found::Missing; paths.fields()];
        paths.walk(body, &mut found).ok()?;
        Some(found)
    }

    #[test]
    fn nested_members_array_indexes_and_escapes() {
        let body = br#"{"stats":{"downloads":{"total":12},"score":0.5},"a/b":{"~":[1,2,{"x":-3}]},"s":"7"}"#;
        let got = walk(
            body,
            &[
                ("/stats/downloads/total", NumberKind::Integer),
                ("/stats/score", NumberKind::Float),
                ("/stats/score", NumberKind::Integer),
                ("/a~1b/~0/2/x", NumberKind::Integer),
                ("/a~1b/~0/1", NumberKind::Float),
                ("/s", NumberKind::Float),
                ("/nope", NumberKind::Float),
                ("/stats", NumberKind::Float),
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Found::Number(12.0),
                Found::Number(0.5),
                Found::Wrong,
                Found::Number(-3.0),
                Found::Number(2.0),
                Found::Wrong,
                Found::Missing,
                Found::Wrong,
            ]
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [&b"{"[..], b"", b"{\"a\":1} x", b"{\"a\":[1,}", b"nul"] {
            assert!(
                walk(body, &[("/a", NumberKind::Float)]).is_none(),
                "{body:?}"
            );
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            "[a-z~/]{0,3}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[ab~/0-2]{0,2}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The walk agrees with `Value::pointer` on any document and
        /// pointers over its likely keys.
        #[test]
        fn agrees_with_value_pointer(
            doc in json(),
            pointers in proptest::collection::vec(
                (proptest::collection::vec("[ab0-2]|~0|~1|", 1..4), any::<bool>()),
                1..5,
            ),
        ) {
            let body = serde_json::to_vec(&doc).unwrap();
            let pointers: Vec<(String, NumberKind)> = pointers
                .into_iter()
                .map(|(segments, integer)| {
                    let kind = if integer { NumberKind::Integer } else { NumberKind::Float };
                    (format!("/{}", segments.join("/")), kind)
                })
                .collect();
            let refs: Vec<(&str, NumberKind)> =
                pointers.iter().map(|(p, k)| (p.as_str(), *k)).collect();
            let got = walk(&body, &refs).unwrap();
            for ((pointer, kind), got) in refs.iter().zip(got) {
                prop_assert_eq!(Some(got), by_value(&body, pointer, *kind), "{}", pointer);
            }
        }

        /// Any bytes: an error or an answer, never a panic, and an error
        /// exactly when the bytes are not one JSON document.
        #[test]
        fn any_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let walked = walk(&body, &[("/a", NumberKind::Float), ("/0", NumberKind::Integer)]);
            let parsed = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
            prop_assert_eq!(walked.is_some(), parsed);
        }
    }
}
