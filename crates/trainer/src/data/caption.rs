//! Captions as kohya's trainers treat them: the trigger word first, tag shuffling that keeps the
//! first `keep_tokens` tags in place, and caption dropout.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SeededRng;

/// How captions change from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptionOptions {
    /// Shuffle the comma-separated tags at every step (sd-scripts' `shuffle_caption`).
    #[serde(default)]
    pub shuffle_tags: bool,
    /// Leading tags kept in place when shuffling (sd-scripts' `keep_tokens`).
    #[serde(default)]
    pub keep_tokens: usize,
    /// Probability of training a step on the empty caption (sd-scripts'
    /// `caption_dropout_rate`).
    #[serde(default)]
    pub dropout: f64,
}

impl CaptionOptions {
    /// Checks the dropout probability.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "dataset.captions.dropout",
                self.dropout,
                "must be a probability between 0 and 1",
            ));
        }
        Ok(())
    }

    /// Whether a caption's text is the same at every step (then its embedding can be cached).
    pub fn is_static(&self) -> bool {
        !self.shuffle_tags
    }

    /// The caption used for one step. Draws from `rng` only when shuffling or dropping out, so
    /// that static captions leave the stream untouched.
    pub fn apply(&self, caption: &str, rng: &mut SeededRng) -> String {
        if self.dropout > 0.0 && (rng.uniform(1, 0.0, 1.0)[0] as f64) < self.dropout {
            return String::new();
        }
        if !self.shuffle_tags {
            return caption.to_string();
        }
        let tags: Vec<&str> = caption.split(',').map(str::trim).collect();
        let keep = self.keep_tokens.min(tags.len());
        let (fixed, rest) = tags.split_at(keep);
        let mut rest = rest.to_vec();
        rng.shuffle(&mut rest);
        fixed
            .iter()
            .chain(rest.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The comma-separated tags of a caption, trimmed, empty ones dropped (sd-scripts counts
/// these for `ss_tag_frequency`).
pub fn tags(caption: &str) -> Vec<&str> {
    caption
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// `trigger, caption`, unless the caption already starts with the trigger word.
pub fn with_trigger(caption: &str, trigger: &str) -> String {
    let caption = caption.trim();
    let trigger = trigger.trim();
    if trigger.is_empty()
        || tags(caption)
            .first()
            .is_some_and(|t| t.eq_ignore_ascii_case(trigger))
    {
        caption.to_string()
    } else if caption.is_empty() {
        trigger.to_string()
    } else {
        format!("{trigger}, {caption}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn shuffling_keeps_the_leading_tags() {
        let options = CaptionOptions {
            shuffle_tags: true,
            keep_tokens: 1,
            dropout: 0.0,
        };
        let mut rng = SeededRng::new(3, Stream::Caption);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let c = options.apply("sks, a, b, c, d", &mut rng);
            assert!(c.starts_with("sks, "), "{c}");
            let mut parts: Vec<&str> = c.split(", ").collect();
            parts.sort();
            assert_eq!(parts, ["a", "b", "c", "d", "sks"]);
            seen.insert(c);
        }
        assert!(seen.len() > 5, "the rest is shuffled");
    }

    #[test]
    fn dropout_empties_about_that_share() {
        let options = CaptionOptions {
            dropout: 0.25,
            ..CaptionOptions::default()
        };
        let mut rng = SeededRng::new(1, Stream::Caption);
        let empty = (0..4000)
            .filter(|_| options.apply("a dog", &mut rng).is_empty())
            .count();
        assert!((800..1200).contains(&empty), "{empty}");
        assert!(
            CaptionOptions {
                dropout: 1.5,
                ..options
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn trigger_word_goes_first_once() {
        assert_eq!(with_trigger("a dog, grass", "sks"), "sks, a dog, grass");
        assert_eq!(with_trigger("SKS, a dog", "sks"), "SKS, a dog");
        assert_eq!(with_trigger(" ", "sks"), "sks");
        assert_eq!(with_trigger("a dog", ""), "a dog");
    }
}
