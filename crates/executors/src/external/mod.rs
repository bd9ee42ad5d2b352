//! What the engines that run an external trainer as a subprocess (the
//! [`kohya`](crate::kohya) and [`aitoolkit`](crate::aitoolkit) engines)
//! share:
//!
//! - [`process`]: the child process: streaming output, deadline, stopping
//!   its whole process group, the tail of its output for error messages.
//! - [`lines`]: splitting output into lines, tqdm progress bars, Python
//!   exceptions, CUDA out-of-memory.
//! - [`image_folder`]: the dataset as a folder of images with `.txt`
//!   captions beside them.
//! - [`inputs`]: fetching a `train` step's dataset and labels.
//! - [`params`]: reading a job's parameters with checks.
//! - [`error`]: what these fail with; each engine's error takes it in.

pub mod error;
pub mod image_folder;
pub mod inputs;
pub mod lines;
pub mod params;
pub mod process;

pub use error::Error;
