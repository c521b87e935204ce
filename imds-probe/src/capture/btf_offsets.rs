//! Byte offsets of kernel struct fields, read from the running kernel's BTF.
//!
//! The eBPF programs read a few fields of kernel structs (`task_struct`, `mm_struct`,
//! `linux_binprm`) directly. A C toolchain would emit CO-RE relocations for those accesses and
//! let the loader patch them for the running kernel, but our Rust eBPF toolchain emits none, and
//! distribution kernels differ in struct layout (config options, backports, randomized layouts).
//! So user space looks the offsets up here, in `/sys/kernel/btf/vmlinux`, and hands them to the
//! programs as globals before loading them.
//!
//! This is deliberately a small reader, not a BTF library: it indexes types once and answers
//! "byte offset of member `m` in struct `S`", including members reached through anonymous
//! structs and unions. Every read is bounds-checked, because the blob comes from outside the
//! process and a malformed one must give an error, never a panic.

use std::{fs, io, path::PathBuf};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// Read as a little-endian u16; a big-endian blob reads as 0x9feb and is refused.
const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// The header fields this reader needs; newer kernels may append more (hdr_len says so).
const HEADER_LEN: u32 = 24;
const TYPE_HEADER_LEN: usize = 12;
const MEMBER_LEN: usize = 12;
/// Bounds both anonymous-member nesting and modifier chains, so that a malformed blob whose
/// types refer to themselves ends in an error rather than a stack overflow or endless loop.
/// Real kernels nest anonymous members a handful of levels deep.
const MAX_DEPTH: u32 = 32;

/// BTF kinds (`BTF_KIND_*` in include/uapi/linux/btf.h).
mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not little-endian BTF (bad magic)")]
    BadMagic,
    #[error("unsupported BTF version {0}")]
    BadVersion(u8),
    #[error("BTF truncated in its {what}")]
    Truncated { what: &'static str },
    #[error("BTF type {type_id} has unknown kind {kind}")]
    UnknownKind { kind: u8, type_id: u32 },
    #[error("malformed BTF: {what}")]
    Malformed { what: &'static str },
    #[error("no struct or union named {0} in BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("{strukt}.{member} is a bitfield and has no byte offset")]
    Bitfield { strukt: String, member: String },
}

/// Parsed type and string sections of a BTF blob (only what offset lookups need).
pub struct Btf {
    /// Index `i` holds type id `i + 1`; id 0 is `void` and never stored.
    types: Vec<Type>,
    /// Members of every struct and union, each aggregate's run contiguous.
    members: Vec<Member>,
    /// (name_off, value) of every 32-bit enum's enumerators, each enum's run contiguous.
    enumerators: Vec<(u32, i32)>,
    strings: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Type {
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    name_off: u32,
    size_or_type: u32,
    /// STRUCT/UNION: index of the first member in `Btf::members`; ENUM: of the first
    /// enumerator in `Btf::enumerators`; INT: the encoding word (it tells old-style bitfields
    /// apart); otherwise unused.
    extra: u32,
}

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

impl Member {
    /// With `kind_flag` the top 8 bits hold the bitfield size, so they are not part of the offset.
    fn bit_offset(self, kind_flag: bool) -> u32 {
        if kind_flag {
            self.offset & 0x00ff_ffff
        } else {
            self.offset
        }
    }

    fn bitfield_size(self, kind_flag: bool) -> u32 {
        if kind_flag { self.offset >> 24 } else { 0 }
    }
}

enum Found {
    Bits(u32),
    Bitfield,
}

struct Sections<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let bytes = fs::read(VMLINUX).map_err(|source| BtfError::Io {
            path: PathBuf::from(VMLINUX),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let sections = split_sections(bytes)?;
        let mut btf = Self {
            // Kernel types average over 24 bytes with their trailing data, so this reserves
            // enough to never regrow while parsing vmlinux's ~100k types.
            types: Vec::with_capacity(sections.types.len() / 24),
            members: Vec::new(),
            enumerators: Vec::new(),
            strings: sections.strings.to_vec(),
        };
        let mut pos = 0;
        while pos < sections.types.len() {
            pos = btf.index_type(sections.types, pos)?;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in the struct (or union) named `strukt`. Members inside anonymous
    /// structs/unions are found too (e.g. mm_struct's fields sit in an anonymous struct on recent
    /// kernels), with their offsets added up. Errors for bitfield members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .find_struct(strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let names = || (strukt.to_owned(), member.to_owned());
        // Anonymous members have empty names; an empty query must not match them.
        let found = if member.is_empty() {
            None
        } else {
            self.find_member(id, member.as_bytes(), 0)?
        };
        match found {
            Some(Found::Bits(bits)) if bits % 8 == 0 => Ok(bits / 8),
            // Only bitfields can sit off a byte boundary.
            Some(Found::Bits(_) | Found::Bitfield) => {
                let (strukt, member) = names();
                Err(BtfError::Bitfield { strukt, member })
            }
            None => {
                let (strukt, member) = names();
                Err(BtfError::NoMember { strukt, member })
            }
        }
    }

    /// Offsets for a table of `(global, struct, member)`, as `(global, offset)`: the form the
    /// loader takes them in.
    pub fn member_offsets(
        &self,
        table: &[(&'static str, &str, &str)],
    ) -> Result<Vec<(&'static str, u32)>, BtfError> {
        table
            .iter()
            .map(|&(global, strukt, member)| {
                self.member_offset(strukt, member)
                    .map(|offset| (global, offset))
            })
            .collect()
    }

    /// Value of `variant` in the enum named `enumeration`: kernels renumber enums between
    /// versions (iov_iter's `iter_type` did), so programs are told the running kernel's values.
    pub fn enum_value(&self, enumeration: &str, variant: &str) -> Result<i32, BtfError> {
        let missing = || BtfError::NoMember {
            strukt: enumeration.to_owned(),
            member: variant.to_owned(),
        };
        let ty = self
            .types
            .iter()
            .find(|t| t.kind == kind::ENUM && self.name_is(t.name_off, enumeration.as_bytes()))
            .ok_or_else(|| BtfError::NoStruct(enumeration.to_owned()))?;
        let start = ty.extra as usize;
        let values = self
            .enumerators
            .get(start..start + usize::from(ty.vlen))
            .ok_or(BtfError::Malformed {
                what: "enumerator index out of range",
            })?;
        values
            .iter()
            .find(|(name_off, _)| self.name_is(*name_off, variant.as_bytes()))
            .map(|&(_, value)| value)
            .ok_or_else(missing)
    }

    /// Appends the enumerators in `data` (already bounds-checked); returns the index of the first.
    fn index_enumerators(&mut self, data: &[u8]) -> Result<u32, BtfError> {
        let first = u32::try_from(self.enumerators.len()).map_err(|_| BtfError::Malformed {
            what: "too many enumerators",
        })?;
        for chunk in data.chunks_exact(8) {
            self.enumerators.push((
                read_u32(chunk, 0, "enumerator")?,
                read_u32(chunk, 4, "enumerator")? as i32,
            ));
        }
        Ok(first)
    }

    /// Indexes the type starting at `pos` in the type section; returns where the next one starts.
    fn index_type(&mut self, section: &[u8], pos: usize) -> Result<usize, BtfError> {
        const WHAT: &str = "type section";
        let name_off = read_u32(section, pos, WHAT)?;
        let info = read_u32(section, pos + 4, WHAT)?;
        let size_or_type = read_u32(section, pos + 8, WHAT)?;
        let kind = ((info >> 24) & 0x1f) as u8;
        let vlen = (info & 0xffff) as u16;
        let kind_flag = info >> 31 == 1;
        let data_start = pos + TYPE_HEADER_LEN;
        let data_len = trailing_len(kind, usize::from(vlen)).ok_or(BtfError::UnknownKind {
            kind,
            type_id: self.next_type_id(),
        })?;
        let data_end = data_start + data_len;
        let data = section
            .get(data_start..data_end)
            .ok_or(BtfError::Truncated { what: WHAT })?;
        let extra = match kind {
            kind::INT => read_u32(data, 0, WHAT)?,
            kind::STRUCT | kind::UNION => self.index_members(data)?,
            kind::ENUM => self.index_enumerators(data)?,
            _ => 0,
        };
        self.types.push(Type {
            kind,
            kind_flag,
            vlen,
            name_off,
            size_or_type,
            extra,
        });
        Ok(data_end)
    }

    fn next_type_id(&self) -> u32 {
        u32::try_from(self.types.len() + 1).unwrap_or(u32::MAX)
    }

    /// Appends the members in `data` (already bounds-checked); returns the index of the first.
    fn index_members(&mut self, data: &[u8]) -> Result<u32, BtfError> {
        let first = u32::try_from(self.members.len()).map_err(|_| BtfError::Malformed {
            what: "too many members",
        })?;
        for chunk in data.chunks_exact(MEMBER_LEN) {
            self.members.push(Member {
                name_off: read_u32(chunk, 0, "member")?,
                type_id: read_u32(chunk, 4, "member")?,
                offset: read_u32(chunk, 8, "member")?,
            });
        }
        Ok(first)
    }

    fn ty(&self, id: u32) -> Result<Type, BtfError> {
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        index
            .and_then(|index| self.types.get(index))
            .copied()
            .ok_or(BtfError::Malformed {
                what: "type id out of range",
            })
    }

    fn members_of(&self, ty: Type) -> Result<&[Member], BtfError> {
        let start = ty.extra as usize;
        self.members
            .get(start..start + usize::from(ty.vlen))
            .ok_or(BtfError::Malformed {
                what: "member index out of range",
            })
    }

    /// Compares in place rather than extracting the string, since lookups scan every aggregate.
    fn name_is(&self, name_off: u32, name: &[u8]) -> bool {
        let start = name_off as usize;
        let end = start + name.len();
        self.strings.get(start..end) == Some(name) && self.strings.get(end) == Some(&0)
    }

    /// The first struct or union with this name and a non-zero size; vmlinux can also hold
    /// empty declarations under the same name, used only if nothing else matches.
    fn find_struct(&self, name: &[u8]) -> Option<u32> {
        let mut fallback = None;
        for (index, ty) in self.types.iter().enumerate() {
            let aggregate = matches!(ty.kind, kind::STRUCT | kind::UNION);
            if !aggregate || !self.name_is(ty.name_off, name) {
                continue;
            }
            let id = u32::try_from(index + 1).ok()?;
            if ty.size_or_type != 0 {
                return Some(id);
            }
            fallback = fallback.or(Some(id));
        }
        fallback
    }

    /// Searches the aggregate `id` in declaration order, descending into anonymous members;
    /// C requires names to be unique across those, so the first match is the only one.
    fn find_member(&self, id: u32, name: &[u8], depth: u32) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed {
                what: "anonymous members nested too deeply",
            });
        }
        let ty = self.ty(id)?;
        for &member in self.members_of(ty)? {
            let bits = member.bit_offset(ty.kind_flag);
            if self.is_anonymous(member) {
                if let Some(found) = self.find_in_anonymous(member, name, depth)? {
                    return add_offset(bits, found).map(Some);
                }
            } else if self.name_is(member.name_off, name) {
                let bitfield = member.bitfield_size(ty.kind_flag) != 0
                    || self.is_int_bitfield(member.type_id)?;
                return Ok(Some(if bitfield {
                    Found::Bitfield
                } else {
                    Found::Bits(bits)
                }));
            }
        }
        Ok(None)
    }

    fn is_anonymous(&self, member: Member) -> bool {
        member.name_off == 0 || self.name_is(member.name_off, b"")
    }

    /// Anonymous members that are not structs or unions (padding bitfields) hold no names.
    fn find_in_anonymous(
        &self,
        member: Member,
        name: &[u8],
        depth: u32,
    ) -> Result<Option<Found>, BtfError> {
        match self.strip_modifiers(member.type_id)? {
            Some((id, ty)) if matches!(ty.kind, kind::STRUCT | kind::UNION) => {
                self.find_member(id, name, depth + 1)
            }
            _ => Ok(None),
        }
    }

    /// Without `kind_flag`, BTF marks a bitfield only through its INT type, whose bit count
    /// or bit offset then differs from a whole integer's.
    fn is_int_bitfield(&self, type_id: u32) -> Result<bool, BtfError> {
        Ok(match self.strip_modifiers(type_id)? {
            Some((_, ty)) if ty.kind == kind::INT => {
                let bits = ty.extra & 0xff;
                let bit_offset = (ty.extra >> 16) & 0xff;
                bit_offset != 0 || u64::from(bits) != u64::from(ty.size_or_type) * 8
            }
            _ => false,
        })
    }

    /// Follows typedefs and qualifiers to the underlying type; `None` for `void`.
    fn strip_modifiers(&self, mut id: u32) -> Result<Option<(u32, Type)>, BtfError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(None);
            }
            let ty = self.ty(id)?;
            match ty.kind {
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(Some((id, ty))),
            }
        }
        Err(BtfError::Malformed {
            what: "typedef or qualifier chain too long",
        })
    }
}

fn add_offset(bits: u32, found: Found) -> Result<Found, BtfError> {
    match found {
        Found::Bits(inner) => bits
            .checked_add(inner)
            .map(Found::Bits)
            .ok_or(BtfError::Malformed {
                what: "member offset overflows",
            }),
        Found::Bitfield => Ok(Found::Bitfield),
    }
}

/// Bytes of kind-specific data after a type's 12-byte header; `None` for kinds this reader
/// does not know, whose size it must not guess.
fn trailing_len(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
        kind::ENUM | kind::FUNC_PROTO => vlen * 8,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

fn split_sections(bytes: &[u8]) -> Result<Sections<'_>, BtfError> {
    const WHAT: &str = "header";
    let magic = bytes.get(0..2).ok_or(BtfError::Truncated { what: WHAT })?;
    if magic != MAGIC.to_le_bytes() {
        return Err(BtfError::BadMagic);
    }
    let version = *bytes.get(2).ok_or(BtfError::Truncated { what: WHAT })?;
    if version != VERSION {
        return Err(BtfError::BadVersion(version));
    }
    let hdr_len = read_u32(bytes, 4, WHAT)?;
    if hdr_len < HEADER_LEN {
        return Err(BtfError::Malformed {
            what: "header shorter than 24 bytes",
        });
    }
    let types = section(
        bytes,
        hdr_len,
        read_u32(bytes, 8, WHAT)?,
        read_u32(bytes, 12, WHAT)?,
    );
    let strings = section(
        bytes,
        hdr_len,
        read_u32(bytes, 16, WHAT)?,
        read_u32(bytes, 20, WHAT)?,
    );
    Ok(Sections {
        types: types.ok_or(BtfError::Truncated {
            what: "type section",
        })?,
        strings: strings.ok_or(BtfError::Truncated {
            what: "string section",
        })?,
    })
}

/// Offsets in the header count from its end, whose length `hdr_len` gives.
fn section(bytes: &[u8], hdr_len: u32, off: u32, len: u32) -> Option<&[u8]> {
    let start = (hdr_len as usize).checked_add(off as usize)?;
    bytes.get(start..start.checked_add(len as usize)?)
}

fn read_u32(bytes: &[u8], pos: usize, what: &'static str) -> Result<u32, BtfError> {
    let truncated = BtfError::Truncated { what };
    let word = pos
        .checked_add(4)
        .and_then(|end| bytes.get(pos..end))
        .ok_or(truncated)?;
    <[u8; 4]>::try_from(word)
        .map(u32::from_le_bytes)
        .map_err(|_| BtfError::Truncated { what })
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Instant};

    use proptest::prelude::*;

    use super::*;

    /// Builds little-endian BTF blobs type by type, handing out ids in order as the kernel does.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(
            &mut self,
            name: &str,
            kind: u8,
            vlen: u32,
            kind_flag: bool,
            size_or_type: u32,
            data: &[u32],
        ) -> u32 {
            let name_off = self.name(name);
            let info = vlen | u32::from(kind) << 24 | u32::from(kind_flag) << 31;
            for word in [name_off, info, size_or_type].iter().chain(data) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            self.raw(name, kind::INT, 0, false, size, &[bits])
        }

        fn modifier(&mut self, kind: u8, name: &str, target: u32) -> u32 {
            self.raw(name, kind, 0, false, target, &[])
        }

        /// Members are (name, type, offset word); with `kind_flag` the word carries the
        /// bitfield size in its top byte.
        fn aggregate(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut data = Vec::new();
            for &(member, type_id, offset) in members {
                data.extend([self.name(member), type_id, offset]);
            }
            self.raw(name, kind, members.len() as u32, kind_flag, size, &data)
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&MAGIC.to_le_bytes());
            blob.extend([VERSION, 0]);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for word in [HEADER_LEN, 0, type_len, type_len, str_len] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// `outer` holds plain members, an anonymous union (at byte 8) around an anonymous struct
    /// reached through a typedef and a const, and a bitfield; every kind appears once so that
    /// the parser's size table is exercised.
    #[test]
    fn enum_values_of_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let ubuf = btf.enum_value("iter_type", "ITER_UBUF");
        let iovec = btf.enum_value("iter_type", "ITER_IOVEC");
        assert!(iovec.is_ok(), "{iovec:?}");
        if let (Ok(ubuf), Ok(iovec)) = (ubuf, iovec) {
            assert_ne!(ubuf, iovec);
        }
        assert!(matches!(
            btf.enum_value("iter_type", "NO_SUCH"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.enum_value("no_such_enum", "X"),
            Err(BtfError::NoStruct(_))
        ));
    }

    fn fixture() -> Builder {
        let mut b = Builder::new();
        let int = b.int("int", 4, 32);
        let long = b.int("long", 8, 64);
        b.raw("outer", kind::FWD, 0, false, 0, &[]);
        b.aggregate(kind::STRUCT, "outer", 0, false, &[]);
        let inner = b.aggregate(
            kind::STRUCT,
            "",
            16,
            false,
            &[("x", int, 0), ("y", long, 64)],
        );
        let inner_const = b.modifier(kind::CONST, "", inner);
        let inner_t = b.modifier(kind::TYPEDEF, "inner_t", inner_const);
        let union = b.aggregate(
            kind::UNION,
            "",
            16,
            false,
            &[("", inner_t, 0), ("z", long, 0)],
        );
        let outer = b.aggregate(
            kind::STRUCT,
            "outer",
            48,
            true,
            &[
                ("a", int, 0),
                ("b", int, 32),
                ("", union, 64),
                ("flags", int, 3 << 24 | 192),
                ("", int, 5 << 24 | 195),
                ("tail", long, 256),
            ],
        );
        let u3 = b.int("u3", 4, 3);
        b.aggregate(
            kind::STRUCT,
            "old_bits",
            8,
            false,
            &[("lo", u3, 0), ("hi", int, 32)],
        );
        b.aggregate(kind::UNION, "u", 8, false, &[("p", long, 0), ("q", int, 0)]);
        b.modifier(kind::PTR, "", outer);
        b.raw("", kind::ARRAY, 0, false, 0, &[int, int, 4]);
        b.raw("e", kind::ENUM, 2, false, 4, &[0, 0, 0, 1]);
        let proto = b.raw("", kind::FUNC_PROTO, 2, false, int, &[0, int, 0, long]);
        b.modifier(kind::FUNC, "f", proto);
        let var = b.raw("v", kind::VAR, 0, false, int, &[1]);
        b.raw(".data", kind::DATASEC, 1, false, 4, &[var, 0, 4]);
        b.raw("double", kind::FLOAT, 0, false, 8, &[]);
        b.raw("tag", kind::DECL_TAG, 0, false, outer, &[u32::MAX]);
        b.modifier(kind::TYPE_TAG, "user", int);
        b.modifier(kind::VOLATILE, "", int);
        b.modifier(kind::RESTRICT, "", int);
        b.raw("e64", kind::ENUM64, 1, false, 8, &[0, 1, 2]);
        b
    }

    fn parse_fixture() -> Btf {
        Btf::parse(&fixture().build()).expect("fixture parses")
    }

    #[test]
    fn plain_members() {
        let btf = parse_fixture();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "tail").unwrap(), 32);
        assert_eq!(btf.member_offset("old_bits", "hi").unwrap(), 4);
        assert_eq!(btf.member_offset("u", "q").unwrap(), 0);
    }

    #[test]
    fn members_of_anonymous_aggregates_add_up() {
        let btf = parse_fixture();
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 16);
    }

    #[test]
    fn missing_names() {
        let btf = parse_fixture();
        let err = btf.member_offset("outer", "nope").unwrap_err();
        assert!(matches!(err, BtfError::NoMember { ref strukt, ref member }
            if strukt == "outer" && member == "nope"));
        // An empty name must not match anonymous members.
        assert!(matches!(
            btf.member_offset("outer", ""),
            Err(BtfError::NoMember { .. })
        ));
        // A prefix of a real name is not that name.
        assert!(matches!(
            btf.member_offset("oute", "a"),
            Err(BtfError::NoStruct(name)) if name == "oute"
        ));
        // Only the members of struct/union types are searched, not typedef names.
        assert!(matches!(
            btf.member_offset("inner_t", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn bitfields_have_no_byte_offset() {
        let btf = parse_fixture();
        assert!(matches!(
            btf.member_offset("outer", "flags"),
            Err(BtfError::Bitfield { .. })
        ));
        // Without kind_flag, the bitfield shows only in its INT type.
        assert!(matches!(
            btf.member_offset("old_bits", "lo"),
            Err(BtfError::Bitfield { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = fixture().build();
        for cut in 0..blob.len() {
            assert!(Btf::parse(&blob[..cut]).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn truncated_type_section_is_reported_as_such() {
        let mut b = fixture();
        // Drop the last type's final word but keep the header's lengths consistent.
        b.types.truncate(b.types.len() - 4);
        assert!(matches!(
            Btf::parse(&b.build()),
            Err(BtfError::Truncated {
                what: "type section"
            })
        ));
    }

    #[test]
    fn bad_magic_and_version() {
        let mut blob = fixture().build();
        blob.swap(0, 1);
        assert!(matches!(Btf::parse(&blob), Err(BtfError::BadMagic)));
        assert!(matches!(Btf::parse(&[0; 64]), Err(BtfError::BadMagic)));
        let mut blob = fixture().build();
        blob[2] = 2;
        assert!(matches!(Btf::parse(&blob), Err(BtfError::BadVersion(2))));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut b = Builder::new();
        b.int("int", 4, 32);
        b.raw("what", 31, 0, false, 0, &[]);
        assert!(matches!(
            Btf::parse(&b.build()),
            Err(BtfError::UnknownKind {
                kind: 31,
                type_id: 2
            })
        ));
    }

    #[test]
    fn self_referencing_types_end_in_an_error() {
        let mut b = Builder::new();
        // Type 1 is an anonymous struct whose only member is itself; type 3 a typedef loop.
        b.aggregate(kind::STRUCT, "", 4, false, &[("", 1, 0)]);
        b.aggregate(kind::STRUCT, "loop", 4, false, &[("", 1, 0)]);
        b.modifier(kind::TYPEDEF, "t", 3);
        b.aggregate(kind::STRUCT, "spin", 4, false, &[("", 3, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(matches!(
            btf.member_offset("loop", "x"),
            Err(BtfError::Malformed { .. })
        ));
        assert!(matches!(
            btf.member_offset("spin", "x"),
            Err(BtfError::Malformed { .. })
        ));
    }

    const VMLINUX_FIELDS: [(&str, &str); 8] = [
        ("task_struct", "pid"),
        ("task_struct", "tgid"),
        ("task_struct", "real_parent"),
        ("task_struct", "mm"),
        ("task_struct", "start_time"),
        ("mm_struct", "arg_start"),
        ("mm_struct", "arg_end"),
        ("linux_binprm", "filename"),
    ];

    #[test]
    fn running_kernel_offsets() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: {VMLINUX} is absent on this machine");
            return;
        }
        let started = Instant::now();
        let btf = Btf::from_sys_fs().unwrap();
        let parsed = started.elapsed();
        let offsets: Vec<u32> = VMLINUX_FIELDS
            .iter()
            .map(|&(strukt, member)| btf.member_offset(strukt, member).unwrap())
            .collect();
        eprintln!(
            "parse {parsed:?}, parse + 8 lookups {:?}",
            started.elapsed()
        );
        for (&(strukt, member), offset) in VMLINUX_FIELDS.iter().zip(&offsets) {
            eprintln!("{strukt}.{member} = {offset}");
        }
        let task_fields = &offsets[..5];
        for (i, offset) in task_fields.iter().enumerate() {
            assert!(!task_fields[i + 1..].contains(offset), "{offsets:?}");
        }
        assert_eq!(offsets[1], offsets[0] + 4, "tgid follows pid");
        assert_eq!(offsets[6], offsets[5] + 8, "arg_end follows arg_start");
        cross_check(offsets[0]);
    }

    /// Compares task_struct.pid with an independent reader, when one is installed.
    fn cross_check(pid: u32) {
        match bpftool_pid_offset().or_else(pahole_pid_offset) {
            Some((tool, offset)) => {
                eprintln!("{tool} says task_struct.pid = {offset}");
                assert_eq!(offset, pid, "{tool} disagrees");
            }
            None => eprintln!("cross-check skipped: neither bpftool nor pahole works here"),
        }
    }

    fn run(program: &str, args: &[&str]) -> Option<String> {
        let output = Command::new(program).args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Raw dumps list `[id] STRUCT 'name' size=N vlen=M` followed by tab-indented members
    /// `'pid' type_id=T bits_offset=B`.
    fn bpftool_pid_offset() -> Option<(&'static str, u32)> {
        let dump = run(
            "bpftool",
            &["btf", "dump", "file", VMLINUX, "format", "raw"],
        )?;
        let mut lines = dump.lines();
        lines.find(|line| {
            line.contains(" STRUCT 'task_struct' size=") && !line.contains(" size=0 ")
        })?;
        let member = lines
            .take_while(|line| line.starts_with('\t'))
            .find(|line| line.trim_start().starts_with("'pid' "))?;
        let bits: u32 = member.split("bits_offset=").nth(1)?.trim().parse().ok()?;
        Some(("bpftool", bits / 8))
    }

    /// pahole prints `\tpid_t    pid;    /*  2456     4 */` for top-level members.
    fn pahole_pid_offset() -> Option<(&'static str, u32)> {
        let dump = run("pahole", &["-F", "btf", "-C", "task_struct", VMLINUX])?;
        let line = dump.lines().find(|line| {
            line.split(';')
                .next()
                .and_then(|decl| decl.split_whitespace().last())
                == Some("pid")
        })?;
        let offset = line
            .split("/*")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(("pahole", offset))
    }

    const FIXTURE_LOOKUPS: [(&str, &str); 6] = [
        ("outer", "a"),
        ("outer", "y"),
        ("outer", "flags"),
        ("old_bits", "lo"),
        ("u", "q"),
        ("outer", "nope"),
    ];

    fn header(type_len: u32, str_len: u32) -> Vec<u8> {
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend([VERSION, 0]);
        for word in [HEADER_LEN, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = Btf::parse(&bytes);
        }

        /// A valid header in front of random sections gets past the header checks, so the
        /// type parser and the lookups see the garbage.
        #[test]
        fn parse_never_panics_on_random_sections(
            types in proptest::collection::vec(any::<u8>(), 0..512),
            strings in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut blob = header(types.len() as u32, strings.len() as u32);
            blob.extend(&types);
            blob.extend(&strings);
            if let Ok(btf) = Btf::parse(&blob) {
                for (strukt, member) in FIXTURE_LOOKUPS {
                    let _ = btf.member_offset(strukt, member);
                }
            }
        }

        #[test]
        fn parse_never_panics_on_a_damaged_blob(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let mut blob = fixture().build();
            for (at, byte) in flips {
                let at = at.index(blob.len());
                blob[at] = byte;
            }
            let len = cut.index(blob.len() + 1);
            if let Ok(btf) = Btf::parse(&blob[..len]) {
                for (strukt, member) in FIXTURE_LOOKUPS {
                    let _ = btf.member_offset(strukt, member);
                }
            }
        }
    }
}
