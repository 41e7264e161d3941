//! Entity keys: what a job calls the things it polls.
//!
//! Everything below the job file — the schedule, the store's series, the
//! live views, the cluster's shards — works on compact `u64` ids: a wheel
//! slot, a series key and a rank-tree entry are a few bytes each, and id
//! ranges make a million accounts one [`crate::IdSet`] range. Mockstagram's
//! keys are integers already (`pk`), so an id *is* the key. Other APIs name
//! their entities with strings (package names, usernames, URLs): those are
//! **interned** — the n-th distinct key gets id n — and the table goes with
//! the data folder (see `Keys::names`), so an id means the same key for as
//! long as the stored series live.
//!
//! A string key is 1 to [`MAX_KEY_BYTES`] bytes of URL-path-safe ASCII
//! (`A–Z a–z 0–9 - . _ ~ : @ + !`): it is written unescaped into the
//! target's URL and into the API's paths (`/api/v1/{job}/{key}`), so a key
//! that would need escaping is refused where it enters, with the reason.
//!
//! ```
//! use trawler_crawl::keys::Keys;
//! let keys = Keys::strings(["serde", "tokio"]).unwrap();
//! assert_eq!(keys.parse("tokio").unwrap(), Some(1));
//! assert_eq!(keys.parse("hyper").unwrap(), None);
//! assert_eq!(keys.intern("hyper").unwrap(), 2);
//! assert_eq!(keys.name(2).as_deref(), Some("hyper"));
//! assert!(keys.intern("no spaces").is_err());
//! ```

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};

/// Longest string key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Integer or string keys (`[job] keys = "integer" | "string"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The default: keys are unsigned integers and are their own ids.
    #[default]
    Integer,
    /// Keys are strings, interned to compact ids.
    String,
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {key:?}: {reason}")]
pub struct KeyError {
    /// The key as given (cut to 64 bytes).
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl KeyError {
    fn new(key: &str, reason: &'static str) -> Self {
        let mut end = key.len().min(64);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            key: key[..end].to_owned(),
            reason,
        }
    }
}

/// The keys of one job and their ids. Shared (`Arc`) by the crawler, which
/// writes keys into URLs, and the API, which reads them from paths.
#[derive(Debug)]
pub struct Keys {
    kind: KeyKind,
    table: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u64>,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.names() == other.names()
    }
}

impl Keys {
    /// Integer keys: every id is its own key.
    pub fn integers() -> Self {
        Self {
            kind: KeyKind::Integer,
            table: RwLock::default(),
        }
    }

    /// String keys, interned in the order given (duplicates keep their first
    /// id).
    pub fn strings<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, KeyError> {
        let keys = Self {
            kind: KeyKind::String,
            table: RwLock::default(),
        };
        for name in names {
            keys.intern(name.as_ref())?;
        }
        Ok(keys)
    }

    /// Integer or string.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The id of `text`: for integer keys the number (an error if `text` is
    /// not one), for string keys its id if it was interned, else `None`.
    pub fn parse(&self, text: &str) -> Result<Option<u64>, KeyError> {
        match self.kind {
            KeyKind::Integer => parse_integer(text).map(Some),
            KeyKind::String => {
                check_string(text)?;
                Ok(self.read().ids.get(text).copied())
            }
        }
    }

    /// The id of `text`, interning a new string key at the next id.
    pub fn intern(&self, text: &str) -> Result<u64, KeyError> {
        match self.kind {
            KeyKind::Integer => parse_integer(text),
            KeyKind::String => {
                check_string(text)?;
                if let Some(id) = self.read().ids.get(text) {
                    return Ok(*id);
                }
                let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = table.ids.get(text) {
                    return Ok(*id);
                }
                let id = table.names.len() as u64;
                let name: Arc<str> = Arc::from(text);
                table.names.push(name.clone());
                table.ids.insert(name, id);
                Ok(id)
            }
        }
    }

    /// The key of `id` as text: the number for integer keys, the interned
    /// string for string keys (`None` for an id never interned).
    pub fn name(&self, id: u64) -> Option<Arc<str>> {
        match self.kind {
            KeyKind::Integer => Some(Arc::from(id.to_string())),
            KeyKind::String => usize::try_from(id)
                .ok()
                .and_then(|i| self.read().names.get(i).cloned()),
        }
    }

    /// Appends the key of `id` to `out` (nothing for an unknown string id).
    pub fn write(&self, id: u64, out: &mut String) {
        match self.kind {
            // Writing into a String cannot fail.
            KeyKind::Integer => drop(write!(out, "{id}")),
            KeyKind::String => {
                if let Some(name) = usize::try_from(id)
                    .ok()
                    .and_then(|i| self.read().names.get(i).cloned())
                {
                    out.push_str(&name);
                }
            }
        }
    }

    /// The key of `id` as JSON: a number or a string (`null` for an unknown
    /// string id).
    pub fn to_json(&self, id: u64) -> serde_json::Value {
        match self.kind {
            KeyKind::Integer => id.into(),
            KeyKind::String => self
                .name(id)
                .map_or(serde_json::Value::Null, |n| n.as_ref().into()),
        }
    }

    /// Interned string keys in id order (empty for integer keys): what the
    /// data folder keeps so that ids stay stable across restarts.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.read().names.clone()
    }

    /// How many string keys are interned.
    pub fn len(&self) -> usize {
        self.read().names.len()
    }

    /// Whether no string key is interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_integer(text: &str) -> Result<u64, KeyError> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyError::new(text, "this job's keys are unsigned integers"));
    }
    text.parse()
        .map_err(|_| KeyError::new(text, "larger than the largest key (2^64 - 1)"))
}

fn check_string(text: &str) -> Result<(), KeyError> {
    if text.is_empty() {
        return Err(KeyError::new(text, "a key is at least one character"));
    }
    if text.len() > MAX_KEY_BYTES {
        return Err(KeyError::new(text, "a key is at most 256 bytes"));
    }
    if !text.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'+' | b'!')
    }) {
        return Err(KeyError::new(
            text,
            "a key is ASCII letters, digits and - . _ ~ : @ + ! (it goes unescaped into URLs)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integer_keys_are_their_ids() {
        let keys = Keys::integers();
        assert_eq!(keys.parse("1000001").unwrap(), Some(1_000_001));
        assert_eq!(keys.intern("7").unwrap(), 7);
        assert_eq!(keys.parse("1000000").unwrap(), Some(1_000_000));
        for bad in [
            "",
            "-1",
            "1e3",
            "abc",
            "12a",
            "99999999999999999999",
            "99999999999999999999999",
        ] {
            assert!(keys.parse(bad).is_err(), "{bad}");
        }
        assert_eq!(keys.to_json(5), serde_json::json!(5));
        let mut s = String::new();
        keys.write(42, &mut s);
        assert_eq!(s, "42");
        assert!(keys.is_empty());
    }

    #[test]
    fn string_keys_are_interned_in_order_and_checked() {
        let keys = Keys::strings(["a", "b", "a"]).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.parse("b").unwrap(), Some(1));
        assert_eq!(keys.to_json(0), serde_json::json!("a"));
        assert_eq!(keys.to_json(9), serde_json::Value::Null);
        for bad in ["", "a/b", "a b", "a,b", "é", &"x".repeat(257)] {
            assert!(keys.intern(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(keys.len(), 2, "a refused key is not interned");
    }

    proptest! {
        #[test]
        fn interning_is_a_bijection(names in proptest::collection::vec("[a-z0-9._-]{1,12}", 0..50)) {
            let keys = Keys::strings(&names).unwrap();
            for name in &names {
                let id = keys.parse(name).unwrap().unwrap();
                let back = keys.name(id);
                prop_assert_eq!(back.as_deref(), Some(name.as_str()));
            }
            let again = Keys::strings(keys.names().iter().map(|n| n.as_ref())).unwrap();
            prop_assert_eq!(again, keys);
        }
    }
}
