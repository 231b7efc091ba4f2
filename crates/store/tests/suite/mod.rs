//! The behaviours the store promises, each as one backend-agnostic async test body.

pub mod cloud_access;
pub mod clusters;
pub mod ear;
pub mod principals;
pub mod private_endpoints;
pub mod replicas;
pub mod tenancy;
