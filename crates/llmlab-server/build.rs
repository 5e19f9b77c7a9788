//! Compiles the gRPC contract in `proto/` with protox (a protobuf compiler in
//! Rust, so no system `protoc` is needed) and writes its descriptor set for
//! server reflection.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let contract = root.join("llmlab/v1/llmlab.proto");
    println!("cargo:rerun-if-changed={}", contract.display());
    let descriptors = protox::compile([&contract], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("llmlab_v1_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
