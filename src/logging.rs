//! Logs go to stderr, as text or JSON lines (`--log-format json`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// `level` is a level name (`warn`) or an `EnvFilter` directive string
/// (`swarmcell=debug`). A plain level skips the directive parser, which is a
/// measurable part of every launch.
pub fn init(json: bool, level: &str) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    // A second init (tests, re-entry) keeps the first subscriber.
    let _ = match (level.parse::<LevelFilter>(), json) {
        (Ok(l), false) => builder.with_max_level(l).try_init(),
        (Ok(l), true) => builder.with_max_level(l).json().flatten_event(true).try_init(),
        (Err(_), json) => {
            let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
            let b = builder.with_env_filter(filter);
            if json { b.json().flatten_event(true).try_init() } else { b.try_init() }
        }
    };
}
