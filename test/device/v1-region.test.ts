// Rule-by-rule tests of the Linux 5.8 ("v1") migration region as libvfio-user's v1 era serves it, driven
// only through read()/write() at region offsets. docs/migration-region-v1.md lists the same rules.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { readField, writeField } from '../../src/abi/fields.ts';
import { DeviceState, V1_MIGRATION_INFO } from '../../src/abi/migration.ts';
import type { MigrationBackend } from '../../src/device/backend.ts';
import { V1MigrationRegion } from '../../src/device/v1-region.ts';
import { V1_ERROR_STATE, V1_TRANSITIONS } from '../../src/device/v1-state-table.ts';
import { VfioError } from '../../src/errors.ts';
import { ToyBackend } from '../support/toy-backend.ts';

const OFF = Object.fromEntries(V1_MIGRATION_INFO.fields.map((f) => [f.name, f.offset])) as Record<string, number>;
const { RUNNING, SAVING, RESUMING, STOPPED } = DeviceState;

function make(backend: MigrationBackend = new ToyBackend(), kind: 'trapped' | 'mmapped' = 'trapped') {
  return new V1MigrationRegion({ backend, kind, dataSize: 4096 });
}
function r64(region: V1MigrationRegion, name: string): bigint {
  return readField(region.read(OFF[name]!, 8), 0, 8);
}
function w64(region: V1MigrationRegion, name: string, v: bigint): void {
  const b = new Uint8Array(8);
  writeField(b, 0, 8, v);
  region.write(OFF[name]!, b);
}
function setState(region: V1MigrationRegion, v: number): void {
  const b = new Uint8Array(4);
  writeField(b, 0, 4, BigInt(v >>> 0));
  region.write(OFF.device_state!, b);
}
function state(region: V1MigrationRegion): number {
  return Number(readField(region.read(OFF.device_state!, 4), 0, 4));
}
function fails(fn: () => unknown, errno: number, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === errno && (!re || re.test(e.message)));
}

/** Drives a region to `target` along the table (every state is reachable from running). */
function reach(region: V1MigrationRegion, target: number): void {
  if (target === STOPPED || target === SAVING || target === (SAVING | RUNNING) || target === RESUMING) {
    setState(region, target);
  }
}

/** One full stop-and-copy save through the register protocol; returns the bytes and the iterations. */
function save(region: V1MigrationRegion): Uint8Array {
  const out: number[] = [];
  for (;;) {
    const pending = r64(region, 'pending_bytes');
    if (pending === 0n) break;
    const off = Number(r64(region, 'data_offset'));
    const size = Number(r64(region, 'data_size'));
    out.push(...region.read(off, size));
  }
  return Uint8Array.from(out);
}

describe('v1 migration region (Linux 5.8, libvfio-user v1 era)', () => {
  test('layout: the 32-byte header in a one-page register area, the data section page aligned after it', () => {
    for (const kind of ['trapped', 'mmapped'] as const) {
      const region = make(new ToyBackend(), kind);
      assert.equal(region.layout.dataOffset, 4096, kind);
      assert.equal(region.layout.size, 4096 + 4096);
      assert.deepEqual(region.layout.mmapAreas, kind === 'mmapped' ? [{ offset: 4096, size: 4096 }] : []);
    }
  });

  test('header: fields only at native width and alignment; reserved and the gap refuse every access', () => {
    const region = make();
    assert.equal(state(region), RUNNING);
    fails(() => region.read(OFF.device_state!, 8), Errno.EINVAL);
    fails(() => region.read(OFF.pending_bytes!, 4), Errno.EINVAL);
    fails(() => region.read(OFF.reserved!, 4), Errno.EINVAL, /reserved/);
    fails(() => region.read(32, 8), Errno.EINVAL, /gap/);
    fails(() => region.read(4088, 8), Errno.EINVAL, /gap/);
    fails(() => w64(region, 'pending_bytes', 1n), Errno.EINVAL, /read-only/);
    fails(() => w64(region, 'data_offset', 4096n), Errno.EINVAL, /read-only/);
    fails(() => region.read(8192, 1), Errno.EINVAL, /beyond/);
  });

  test('device_state: every request from every state follows VALID and the v1 table, and nothing else', () => {
    for (const from of Object.keys(V1_TRANSITIONS).map(Number)) {
      for (let to = 0; to < 8; to++) {
        const backend = new ToyBackend();
        const region = make(backend);
        if (from === V1_ERROR_STATE) {
          backend.refuse = () => true; // an internal failure is the only way into the error state
          assert.throws(() => setState(region, STOPPED));
          backend.refuse = null;
        } else reach(region, from);
        assert.equal(state(region), from);
        const allowed = V1_TRANSITIONS[from]!.includes(to);
        if (allowed) {
          setState(region, to);
          assert.equal(state(region), to, `${from} -> ${to}`);
        } else {
          fails(() => setState(region, to), Errno.EINVAL);
          assert.equal(state(region), from, `${from} -> ${to} refused, state kept`);
        }
      }
    }
    // The table itself: VALID refuses 5, 6, 7 as requests; pre-copy -> running in, pre-copy -> pre-copy out.
    for (const row of Object.values(V1_TRANSITIONS)) for (const bad of [5, 6, 7]) assert.ok(!row.includes(bad));
    assert.ok(V1_TRANSITIONS[SAVING | RUNNING]!.includes(RUNNING));
    assert.ok(!V1_TRANSITIONS[SAVING | RUNNING]!.includes(SAVING | RUNNING));
  });

  test('device_state: reserved bits set in a write are refused; the backend sees one call per real change', () => {
    const backend = new ToyBackend();
    const region = make(backend);
    fails(() => setState(region, RUNNING | 0x8), Errno.EINVAL, /reserved/);
    setState(region, RUNNING);
    assert.deepEqual(backend.transitions, [], 'running -> running is accepted without bothering the device');
    setState(region, SAVING | RUNNING);
    setState(region, SAVING);
    assert.deepEqual(backend.transitions, [
      [RUNNING, SAVING | RUNNING],
      [SAVING | RUNNING, SAVING],
    ]);
  });

  test('an internal device failure leaves the error state 6; only reset leaves it', () => {
    const backend = new ToyBackend();
    const region = make(backend);
    backend.refuse = (_f, to) => to === SAVING;
    fails(() => setState(region, SAVING), Errno.EBUSY);
    assert.equal(state(region), V1_ERROR_STATE);
    backend.refuse = null;
    for (let to = 0; to < 8; to++) fails(() => setState(region, to), Errno.EINVAL);
    fails(() => r64(region, 'data_offset'), Errno.EINVAL);
    assert.equal(r64(region, 'pending_bytes'), 0n);
    region.reset();
    assert.equal(state(region), RUNNING);
    setState(region, SAVING);
    assert.equal(state(region), SAVING);
  });

  test('a refusal (the device throws EINVAL) keeps the previous state, as libvfio-user does', () => {
    const backend = new ToyBackend();
    const refusing: MigrationBackend = {
      transition: (from, to) => {
        if (from === RESUMING) throw new VfioError(Errno.EINVAL, 'incomplete state');
        backend.transition(from, to);
      },
      pendingBytes: () => backend.pendingBytes(),
      produce: (o) => backend.produce(o),
      consume: (d) => backend.consume(d),
    };
    const region = make(refusing);
    setState(region, RESUMING);
    fails(() => setState(region, RUNNING), Errno.EINVAL, /incomplete/);
    assert.equal(state(region), RESUMING);
  });

  test('save FSM: pending_bytes starts an iteration, data_offset produces once, the next pending read consumes', () => {
    const backend = new ToyBackend(10_000);
    const region = make(backend);
    setState(region, SAVING);
    fails(() => r64(region, 'data_offset'), Errno.EINVAL, /out of sequence/);
    fails(() => r64(region, 'data_size'), Errno.EINVAL, /out of sequence/);
    assert.equal(r64(region, 'pending_bytes'), 10_000n);
    assert.equal(r64(region, 'pending_bytes'), 10_000n, 'repeated reads within the iteration are pure');
    assert.equal(r64(region, 'data_offset'), 4096n);
    assert.equal(r64(region, 'data_offset'), 4096n, 'data_offset is invariant in the iteration');
    assert.equal(r64(region, 'data_size'), 4096n);
    assert.equal(backend.pendingBytes(), 10_000 - 4096, 'only one buffer produced for two data_offset reads');
    assert.deepEqual(region.read(4096, 4096), backend.state.subarray(0, 4096));
    assert.equal(r64(region, 'pending_bytes'), BigInt(10_000 - 4096), 'the next pending read consumes the buffer');
    const rest = save(region);
    assert.deepEqual(rest, backend.state.subarray(4096));
    assert.equal(r64(region, 'pending_bytes'), 0n, 'finished: 0 until the next state write');
    fails(() => r64(region, 'data_offset'), Errno.EINVAL);
    fails(() => w64(region, 'data_size', 1n), Errno.EINVAL, /resuming/);
    setState(region, STOPPED);
    fails(() => region.read(4096, 8), Errno.EINVAL, /only while saving/);
  });

  test('readView lends the buffer data_offset prepared until the next pending_bytes read consumes it', () => {
    const backend = new ToyBackend(10_000);
    const region = make(backend);
    setState(region, SAVING);
    r64(region, 'pending_bytes');
    assert.equal(region.readView(4096, 8), undefined, 'no buffer prepared yet');
    r64(region, 'data_offset');
    const size = Number(r64(region, 'data_size'));
    assert.deepEqual(region.readView(4096, size), backend.state.subarray(0, size));
    assert.deepEqual(region.readView(4200, 100), region.read(4200, 100));
    assert.equal(region.readView(0, 8), undefined, 'a header field is never lent');
    r64(region, 'pending_bytes');
    assert.equal(region.readView(4096, size), undefined, 'consumed: not lent any more');
  });

  test('resume: data_offset says where, written bytes at it, a data_size write consumes them in order', () => {
    const backend = new ToyBackend();
    const region = make(backend);
    fails(() => region.write(4096, new Uint8Array(8)), Errno.EINVAL, /only while resuming/);
    setState(region, RESUMING);
    const image = Uint8Array.from({ length: 6000 }, (_, i) => (i * 13) & 0xff);
    for (let at = 0; at < image.byteLength; at += 1000) {
      const off = Number(r64(region, 'data_offset'));
      assert.equal(off, 4096);
      const piece = image.subarray(at, at + 1000);
      region.write(off, piece);
      w64(region, 'data_size', BigInt(piece.byteLength));
    }
    assert.deepEqual(Uint8Array.from(backend.loaded), image);
    fails(() => w64(region, 'data_size', 4097n), Errno.EINVAL, /exceeds/);
    setState(region, RUNNING);
    assert.equal(state(region), RUNNING);
  });

  test('a device that fails while producing data puts the region in the error state', () => {
    const backend = new ToyBackend();
    backend.produce = () => {
      throw new Error('device lost its state');
    };
    const region = make(backend);
    setState(region, SAVING);
    r64(region, 'pending_bytes');
    fails(() => r64(region, 'data_offset'), Errno.EIO, /lost/);
    assert.equal(state(region), V1_ERROR_STATE);
  });
});
