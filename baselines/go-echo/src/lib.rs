//! The Go baseline, seen from Rust: where `build.rs` put the binary it built
//! from `main.go`, and how to put a copy where the other servers' release
//! binaries are, so that every measurement finds it by name.
//!
//! Go is optional. Without a Go toolchain on PATH [`BINARY`] is `None`, and
//! every caller says so in one line ([`NO_GO`]) and carries on without it.

use std::io;
use std::path::{Path, PathBuf};

/// The binary `build.rs` built with `go build`, if Go was on PATH.
pub const BINARY: Option<&str> = option_env!("GO_ECHO_BIN");

/// The one line every command prints when it skips go-echo.
pub const NO_GO: &str = "go-echo: skipped, no Go 1.19+ toolchain on PATH \
     (apt-get install golang-go, then build again, to include it)";

/// The package and binary name.
pub const NAME: &str = "go-echo";

/// Copies the built binary to `dir/go-echo` (e.g. `target/release`), where
/// the measurements look for every server. `Ok(None)` without Go.
pub fn install(dir: &Path) -> io::Result<Option<PathBuf>> {
    let Some(built) = BINARY else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)?;
    let target = dir.join(NAME);
    // Copy beside it, then rename: a copy onto a binary that is running
    // fails with ETXTBSY, a rename does not.
    let staging = dir.join(format!(".{NAME}.tmp"));
    std::fs::copy(built, &staging).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("copying {built} to {}: {e}", staging.display()),
        )
    })?;
    std::fs::rename(&staging, &target)?;
    Ok(Some(target))
}
