//! Compiles `proto/relay.proto` with protox (pure Rust: no protoc on the machine), generates the
//! prost messages and tonic client/server, and writes the encoded descriptor set that gRPC
//! server reflection serves.

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["relay.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("relay_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // prost's codec, but an undecodable message is INVALID_ARGUMENT (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
