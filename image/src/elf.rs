//! What a dynamically linked ELF file links: its `DT_NEEDED` names and `DT_SONAME`, read from
//! the `.dynamic` and `.dynstr` sections. `xtask image --gpu` follows them to put every
//! library the GPU runtime (and the driver libraries it opens) needs into the initramfs, and
//! nothing else.

use object::{Object, ObjectSection};

use crate::ImageError;

/// `DT_NEEDED`.
const DT_NEEDED: u64 = 1;
/// `DT_SONAME`.
const DT_SONAME: u64 = 14;

/// The dynamic-linking names of one ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED`, in file order.
    pub needed: Vec<String>,
    /// `DT_SONAME`, if any.
    pub soname: Option<String>,
    /// The `PT_INTERP` program interpreter, if any.
    pub interpreter: Option<String>,
}

/// Read the dynamic-linking names of a 64-bit little-endian ELF file. A static binary gives
/// an empty [`Dynamic`].
pub fn dynamic(name: &str, bytes: &[u8]) -> Result<Dynamic, ImageError> {
    let bad = |why: String| ImageError::Elf { file: name.to_owned(), why };
    let file = object::File::parse(bytes).map_err(|e| bad(format!("not an ELF file: {e}")))?;
    if !file.is_little_endian() || !file.is_64() {
        return Err(bad("not a 64-bit little-endian ELF file".into()));
    }
    let section = |n: &str| -> Result<Option<&[u8]>, ImageError> {
        match file.section_by_name(n) {
            None => Ok(None),
            Some(s) => s.data().map(Some).map_err(|e| bad(format!("section {n}: {e}"))),
        }
    };
    let interpreter = section(".interp")?.map(|d| cstr(d, 0)).transpose().map_err(|w| bad(format!(".interp: {w}")))?;
    let (Some(dynamic), Some(dynstr)) = (section(".dynamic")?, section(".dynstr")?) else {
        return Ok(Dynamic { interpreter, ..Dynamic::default() });
    };
    let mut out = Dynamic { interpreter, ..Dynamic::default() };
    for entry in dynamic.chunks_exact(16) {
        let (tag, val) = entry.split_at(8);
        let tag = u64::from_le_bytes(tag.try_into().unwrap_or_default());
        let val = u64::from_le_bytes(val.try_into().unwrap_or_default());
        if tag == 0 {
            break;
        }
        if tag == DT_NEEDED || tag == DT_SONAME {
            let offset = usize::try_from(val).map_err(|_| bad(format!("string offset {val} out of range")))?;
            let s = cstr(dynstr, offset).map_err(|w| bad(format!(".dynstr: {w}")))?;
            if tag == DT_NEEDED { out.needed.push(s) } else { out.soname = Some(s) }
        }
    }
    Ok(out)
}

/// The NUL-terminated UTF-8 string at `offset`.
fn cstr(data: &[u8], offset: usize) -> Result<String, String> {
    let rest = data.get(offset..).ok_or_else(|| format!("offset {offset} past the end ({} bytes)", data.len()))?;
    let end = rest.iter().position(|b| *b == 0).ok_or_else(|| format!("string at {offset} is not terminated"))?;
    String::from_utf8(rest[..end].to_vec()).map_err(|_| format!("string at {offset} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_needed_libraries_of_a_system_binary() {
        // Every Debian system has /bin/ls, dynamically linked against libc.
        let bytes = std::fs::read("/bin/ls").unwrap_or_default();
        let d = dynamic("ls", &bytes).unwrap();
        assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{d:?}");
        assert_eq!(d.interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn a_library_names_itself() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        assert_eq!(dynamic("libc", &libc).unwrap().soname.as_deref(), Some("libc.so.6"));
    }

    #[test]
    fn garbage_and_truncated_files_are_refused_by_name() {
        let e = dynamic("junk.so", b"not elf").unwrap_err().to_string();
        assert!(e.contains("junk.so"), "{e}");
        let ls = std::fs::read("/bin/ls").unwrap_or_default();
        for cut in [16, 64, 1000, ls.len() / 2] {
            // A cut file is refused or read without panicking; either way no panic.
            let _ = dynamic("ls", ls.get(..cut).unwrap_or_default());
        }
    }
}
