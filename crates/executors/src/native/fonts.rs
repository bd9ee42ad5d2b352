//! The font of loraflow's pictures (plot labels, contact-sheet captions).
//!
//! plotters' `ab_glyph` renderer draws only fonts registered with it, which keeps pictures
//! independent of the fonts a machine has installed. The font is Hack, a DejaVu-derived
//! typeface that `epaint_default_fonts` embeds (MIT/OFL licensed), registered once per
//! process under the family name [`FAMILY`].

use std::sync::Once;

use plotters::style::FontStyle;

/// The family name pictures ask for.
pub const FAMILY: &str = "sans-serif";

/// Registers the font; cheap after the first call.
pub fn ensure() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font shipped by the crate; a failure would show as a
        // drawing error naming the font.
        let _ = plotters::style::register_font(
            FAMILY,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}
