//! Taking a filter program out of an eBPF ELF object (what `clang -O2 -target bpf -c` writes),
//! with the `object` crate.
//!
//! EVL's `evl_net_set_filter` installs the object's **first** program (libbpf's
//! `bpf_object__next_program(obj, NULL)`): the first executable section in section order, `.text`
//! only when there is no other (`.text` otherwise holds subprograms). Within a section, the
//! program is its first function (several functions may share a `SEC()` name).
//!
//! Relocations are refused: they mean maps, global data or calls to other functions, none of
//! which a filter needs or the user-space VM could honour.

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use super::FilterError;

/// The raw program of an object.
pub struct ObjectProgram {
    pub section: String,
    pub code: Vec<u8>,
    pub license: Option<String>,
}

/// The first program of the eBPF ELF object `bytes`.
pub fn first_program(bytes: &[u8]) -> Result<ObjectProgram, FilterError> {
    let file = object::File::parse(bytes)
        .map_err(|e| FilterError::invalid(format!("not an ELF object file: {e}")))?;
    if file.architecture() != object::Architecture::Bpf {
        return Err(FilterError::invalid(format!(
            "not an eBPF object (architecture {:?}; build it with clang -O2 -target bpf -c)",
            file.architecture()
        )));
    }
    if !file.is_little_endian() {
        return Err(FilterError::invalid(
            "big-endian eBPF object (build it with -target bpfel or bpf on this host)",
        ));
    }
    let executable: Vec<_> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text && s.size() > 0)
        .collect();
    let section = executable
        .iter()
        .find(|s| s.name().map(|n| n != ".text").unwrap_or(false))
        .or_else(|| executable.first())
        .ok_or_else(|| FilterError::invalid("the object holds no program"))?;
    let name = section.name().unwrap_or("?").to_string();
    if section.relocations().next().is_some() {
        return Err(FilterError::invalid(format!(
            "program in section {name} has relocations (maps, global data or calls to other \
             functions): a filter must be one self-contained function"
        )));
    }
    let data = section
        .data()
        .map_err(|e| FilterError::invalid(format!("section {name}: {e}")))?;
    // the first function of the section: the symbol at offset 0, with its size when known
    let len = file
        .symbols()
        .filter(|s| s.section_index() == Some(section.index()) && s.kind() == SymbolKind::Text)
        .find(|s| s.address() == 0 && s.size() > 0)
        .map(|s| s.size() as usize)
        .unwrap_or(data.len())
        .min(data.len());
    let license = file
        .section_by_name("license")
        .and_then(|s| s.data().ok())
        .map(|d| String::from_utf8_lossy(d.split(|&b| b == 0).next().unwrap_or(d)).into_owned())
        .filter(|s| !s.is_empty());
    Ok(ObjectProgram {
        section: name,
        code: data[..len].to_vec(),
        license,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_an_object() {
        let e = first_program(b"hello").err().unwrap();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("not an ELF"), "{}", e.message);
        assert!(first_program(&[]).is_err());
    }

    #[test]
    fn a_host_object_is_not_ebpf() {
        // this test binary itself is an ELF file for the host, not for BPF
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = first_program(&me).err().unwrap();
        assert!(e.message.contains("not an eBPF object"), "{}", e.message);
    }
}
