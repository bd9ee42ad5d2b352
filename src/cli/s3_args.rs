//! The S3 settings of `--artifacts s3://...` for the commands that open the
//! artifact store themselves (`worker`, `submit`): the same keys as the
//! server's `[artifacts]` section, read from a `loraflow.toml` given with
//! `--artifacts-config`, then from flags (a flag wins over the file, the
//! file over the `AWS_*` environment variables).

use std::path::PathBuf;

use clap::Args;
use loraflow::executors::{ArtifactStore, S3Options};

/// How `--artifacts` reaches an S3-compatible store.
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// A `loraflow.toml` whose `[artifacts]` section (endpoint, region,
    /// allow_http, access_key_id, secret_access_key, session_token) says
    /// how to reach the store; the server's file works as it is.
    #[arg(long, value_name = "TOML", env = "LORAFLOW_ARTIFACTS_CONFIG")]
    pub artifacts_config: Option<PathBuf>,
    /// The S3 API's base URL for S3-compatible servers (MinIO, Ceph, R2):
    /// `http://127.0.0.1:9000`. Unset: the file's, else `AWS_ENDPOINT_URL`,
    /// else AWS.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region. Unset: the file's, else `AWS_REGION`, else
    /// `us-east-1`.
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Allow an `http://` endpoint (a local server).
    #[arg(long)]
    pub s3_allow_http: bool,
    /// The access key id. Unset: the file's, else `AWS_ACCESS_KEY_ID`.
    #[arg(long, value_name = "ID")]
    pub s3_access_key_id: Option<String>,
    /// The secret key; prefer the environment variable to the flag (a flag
    /// shows in the process list). Unset: the file's, else
    /// `AWS_SECRET_ACCESS_KEY`.
    #[arg(
        long,
        value_name = "KEY",
        env = "LORAFLOW_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
}

impl S3Args {
    /// The settings: the file's `[artifacts]`, then the flags over it.
    pub fn options(&self) -> anyhow::Result<S3Options> {
        let mut o = match &self.artifacts_config {
            Some(path) => loraflow::config::Config::load(path)?.artifacts.s3(),
            None => S3Options::default(),
        };
        let flag = |f: &Option<String>, into: &mut Option<String>| {
            if f.is_some() {
                *into = f.clone();
            }
        };
        flag(&self.s3_endpoint, &mut o.endpoint);
        flag(&self.s3_region, &mut o.region);
        flag(&self.s3_access_key_id, &mut o.access_key_id);
        flag(&self.s3_secret_access_key, &mut o.secret_access_key);
        if self.s3_allow_http {
            o.allow_http = Some(true);
        }
        Ok(o)
    }

    /// Open the artifact store at `root` with these settings.
    pub fn open(&self, root: &str) -> anyhow::Result<ArtifactStore> {
        Ok(ArtifactStore::open_with(root, &self.options()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("loraflow.toml");
        std::fs::write(
            &path,
            "[artifacts]\nurl = \"s3://b/p\"\nendpoint = \"http://file:9000\"\nregion = \"eu-west-1\"\n\
             access_key_id = \"FILEKEY\"\nsecret_access_key = \"file-secret\"\n",
        )
        .unwrap();
        let args = S3Args {
            artifacts_config: Some(path),
            s3_endpoint: Some("http://flag:9000".into()),
            s3_allow_http: true,
            ..S3Args::default()
        };
        let o = args.options().unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("http://flag:9000"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.allow_http, Some(true));
        assert_eq!(o.access_key_id.as_deref(), Some("FILEKEY"));
        assert_eq!(o.secret_access_key.as_deref(), Some("file-secret"));
        assert_eq!(S3Args::default().options().unwrap(), S3Options::default());
    }
}
