//! The C allocator policy of a `kvcat` process.
//!
//! libtorch allocates CPU tensors with the C library's `malloc`. glibc serves a block above its
//! mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh `mmap` and unmaps it on `free`,
//! and it returns the top of its heap to the kernel once more than the trim threshold is free.
//! A training step frees and re-allocates the same activations, logits and gradients every
//! step (SmolLM2-135M: the 113 MB embedding gradient, the `[b, t, 49152]` logits), so with the
//! defaults each step page-faults and zeroes hundreds of MB of fresh pages: about 7 % of a CPU
//! training step in kernel page-fault and page-clearing code under `perf`.
//!
//! [`keep_freed_memory`] makes glibc serve every block from its heaps and never trim them, so
//! freed memory is reused by the next step (what PyTorch's CUDA caching allocator does on the
//! GPU). Measured on SmolLM2-135M, 2-core CPU, `kvcat perf --sections train --policies plain
//! --train-batch 2 --train-len 256`: 150 → 166 tok/s (+11 %), peak RSS 3.51 → 3.95 GB; prefill
//! unchanged (`docs/benchmarks/performance.md`). The cost is that the process keeps its peak
//! heap until it exits.
//!
//! A user who configured glibc's allocator (`GLIBC_TUNABLES` naming `malloc`, or any
//! `MALLOC_*` variable) keeps their settings: nothing is changed then. `KVCAT_SYSTEM_MALLOC=1`
//! also leaves glibc's defaults alone.

/// Which allocator policy the process runs with, for logs and `kvcat perf`'s JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorPolicy {
    /// glibc keeps freed memory for reuse (set by [`keep_freed_memory`]).
    KeepFreed,
    /// The user's or the C library's own settings, untouched.
    System,
}

impl AllocatorPolicy {
    pub fn name(self) -> &'static str {
        match self {
            AllocatorPolicy::KeepFreed => "keep-freed",
            AllocatorPolicy::System => "system",
        }
    }
}

/// Whether the environment asks for glibc's allocator to be left as it is: `KVCAT_SYSTEM_MALLOC`
/// set to anything but `0`/empty, a `MALLOC_*` variable, or `GLIBC_TUNABLES` naming `malloc`.
fn user_configured(vars: impl IntoIterator<Item = (String, String)>) -> bool {
    vars.into_iter().any(|(key, value)| match key.as_str() {
        "KVCAT_SYSTEM_MALLOC" => !value.is_empty() && value != "0",
        "GLIBC_TUNABLES" => value.contains("malloc"),
        _ => key.starts_with("MALLOC_"),
    })
}

/// Sets glibc's policy to keep freed memory (no `mmap`-served blocks, no heap trimming) unless
/// the user configured the allocator; call once at start-up, before libtorch allocates.
/// Returns the policy now in force. A no-op returning [`AllocatorPolicy::System`] off glibc.
pub fn keep_freed_memory() -> AllocatorPolicy {
    *IN_FORCE.get_or_init(|| {
        if user_configured(std::env::vars()) {
            AllocatorPolicy::System
        } else {
            set_glibc_keep_freed()
        }
    })
}

/// The policy set by [`keep_freed_memory`], or [`AllocatorPolicy::System`] if it never ran
/// (a library user's own process).
pub fn in_force() -> AllocatorPolicy {
    IN_FORCE.get().copied().unwrap_or(AllocatorPolicy::System)
}

static IN_FORCE: std::sync::OnceLock<AllocatorPolicy> = std::sync::OnceLock::new();

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_glibc_keep_freed() -> AllocatorPolicy {
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate. `i32::MAX` bytes (2 GiB) is the largest trim threshold `mallopt` accepts.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    };
    if ok {
        AllocatorPolicy::KeepFreed
    } else {
        AllocatorPolicy::System
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_glibc_keep_freed() -> AllocatorPolicy {
    AllocatorPolicy::System
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_users_allocator_settings_are_respected() {
        assert!(!user_configured(env(&[
            ("PATH", "/bin"),
            ("HOME", "/root")
        ])));
        assert!(user_configured(env(&[("MALLOC_ARENA_MAX", "2")])));
        assert!(user_configured(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_max=0"
        )])));
        assert!(!user_configured(env(&[(
            "GLIBC_TUNABLES",
            "glibc.cpu.hwcaps=-AVX512F"
        )])));
        assert!(user_configured(env(&[("KVCAT_SYSTEM_MALLOC", "1")])));
        assert!(!user_configured(env(&[("KVCAT_SYSTEM_MALLOC", "0")])));
        assert!(!user_configured(env(&[("KVCAT_SYSTEM_MALLOC", "")])));
    }
}
