//! The reader of one `[section]`: typed getters that record each key with its effective
//! value and default ([`Setting`]) and collect every problem instead of stopping at the first.

use std::collections::BTreeSet;
use std::time::Duration;

use url::Url;

use super::Setting;

/// One TOML table being read: typed getters with defaults that record problems instead of
/// failing, and `finish` that reports every key nobody asked for.
pub(super) struct Section<'p> {
    name: &'static str,
    table: toml::Table,
    seen: BTreeSet<String>,
    problems: &'p mut Vec<String>,
    settings: &'p mut Vec<Setting>,
}

impl<'p> Section<'p> {
    pub(super) fn new(name: &'static str, table: toml::Table, problems: &'p mut Vec<String>, settings: &'p mut Vec<Setting>) -> Self {
        Section { name, table, seen: BTreeSet::new(), problems, settings }
    }

    /// Records what a key resolved to (the root's tables are not settings).
    pub(super) fn record(&mut self, key: &str, value: Option<toml::Value>, default: Option<toml::Value>) {
        if !self.name.is_empty() {
            self.settings.push(Setting { section: self.name, key: key.to_string(), value, default, note: None });
        }
    }

    /// A key whose value came from elsewhere (`source`) than the file.
    pub(super) fn overridden(&mut self, key: &str, value: toml::Value, source: &str) {
        if let Some(s) = self.settings.iter_mut().rev().find(|s| s.section == self.name && s.key == key) {
            s.value = Some(value);
            s.note = Some(format!("from {source}"));
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        if self.name.is_empty() { key.to_string() } else { format!("{}.{key}", self.name) }
    }

    pub(super) fn problem(&mut self, key: &str, what: &str) {
        let k = self.key(key);
        self.problems.push(format!("{k}: {what}"));
    }

    pub(super) fn get(&mut self, key: &str) -> Option<toml::Value> {
        self.seen.insert(key.to_string());
        self.table.get(key).cloned()
    }

    pub(super) fn table(&mut self, key: &str) -> toml::Table {
        match self.get(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(key, &format!("expected a table, found {}", other.type_str()));
                toml::Table::new()
            }
        }
    }

    pub(super) fn string(&mut self, key: &str, default: &str) -> String {
        let v = self.read_string(key).unwrap_or_else(|| default.to_string());
        self.record(key, Some(toml::Value::String(v.clone())), Some(toml::Value::String(default.into())));
        v
    }

    /// An optional string with no default.
    pub(super) fn opt_string(&mut self, key: &str) -> Option<String> {
        let v = self.read_string(key);
        self.record(key, v.clone().map(toml::Value::String), None);
        v
    }

    pub(super) fn read_string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.problem(key, &format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, key: &str) -> Vec<String> {
        let list = self.read_string_list(key);
        let as_toml = |l: &[String]| toml::Value::Array(l.iter().cloned().map(toml::Value::String).collect());
        self.record(key, Some(as_toml(&list)), Some(as_toml(&[])));
        list
    }

    pub(super) fn read_string_list(&mut self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => self.problem(key, &format!("expected strings, found {}", other.type_str())),
                    }
                }
                out
            }
            Some(other) => {
                self.problem(key, &format!("expected a list of strings, found {}", other.type_str()));
                Vec::new()
            }
        }
    }

    pub(super) fn bool(&mut self, key: &str, default: bool) -> bool {
        let v = match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => b,
            Some(other) => {
                self.problem(key, &format!("expected true or false, found {}", other.type_str()));
                default
            }
        };
        self.record(key, Some(toml::Value::Boolean(v)), Some(toml::Value::Boolean(default)));
        v
    }

    pub(super) fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let v = self.read_int(key, default, min, max);
        let lit = |n: u64| toml::Value::Integer(n.min(i64::MAX as u64) as i64);
        self.record(key, Some(lit(v)), Some(lit(default)));
        v
    }

    pub(super) fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.int(key, default, min, max))
    }

    pub(super) fn read_int(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) if i >= min as i64 && i <= max as i64 => i as u64,
            Some(toml::Value::Integer(i)) => {
                self.problem(key, &format!("{i} is out of range {min}..={max}"));
                default
            }
            Some(other) => {
                self.problem(key, &format!("expected an integer, found {}", other.type_str()));
                default
            }
        }
    }

    pub(super) fn secs(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_secs(self.int(key, default, min, max))
    }

    pub(super) fn url(&mut self, key: &str, default: &str, schemes: &[&str]) -> Url {
        let text = self.string(key, default);
        match Url::parse(&text) {
            Ok(u) if schemes.contains(&u.scheme()) => u,
            Ok(u) => {
                self.problem(key, &format!("scheme {} is not one of {schemes:?}", u.scheme()));
                Url::parse(default).expect("default URL is valid")
            }
            Err(e) => {
                self.problem(key, &format!("not a URL ({e}): {text:?}"));
                Url::parse(default).expect("default URL is valid")
            }
        }
    }

    pub(super) fn finish(self) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                let k = self.key(key);
                self.problems.push(format!("{k}: unknown key"));
            }
        }
    }
}
