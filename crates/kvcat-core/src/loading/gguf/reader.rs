//! The GGUF container (llama.cpp's format, versions 2 and 3): header, metadata key/values of
//! every value type (arrays included), tensor infos, and the aligned tensor-data section.
//!
//! Layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` KV
//! count; then the KVs (`string` key, `u32` value type, value); then per tensor a `string`
//! name, `u32` dim count, `u64` dims (fastest-varying first), `u32` ggml type and `u64`
//! offset into the data section. The data section starts at the next multiple of
//! `general.alignment` (default 32). Strings are a `u64` byte length then UTF-8 bytes.
//!
//! Only the header is read here; tensor bytes are read on demand with [`GgufFile::tensor_bytes`].

use super::dtype::GgmlType;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `GGUF` read as a little-endian `u32`.
const MAGIC: u32 = 0x4655_4747;
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an integer, for any integer type (and bool).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// The value as a float, for any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them, fastest-varying first (`[in, out]` for a weight).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The torch shape: the GGUF dims reversed (`[out, in]` for a weight).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header; tensor data stays on disk until asked for.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_start: u64,
    pub alignment: u64,
    pub file_len: u64,
}

/// A bounds-checked little-endian reader over the header.
struct Cursor<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    file: &'a str,
}

impl Cursor<'_> {
    fn err(&self, what: &str) -> Error {
        Error::Format {
            file: self.file.to_string(),
            reason: what.to_string(),
        }
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.err(&format!(
                "truncated file: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos, self.len
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.err(&format!("cannot read {what} at offset {}: {e}", self.pos)))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let v = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|_| self.err(&format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let b = u8::from_le_bytes(self.array(what)?);
                if b > 1 {
                    return Err(self.err(&format!("{what}: bool byte is {b}, expected 0 or 1")));
                }
                Value::Bool(b == 1)
            }
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(self.err(&format!("{what}: arrays nested too deeply")));
                }
                let item_ty = self.u32(what)?;
                let count = self.u64(what)?;
                // Every item takes at least one byte: a count beyond the remaining bytes is
                // corrupt, and checking it first avoids a huge allocation.
                if count > self.len.saturating_sub(self.pos) {
                    return Err(self.err(&format!(
                        "truncated file: {what} claims {count} array items but only {} bytes remain",
                        self.len.saturating_sub(self.pos)
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.err(&format!(
                    "{what}: unknown metadata value type {other} (known: 0..=12)"
                )))
            }
        })
    }
}

impl Cursor<'_> {
    /// The header: magic, a supported version (2 or 3), and tensor and metadata counts
    /// plausible for the file's length. Returns `(version, tensors, metadata entries)`.
    fn header(&mut self) -> Result<(u32, u64, u64)> {
        let magic = self.u32("magic")?;
        if magic != MAGIC {
            return Err(self.err(&format!(
                "bad magic {:?}, expected \"GGUF\" (not a GGUF file)",
                String::from_utf8_lossy(&magic.to_le_bytes())
            )));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported {
                file: self.file.to_string(),
                what: "GGUF version".into(),
                value: version.to_string(),
                supported: "2, 3".into(),
            });
        }
        let n_tensors = self.u64("tensor count")?;
        let n_kv = self.u64("metadata count")?;
        // Each KV or tensor info takes more than 8 bytes.
        let len = self.len;
        if n_tensors > len / 8 || n_kv > len / 8 {
            return Err(self.err(&format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries, too many for a {len}-byte file"
            )));
        }
        Ok((version, n_tensors, n_kv))
    }

    /// `n` metadata entries: key, value type, value.
    fn metadata(&mut self, n: u64) -> Result<BTreeMap<String, Value>> {
        let mut metadata = BTreeMap::new();
        for i in 0..n {
            let key = self.string(&format!("metadata key #{i}"))?;
            let ty = self.u32(&format!("type of metadata `{key}`"))?;
            let value = self.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// `n` tensor infos: name, 1 to 4 dims, ggml type, data offset.
    fn tensor_infos(&mut self, n: u64) -> Result<Vec<TensorInfo>> {
        let mut tensors = Vec::with_capacity(n as usize);
        for i in 0..n {
            let name = self.string(&format!("name of tensor #{i}"))?;
            let n_dims = self.u32(&format!("dim count of tensor `{name}`"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(self.err(&format!(
                    "tensor `{name}` has {n_dims} dims, expected 1 to 4"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64(&format!("dims of tensor `{name}`"))?);
            }
            let raw_ty = self.u32(&format!("type of tensor `{name}`"))?;
            let ty = GgmlType::from_u32(raw_ty);
            let offset = self.u64(&format!("offset of tensor `{name}`"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        Ok(tensors)
    }
}

/// The data alignment: `general.alignment` (a positive power of two), else the default.
fn alignment(metadata: &BTreeMap<String, Value>, file: &str) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => Ok(a as u64),
            _ => Err(Error::Config {
                file: file.to_string(),
                field: "general.alignment".into(),
                reason: format!("expected a positive power of two, got {v:?}"),
            }),
        },
    }
}

impl GgufFile {
    /// Reads and checks the header of `path`: magic, version (2 or 3), metadata, tensor infos
    /// (known ggml types, whole blocks per row) and that every tensor's bytes lie in the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file_name = path.display().to_string();
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut c = Cursor {
            inner: BufReader::with_capacity(1 << 20, f),
            pos: 0,
            len,
            file: &file_name,
        };
        let (version, n_tensors, n_kv) = c.header()?;
        let metadata = c.metadata(n_kv)?;
        let tensors = c.tensor_infos(n_tensors)?;
        let alignment = alignment(&metadata, &file_name)?;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let out = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            alignment,
            file_len: len,
        };
        for t in &out.tensors {
            out.check_extent(t)?;
        }
        Ok(out)
    }

    /// The file name for error messages.
    pub fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// Checks that `t`'s bytes are inside the file (when its type is known).
    fn check_extent(&self, t: &TensorInfo) -> Result<()> {
        let Some(size) = t.ty.byte_size(&t.dims) else {
            return Ok(()); // unknown type or partial blocks: reported when the tensor is read
        };
        let start = self.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match end {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(Error::Format {
                file: self.file(),
                reason: format!(
                    "truncated file: tensor `{}` ({}, dims {:?}) needs bytes {}..{} but the file has {} bytes",
                    t.name,
                    t.ty,
                    t.dims,
                    self.data_start.saturating_add(t.offset),
                    self.data_start.saturating_add(t.offset).saturating_add(size),
                    self.file_len
                ),
            }),
        }
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The info of the tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of tensor `t`. Fails with [`Error::Unsupported`] for a ggml type kvcat
    /// cannot decode and [`Error::Format`] for rows that are not whole blocks.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let size = t.ty.checked_byte_size(&t.dims, &self.file(), &t.name)?;
        self.check_extent(t)?;
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(self.data_start + t.offset))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact(&mut buf).map_err(|e| Error::Format {
            file: self.file(),
            reason: format!("cannot read tensor `{}`: {e}", t.name),
        })?;
        Ok(buf)
    }
}
