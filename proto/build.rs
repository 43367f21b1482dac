//! Compiles `witness.proto` with a vendored `protoc`, so building needs no
//! system package. An explicit `PROTOC` in the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY of intent: build scripts are single-threaded; setting the
        // variable before invoking prost-build is the documented way to point
        // it at a protoc binary.
        unsafe_set_protoc(&protoc);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("witness_descriptor.bin"))
        .compile_protos(&["witness.proto"], &["."])?;
    println!("cargo:rerun-if-changed=witness.proto");
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // SAFETY: called once at the start of a single-threaded build script.
    unsafe { std::env::set_var("PROTOC", path) };
}
