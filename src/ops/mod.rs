//! The operations on cards and images beyond composing one: flashing devices, upgrading an
//! installed card in place, verifying a card against a build, inspecting any disk.

pub mod build;
pub mod expect;
pub mod flash;
pub mod inspect;
pub mod upgrade;
pub mod verify;
