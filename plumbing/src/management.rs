//! RabbitMQ's management HTTP API, for what the pipeline administers there: its
//! broker users, their permissions and virtual hosts. Every call is idempotent
//! (PUT creates or replaces, DELETE of what is gone succeeds).

use std::time::Duration;

// The OTLP exporter's reqwest (one reqwest per crate), used here asynchronously:
// https through rustls with the process's ring provider.
use reqwest_otlp::{self as reqwest, Method, StatusCode, Url, header::CONTENT_TYPE};
use serde_json::json;

use crate::{broker::Permissions, config::redact_url, tls::percent_decode};

/// Longest wait for one call.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the management API could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// The admin URL does not parse or has no credentials.
    #[error(
        "{url} is not a management API URL with the admin's credentials, such as \
         http://admin:password@127.0.0.1:15672: {reason}"
    )]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing answered over HTTP (the plugin is off, a wrong host or port).
    #[error(
        "the RabbitMQ management API at {url} does not answer (is the management plugin \
         enabled? `rabbitmq-plugins enable rabbitmq_management`)"
    )]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The API refused the admin's credentials.
    #[error(
        "the RabbitMQ management API at {url} refused the credentials of {user:?} \
         (401 {reason}): check the user and password in the admin URL, and that the user \
         has the administrator tag"
    )]
    Unauthorized {
        /// The URL, password hidden.
        url: String,
        /// The admin user.
        user: String,
        /// The API's reason.
        reason: String,
    },
    /// The API refused the call.
    #[error("the RabbitMQ management API refused {method} {path}: {status} {reason}")]
    Refused {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The response's status.
        status: StatusCode,
        /// The API's reason (its JSON body's `reason`, or the body).
        reason: String,
    },
}

/// A client of the management API, logged in as an administrator.
#[derive(Debug, Clone)]
pub struct Management {
    client: reqwest::Client,
    base: Url,
    user: String,
    password: String,
}

impl Management {
    /// A client for `admin_url`: the API's base URL with the admin's user and
    /// password, e.g. `https://admin:pw@b-1.mq.eu-west-1.amazonaws.com`.
    ///
    /// # Errors
    /// [`ManagementError::BadUrl`] when the URL does not parse or lacks credentials.
    pub fn new(admin_url: &str) -> Result<Self, ManagementError> {
        let bad = |reason: &str| ManagementError::BadUrl {
            url: redact_url(admin_url),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(admin_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("use http:// or https://"));
        }
        let user = percent_decode(base.username());
        let password = percent_decode(base.password().unwrap_or_default());
        if user.is_empty() || password.is_empty() {
            return Err(bad("it names no user and password"));
        }
        base.set_username("")
            .map_err(|()| bad("it cannot have credentials"))?;
        base.set_password(None)
            .map_err(|()| bad("it cannot have credentials"))?;
        // The same crypto provider as every other TLS connection of the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| bad(&format!("no HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            user,
            password,
        })
    }

    /// The admin's user name.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The admin's password.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The API's base URL, without credentials (safe to show).
    #[must_use]
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// Checks that the API answers and accepts the admin's credentials.
    ///
    /// # Errors
    /// [`ManagementError`]: unreachable, unauthorized, or refused.
    pub async fn check(&self) -> Result<(), ManagementError> {
        self.call(Method::GET, &["whoami"], None).await.map(drop)
    }

    /// Creates the virtual host `name` unless it exists.
    ///
    /// # Errors
    /// [`ManagementError`].
    pub async fn ensure_vhost(&self, name: &str) -> Result<(), ManagementError> {
        if self
            .call(Method::GET, &["vhosts", name], None)
            .await?
            .is_none()
        {
            self.call(Method::PUT, &["vhosts", name], Some(json!({})))
                .await?;
        }
        Ok(())
    }

    /// Deletes the virtual host `name` and everything in it (gone already is fine).
    ///
    /// # Errors
    /// [`ManagementError`].
    pub async fn delete_vhost(&self, name: &str) -> Result<(), ManagementError> {
        self.call(Method::DELETE, &["vhosts", name], None)
            .await
            .map(drop)
    }

    /// Creates the user `name`, or sets its password, with no tags (no access
    /// to the management UI or API).
    ///
    /// # Errors
    /// [`ManagementError`].
    pub async fn put_user(&self, name: &str, password: &str) -> Result<(), ManagementError> {
        let body = json!({ "password": password, "tags": "" });
        self.call(Method::PUT, &["users", name], Some(body))
            .await
            .map(drop)
    }

    /// Deletes the user `name` (gone already is fine).
    ///
    /// # Errors
    /// [`ManagementError`].
    pub async fn delete_user(&self, name: &str) -> Result<(), ManagementError> {
        self.call(Method::DELETE, &["users", name], None)
            .await
            .map(drop)
    }

    /// Sets (replaces) the permissions of `user` in `vhost`.
    ///
    /// # Errors
    /// [`ManagementError`], e.g. when the vhost or the user does not exist.
    pub async fn put_permissions(
        &self,
        vhost: &str,
        user: &str,
        permissions: &Permissions,
    ) -> Result<(), ManagementError> {
        let body = json!({
            "configure": permissions.configure,
            "write": permissions.write,
            "read": permissions.read,
        });
        self.call(Method::PUT, &["permissions", vhost, user], Some(body))
            .await
            .map(drop)
    }

    /// One call to `api/<segments>` (each segment percent-encoded: the default
    /// vhost `/` becomes `%2F`). `None` for a 404 answer to GET or DELETE.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<Option<String>, ManagementError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ManagementError::BadUrl {
                url: self.base.to_string(),
                reason: "it cannot have a path".to_owned(),
            })?
            .pop_if_empty()
            .push("api")
            .extend(segments);
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let unreachable = |source| ManagementError::Unreachable {
            url: self.base.to_string(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(Some(text));
        }
        if status == StatusCode::NOT_FOUND && matches!(method, Method::GET | Method::DELETE) {
            return Ok(None);
        }
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED {
            return Err(ManagementError::Unauthorized {
                url: self.base.to_string(),
                user: self.user.clone(),
                reason,
            });
        }
        Err(ManagementError::Refused {
            method,
            path: url.path().to_owned(),
            status,
            reason,
        })
    }
}
