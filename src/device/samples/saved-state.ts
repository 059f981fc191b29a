// Saving and loading the sample devices' state: a register file plus (optionally) device memory in
// fixed-size blocks. Saving sends every block once, then blocks dirtied since they were sent (pre-copy),
// and when the device has stopped the registers and an END digest. Loading checks the device model,
// every offset and length, and the digest: a device resumes only from a complete, unaltered stream.
//
// Integrity, not authentication: each block is checked with CRC-32C (the checksum QEMU's multifd and
// iSCSI use; native SSE4.2 in the addon, ~12 GB/s here), which catches any changed byte or burst of up to
// 32 bits within a block. SHA-256 per block bounded the device at about 1.6 GB/s for nothing a transfer
// check needs. END carries a SHA-256 over the block CRCs and the register file: a few KiB, so it costs
// nothing and a stream with a block or a register changed, missing or replayed still fails as one digest.
// A block is checksummed by the copy that sends it (StateRecord.checksum), so it is read once, not twice.

import { createHash } from 'node:crypto';
import { Errno } from '../../abi/errno.ts';
import { VfioError } from '../../errors.ts';
import { native } from '../../native/addon.ts';
import { crc32c, crc32cCopy } from '../../stream/crc32c.ts';
import { StateStreamReader } from '../state-reader.ts';
import { RECORD_HEADER_SIZE, type RecordHeader, RecordKind, type StateRecord } from '../state-stream.ts';
import { StateStreamWriter } from '../state-writer.ts';

/** The parts of a device that its saved state covers. */
export interface StateImage {
  /** What the device is; the destination must describe itself identically. */
  readonly descriptor: Readonly<Record<string, string | number>>;
  readonly regs: Uint8Array;
  /** Device memory, length a multiple of blockSize (empty for a device without memory). */
  readonly memory: Uint8Array;
  readonly blockSize: number;
  /**
   * Per block of `memory`: 0 where the block is known to read as zeroes (never written since the memory
   * was allocated, or cleared since), 1 where it may hold anything. Saving, loading, clearing and the
   * digest take a 0 block as zeroes without reading it: reading never-touched memory is not free
   * everywhere (where the kernel maps no shared zero page, as in some paravirtual guests, a read fault
   * allocates and clears a page as a write would), and a fresh destination device would otherwise fault
   * all its memory in, inside the VM's downtime, only to find it zero. The device keeps it (noteWritten).
   */
  readonly written: Uint8Array;
}

const DIGEST_SIZE = 32;

const ZERO_PAGE = Buffer.alloc(65536);

/** The addon's scan (QEMU's buffer_is_zero): stops at the first non-zero 64 bytes, no allocation per block. */
function isZero(b: Uint8Array): boolean {
  return native().isZero(b);
}

/** The device wrote (or is about to write) [offset, offset + length) of its memory, by any path. */
export function noteWritten(image: StateImage, offset: number, length: number): void {
  if (length <= 0) return;
  image.written.fill(1, Math.floor(offset / image.blockSize), Math.floor((offset + length - 1) / image.blockSize) + 1);
}

/** Zeroes the device's memory, writing only the blocks that may hold something. */
export function clearMemory(image: StateImage): void {
  const bs = image.blockSize;
  for (let b = 0; b < image.written.length; b++) {
    if (image.written[b] === 0) continue;
    image.memory.fill(0, b * bs, (b + 1) * bs);
    image.written[b] = 0;
  }
}

/** SHA-256 of the memory, then the registers (the sample devices' state digest); 0 blocks hashed as zeroes unread. */
export function imageDigest(image: StateImage): Buffer {
  const hash = createHash('sha256');
  const bs = image.blockSize;
  const blocks = image.written.length;
  for (let b = 0; b < blocks; ) {
    // A run of blocks alike: written ones hashed from memory in one call, the others as zeroes.
    let end = b + 1;
    while (end < blocks && image.written[end] === image.written[b]) end++;
    if (image.written[b] !== 0) hash.update(image.memory.subarray(b * bs, end * bs));
    else
      for (let left = (end - b) * bs; left > 0; left -= ZERO_PAGE.byteLength)
        hash.update(ZERO_PAGE.subarray(0, Math.min(left, ZERO_PAGE.byteLength)));
    b = end;
  }
  return hash.update(image.regs).digest();
}

function encodeDescriptor(d: StateImage['descriptor']): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(d));
}

/** CRC-32C of a block of zeroes, without allocating one (a zero block is sent as a bare ZERO record). */
function zeroBlockCrc(blockSize: number): number {
  let c = 0;
  for (let at = 0; at < blockSize; at += ZERO_PAGE.byteLength)
    c = crc32c(ZERO_PAGE.subarray(0, Math.min(ZERO_PAGE.byteLength, blockSize - at)), c);
  return c;
}

/** The digest END carries: SHA-256 over each block's CRC-32C (as last sent, u32 little-endian) and the registers. */
function finalDigest(blockCrcs: Uint32Array, regs: Uint8Array): Uint8Array {
  const le = new Uint8Array(blockCrcs.byteLength);
  const dv = new DataView(le.buffer);
  for (let b = 0; b < blockCrcs.length; b++) dv.setUint32(b * 4, blockCrcs[b]!, true);
  return new Uint8Array(createHash('sha256').update(le).update(regs).digest());
}

export class StateSaver {
  private readonly blocks: number;
  private readonly dirty: Uint8Array;
  private dirtyCount: number;
  private cursor = 0;
  private readonly blockCrcs: Uint32Array;
  private readonly zeroCrc: number;
  private begun = false;
  private regsSent = false;
  private ended = false;
  private readonly writer: StateStreamWriter;
  /**
   * Once the device has stopped its memory cannot change, so the remaining blocks' exact record sizes
   * (a ZERO record is a bare header) are counted once and kept current as blocks go out.
   */
  private stoppedBlockBytes: number | null = null;
  /**
   * The block whose record the writer hands out now. The writer reports a record's checksum before it
   * pulls the next, so one callback serves every block (a closure per block made each call site
   * polymorphic, and V8 kept recompiling the writer).
   */
  private sending = 0;
  private readonly sentBlockCrc = (crc: number): void => {
    this.blockCrcs[this.sending] = crc;
  };

  /** `stopped()` tells whether the device has stopped, i.e. whether registers and END may be sent. */
  constructor(
    private readonly image: StateImage,
    private readonly stopped: () => boolean,
  ) {
    this.blocks = image.memory.byteLength / image.blockSize;
    this.dirty = new Uint8Array(this.blocks).fill(1);
    this.dirtyCount = this.blocks;
    this.blockCrcs = new Uint32Array(this.blocks);
    this.zeroCrc = zeroBlockCrc(image.blockSize);
    this.writer = new StateStreamWriter(() => this.nextRecord());
  }

  /** The device wrote [offset, offset + length) of its memory. */
  markDirty(offset: number, length: number): void {
    const first = Math.floor(offset / this.image.blockSize);
    const last = Math.floor((offset + length - 1) / this.image.blockSize);
    for (let b = first; b <= last; b++) {
      if (this.dirty[b] === 0) {
        this.dirty[b] = 1;
        this.dirtyCount++;
      }
    }
  }

  get dirtyBlocks(): number {
    return this.dirtyCount;
  }

  get complete(): boolean {
    return this.ended && this.writer.queuedBytes === 0;
  }

  pendingBytes(): number {
    let n = this.writer.queuedBytes + this.blockBytes();
    if (!this.begun) n += RECORD_HEADER_SIZE + encodeDescriptor(this.image.descriptor).byteLength;
    if (this.stopped()) {
      if (!this.regsSent) n += RECORD_HEADER_SIZE + this.image.regs.byteLength;
      if (!this.ended) n += RECORD_HEADER_SIZE + DIGEST_SIZE;
    }
    return n;
  }

  produce(out: Uint8Array): number {
    return this.writer.produce(out);
  }

  /** Bytes the dirty blocks will take on the wire: an upper bound while running, exact once stopped. */
  private blockBytes(): number {
    if (!this.stopped()) return this.dirtyCount * (RECORD_HEADER_SIZE + this.image.blockSize);
    if (this.stoppedBlockBytes === null) {
      let n = 0;
      const bs = this.image.blockSize;
      for (let b = 0; b < this.blocks; b++) {
        if (this.dirty[b] === 0) continue;
        const zero = this.image.written[b] === 0 || isZero(this.image.memory.subarray(b * bs, (b + 1) * bs));
        n += RECORD_HEADER_SIZE + (zero ? 0 : bs);
      }
      this.stoppedBlockBytes = n;
    }
    return this.stoppedBlockBytes;
  }

  private nextRecord(): StateRecord | null {
    if (!this.begun) {
      this.begun = true;
      return {
        header: { kind: RecordKind.BEGIN, arg0: 0n, arg1: 0n },
        payload: encodeDescriptor(this.image.descriptor),
      };
    }
    if (this.dirtyCount > 0) return this.nextBlock();
    if (!this.stopped() || this.ended) return null;
    if (!this.regsSent) {
      this.regsSent = true;
      return { header: { kind: RecordKind.REGS, arg0: 0n, arg1: 0n }, payload: this.image.regs.slice() };
    }
    this.ended = true;
    return {
      header: { kind: RecordKind.END, arg0: BigInt(this.writer.recordCount), arg1: 0n },
      payload: finalDigest(this.blockCrcs, this.image.regs),
    };
  }

  private nextBlock(): StateRecord {
    while (this.dirty[this.cursor] === 0) this.cursor = (this.cursor + 1) % this.blocks;
    const b = this.cursor;
    this.cursor = (this.cursor + 1) % this.blocks;
    this.dirty[b] = 0;
    this.dirtyCount--;
    const offset = b * this.image.blockSize;
    this.sending = b;
    // A live view: the writer copies it out in this produce() call or snapshots the rest, and the copy
    // checksums it, so the CRC is always of the bytes sent.
    const view = this.image.memory.subarray(offset, offset + this.image.blockSize);
    const zero = this.image.written[b] === 0 || isZero(view);
    if (this.stoppedBlockBytes !== null)
      this.stoppedBlockBytes -= RECORD_HEADER_SIZE + (zero ? 0 : this.image.blockSize);
    if (zero) {
      this.blockCrcs[b] = this.zeroCrc;
      return { header: { kind: RecordKind.ZERO, arg0: BigInt(offset), arg1: BigInt(this.image.blockSize) } };
    }
    return {
      header: { kind: RecordKind.MEM, arg0: BigInt(offset), arg1: 0n },
      payload: view,
      live: true,
      checksum: this.sentBlockCrc,
    };
  }
}

export class StateLoader {
  private readonly reader: StateStreamReader;
  private readonly blocks: number;
  private readonly received: Uint8Array;
  private receivedCount = 0;
  private readonly blockCrcs: Uint32Array;
  private readonly zeroCrc: number;
  private small = new Uint8Array(0);
  /** CRC-32C of the MEM record being received, chained over its payload chunks. */
  private crc = 0;
  private regsLoaded = false;

  /** Loads into `image` in place; `applyRegs` installs a complete register file. */
  constructor(
    private readonly image: StateImage,
    private readonly applyRegs: (regs: Uint8Array) => void,
  ) {
    this.blocks = image.memory.byteLength / image.blockSize;
    this.received = new Uint8Array(this.blocks);
    this.blockCrcs = new Uint32Array(this.blocks);
    this.zeroCrc = zeroBlockCrc(image.blockSize);
    const maxPayload = Math.max(image.blockSize, image.regs.byteLength, 4096);
    this.reader = new StateStreamReader(
      {
        onHeader: (h, i) => this.onHeader(h, i),
        onPayload: (h, chunk, at) => this.onPayload(h, chunk, at),
        onRecordEnd: (h) => this.onRecordEnd(h),
      },
      maxPayload,
    );
  }

  get complete(): boolean {
    return this.reader.complete;
  }

  feed(data: Uint8Array): void {
    this.reader.feed(data);
  }

  private fail(message: string): never {
    throw new VfioError(Errno.EINVAL, message);
  }

  private onHeader(h: RecordHeader, index: number): void {
    if (h.kind === RecordKind.BEGIN && index !== 0) this.fail(`BEGIN record at position ${index}`);
    if (h.kind === RecordKind.MEM || h.kind === RecordKind.ZERO) {
      const len = h.kind === RecordKind.MEM ? BigInt(h.length) : h.arg1;
      const bs = BigInt(this.image.blockSize);
      if (h.arg0 % bs !== 0n || len !== bs || h.arg0 + len > BigInt(this.image.memory.byteLength)) {
        this.fail(`memory record at offset ${h.arg0} length ${len} does not match a ${bs}-byte block of device memory`);
      }
      if (h.kind === RecordKind.ZERO && h.length !== 0) this.fail('ZERO record carries a payload');
      if (h.kind === RecordKind.MEM) noteWritten(this.image, Number(h.arg0), h.length);
      this.crc = 0;
    }
    if (h.kind === RecordKind.REGS && h.length !== this.image.regs.byteLength) {
      this.fail(`register record is ${h.length} bytes, this device has ${this.image.regs.byteLength}`);
    }
    if (h.kind === RecordKind.END && h.length !== DIGEST_SIZE) this.fail(`END record is ${h.length} bytes`);
    if (h.kind === RecordKind.BEGIN || h.kind === RecordKind.REGS || h.kind === RecordKind.END) {
      this.small = new Uint8Array(h.length);
    }
  }

  private onPayload(h: RecordHeader, chunk: Uint8Array, at: number): void {
    if (h.kind === RecordKind.MEM) {
      const to = Number(h.arg0) + at;
      this.crc = crc32cCopy(this.image.memory, to, to, chunk, this.crc);
    } else {
      this.small.set(chunk, at);
    }
  }

  private onRecordEnd(h: RecordHeader): void {
    switch (h.kind) {
      case RecordKind.BEGIN: {
        const mine = JSON.stringify(this.image.descriptor);
        const theirs = new TextDecoder().decode(this.small);
        if (mine !== theirs) this.fail(`device model mismatch: saved state is ${theirs}, this device is ${mine}`);
        return;
      }
      case RecordKind.MEM:
      case RecordKind.ZERO: {
        const offset = Number(h.arg0);
        const b = offset / this.image.blockSize;
        if (h.kind === RecordKind.ZERO && this.image.written[b] !== 0) {
          // A block that may hold something: scanned (pages it has are mapped), zeroed only if it is not.
          const view = this.image.memory.subarray(offset, offset + this.image.blockSize);
          if (!isZero(view)) view.fill(0);
          this.image.written[b] = 0;
        }
        this.blockCrcs[b] = h.kind === RecordKind.ZERO ? this.zeroCrc : this.crc;
        if (this.received[b] === 0) {
          this.received[b] = 1;
          this.receivedCount++;
        }
        return;
      }
      case RecordKind.REGS:
        this.applyRegs(this.small);
        this.regsLoaded = true;
        return;
      case RecordKind.END: {
        if (this.receivedCount !== this.blocks) {
          this.fail(
            `device state ended with ${this.blocks - this.receivedCount} of ${this.blocks} memory blocks never sent`,
          );
        }
        if (!this.regsLoaded) this.fail('device state ended without its registers');
        const expect = finalDigest(this.blockCrcs, this.image.regs);
        if (!Buffer.from(expect).equals(this.small))
          this.fail('device state digest mismatch: the loaded state is not the saved one');
      }
    }
  }
}
