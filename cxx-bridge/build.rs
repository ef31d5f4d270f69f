// Generates and compiles the C++ half of the bridge. The plugin includes the generated header
// (`target/cxxbridge/testrig-bridge/src/bridge.rs.h`) and links this crate's staticlib, which then carries both halves.
fn main() {
    cxx_build::bridge("src/bridge.rs")
        .std("c++17")
        .compile("testrig-bridge-cxx");
    println!("cargo:rerun-if-changed=src/bridge.rs");
}
