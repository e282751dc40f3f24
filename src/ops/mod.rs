//! The operations on cards and images beyond composing one: flashing devices, upgrading an
//! installed card in place, verifying a card against a build, inspecting any disk, checking
//! that a card stores what it claims.

pub mod backup;
pub mod build;
pub mod capacity;
pub mod cards;
pub mod expect;
pub mod flash;
pub mod flashlog;
pub mod inspect;
pub mod upgrade;
pub mod verify;
