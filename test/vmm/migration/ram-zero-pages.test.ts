// Zero pages through the RAM handler, source to destination: the source sends them as ZERO records (its
// native scan decides which), and a destination on fresh memory leaves a zero page it never wrote
// untouched (no write, no page allocated in its memfd), while a page it wrote earlier in the load and
// that went back to zero at the source is zeroed. Real memfds on both sides; the sections go from the
// source handler straight into the destination handler (the stream and the socket have their own tests).
// And the count of a page map's marks (the pages multifd channels received), taken at the load's end.
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { crc32cJs } from '../../../src/stream/crc32c.ts';
import { GuestDirtyBitmap } from '../../../src/vmm/guest/dirty-bitmap.ts';
import { compareDigests, GuestMemory } from '../../../src/vmm/guest/guest-memory.ts';
import type { SectionWriter } from '../../../src/vmm/migration/handler.ts';
import { countMarks, RamHandler } from '../../../src/vmm/migration/ram-handler.ts';

const PAGE = 4096;
const PAGES = 16384; // 64 MiB

function concat(pieces: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(pieces));
}

/** Pages of a memfd that hold memory (st_blocks counts 512-byte units of what shmem allocated). */
function allocatedPages(m: GuestMemory): number {
  return (fstatSync(m.fd).blocks * 512) / PAGE;
}

/** A page's contents, distinct per page and tag, non-zero. */
function fillData(m: GuestMemory, i: number, tag: number): void {
  const p = m.page(i);
  const dv = new DataView(p.buffer, p.byteOffset, PAGE);
  for (let at = 0; at < PAGE; at += 4) dv.setUint32(at, (i * 2654435761 + at * 40503 + tag) >>> 0 || 1, true);
}

interface Pair {
  src: GuestMemory;
  dst: GuestMemory;
  srcDirty: GuestDirtyBitmap;
  saver: RamHandler;
  loader: RamHandler;
  /** Sections the saver wrote, each handed to the loader as it comes (in order). */
  out: SectionWriter;
  close(): void;
}

function pair(freshMemory: boolean): Pair {
  const src = GuestMemory.create(PAGES * PAGE, 'zero-src');
  const dst = GuestMemory.create(PAGES * PAGE, 'zero-dst');
  const srcDirty = new GuestDirtyBitmap(PAGES);
  const saver = new RamHandler(src, srcDirty);
  const loader = new RamHandler(dst, new GuestDirtyBitmap(PAGES), { freshMemory });
  let chain = Promise.resolve();
  const out: SectionWriter = {
    part(pieces) {
      // Copied now: the saver reuses its staging buffer once this resolves.
      const payload = concat(pieces);
      chain = chain.then(() => loader.loadSection('part', payload));
      return chain;
    },
  };
  return {
    src,
    dst,
    srcDirty,
    saver,
    loader,
    out,
    close() {
      src.close();
      dst.close();
    },
  };
}

async function onePass(p: Pair): Promise<void> {
  while (!(await p.saver.saveIterate(p.out, Number.POSITIVE_INFINITY))) {}
}

async function finish(p: Pair): Promise<void> {
  const end = concat(await p.saver.saveComplete(p.out));
  await p.loader.loadSection('end', end);
  await p.loader.loadComplete();
}

describe('zero pages through the RAM handler', () => {
  test('a mostly-zero guest arrives equal page by page, zeroed pages included, and the destination allocates only its data pages', async () => {
    const p = pair(true);
    try {
      // Sparse data pages, a dense run (written through the memfd in runs at the destination), and pages whose only
      // non-zero byte is at a page edge.
      const data = new Set<number>();
      for (let i = 0; i < PAGES; i += 97) data.add(i);
      for (let i = 5000; i < 5600; i++) data.add(i);
      data.add(PAGES - 1);
      for (const i of data) fillData(p.src, i, 1);
      p.src.page(3)[0] = 7;
      p.src.page(4)[PAGE - 1] = 9;
      data.add(3).add(4);

      await p.loader.loadSetup();
      await p.loader.loadSection('start', concat(await p.saver.saveSetup()));
      await onePass(p);
      assert.equal(p.saver.stats.normal, data.size, 'first pass: every data page with its contents');
      assert.equal(p.saver.stats.duplicate, PAGES - data.size, 'first pass: every other page as a zero page');

      // Between passes: some data pages go back to zero (one byte or all of it), some zero pages get data.
      const zeroed = [0, 97, 5001, 5599, PAGES - 1];
      for (const i of zeroed) {
        p.src.page(i).fill(0);
        p.srcDirty.set(i);
      }
      p.src.page(4)[PAGE - 1] = 0;
      p.srcDirty.set(4);
      for (const i of [1, 2, 6000, PAGES - 2]) {
        fillData(p.src, i, 2);
        p.srcDirty.set(i);
      }
      fillData(p.src, 194, 3); // a data page rewritten
      p.srcDirty.set(194);
      await finish(p);

      const written = data.size + 4;
      const allocated = allocatedPages(p.dst);
      console.log(`destination memfd: ${allocated} of ${PAGES} pages allocated; ${written} pages ever held data`);
      assert.ok(allocated <= written, `the destination allocated ${allocated} pages, more than the ${written} written`);
      assert.ok(allocated >= written - zeroed.length - 1, 'the data pages are there');
      // The source's scan found the zero pages in the memfd's holes: it allocated none of them either.
      assert.equal(allocatedPages(p.src), written, 'the source holds only the pages it wrote');
      // Digests read every page (and so allocate the rest): after the allocation count.
      const c = compareDigests(p.src.pageDigests(), p.dst.pageDigests());
      assert.ok(c.equal, `${c.differing} pages differ, first ${c.first.join(', ')}`);
      for (const i of [...zeroed, 4]) assert.ok(p.dst.isZeroPage(i), `page ${i} was zeroed at the destination`);
    } finally {
      p.close();
    }
  });

  test('runs of data pages between zero pages, at every bit of a dirty word and across sections: equal, CRC true', async () => {
    const p = pair(true);
    try {
      // Page k holds data when bit (k mod 61) of a fixed pattern is set: runs of 1 to 9 data pages and
      // zero pages fall at every position of the 32-page dirty words, and 61 does not divide 32.
      const pattern = 0b1011_0111_1111_1110_0011_0001_1111_1111_1011_1110_0101_1111_1011_1111_1100_1n;
      const isData = (k: number) => ((pattern >> BigInt(k % 61)) & 1n) === 1n;
      for (let k = 0; k < PAGES; k++) if (isData(k)) fillData(p.src, k, 1);
      let sections = 0;
      const checked: SectionWriter = {
        part(pieces, payloadCrc) {
          sections++;
          if (payloadCrc !== undefined)
            assert.equal(payloadCrc, crc32cJs(concat(pieces)), `section ${sections}: its CRC`);
          return p.out.part(pieces, payloadCrc);
        },
      };
      await p.loader.loadSetup();
      await p.loader.loadSection('start', concat(await p.saver.saveSetup()));
      while (!(await p.saver.saveIterate(checked, Number.POSITIVE_INFINITY))) {}
      const dataPages = Array.from({ length: PAGES }, (_, k) => k).filter(isData).length;
      assert.equal(p.saver.stats.normal, dataPages);
      assert.ok(sections > 1, 'the pass spans several sections, so runs are split where a section fills');
      // A second pass over a scattered dirty set: runs cut short by clean pages, not only by zero ones.
      for (let k = 0; k < PAGES; k += 3) {
        if (isData(k)) fillData(p.src, k, 2);
        p.srcDirty.set(k);
        if (k % 7 === 0) p.srcDirty.set(k + 1);
      }
      while (!(await p.saver.saveIterate(checked, Number.POSITIVE_INFINITY))) {}
      await finish(p);
      const c = compareDigests(p.src.pageDigests(), p.dst.pageDigests());
      assert.ok(c.equal, `${c.differing} pages differ, first ${c.first.join(', ')}`);
    } finally {
      p.close();
    }
  });

  test('on memory that is not fresh, zero pages overwrite whatever the destination held', async () => {
    const p = pair(false);
    try {
      for (let i = 0; i < PAGES; i += 31) fillData(p.dst, i, 9); // stale bytes where the source has zeroes
      for (let i = 0; i < PAGES; i += 101) fillData(p.src, i, 1);
      await p.loader.loadSetup();
      await p.loader.loadSection('start', concat(await p.saver.saveSetup()));
      await onePass(p);
      await finish(p);
      const c = compareDigests(p.src.pageDigests(), p.dst.pageDigests());
      assert.ok(c.equal, `${c.differing} pages differ, first ${c.first.join(', ')}`);
    } finally {
      p.close();
    }
  });
});

test('countMarks counts the 1 bytes of a page map, whatever its length and alignment', () => {
  fc.assert(
    fc.property(fc.uint8Array({ min: 0, max: 1, maxLength: 300 }), fc.integer({ min: 0, max: 7 }), (bytes, skip) => {
      const marks = new Uint8Array(new SharedArrayBuffer(bytes.length + skip)).subarray(skip);
      marks.set(bytes);
      assert.equal(
        countMarks(marks),
        bytes.reduce((n, b) => n + b, 0),
      );
    }),
  );
});
