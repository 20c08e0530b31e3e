//! Key paths in TOML configs, so that errors name the key (`model.config.head_dim`) and its
//! `line:column`, and a sequence is never read where a table is expected.
//!
//! serde reads a struct from a TOML array *by position* (`optim = [0.5, 0.1, 7]` would set
//! `lr`, `min_lr_ratio` and `warmup`), and an error raised while deserialising from a
//! [`toml::Value`] carries no location. So config loaders here:
//!
//! 1. check the table against a *shape*: an example of the config with every table present
//!    ([`check_shape`]), which refuses an array or a scalar wherever the shape has a table,
//!    and a non-table element wherever it has an array of tables;
//! 2. deserialise from TOML *text* ([`from_table`]), whose errors carry a byte span, and turn
//!    that span back into a key path ([`path_at`]);
//! 3. point a key path at the file the user wrote ([`span_of`]).

use serde::de::DeserializeOwned;
use std::fmt;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a key, or an index into an array (of tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `model[0].pretrain.optim.lr`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// Parses `a.b[2].c` (keys must not contain `.` or `[`).
    pub fn parse(s: &str) -> KeyPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(i) = rest.find('[') {
                segs.push(Seg::Key(rest[..i].to_string()));
                rest = &rest[i..];
                while let Some(end) = rest.find(']') {
                    if let Ok(n) = rest[1..end].parse() {
                        segs.push(Seg::Index(n));
                    }
                    rest = &rest[end + 1..];
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        KeyPath(segs)
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&other.0).cloned().collect())
    }

    fn push(&self, seg: Seg) -> KeyPath {
        let mut p = self.clone();
        p.0.push(seg);
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A config value of the wrong kind, or a deserialisation error, at a key path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathError {
    /// Where, relative to the table that was checked (empty: the table itself).
    pub path: KeyPath,
    pub reason: String,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.0.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "field `{}`: {}", self.path, self.reason)
        }
    }
}

fn kind_of(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

fn want_table(path: KeyPath, got: &toml::Value) -> PathError {
    let key = path.0.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.clone()),
        Seg::Index(_) => None,
    });
    let key = key.unwrap_or_default();
    let example = match path.0.last() {
        Some(Seg::Index(_)) => format!("a `[[{key}]]` entry or `{{ … }}`"),
        _ => format!("`{key} = {{ … }}` or a `[…{key}]` section"),
    };
    PathError {
        path,
        reason: format!(
            "expected a table ({example}), got {}; arrays are not read by position",
            kind_of(got)
        ),
    }
}

/// Checks `value` against `shape`: wherever `shape` holds a table, `value` must hold a table
/// (checked recursively), and wherever `shape` holds an array of tables, every element of
/// `value`'s must be a table (each checked against the shape's first element). Keys absent
/// from `shape` are not checked here (unknown keys are serde's `deny_unknown_fields` job).
pub fn check_shape(value: &toml::Table, shape: &toml::Table) -> Result<(), PathError> {
    check_at(&KeyPath::default(), value, shape)
}

fn check_at(at: &KeyPath, value: &toml::Table, shape: &toml::Table) -> Result<(), PathError> {
    for (k, v) in value {
        let Some(s) = shape.get(k) else { continue };
        let here = at.push(Seg::Key(k.clone()));
        match (s, v) {
            (toml::Value::Table(st), toml::Value::Table(vt)) => check_at(&here, vt, st)?,
            (toml::Value::Table(_), other) => return Err(want_table(here, other)),
            (toml::Value::Array(sa), v) => {
                let Some(toml::Value::Table(elem)) = sa.first() else {
                    continue;
                };
                let toml::Value::Array(va) = v else {
                    return Err(PathError {
                        path: here,
                        reason: format!("expected an array of tables, got {}", kind_of(v)),
                    });
                };
                for (i, x) in va.iter().enumerate() {
                    let at_i = here.push(Seg::Index(i));
                    match x {
                        toml::Value::Table(xt) => check_at(&at_i, xt, elem)?,
                        other => return Err(want_table(at_i, other)),
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deserialises `T` from `table`, refusing sequences where `shape` has tables, with errors
/// at the key path (serde's own error from a [`toml::Value`] names no key). The table is
/// written out as TOML text and read back, so that the error carries a span to map back.
pub fn from_table<T: DeserializeOwned>(
    table: &toml::Table,
    shape: &toml::Table,
) -> Result<T, PathError> {
    check_shape(table, shape)?;
    let text = toml::to_string(table).map_err(|e| PathError {
        path: KeyPath::default(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| PathError {
        path: e
            .span()
            .and_then(|s| path_at(&text, s.start))
            .unwrap_or_default(),
        reason: e.message().trim().to_string(),
    })
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// The key path of the deepest key or value of `text` that covers byte `offset` (where a
/// `toml` error points), or `None`.
pub fn path_at(text: &str, offset: usize) -> Option<KeyPath> {
    let doc = DeTable::parse(text).ok()?;
    search_table(doc.get_ref(), offset, &KeyPath::default())
}

fn search_table(t: &DeTable<'_>, offset: usize, at: &KeyPath) -> Option<KeyPath> {
    for (k, v) in t.iter() {
        let here = at.push(Seg::Key(k.get_ref().to_string()));
        if let Some(p) = search_value(v, offset, &here) {
            return Some(p);
        }
        if contains(&k.span(), offset) {
            return Some(here);
        }
    }
    None
}

fn search_value(v: &Spanned<DeValue<'_>>, offset: usize, here: &KeyPath) -> Option<KeyPath> {
    match v.get_ref() {
        DeValue::Table(t) => search_table(t, offset, here)
            .or_else(|| contains(&v.span(), offset).then(|| here.clone())),
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| search_value(x, offset, &here.push(Seg::Index(i))))
            .or_else(|| contains(&v.span(), offset).then(|| here.clone())),
        _ => contains(&v.span(), offset).then(|| here.clone()),
    }
}

/// The byte span of `path` in `text`: of its key (or of the array element, for an index), or
/// `None` when the text does not hold it.
pub fn span_of(text: &str, path: &KeyPath) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    let mut span = None;
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                if let Some(v) = current {
                    let DeValue::Table(t) = v.get_ref() else {
                        return None;
                    };
                    table = t;
                }
                let (key, v) = table.iter().find(|(key, _)| key.get_ref() == k)?;
                span = Some(key.span());
                current = Some(v);
            }
            Seg::Index(i) => {
                let DeValue::Array(a) = current?.get_ref() else {
                    return None;
                };
                let v = a.get(*i)?;
                span = Some(v.span());
                current = Some(v);
            }
        }
    }
    span
}
