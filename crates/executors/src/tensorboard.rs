//! TensorBoard event files (`events.out.tfevents.*`), which `tensorboard --logdir` reads, as
//! kohya and ai-toolkit users expect beside their runs.
//!
//! An event file is a sequence of records, each framed as TFRecord frames them:
//!
//! ```text
//! u64 length (little-endian) · u32 masked CRC-32C of those 8 bytes · data · u32 masked CRC-32C of data
//! ```
//!
//! with the CRC masked as `((crc >> 15) | (crc << 17)) + 0xa282ead8`. Each record's data is an
//! `Event` protocol-buffer message; the first says `file_version: "brain.Event:2"`, the others
//! carry a `Summary` with scalars (`simple_value`) or PNG images. The messages below declare
//! the fields TensorBoard reads, with the field numbers of its `event.proto` and
//! `summary.proto`; the rest of those schemas is left out (unknown fields are skipped when
//! decoding, so files from other writers read back too).

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

/// One event of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// What an [`Event`] carries.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The file format version (the first event of a file).
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values logged at the step.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// Values logged at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values, each under its tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// One tagged value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The series name (`loss/current`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value.
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    pub kind: Option<ValueKind>,
}

/// The kinds of value written.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image.
    #[prost(message, tag = "4")]
    Image(SummaryImage),
}

/// An encoded image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryImage {
    /// Height in pixels.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Width in pixels.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3 for RGB.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// The version string of the first event.
pub const FILE_VERSION: &str = "brain.Event:2";

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames `data` as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Why an event file did not read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The file ends inside a record.
    #[error("record at byte {offset} is cut short")]
    Truncated {
        /// Where the record starts.
        offset: usize,
    },
    /// A checksum does not match.
    #[error("record at byte {offset}: the {what} checksum does not match")]
    Checksum {
        /// Where the record starts.
        offset: usize,
        /// `length` or `data`.
        what: &'static str,
    },
    /// A record is not an `Event`.
    #[error("record at byte {offset} is not an event: {reason}")]
    Decode {
        /// Where the record starts.
        offset: usize,
        /// The decoder's message.
        reason: String,
    },
}

/// The events of an event file's bytes, every checksum checked.
pub fn read_events(bytes: &[u8]) -> Result<Vec<Event>, RecordError> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let offset = at;
        let header = bytes
            .get(at..at + 12)
            .ok_or(RecordError::Truncated { offset })?;
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc(len_bytes).to_le_bytes() != len_crc {
            return Err(RecordError::Checksum {
                offset,
                what: "length",
            });
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let body = at + 12;
        let data = bytes
            .get(body..body + len)
            .ok_or(RecordError::Truncated { offset })?;
        let crc = bytes
            .get(body + len..body + len + 4)
            .ok_or(RecordError::Truncated { offset })?;
        if masked_crc(data).to_le_bytes() != crc {
            return Err(RecordError::Checksum {
                offset,
                what: "data",
            });
        }
        events.push(Event::decode(data).map_err(|e| RecordError::Decode {
            offset,
            reason: e.to_string(),
        })?);
        at = body + len + 4;
    }
    Ok(events)
}

/// Writes one event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.loraflow.<run>` (TensorBoard finds files by
    /// the `tfevents` in their name) and writes the version event.
    pub fn create(dir: &Path, run: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let wall = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.loraflow.{run}",
            wall as u64
        ));
        let out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut writer = Self { path, out };
        writer.write(&Event {
            wall_time: wall,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.to_string())),
        })?;
        Ok(writer)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        self.out.write_all(&frame(&event.encode_to_vec()))
    }

    /// Appends a scalar under `tag` at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f32) -> std::io::Result<()> {
        self.summary(step, tag, ValueKind::SimpleValue(value))
    }

    /// Appends a PNG image (`width` × `height`, RGB) under `tag` at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        step: u64,
        png: Vec<u8>,
        (width, height): (u32, u32),
    ) -> std::io::Result<()> {
        self.summary(
            step,
            tag,
            ValueKind::Image(SummaryImage {
                height: height as i32,
                width: width as i32,
                colorspace: 3,
                encoded_image_string: png,
            }),
        )
    }

    fn summary(&mut self, step: u64, tag: &str, kind: ValueKind) -> std::io::Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_string(),
                    kind: Some(kind),
                }],
            })),
        })
    }

    /// Flushes the file and returns its path.
    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        self.out.flush()?;
        Ok(self.path)
    }
}

/// The scalars of `events` as `(tag, step, value)`.
pub fn scalars(events: &[Event]) -> Vec<(String, i64, f32)> {
    events
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::Summary(s)) => Some((e.step, s)),
            _ => None,
        })
        .flat_map(|(step, s)| {
            s.value.iter().filter_map(move |v| match v.kind {
                Some(ValueKind::SimpleValue(x)) => Some((v.tag.clone(), step, x)),
                _ => None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_with_its_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), "train").unwrap();
        w.scalar("loss/current", 1, 0.5).unwrap();
        w.scalar("loss/current", 2, 0.25).unwrap();
        w.image("samples", 2, vec![1, 2, 3], (4, 5)).unwrap();
        let path = w.finish().unwrap();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tfevents")
        );
        let bytes = std::fs::read(&path).unwrap();
        let events = read_events(&bytes).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion(FILE_VERSION.to_string()))
        );
        assert_eq!(
            scalars(&events),
            vec![
                ("loss/current".to_string(), 1, 0.5),
                ("loss/current".to_string(), 2, 0.25)
            ]
        );
        // A flipped byte is caught by the data checksum.
        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 0xff;
        assert!(matches!(
            read_events(&bad),
            Err(RecordError::Checksum { what: "data", .. })
        ));
        assert!(matches!(
            read_events(&bytes[..bytes.len() - 2]),
            Err(RecordError::Truncated { .. })
        ));
    }

    #[test]
    // TFRecord's masking formula, written as TensorFlow writes it.
    #[allow(clippy::manual_rotate)]
    fn the_checksum_is_tensorflows_masked_crc32c() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value); masked as TFRecord does.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let crc: u32 = 0xe306_9283;
        assert_eq!(
            masked_crc(b"123456789"),
            ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
        );
        let framed = frame(b"abc");
        assert_eq!(framed.len(), 8 + 4 + 3 + 4);
        assert_eq!(&framed[..8], &3u64.to_le_bytes());
    }
}
