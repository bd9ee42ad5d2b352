//! The native engine: `train` and `sample` steps run by loraflow's own trainer
//! (`loraflow-trainer`, on burn), in-process, on the CPU or a GPU backend.
//!
//! - [`options`]: where base models are, the device, a persistent work folder,
//!   sampling defaults.
//! - [`install`]: which base models are installed under the models folder.
//! - [`params`]: a job's parameters as the trainer's configuration.
//! - [`train`]: [`NativeTrainer`], the `train` executor.
//! - [`sample`]: [`NativeSampler`], the `sample` executor.
//! - `sample_xl`: the `sample` executor's rendering with an SDXL base model.
//! - `sample_flux`: the `sample` executor's rendering with a FLUX.1 base model.
//! - [`sampling`]: a job's sample settings as the native engine renders them.
//! - [`report`]: the loss history (`loss_history.json`).
//! - [`loss_plot`]: the loss plot drawn from it (plotters).
//! - [`contact_sheet`]: every epoch's samples (and the base model's) in one labelled picture.
//! - [`fonts`]: the font embedded for pictures.
//! - [`error`]: [`Error`], and the step error each failure becomes.

pub mod contact_sheet;
pub mod error;
pub mod fonts;
pub mod install;
pub mod loss_plot;
pub mod options;
pub mod params;
pub mod report;
pub mod sample;
mod sample_flux;
mod sample_xl;
pub mod sampling;
pub mod train;

pub use error::{Error, Result};
pub use options::{NativeModel, NativeOptions, SampleDefaults};
pub use sample::NativeSampler;
pub use train::NativeTrainer;
