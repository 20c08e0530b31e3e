//! The `kvcat` command-line tool. All logic lives in the `kvcat_bench` library so that plugin
//! crates can ship their own 5-line runner that links extra plugins.
use kvcat_compressors as _;
use kvcat_policies as _;

fn main() -> std::process::ExitCode {
    kvcat_bench::cli::main_entry()
}
