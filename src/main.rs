//! swarmcell: the binary. Everything is in the library (`swarmcell::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    swarmcell::cli::main()
}
