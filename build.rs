//! The embedded policies (`policies/opencode.toml`, `policies/seccomp/default.toml`)
//! stay TOML, the reviewable source; they are also embedded as JSON, which the
//! launcher reads on every `run` several times faster (a unit test checks that
//! both forms give the same policy).
//!
//! It also asks for the launcher binary's static link (see scripts/link-cc).

use std::path::Path;

fn main() {
    // The launcher is linked as a static PIE by scripts/link-cc (the
    // workspace's linker), which takes this marker: nothing to load before
    // `main` on every `swarmcell run`. Other binaries (tests, the worker) stay
    // dynamic.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bin=swarmcell=--swarmcell-static-pie");
    }
    let out = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| panic!("cargo sets OUT_DIR"));
    for (source, json) in [("policies/opencode.toml", "opencode.json"), ("policies/seccomp/default.toml", "seccomp-default.json")] {
        println!("cargo:rerun-if-changed={source}");
        let text = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let value: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{source}: {e}"));
        let encoded = serde_json::to_string(&value).unwrap_or_else(|e| panic!("{source}: {e}"));
        std::fs::write(Path::new(&out).join(json), encoded).unwrap_or_else(|e| panic!("{json}: {e}"));
    }
}
