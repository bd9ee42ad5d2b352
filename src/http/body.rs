//! Request bodies and query strings, checked before any call: JSON only, at
//! most the configured size, every field known. A refusal names each bad
//! field (`job.params.epochs`, `reason`) and what was wrong with it.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use loraflow_core::validation::Violations;
use serde::de::DeserializeOwned;

use super::error::HttpError;
use super::server::AppState;

/// A JSON body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// `application/json`, with or without parameters.
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, HttpError> {
        if !is_json(&req) {
            return Err(HttpError::field(
                "content-type",
                "the body must be JSON: send `content-type: application/json`",
            ));
        }
        let limit = state.options.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                HttpError::too_large(limit)
            } else {
                HttpError::field("body", format!("the body could not be read: {e}"))
            }
        })?;
        parse(&bytes, None).map(JsonBody)
    }
}

/// `path` under `prefix`, if any.
fn nested(prefix: Option<&str>, path: &str) -> String {
    match (prefix, path) {
        (None, ".") => "body".to_owned(),
        (Some(p), ".") => p.to_owned(),
        (None, path) => path.to_owned(),
        (Some(p), path) => format!("{p}.{path}"),
    }
}

/// `bytes` as a `T`: every unknown field, or the first field of the wrong
/// shape, or where the text stops being JSON. Field paths are nested under
/// `prefix` (`job` for the spec of a new job).
pub fn parse<T: DeserializeOwned>(bytes: &[u8], prefix: Option<&str>) -> Result<T, HttpError> {
    let mut unknown: Vec<String> = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = {
        let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignoring = serde_ignored::Deserializer::new(&mut de, &mut note);
        serde_path_to_error::deserialize::<_, T>(ignoring)
    };
    let value = match value {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(if inner.is_syntax() || inner.is_eof() {
                HttpError::field("body", format!("the body is not valid JSON: {inner}"))
            } else {
                HttpError::field(&nested(prefix, &path), inner.to_string())
            });
        }
    };
    if let Err(e) = de.end() {
        return Err(HttpError::field(
            "body",
            format!("the body is not valid JSON: {e}"),
        ));
    }
    if !unknown.is_empty() {
        let mut v = Violations::default();
        for path in unknown {
            let path = nested(prefix, &path);
            v.push(
                path.clone(),
                format!(
                    "unknown field `{path}`; see /v1/openapi.json for the fields of this request"
                ),
            );
        }
        return Err(HttpError::invalid(&v));
    }
    Ok(value)
}

/// Path parameters of type `T` (`job_id`, `(job_id, sha256)`): a segment
/// that cannot be one (not UTF-8 once decoded, the wrong type) is refused
/// naming its parameter, what was given and what is allowed.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for PathParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => HttpError::field(
                    key,
                    format!(
                        "the {key} in the path is not UTF-8 once percent-decoded; ids are plain ASCII"
                    ),
                ),
                ErrorKind::ParseErrorAtKey {
                    key,
                    value,
                    expected_type,
                } => HttpError::field(
                    key,
                    format!(
                        "{} is not a {key}: expected {expected_type}",
                        loraflow_core::limits::quote(value)
                    ),
                ),
                other => HttpError::field("path", format!("the path's parameters: {other}")),
            }),
            Err(other) => Err(HttpError::field("path", other.body_text())),
        }
    }
}

/// A query string's `name=value` pairs, decoded, refusing names not in
/// `allowed`.
pub fn query_pairs(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, HttpError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut v = Violations::default();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            v.push(
                k.clone(),
                format!(
                    "unknown query parameter `{k}`; allowed: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    if v.is_empty() {
        Ok(pairs)
    } else {
        Err(HttpError::invalid(&v))
    }
}

/// The last value of `name` among `pairs`.
pub fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An integer query parameter.
pub fn int<N: std::str::FromStr>(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<N>, HttpError> {
    match last(pairs, name) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| HttpError::field(name, format!("{name} must be an integer; got {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        a: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Outer {
        #[allow(dead_code)]
        inner: Inner,
        #[serde(default)]
        #[allow(dead_code)]
        name: String,
    }

    fn fields(e: &HttpError) -> Vec<String> {
        loraflow_proto::status::violations(e.status())
            .iter()
            .map(|v| v.field.clone())
            .collect()
    }

    #[test]
    fn every_unknown_field_is_named_with_its_path() {
        let e = parse::<Outer>(br#"{"inner": {"a": 1, "b": 2}, "c": 3}"#, None).unwrap_err();
        assert_eq!(fields(&e), ["inner.b", "c"]);
        let e = parse::<Outer>(br#"{"inner": {"a": 1, "b": 2}}"#, Some("job")).unwrap_err();
        assert_eq!(fields(&e), ["job.inner.b"]);
    }

    #[test]
    fn wrong_types_and_broken_json_name_where() {
        let e = parse::<Outer>(br#"{"inner": {"a": "one"}}"#, None).unwrap_err();
        assert_eq!(fields(&e), ["inner.a"]);
        for broken in [&b"{\"inner\": "[..], b"{\"name\": \"x", b"{} trailing", b""] {
            let e = parse::<Outer>(broken, None).unwrap_err();
            assert_eq!(
                fields(&e),
                ["body"],
                "{:?}",
                String::from_utf8_lossy(broken)
            );
        }
        assert!(parse::<Outer>(br#"{"inner": {"a": 1}}"#, None).is_ok());
    }

    #[test]
    fn query_parameters_are_checked_by_name() {
        let q = query_pairs(
            Some("state=InReview&label=a%3Db&label=c=d"),
            &["state", "label"],
        )
        .unwrap();
        assert_eq!(last(&q, "state"), Some("InReview"));
        assert_eq!(q.iter().filter(|(k, _)| k == "label").count(), 2);
        let e = query_pairs(Some("colour=red"), &["state"]).unwrap_err();
        assert_eq!(fields(&e), ["colour"]);
        let e = int::<i32>(&[("page_size".into(), "ten".into())], "page_size").unwrap_err();
        assert_eq!(fields(&e), ["page_size"]);
    }
}
