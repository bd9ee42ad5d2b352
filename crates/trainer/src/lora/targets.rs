//! Choosing which layers get adapters, by diffusers module path.
//!
//! A pattern is a dot-separated path where `*` stands for one segment and `**` for any number
//! of segments (zero included). Patterns are anchored at the end of the module path and may
//! start anywhere, so `to_q` selects every `...attn1.to_q` and `...attn2.to_q`, `attn2.to_k`
//! only the cross-attention keys, and `down_blocks.**` every layer of the down path.

use crate::error::{Error, Result};

/// diffusers' and PEFT's usual choice: the attention projections.
pub const ATTENTION: &[&str] = &["to_q", "to_k", "to_v", "to_out.0"];

/// kohya's default LoRA: every linear and 1×1 convolution of the transformer blocks
/// (attention, `proj_in`/`proj_out`, feed-forward).
pub const TRANSFORMER: &[&str] = &[
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
];

/// kohya's LoCon additions (`conv_dim`): the resnet and resampler convolutions and the resnet
/// time projections.
pub const CONV: &[&str] = &[
    "resnets.*.conv1",
    "resnets.*.conv2",
    "resnets.*.conv_shortcut",
    "resnets.*.time_emb_proj",
    "downsamplers.*.conv",
    "upsamplers.*.conv",
];

/// A compiled set of module-path patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPatterns {
    patterns: Vec<Vec<String>>,
}

impl TargetPatterns {
    /// Compiles patterns, rejecting empty ones and empty segments.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        let mut compiled = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref();
            let segments: Vec<String> = p.split('.').map(str::to_string).collect();
            if p.is_empty() || segments.iter().any(String::is_empty) {
                return Err(Error::invalid(
                    "network.targets",
                    format!("{p:?}"),
                    "a pattern is a dot-separated module path such as `attn1.to_q` or `resnets.*.conv1`",
                ));
            }
            compiled.push(segments);
        }
        Ok(Self { patterns: compiled })
    }

    /// Whether any pattern matches the module path.
    pub fn matches(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('.').collect();
        self.patterns.iter().any(|p| matches_suffix(p, &segments))
    }

    /// The patterns that match none of `paths` (to report typos).
    pub fn unmatched(&self, paths: &[String]) -> Vec<String> {
        let paths: Vec<Vec<&str>> = paths.iter().map(|p| p.split('.').collect()).collect();
        self.patterns
            .iter()
            .filter(|p| !paths.iter().any(|segments| matches_suffix(p, segments)))
            .map(|p| p.join("."))
            .collect()
    }
}

/// Patterns carry an implicit leading `**`: they are anchored at the end of the path only.
fn matches_suffix(pattern: &[String], path: &[&str]) -> bool {
    (0..=path.len()).any(|start| glob(pattern, &path[start..]))
}

fn glob(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((head, rest)) if head == "**" => (0..=path.len()).any(|i| glob(rest, &path[i..])),
        Some((head, rest)) => match path.split_first() {
            Some((seg, path_rest)) => (head == "*" || head == seg) && glob(rest, path_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q1: &str = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    const K2: &str = "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k";
    const OUT: &str = "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0";
    const CONV1: &str = "down_blocks.0.resnets.1.conv1";

    #[test]
    fn suffix_patterns() {
        let t = TargetPatterns::new(ATTENTION).unwrap();
        assert!(t.matches(Q1) && t.matches(K2) && t.matches(OUT));
        assert!(!t.matches(CONV1));
        // Segment boundaries matter: `to_q` does not match `xto_q`.
        assert!(!t.matches("a.xto_q"));
    }

    #[test]
    fn wildcards_and_prefixes() {
        let t = TargetPatterns::new(&["attn2.to_k"]).unwrap();
        assert!(t.matches(K2) && !t.matches(Q1));
        let t = TargetPatterns::new(CONV).unwrap();
        assert!(t.matches(CONV1) && !t.matches(Q1));
        let t = TargetPatterns::new(&["down_blocks.**"]).unwrap();
        assert!(t.matches(Q1) && t.matches(CONV1) && !t.matches(K2));
        let t = TargetPatterns::new(&["down_blocks.*.attentions.**.to_q"]).unwrap();
        assert!(t.matches(Q1) && !t.matches(K2));
    }

    #[test]
    fn bad_patterns_are_quoted() {
        let err = TargetPatterns::new(&["attn1..to_q"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"attn1..to_q\""), "{err}");
    }

    #[test]
    fn unmatched_patterns_are_listed() {
        let t = TargetPatterns::new(&["to_q", "to_qq"]).unwrap();
        assert_eq!(t.unmatched(&[Q1.to_string()]), vec!["to_qq".to_string()]);
    }
}
