//! A custom kvcat runner that links the example plugin: the whole CLI plus `value_norm`.
use kvcat_compressors as _;
use kvcat_policies as _;
use my_compressor as _;
fn main() -> std::process::ExitCode {
    kvcat_bench::cli::main_entry()
}
