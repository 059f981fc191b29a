// Rule-by-rule tests of the seed migration region, driven only through read()/write() at region offsets
// as a VMM would. Each `test` names the rule it pins (docs/migration-region.md lists the same rules).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { readField, writeField } from '../../src/abi/fields.ts';
import { DeviceState, DIRTY_PFNS_ALL, SEED_MIGRATION_INFO } from '../../src/abi/migration.ts';
import { LargeMemoryDevice } from '../../src/device/samples/large-memory.ts';
import { SeedMigrationRegion, type SeedRegionOptions } from '../../src/device/seed-region.ts';
import { SEED_TRANSITIONS } from '../../src/device/seed-state-table.ts';
import { VfioError } from '../../src/errors.ts';
import { ToyBackend } from '../support/toy-backend.ts';

const OFF = Object.fromEntries(SEED_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;
const { RUNNING, SAVING, RESUMING, STOPPED } = DeviceState;

function make(opts: Partial<SeedRegionOptions> = {}) {
  const backend = (opts.backend as ToyBackend | undefined) ?? new ToyBackend();
  const region = new SeedMigrationRegion({ kind: 'trapped', dataSize: 4096, bitmapSize: 64, ...opts, backend });
  return { backend, region };
}
function r64(region: SeedMigrationRegion, name: string): bigint {
  return readField(region.read(OFF[name]!, 8), 0, 8);
}
function r32(region: SeedMigrationRegion, name: string): number {
  return Number(readField(region.read(OFF[name]!, 4), 0, 4));
}
function w64(region: SeedMigrationRegion, name: string, v: bigint): void {
  const b = new Uint8Array(8);
  writeField(b, 0, 8, v);
  region.write(OFF[name]!, b);
}
function setState(region: SeedMigrationRegion, v: number): void {
  const b = new Uint8Array(4);
  writeField(b, 0, 4, BigInt(v));
  region.write(OFF.device_state!, b);
}
function einval(fn: () => unknown, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === Errno.EINVAL && (!re || re.test(e.message)));
}
/** Everything a VMM can observe without side effects. */
function snapshot(region: SeedMigrationRegion) {
  return { state: r32(region, 'device_state'), pending: r64(region, 'pending_bytes') };
}

describe('seed region: header access width and alignment', () => {
  test('every field is accessible at its native width and offset', () => {
    const { region } = make();
    assert.equal(r32(region, 'device_state'), RUNNING);
    assert.equal(r64(region, 'pending_bytes'), 0n);
  });

  test('any other width or alignment fails with EINVAL and changes nothing', () => {
    const { region, backend } = make();
    const before = snapshot(region);
    for (let off = 0; off < 64; off++) {
      for (const len of [1, 2, 3, 4, 5, 8, 16]) {
        const isField = SEED_MIGRATION_INFO.fields.some((f) => f.offset === off && f.width === len);
        if (isField) continue;
        einval(() => region.read(off, len));
        einval(() => region.write(off, new Uint8Array(len).fill(0xff)));
      }
    }
    assert.deepEqual(snapshot(region), before);
    assert.deepEqual(backend.transitions, []);
  });

  test('the reserved field cannot be accessed', () => {
    const { region } = make();
    einval(() => region.read(4, 4), /reserved/);
    einval(() => region.write(4, new Uint8Array(4)), /reserved/);
  });

  test('accesses beyond the region or in the gap before an mmapped data section fail', () => {
    const { region } = make({ kind: 'mmapped', dataSize: 4096, bitmapSize: 4096 });
    einval(() => region.read(region.layout.size - 4, 8), /beyond/);
    einval(() => region.read(100, 8), /between the header and the data section/);
    einval(() => region.read(-1, 1));
  });
});

describe('seed region: device_state', () => {
  test('bits outside the 3-bit mask are never set: a write setting them is refused and the state kept', () => {
    const { region, backend } = make();
    einval(() => setState(region, RUNNING | 0x8), /outside the state mask/);
    einval(() => setState(region, 0x8000_0000 | SAVING | RUNNING));
    assert.equal(r32(region, 'device_state'), RUNNING);
    assert.deepEqual(backend.transitions, []);
  });

  test('a read-modify-write within the mask keeps the (zero) upper bits and changes state', () => {
    const { region } = make();
    const old = r32(region, 'device_state');
    setState(region, (old & ~DeviceState.MASK) | (old & DeviceState.MASK) | SAVING);
    assert.equal(r32(region, 'device_state'), SAVING | RUNNING);
  });

  test('SAVING|RESUMING and RESUMING|RUNNING are rejected from every state', () => {
    for (const from of [STOPPED, RUNNING, SAVING, SAVING | RUNNING, RESUMING]) {
      for (const bad of [SAVING | RESUMING, SAVING | RESUMING | RUNNING, RESUMING | RUNNING]) {
        const { region } = make();
        driveTo(region, from);
        einval(() => setState(region, bad), /not allowed/);
        assert.equal(r32(region, 'device_state'), from);
      }
    }
  });

  test('the transition table: every (from, to) pair is accepted exactly when the table allows it', () => {
    for (const from of [STOPPED, RUNNING, SAVING, SAVING | RUNNING, RESUMING]) {
      for (let to = 0; to < 8; to++) {
        const { region, backend } = make();
        driveTo(region, from);
        const allowed = to === from || (SEED_TRANSITIONS[from] ?? []).includes(to);
        const calls = backend.transitions.length;
        if (allowed) {
          setState(region, to);
          assert.equal(r32(region, 'device_state'), to, `${from} -> ${to}`);
          assert.equal(backend.transitions.length, calls + (to === from ? 0 : 1), 'hook called once per real change');
        } else {
          einval(() => setState(region, to), /not allowed/);
          assert.equal(r32(region, 'device_state'), from, `${from} -> ${to} refused keeps ${from}`);
          assert.equal(backend.transitions.length, calls, 'refused transitions never reach the device');
        }
      }
    }
  });

  test('STOPPED means all three bits clear', () => {
    const { region } = make();
    setState(region, STOPPED);
    assert.equal(r32(region, 'device_state'), 0);
  });

  test('a failed transition leaves the previous state in place and returns the device error', () => {
    const { region, backend } = make();
    setState(region, SAVING | RUNNING);
    backend.refuse = (_from, to) => to === SAVING;
    assert.throws(
      () => setState(region, SAVING),
      (e: unknown) => e instanceof VfioError && e.errno === Errno.EBUSY,
    );
    assert.equal(r32(region, 'device_state'), SAVING | RUNNING);
    backend.refuse = null;
    setState(region, SAVING);
    assert.equal(r32(region, 'device_state'), SAVING);
  });

  test('clearing RUNNING has stopped the device before the write returns: no more state changes, no DMA', async () => {
    const dev = new LargeMemoryDevice({ memSize: 1 << 20, blockSize: 65536, workRate: 100_000 });
    const guest = new Uint8Array(1 << 16);
    dev.attachDma({
      write: (iova, data) => guest.set(data, Number(iova)),
      read: (iova, n) => guest.slice(Number(iova), Number(iova) + n),
    });
    dev.configureDma(0n, BigInt(guest.byteLength));
    const region = new SeedMigrationRegion({ backend: dev.migration, kind: 'trapped' });
    await new Promise((r) => setTimeout(r, 40));
    setState(region, SAVING | RUNNING);
    await new Promise((r) => setTimeout(r, 40));
    const digestRunning = dev.stateDigest();
    await new Promise((r) => setTimeout(r, 40));
    assert.notEqual(dev.stateDigest(), digestRunning, 'a running device changes its memory');
    setState(region, SAVING);
    const digest = dev.stateDigest();
    const guestCopy = guest.slice();
    const dirtyPages = dev.dirtyLog.countPages();
    dev.step(1000); // explicit work requests are ignored too
    await new Promise((r) => setTimeout(r, 60));
    assert.equal(dev.stateDigest(), digest, 'device state frozen');
    assert.deepEqual(guest, guestCopy, 'no DMA into guest memory');
    assert.equal(dev.dirtyLog.countPages(), dirtyPages);
    dev.close();
  });
});

describe('seed region: pending_bytes and data_offset', () => {
  test('pending_bytes is read-only', () => {
    const { region } = make();
    einval(() => w64(region, 'pending_bytes', 5n), /read-only/);
  });

  test('reading pending_bytes has no side effects', () => {
    const { region, backend } = make();
    setState(region, SAVING);
    const first = r64(region, 'pending_bytes');
    for (let i = 0; i < 50; i++) assert.equal(r64(region, 'pending_bytes'), first);
    const off = Number(r64(region, 'data_offset'));
    assert.equal(r64(region, 'data_size'), 4096n);
    assert.deepEqual(region.read(off, 16), backend.state.subarray(0, 16), 'first chunk is still the first bytes');
  });

  test('data_offset is read-only and always beyond the header', () => {
    const { region } = make();
    einval(() => w64(region, 'data_offset', 4096n), /read-only/);
    setState(region, SAVING);
    assert.ok(Number(r64(region, 'data_offset')) >= SEED_MIGRATION_INFO.size);
  });

  test('an mmapped data section has page-aligned data_offset for data and bitmap alike', () => {
    const { region, backend } = make({ kind: 'mmapped', dataSize: 8192, bitmapSize: 4096 });
    setState(region, SAVING | RUNNING);
    backend.dma(0x5000, 1);
    const dataOff = r64(region, 'data_offset');
    assert.equal(dataOff % 4096n, 0n);
    w64(region, 'start_pfn', 0n);
    w64(region, 'page_size', 4096n);
    w64(region, 'total_pfns', 64n);
    assert.equal(r64(region, 'copied_pfns'), 64n);
    const bmOff = r64(region, 'data_offset');
    assert.equal(bmOff % 4096n, 0n);
    assert.notEqual(bmOff, dataOff, 'data_offset moves: the bitmap sits elsewhere than device data');
    assert.deepEqual(region.layout.mmapAreas, [{ offset: 4096, size: 4096 + 8192 }]);
  });

  test('data_offset outside SAVING/RESUMING is an error, not a guess', () => {
    const { region } = make();
    einval(() => r64(region, 'data_offset'), /no data while the device is running/);
  });
});

describe('seed region: SAVING', () => {
  test('data_size says how many bytes are ready at data_offset; reading the data has no side effects', () => {
    const { region, backend } = make();
    setState(region, SAVING);
    const off = Number(r64(region, 'data_offset'));
    const size = Number(r64(region, 'data_size'));
    assert.equal(size, 4096);
    const a = region.read(off, size);
    const b = region.read(off, size);
    assert.deepEqual(a, b);
    assert.deepEqual(a, backend.state.subarray(0, size));
    assert.equal(r64(region, 'data_size'), BigInt(size), 'data_size reads are pure too');
  });

  test('pending_bytes falls only after the user has consumed a chunk (next data_offset read)', () => {
    const { region, backend } = make();
    setState(region, SAVING);
    const total = BigInt(backend.state.byteLength);
    assert.equal(r64(region, 'pending_bytes'), total);
    r64(region, 'data_offset');
    assert.equal(r64(region, 'pending_bytes'), total, 'chunk produced but not consumed yet');
    r64(region, 'data_offset');
    assert.equal(r64(region, 'pending_bytes'), total - 4096n, 'first chunk consumed');
  });

  test('the full sequence drains to pending 0 with the last data_offset read returning size 0', () => {
    const { region, backend } = make();
    setState(region, SAVING);
    const out: number[] = [];
    let rounds = 0;
    while (r64(region, 'pending_bytes') > 0n) {
      const off = Number(r64(region, 'data_offset'));
      const size = Number(r64(region, 'data_size'));
      out.push(...region.read(off, size));
      assert.ok(++rounds < 10);
    }
    assert.deepEqual(Uint8Array.from(out), backend.state);
  });

  test('readView lends the chunk at data_offset (the bytes read() returns) and nothing else', () => {
    const { region } = make({ backend: new ToyBackend(3000) }); // one chunk, smaller than the 4096-byte area
    assert.equal(region.readView(OFF.data_offset!, 8), undefined, 'no data outside a save');
    setState(region, SAVING);
    const off = Number(r64(region, 'data_offset'));
    const size = Number(r64(region, 'data_size'));
    assert.deepEqual(region.readView(off, size), region.read(off, size));
    assert.deepEqual(region.readView(off + 100, 200), region.read(off + 100, 200));
    assert.equal(region.readView(off, size + 1), undefined, 'past the chunk: read() copies');
    assert.equal(region.readView(OFF.pending_bytes!, 8), undefined, 'a header field is never lent');
    assert.equal(region.readView(region.layout.bitmapOffset, 8), undefined, 'nor the bitmap area');
    einval(() => region.readView(region.layout.size - 4, 8));
    setState(region, RUNNING);
    assert.equal(region.readView(off, size), undefined, 'the save ended: the chunk is gone');
  });

  test('data_size is read-only while saving; the data section is not writable', () => {
    const { region } = make();
    setState(region, SAVING);
    const off = Number(r64(region, 'data_offset'));
    einval(() => w64(region, 'data_size', 4n), /writable only while resuming/);
    einval(() => region.write(off, new Uint8Array(4)), /writable only while resuming/);
  });
});

describe('seed region: RESUMING', () => {
  test('writing data_size makes the device consume exactly that many bytes from data_offset', () => {
    const { region, backend } = make();
    setState(region, RESUMING);
    const off = Number(r64(region, 'data_offset'));
    region.write(off, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
    w64(region, 'data_size', 5n);
    assert.deepEqual(backend.loaded, [1, 2, 3, 4, 5]);
    region.write(off, Uint8Array.from([9, 9]));
    w64(region, 'data_size', 2n);
    assert.deepEqual(backend.loaded, [1, 2, 3, 4, 5, 9, 9]);
  });

  test('data_size larger than the data area is refused and nothing is consumed', () => {
    const { region, backend } = make();
    setState(region, RESUMING);
    einval(() => w64(region, 'data_size', 4097n), /exceeds/);
    assert.deepEqual(backend.loaded, []);
  });

  test('a device that rejects the data makes the data_size write fail with its error', () => {
    const dev = new LargeMemoryDevice({ memSize: 1 << 16, blockSize: 4096, workRate: 0 });
    const region = new SeedMigrationRegion({ backend: dev.migration, kind: 'trapped', dataSize: 4096, bitmapSize: 64 });
    setState(region, RESUMING);
    const off = Number(r64(region, 'data_offset'));
    region.write(off, new Uint8Array(64).fill(0xee));
    einval(() => w64(region, 'data_size', 64n), /unknown record kind|BEGIN/);
    einval(() => setState(region, RUNNING), /incomplete/);
    assert.equal(r32(region, 'device_state'), RESUMING, 'an incompletely resumed device does not run');
    dev.close();
  });
});

describe('seed region: dirty pages', () => {
  function dirtyRegion(bitmapSize = 8) {
    const t = make({ bitmapSize });
    setState(t.region, SAVING | RUNNING);
    return t;
  }
  function query(region: SeedMigrationRegion, start: bigint, pageSize: bigint, total: bigint) {
    w64(region, 'start_pfn', start);
    w64(region, 'page_size', pageSize);
    w64(region, 'total_pfns', total);
  }
  function readBitmap(region: SeedMigrationRegion, n: bigint): number[] {
    const off = Number(r64(region, 'data_offset'));
    const bytes = region.read(off, Math.ceil(Number(n) / 8));
    const pfns: number[] = [];
    for (let i = 0; i < Number(n); i++) if ((bytes[i >>> 3]! >> (i & 7)) & 1) pfns.push(i);
    return pfns;
  }

  test('start_pfn, page_size and total_pfns are write-only; copied_pfns is read-only', () => {
    const { region } = dirtyRegion();
    for (const f of ['start_pfn', 'page_size', 'total_pfns']) einval(() => r64(region, f), /write-only/);
    einval(() => w64(region, 'copied_pfns', 1n), /read-only/);
  });

  test('copied_pfns returns 0 when no page in the range is dirty', () => {
    const { region, backend } = dirtyRegion();
    backend.dma(0x100000, 4096); // outside the queried range
    query(region, 0n, 4096n, 100n);
    assert.equal(r64(region, 'copied_pfns'), 0n);
  });

  test('copied_pfns returns all-ones (unsigned) when every page in the range is dirty, and clears them', () => {
    const { region, backend } = dirtyRegion();
    backend.dma(0, 10 * 4096);
    query(region, 0n, 4096n, 10n);
    assert.equal(r64(region, 'copied_pfns'), DIRTY_PFNS_ALL);
    assert.equal(r64(region, 'copied_pfns'), 0n, 'read-and-clear: the next round sees them clean');
  });

  test('a bitmap larger than the data section forces iteration until the counts cover total_pfns', () => {
    const { region, backend } = dirtyRegion(8); // 64 pfns per chunk
    const dirty = [0, 3, 63, 64, 100, 150, 199];
    for (const p of dirty) backend.dma(p * 4096, 1);
    query(region, 0n, 4096n, 200n);
    const seen: number[] = [];
    let covered = 0n;
    let reads = 0;
    while (covered < 200n) {
      const n = r64(region, 'copied_pfns');
      reads++;
      if (n === 0n) break;
      assert.ok(n <= 64n);
      for (const p of readBitmap(region, n)) seen.push(Number(covered) + p);
      covered += n;
    }
    assert.deepEqual(seen, dirty);
    assert.equal(reads, 4, '64 + 64 + 64 + 8 pfns');
  });

  test('fields are sticky: after a round ends, copied_pfns starts a new round over the same range', () => {
    const { region, backend } = dirtyRegion(64);
    backend.dma(5 * 4096, 1);
    query(region, 0n, 4096n, 16n);
    assert.equal(r64(region, 'copied_pfns'), 16n);
    assert.deepEqual(readBitmap(region, 16n), [5]);
    assert.equal(r64(region, 'copied_pfns'), 0n, 'rest of the range clean: round over');
    backend.dma(7 * 4096, 1);
    assert.equal(r64(region, 'copied_pfns'), 16n, 'new round without rewriting the fields');
    assert.deepEqual(readBitmap(region, 16n), [7]);
  });

  test('a page dirtied while the user iterates is reported in this round or the next, never lost', () => {
    const { region, backend } = dirtyRegion(8); // 64 pfns per chunk
    backend.dma(1 * 4096, 1);
    backend.dma(70 * 4096, 1);
    query(region, 0n, 4096n, 128n);
    assert.equal(r64(region, 'copied_pfns'), 64n);
    assert.deepEqual(readBitmap(region, 64n), [1]);
    backend.dma(2 * 4096, 1); // behind the cursor
    backend.dma(80 * 4096, 1); // ahead of it
    assert.equal(r64(region, 'copied_pfns'), 64n);
    assert.deepEqual(readBitmap(region, 64n), [6, 16], 'pfns 70 and 80 in this round');
    assert.equal(r64(region, 'copied_pfns'), 64n, 'next round');
    assert.deepEqual(readBitmap(region, 64n), [2], 'pfn 2 in the next round');
  });

  test('a page size larger than 4 KiB merges the pages each pfn covers', () => {
    const { region, backend } = dirtyRegion(64);
    backend.dma(3 * 4096, 1); // inside 64 KiB pfn 0
    backend.dma(33 * 4096, 1); // inside pfn 2
    query(region, 0n, 65536n, 8n);
    assert.equal(r64(region, 'copied_pfns'), 8n);
    assert.deepEqual(readBitmap(region, 8n), [0, 2]);
  });

  test('bad page sizes and overflowing ranges are refused', () => {
    const { region } = dirtyRegion();
    einval(() => w64(region, 'page_size', 4095n), /power of two/);
    einval(() => w64(region, 'page_size', 1024n), /power of two/);
    query(region, 1n << 60n, 4096n, 1n << 60n);
    einval(() => r64(region, 'copied_pfns'), /overflows/);
  });

  test('copied_pfns outside SAVING is refused', () => {
    const { region } = make();
    einval(() => r64(region, 'copied_pfns'), /only while saving/);
  });

  test('the dirty log runs exactly while SAVING: pages written before it are not reported', () => {
    const { region, backend } = make({ bitmapSize: 64 });
    backend.dma(0, 4096); // before SAVING
    setState(region, SAVING | RUNNING);
    backend.dma(4096, 4096);
    query(region, 0n, 4096n, 4n);
    assert.equal(r64(region, 'copied_pfns'), 4n);
    assert.deepEqual(readBitmap(region, 4n), [1]);
    setState(region, RUNNING);
    assert.equal(backend.dirtyLog.isTracking, false);
  });
});

/** Moves a fresh region (in RUNNING) to `state` along allowed transitions. */
function driveTo(region: SeedMigrationRegion, state: number): void {
  const paths: Record<number, number[]> = {
    [STOPPED]: [STOPPED],
    [RUNNING]: [],
    [SAVING]: [SAVING],
    [SAVING | RUNNING]: [SAVING | RUNNING],
    [RESUMING]: [RESUMING],
  };
  for (const s of paths[state]!) setState(region, s);
  assert.equal(r32(region, 'device_state'), state);
}

describe('seed region: a double-buffered mmapped data area (>= 256 KiB)', () => {
  const DATA = 256 << 10;
  const HALF = DATA / 2;
  const turn = () => new Promise((r) => setImmediate(r));
  /** A region whose toy state is `size` bytes of a known pattern, saving (stop-and-copy). */
  function saving(size: number) {
    const { region, backend } = make({
      kind: 'mmapped',
      dataSize: DATA,
      bitmapSize: 4096,
      backend: new ToyBackend(size),
    });
    setState(region, SAVING);
    return { region, backend };
  }
  /** One VMM step: data_offset, data_size, then the bytes from the mapped section. */
  function step(region: SeedMigrationRegion): { offset: number; bytes: Uint8Array } {
    const offset = Number(r64(region, 'data_offset'));
    const size = Number(r64(region, 'data_size'));
    const at = offset - region.layout.sectionOffset;
    return { offset, bytes: region.sectionMemory.slice(at, at + size) };
  }

  test('chunks alternate halves; the stream is the same whether or not the device got to produce ahead', async () => {
    for (const wait of [true, false]) {
      const { region, backend } = saving(5 * HALF + 123);
      const got: Uint8Array[] = [];
      const offsets: number[] = [];
      while (r64(region, 'pending_bytes') > 0n) {
        const { offset, bytes } = step(region);
        offsets.push(offset);
        got.push(bytes);
        if (wait) await turn();
      }
      assert.deepEqual(Buffer.concat(got), Buffer.from(backend.state), `wait ${wait}`);
      // Six chunks, then the read that releases the last one and finds nothing more (size 0).
      assert.deepEqual(
        got.map((g) => g.byteLength),
        [HALF, HALF, HALF, HALF, HALF, 123, 0],
      );
      const base = region.layout.dataOffset;
      assert.deepEqual(offsets.slice(0, 6), [base + HALF, base, base + HALF, base, base + HALF, base]);
    }
  });

  test('a chunk produced ahead counts in pending_bytes until handed out, and is made only after data_size', async () => {
    const total = 3 * HALF;
    const { region, backend } = saving(total);
    step(region);
    assert.equal(r64(region, 'pending_bytes'), BigInt(total), 'the chunk at data_offset still counts');
    await turn();
    assert.equal(backend.pendingBytes(), total - 2 * HALF, 'the device produced the next chunk ahead');
    assert.equal(r64(region, 'pending_bytes'), BigInt(total), 'and it counts as pending');
    // Reading data_offset alone (no data_size) produces nothing ahead.
    Number(r64(region, 'data_offset'));
    await turn();
    assert.equal(backend.pendingBytes(), total - 2 * HALF);
    assert.equal(r64(region, 'pending_bytes'), BigInt(total - HALF));
  });

  test('an empty chunk produced ahead is handed out as such, not asked for again', async () => {
    const { region, backend } = saving(3 * HALF);
    const answers = [HALF, 0, HALF];
    let calls = 0;
    backend.produce = (out) => {
      const n = answers[calls++] ?? 0;
      out.fill(7, 0, n);
      return n;
    };
    assert.equal(step(region).bytes.byteLength, HALF);
    await turn();
    assert.equal(calls, 2, 'produced ahead once');
    assert.equal(step(region).bytes.byteLength, 0, "the device's empty answer, as it gave it");
    assert.equal(calls, 2, 'and produce was not asked again for it');
  });

  test('an error while producing ahead fails the next data_offset read, as a VfioError', async () => {
    const { region, backend } = saving(3 * HALF);
    step(region);
    backend.produce = () => {
      throw new Error('device fell over');
    };
    await turn();
    assert.throws(
      () => r64(region, 'data_offset'),
      (e: unknown) => e instanceof VfioError && e.errno === Errno.EIO && /fell over/.test(e.message),
    );
  });

  test('leaving SAVING drops a chunk produced ahead, and a pending production is cancelled', async () => {
    const { region, backend } = saving(4 * HALF);
    step(region);
    await turn();
    setState(region, RUNNING);
    assert.equal(r64(region, 'pending_bytes'), 0n);
    // A new session: each data_size read schedules the next production; leaving SAVING cancels one.
    let produced = 0;
    const produce = backend.produce.bind(backend);
    backend.produce = (out) => {
      produced++;
      return produce(out);
    };
    setState(region, SAVING);
    step(region);
    assert.equal(produced, 1);
    await turn();
    assert.equal(produced, 2, 'the next chunk was produced ahead');
    step(region); // hands out the chunk produced ahead and schedules the next
    assert.equal(produced, 2);
    setState(region, STOPPED);
    await turn();
    assert.equal(produced, 2, 'nothing produced after the session ended');
  });
});
