//! The gateway's operator API (`/api/v1/…`, HTTP with the admin token) as the operator
//! commands use it: where the gateway is, the token, one request, and the gateway's error
//! message as the command's error.

use std::path::PathBuf;

use aa_cli::up::{ADMIN_TOKEN_ENV, admin_token_file, gateway_address_file};
use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::serve::DEFAULT_STATE_DIR;

/// How long an operator command waits for the gateway's whole answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the gateway is and how to prove to it that the caller is an operator.
#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The state directory of `aasm up` or `aasm gateway` (for its address and admin token).
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "AASM_STATE_DIR")]
    state_dir: PathBuf,
    /// The gateway's HTTP API, e.g. http://127.0.0.1:7391 (default: the address the gateway
    /// wrote in the state directory).
    #[arg(long, env = "AASM_API")]
    api: Option<String>,
    /// The admin token (default: `AASM_ADMIN_TOKEN`, else the state directory's admin.token).
    #[arg(long, env = ADMIN_TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
}

/// A gateway to call: `host:port` and the admin token.
#[derive(Debug)]
pub(crate) struct Api {
    authority: String,
    token: String,
    /// How long a request waits for its whole answer.
    timeout: std::time::Duration,
}

impl ApiArgs {
    /// Resolves the address and the token; nothing is dialled yet.
    pub(crate) fn api(&self) -> Result<Api> {
        let url = match &self.api {
            Some(url) => url.clone(),
            None => self.written_address()?,
        };
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| {
                anyhow!("API URL {url:?} must look like http://HOST:PORT (the API is plain HTTP)")
            })?;
        let token = match &self.token {
            Some(token) => token.trim().to_owned(),
            None => {
                let path = admin_token_file(&self.state_dir);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token at {} (pass --token or set {ADMIN_TOKEN_ENV})",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Api {
            authority: authority.to_owned(),
            token,
            timeout: ANSWER_TIMEOUT,
        })
    }

    fn written_address(&self) -> Result<String> {
        let path = gateway_address_file(&self.state_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no gateway address at {} (is a gateway running with this --state-dir? or pass --api)",
                path.display()
            )
        })?;
        let address: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        address["http"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{} has no \"http\" address", path.display()))
    }
}

impl Api {
    /// `GET path`, the answer read as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, the answer read as `T`.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.call(Method::POST, path, Some(body.to_string())).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T> {
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        if !status.is_success() {
            // The gateway says what was wrong as {"error": "..."}; say that, and nothing else.
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("the gateway answered {status}"));
            bail!("{message}");
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!("the gateway's answer to {method} {path} is not what was expected")
        })
    }

    /// One request and its whole answer, within the timeout: a gateway that takes
    /// the connection and never answers is unavailable, not waited on forever.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(self.unavailable(&format_args!("no answer within {:?}", self.timeout)))
            })
    }

    fn unavailable(&self, e: &dyn std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "the gateway at http://{} is unavailable: {e}",
            self.authority
        )
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let unavailable = |e: &dyn std::fmt::Display| self.unavailable(e);
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| {
                anyhow!("the admin token or the path holds characters HTTP cannot carry")
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// A path segment (an agent or approval id) made safe for a URL path.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_gateway_that_never_answers_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = Api {
            authority: listener.local_addr().unwrap().to_string(),
            token: "token".into(),
            timeout: std::time::Duration::from_millis(200),
        };
        // The connection is taken (the listener's backlog) and never answered.
        let err = crate::block_on(api.get::<serde_json::Value>("/v1/agents")).unwrap_err();
        assert!(
            err.to_string()
                .contains("unavailable: no answer within 200ms"),
            "{err}"
        );
        drop(listener);
    }
}
