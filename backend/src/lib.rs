//! placeholder

pub mod net;
