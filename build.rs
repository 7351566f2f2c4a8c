//! Generates Rust types (rust-protobuf 3.7) and ttrpc service stubs from protos/.
//! ttrpc-codegen uses a pure-Rust .proto parser, so no `protoc` is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("protocols");
    std::fs::create_dir_all(&out)?;
    let inputs = [
        "protos/agent.proto",
        "protos/oci.proto",
        "protos/types.proto",
        "protos/csi.proto",
        "protos/health.proto",
        "protos/attestation-agent.proto",
    ];
    for i in inputs {
        println!("cargo:rerun-if-changed={i}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(inputs)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .map_err(|e| format!("generate Rust code from protos/: {e}"))?;

    // The generated files open with inner attributes (`#![allow(...)]`), which
    // `include!` cannot take; src/wire/protocols.rs sets the same allowances instead.
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n"))?;
    }
    Ok(())
}
