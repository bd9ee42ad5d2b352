//! The process's TLS crypto provider. Two rustls providers are compiled in
//! (ring, which tonic and the webhook client use, and aws-lc-rs, which the
//! S3 client brings), so rustls cannot choose one by itself and panics at
//! the first TLS handshake. loraflow picks ring, as tonic does.

/// Make ring the process-wide rustls provider, unless the program
/// embedding loraflow installed one already (that one stays).
pub fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
