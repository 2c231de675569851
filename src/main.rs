//! swarmcell: the binary. Everything is in the library (`swarmcell::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox init is exec'd on every launch: skip the CLI parser.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("__init")) {
        let fd = args.next().and_then(|a| a.to_str().and_then(|s| s.parse().ok())).unwrap_or(-1);
        swarmcell::launch::init::main(fd);
    }
    swarmcell::cli::main()
}
