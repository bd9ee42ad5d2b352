//! CLIP's byte-level BPE tokenizer, read from a model's `tokenizer/vocab.json` and
//! `merges.txt`, or from the `tokenizers` library's single `tokenizer.json` when a folder
//! holds only that (its `model.vocab` and `model.merges` are the same two tables).
//!
//! It reproduces transformers' `CLIPTokenizer` (backed by the `tokenizers` library): special
//! tokens are split off the raw text, the rest is NFC-normalised, runs of whitespace become one
//! space, characters are lower-cased one by one, CLIP's pattern cuts words, letter runs, single
//! digits and punctuation runs, each piece's UTF-8 bytes are mapped to printable characters,
//! and BPE merges are applied by rank with `</w>` marking the end of each piece. Sequences are
//! framed by `<|startoftext|>` … `<|endoftext|>`, truncated to 77 tokens and padded with the
//! configured pad token, as diffusers' pipelines call it.
//!
//! The `tokenizers` crate would need its Oniguruma (C) or fancy-regex backend and about thirty
//! more crates for what is, for CLIP, a regular expression and a merge loop; the parity tests
//! compare this implementation with transformers on awkward captions instead.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// `<|startoftext|>`.
pub const BOS: &str = "<|startoftext|>";
/// `<|endoftext|>`.
pub const EOS: &str = "<|endoftext|>";
/// CLIP's context length.
pub const MAX_LENGTH: usize = 77;
/// The `tokenizers` library's single-file form of a tokenizer.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// Whether `dir` holds a tokenizer this module reads: `vocab.json` with `merges.txt`, or
/// `tokenizer.json`.
pub fn has_tokenizer(dir: &Path) -> bool {
    (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
        || dir.join(TOKENIZER_JSON).is_file()
}

const PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2/CLIP's reversible map from bytes to printable characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = ['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

/// A CLIP tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    bytes: [char; 256],
    pattern: Regex,
    whitespace: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    /// The padding token's text: split off the raw text like the framing tokens when it is a
    /// token of its own (SDXL's second tokenizer pads with `!`, which transformers registers as
    /// a special token, so `!!!` is three pad tokens there).
    pad_token: String,
    max_length: usize,
}

fn parse_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A token name from a tokenizer config value (a string or an `AddedToken` object).
fn token_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` (or, without them, `tokenizer.json`) and, when
    /// present, `tokenizer_config.json` (pad token, `model_max_length`) from a diffusers
    /// `tokenizer/` folder.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut pad = EOS.to_string();
        let mut max_length = MAX_LENGTH;
        let config_path = dir.join("tokenizer_config.json");
        if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::read(&config_path, e))?;
            let config: Value =
                serde_json::from_str(&text).map_err(|e| parse_err(&config_path, e.to_string()))?;
            if let Some(p) = config.get("pad_token").and_then(token_name) {
                pad = p;
            }
            // Some configs carry a huge sentinel here; CLIP's position table has 77 rows.
            if let Some(n) = config.get("model_max_length").and_then(Value::as_u64)
                && (2..=MAX_LENGTH as u64).contains(&n)
            {
                max_length = n as usize;
            }
        }
        let vocab_path = dir.join("vocab.json");
        let single = dir.join(TOKENIZER_JSON);
        if !vocab_path.is_file() && single.is_file() {
            return Self::from_tokenizer_json(&single, &pad, max_length);
        }
        Self::from_files(vocab_path, dir.join("merges.txt"), &pad, max_length)
    }

    /// Reads the vocabulary and merges of a `tokenizers` library `tokenizer.json` (a BPE
    /// model; merges written as `"a b"` strings or as `["a", "b"]` pairs, as newer versions
    /// write them).
    pub fn from_tokenizer_json(
        path: impl AsRef<Path>,
        pad: &str,
        max_length: usize,
    ) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| parse_err(path, e.to_string()))?;
        let model = doc
            .get("model")
            .ok_or_else(|| parse_err(path, "no \"model\" section"))?;
        if let Some(kind) = model.get("type").and_then(Value::as_str)
            && kind != "BPE"
        {
            return Err(parse_err(
                path,
                format!("the model is {kind:?}; CLIP's tokenizer is \"BPE\""),
            ));
        }
        let vocab: HashMap<String, u32> = serde_json::from_value(
            model
                .get("vocab")
                .cloned()
                .ok_or_else(|| parse_err(path, "no model.vocab table"))?,
        )
        .map_err(|e| parse_err(path, format!("model.vocab: {e}")))?;
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| parse_err(path, "no model.merges list"))?
            .iter()
            .map(|m| match m {
                Value::String(line) => line
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| parse_err(path, format!("merge {line:?} is not two symbols"))),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)] => Ok((a.clone(), b.clone())),
                    _ => Err(parse_err(path, format!("merge {m} is not two symbols"))),
                },
                other => Err(parse_err(path, format!("merge {other} is not two symbols"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_tables(vocab, merges, path, path, pad, max_length)
    }

    /// Reads a vocabulary and merge list; `pad` names the padding token.
    pub fn from_files(
        vocab_path: impl AsRef<Path>,
        merges_path: impl AsRef<Path>,
        pad: &str,
        max_length: usize,
    ) -> Result<Self> {
        let (vocab_path, merges_path) = (vocab_path.as_ref(), merges_path.as_ref());
        let text = std::fs::read_to_string(vocab_path).map_err(|e| Error::read(vocab_path, e))?;
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&text).map_err(|e| parse_err(vocab_path, e.to_string()))?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::read(merges_path, e))?;
        let merges = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.is_empty())
            .map(|line| {
                line.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        parse_err(merges_path, format!("merge {line:?} is not two symbols"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_tables(vocab, merges, vocab_path, merges_path, pad, max_length)
    }

    /// A tokenizer from its vocabulary and its merges in rank order (`vocab_path` and
    /// `merges_path` name where they came from, in errors).
    fn from_tables(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        vocab_path: &Path,
        merges_path: &Path,
        pad: &str,
        max_length: usize,
    ) -> Result<Self> {
        let mut ranks = HashMap::new();
        for (i, (a, b)) in merges.into_iter().enumerate() {
            if !vocab.contains_key(&format!("{a}{b}")) {
                return Err(parse_err(
                    merges_path,
                    format!("merge \"{a} {b}\" makes {a}{b:?}, which is not in the vocabulary"),
                ));
            }
            ranks.entry((a, b)).or_insert(i);
        }
        let id = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                parse_err(vocab_path, format!("the vocabulary has no {token:?} token"))
            })
        };
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad)?,
            pad_token: pad.to_string(),
            ranks,
            bytes: bytes_to_unicode(),
            pattern: Regex::new(PATTERN).expect("a valid pattern"),
            whitespace: Regex::new(r"\s+").expect("a valid pattern"),
            max_length,
            vocab,
        })
    }

    /// Number of vocabulary entries.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The sequence length of [`encode_padded`](Self::encode_padded) (77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `<|startoftext|>`, `<|endoftext|>` and the padding id.
    pub fn special_ids(&self) -> (u32, u32, u32) {
        (self.bos, self.eos, self.pad)
    }

    /// The token ids of `text`, without framing, truncation or padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        // Special tokens are matched in the raw text, before normalisation.
        loop {
            let pad = (self.pad_token != BOS && self.pad_token != EOS)
                .then_some((self.pad_token.as_str(), self.pad));
            let next = [(BOS, self.bos), (EOS, self.eos)]
                .into_iter()
                .chain(pad)
                .filter_map(|(tok, id)| rest.find(tok).map(|at| (at, tok, id)))
                .min_by_key(|(at, _, _)| *at);
            match next {
                Some((at, tok, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + tok.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    return ids;
                }
            }
        }
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        // Per character, as the `tokenizers` Lowercase normaliser does (no final-sigma rule).
        let lower: String = spaced.chars().flat_map(char::to_lowercase).collect();
        for piece in self.pattern.find_iter(&lower) {
            let symbols: String = piece
                .as_str()
                .bytes()
                .map(|b| self.bytes[b as usize])
                .collect();
            self.bpe(&symbols, ids);
        }
    }

    /// Merges the symbols of one piece by rank; the last symbol carries `</w>`.
    fn bpe(&self, piece: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = piece.chars().collect();
        let mut word: Vec<String> = chars.iter().map(char::to_string).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((rank, _)) = best else { break };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len()
                    && self.ranks.get(&(word[i].clone(), word[i + 1].clone())) == Some(&rank)
                {
                    merged.push(format!("{}{}", word[i], word[i + 1]));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        // Every byte symbol is in a CLIP vocabulary; anything else maps to the unknown token,
        // which CLIP spells `<|endoftext|>`.
        ids.extend(
            word.iter()
                .map(|s| self.vocab.get(s).copied().unwrap_or(self.eos)),
        );
    }

    /// `<|startoftext|>`, the ids of `text` truncated to fit, `<|endoftext|>`, then padding:
    /// exactly [`max_length`](Self::max_length) ids, as diffusers' pipelines tokenize prompts.
    pub fn encode_padded(&self, text: &str) -> Vec<u32> {
        let mut body = self.encode(text);
        body.truncate(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend(body);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_characters() {
        let table = bytes_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], 'Ġ');
    }
}
