//! Property tests: the grant table against a byte-by-byte reference model.
//!
//! Two tables (A and B) grant random, often adjacent, sometimes overlapping-refused ranges of
//! four memfd-backed mappings (A uses mappings 0 and 1, B uses 2 and 3; a table may alias one
//! mapping through several grants). Random revokes (partial ones trim or split grants), reads,
//! writes and grant copies run against both the real table and the model; every result
//! (including the exact error) and every byte of every mapping must match.

use proptest::prelude::*;
use pvnet_grant::{memfd, Access, GrantError, GrantTable, HostMapping};
use pvnet_locks::family::RwFamily;
use pvnet_locks::{with_rw_family, RwLockKind};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryBackend, MmapRegion, VolatileMemory};

const MAP: usize = 4096;
const SPACE: u64 = 16384;

#[derive(Clone, Debug)]
struct MEntry {
    start: u64,
    len: u64,
    backing: usize,
    offset: usize,
    access: Access,
}

#[derive(Default)]
struct MTable {
    entries: Vec<MEntry>,
}

impl MTable {
    fn lookup(&self, a: u64) -> Option<&MEntry> {
        self.entries
            .iter()
            .find(|e| e.start <= a && a - e.start < e.len)
    }

    fn grant(&mut self, e: MEntry) -> Result<(), GrantError> {
        if e.len == 0 {
            return Err(GrantError::ZeroLength { gpa: e.start });
        }
        let end = e
            .start
            .checked_add(e.len)
            .ok_or(GrantError::LengthOverflow {
                gpa: e.start,
                len: e.len,
            })?;
        if (e.offset as u64)
            .checked_add(e.len)
            .map_or(true, |x| x > MAP as u64)
        {
            return Err(GrantError::HostRange {
                offset: e.offset,
                len: e.len,
                size: MAP,
            });
        }
        if self.lookup(e.start).is_some() {
            return Err(GrantError::Overlap { gpa: e.start });
        }
        let next = self
            .entries
            .iter()
            .filter(|x| x.start > e.start && x.start < end)
            .map(|x| x.start)
            .min();
        if let Some(gpa) = next {
            return Err(GrantError::Overlap { gpa });
        }
        self.entries.push(e);
        Ok(())
    }

    fn revoke(&mut self, from: u64, len: u64) -> Result<u64, GrantError> {
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa: from });
        }
        let to = from
            .checked_add(len)
            .ok_or(GrantError::LengthOverflow { gpa: from, len })?;
        let mut out = Vec::new();
        let mut revoked = 0;
        for e in self.entries.drain(..) {
            let end = e.start + e.len;
            if end <= from || e.start >= to {
                out.push(e);
                continue;
            }
            revoked += end.min(to) - e.start.max(from);
            if e.start < from {
                out.push(MEntry {
                    len: from - e.start,
                    ..e.clone()
                });
            }
            if end > to {
                out.push(MEntry {
                    start: to,
                    len: end - to,
                    offset: e.offset + (to - e.start) as usize,
                    ..e.clone()
                });
            }
        }
        self.entries = out;
        Ok(revoked)
    }

    /// Byte-by-byte resolution: (mapping, offset) of every byte, or the first error.
    fn resolve(
        &self,
        gpa: u64,
        len: usize,
        need: Access,
    ) -> Result<Vec<(usize, usize)>, GrantError> {
        if len == 0 {
            return Err(GrantError::ZeroLength { gpa });
        }
        if gpa.checked_add(len as u64).is_none() {
            return Err(GrantError::LengthOverflow {
                gpa,
                len: len as u64,
            });
        }
        let mut out = Vec::with_capacity(len);
        let mut cur: Option<u64> = None;
        for i in 0..len as u64 {
            let a = gpa + i;
            let Some(e) = self.lookup(a) else {
                return Err(if i == 0 {
                    GrantError::NotGranted { gpa: a }
                } else {
                    GrantError::CrossesHole { gpa: a }
                });
            };
            if cur != Some(e.start) {
                cur = Some(e.start);
                if !e.access.allows(need) {
                    return Err(if e.access == Access::ReadOnly {
                        GrantError::ReadOnly { gpa: a }
                    } else {
                        GrantError::WriteOnly { gpa: a }
                    });
                }
            }
            out.push((e.backing, e.offset + (a - e.start) as usize));
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Grant {
        b: bool,
        gpa: u64,
        len: u64,
        backing: usize,
        offset: usize,
        access: u8,
    },
    Revoke {
        b: bool,
        gpa: u64,
        len: u64,
    },
    Read {
        b: bool,
        gpa: u64,
        len: usize,
    },
    Write {
        b: bool,
        gpa: u64,
        len: usize,
        seed: u8,
    },
    Copy {
        from_b: bool,
        src: u64,
        to_b: bool,
        dst: u64,
        len: usize,
    },
    RevokeAll {
        b: bool,
    },
    /// A grant placed relative to an existing one: right after (delta 0), overlapping by a
    /// few bytes (delta < 0) or leaving a small hole (delta > 0).
    RevokeNear {
        b: bool,
        which: usize,
        delta: i8,
        len: u64,
    },
    GrantNear {
        b: bool,
        which: usize,
        before: bool,
        delta: i8,
        len: u64,
        backing: usize,
        offset: usize,
        access: u8,
    },
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..SPACE / 512, 0u64..4).prop_map(|(k, j)| k * 512 + if j == 0 { 7 * k % 61 } else { 0 }),
        3 => 0u64..SPACE,
        1 => (0u64..4096).prop_map(|d| u64::MAX - d),
    ]
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => (1u64..9).prop_map(|k| k * 512),
        4 => 0u64..3000,
        1 => Just(u64::MAX),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), addr(), length(), 0usize..2, prop_oneof![Just(0usize), 0usize..MAP], 0u8..3)
            .prop_map(|(b, gpa, len, backing, offset, access)| Op::Grant { b, gpa, len, backing, offset, access }),
        1 => (any::<bool>(), addr(), length()).prop_map(|(b, gpa, len)| Op::Revoke { b, gpa, len }),
        3 => (any::<bool>(), addr(), 0usize..3000).prop_map(|(b, gpa, len)| Op::Read { b, gpa, len }),
        3 => (any::<bool>(), addr(), 0usize..3000, any::<u8>()).prop_map(|(b, gpa, len, seed)| Op::Write { b, gpa, len, seed }),
        4 => (any::<bool>(), addr(), any::<bool>(), addr(), 0usize..3000)
            .prop_map(|(from_b, src, to_b, dst, len)| Op::Copy { from_b, src, to_b, dst, len }),
        1 => any::<bool>().prop_map(|b| Op::RevokeAll { b }),
        4 => (any::<bool>(), (any::<usize>(), any::<bool>()), -2i8..3, length(), 0usize..2, prop_oneof![Just(0usize), 0usize..MAP], 0u8..3)
            .prop_map(|(b, (which, before), delta, len, backing, offset, access)| Op::GrantNear { b, which, before, delta, len, backing, offset, access }),
        1 => (any::<bool>(), any::<usize>(), -2i8..3, length())
            .prop_map(|(b, which, delta, len)| Op::RevokeNear { b, which, delta, len }),
    ]
}

struct World<F: RwFamily> {
    tables: [GrantTable<F>; 2],
    models: [MTable; 2],
    maps: Vec<Arc<MmapRegion<()>>>,
    mem: Vec<Vec<u8>>,
}

impl<F: RwFamily> World<F> {
    fn new() -> World<F> {
        let mut maps = Vec::new();
        let mut mem = Vec::new();
        for m in 0..4u8 {
            let gm = memfd::guest_memory::<()>(&[(0, MAP)]).unwrap();
            let map = gm.iter().next().unwrap().get_mmap();
            let bytes: Vec<u8> = (0..MAP).map(|i| (i as u8).wrapping_mul(31) ^ m).collect();
            map.get_slice(0, MAP).unwrap().copy_from(&bytes);
            maps.push(map);
            mem.push(bytes);
        }
        World {
            tables: [GrantTable::new(), GrantTable::new()],
            models: [MTable::default(), MTable::default()],
            maps,
            mem,
        }
    }

    fn check_memory(&self) {
        for (map, model) in self.maps.iter().zip(&self.mem) {
            let mut real = vec![0u8; MAP];
            map.get_slice(0, MAP).unwrap().copy_to(&mut real[..]);
            assert!(real == *model, "mapping contents differ from the model");
        }
    }

    fn check_grants(&self) {
        for (t, m) in self.tables.iter().zip(&self.models) {
            let real: Vec<(u64, u64, Access)> = t
                .grants()
                .iter()
                .map(|g| (g.gpa, g.len, g.access))
                .collect();
            let mut model: Vec<(u64, u64, Access)> = m
                .entries
                .iter()
                .map(|e| (e.start, e.len, e.access))
                .collect();
            model.sort_by_key(|x| x.0);
            assert_eq!(real, model);
        }
    }

    /// Just after (or, with `before`, `len` bytes before) an existing grant, plus `delta`.
    fn near(&self, b: bool, which: usize, before: bool, delta: i8, len: u64) -> u64 {
        let es = &self.models[b as usize].entries;
        let Some(e) = es.get(which % es.len().max(1)) else {
            return 0;
        };
        let base = if before {
            e.start.wrapping_sub(len)
        } else {
            e.start + e.len
        };
        base.wrapping_add_signed(delta as i64)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Grant {
                b,
                gpa,
                len,
                backing,
                offset,
                access,
            } => {
                let t = b as usize;
                let backing = 2 * t + backing;
                let access =
                    [Access::ReadOnly, Access::WriteOnly, Access::ReadWrite][access as usize];
                let host = HostMapping::new(self.maps[backing].clone(), offset);
                let real = self.tables[t]
                    .grant(GuestAddress(gpa), len, host, access)
                    .map(|_| ());
                let model = self.models[t].grant(MEntry {
                    start: gpa,
                    len,
                    backing,
                    offset,
                    access,
                });
                assert_eq!(real, model, "{op:?}");
            }
            Op::GrantNear {
                b,
                which,
                before,
                delta,
                len,
                backing,
                offset,
                access,
            } => {
                let gpa = self.near(b, which, before, delta, len);
                self.apply(&Op::Grant {
                    b,
                    gpa,
                    len,
                    backing,
                    offset,
                    access,
                });
            }
            Op::RevokeNear {
                b,
                which,
                delta,
                len,
            } => {
                let gpa = self.near(b, which, false, delta, len);
                self.apply(&Op::Revoke { b, gpa, len });
            }
            Op::Revoke { b, gpa, len } => {
                let t = b as usize;
                let real = self.tables[t].revoke(GuestAddress(gpa), len);
                assert_eq!(real, self.models[t].revoke(gpa, len), "{op:?}");
            }
            Op::RevokeAll { b } => {
                let t = b as usize;
                assert_eq!(self.tables[t].revoke_all(), self.models[t].entries.len());
                self.models[t].entries.clear();
            }
            Op::Read { b, gpa, len } => {
                let t = b as usize;
                let mut buf = vec![0xA5u8; len];
                let real = if len % 2 == 0 {
                    self.tables[t].copy_from_guest(GuestAddress(gpa), &mut buf)
                } else {
                    self.tables[t].read().read_into(GuestAddress(gpa), &mut buf)
                };
                match self.models[t].resolve(gpa, len, Access::ReadOnly) {
                    Ok(bytes) => {
                        assert_eq!(real, Ok(()), "{op:?}");
                        let want: Vec<u8> = bytes.iter().map(|&(m, o)| self.mem[m][o]).collect();
                        assert!(buf == want, "{op:?}: bytes differ");
                    }
                    Err(e) => {
                        assert_eq!(real, Err(e), "{op:?}");
                        assert!(
                            buf.iter().all(|&x| x == 0xA5),
                            "failed read wrote the buffer"
                        );
                    }
                }
            }
            Op::Write { b, gpa, len, seed } => {
                let t = b as usize;
                let buf: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                let real = if seed % 2 == 0 {
                    self.tables[t].copy_to_guest(GuestAddress(gpa), &buf)
                } else {
                    self.tables[t].read().write_from(GuestAddress(gpa), &buf)
                };
                let model = self.models[t].resolve(gpa, len, Access::WriteOnly);
                assert_eq!(real, model.as_ref().map(|_| ()).map_err(|e| *e), "{op:?}");
                if let Ok(bytes) = model {
                    for (&(m, o), &v) in bytes.iter().zip(&buf) {
                        self.mem[m][o] = v;
                    }
                }
            }
            Op::Copy {
                from_b,
                src,
                to_b,
                dst,
                len,
            } => {
                let (s, d) = (from_b as usize, to_b as usize);
                let real = if len % 2 == 0 {
                    self.tables[s].grant_copy_to(
                        GuestAddress(src),
                        &self.tables[d],
                        GuestAddress(dst),
                        len,
                    )
                } else {
                    let pair = pvnet_grant::read_pair(&self.tables[s], &self.tables[d]);
                    pair.copy(GuestAddress(src), GuestAddress(dst), len)
                };
                let model = self.models[s]
                    .resolve(src, len, Access::ReadOnly)
                    .and_then(|sb| Ok((sb, self.models[d].resolve(dst, len, Access::WriteOnly)?)));
                assert_eq!(real, model.as_ref().map(|_| ()).map_err(|e| *e), "{op:?}");
                if let Ok((sb, db)) = model {
                    let overlap = sb.iter().any(|x| db.contains(x));
                    if overlap {
                        // Copy within one guest over aliased bytes: only "nothing outside the
                        // destination changed" is specified. Take the destination from the
                        // real memory; check_memory compares everything else.
                        for &(m, o) in &db {
                            let mut v = [0u8];
                            self.maps[m].get_slice(o, 1).unwrap().copy_to(&mut v[..]);
                            self.mem[m][o] = v[0];
                        }
                    } else {
                        let vals: Vec<u8> = sb.iter().map(|&(m, o)| self.mem[m][o]).collect();
                        for (&(m, o), v) in db.iter().zip(vals) {
                            self.mem[m][o] = v;
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(ops in prop::collection::vec(op(), 1..60), k in 0usize..RwLockKind::ALL.len()) {
        with_rw_family!(RwLockKind::ALL[k], F => run_model::<F>(&ops));
    }
}

/// Applies `ops` to a world of family `F`, checking the tables against the model.
fn run_model<F: RwFamily>(ops: &[Op]) {
    let mut w = World::<F>::new();
    for op in ops {
        w.apply(op);
        w.check_grants();
    }
    w.check_memory();
}
