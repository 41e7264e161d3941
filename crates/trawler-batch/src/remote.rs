//! S3-compatible storage (`s3://bucket/prefix`) for URL lists and results,
//! through `object_store` (AWS S3, MinIO, moto, R2 …).
//!
//! * **Where and who**: the bucket and prefix come from the URL; the
//!   region and credentials from the standard AWS environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT`, …); the endpoint of
//!   an S3-compatible server from `--s3-endpoint` / `[s3] endpoint`, which
//!   may be `http://` (path-style requests then). Nothing here logs or
//!   prints a credential: messages name the bucket, key and endpoint only.
//! * **Input** ([`Remote::download_all`]): the objects under the prefix,
//!   in key order, are copied into a folder of the data folder (numbered so
//!   that the folder's name order is the key order) and then read as a
//!   local folder is: gzip or plain, text or NDJSON, the same input
//!   identity. A copy already there with the object's size is kept, so a
//!   restart does not download again.
//! * **Output** ([`Remote::put_file`]): one `PUT` per file, which S3 makes
//!   visible whole or not at all, so a reader never sees half a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// An S3 location that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// Not an `s3://bucket/prefix` URL, or the client could not be built.
    #[error("{url}: {message}")]
    Config {
        /// The URL as given.
        url: String,
        /// Why, and what to write instead.
        message: String,
    },
    /// A request failed (after object_store's own retries).
    #[error("{url}: {what}: {source}")]
    Store {
        /// The object or prefix, as `s3://bucket/key`.
        url: String,
        /// The step.
        what: &'static str,
        /// Why.
        source: object_store::Error,
    },
    /// A local file of a transfer.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether a list or output names S3 rather than a local path.
pub fn is_s3(url: &str) -> bool {
    url.starts_with("s3://")
}

/// A bucket and prefix on an S3-compatible store.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for Remote {
    // Not the client: its configuration holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote(s3://{}/{})", self.bucket, self.prefix)
    }
}

impl Remote {
    /// The location of `url` (`s3://bucket` or `s3://bucket/prefix`), with
    /// the AWS environment and `endpoint` (an S3-compatible server).
    pub fn new(url: &str, endpoint: Option<&str>) -> Result<Remote, RemoteError> {
        let bad = |message: String| RemoteError::Config {
            url: url.to_owned(),
            message,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3://bucket/prefix URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: write s3://bucket/prefix".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(bad(format!(
                    "endpoint {endpoint:?}: an http:// or https:// URL"
                )));
            }
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(Remote {
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// The key of `name` under the prefix.
    fn key(&self, name: &str) -> Key {
        Key::from(if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        })
    }

    fn url_of(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The objects under the prefix (`sub` below it, when given): key
    /// relative to the prefix and size, in key order.
    pub async fn list(&self, sub: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let base = if sub.is_empty() {
            Key::from(self.prefix.as_str())
        } else {
            self.key(sub)
        };
        let mut out: Vec<(String, u64)> = self
            .store
            .list(Some(&base))
            .map_ok(|m| {
                let key = m.location.to_string();
                let rel = key
                    .strip_prefix(&self.prefix)
                    .unwrap_or(&key)
                    .trim_start_matches('/')
                    .to_owned();
                (rel, m.size)
            })
            .try_collect()
            .await
            .map_err(|source| RemoteError::Store {
                url: self.url_of(&base),
                what: "listing",
                source,
            })?;
        out.sort();
        Ok(out)
    }

    /// Copies every object under the prefix into `dir` (see the module
    /// doc), returning how many.
    pub async fn download_all(&self, dir: &Path) -> Result<usize, RemoteError> {
        let io = |path: &Path, what| {
            let path = path.to_owned();
            move |source| RemoteError::Io { path, what, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir, "creating"))?;
        let objects: Vec<(String, u64)> = self
            .list("")
            .await?
            .into_iter()
            .filter(|(key, _)| {
                let name = key.rsplit('/').next().unwrap_or(key);
                !name.is_empty() && !name.starts_with('.')
            })
            .collect();
        if objects.is_empty() {
            return Err(RemoteError::Config {
                url: format!("s3://{}/{}", self.bucket, self.prefix),
                message: "no object under this prefix".into(),
            });
        }
        for (i, (rel, size)) in objects.iter().enumerate() {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let local = dir.join(format!("{i:06}-{name}"));
            if std::fs::metadata(&local).is_ok_and(|m| m.len() == *size) {
                continue;
            }
            let key = self.key(rel);
            let store = |source| RemoteError::Store {
                url: self.url_of(&key),
                what: "downloading",
                source,
            };
            let bytes = self
                .store
                .get(&key)
                .await
                .map_err(store)?
                .bytes()
                .await
                .map_err(store)?;
            let tmp = local.with_extension("part");
            std::fs::write(&tmp, &bytes).map_err(io(&tmp, "writing"))?;
            std::fs::rename(&tmp, &local).map_err(io(&local, "renaming"))?;
            tracing::info!(object = %self.url_of(&key), bytes = bytes.len(), "batch: input object copied");
        }
        Ok(objects.len())
    }

    /// Uploads the local file `from` as `name` under the prefix, in one
    /// `PUT` (visible whole or not at all).
    pub async fn put_file(&self, name: &str, from: &Path) -> Result<(), RemoteError> {
        let bytes = std::fs::read(from).map_err(|source| RemoteError::Io {
            path: from.to_owned(),
            what: "reading",
            source,
        })?;
        self.put(name, bytes).await
    }

    /// Writes `bytes` as `name` under the prefix, in one `PUT`.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let key = self.key(name);
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|source| RemoteError::Store {
                url: self.url_of(&key),
                what: "uploading",
                source,
            })?;
        Ok(())
    }

    /// The bytes of `name` under the prefix.
    pub async fn get(&self, name: &str) -> Result<bytes::Bytes, RemoteError> {
        let key = self.key(name);
        let store = |source| RemoteError::Store {
            url: self.url_of(&key),
            what: "downloading",
            source,
        };
        self.store
            .get(&key)
            .await
            .map_err(store)?
            .bytes()
            .await
            .map_err(store)
    }

    /// Whether `name` exists under the prefix.
    pub async fn exists(&self, name: &str) -> Result<bool, RemoteError> {
        let key = self.key(name);
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(RemoteError::Store {
                url: self.url_of(&key),
                what: "checking",
                source,
            }),
        }
    }

    /// `s3://bucket/prefix/name`, for messages.
    pub fn url(&self, name: &str) -> String {
        self.url_of(&self.key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let e = Remote::new("s3://", None).unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = Remote::new("s3://b/p", Some("localhost:9000"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoint"), "{e}");
        let r = Remote::new("s3://b/a/b/", Some("http://127.0.0.1:9")).unwrap();
        assert_eq!(r.url("x.parquet"), "s3://b/a/b/x.parquet");
        assert_eq!(format!("{r:?}"), "Remote(s3://b/a/b)");
    }
}
