// The v2 device-side state machine: the kernel's next-step table (full, and reduced to libvfio-user's for a
// device without P2P), one backend transition per arc with the v2 -> v1-bits mapping, the state left at the
// last completed step on failure, ERROR left only by reset, and the data direction rules.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import { MigState } from '../../src/abi/migration-v2.ts';
import { V2_TO_BACKEND, V2MigrationFsm, v2NextStep, v2Path } from '../../src/device/v2-fsm.ts';
import { VfioError } from '../../src/errors.ts';
import { ToyBackend } from '../support/toy-backend.ts';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;
const ALL = { preCopy: true, p2p: true };
const NO_P2P = { preCopy: true, p2p: false };

/** A MIG_DATA_READ of up to `max` bytes, as the server does it: into a reply, the filled part returned. */
function read(fsm: V2MigrationFsm, max: number): Uint8Array {
  const out = new Uint8Array(max);
  return out.subarray(0, fsm.readInto(out));
}

function fails(fn: () => unknown, errno: number): void {
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === errno);
}

describe('v2 state machine (device side)', () => {
  test('full table: the paths the kernel documents', () => {
    assert.deepEqual(v2Path(RUNNING, STOP_COPY, ALL), [RUNNING, RUNNING_P2P, STOP, STOP_COPY]);
    assert.deepEqual(v2Path(RESUMING, RUNNING, ALL), [RESUMING, STOP, RUNNING_P2P, RUNNING]);
    assert.deepEqual(v2Path(PRE_COPY, STOP, ALL), [PRE_COPY, RUNNING, RUNNING_P2P, STOP]);
    assert.deepEqual(v2Path(STOP, PRE_COPY, ALL), [STOP, RUNNING_P2P, RUNNING, PRE_COPY]);
    assert.deepEqual(v2Path(PRE_COPY, STOP_COPY, ALL), [PRE_COPY, PRE_COPY_P2P, STOP_COPY]);
    assert.equal(v2NextStep(STOP_COPY, PRE_COPY, ALL), undefined);
    assert.equal(v2NextStep(STOP_COPY, PRE_COPY_P2P, ALL), undefined);
    for (let t = 0; t < 8; t++) assert.equal(v2NextStep(ERROR, t, ALL), undefined, 'nothing leaves ERROR');
    for (let c = 1; c < 8; c++) assert.equal(v2NextStep(c, ERROR, ALL), undefined, 'ERROR is never a target');
  });

  test("without P2P the skip rule gives exactly libvfio-user's reduced table", () => {
    const states = [STOP, RUNNING, STOP_COPY, RESUMING, PRE_COPY];
    // Rows: current; columns in `states` order; undefined = refused; the diagonal is the state itself.
    const libvfioUser: Record<number, (number | undefined)[]> = {
      [STOP]: [STOP, RUNNING, STOP_COPY, RESUMING, RUNNING],
      [RUNNING]: [STOP, RUNNING, STOP, STOP, PRE_COPY],
      [STOP_COPY]: [STOP, STOP, STOP_COPY, STOP, undefined],
      [RESUMING]: [STOP, STOP, STOP, RESUMING, STOP],
      [PRE_COPY]: [RUNNING, RUNNING, STOP_COPY, RUNNING, PRE_COPY],
    };
    for (const cur of states) {
      states.forEach((target, i) => {
        assert.equal(v2NextStep(cur, target, NO_P2P), libvfioUser[cur]![i], `${cur} -> ${target}`);
      });
    }
    assert.equal(v2NextStep(RUNNING, RUNNING_P2P, NO_P2P), undefined, 'unsupported target');
    assert.equal(v2NextStep(RUNNING, PRE_COPY, { preCopy: false, p2p: false }), undefined);
  });

  test('each arc is one backend transition in v1 bits; P2P twins call nothing', () => {
    assert.equal(V2_TO_BACKEND[STOP_COPY], DeviceState.SAVING);
    assert.equal(V2_TO_BACKEND[PRE_COPY], DeviceState.SAVING | DeviceState.RUNNING);
    const backend = new ToyBackend();
    const fsm = new V2MigrationFsm(backend, ALL);
    fsm.set(STOP_COPY);
    assert.equal(fsm.state, STOP_COPY);
    assert.deepEqual(backend.transitions, [
      [DeviceState.RUNNING, DeviceState.STOPPED],
      [DeviceState.STOPPED, DeviceState.SAVING],
    ]);
    const nop = new V2MigrationFsm(new ToyBackend(), NO_P2P);
    nop.set(PRE_COPY);
    nop.set(STOP_COPY);
    nop.set(STOP);
    nop.set(RESUMING);
    nop.set(RUNNING);
    assert.equal(nop.state, RUNNING);
  });

  test('a failed arc leaves the state at the last completed step; requests of ERROR are refused', () => {
    const backend = new ToyBackend();
    backend.refuse = (_from, to) => to === DeviceState.SAVING;
    const fsm = new V2MigrationFsm(backend, NO_P2P);
    fails(() => fsm.set(STOP_COPY), Errno.EBUSY);
    assert.equal(fsm.state, STOP, 'RUNNING -> STOP completed, STOP -> STOP_COPY failed');
    fails(() => fsm.set(ERROR), Errno.EINVAL);
    fails(() => fsm.set(RUNNING_P2P), Errno.EINVAL);
    fails(() => fsm.set(99), Errno.EINVAL);
    backend.refuse = null;
    fsm.set(STOP_COPY);
    fails(() => fsm.set(PRE_COPY), Errno.EINVAL);
    assert.equal(fsm.state, STOP_COPY);
  });

  test('data: read only in the saving group, write only in RESUMING; an internal failure is ERROR until reset', () => {
    const backend = new ToyBackend(5000);
    const fsm = new V2MigrationFsm(backend, NO_P2P);
    fails(() => read(fsm, 100), Errno.EINVAL);
    fails(() => fsm.write(new Uint8Array(1)), Errno.EINVAL);
    fsm.set(STOP_COPY);
    const a = read(fsm, 3000);
    const b = read(fsm, 3000);
    assert.equal(read(fsm, 3000).byteLength, 0, 'end of stream');
    assert.deepEqual(Uint8Array.from([...a, ...b]), backend.state);
    const dst = new ToyBackend();
    const resume = new V2MigrationFsm(dst, NO_P2P);
    resume.set(RESUMING);
    resume.write(b.subarray(0, 0));
    resume.write(Uint8Array.from([...a, ...b]).subarray(0, 1234));
    resume.write(Uint8Array.from([...a, ...b]).subarray(1234));
    assert.deepEqual(Uint8Array.from(dst.loaded), backend.state);
    const broken = new ToyBackend();
    broken.produce = () => {
      throw new Error('lost');
    };
    const f = new V2MigrationFsm(broken, NO_P2P);
    f.set(STOP_COPY);
    fails(() => read(f, 10), Errno.EIO);
    assert.equal(f.state, ERROR);
    fails(() => f.set(RUNNING), Errno.EINVAL);
    f.reset();
    assert.equal(f.state, RUNNING);
  });
});
