// The lvu-sample device (our model of libvfio-user's samples/server.c) driven directly, with a clock the
// test moves by hand, so no test waits for a timer: BAR0's access rule and timer arming, BAR1's trapped
// access (reads from the base whatever the offset), the timer's IRQ and DMA (slot 1 directly and logged
// dirty, slot 0 by messages), and the migration data: size and content per phase, BAR1 re-sent after a
// write during pre-copy, resume of k BAR1 images + BAR0, and every refusal leaving the device unchanged.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Errno } from '../../src/abi/errno.ts';
import { DeviceState } from '../../src/abi/migration.ts';
import type { DmaPort } from '../../src/device/bar.ts';
import {
  LVU_BAR1_SIZE,
  LVU_BAR1_SPARSE,
  LVU_STOP_COPY_SIZE,
  type LvuClock,
  LvuSampleDevice,
} from '../../src/device/samples/lvu-sample.ts';
import { VfioError } from '../../src/errors.ts';
import { HostedDevice } from '../../src/vfio-user/hosted-device.ts';

const { STOPPED, RUNNING, SAVING, RESUMING } = DeviceState;
const PRECOPY = RUNNING | SAVING;

/** A clock moved by the test; timers fire only when the test advances past them. */
class ManualClock implements LvuClock {
  t = 1_000_000;
  timers = new Map<number, { at: number; fire: () => unknown }>();
  private next = 1;
  now(): number {
    return this.t;
  }
  setTimer(fire: () => unknown, ms: number): unknown {
    const id = this.next++;
    this.timers.set(id, { at: this.t * 1000 + ms, fire });
    return id;
  }
  clearTimer(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** Moves time on by `s` seconds and returns the timers that came due (not yet run). */
  advance(s: number): (() => unknown)[] {
    this.t += s;
    const due = [...this.timers].filter(([, v]) => v.at <= this.t * 1000);
    for (const [id] of due) this.timers.delete(id);
    return due.map(([, v]) => v.fire);
  }
}

/** Guest memory of a few pages, reachable directly and "by messages" (recorded separately). */
function memoryPort(size: number): { port: DmaPort; mem: Uint8Array; messages: string[] } {
  const mem = new Uint8Array(size);
  const messages: string[] = [];
  const port: DmaPort = {
    write: (iova, data) => mem.set(data, Number(iova)),
    read: (iova, n) => mem.slice(Number(iova), Number(iova) + n),
    writeByMessage: async (iova, data) => {
      messages.push(`write ${iova} ${data.byteLength}`);
      mem.set(data, Number(iova));
    },
    readByMessage: async (iova, n) => {
      messages.push(`read ${iova} ${n}`);
      return mem.slice(Number(iova), Number(iova) + n);
    },
  };
  return { port, mem, messages };
}

function le64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, BigInt(v), true);
  return b;
}

function read64(b: Uint8Array): bigint {
  return new DataView(b.buffer, b.byteOffset, 8).getBigInt64(0, true);
}

function fails(fn: () => unknown, errno: number, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof VfioError && e.errno === errno && (!re || re.test(e.message)));
}

function make(): { dev: LvuSampleDevice; clock: ManualClock } {
  const clock = new ManualClock();
  return { dev: new LvuSampleDevice({ clock, memfd: false }), clock };
}

/** Drains the backend's saving stream in `chunk`-byte reads until it produces nothing. */
function drain(dev: LvuSampleDevice, chunk: number): Uint8Array {
  const parts: Uint8Array[] = [];
  for (;;) {
    const out = new Uint8Array(chunk);
    const n = dev.produce(out);
    if (n === 0) break;
    parts.push(out.subarray(0, n));
  }
  return Buffer.concat(parts);
}

function pattern(seed: number): Uint8Array {
  return Uint8Array.from({ length: LVU_BAR1_SIZE }, (_, i) => (i * 7 + seed) & 0xff);
}

describe('lvu-sample: identity and BARs', () => {
  test('config space carries the sample IDs; BAR1 is offered as a file with two sparse areas', () => {
    const dev = new LvuSampleDevice();
    try {
      const cfg = new DataView(dev.config.buffer);
      assert.deepEqual(
        [cfg.getUint16(0, true), cfg.getUint16(2, true), cfg.getUint16(0x2c, true), cfg.getUint16(0x2e, true)],
        [0xdead, 0xbeef, 0xcafe, 0xbabe],
      );
      const host = new HostedDevice(dev, { flavor: 'v2', dataSection: 'trapped' });
      const bar1 = host.region(1);
      assert.equal(bar1.size, 0x3000);
      assert.ok(bar1.fd !== null && bar1.fd >= 0, 'BAR1 has an fd');
      assert.deepEqual(bar1.sparse, LVU_BAR1_SPARSE);
      assert.equal(host.region(0).fd, null, 'BAR0 is trapped only');
      assert.equal(host.region(0).size, 8);
    } finally {
      dev.close();
    }
  });

  test('BAR0 takes only an 8-byte access at offset 0', () => {
    const { dev } = make();
    const bar0 = dev.bars[0]!;
    fails(() => bar0.read(0, 4), Errno.EINVAL, /bad BAR0 access/);
    fails(() => bar0.write(4, new Uint8Array(4)), Errno.EINVAL, /bad BAR0 access/);
    fails(() => bar0.write(0, new Uint8Array(4)), Errno.EINVAL);
    assert.equal(bar0.read(0, 8).byteLength, 8);
  });

  test('BAR0: a write while running arms the timer; a read gives now - BAR0; a past time is refused', () => {
    const { dev, clock } = make();
    const bar0 = dev.bars[0]!;
    bar0.write(0, le64(clock.t + 5));
    assert.ok(dev.timerArmed);
    assert.equal([...clock.timers.values()][0]!.at, (clock.t + 5) * 1000);
    assert.equal(read64(bar0.read(0, 8)), -5n);
    clock.advance(2);
    assert.equal(read64(bar0.read(0, 8)), -3n);
    fails(() => bar0.write(0, le64(clock.t - 1)), Errno.EINVAL, /in the past/);
    assert.equal(dev.bar0Time, BigInt(clock.t + 3), 'a refused write leaves BAR0 as it was');
    // Now exactly: the interval is zero, which disarms (setitimer's rule) and is accepted.
    bar0.write(0, le64(clock.t));
    assert.equal(dev.timerArmed, false);
  });

  test('BAR0 written while pre-copying is stored but not armed', () => {
    const { dev, clock } = make();
    dev.transition(RUNNING, PRECOPY);
    dev.bars[0]!.write(0, le64(clock.t - 100));
    assert.equal(dev.timerArmed, false);
    assert.equal(dev.bar0Time, BigInt(clock.t - 100));
  });

  test('BAR1: writes land at their offset, reads come from the base whatever the offset, bounds enforced', () => {
    const { dev } = make();
    const bar1 = dev.bars[1]!;
    bar1.write(0x1000, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual([...bar1.read(0, 4)], [0, 0, 0, 0]);
    assert.deepEqual([...bar1.read(0x1000, 4)], [0, 0, 0, 0], 'read at 0x1000 returns bytes from 0');
    bar1.write(0, Uint8Array.of(9, 8));
    assert.deepEqual([...bar1.read(0x2ffe, 2)], [9, 8]);
    assert.deepEqual([...dev.bars[1]!.memory!.subarray(0x1000, 0x1004)], [1, 2, 3, 4]);
    fails(() => bar1.read(0x2fff, 2), Errno.EINVAL, /bad BAR1 access/);
    fails(() => bar1.write(0x3000, Uint8Array.of(1)), Errno.EINVAL);
  });
});

describe('lvu-sample: timer, IRQ and DMA', () => {
  test('the timer raises INTx, writes slot 1 directly (logged dirty) and slot 0 by messages', async () => {
    const { dev, clock } = make();
    const { port, mem, messages } = memoryPort(4 * 4096);
    const irqs: string[] = [];
    dev.attachDma(port);
    dev.attachIrq({ trigger: (i, v) => irqs.push(`${i}.${v}`) > 0 });
    dev.dmaRegister({ iova: 0n, size: 4096n });
    dev.dmaRegister({ iova: 4096n, size: 4096n });
    dev.dmaRegister({ iova: 8192n, size: 4096n });
    dev.dirtyLog.start();
    dev.bars[0]!.write(0, le64(clock.t + 1));
    assert.equal(clock.advance(0).length, 0, 'nothing due before its time');
    const due = clock.advance(1);
    assert.equal(due.length, 1);
    await due[0]!();
    assert.equal(dev.dmaRounds, 1);
    assert.deepEqual(irqs, ['0.0']);
    const expect = Buffer.concat([0x41, 0x42, 0x43, 0x44].map((c) => Buffer.alloc(1024, c)));
    assert.ok(Buffer.from(mem.subarray(4096, 8192)).equals(expect), 'slot 1 (iova 4096) written directly');
    assert.ok(Buffer.from(mem.subarray(0, 4096)).equals(expect), 'slot 0 (iova 0) written by messages');
    assert.deepEqual(
      mem.subarray(8192, 12288).some((b) => b !== 0),
      false,
      'slot 2 untouched',
    );
    assert.deepEqual(messages, [
      'write 0 1024',
      'write 1024 1024',
      'write 2048 1024',
      'write 3072 1024',
      'read 0 2048',
      'read 2048 2048',
    ]);
    assert.equal(
      dev.dirtyLog.countDirtyPfns({ firstPage: 1, pagesPerPfn: 1, count: 1 }),
      1,
      'the direct page is logged',
    );
    assert.equal(
      dev.dirtyLog.countDirtyPfns({ firstPage: 0, pagesPerPfn: 1, count: 1 }),
      0,
      'message DMA is the client’s to log',
    );
  });

  test('a device stopped during a DMA round does no more DMA', async () => {
    const clock = new ManualClock();
    const lines: string[] = [];
    const dev = new LvuSampleDevice({ clock, memfd: false, log: (l) => lines.push(l) });
    const { port, mem, messages } = memoryPort(2 * 4096);
    // The stop arrives while the first message DMA is outstanding (requests interleave with the round).
    const write = port.writeByMessage!;
    port.writeByMessage = async (iova, data) => {
      if (messages.length === 0) dev.transition(RUNNING, SAVING);
      return write(iova, data);
    };
    dev.attachDma(port);
    dev.dmaRegister({ iova: 0n, size: 4096n });
    dev.dmaRegister({ iova: 4096n, size: 4096n });
    await dev.fire();
    assert.deepEqual(messages, ['write 0 1024'], 'no piece after the stop');
    assert.equal(mem[1024], 0);
    assert.match(lines.join('\n'), /MESSAGE DMA round ended: the device stopped/);
    assert.equal(dev.dmaRounds, 0);
  });

  test('DMA slots are the sample’s: an unmapped slot is reused first; a missing slot is logged, not thrown', async () => {
    const clock = new ManualClock();
    const lines: string[] = [];
    const dev = new LvuSampleDevice({ clock, memfd: false, log: (l) => lines.push(l) });
    const { port, mem } = memoryPort(4 * 4096);
    dev.attachDma(port);
    dev.dmaRegister({ iova: 0n, size: 4096n });
    await dev.fire();
    assert.match(lines.join('\n'), /no DMA region in slot 1/);
    dev.dmaRegister({ iova: 4096n, size: 4096n });
    dev.dmaUnregister({ iova: 0n, size: 4096n });
    dev.dmaRegister({ iova: 8192n, size: 4096n }); // takes slot 0
    await dev.fire();
    assert.equal(mem[4096], 0x41, 'slot 1 is still iova 4096');
    assert.equal(mem[8192], 0x41, 'slot 0 is now iova 8192');
    assert.equal(mem[0], 0, 'the unmapped range is not touched');
  });
});

describe('lvu-sample: migration data', () => {
  test('pre-copy sends BAR1 once (12288 bytes), again only after BAR1 is written', () => {
    const { dev } = make();
    dev.bars[1]!.write(0, pattern(1));
    dev.transition(RUNNING, PRECOPY);
    assert.equal(dev.pendingBytes(), LVU_BAR1_SIZE);
    const first = drain(dev, 1024);
    assert.ok(Buffer.from(first).equals(pattern(1)));
    assert.equal(dev.pendingBytes(), 0);
    dev.bars[1]!.write(0, pattern(2));
    assert.equal(dev.pendingBytes(), LVU_BAR1_SIZE, 'written during pre-copy: sent again');
    assert.ok(Buffer.from(drain(dev, 5000)).equals(pattern(2)));
    assert.equal(dev.pendingBytes(), 0);
  });

  test('stop-and-copy sends BAR1 then BAR0: 12296 bytes, in any chunking', () => {
    const { dev, clock } = make();
    dev.bars[1]!.write(0, pattern(3));
    dev.bars[0]!.write(0, le64(clock.t + 100));
    dev.transition(RUNNING, PRECOPY);
    drain(dev, 4096);
    dev.transition(PRECOPY, SAVING);
    assert.equal(dev.timerArmed, false, 'the timer stops with the device');
    assert.equal(dev.pendingBytes(), LVU_STOP_COPY_SIZE);
    for (const chunk of [1024, 7, LVU_STOP_COPY_SIZE]) {
      dev.transition(SAVING, PRECOPY);
      dev.transition(PRECOPY, SAVING);
      const image = drain(dev, chunk);
      assert.equal(image.byteLength, 12296);
      assert.ok(Buffer.from(image.subarray(0, LVU_BAR1_SIZE)).equals(pattern(3)));
      assert.equal(read64(image.subarray(LVU_BAR1_SIZE)), BigInt(clock.t + 100));
      assert.equal(dev.pendingBytes(), 0);
    }
  });

  test('resume takes BAR1 images then BAR0, loads the last, and re-arms from BAR0 on RUNNING', () => {
    const src = make();
    src.dev.bars[1]!.write(0, pattern(4));
    src.dev.bars[0]!.write(0, le64(src.clock.t + 50));
    src.dev.transition(RUNNING, PRECOPY);
    const pre = drain(src.dev, 3000);
    src.dev.transition(PRECOPY, SAVING);
    const stop = drain(src.dev, 999);
    for (const stream of [stop, Buffer.concat([pre, stop])]) {
      const { dev, clock } = make();
      dev.transition(RUNNING, STOPPED);
      dev.transition(STOPPED, RESUMING);
      for (let at = 0; at < stream.byteLength; at += 1000) dev.consume(stream.subarray(at, at + 1000));
      dev.transition(RESUMING, RUNNING);
      assert.ok(Buffer.from(dev.bars[1]!.memory!).equals(pattern(4)));
      assert.equal(dev.bar0Time, BigInt(src.clock.t + 50));
      assert.ok(dev.timerArmed, 'RUNNING re-armed the timer from the migrated BAR0');
      assert.equal(dev.stateDigest(), src.dev.stateDigest());
      assert.equal(clock.t, src.clock.t);
    }
  });

  test('a resume of the wrong size, or whose BAR0 has passed, is refused and changes nothing', () => {
    const { dev, clock } = make();
    dev.bars[1]!.write(0, pattern(5));
    dev.transition(RUNNING, STOPPED);
    dev.transition(STOPPED, RESUMING);
    dev.consume(new Uint8Array(LVU_BAR1_SIZE)); // BAR1 only: no BAR0
    fails(() => dev.transition(RESUMING, STOPPED), Errno.EINVAL, /resumed 12288 bytes/);
    dev.consume(new Uint8Array(9)); // 12297: not k * 12288 + 8
    fails(() => dev.transition(RESUMING, RUNNING), Errno.EINVAL);
    assert.ok(Buffer.from(dev.bars[1]!.memory!).equals(pattern(5)), 'nothing was loaded');

    const stale = make();
    stale.dev.bars[1]!.write(0, pattern(6));
    stale.dev.transition(RUNNING, SAVING);
    const image = drain(stale.dev, 4096); // BAR0 = 0: long past
    const fresh = make();
    fresh.dev.transition(RUNNING, STOPPED);
    fresh.dev.transition(STOPPED, RESUMING);
    fresh.dev.consume(image);
    fails(() => fresh.dev.transition(RESUMING, RUNNING), Errno.EINVAL, /in the past/);
    assert.equal(fresh.dev.bar0Time, 0n);
    assert.ok(!Buffer.from(fresh.dev.bars[1]!.memory!).equals(pattern(6)), 'a refused RUNNING loaded nothing');
    fresh.dev.transition(RESUMING, STOPPED); // to STOP the same data is accepted (no timer involved)
    assert.ok(Buffer.from(fresh.dev.bars[1]!.memory!).equals(pattern(6)));
    assert.equal(clock.timers.size, 0);
  });

  test('migration data outside RESUMING is refused', () => {
    const { dev } = make();
    fails(() => dev.consume(new Uint8Array(8)), Errno.EINVAL, /outside RESUMING/);
    assert.equal(dev.produce(new Uint8Array(16)), 0, 'nothing to produce while running');
  });
});
