//! T5's SentencePiece unigram tokenizer, read from a model's `spiece.model`
//! (`tokenizer_2/spiece.model` of a FLUX.1 folder).
//!
//! It reproduces the SentencePiece library: the model file's normaliser (the precompiled
//! character map of `nmt_nfkc`, a Darts double-array trie over UTF-8 with its replacement
//! strings, applied longest match first), whitespace handling (leading, trailing and repeated
//! spaces dropped, a dummy `▁` prefix, spaces escaped as `▁`), the Viterbi search for the
//! highest-scoring segmentation over the model's pieces and scores (user-defined pieces scored
//! by length, unused pieces skipped, a character no piece starts with costs the lowest score
//! minus 10 as `<unk>`), runs of unknown pieces merged into one `<unk>`, or, in models with
//! byte fallback, spelled as `<0xNN>` byte pieces ([`T5Tokenizer::encode_pieces`]).
//!
//! [`T5Tokenizer::encode`] reproduces transformers' `T5Tokenizer` instead, which FLUX's
//! pipelines use: the `tokenizers` library's conversion of the same model, which reads the
//! character map per grapheme cluster (combining marks after a mapped character are dropped
//! where SentencePiece keeps them), splits words at whitespace and before each `▁`, turns the
//! literal text of the control pieces (`</s>`, `<pad>`, `<unk>`) into their ids, and ends the
//! sequence with `</s>`; [`T5Tokenizer::encode_padded`] truncates and pads as diffusers' FLUX
//! pipelines call it.
//!
//! The `tokenizers` crate would bring 18 crates new to the workspace (`onig_sys`'s C and
//! `esaxx-rs`'s C++ among them; a cold build of about 5 minutes on two cores) for one
//! normaliser and one dynamic programme; the parity tests compare this implementation with
//! the SentencePiece library and transformers on 341 awkward strings instead.

use std::collections::HashMap;
use std::path::Path;

use unicode_segmentation::UnicodeSegmentation;

use crate::error::{Error, Result};

/// SentencePiece's space symbol, U+2581.
pub const SPACE: char = '\u{2581}';
/// The score penalty of an unknown piece below the lowest piece score (SentencePiece's
/// `kUnkPenalty`).
const UNK_PENALTY: f32 = 10.0;
/// The longest text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// The longest sequence [`T5Tokenizer::encode_padded`] produces.
pub const MAX_LENGTH: usize = 1 << 16;

/// A piece's kind, as `ModelProto.SentencePiece.Type` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// A piece of text.
    Normal,
    /// `<unk>`.
    Unknown,
    /// `</s>`, `<pad>`, `<s>`: never produced from text.
    Control,
    /// Always a piece of its own, scored by length.
    UserDefined,
    /// Kept in the vocabulary but never produced.
    Unused,
    /// `<0xNN>`, for byte fallback.
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Its text (with `▁` for spaces).
    pub text: String,
    /// Its log-probability.
    pub score: f32,
    /// Its kind.
    pub kind: PieceKind,
}

/// The normaliser's settings (`NormalizerSpec`).
#[derive(Debug, Clone)]
struct Normalizer {
    /// The Darts double-array trie of the character map, as units.
    trie: Vec<u32>,
    /// The replacement strings, each NUL-terminated, indexed by the trie's values.
    replacements: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

/// T5's tokenizer.
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    pieces: Vec<Piece>,
    /// Pieces the Viterbi search may produce (normal, user-defined, unused) → id.
    lookup: HashMap<String, u32>,
    /// The longest such piece, in bytes.
    max_piece_bytes: usize,
    normalizer: Normalizer,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    byte_fallback: bool,
    /// Id of `<0xNN>` for every byte, with byte fallback.
    byte_ids: Vec<u32>,
    min_score: f32,
    max_score: f32,
}

impl T5Tokenizer {
    /// Reads a SentencePiece `spiece.model` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
        Self::from_bytes(&bytes).map_err(|reason| Error::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads a serialised `ModelProto`.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let proto = parse_model(bytes)?;
        if proto.model_type != 1 {
            return Err(format!(
                "model_type {} is not unigram (1); only unigram models are read",
                proto.model_type
            ));
        }
        let mut lookup = HashMap::new();
        let mut max_piece_bytes = 0;
        let mut unk_id = None;
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN_POSITIVE);
        let mut byte_ids = vec![u32::MAX; 256];
        for (id, piece) in proto.pieces.iter().enumerate() {
            let id = id as u32;
            match piece.kind {
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused => {
                    if piece.text.is_empty() {
                        return Err(format!("piece {id} is empty"));
                    }
                    lookup.insert(piece.text.clone(), id);
                    max_piece_bytes = max_piece_bytes.max(piece.text.len());
                }
                PieceKind::Unknown => unk_id = Some(id),
                PieceKind::Byte => {
                    let byte = piece
                        .text
                        .strip_prefix("<0x")
                        .and_then(|t| t.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| format!("byte piece {id} is {:?}", piece.text))?;
                    byte_ids[byte as usize] = id;
                }
                PieceKind::Control => {}
            }
            if piece.kind == PieceKind::Normal {
                min_score = min_score.min(piece.score);
                max_score = max_score.max(piece.score);
            }
        }
        let unk_id = unk_id.ok_or("the model has no unknown piece")?;
        if proto.byte_fallback && byte_ids.contains(&u32::MAX) {
            return Err("byte_fallback is set but not every <0xNN> piece exists".into());
        }
        let control = |text: &str, fallback: u32| {
            proto
                .pieces
                .iter()
                .position(|p| p.text == text && p.kind == PieceKind::Control)
                .map_or(fallback, |i| i as u32)
        };
        Ok(Self {
            eos_id: control("</s>", 1),
            pad_id: control("<pad>", 0),
            lookup,
            max_piece_bytes,
            normalizer: proto.normalizer,
            unk_id,
            byte_fallback: proto.byte_fallback,
            byte_ids,
            min_score,
            max_score,
            pieces: proto.pieces,
        })
    }

    /// The vocabulary, by id.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// `</s>`'s id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `<pad>`'s id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `<unk>`'s id.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Whether unknown text is spelled as byte pieces.
    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback
    }

    /// The text as the model's normaliser rewrites it, spaces escaped as `▁` (SentencePiece's
    /// `Normalizer::Normalize`).
    pub fn normalize(&self, text: &str) -> String {
        let n = &self.normalizer;
        let mut input = text;
        let mut out = String::with_capacity(text.len() + 3);
        if n.remove_extra_whitespaces {
            while !input.is_empty() {
                let (replacement, consumed) = self.normalize_prefix(input);
                if replacement != " " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return out;
        }
        let space = if n.escape_whitespaces { SPACE } else { ' ' };
        if n.add_dummy_prefix {
            out.push(space);
        }
        let mut prev_space = n.remove_extra_whitespaces;
        while !input.is_empty() {
            let (replacement, consumed) = self.normalize_prefix(input);
            let mut piece = replacement;
            if prev_space {
                piece = piece.trim_start_matches(' ');
            }
            if !piece.is_empty() {
                for c in piece.chars() {
                    out.push(if c == ' ' && n.escape_whitespaces {
                        SPACE
                    } else {
                        c
                    });
                }
                prev_space = piece.ends_with(' ');
            }
            input = &input[consumed..];
            if !n.remove_extra_whitespaces {
                prev_space = false;
            }
        }
        if n.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.pop();
            }
        }
        out
    }

    /// The replacement of the longest rule matching the start of `input` (or its first
    /// character unchanged) and the bytes it consumes.
    fn normalize_prefix<'s>(&'s self, input: &'s str) -> (&'s str, usize) {
        let n = &self.normalizer;
        if let Some((value, length)) = longest_prefix(&n.trie, input.as_bytes()) {
            let start = value as usize;
            let end = n.replacements[start..]
                .iter()
                .position(|&b| b == 0)
                .map_or(n.replacements.len(), |p| start + p);
            // The map was built from valid UTF-8 strings; a broken one is left unapplied.
            if let Ok(replacement) = std::str::from_utf8(&n.replacements[start..end])
                && input.is_char_boundary(length)
            {
                return (replacement, length);
            }
        }
        let length = input.chars().next().map_or(0, char::len_utf8);
        (&input[..length], length)
    }

    /// SentencePiece's ids of `text`: normalised, segmented by Viterbi, without `</s>`.
    ///
    /// # Errors
    ///
    /// When `text` is longer than [`MAX_TEXT_BYTES`].
    pub fn encode_pieces(&self, text: &str) -> Result<Vec<u32>> {
        check_length(text)?;
        let normalized = self.normalize(text);
        Ok(self.segment(&normalized))
    }

    /// The ids of the best segmentation of normalised text, runs of unknown pieces merged into
    /// one `<unk>` or, with byte fallback, spelled as byte pieces.
    fn segment(&self, normalized: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut prev_unknown = false;
        for (surface, id) in self.viterbi(normalized) {
            let unknown = id == self.unk_id;
            if unknown && self.byte_fallback {
                ids.extend(surface.bytes().map(|b| self.byte_ids[b as usize]));
            } else if !(unknown && prev_unknown) {
                ids.push(id);
            }
            prev_unknown = unknown;
        }
        ids
    }

    /// transformers' `T5Tokenizer` ids (the `tokenizers` library's conversion of the model,
    /// which FLUX's pipelines use): the literal text of the control pieces and `<unk>` becomes
    /// their ids, the text between is normalised grapheme by grapheme
    /// ([`normalize_graphemes`](Self::normalize_graphemes)), split at whitespace, each word
    /// prefixed with `▁`, split before every `▁` and segmented on its own, and `</s>` is
    /// appended.
    ///
    /// # Errors
    ///
    /// When `text` is longer than [`MAX_TEXT_BYTES`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        check_length(text)?;
        let specials: Vec<(&str, u32)> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PieceKind::Control | PieceKind::Unknown))
            .filter(|(_, p)| !p.text.is_empty())
            .map(|(i, p)| (p.text.as_str(), i as u32))
            .collect();
        let mut ids = Vec::new();
        let mut rest = text;
        loop {
            let next = specials
                .iter()
                .filter_map(|&(s, id)| rest.find(s).map(|at| (at, s.len(), id)))
                .min_by_key(|&(at, len, _)| (at, usize::MAX - len));
            let (segment, special) = match next {
                Some((at, len, id)) => {
                    let segment = &rest[..at];
                    rest = &rest[at + len..];
                    (segment, Some(id))
                }
                None => (std::mem::take(&mut rest), None),
            };
            let normalized = self.normalize_graphemes(segment);
            for word in normalized
                .split(char::is_whitespace)
                .filter(|w| !w.is_empty())
            {
                let word = if word.starts_with(SPACE) {
                    word.to_string()
                } else {
                    format!("{SPACE}{word}")
                };
                // Split before every `▁` (the `▁` stays with what follows it).
                let mut start = 0;
                for (at, _) in word.match_indices(SPACE).filter(|&(at, _)| at > 0) {
                    ids.extend(self.segment(&word[start..at]));
                    start = at;
                }
                ids.extend(self.segment(&word[start..]));
            }
            match special {
                Some(id) => ids.push(id),
                None => break,
            }
        }
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// The `tokenizers` library's reading of the precompiled map (its `Precompiled`
    /// normaliser), which differs from SentencePiece's around combining marks: each extended
    /// grapheme cluster shorter than 6 bytes that starts with a mapped character is replaced
    /// whole by that character's replacement (the marks after it are dropped); longer clusters
    /// are mapped character by character.
    pub fn normalize_graphemes(&self, text: &str) -> String {
        let trie = &self.normalizer.trie;
        let mut out = String::with_capacity(text.len());
        for grapheme in text.graphemes(true) {
            if grapheme.len() < 6
                && let Some(replacement) =
                    shortest_prefix(trie, grapheme.as_bytes()).and_then(|v| self.replacement(v))
            {
                out.push_str(replacement);
                continue;
            }
            for (at, c) in grapheme.char_indices() {
                let part = &grapheme[at..at + c.len_utf8()];
                match shortest_prefix(trie, part.as_bytes()).and_then(|v| self.replacement(v)) {
                    Some(replacement) => out.push_str(replacement),
                    None => out.push_str(part),
                }
            }
        }
        out
    }

    /// The replacement string at `offset` of the map.
    fn replacement(&self, offset: u32) -> Option<&str> {
        let all = &self.normalizer.replacements;
        let start = offset as usize;
        let end = all
            .get(start..)?
            .iter()
            .position(|&b| b == 0)
            .map_or(all.len(), |p| start + p);
        std::str::from_utf8(&all[start..end]).ok()
    }

    /// [`encode`](Self::encode) cut to `max_length` (keeping the final `</s>`) and padded with
    /// `<pad>`, as diffusers' FLUX pipelines call the tokenizer (`max_sequence_length` 512 for
    /// dev, 256 for schnell).
    ///
    /// # Errors
    ///
    /// When `max_length` is 0 or above [`MAX_LENGTH`], or the text is too long.
    pub fn encode_padded(&self, text: &str, max_length: usize) -> Result<Vec<u32>> {
        if max_length == 0 || max_length > MAX_LENGTH {
            return Err(Error::invalid(
                "max_length",
                max_length,
                format!("expected 1..={MAX_LENGTH}"),
            ));
        }
        let mut ids = self.encode(text)?;
        if ids.len() > max_length {
            ids.truncate(max_length - 1);
            ids.push(self.eos_id);
        }
        ids.resize(max_length, self.pad_id);
        Ok(ids)
    }

    /// The best segmentation of normalised text as `(surface, id)` pairs (SentencePiece's
    /// `unigram::Model::EncodeOptimized`); characters no piece starts with are `<unk>`.
    fn viterbi<'s>(&self, text: &'s str) -> Vec<(&'s str, u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f32,
            start: Option<usize>,
        }
        let size = text.len();
        let mut best = vec![
            Best {
                id: 0,
                score: 0.0,
                start: None,
            };
            size + 1
        ];
        let unk_score = self.min_score - UNK_PENALTY;
        let offer = |best: &mut [Best], end: usize, start: usize, id: u32, score: f32| {
            let target = &mut best[end];
            if target.start.is_none() || score > target.score {
                *target = Best {
                    id,
                    score,
                    start: Some(start),
                };
            }
        };
        for (start, c) in text.char_indices() {
            let here = best[start].score;
            let char_len = c.len_utf8();
            let mut single = false;
            let limit = (start + self.max_piece_bytes).min(size);
            for end in (start + 1..=limit).filter(|&e| text.is_char_boundary(e)) {
                let Some(&id) = self.lookup.get(&text[start..end]) else {
                    continue;
                };
                let piece = &self.pieces[id as usize];
                let score = match piece.kind {
                    PieceKind::Unused => continue,
                    PieceKind::UserDefined => (end - start) as f32 * self.max_score - 0.1,
                    _ => piece.score,
                };
                offer(&mut best, end, start, id, here + score);
                single |= end - start == char_len;
            }
            if !single {
                offer(
                    &mut best,
                    start + char_len,
                    start,
                    self.unk_id,
                    here + unk_score,
                );
            }
        }
        let mut out = Vec::new();
        let mut end = size;
        while end > 0 {
            let node = best[end];
            let start = node.start.expect("every character boundary is reached");
            out.push((&text[start..end], node.id));
            end = start;
        }
        out.reverse();
        out
    }
}

fn check_length(text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::invalid(
            "text",
            format!("{} bytes", text.len()),
            format!("expected at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The shortest key of a Darts-clone double array that prefixes `key`: its value.
fn shortest_prefix(units: &[u32], key: &[u8]) -> Option<u32> {
    prefix_search(units, key, true).map(|(value, _)| value)
}

/// The longest key of a Darts-clone double array that prefixes `key`: its value and length.
fn longest_prefix(units: &[u32], key: &[u8]) -> Option<(u32, usize)> {
    prefix_search(units, key, false)
}

/// A key of a Darts-clone double array that prefixes `key` (the shortest with `first`, else the
/// longest): its value and length.
fn prefix_search(units: &[u32], key: &[u8], first: bool) -> Option<(u32, usize)> {
    let unit = |i: usize| units.get(i).copied();
    let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
    let has_leaf = |u: u32| (u >> 8) & 1 == 1;
    let label = |u: u32| u & ((1 << 31) | 0xFF);
    let value = |u: u32| u & ((1 << 31) - 1);
    let mut pos = offset(unit(0)?);
    let mut found = None;
    for (i, &byte) in key.iter().enumerate() {
        pos ^= byte as usize;
        let u = unit(pos)?;
        if label(u) != byte as u32 {
            break;
        }
        pos ^= offset(u);
        if has_leaf(u) {
            found = Some((value(unit(pos)?), i + 1));
            if first {
                break;
            }
        }
    }
    found
}

/// What this module reads of a `ModelProto`.
struct ModelProto {
    pieces: Vec<Piece>,
    model_type: u64,
    byte_fallback: bool,
    normalizer: Normalizer,
}

/// A protobuf field: number and value.
enum Field<'b> {
    Varint(u64),
    Bytes(&'b [u8]),
    Fixed32(u32),
    Fixed64,
}

/// Iterates over the fields of a protobuf message.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = std::result::Result<(u64, Field<'_>), String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let mut read = || -> std::result::Result<(u64, Field<'_>), String> {
            let key = varint(&mut buf)?;
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut buf)?),
                1 => {
                    take(&mut buf, 8)?;
                    Field::Fixed64
                }
                2 => {
                    let len = varint(&mut buf)? as usize;
                    Field::Bytes(take(&mut buf, len)?)
                }
                5 => {
                    let b = take(&mut buf, 4)?;
                    Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                t => return Err(format!("unsupported protobuf wire type {t}")),
            };
            Ok((key >> 3, field))
        };
        let item = read();
        if item.is_err() {
            buf = &[];
        }
        Some(item)
    })
}

fn varint(buf: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'b>(buf: &mut &'b [u8], len: usize) -> std::result::Result<&'b [u8], String> {
    if buf.len() < len {
        return Err(format!(
            "field of {len} bytes with {} bytes left",
            buf.len()
        ));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn parse_model(bytes: &[u8]) -> std::result::Result<ModelProto, String> {
    let mut model = ModelProto {
        pieces: Vec::new(),
        // proto2 defaults of TrainerSpec and NormalizerSpec.
        model_type: 1,
        byte_fallback: false,
        normalizer: Normalizer {
            trie: Vec::new(),
            replacements: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        },
    };
    for field in fields(bytes) {
        match field? {
            (1, Field::Bytes(b)) => model.pieces.push(parse_piece(b)?),
            (2, Field::Bytes(b)) => {
                for f in fields(b) {
                    match f? {
                        (3, Field::Varint(v)) => model.model_type = v,
                        (35, Field::Varint(v)) => model.byte_fallback = v != 0,
                        _ => {}
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let n = &mut model.normalizer;
                for f in fields(b) {
                    match f? {
                        (2, Field::Bytes(map)) => (n.trie, n.replacements) = parse_charsmap(map)?,
                        (3, Field::Varint(v)) => n.add_dummy_prefix = v != 0,
                        (4, Field::Varint(v)) => n.remove_extra_whitespaces = v != 0,
                        (5, Field::Varint(v)) => n.escape_whitespaces = v != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        return Err("the model has no pieces".into());
    }
    Ok(model)
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<Piece, String> {
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    for f in fields(bytes) {
        match f? {
            (1, Field::Bytes(b)) => {
                piece.text = String::from_utf8(b.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_string())?;
            }
            (2, Field::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => {
                piece.kind = match t {
                    1 => PieceKind::Normal,
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    t => return Err(format!("piece type {t} is not one of 1..=6")),
                };
            }
            _ => {}
        }
    }
    Ok(piece)
}

/// Splits a precompiled character map into its trie units and replacement strings.
fn parse_charsmap(blob: &[u8]) -> std::result::Result<(Vec<u32>, Vec<u8>), String> {
    // The identity normaliser stores an empty map.
    if blob.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut buf = blob;
    let size = take(&mut buf, 4)?;
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if !size.is_multiple_of(4) {
        return Err(format!("charsmap trie of {size} bytes is not whole units"));
    }
    let trie = take(&mut buf, size)?
        .chunks_exact(4)
        .map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
        .collect();
    Ok((trie, buf.to_vec()))
}
