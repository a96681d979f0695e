//! The client side of the end-user channel that needs a verified runtime: one request
//! through the channel without HTTP ([`client`]) and receipt checks ([`receipt`]). The
//! runtime is attested by [`crate::attested::attest_runtime`]; the channel's wire format
//! lives in `chrysalis_proto::channel`.

pub mod client;
pub mod receipt;
