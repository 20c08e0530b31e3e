//! A custom kvcat runner: the whole CLI (with every built-in plugin) plus `value_norm`.
use my_compressor as _;
fn main() -> std::process::ExitCode {
    kvcat_bench::cli::main_entry()
}
