//! Shared test helpers, one of each kind: running the binary and the oracle tools (`run`),
//! the skip guard for missing tools and privileges (`need`: a missing tool fails the test
//! with the package to install, unless SKIFF_FLASH_TEST_ALLOW_MISSING=1 opts out), the
//! refusal checker (`refuse`), loop devices and mounts (`loopdev`), fixtures and builds
//! (`images`), file trees (`files`), checks on upgraded cards (`upgraded`), the
//! pseudo-random generator (`prng`), whole SkiffOS images directories (`synth`), and where
//! files lie as the filesystems' own tools see it (`fsmap`).
#![allow(dead_code, unused_imports)]

pub mod files;
pub mod fsmap;
pub mod images;
pub mod loopdev;
pub mod need;
pub mod prng;
pub mod refuse;
pub mod run;
pub mod synth;
pub mod upgraded;

pub use files::*;
pub use fsmap::*;
pub use images::*;
pub use loopdev::*;
pub use need::*;
pub use prng::*;
pub use refuse::*;
pub use run::*;
pub use upgraded::*;
