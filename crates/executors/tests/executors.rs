//! Tests of loraflow-executors: built-in executors and the external engines' adapters.
//!
//! One test binary per package: every file beside this one is a module of it, so the
//! dependencies are compiled into one executable rather than once per file.
//! Run one file's tests with its module name as the filter, e.g. `cargo test --test
//! executors -- aitoolkit::`.

mod aitoolkit;
mod builtin;
mod kohya_config;
mod kohya_executor;
mod kohya_flux;
mod kohya_layout;
mod kohya_progress;
mod model_check;
mod native;
mod params_truth;
mod s3;
