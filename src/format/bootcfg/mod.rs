//! Boot configuration: the files a board's bootloader reads, and what is done to them
//! before they land on the boot partition (placeholder substitution, U-Boot script
//! images). Not the FAT partition that carries them, and not board definitions.

pub mod template;
pub mod uimage;
