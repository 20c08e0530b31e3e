//! Device and dtype selection: CUDA when present, f32 on CPU, bf16 on CUDA; both overridable.

use crate::{Error, Result};
use std::str::FromStr;
use std::sync::OnceLock;
use tch::{Device, Kind};

/// Loads `libtorch_cuda.so` once. With as-needed linking the CUDA library is never pulled in,
/// so CUDA would look absent; opening it by hand registers the CUDA backend.
/// Returns whether CUDA is usable afterwards. Failure is not an error: kvcat runs on CPU.
pub fn init_cuda() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid NUL-terminated name; the handle is intentionally leaked
        // so the library stays loaded for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null() && tch::Cuda::is_available()
    })
}

/// Which device to run on, as a user writes it: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown device `{s}` (allowed: auto, cpu, cuda, cuda:N)"
                    ))
                }),
        }
    }
}

impl DeviceChoice {
    /// Resolves to a concrete device. Asking for CUDA where it is absent is an error.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(if init_cuda() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            Self::Cuda(i) => {
                if init_cuda() && (i as i64) < tch::Cuda::device_count() {
                    Ok(Device::Cuda(i))
                } else {
                    Err(Error::invalid(format!(
                        "device cuda:{i} requested but CUDA is not available"
                    )))
                }
            }
        }
    }
}

/// Parses a dtype name: `auto`, `f32`, `bf16` or `f16`. `auto` gives `None`.
pub fn parse_dtype(s: &str) -> Result<Option<Kind>> {
    match s {
        "auto" => Ok(None),
        "f32" | "float32" => Ok(Some(Kind::Float)),
        "bf16" | "bfloat16" => Ok(Some(Kind::BFloat16)),
        "f16" | "float16" => Ok(Some(Kind::Half)),
        _ => Err(Error::invalid(format!(
            "unknown dtype `{s}` (allowed: auto, f32, bf16, f16)"
        ))),
    }
}

/// The default compute dtype for a device: bf16 on CUDA, f32 on CPU.
pub fn default_dtype(device: Device) -> Kind {
    match device {
        Device::Cuda(_) => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// A short name for a dtype, as written in result rows.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "other",
    }
}

/// A short name for a device, as written in result rows.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}
