//! Builds main.go with the Go toolchain, when there is one on PATH, into
//! `$OUT_DIR/go-echo`, and tells the crate where it is (`GO_ECHO_BIN`) and
//! that it exists (`cfg(go_toolchain)`). Without Go it says so in one line
//! and the workspace builds on without it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(go_toolchain)");
    println!("cargo::rerun-if-changed=main.go");
    println!("cargo::rerun-if-changed=go.mod");
    println!("cargo::rerun-if-env-changed=PATH");
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .collect();
    let Some(go) = dirs
        .iter()
        .map(|dir| dir.join("go"))
        .find(|go| go.is_file())
    else {
        // Installing Go later adds a file to one of these: build again then.
        for dir in dirs.iter().filter(|dir| dir.is_dir()) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
        println!(
            "cargo::warning=go-echo: no Go toolchain on PATH, so go-echo is not built, \
             tested or measured (apt-get install golang-go to include it)"
        );
        return;
    };
    println!("cargo::rerun-if-changed={}", go.display());
    // main.go uses Go 1.19's typed atomics; an older Go counts as no Go.
    if let Some(version) = go_version(&go)
        && version < (1, 19)
    {
        println!(
            "cargo::warning=go-echo: {} is Go {}.{}, older than the 1.19 main.go needs, so \
             go-echo is not built, tested or measured",
            go.display(),
            version.0,
            version.1
        );
        return;
    }

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("cargo did not set OUT_DIR");
    };
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").map_or_else(PathBuf::new, PathBuf::from);
    let binary = out_dir.join("go-echo");
    let mut command = Command::new(&go);
    command
        .current_dir(&manifest_dir)
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        // Pure Go (no C compiler needed, the runtime's own netpoller), the
        // standard library only, never a download.
        .env("CGO_ENABLED", "0")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GOFLAGS", "");
    if env::var_os("HOME").is_none() && env::var_os("GOCACHE").is_none() {
        command.env("GOCACHE", out_dir.join("go-build-cache"));
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => fail(&format!("cannot run {}: {e}", go.display())),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        fail(&format!(
            "`go build` of {} failed ({}); Go 1.19 or newer is needed:\n{}",
            Path::new(&manifest_dir).join("main.go").display(),
            output.status,
            stderr.trim_end()
        ));
    }
    println!("cargo::rustc-cfg=go_toolchain");
    println!("cargo::rustc-env=GO_ECHO_BIN={}", binary.display());
}

/// `(major, minor)` from `go env GOVERSION` (`go1.19.8`), if it can be read.
fn go_version(go: &Path) -> Option<(u32, u32)> {
    let output = Command::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().strip_prefix("go")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn fail(message: &str) -> ! {
    eprintln!("go-echo: {message}");
    std::process::exit(1);
}
