//! # roam-core — auth, sessions, presence, messaging (not built yet)
//!
//! Will own authentication, sessions and presence, stored timelines, the edge link and the
//! business API. Nothing here works yet: the core issues fill this crate.
