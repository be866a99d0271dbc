//! `quoratectl`: thin entry point; the CLI lives in the `quorate-ctl` crate.

fn main() {
    let code = quorate_ctl::main_with_args(std::env::args().collect());
    std::process::exit(code);
}
