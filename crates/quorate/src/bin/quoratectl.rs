//! `quoratectl`: thin entry point; the CLI lives in the `quorate-ctl` crate.

fn main() {
    let code = quorate_ctl::main_with_args_os(std::env::args_os().collect());
    std::process::exit(code);
}
