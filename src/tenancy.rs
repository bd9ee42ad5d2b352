//! Which URIs a tenant may name. A job may read only its tenant's uploads,
//! `<artifact root>/datasets/<tenant>/...`, or a URI under a root that the
//! operator allowlists for that tenant (`allowed_roots` of the tenant in
//! `loraflow.toml`, or [`EngineBuilder::allowed_roots`](crate::engine::EngineBuilder::allowed_roots)
//! for embedded callers). Anything else is refused before anything is
//! listed, read or written.
//!
//! A URI is normalised before it is matched: `.` and `..` segments are
//! resolved (percent-encoded ones too), a segment that decodes to a path
//! separator or to nothing is refused, and the match is on whole path
//! segments (`/srv/data/studio/` does not cover `/srv/data/studio-2/`). A
//! `file://` URI that passes is then resolved on disk (symlinks followed,
//! by `stat` of its own components only: no directory is listed) and must
//! still be under the same root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use loraflow_core::ids::TenantId;
use loraflow_core::limits::quote;
use percent_encoding::percent_decode_str;
use url::Url;

/// The folder, under the artifact root, holding every tenant's uploads.
pub const DATASETS_DIR: &str = "datasets";

/// A URI as matched: scheme, authority and decoded path segments, with no
/// `.`, `..` or empty segments left.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    scheme: String,
    authority: String,
    segments: Vec<String>,
}

impl Location {
    fn starts_with(&self, root: &Location) -> bool {
        self.scheme == root.scheme
            && self.authority == root.authority
            && self.segments.len() >= root.segments.len()
            && self.segments[..root.segments.len()] == root.segments[..]
    }

    fn local_path(&self) -> Option<PathBuf> {
        (self.scheme == "file").then(|| {
            let mut p = PathBuf::from("/");
            p.extend(&self.segments);
            p
        })
    }
}

/// Why a URI cannot be matched at all.
fn parse(uri: &str) -> Result<Location, String> {
    let url = match Url::parse(uri) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) if uri.starts_with('/') => {
            Url::from_file_path(uri).map_err(|()| format!("{} is not a valid path", quote(uri)))?
        }
        Err(e) => {
            return Err(format!(
                "{} is not a URI ({e}); give file:///absolute/path/ or s3://bucket/prefix/",
                quote(uri)
            ));
        }
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{} has a query or fragment; a dataset URI names a folder only",
            quote(uri)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{} carries a user name or password; remove them",
            quote(uri)
        ));
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in url.path().split('/') {
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| format!("{} has a path segment that is not UTF-8", quote(uri)))?;
        match decoded.as_ref() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s if s.contains(['/', '\\', '\0']) => {
                return Err(format!(
                    "{} has a path segment that decodes to a separator ({}); write the path plainly",
                    quote(uri),
                    quote(raw)
                ));
            }
            s => segments.push(s.to_owned()),
        }
    }
    let host = url.host_str().unwrap_or_default();
    let authority = match (url.scheme(), host) {
        ("file", "localhost") => String::new(),
        (_, h) => match url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_owned(),
        },
    };
    Ok(Location {
        scheme: url.scheme().to_owned(),
        authority,
        segments,
    })
}

/// The deepest existing ancestor of `path`, resolved (symlinks followed),
/// with the rest appended. Only `stat`s the path's own components.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// A refused URI: why, as the field violation's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a URI that can be matched (malformed, a query, credentials).
    /// `INVALID_ARGUMENT`.
    Invalid(String),
    /// Outside everything the tenant may name. `PERMISSION_DENIED`.
    Denied(String),
}

/// The roots each tenant may name, besides its own uploads.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    artifact_root: Option<Location>,
    artifact_root_uri: String,
    allowed: HashMap<TenantId, Vec<(String, Location)>>,
}

impl Tenancy {
    /// Tenants' uploads live under `artifact_root`; `allowed` adds roots per
    /// tenant. A root that is not a URI is an error naming it.
    pub fn new(
        artifact_root: &str,
        allowed: &HashMap<TenantId, Vec<String>>,
    ) -> Result<Self, String> {
        let mut out = Self {
            artifact_root: parse(artifact_root).ok(),
            artifact_root_uri: artifact_root.to_owned(),
            allowed: HashMap::new(),
        };
        for (tenant, roots) in allowed {
            for root in roots {
                let loc = parse(root)
                    .map_err(|e| format!("auth.tenants: allowed root of tenant {tenant}: {e}"))?;
                if loc.segments.is_empty() && loc.authority.is_empty() {
                    return Err(format!(
                        "auth.tenants: allowed root {root:?} of tenant {tenant} is the whole filesystem; name a folder"
                    ));
                }
                out.allowed
                    .entry(tenant.clone())
                    .or_default()
                    .push((root.clone(), loc));
            }
        }
        Ok(out)
    }

    /// `<artifact root>/datasets/<tenant>`, when the tenant's name can be a
    /// path segment.
    fn uploads_of(&self, tenant: &TenantId) -> Option<Location> {
        let t = tenant.as_str();
        if t.is_empty() || t == "." || t == ".." || t.contains(['/', '\\', '\0']) {
            return None;
        }
        let mut root = self.artifact_root.clone()?;
        root.segments.push(DATASETS_DIR.to_owned());
        root.segments.push(t.to_owned());
        Some(root)
    }

    /// Where `tenant`'s uploads go: `<artifact root>/datasets/<tenant>/`;
    /// `None` when the tenant's name cannot be a path segment.
    pub fn uploads_uri(&self, tenant: &TenantId) -> Option<String> {
        self.uploads_of(tenant).map(|_| {
            format!(
                "{}/{DATASETS_DIR}/{tenant}/",
                self.artifact_root_uri.trim_end_matches('/')
            )
        })
    }

    /// The roots `tenant` may name, as configured.
    pub fn roots_of(&self, tenant: &TenantId) -> Vec<String> {
        let mut out: Vec<String> = self.uploads_uri(tenant).into_iter().collect();
        if let Some(roots) = self.allowed.get(tenant) {
            out.extend(roots.iter().map(|(r, _)| r.clone()));
        }
        out
    }

    /// Whether `tenant` may name `uri`. Reads nothing but, for a `file://`
    /// URI already inside one of the tenant's roots, the metadata of its own
    /// path components (to follow symlinks).
    pub fn check(&self, tenant: &TenantId, uri: &str) -> Result<(), Refusal> {
        let loc = parse(uri).map_err(Refusal::Invalid)?;
        let roots: Vec<Location> = self
            .uploads_of(tenant)
            .into_iter()
            .chain(
                self.allowed
                    .get(tenant)
                    .into_iter()
                    .flatten()
                    .map(|(_, l)| l.clone()),
            )
            .collect();
        let denied = || {
            let allowed = self.roots_of(tenant);
            Refusal::Denied(format!(
                "tenant {tenant} may not read {}; it may name its own uploads{} ({}). Upload the folder with `loraflow submit --dataset <folder>`, or ask the operator to allow the root",
                quote(uri),
                if allowed.len() > 1 {
                    " or its allowed roots"
                } else {
                    ""
                },
                if allowed.is_empty() {
                    "none configured".to_owned()
                } else {
                    allowed.join(", ")
                }
            ))
        };
        let Some(root) = roots.iter().find(|r| loc.starts_with(r)) else {
            return Err(denied());
        };
        if let (Some(path), Some(root_path)) = (loc.local_path(), root.local_path()) {
            let (real, real_root) = (resolve(&path), resolve(&root_path));
            if !real.starts_with(&real_root) {
                return Err(Refusal::Denied(format!(
                    "{} leads outside {} through a symbolic link (to {}); tenant {tenant} may not read it",
                    quote(uri),
                    root_path.display(),
                    quote(&real.display().to_string())
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenancy(root: &str) -> Tenancy {
        Tenancy::new(
            root,
            &HashMap::from([(
                TenantId::new("studio"),
                vec![
                    "file:///srv/data/studio/".to_owned(),
                    "s3://bucket/studio/".to_owned(),
                ],
            )]),
        )
        .unwrap()
    }

    fn denied(r: Result<(), Refusal>) -> bool {
        matches!(r, Err(Refusal::Denied(_)))
    }

    #[test]
    fn a_tenant_names_its_uploads_and_its_allowed_roots_only() {
        let t = tenancy("file:///var/lf/artifacts/");
        let studio = TenantId::new("studio");
        let other = TenantId::new("other");
        for ok in [
            "file:///var/lf/artifacts/datasets/studio/abc/",
            "/var/lf/artifacts/datasets/studio/abc",
            "file:///srv/data/studio/set1/",
            "file:///srv/data/studio/",
            "s3://bucket/studio/x/",
            "file://localhost/srv/data/studio/a/",
        ] {
            assert_eq!(t.check(&studio, ok), Ok(()), "{ok}");
        }
        for bad in [
            "file:///var/lf/artifacts/datasets/other/abc/",
            "file:///var/lf/artifacts/datasets/",
            "file:///etc/",
            "file:///root/",
            "file:///srv/data/studio-2/",
            "file:///srv/data/studio/../other/",
            "file:///srv/data/studio/%2e%2e/other/",
            "file:///var/lf/artifacts/datasets/studio/../other/x/",
            "s3://bucket/studio2/",
            "s3://other-bucket/studio/",
        ] {
            assert!(denied(t.check(&studio, bad)), "{bad}");
        }
        // Another tenant's uploads and roots are not its own.
        assert!(denied(
            t.check(&other, "file:///var/lf/artifacts/datasets/studio/abc/")
        ));
        assert!(denied(t.check(&other, "file:///srv/data/studio/set1/")));
        assert_eq!(
            t.check(&other, "file:///var/lf/artifacts/datasets/other/abc/"),
            Ok(())
        );
    }

    #[test]
    fn encoded_separators_and_odd_uris_are_invalid() {
        let t = tenancy("file:///var/lf/artifacts/");
        let studio = TenantId::new("studio");
        for bad in [
            "file:///var/lf/artifacts/datasets/studio/a%2F..%2F..%2Fother/",
            "file:///srv/data/studio/x?y=1",
            "relative/path",
        ] {
            assert!(
                matches!(t.check(&studio, bad), Err(Refusal::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_refusal_names_the_uri_and_the_roots() {
        let t = tenancy("file:///var/lf/artifacts/");
        let Err(Refusal::Denied(msg)) = t.check(&TenantId::new("studio"), "file:///etc/") else {
            panic!()
        };
        assert!(msg.contains("file:///etc/"), "{msg}");
        assert!(
            msg.contains("file:///var/lf/artifacts/datasets/studio/"),
            "{msg}"
        );
        assert!(msg.contains("s3://bucket/studio/"), "{msg}");
    }

    #[test]
    fn a_symlink_out_of_a_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        let mine = root.join("datasets/studio");
        std::fs::create_dir_all(&mine).unwrap();
        let outside = tmp.path().join("secret");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, mine.join("link")).unwrap();
        std::fs::create_dir_all(mine.join("real")).unwrap();
        let t = Tenancy::new(&format!("file://{}/", root.display()), &HashMap::new()).unwrap();
        let studio = TenantId::new("studio");
        assert_eq!(
            t.check(&studio, &format!("file://{}/real/", mine.display())),
            Ok(())
        );
        // Not yet uploaded: checked by its existing ancestors.
        assert_eq!(
            t.check(&studio, &format!("file://{}/new/", mine.display())),
            Ok(())
        );
        assert!(denied(
            t.check(&studio, &format!("file://{}/link/", mine.display()))
        ));
        assert!(denied(t.check(
            &studio,
            &format!("file://{}/link/deeper/", mine.display())
        )));
    }

    #[test]
    fn roots_must_be_folders() {
        let bad = HashMap::from([(TenantId::new("x"), vec!["file:///".to_owned()])]);
        assert!(Tenancy::new("file:///a/", &bad).is_err());
        let bad = HashMap::from([(TenantId::new("x"), vec!["not a uri".to_owned()])]);
        assert!(Tenancy::new("file:///a/", &bad).is_err());
    }
}
