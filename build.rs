//! Generates Rust types (rust-protobuf 3.7) and ttrpc service stubs from protos/.
//! ttrpc-codegen uses a pure-Rust .proto parser, so no `protoc` is needed.
use std::path::PathBuf;

fn main() {
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("protocols");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/protocols");
    let inputs = [
        "protos/agent.proto",
        "protos/oci.proto",
        "protos/types.proto",
        "protos/csi.proto",
        "protos/health.proto",
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
        .expect("generate Rust code from protos/");

    // The generated files open with inner attributes (`#![allow(...)]`), which
    // `include!` cannot take; src/protocols.rs sets the same allowances instead.
    for entry in std::fs::read_dir(&out).expect("read generated code") {
        let path = entry.expect("read generated code").path();
        let text = std::fs::read_to_string(&path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("rewrite generated file");
    }
}
