//! `device` and `dtype`, in a manifest and in a training config: closed sets of names, parsed
//! once into enums.
//!
//! Both serialise back to the name a user writes (`cuda` stays `cuda`, `cuda:0` stays
//! `cuda:0`), so the resolved manifest and the cell ids hashed from it read as before. The
//! long dtype spellings (`float32`, `bfloat16`, `float16`) are accepted and written back in
//! their short form.

use kvcat_core::device::{default_dtype, parse_dtype, DeviceChoice};
use kvcat_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// `device = "…"`: where the grid (or a training run) runs. Resolved to a [`tch::Device`] by the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// `auto`: CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    /// `cpu`.
    Cpu,
    /// `cuda`: CUDA device 0.
    Cuda,
    /// `cuda:N`: CUDA device `N`.
    CudaIndex(usize),
}

impl DeviceSpec {
    /// The device choice this spec names (resolved against the machine by
    /// [`DeviceChoice::resolve`]).
    pub fn choice(self) -> DeviceChoice {
        match self {
            Self::Auto => DeviceChoice::Auto,
            Self::Cpu => DeviceChoice::Cpu,
            Self::Cuda => DeviceChoice::Cuda(0),
            Self::CudaIndex(i) => DeviceChoice::Cuda(i),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;
    /// The names [`DeviceChoice`] reads, keeping `cuda` apart from `cuda:0`.
    fn from_str(s: &str) -> Result<Self> {
        if s == "cuda" {
            return Ok(Self::Cuda);
        }
        Ok(match s.parse::<DeviceChoice>()? {
            DeviceChoice::Auto => Self::Auto,
            DeviceChoice::Cpu => Self::Cpu,
            DeviceChoice::Cuda(i) => Self::CudaIndex(i),
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda => f.write_str("cuda"),
            Self::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// `dtype = "…"`: the compute dtype of every model in the grid (or of a training run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DtypeSpec {
    /// `auto`: bf16 on CUDA, f32 on CPU ([`kvcat_core::device::default_dtype`]).
    #[default]
    Auto,
    /// `f32` (or `float32`).
    F32,
    /// `bf16` (or `bfloat16`).
    Bf16,
    /// `f16` (or `float16`).
    F16,
}

impl DtypeSpec {
    /// The libtorch kind this spec names; `None` for `auto` (the device decides).
    pub fn kind(self) -> Option<Kind> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(Kind::Float),
            Self::Bf16 => Some(Kind::BFloat16),
            Self::F16 => Some(Kind::Half),
        }
    }
}

impl FromStr for DtypeSpec {
    type Err = Error;
    /// The names [`parse_dtype`] reads.
    fn from_str(s: &str) -> Result<Self> {
        match parse_dtype(s)? {
            None => Ok(Self::Auto),
            Some(Kind::Float) => Ok(Self::F32),
            Some(Kind::BFloat16) => Ok(Self::Bf16),
            Some(Kind::Half) => Ok(Self::F16),
            Some(other) => Err(Error::invalid(format!(
                "dtype `{s}` reads as {other:?}, which a manifest cannot ask for"
            ))),
        }
    }
}

impl fmt::Display for DtypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

/// The concrete device and compute kind that `device` and `dtype` name on this machine
/// (asking for CUDA where there is none is an error; `auto` dtype follows the device).
pub fn resolve(device: DeviceSpec, dtype: DtypeSpec) -> Result<(Device, Kind)> {
    let device = device.choice().resolve()?;
    Ok((device, dtype.kind().unwrap_or(default_dtype(device))))
}

/// Serde's bridge for both specs: parse from the written name, write the name back.
macro_rules! string_bridge {
    ($spec:ty) => {
        impl TryFrom<String> for $spec {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }
        impl From<$spec> for String {
            fn from(spec: $spec) -> String {
                spec.to_string()
            }
        }
    };
}
string_bridge!(DeviceSpec);
string_bridge!(DtypeSpec);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["auto", "cpu", "cuda", "cuda:0", "cuda:3"] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap().to_string(), name);
        }
        for name in ["auto", "f32", "bf16", "f16"] {
            assert_eq!(name.parse::<DtypeSpec>().unwrap().to_string(), name);
        }
        assert_eq!("bfloat16".parse::<DtypeSpec>().unwrap(), DtypeSpec::Bf16);
        assert_eq!(
            "cuda".parse::<DeviceSpec>().unwrap().choice(),
            DeviceChoice::Cuda(0)
        );
    }

    #[test]
    fn bad_names_list_the_allowed_ones() {
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert_eq!(e, "unknown device `tpu` (allowed: auto, cpu, cuda, cuda:N)");
        let e = "f8".parse::<DtypeSpec>().unwrap_err().to_string();
        assert_eq!(e, "unknown dtype `f8` (allowed: auto, f32, bf16, f16)");
    }
}
