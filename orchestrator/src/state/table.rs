//! `Table`: a sorted map that remembers what the current command changed, and what
//! changed since the store last persisted it.
//!
//! Every table of the replicated state is a `Table`. Applying a command mutates tables
//! freely; afterwards the state machine either **seals** the command (its changes join
//! the set of rows the store must write) or **rolls it back** (every row returns to its
//! value before the command). This is how an invalid command is rejected without a
//! trace, and how the store writes O(changes) per batch instead of the whole state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Keys of persisted tables are encoded as strings that sort like the keys themselves.
pub trait RowKey: Ord + Clone {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Option<Self>;
}

impl RowKey for u64 {
    /// Zero-padded so that lexicographic order equals numeric order.
    fn encode(&self) -> String {
        format!("{self:020}")
    }
    fn decode(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

macro_rules! string_key {
    ($($t:ty),*) => {$(
        impl RowKey for $t {
            fn encode(&self) -> String {
                self.as_str().to_string()
            }
            fn decode(s: &str) -> Option<Self> {
                Some(<$t>::new(s))
            }
        }
    )*};
}
string_key!(
    topology::SiteId,
    topology::HostId,
    topology::AppId,
    topology::VmId,
    topology::VolumeId
);

impl RowKey for String {
    fn encode(&self) -> String {
        self.clone()
    }
    fn decode(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
}

/// A change to one row: the new value, or None when the row was removed.
pub type RowChange<K, V> = (K, Option<V>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize",
    deserialize = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
))]
pub struct Table<K: Ord, V> {
    rows: BTreeMap<K, V>,
    /// Value of each row touched by the current command, before its first touch.
    #[serde(skip)]
    undo: BTreeMap<K, Option<V>>,
    /// Rows changed by sealed commands since the store last took them.
    #[serde(skip)]
    dirty: std::collections::BTreeSet<K>,
}

impl<K: Ord, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            rows: BTreeMap::new(),
            undo: BTreeMap::new(),
            dirty: std::collections::BTreeSet::new(),
        }
    }
}

impl<K: RowKey, V: Clone> Table<K, V> {
    pub fn get(&self, k: &K) -> Option<&V> {
        self.rows.get(k)
    }

    pub fn contains(&self, k: &K) -> bool {
        self.rows.contains_key(k)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        self.rows.iter()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> {
        self.rows.keys()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.rows.values()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn last(&self) -> Option<(&K, &V)> {
        self.rows.last_key_value()
    }

    pub fn range(
        &self,
        r: impl std::ops::RangeBounds<K>,
    ) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        self.rows.range(r)
    }

    fn remember(&mut self, k: &K) {
        if !self.undo.contains_key(k) {
            self.undo.insert(k.clone(), self.rows.get(k).cloned());
        }
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.remember(&k);
        self.rows.insert(k, v);
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.remember(k);
        self.rows.remove(k)
    }

    /// Mutable access to a row (recorded as changed even if the caller writes nothing).
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if self.rows.contains_key(k) {
            self.remember(k);
        }
        self.rows.get_mut(k)
    }

    /// Value of a row before the current command.
    pub fn before(&self, k: &K) -> Option<&V> {
        match self.undo.get(k) {
            Some(old) => old.as_ref(),
            None => self.rows.get(k),
        }
    }

    /// Keys touched by the current command.
    pub fn touched(&self) -> impl Iterator<Item = &K> {
        self.undo.keys()
    }

    /// The current command succeeded: its changes are kept and will be persisted.
    pub fn seal(&mut self) {
        let undo = std::mem::take(&mut self.undo);
        self.dirty.extend(undo.into_keys());
    }

    /// The current command failed: restore every row it touched.
    pub fn rollback(&mut self) {
        for (k, old) in std::mem::take(&mut self.undo) {
            match old {
                Some(v) => {
                    self.rows.insert(k, v);
                }
                None => {
                    self.rows.remove(&k);
                }
            }
        }
    }

    /// Rows changed by sealed commands since the last call, with their values now
    /// (None: removed). Each row appears once.
    pub fn take_dirty(&mut self) -> Vec<RowChange<K, V>> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.rows.get(&k).cloned();
                (k, v)
            })
            .collect()
    }

    /// Build from persisted rows (no pending changes).
    pub fn from_rows(rows: impl IntoIterator<Item = (K, V)>) -> Self {
        Table {
            rows: rows.into_iter().collect(),
            undo: BTreeMap::new(),
            dirty: std::collections::BTreeSet::new(),
        }
    }
}

/// The operations the state machine runs on every table alike, whatever its types.
pub trait DynTable {
    fn seal(&mut self);
    fn rollback(&mut self);
    /// Rows changed since the last call: encoded key and JSON value (None: removed).
    fn take_dirty_rows(&mut self) -> Vec<(String, Option<Vec<u8>>)>;
    /// Every row, encoded.
    fn all_rows(&self) -> Vec<(String, Vec<u8>)>;
    /// Insert one persisted row (no pending change is recorded).
    fn load_row(&mut self, key: &str, bytes: &[u8]) -> Result<(), String>;
}

fn to_json<V: Serialize>(v: &V) -> Vec<u8> {
    // Serializing this plain data to JSON cannot fail (every map key is a string);
    // should it ever, the empty value is refused by `load_row` as corrupt.
    serde_json::to_vec(v).unwrap_or_default()
}

impl<K, V> DynTable for Table<K, V>
where
    K: RowKey,
    V: Clone + Serialize + serde::de::DeserializeOwned,
{
    fn seal(&mut self) {
        Table::seal(self);
    }

    fn rollback(&mut self) {
        Table::rollback(self);
    }

    fn take_dirty_rows(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        self.take_dirty()
            .into_iter()
            .map(|(k, v)| (k.encode(), v.as_ref().map(to_json)))
            .collect()
    }

    fn all_rows(&self) -> Vec<(String, Vec<u8>)> {
        self.rows
            .iter()
            .map(|(k, v)| (k.encode(), to_json(v)))
            .collect()
    }

    fn load_row(&mut self, key: &str, bytes: &[u8]) -> Result<(), String> {
        let k = K::decode(key).ok_or_else(|| format!("bad key {key:?}"))?;
        let v = serde_json::from_slice(bytes).map_err(|e| format!("key {key:?}: {e}"))?;
        self.rows.insert(k, v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_inserted_changed_and_removed_rows_of_the_current_command_only() {
        let mut t: Table<String, u32> = Table::from_rows([("a".into(), 1), ("b".into(), 2)]);
        t.insert("z".into(), 26);
        t.seal();
        t.insert("a".into(), 10);
        t.insert("a".into(), 11);
        t.remove(&"b".into());
        t.insert("c".into(), 3);
        assert_eq!(t.before(&"a".into()), Some(&1));
        t.rollback();
        assert_eq!(t.get(&"a".into()), Some(&1));
        assert_eq!(t.get(&"b".into()), Some(&2));
        assert_eq!(t.get(&"c".into()), None);
        assert_eq!(
            t.get(&"z".into()),
            Some(&26),
            "an earlier sealed command stays"
        );
        assert_eq!(t.take_dirty(), vec![("z".into(), Some(26))]);
    }

    #[test]
    fn take_dirty_reports_each_changed_row_once_with_its_final_value() {
        let mut t: Table<u64, &str> = Table::from_rows([(1, "x")]);
        t.insert(2, "y");
        t.seal();
        t.insert(2, "z");
        t.remove(&1);
        t.seal();
        assert_eq!(t.take_dirty(), vec![(1, None), (2, Some("z"))]);
        assert!(t.take_dirty().is_empty());
    }

    #[test]
    fn numeric_keys_sort_as_strings() {
        assert!(9u64.encode() < 10u64.encode());
        assert_eq!(u64::decode(&12345u64.encode()), Some(12345));
    }
}
