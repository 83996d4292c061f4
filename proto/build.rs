//! Compiles metrodr.proto with protoc (Debian's protobuf-compiler, installed
//! by scripts/install-deps.sh).

/// Every .proto file of package metrodr.v1.
const PROTOS: &[&str] = &[
    "metrodr.proto",
    "agent.proto",
    "spec.proto",
    "state.proto",
    "audit.proto",
    "plan.proto",
    "operation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in PROTOS {
        println!("cargo:rerun-if-changed={f}");
    }
    if std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("protoc not found: install protobuf-compiler (run scripts/install-deps.sh) or set PROTOC".into());
    }
    tonic_prost_build::configure().compile_protos(PROTOS, &["."])?;
    Ok(())
}
