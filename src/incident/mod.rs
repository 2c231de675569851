//! Incident response (host root, daemon side): freezing a sandbox's
//! processes ([`freezer`]) and the forensic bundle written when it is frozen
//! ([`bundle`]).

pub mod bundle;
pub mod freezer;
