//! Model checks of the key protocol, test-only: the loom models (`loom`) and the shuttle tests
//! (`shuttle`), run through the real dispatcher, and the handle they share (`handle`). Kept out
//! of the production modules, as tokio keeps its `loom_*` tests under `runtime/tests`.
//!
//! Loom: `RUSTFLAGS="--cfg loom" cargo test --lib --release --target-dir target/loom tests::loom`.
//! Shuttle: `RUSTFLAGS="--cfg shuttle" cargo test --release --lib --target-dir target/shuttle
//! tests::shuttle` (Rust 1.85+).

mod handle;
#[cfg(loom)]
mod loom;
#[cfg(all(shuttle, not(loom)))]
mod shuttle;
