//! The scenarios with one file each (idle-conns, with its worker processes, has a folder of
//! its own: `../idle_conns/`).

pub(crate) mod chat;
pub(crate) mod frame_codec;
pub(crate) mod handshake;
pub(crate) mod ids;
pub(crate) mod push;
pub(crate) mod roam_switch;
pub(crate) mod room_fanout;
pub(crate) mod store;
