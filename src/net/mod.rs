//! The one TLS port: connection preamble, frame codec, TLS, authorization, connections and
//! dispatch. Codecs (`preamble`, `frame`) are pure functions over byte slices.

pub mod acl;
pub mod addr;
pub mod conn;
pub mod errors;
pub mod frame;
pub mod preamble;
pub mod server;
pub mod tls;
pub mod write;
