//! Compiles `proto/**/*.proto` with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) and generates prost types and tonic services from the descriptors.

const PROTOS: &[&str] = &[
    "roam/client/v1/client.proto",
    "roam/internal/v1/edge_link.proto",
    "roam/idsvc/v1/ids.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        // No `XClient::connect(dst)` constructors: they would collide with the
        // `roam.client.v1.Gateway/Connect` rpc. Clients build a `Channel` and call `new`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
