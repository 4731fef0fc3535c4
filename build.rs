//! Compiles the vendored Kubernetes protobuf schemas (`proto/k8s.io`) into one
//! FileDescriptorSet, which the API server embeds to decode protobuf request bodies, and
//! generates the OpenAPI schemas it publishes and validates against (`build/openapi.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/openapi.rs"]
mod openapi;

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut files = Vec::new();
    protos(Path::new("proto/k8s.io"), &mut files)?;
    files.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("k8s-descriptors.pb");
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into());
    // Output is kept quiet: protoc warns about imports the upstream schemas leave unused.
    let output = Command::new(&protoc)
        .arg("--proto_path=proto")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(&files)
        .output()
        .map_err(|e| format!("cannot run {protoc} (Debian package protobuf-compiler): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{protoc} failed on the Kubernetes schemas: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    openapi::generate(Path::new(&std::env::var("OUT_DIR")?))?;
    openapi::generate(Path::new(&std::env::var("OUT_DIR")?))?;
    Ok(())
}
