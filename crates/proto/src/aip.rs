//! The Google API conventions the contract follows, as small checked helpers:
//! resource names (AIP-122), etags (AIP-154), request ids (AIP-155) and page
//! sizes (AIP-158).

use loraflow_core::ids::JobId;
use loraflow_core::validation::Violations;

use crate::convert::invalid;

/// The collection of jobs in resource names.
pub const JOBS: &str = "jobs";

/// Page size when a request leaves it 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: usize = 500;
/// Longest request id accepted: a UUID's 36 characters.
pub const MAX_REQUEST_ID_LEN: usize = 36;

/// `jobs/{job_id}`.
pub fn job_name(job_id: &JobId) -> String {
    format!("{JOBS}/{job_id}")
}

/// The job id of a resource name `jobs/{job_id}`.
pub fn parse_job_name(name: &str) -> Result<JobId, Violations> {
    match name.strip_prefix("jobs/") {
        Some(id) if !id.is_empty() && !id.contains('/') => job_id(id),
        _ => Err(invalid(format!(
            "{} is not a job name; expected jobs/{{job_id}}",
            loraflow_core::limits::quote(name)
        ))),
    }
}

/// Longest job id accepted. The service makes UUIDs (36 characters).
pub const MAX_JOB_ID_LEN: usize = 64;

/// Whether `c` may appear in a job id.
fn job_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A required job id field: at most [`MAX_JOB_ID_LEN`] letters, digits,
/// `-`, `_` and `.` (the service makes UUIDs). Anything else cannot name a
/// job, so it is refused rather than looked up.
pub fn job_id(id: &str) -> Result<JobId, Violations> {
    if id.trim().is_empty() {
        Err(invalid("required; give the job's id"))
    } else if id.chars().count() > MAX_JOB_ID_LEN || !id.chars().all(job_id_char) {
        Err(invalid(format!(
            "{} is not a job id: job ids are at most {MAX_JOB_ID_LEN} ASCII letters, digits, '-', '_' or '.' (the service gives jobs UUIDs)",
            loraflow_core::limits::quote(id)
        )))
    } else {
        Ok(JobId::new(id))
    }
}

/// The etag of a job whose last event has `sequence`. Opaque to clients,
/// who only send it back.
pub fn etag(sequence: u64) -> String {
    sequence.to_string()
}

/// An etag sent by a client: empty means "no precondition".
pub fn parse_etag(etag: &str) -> Result<Option<u64>, Violations> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.parse().map(Some).map_err(|_| {
        invalid(format!(
            "{etag:?} is not an etag this service issued; send back the `etag` of a Job or leave it empty"
        ))
    })
}

/// A request id (AIP-155): empty means none; otherwise at most 36 printable
/// ASCII characters (a UUID).
pub fn request_id(id: &str) -> Result<Option<String>, Violations> {
    if id.is_empty() {
        Ok(None)
    } else if id.len() > MAX_REQUEST_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        Err(invalid(format!(
            "request id {} must be at most {MAX_REQUEST_ID_LEN} printable ASCII characters; use a UUID",
            loraflow_core::limits::quote(id)
        )))
    } else {
        Ok(Some(id.to_owned()))
    }
}

/// A page size (AIP-158): 0 is the default, oversized values are lowered,
/// negative ones refused.
pub fn page_size(requested: i32) -> Result<usize, Violations> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(invalid(format!(
            "page size {requested} is negative; use 0 for the default of {DEFAULT_PAGE_SIZE}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_round_trip() {
        let id = JobId::new("01J9ZK");
        assert_eq!(parse_job_name(&job_name(&id)), Ok(id));
        for bad in [
            "",
            "jobs/",
            "job/1",
            "jobs/a/b",
            "tenants/x/jobs/1",
            "jobs/a b",
        ] {
            assert!(parse_job_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_ids_are_short_plain_ascii() {
        let uuid = "0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11";
        assert_eq!(job_id(uuid), Ok(JobId::new(uuid)));
        assert_eq!(job_id("job-1.a_b"), Ok(JobId::new("job-1.a_b")));
        for bad in [
            "",
            " ",
            "not an id",
            "a/b",
            "é",
            "<script>",
            &"x".repeat(65),
        ] {
            let err = job_id(bad).expect_err(bad);
            let text = format!("{err:?}");
            assert!(
                bad.trim().is_empty() || text.contains("at most 64"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn etags_round_trip() {
        assert_eq!(parse_etag(&etag(42)), Ok(Some(42)));
        assert_eq!(parse_etag(""), Ok(None));
        assert!(parse_etag("W/\"42\"").is_err());
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(""), Ok(None));
        let uuid = "0191d2c4-9c5e-7b7a-8f00-3c2a1b0e9d11";
        assert_eq!(request_id(uuid), Ok(Some(uuid.to_owned())));
        assert!(request_id(&"x".repeat(37)).is_err());
        assert!(request_id("has space").is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(10), Ok(10));
        assert_eq!(page_size(100_000), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }
}
