//! Store URLs: which backend, and where.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// The forms [`StoreUrl`] accepts, as errors list them.
pub const ACCEPTED_URLS: &str = "sqlite://PATH (a file, created with its parent folders on first use; \
     sqlite:///abs/path for an absolute path), sqlite::memory:, \
     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (or postgresql://...), memory: (or memory://)";

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite database file.
    Sqlite { path: PathBuf },
    /// A SQLite database in memory (gone when the store closes).
    SqliteMemory,
    /// A PostgreSQL database; the URL is handed to the driver as it is.
    Postgres { url: String },
    /// The in-process store: tests and examples only.
    Memory,
}

impl StoreUrl {
    /// Which backend the URL names, for logs and figures.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } | Self::SqliteMemory => "sqlite",
            Self::Postgres { .. } => "postgres",
            Self::Memory => "memory",
        }
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.into(),
        accepted: ACCEPTED_URLS,
    }
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let trimmed = url.trim();
        if trimmed == "sqlite::memory:" || trimmed == "sqlite://:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if trimmed == "memory:" || trimmed == "memory://" {
            return Ok(Self::Memory);
        }
        if let Some(path) = trimmed.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid(url, "the sqlite url has no file path"));
            }
            if path.contains('?') {
                return Err(invalid(
                    url,
                    "sqlite urls take no options; the store sets WAL and its pragmas itself",
                ));
            }
            return Ok(Self::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            // Let the driver judge the rest; its error says what is wrong.
            return match sqlx::postgres::PgConnectOptions::from_str(trimmed) {
                Ok(_) => Ok(Self::Postgres {
                    url: trimmed.to_owned(),
                }),
                Err(e) => Err(invalid(url, e.to_string())),
            };
        }
        let reason = match trimmed.split_once(':') {
            Some((scheme, _)) => format!("unknown scheme {scheme:?}"),
            None => "no scheme".to_owned(),
        };
        Err(invalid(url, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms_parse() {
        let p = |s: &str| s.parse::<StoreUrl>().unwrap();
        assert_eq!(
            p("sqlite://data/loraflow.db"),
            StoreUrl::Sqlite {
                path: "data/loraflow.db".into()
            }
        );
        assert_eq!(
            p("sqlite:///var/lib/loraflow.db"),
            StoreUrl::Sqlite {
                path: "/var/lib/loraflow.db".into()
            }
        );
        assert_eq!(p("sqlite::memory:"), StoreUrl::SqliteMemory);
        assert_eq!(p("memory:"), StoreUrl::Memory);
        assert_eq!(p("memory://"), StoreUrl::Memory);
        assert!(matches!(
            p("postgres://postgres@127.0.0.1:5432/test"),
            StoreUrl::Postgres { .. }
        ));
        assert!(matches!(
            p("postgresql://u:p@db/x"),
            StoreUrl::Postgres { .. }
        ));
    }

    #[test]
    fn bad_urls_list_the_accepted_forms() {
        for bad in [
            "mysql://x/y",
            "loraflow.db",
            "sqlite://",
            "sqlite://x.db?mode=ro",
            "",
        ] {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            let Error::InvalidUrl { accepted, .. } = &err else {
                panic!("{bad}: {err:?}")
            };
            assert_eq!(*accepted, ACCEPTED_URLS);
            assert!(err.to_string().contains("sqlite::memory:"), "{err}");
        }
    }
}
