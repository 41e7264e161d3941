//! The harness the simulator's HTTP tests share: a simulator on a port-0
//! listener and a client that checks every answer is JSON.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use trawler_sim::{SimConfig, Simulator};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A running simulator and a client to it.
pub struct Harness {
    pub addr: SocketAddr,
    pub sim: Simulator,
    pub client: HttpClient,
}

/// Serves a simulator built from `config` on a free loopback port.
pub async fn start(config: SimConfig) -> Harness {
    let sim = config.build().expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = sim.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Harness { addr, sim, client }
}

impl Harness {
    /// One request; asserts the answer is JSON and returns status and body.
    pub async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.expect("request");
        let status = response.status();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        self.call(Method::GET, path, "").await
    }
}
