//! Rebuilds the binary when the committed portal assets change (they are
//! embedded with `include_dir!`, see `src/portal.rs`).
fn main() {
    println!("cargo:rerun-if-changed=../portal/dist");
}
