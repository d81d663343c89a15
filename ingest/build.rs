//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds them, and on stable
//! Rust it cannot tell cargo which files it read.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
