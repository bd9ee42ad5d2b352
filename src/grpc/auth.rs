//! Bearer tokens. Each tenant token stands for its tenant, each executor
//! token for one executor. Tokens are kept as SHA-256 digests, so a lookup
//! compares digests rather than secrets.
//!
//! With no tokens configured at all the server runs open for local use:
//! every client is tenant `default` and every executor is trusted. It says so
//! loudly at start-up.

use std::collections::HashMap;

use loraflow_core::ids::{ExecutorId, TenantId};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::AuthConfig;

type TokenHash = [u8; 32];

fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Who a request comes from, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Tenant(TenantId),
    Executor(ExecutorId),
    /// Any executor (open mode, or the in-process one).
    AnyExecutor,
}

#[derive(Debug, Clone, Default)]
pub struct Auth {
    tenants: HashMap<TokenHash, TenantId>,
    executors: HashMap<TokenHash, ExecutorId>,
}

/// The tenant of an unauthenticated request when no tokens are configured.
pub const OPEN_TENANT: &str = "default";

impl Auth {
    pub fn from_config(config: &AuthConfig) -> Self {
        Self {
            tenants: config
                .tenants
                .iter()
                .map(|t| (hash(&t.token), TenantId::new(&t.tenant)))
                .collect(),
            executors: config
                .executors
                .iter()
                .map(|e| (hash(&e.token), ExecutorId::new(&e.executor)))
                .collect(),
        }
    }

    /// No tokens configured: the server is open.
    pub fn is_open(&self) -> bool {
        self.tenants.is_empty() && self.executors.is_empty()
    }

    fn bearer<T>(req: &Request<T>) -> Result<Option<&str>, Status> {
        Self::bearer_of(
            req.metadata()
                .get("authorization")
                .map(|v| v.to_str().map_err(|_| ())),
        )
    }

    /// The token of an `authorization` header's value (`Err` when the value
    /// is not text), whichever protocol carried it.
    fn bearer_of(value: Option<Result<&str, ()>>) -> Result<Option<&str>, Status> {
        let Some(value) = value else {
            return Ok(None);
        };
        let value =
            value.map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        value.strip_prefix("Bearer ").map(Some).ok_or_else(|| {
            Status::unauthenticated("the authorization header must read `Bearer <token>`")
        })
    }

    /// The tenant a client request acts for.
    pub fn tenant<T>(&self, req: &Request<T>) -> Result<TenantId, Status> {
        if self.is_open() {
            return Ok(TenantId::new(OPEN_TENANT));
        }
        self.tenant_of_token(Self::bearer(req)?)
    }

    /// The tenant an HTTP request acts for, from its `Authorization`
    /// header: the same tokens and refusals as over gRPC.
    pub fn tenant_of_headers(&self, headers: &http::HeaderMap) -> Result<TenantId, Status> {
        if self.is_open() {
            return Ok(TenantId::new(OPEN_TENANT));
        }
        let value = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().map_err(|_| ()));
        self.tenant_of_token(Self::bearer_of(value)?)
    }

    fn tenant_of_token(&self, token: Option<&str>) -> Result<TenantId, Status> {
        let token = token.ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token; send `authorization: Bearer <tenant token>`",
            )
        })?;
        self.tenants
            .get(&hash(token))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the bearer token is not valid for any tenant"))
    }

    /// The executor an executor request comes from.
    pub fn executor<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if self.is_open() {
            return Ok(Caller::AnyExecutor);
        }
        let token = Self::bearer(req)?.ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token; send `authorization: Bearer <executor token>`",
            )
        })?;
        self.executors
            .get(&hash(token))
            .cloned()
            .map(Caller::Executor)
            .ok_or_else(|| {
                Status::unauthenticated("the bearer token is not valid for any executor")
            })
    }
}

/// Refuse an executor request that names another executor than its token.
pub fn check_executor(caller: &Caller, claimed: &ExecutorId) -> Result<(), Status> {
    match caller {
        Caller::Executor(id) if id != claimed => Err(Status::permission_denied(format!(
            "this token belongs to executor {id}, not {claimed}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExecutorToken, TenantToken};

    fn auth() -> Auth {
        Auth::from_config(&AuthConfig {
            tenants: vec![TenantToken {
                tenant: "acme".into(),
                token: "t-acme".into(),
                webhook_secret: None,
                allowed_roots: vec![],
            }],
            executors: vec![ExecutorToken {
                executor: "gpu-1".into(),
                token: "e-gpu-1".into(),
            }],
        })
    }

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", t.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_map_to_their_tenant_or_executor() {
        let a = auth();
        assert_eq!(
            a.tenant(&req(Some("Bearer t-acme"))).unwrap(),
            TenantId::new("acme")
        );
        assert_eq!(
            a.executor(&req(Some("Bearer e-gpu-1"))).unwrap(),
            Caller::Executor("gpu-1".into())
        );
        // A tenant token is not an executor token and vice versa.
        assert_eq!(
            a.executor(&req(Some("Bearer t-acme"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&req(Some("Bearer e-gpu-1"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_unauthenticated() {
        let a = auth();
        for r in [req(None), req(Some("t-acme")), req(Some("Bearer nope"))] {
            assert_eq!(
                a.tenant(&r).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }

    #[test]
    fn an_executor_may_only_speak_for_itself() {
        let caller = Caller::Executor("gpu-1".into());
        assert!(check_executor(&caller, &"gpu-1".into()).is_ok());
        assert_eq!(
            check_executor(&caller, &"gpu-2".into()).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn no_tokens_means_open_mode() {
        let a = Auth::default();
        assert!(a.is_open());
        assert_eq!(a.tenant(&req(None)).unwrap(), TenantId::new(OPEN_TENANT));
    }
}
