//! Simulated machine (being written).
