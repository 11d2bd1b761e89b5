//! Node attributes: static ones from config and flags, dynamic ones from
//! HTTP (without etcd) or etcd (the source of truth when configured). The
//! dynamic ones are persisted, so an agent that restarts while etcd is down
//! keeps the last values it saw. Dynamic values override static ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

pub const ATTRIBUTES_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Static,
    Http,
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    pub value: String,
    pub source: Source,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AttributeFile {
    schema: u32,
    dynamic: BTreeMap<String, Sourced>,
}

#[derive(Debug)]
pub struct AttributeStore {
    statics: BTreeMap<String, String>,
    dynamic: BTreeMap<String, Sourced>,
    path: PathBuf,
}

impl AttributeStore {
    pub fn load(path: &Path, statics: BTreeMap<String, String>) -> Result<Self, String> {
        let dynamic = match fsutil::read_json::<serde_json::Value>(path) {
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e) => return Err(format!("{e}; refusing to start")),
            Ok(v) => {
                let schema = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(0);
                if schema > ATTRIBUTES_SCHEMA as u64 {
                    return Err(format!(
                        "{}: schema {schema} is newer than this agent's {ATTRIBUTES_SCHEMA}; refusing to start",
                        path.display()
                    ));
                }
                serde_json::from_value::<AttributeFile>(v)
                    .map_err(|e| {
                        format!(
                            "{}: invalid content: {e}; refusing to start",
                            path.display()
                        )
                    })?
                    .dynamic
            }
        };
        Ok(AttributeStore {
            statics,
            dynamic,
            path: path.to_owned(),
        })
    }

    fn save(&self) -> Result<(), FsError> {
        fsutil::write_json_atomic(
            &self.path,
            &AttributeFile {
                schema: ATTRIBUTES_SCHEMA,
                dynamic: self.dynamic.clone(),
            },
        )
    }

    /// Name to value, as constraints see them.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut all = self.statics.clone();
        all.extend(
            self.dynamic
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone())),
        );
        all
    }

    pub fn with_sources(&self) -> BTreeMap<String, Sourced> {
        let mut all: BTreeMap<String, Sourced> = self
            .statics
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Sourced {
                        value: v.clone(),
                        source: Source::Static,
                    },
                )
            })
            .collect();
        all.extend(self.dynamic.clone());
        all
    }

    pub fn is_static_only(&self, name: &str) -> bool {
        self.statics.contains_key(name) && !self.dynamic.contains_key(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.statics.contains_key(name) || self.dynamic.contains_key(name)
    }

    /// Sets a dynamic value; returns whether anything changed.
    pub fn set(&mut self, name: &str, value: &str, source: Source) -> Result<bool, FsError> {
        let new = Sourced {
            value: value.to_owned(),
            source,
        };
        if self.dynamic.get(name) == Some(&new) {
            return Ok(false);
        }
        let old = self.dynamic.insert(name.to_owned(), new);
        self.save().inspect_err(|_| {
            match old {
                Some(o) => self.dynamic.insert(name.to_owned(), o),
                None => self.dynamic.remove(name),
            };
        })?;
        Ok(true)
    }

    pub fn remove(&mut self, name: &str) -> Result<bool, FsError> {
        let Some(old) = self.dynamic.remove(name) else {
            return Ok(false);
        };
        self.save().inspect_err(|_| {
            self.dynamic.insert(name.to_owned(), old);
        })?;
        Ok(true)
    }

    /// Replaces every etcd-sourced value with `snapshot` (a full read of the
    /// prefix); returns whether anything changed.
    pub fn replace_etcd(&mut self, snapshot: BTreeMap<String, String>) -> Result<bool, FsError> {
        let mut next: BTreeMap<String, Sourced> = self
            .dynamic
            .iter()
            .filter(|(_, v)| v.source != Source::Etcd)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next.extend(snapshot.into_iter().map(|(k, value)| {
            (
                k,
                Sourced {
                    value,
                    source: Source::Etcd,
                },
            )
        }));
        if next == self.dynamic {
            return Ok(false);
        }
        let old = std::mem::replace(&mut self.dynamic, next);
        self.save().inspect_err(|_| self.dynamic = old.clone())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_overrides_static_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attributes.json");
        let statics = BTreeMap::from([("zone".to_string(), "east".to_string())]);
        let mut s = AttributeStore::load(&path, statics.clone()).unwrap();
        assert!(s.is_static_only("zone"));
        assert!(s.set("zone", "west", Source::Http).unwrap());
        assert!(!s.set("zone", "west", Source::Http).unwrap());
        s.set("ssd", "true", Source::Etcd).unwrap();
        assert_eq!(s.effective()["zone"], "west");
        let again = AttributeStore::load(&path, statics).unwrap();
        assert_eq!(
            again.with_sources()["ssd"],
            Sourced {
                value: "true".into(),
                source: Source::Etcd
            }
        );
        assert_eq!(again.effective()["zone"], "west");
    }

    #[test]
    fn an_etcd_snapshot_replaces_only_etcd_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AttributeStore::load(&dir.path().join("a.json"), BTreeMap::new()).unwrap();
        s.set("local", "1", Source::Http).unwrap();
        s.set("ssd", "true", Source::Etcd).unwrap();
        assert!(s
            .replace_etcd(BTreeMap::from([("rack".into(), "r1".into())]))
            .unwrap());
        let e = s.effective();
        assert_eq!(
            (
                e.get("local").map(String::as_str),
                e.get("ssd"),
                e.get("rack").map(String::as_str)
            ),
            (Some("1"), None, Some("r1"))
        );
        assert!(!s
            .replace_etcd(BTreeMap::from([("rack".into(), "r1".into())]))
            .unwrap());
    }
}
