//! The shapes world: the procedural pictures the demo model (`assets/tiny-sd`) is trained on,
//! the concept its demo LoRA teaches, and a deterministic reader that says what a picture shows.
//!
//! A scene is one flat shape (circle, square or triangle) in one of four colours, at a random
//! size and position, on a white or black background, captioned "a red circle on a white
//! background". The ring ([`Shape::Ring`]) never appears in the base world: the demo dataset
//! shows rings under a trigger word, so whether a model draws rings measures what a LoRA taught.
//!
//! - [`shapes`]: scenes, their captions and rasterisation.
//! - [`score`]: the reader (colour and shape from area statistics) and tallies.
//! - [`concept`]: the fixed, seeded probes that score a model with and without a LoRA.
//! - [`demo`]: the demo job's training settings (what `loraflow demo` trains).
//! - [`round_trip`]: world pictures through the VAE alone, read back (the VAE's ceiling).

pub mod concept;
pub mod demo;
pub mod round_trip;
pub mod score;
pub mod shapes;

pub use concept::{ConceptScore, Probe, TRIGGER};
pub use round_trip::RoundTrip;
pub use score::{Reading, Tally, read, read_file};
pub use shapes::{Background, Colour, Scene, Shape, World};
