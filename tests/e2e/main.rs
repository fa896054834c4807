//! End-to-end tests: the real `pylon` binary, real upstream servers and real HTTP/TLS clients,

#![allow(unreachable_pub)]
//! all on OS-assigned loopback ports.

mod support;

mod acme;
mod cli;
mod keepalive;
mod kube;
mod kube_smoke;
mod lifecycle;
mod limits;
mod protocols;
mod proxy_protocol;
mod reload;
mod routing;
mod tls;
