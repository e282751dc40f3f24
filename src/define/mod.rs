//! What to build: board definitions and layouts (shipped, user-supplied, or synthesized from
//! a genimage config or an L4T flash layout), and the SkiffOS workspace they may come from.
//! Nothing here reads an images directory's contents or writes anything.

pub mod board;
pub mod genimage;
pub mod l4t;
pub mod skiffos;
