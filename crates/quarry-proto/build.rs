use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh `cargo build` free of system packages;
    // an explicit PROTOC still wins.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    // Read at run time, not with env!(): a build script compiled in another
    // checkout that shares the target directory is reused as is.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("quarry/v1/flight.proto"),
        root.join("quarry/v1/services.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("quarry_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
