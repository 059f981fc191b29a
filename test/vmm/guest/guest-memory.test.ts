// Guest RAM in a memfd: what the VMM writes a device server sees through its own mapping of the fd (and
// back), reads and writes across mapping pieces, page digests that catch any one-byte change, zero pages,
// and prefaulting (with its speed printed, never asserted).
import assert from 'node:assert/strict';
import { fstatSync, readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { native } from '../../../src/native/addon.ts';
import {
  compareDigests,
  DIGEST_SIZE,
  differingPages,
  GuestMemory,
  PAGE_SIZE,
} from '../../../src/vmm/guest/guest-memory.ts';
import { collapseSkipReason } from '../../support/huge-pages.ts';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

describe('GuestMemory', () => {
  test('create: sizes, fd and the guards', () => {
    const m = GuestMemory.create(16 * PAGE_SIZE, 'gm-basic');
    try {
      assert.equal(m.size, 16 * PAGE_SIZE);
      assert.equal(m.pages, 16);
      assert.equal(native().fdSize(m.fd), 16 * PAGE_SIZE);
      assert.equal(m.page(15).byteLength, PAGE_SIZE);
      assert.throws(() => m.page(16), RangeError);
      assert.throws(() => m.page(-1), RangeError);
      assert.throws(() => m.read(15 * PAGE_SIZE, PAGE_SIZE + 1), RangeError);
      assert.throws(() => m.write(-1, new Uint8Array(1)), RangeError);
    } finally {
      m.close();
    }
    assert.throws(() => m.page(0), /closed/);
    m.close(); // idempotent
    for (const bad of [0, 4095, 4097, -4096, 1.5 * PAGE_SIZE, Number.NaN])
      assert.throws(() => GuestMemory.create(bad), RangeError, String(bad));
  });

  test("a device server's own mapping of the fd sees guest writes, and the guest sees the device's", () => {
    const m = GuestMemory.create(64 * PAGE_SIZE, 'gm-shared');
    // What a device server does with the fd from DMA_MAP: map it itself (here: from page 8 on).
    const devAb = native().mmap(m.fd, 8 * PAGE_SIZE, 32 * PAGE_SIZE, true);
    const dev = new Uint8Array(devAb);
    try {
      m.write(10 * PAGE_SIZE + 100, Uint8Array.of(1, 2, 3));
      assert.deepEqual([...dev.subarray(2 * PAGE_SIZE + 100, 2 * PAGE_SIZE + 103)], [1, 2, 3]);
      m.page(9)[7] = 0xee;
      assert.equal(dev[PAGE_SIZE + 7], 0xee);
      // "DMA" from the device side lands in guest RAM at once.
      dev.fill(0x5a, 5 * PAGE_SIZE, 6 * PAGE_SIZE);
      assert.ok(m.page(13).every((b) => b === 0x5a));
      assert.deepEqual([...m.read(13 * PAGE_SIZE - 2, 4)], [0, 0, 0x5a, 0x5a]);
      assert.equal(m.isZeroPage(13), false);
      assert.equal(m.isZeroPage(14), true);
    } finally {
      native().munmap(devAb);
      m.close();
    }
  });

  test('reads and writes cross mapping pieces; pages never straddle them', () => {
    // 64 KiB pieces (a test size) make seams cheap to reach.
    const m = GuestMemory.create(64 * PAGE_SIZE, 'gm-pieces', { pieceSize: 16 * PAGE_SIZE });
    const dev = new Uint8Array(native().mmap(m.fd, 0, m.size, true));
    try {
      const data = new Uint8Array(2 * 16 * PAGE_SIZE + 10).map((_, i) => (i * 7 + 1) & 0xff);
      m.write(16 * PAGE_SIZE - 5, data);
      assert.deepEqual(dev.subarray(16 * PAGE_SIZE - 5, 16 * PAGE_SIZE - 5 + data.length), data);
      assert.deepEqual(m.read(16 * PAGE_SIZE - 5, data.length), data);
      const into = new Uint8Array(PAGE_SIZE * 2);
      assert.equal(m.read(31 * PAGE_SIZE, into), into);
      assert.deepEqual(into, dev.subarray(31 * PAGE_SIZE, 33 * PAGE_SIZE));
      for (let i = 0; i < m.pages; i++) {
        const p = m.page(i);
        p[0] = i;
        assert.equal(dev[i * PAGE_SIZE], i, `page ${i} maps where the fd has it`);
      }
      // A run of pages as one view for I/O: as long as asked, but never across a piece or past the end.
      assert.equal(m.pageRun(3, 5).byteLength, 5 * PAGE_SIZE);
      assert.equal(m.pageRun(14, 8).byteLength, 2 * PAGE_SIZE, 'stops at the piece seam');
      assert.equal(m.pageRun(62, 8).byteLength, 2 * PAGE_SIZE, 'stops at the end of guest RAM');
      m.pageRun(20, 3).fill(0xee);
      assert.deepEqual(dev.subarray(20 * PAGE_SIZE, 23 * PAGE_SIZE), new Uint8Array(3 * PAGE_SIZE).fill(0xee));
      assert.throws(() => m.pageRun(64, 1), RangeError);
      assert.throws(() => GuestMemory.create(PAGE_SIZE, 'x', { pieceSize: 3 * PAGE_SIZE }), RangeError);
    } finally {
      native().munmap(dev.buffer as ArrayBuffer);
      m.close();
    }
  });

  test('a 5 GiB guest (sparse) is mapped in pieces, with pages at both ends reachable', () => {
    const size = 5 * GiB;
    const m = GuestMemory.create(size, 'gm-big');
    try {
      assert.equal(m.pages, size / PAGE_SIZE);
      const last = m.pages - 1;
      m.page(last).fill(0xab);
      m.page(0)[0] = 1;
      m.write(4 * GiB - 2, Uint8Array.of(9, 8, 7, 6)); // across the 4 GiB piece seam
      const dev = native().mmap(m.fd, 4 * GiB - PAGE_SIZE, 2 * PAGE_SIZE, false);
      assert.deepEqual([...new Uint8Array(dev, PAGE_SIZE - 2, 4)], [9, 8, 7, 6]);
      native().munmap(dev);
      assert.equal(m.read(size - 1, 1)[0], 0xab);
      const d = m.pageDigests({ first: last - 1, count: 2 });
      assert.equal(d.byteLength, 2 * DIGEST_SIZE);
      assert.notDeepEqual(d.subarray(0, 16), d.subarray(16));
    } finally {
      m.close();
    }
  });

  test('page digests: equal memory gives equal digests, and any single-byte change shows at its page', () => {
    const pages = 32;
    const a = GuestMemory.create(pages * PAGE_SIZE, 'gm-da');
    const b = GuestMemory.create(pages * PAGE_SIZE, 'gm-db');
    try {
      const fill = new Uint8Array(pages * PAGE_SIZE).map((_, i) => (i * 131 + (i >>> 12)) & 0xff);
      fill.fill(0, 5 * PAGE_SIZE, 7 * PAGE_SIZE); // two zero pages
      a.write(0, fill);
      b.write(0, fill);
      const da = a.pageDigests();
      assert.equal(da.byteLength, pages * DIGEST_SIZE);
      assert.deepEqual(da, b.pageDigests());
      assert.deepEqual(compareDigests(da, b.pageDigests()), {
        equal: true,
        pagesA: pages,
        pagesB: pages,
        differing: 0,
        first: [],
      });
      assert.deepEqual(da.subarray(5 * 16, 6 * 16), da.subarray(6 * 16, 7 * 16), 'zero pages');
      assert.deepEqual(a.pageDigest(3), da.subarray(3 * 16, 4 * 16));
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: pages * PAGE_SIZE - 1 }),
          fc.integer({ min: 1, max: 255 }),
          (offset, delta) => {
            const old = b.read(offset, 1)[0]!;
            b.write(offset, Uint8Array.of((old + delta) & 0xff));
            try {
              const db = b.pageDigests();
              const c = compareDigests(da, db);
              const page = Math.floor(offset / PAGE_SIZE);
              assert.equal(c.equal, false);
              assert.equal(c.differing, 1);
              assert.deepEqual(c.first, [page]);
              assert.deepEqual(differingPages(da, db), [page]);
              // A range digest agrees with the whole-memory one.
              assert.deepEqual(b.pageDigests(page, 1), db.subarray(page * 16, page * 16 + 16));
            } finally {
              b.write(offset, Uint8Array.of(old));
            }
          },
        ),
        { numRuns: 300 },
      );
      assert.deepEqual(b.pageDigests(), da, 'restored');
    } finally {
      a.close();
      b.close();
    }
  });

  test('page digests of never-written pages: the zero page digest, read from no page and allocating none', () => {
    const pages = 1000;
    const sparse = GuestMemory.create(pages * PAGE_SIZE, 'gm-ds', { pieceSize: 256 * PAGE_SIZE });
    const full = GuestMemory.create(pages * PAGE_SIZE, 'gm-df');
    try {
      const image = new Uint8Array(pages * PAGE_SIZE);
      for (const page of [3, 40, 41, 255, 256, 700, 999])
        image.fill(page & 0xff || 1, page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      for (const page of [3, 40, 41, 255, 256, 500, 700, 999])
        sparse.write(page * PAGE_SIZE, image.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE));
      full.write(0, image); // every page allocated: digests from reading every page
      const allocated = () => fstatSync(sparse.fd).blocks;
      const before = allocated();
      assert.equal(before * 512, 8 * PAGE_SIZE, 'eight pages written, page 500 with zeroes');
      const d = sparse.pageDigests();
      assert.equal(allocated(), before, 'no hole was allocated by reading it');
      assert.deepEqual(d, full.pageDigests());
      assert.deepEqual(
        sparse.pageDigests(33, 700),
        d.subarray(33 * DIGEST_SIZE, 733 * DIGEST_SIZE),
        'a range off the 32-page words',
      );
      assert.deepEqual(sparse.pageDigest(500), sparse.pageDigest(501), 'a written zero page and a hole');
      assert.equal(allocated(), before);
    } finally {
      sparse.close();
      full.close();
    }
  });

  test('compareDigests reports counts, the first pages and length differences', () => {
    const a = new Uint8Array(5000 * DIGEST_SIZE).map((_, i) => i & 0xff);
    const b = a.slice();
    for (const p of [3, 1500, 1501, 4999]) b[p * DIGEST_SIZE + 5]! ^= 1;
    assert.deepEqual(compareDigests(a, b, 3), {
      equal: false,
      pagesA: 5000,
      pagesB: 5000,
      differing: 4,
      first: [3, 1500, 1501],
    });
    const shorter = a.subarray(0, 4000 * DIGEST_SIZE);
    assert.deepEqual(compareDigests(a, shorter), { equal: false, pagesA: 5000, pagesB: 4000, differing: 0, first: [] });
    assert.deepEqual(differingPages(a, shorter), [4000]);
    assert.throws(() => compareDigests(a, a.subarray(1)), RangeError);
  });

  test('bench: digests, zero-page test, compare (printed, not asserted)', () => {
    const size = 256 * MiB;
    const m = GuestMemory.create(size, 'gm-bench');
    try {
      let t = performance.now();
      m.prefault();
      const prefaultMs = performance.now() - t;
      t = performance.now();
      let zeros = 0;
      for (let i = 0; i < m.pages; i++) if (m.isZeroPage(i)) zeros++;
      const zeroMs = performance.now() - t;
      assert.equal(zeros, m.pages);
      t = performance.now();
      m.pageDigests();
      const zeroDigestMs = performance.now() - t;
      const pattern = new Uint8Array(4 * MiB).map((_, i) => (i * 2654435761) >>> 24);
      for (let o = 0; o < size; o += pattern.length) m.write(o, pattern);
      t = performance.now();
      const d = m.pageDigests();
      const digestMs = performance.now() - t;
      t = performance.now();
      const c = compareDigests(d, d.slice());
      const cmpMs = performance.now() - t;
      assert.ok(c.equal);
      const rate = (ms: number) => `${((size / ms) * 1e-6).toFixed(2)} GB/s`;
      console.log(
        `# 256 MiB: prefault ${prefaultMs.toFixed(0)} ms; isZeroPage over zero pages ${zeroMs.toFixed(1)} ms (${rate(zeroMs)}); ` +
          `digests of zero pages ${zeroDigestMs.toFixed(0)} ms (${rate(zeroDigestMs)}), of non-zero pages ` +
          `${digestMs.toFixed(0)} ms (${rate(digestMs)}, ${((digestMs * 1000) / m.pages).toFixed(2)} µs/page); ` +
          `compareDigests of equal arrays ${cmpMs.toFixed(2)} ms`,
      );
    } finally {
      m.close();
    }
  });

  test('prefault keeps contents, reports what it did, and makes loading fresh memory faster (printed)', () => {
    const size = 256 * MiB;
    const data = new Uint8Array(4 * MiB).map((_, i) => (i * 7) & 0xff);
    const load = (m: GuestMemory) => {
      const t = performance.now();
      for (let o = 0; o < size; o += data.length) m.write(o, data);
      return performance.now() - t;
    };
    const cold = GuestMemory.create(size, 'gm-cold');
    const warm = GuestMemory.create(size, 'gm-warm', { pieceSize: 64 * MiB });
    try {
      const coldMs = load(cold);
      cold.prefault({ first: 0, count: cold.pages - 1 });
      assert.equal(cold.allFaultedIn, false, 'part of RAM faulted in is not all of it');
      const r = warm.prefault();
      assert.equal(r.pages, warm.pages);
      assert.equal(warm.allFaultedIn, true, 'a loader then has nothing left to populate');
      const warmMs = load(warm);
      // Prefaulting live memory changes nothing (the touch is an atomic OR with 0).
      const before = warm.pageDigests();
      const again = warm.prefault({ first: 3, count: 100 });
      assert.equal(again.pages, 100);
      assert.deepEqual(warm.pageDigests(), before);
      assert.throws(() => warm.prefault(warm.pages, 1), RangeError);
      const gbs = (ms: number) => ((size / ms) * 1e-6).toFixed(2);
      console.log(
        `# load 256 MiB into a fresh memfd: ${coldMs.toFixed(0)} ms (${gbs(coldMs)} GB/s); prefault ` +
          `${(r.populateMs + r.touchMs).toFixed(0)} ms (MADV_POPULATE_WRITE ${r.populated ? `${r.populateMs.toFixed(0)} ms` : 'unsupported'}, ` +
          `touch ${r.touchMs.toFixed(0)} ms), then load ${warmMs.toFixed(0)} ms (${gbs(warmMs)} GB/s): ` +
          `prefault+load ${gbs(r.populateMs + r.touchMs + warmMs)} GB/s`,
      );
    } finally {
      cold.close();
      warm.close();
    }
  });
  test('collapseHugePages: whole 2 MiB blocks become huge pages mapped whole, contents kept; the rest stays', (t) => {
    const name = `gm-huge-${process.pid}`;
    const m = GuestMemory.create(8 * MiB, name, { adviseHugePages: true });
    // This mapping's lines of /proc/self/smaps: [start address, ShmemPmdMapped KiB].
    const pmdMapped = (): [number, number] => {
      const lines = readFileSync('/proc/self/smaps', 'utf8').split('\n');
      const at = lines.findIndex((l) => l.includes(`/memfd:${name}`));
      assert.ok(at >= 0, 'the mapping is in smaps');
      const end = lines.findIndex((l, i) => i > at && /^[0-9a-f]+-[0-9a-f]+ /.test(l));
      const pmd = lines.slice(at, end < 0 ? undefined : end).find((l) => l.startsWith('ShmemPmdMapped:'));
      return [Number.parseInt(lines[at]!.split('-')[0]!, 16), Number(/(\d+)/.exec(pmd ?? '0')![1])];
    };
    try {
      // Data in the first and third blocks; the second block all hole; the last block one page.
      m.write(5 * PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(7));
      m.write(4 * MiB + 3 * PAGE_SIZE, new Uint8Array(3 * PAGE_SIZE).fill(9));
      m.write(8 * MiB - PAGE_SIZE, new Uint8Array(PAGE_SIZE).fill(1));
      const before = m.pageDigests();
      assert.equal(pmdMapped()[0] % (2 * MiB), 0, 'the piece is mapped on a 2 MiB boundary');
      // A range with no whole block in it: nothing to do.
      assert.deepEqual(
        { ...m.collapseHugePages(1, 500), ms: 0 },
        { eligibleBytes: 0, hugeBytes: 0, failure: null, ms: 0 },
      );
      const part = m.collapseHugePages({ first: 1, count: 1100 }); // pages 1..1100: only [2 MiB, 4 MiB) is whole
      const skip = collapseSkipReason(part.failure);
      if (skip) return t.skip(skip);
      assert.deepEqual([part.eligibleBytes, part.hugeBytes, part.failure], [2 * MiB, 2 * MiB, null]);
      assert.equal(pmdMapped()[1], 2048);
      const all = m.collapseHugePages();
      assert.deepEqual([all.eligibleBytes, all.hugeBytes, all.failure], [8 * MiB, 8 * MiB, null]);
      assert.equal(pmdMapped()[1], 8 * 1024, 'all 8 MiB mapped by 2 MiB entries');
      assert.deepEqual(m.pageDigests(), before, 'collapsing changed no byte');
      // Pieces smaller than a huge page have no whole block.
      const small = GuestMemory.create(4 * MiB, `${name}-small`, { pieceSize: MiB });
      try {
        assert.equal(small.collapseHugePages().eligibleBytes, 0);
      } finally {
        small.close();
      }
    } finally {
      m.close();
    }
  });
  test('writePagesThroughFd: pages from spaced records land in order, allocated in the memfd and mapped nowhere', () => {
    const pages = 1024;
    const m = GuestMemory.create(pages * PAGE_SIZE, 'gm-through-fd', { pieceSize: 256 * PAGE_SIZE });
    const rssShmemKib = () => Number(/RssShmem:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);
    try {
      // 600 page records (8-byte headers between pages) for pages 300..899: across two mapping seams.
      const gap = 8;
      const src = new Uint8Array(600 * (PAGE_SIZE + gap) - gap);
      for (let k = 0; k < 600; k++) src.fill((k % 255) + 1, k * (PAGE_SIZE + gap), k * (PAGE_SIZE + gap) + PAGE_SIZE);
      const rss0 = rssShmemKib();
      assert.equal(m.writePagesThroughFd(300, src, gap), 600);
      const allocatedKib = (fstatSync(m.fd).blocks * 512) / 1024;
      const mappedKib = rssShmemKib() - rss0;
      assert.equal(allocatedKib, 600 * 4, 'the memfd holds exactly the pages written');
      assert.ok(mappedKib < 600, `this process mapped ${mappedKib} KiB of the 2400 KiB written`);
      for (let k = 0; k < 600; k++) {
        const p = m.page(300 + k);
        assert.ok(p[0] === (k % 255) + 1 && p[PAGE_SIZE - 1] === (k % 255) + 1, `page ${300 + k}`);
      }
      assert.ok(m.isZeroPage(299) && m.isZeroPage(900), 'the neighbours are untouched');
      assert.throws(() => m.writePagesThroughFd(pages - 1, src.subarray(0, 2 * PAGE_SIZE + gap), gap), RangeError);
      assert.throws(() => m.writePagesThroughFd(0, src.subarray(0, PAGE_SIZE + 1), gap), RangeError);
      assert.throws(() => m.writePagesThroughFd(-1, src.subarray(0, PAGE_SIZE), gap), RangeError);
    } finally {
      m.close();
    }
  });
  test('writePagesSpaced: pages from spaced records land in order through the mapping, across its seams', () => {
    const pages = 1024;
    const m = GuestMemory.create(pages * PAGE_SIZE, 'gm-spaced', { pieceSize: 256 * PAGE_SIZE });
    try {
      // 600 page records for pages 200..799: across two seams of the 256-page pieces.
      const gap = 8;
      const src = new Uint8Array(600 * (PAGE_SIZE + gap) - gap);
      for (let k = 0; k < 600; k++) {
        const at = k * (PAGE_SIZE + gap);
        src.fill((k % 255) + 1, at, at + PAGE_SIZE);
        if (k < 599) src.fill(0xff, at + PAGE_SIZE, at + PAGE_SIZE + gap); // headers, never written
      }
      assert.equal(m.writePagesSpaced(200, src, gap), 600);
      for (let k = 0; k < 600; k++) {
        const p = m.page(200 + k);
        assert.ok(
          p.every((b) => b === (k % 255) + 1),
          `page ${200 + k}`,
        );
      }
      assert.ok(m.isZeroPage(199) && m.isZeroPage(800), 'the neighbours are untouched');
      assert.throws(() => m.writePagesSpaced(pages - 1, src.subarray(0, 2 * PAGE_SIZE + gap), gap), RangeError);
      assert.throws(() => m.writePagesSpaced(0, src.subarray(0, PAGE_SIZE + 1), gap), RangeError);
      assert.throws(() => m.writePagesSpaced(-1, src.subarray(0, PAGE_SIZE), gap), RangeError);
      assert.ok(m.isZeroPage(pages - 1) && m.isZeroPage(0), 'a refused run writes nothing');
    } finally {
      m.close();
    }
  });
});
