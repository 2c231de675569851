//! The launcher binary as linked (scripts/link-cc, asked for by
//! build.rs): a static PIE, with no libc function left unbound.

use std::process::Command;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Nothing runs before `main` but the binary's own start code: no program
/// interpreter (ld.so), still position independent (ASLR kept).
#[test]
fn the_launcher_is_a_static_pie() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_swarmcell")).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF");
    const ET_DYN: u16 = 3;
    assert_eq!(u16_at(&elf, 16), ET_DYN, "not position independent");
    let (phoff, phentsize, phnum) = (u64_at(&elf, 32) as usize, u16_at(&elf, 54) as usize, u16_at(&elf, 56) as usize);
    let types: Vec<u32> = (0..phnum).map(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap())).collect();
    const PT_INTERP: u32 = 3;
    assert!(!types.contains(&PT_INTERP), "the launcher asks for a program interpreter: dynamically linked");
}

/// std declares some libc functions weak and checks them for NULL; a direct
/// call of ours to one (`statx` in `git::record`) shares that weak reference,
/// which a static link would leave NULL: a jump to address 0 at run time. The
/// linker wrapper binds every one libc defines; none may be left.
#[test]
fn no_libc_function_is_left_as_an_unbound_weak_reference() {
    let nm = |args: &[&str]| {
        let out = Command::new("nm").args(args).output().expect("nm (binutils) runs");
        assert!(out.status.success(), "nm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let weak: Vec<String> = nm(&[env!("CARGO_BIN_EXE_swarmcell")]).lines().filter_map(|l| l.trim().strip_prefix("w ").map(str::to_string)).collect();
    assert!(!weak.is_empty(), "the test binary is expected to keep its symbols (and std's weak references)");
    let libc_a = Command::new("cc").arg("-print-file-name=libc.a").output().unwrap();
    let libc_a = String::from_utf8(libc_a.stdout).unwrap();
    let functions: std::collections::HashSet<String> = nm(&["-g", "--defined-only", libc_a.trim()])
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "T" | "W" | "i", name] => Some(name.to_string()),
            _ => None,
        })
        .collect();
    let unbound: Vec<&String> = weak.iter().filter(|w| functions.contains(*w)).collect();
    assert!(unbound.is_empty(), "libc functions left NULL in the static launcher: {unbound:?}");
}
