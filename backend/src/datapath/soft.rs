//! Software offloads on delivery: a frame whose virtio header asks for something the receiver
//! did not negotiate (checksum completion without `GUEST_CSUM`, TSO/USO without the matching
//! `GUEST_*` feature) is read out of the sender's buffers (linearised), then its checksum is
//! completed or it is segmented ([`crate::net::gso`]), and the result is offered to the
//! destination as complete frames with plain headers.
//!
//! A segmented frame is delivered whole or not at all while the queue has room; if the queue
//! fills after some segments went through, the rest is dropped (`flood_full`) rather than
//! held back (a partial frame is never retried).

use crate::datapath::burst::Frame;
use crate::datapath::copy::{self, SegCursor};
use crate::datapath::{Data, Fate, FrameSet, FrameSrc};
use crate::net::{self, gso, Delivery, HdrWords, VirtioNetHdr};
use crate::stats::DropReason;
use pvnet_grant::{GrantReadGuard, RegionHint};
use pvnet_locks::family::RwFamily;

/// Complete frames, back to back in one buffer.
pub struct Pieces<'a> {
    buf: &'a [u8],
    at: &'a [(usize, usize)],
}

impl FrameSet for Pieces<'_> {
    fn count(&self) -> usize {
        self.at.len()
    }

    fn get(&self, i: usize) -> FrameSrc<'_> {
        let (a, n) = self.at.get(i).copied().unwrap_or_default();
        FrameSrc {
            hdr: HdrWords::PLAIN,
            len: n,
            data: Data::Local(self.buf.get(a..a + n).unwrap_or_default()),
        }
    }

    fn frame_len(&self, i: usize) -> usize {
        self.get(i).len
    }
}

/// The buffers of the software-offload path (reused from frame to frame).
#[derive(Default)]
pub struct Soft {
    lin: Vec<u8>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    at: Vec<(usize, usize)>,
    fates: Vec<Fate>,
}

impl Soft {
    /// Prepares frame `f` (its bytes in `data`) for a receiver with features `dfeat`,
    /// under the source's guard `g`.
    pub fn prepare<F: RwFamily>(
        &mut self,
        g: &GrantReadGuard<'_, F>,
        hint: &mut RegionHint,
        data: Data<'_>,
        f: &Frame,
        dfeat: u64,
    ) -> Result<(), DropReason> {
        let len = f.len as usize;
        match data {
            Data::Local(b) => {
                self.lin.clear();
                self.lin.extend_from_slice(b.get(..len).unwrap_or(b));
            }
            Data::Guest { head, segs, skip } => {
                let k = head.len().min(len);
                self.lin.resize(len, 0);
                self.lin[..k].copy_from_slice(&head[..k]);
                let mut cur = SegCursor::new(segs);
                if !cur.skip(skip + k)
                    || copy::read_into(g, hint, &mut cur, &mut self.lin[k..]).is_err()
                {
                    return Err(DropReason::NotGranted);
                }
            }
        }
        self.finish(&f.hdr, dfeat)
    }

    /// [`Soft::prepare`] for a frame in a local buffer (read from a tap).
    pub fn prepare_local(
        &mut self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        dfeat: u64,
    ) -> Result<(), DropReason> {
        self.lin.clear();
        self.lin.extend_from_slice(frame);
        self.finish(hdr, dfeat)
    }

    /// Completes the checksum of, or segments, the frame in `lin`.
    fn finish(&mut self, hdr: &VirtioNetHdr, dfeat: u64) -> Result<(), DropReason> {
        let len = self.lin.len();
        self.out.clear();
        self.at.clear();
        if gso::plan(hdr, dfeat) == Delivery::CompleteCsum {
            let (cs, co) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            net::complete_csum(&mut self.lin, cs, co).map_err(|_| DropReason::BadOffload)?;
            self.out.extend_from_slice(&self.lin);
            self.at.push((0, len));
        } else {
            if self.scratch.len() < gso::SCRATCH_LEN {
                self.scratch.resize(gso::SCRATCH_LEN, 0);
            }
            let (out, at) = (&mut self.out, &mut self.at);
            gso::segment_all(hdr, &self.lin, &mut self.scratch, |_, seg| {
                at.push((out.len(), seg.len()));
                out.extend_from_slice(seg);
            })
            .map_err(|_| DropReason::BadOffload)?;
        }
        self.fates.clear();
        self.fates.resize(self.at.len(), Fate::Pending);
        Ok(())
    }

    /// The prepared frames and room for their fates.
    pub fn output(&mut self) -> (Pieces<'_>, &mut [Fate]) {
        (
            Pieces {
                buf: &self.out,
                at: &self.at,
            },
            &mut self.fates,
        )
    }

    /// The fate of the whole frame from its pieces' fates.
    pub fn fold(fates: &[Fate]) -> Fate {
        let delivered = fates.iter().filter(|x| **x == Fate::Delivered).count();
        match (delivered, fates.iter().find(|x| **x != Fate::Delivered)) {
            (_, None) => Fate::Delivered,
            (0, Some(first)) => *first,
            (_, Some(_)) => Fate::Dropped(DropReason::FloodFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::burst::Route;
    use crate::datapath::{Seg, CHECKED};
    use crate::net::hdr::NEEDS_CSUM;
    use crate::net::testutil::{payload, udp_v4_frame};
    use pvnet_grant::GrantTable;
    use pvnet_locks::family::Percpu;
    use vm_memory::{Bytes, GuestAddress};

    /// A frame from guest buffers is prepared from its checked head and the rest of the
    /// buffers: the guest rewrote its source MAC after the check, and the receiver must
    /// not see that.
    #[test]
    fn a_guest_frame_is_prepared_with_its_checked_head() {
        let frame = udp_v4_frame(&payload(300), 1234);
        let mut rewritten = frame.clone();
        rewritten[6..12].copy_from_slice(&[0xee; 6]);
        let mem = pvnet_grant::memfd::guest_memory(&[(0, 0x10000)]).expect("memory");
        mem.write_slice(&rewritten, GuestAddress(0x1000))
            .expect("frame");
        let t = GrantTable::<Percpu>::new();
        t.replace_from_memory(&mem).expect("grants");
        let f = Frame {
            head: 0,
            seg0: 0,
            nsegs: 1,
            hdr: VirtioNetHdr {
                flags: NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..VirtioNetHdr::plain()
            },
            hl: 0,
            len: frame.len() as u32,
            key: 0,
            route: Route::Port(1),
        };
        let segs = [Seg {
            gpa: 0x1000,
            len: frame.len() as u32,
        }];
        let data = Data::Guest {
            head: &frame[..CHECKED],
            segs: &segs,
            skip: 0,
        };
        let mut soft = Soft::default();
        let g = t.read();
        soft.prepare(&g, &mut RegionHint::default(), data, &f, 0)
            .expect("prepared");
        let (set, _) = soft.output();
        assert_eq!(set.count(), 1);
        let out = match set.get(0).data {
            Data::Local(b) => b.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            out[..CHECKED],
            frame[..CHECKED],
            "the guest's rewritten MAC"
        );
        assert_eq!(out[CHECKED..40], frame[CHECKED..40]);
    }

    #[test]
    fn fates_of_pieces_fold_into_one() {
        use Fate::*;
        assert_eq!(Soft::fold(&[Delivered, Delivered]), Delivered);
        assert_eq!(Soft::fold(&[Full, Full]), Full);
        assert_eq!(
            Soft::fold(&[Delivered, Full]),
            Dropped(DropReason::FloodFull)
        );
        assert_eq!(
            Soft::fold(&[Dropped(DropReason::RxTooSmall), Full]),
            Dropped(DropReason::RxTooSmall)
        );
    }
}
