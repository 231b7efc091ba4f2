//! HTTP Digest (RFC 7616 subset that Atlas speaks: MD5, qop=auth).
