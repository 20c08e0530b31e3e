//! Build script of the `kvcat` binary and library:
//!
//! - embeds libtorch's directory as an rpath so binaries and tests run without
//!   `LD_LIBRARY_PATH`;
//! - embeds the revision kvcat is built from as `KVCAT_BUILD_REV` (`git describe --always
//!   --dirty` of this source tree), which result rows record as `git_rev`. Outside a git tree
//!   (a source tarball) it is the `KVCAT_BUILD_REV` variable given to the build, or `unknown`;
//! - compiles `csrc/cuda_memory.cpp` (CUDA peak memory, see `src/results.rs`) when libtorch's
//!   `c10/cuda` headers and a CUDA runtime include folder are found, and sets the cfg
//!   `kvcat_cuda_mem`; without them rows record no device peak (NaN) on CUDA.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    println!("cargo:rustc-env=KVCAT_BUILD_REV={}", build_rev(&here));
    println!("cargo:rerun-if-env-changed=KVCAT_BUILD_REV");
    watch_sources(&here);
    println!("cargo:rustc-check-cfg=cfg(kvcat_cuda_mem)");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        build_cuda_memory_shim(&here, Path::new(&lib));
    }
}

/// The CUDA runtime headers: beside a pip-installed torch (`nvidia/cu13`, `nvidia/cuda_runtime`)
/// or in a CUDA toolkit (`CUDA_HOME`, `/usr/local/cuda`).
fn cuda_include(torch_dir: &Path) -> Option<PathBuf> {
    let site = torch_dir.parent()?;
    let mut candidates = vec![
        site.join("nvidia/cu13/include"),
        site.join("nvidia/cuda_runtime/include"),
    ];
    if let Ok(home) = std::env::var("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").exists())
}

fn build_cuda_memory_shim(here: &Path, torch_lib: &Path) {
    let src = here.join("csrc/cuda_memory.cpp");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let Some(torch_dir) = torch_lib.parent() else {
        return;
    };
    let include = torch_dir.join("include");
    if !include.join("c10/cuda/CUDACachingAllocator.h").exists() {
        println!(
            "cargo:warning=no c10/cuda headers in libtorch: rows will hold no CUDA peak memory"
        );
        return;
    }
    let Some(cuda) = cuda_include(torch_dir) else {
        println!("cargo:warning=no CUDA runtime headers found: rows will hold no CUDA peak memory");
        return;
    };
    let built = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .flag_if_supported("-w")
        .include(&include)
        .include(&cuda)
        .include(here.join("csrc/host-stub"))
        .file(&src)
        .try_compile("kvcat_cuda_memory");
    match built {
        Ok(()) => println!("cargo:rustc-cfg=kvcat_cuda_mem"),
        Err(e) => println!(
            "cargo:warning=CUDA memory shim not built ({e}); rows will hold no CUDA peak memory"
        ),
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `git describe --always --dirty`, or the `KVCAT_BUILD_REV` variable, or `unknown`.
fn build_rev(here: &Path) -> String {
    if let Ok(rev) = std::env::var("KVCAT_BUILD_REV") {
        if !rev.trim().is_empty() {
            return rev.trim().to_string();
        }
    }
    git(here, &["describe", "--always", "--dirty"]).unwrap_or_else(|| "unknown".into())
}

/// Re-runs this script when the revision or the dirty state can have changed: a commit or
/// checkout (HEAD, the branch ref, packed refs, the index) or an edit of any crate's sources.
fn watch_sources(here: &Path) {
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            here.join(p)
        }
    };
    if let Some(git_dir) = git(here, &["rev-parse", "--git-dir"]).map(abs) {
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={}", git_dir.join(f).display());
        }
        if let Some(common) = git(here, &["rev-parse", "--git-common-dir"]).map(abs) {
            println!(
                "cargo:rerun-if-changed={}",
                common.join("packed-refs").display()
            );
            if let Some(r) = git(here, &["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={}", common.join(r).display());
            }
        }
    }
    // The workspace's crates (a dirty flag follows edits anywhere in them).
    let crates = here.parent().unwrap_or(here);
    println!("cargo:rerun-if-changed={}", crates.display());
    println!("cargo:rerun-if-changed=build.rs");
}
