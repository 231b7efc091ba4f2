//! Creating credentials: API keys (public + private key) and service accounts (client id +
//! secret). Used by bootstrap and by `atrest` admin commands. The private key and the secret are
//! returned once and never stored in clear.
