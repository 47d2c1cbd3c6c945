//! The `wse-loadgen` executable: the library's command line.

fn main() {
    std::process::exit(wse_loadgen::run_cli(std::env::args_os()));
}
