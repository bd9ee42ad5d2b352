//! The process's TLS crypto provider. loraflow builds rustls with ring only
//! (tonic, the webhook client and the S3 client share it), but a program
//! that embeds loraflow may compile in a second provider, and then rustls
//! cannot choose by itself and panics at the first TLS handshake.

/// Make ring the process-wide rustls provider, unless the program
/// embedding loraflow installed one already (that one stays).
pub fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
