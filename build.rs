//! Generates the gRPC types and services from `proto/` and the file
//! descriptor set that server reflection publishes.
use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable request bodies answer INVALID_ARGUMENT (src/api/codec.rs).
        .codec_path("crate::api::codec::SigilCodec")
        .file_descriptor_set_path(out.join("sigil_descriptor.bin"))
        .compile_protos(&["proto/sigil/v1/sigil.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
