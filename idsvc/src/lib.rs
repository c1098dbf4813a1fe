//! # roam-idsvc — ID generators (not built yet)
//!
//! Will own the segment-step allocator (Meituan Leaf's double buffer over the store),
//! Snowflake and Sonyflake with leased worker ids, and their gRPC/HTTP service. Nothing here
//! works yet: the ID service issue fills this crate.
