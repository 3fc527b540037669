//! Access to request headers, independent of any HTTP library.

use alloc::vec::Vec;

/// The header names each scheme reads, as the senders spell them.
pub mod header_names {
    /// PayFlow, both forms.
    pub const PAYFLOW_SIGNATURE: &str = "X-PayFlow-Signature";
    /// Standard Webhooks message id.
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Standard Webhooks timestamp (unix seconds).
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// Standard Webhooks signatures, space separated `v1,<base64>`.
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
    /// Svix's names for the same three headers.
    pub const SVIX_ID: &str = "svix-id";
    /// Svix timestamp.
    pub const SVIX_TIMESTAMP: &str = "svix-timestamp";
    /// Svix signatures.
    pub const SVIX_SIGNATURE: &str = "svix-signature";
    /// Stripe.
    pub const STRIPE_SIGNATURE: &str = "Stripe-Signature";
    /// GitHub.
    pub const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
    /// Shopify.
    pub const SHOPIFY_SIGNATURE: &str = "X-Shopify-Hmac-Sha256";
}

/// Read access to a request's headers.
///
/// Implemented for slices and vectors of `(name, value)` pairs; the gateway implements it for
/// `http::HeaderMap` and the web build for `Headers` objects.
pub trait Headers {
    /// Every value of the header `name`, matched ASCII case-insensitively, in arrival order.
    fn get_all(&self, name: &str) -> Vec<&[u8]>;
}

impl<K: AsRef<str>, V: AsRef<[u8]>> Headers for [(K, V)] {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.iter().filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref()).collect()
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> Headers for Vec<(K, V)> {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.as_slice().get_all(name)
    }
}

impl<H: Headers + ?Sized> Headers for &H {
    fn get_all(&self, name: &str) -> Vec<&[u8]> {
        (**self).get_all(name)
    }
}
