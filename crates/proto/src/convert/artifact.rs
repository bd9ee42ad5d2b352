//! Artifacts (URI + digest + size) and per-epoch training outputs.

use loraflow_core::artifact::{Artifact, ArtifactKind, EpochOutput, Sha256};
use loraflow_core::validation::Violations;

use super::{Fields, enum_conversions, enum_value, invalid};
use crate::pb::v1 as pb;

enum_conversions!(ArtifactKind, pb::ArtifactKind, "ARTIFACT_KIND_UNSPECIFIED", {
    Manifest <=> Manifest,
    Labels <=> Labels,
    Lora <=> Lora,
    Sample <=> Sample,
    Checkpoint <=> Checkpoint,
    Report <=> Report,
    Published <=> Published,
    Other <=> Other,
});

/// A SHA-256 digest from the wire: 64 hex digits, stored lower-case.
pub fn sha256(hex: &str) -> Result<Sha256, Violations> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Sha256(hex.to_ascii_lowercase()))
    } else if hex.is_empty() {
        Err(invalid(
            "required; give the SHA-256 of the bytes as 64 hex digits",
        ))
    } else {
        Err(invalid(format!(
            "{hex:?} is not a SHA-256 digest; expected 64 hex digits"
        )))
    }
}

/// An optional digest: empty means not given.
pub fn optional_sha256(hex: &str) -> Result<Option<Sha256>, Violations> {
    if hex.is_empty() {
        Ok(None)
    } else {
        sha256(hex).map(Some)
    }
}

impl From<Artifact> for pb::Artifact {
    fn from(a: Artifact) -> Self {
        Self {
            kind: pb::ArtifactKind::from(a.kind) as i32,
            name: a.name,
            uri: a.uri,
            sha256: a.sha256.0,
            size_bytes: a.size_bytes,
            epoch: a.epoch,
        }
    }
}

impl TryFrom<pb::Artifact> for Artifact {
    type Error = Violations;

    fn try_from(a: pb::Artifact) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let kind = f.take(
            "kind",
            enum_value::<pb::ArtifactKind, _>(a.kind, "ArtifactKind"),
        );
        let sha256 = f.take("sha256", sha256(&a.sha256));
        if a.name.trim().is_empty() {
            f.push("name", "required; name the file (`epoch-3.safetensors`)");
        }
        if a.uri.trim().is_empty() {
            f.push("uri", "required; say where the file is stored");
        }
        let (Some(kind), Some(sha256)) = (kind, sha256) else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            kind,
            name: a.name,
            uri: a.uri,
            sha256,
            size_bytes: a.size_bytes,
            epoch: a.epoch,
        })
    }
}

impl From<EpochOutput> for pb::EpochOutput {
    fn from(e: EpochOutput) -> Self {
        Self {
            epoch: e.epoch,
            lora: e.lora.map(Into::into),
            samples: e.samples.into_iter().map(Into::into).collect(),
            loss: e.loss,
            validation_loss: e.validation_loss,
            step: e.step,
            requested: e.requested,
        }
    }
}

impl TryFrom<pb::EpochOutput> for EpochOutput {
    type Error = Violations;

    fn try_from(e: pb::EpochOutput) -> Result<Self, Self::Error> {
        let mut f = Fields::default();
        let lora = match e.lora {
            Some(a) => f.take("lora", Artifact::try_from(a)).map(Some),
            None => Some(None),
        };
        let samples = f.each("samples", e.samples, Artifact::try_from);
        if let Some(loss) = e.loss.filter(|l| !l.is_finite()) {
            f.push("loss", format!("loss {loss} is not a finite number"));
        }
        if let Some(l) = e.validation_loss.filter(|l| !l.is_finite() || *l < 0.0) {
            f.push(
                "validation_loss",
                format!("validation_loss {l} must be a non-negative number"),
            );
        }
        if e.requested && e.step.is_none() {
            f.push(
                "step",
                "an output made on request must name the step it was made at",
            );
        }
        let Some(lora) = lora else {
            return Err(f.into_violations());
        };
        f.finish(Self {
            epoch: e.epoch,
            lora,
            samples,
            loss: e.loss,
            validation_loss: e.validation_loss,
            step: e.step,
            requested: e.requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loraflow_core::job::canned::{artifact, outputs_for};
    use loraflow_core::workflow::StepKind;

    const KINDS: [ArtifactKind; 8] = [
        ArtifactKind::Manifest,
        ArtifactKind::Labels,
        ArtifactKind::Lora,
        ArtifactKind::Sample,
        ArtifactKind::Checkpoint,
        ArtifactKind::Report,
        ArtifactKind::Published,
        ArtifactKind::Other,
    ];

    #[test]
    fn every_kind_round_trips() {
        for kind in KINDS {
            let a = artifact(kind, "x.bin", Some(3));
            assert_eq!(Artifact::try_from(pb::Artifact::from(a.clone())), Ok(a));
        }
    }

    #[test]
    fn canned_epoch_outputs_round_trip() {
        for kind in [StepKind::TRAIN, StepKind::SAMPLE] {
            let outputs = outputs_for(&StepKind::new(kind), "lease-1".into());
            assert!(!outputs.epochs.is_empty());
            for e in outputs.epochs {
                assert_eq!(
                    EpochOutput::try_from(pb::EpochOutput::from(e.clone())),
                    Ok(e)
                );
            }
        }
    }

    #[test]
    fn digests_are_checked_and_lower_cased() {
        let upper = "AB".repeat(32);
        assert_eq!(sha256(&upper), Ok(Sha256("ab".repeat(32))));
        assert!(sha256("abc").is_err());
        assert!(sha256(&"zz".repeat(32)).is_err());
        assert_eq!(optional_sha256(""), Ok(None));
    }

    #[test]
    fn bad_artifacts_list_every_field() {
        let wire = pb::Artifact {
            kind: 0,
            name: String::new(),
            uri: " ".into(),
            sha256: "nope".into(),
            size_bytes: 1,
            epoch: None,
        };
        let err = Artifact::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["kind", "sha256", "name", "uri"]);
    }

    #[test]
    fn unknown_kinds_are_named() {
        let mut wire = pb::Artifact::from(artifact(ArtifactKind::Lora, "a", None));
        wire.kind = 99;
        let err = Artifact::try_from(wire).unwrap_err();
        assert_eq!(err.0[0].field, "kind");
        assert!(err.0[0].description.contains("99"), "{err}");
    }

    #[test]
    fn epoch_paths_reach_into_samples() {
        let mut bad = pb::Artifact::from(artifact(ArtifactKind::Sample, "s.png", Some(1)));
        bad.sha256 = String::new();
        let wire = pb::EpochOutput {
            epoch: 1,
            lora: None,
            samples: vec![
                pb::Artifact::from(artifact(ArtifactKind::Sample, "ok.png", Some(1))),
                bad,
            ],
            loss: Some(f64::NAN),
            ..Default::default()
        };
        let err = EpochOutput::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["samples[1].sha256", "loss"]);
    }
}
