// The VMM's side of the seed migration region: the access sequences of the QEMU series the seed belongs
// to, over any port that can read and write region offsets (vfio-user messages, or an mmap of the data
// section where the device offers one). Nothing here knows what the device's bytes mean.

import { Errno } from '../../abi/errno.ts';
import { fieldNamed, readField, writeField } from '../../abi/fields.ts';
import {
  DIRTY_PFNS_ALL,
  DIRTY_PFNS_NONE,
  deviceStateName,
  SEED_MIGRATION_INFO,
  type SeedField,
} from '../../abi/migration.ts';
import { asVfioError, VfioError } from '../../errors.ts';
import { hugeBuffer } from '../../native/huge-buffer.ts';
import type { RegionPort } from '../../vfio-user/region-port.ts';
import type { DirtyBitmapSink } from '../guest/dirty-bitmap.ts';
import { readAhead } from './read-ahead.ts';

export interface DirtyQueryResult {
  /** copied_pfns reads it took. */
  reads: number;
  /** pfns reported dirty (set bits, or the whole rest of the range for all-ones). */
  dirtyPfns: bigint;
}

export interface SeedRegionClientOptions {
  /** Largest single trapped access (vfio-user servers take at most 1 MiB per REGION_READ/WRITE). */
  maxAccess?: number;
  /**
   * Trapped device data is read in pieces of this many bytes (default and cap: maxAccess), up to
   * `readsInFlight` (default 4) outstanding at once, so the device serves one piece while another travels.
   */
  readPiece?: number;
  readsInFlight?: number;
}

export class SeedRegionClient {
  private readonly maxAccess: number;
  private readonly readPiece: number;
  private readonly readsInFlight: number;
  /**
   * Trapped chunks are read into these buffers, reused from chunk to chunk: drain() reads the next chunk
   * into one while its callback consumes the other (elsewhere only the first is used).
   */
  private readonly chunkBuffers = [new Uint8Array(0), new Uint8Array(0)];

  constructor(
    private readonly port: RegionPort,
    options: SeedRegionClientOptions = {},
  ) {
    this.maxAccess = options.maxAccess ?? 1024 * 1024;
    this.readPiece = Math.min(options.readPiece ?? this.maxAccess, this.maxAccess);
    this.readsInFlight = options.readsInFlight ?? 4;
    if (!(this.readPiece >= 1) || !(this.readsInFlight >= 1)) {
      throw new RangeError(`readPiece ${this.readPiece} and readsInFlight ${this.readsInFlight} must be at least 1`);
    }
  }

  async readField(name: SeedField): Promise<bigint> {
    const f = fieldNamed(SEED_MIGRATION_INFO, name);
    return readField(await this.port.read(f.offset, f.width), 0, f.width);
  }

  async writeField(name: SeedField, value: bigint): Promise<void> {
    const f = fieldNamed(SEED_MIGRATION_INFO, name);
    const buf = new Uint8Array(f.width);
    writeField(buf, 0, f.width, value);
    await this.port.write(f.offset, buf);
  }

  async deviceState(): Promise<number> {
    return Number(await this.readField('device_state'));
  }

  /**
   * Read-modify-write of device_state as QEMU does it: new = (old & mask) | value, so bits the VMM does
   * not own are kept. Returns the new state.
   */
  async setDeviceState(mask: number, value: number): Promise<number> {
    const old = await this.deviceState();
    const next = ((old & mask) | value) >>> 0;
    try {
      await this.writeField('device_state', BigInt(next));
    } catch (err) {
      const e = asVfioError(err);
      throw new VfioError(
        e.errno,
        `the device refused device_state ${deviceStateName(old)} -> ${deviceStateName(next)}: ${e.detail}`,
        { cause: err },
      );
    }
    return next;
  }

  async pendingBytes(): Promise<bigint> {
    return this.readField('pending_bytes');
  }

  /**
   * One saving step: read data_offset (the device releases the previous chunk and prepares the next),
   * data_size, then the data. Returns a copy (an mmapped chunk is overwritten by the next step).
   */
  async saveBuffer(): Promise<Uint8Array> {
    return (await this.nextChunk()).chunk.slice();
  }

  /**
   * Like saveBuffer, but the chunk comes back as a view valid until the next chunk is read: of the data
   * section when it is mmapped, else of a buffer this client reuses for every trapped chunk. drain() and
   * iterate() hand these views to their callback and wait for it to settle before reading on, so a
   * callback that writes the chunk out (or copies it) moves it with no extra copy.
   */
  private async nextChunk(buffer = 0): Promise<{ chunk: Uint8Array; mapped: boolean }> {
    // Both reads sent at once: vfio-user commands may be pipelined and the server takes them in order,
    // so data_size is answered after data_offset has moved on, one round trip for the two.
    const offsetRead = this.readField('data_offset');
    const sizeRead = readAhead(this.readField('data_size'));
    const offset = Number(await offsetRead);
    const size = Number(await sizeRead);
    this.checkWindow(offset, size, 'data');
    const mapped = this.port.mapped(offset, size);
    return mapped
      ? { chunk: mapped, mapped: true }
      : { chunk: await this.readChunk(offset, size, buffer), mapped: false };
  }

  /** A trapped chunk, read straight into a reused chunk buffer (pieces pipelined when the port can). */
  private async readChunk(offset: number, size: number, buffer: number): Promise<Uint8Array> {
    if (!this.port.readInto) return this.readData(offset, size);
    // In huge pages: first touched inside the device's stop-and-copy (src/native/huge-buffer.ts).
    if (this.chunkBuffers[buffer]!.byteLength < size) this.chunkBuffers[buffer] = hugeBuffer(size);
    const dest = this.chunkBuffers[buffer]!.subarray(0, size);
    if (size > 0) await this.port.readInto(offset, dest, { pieceSize: this.readPiece, inFlight: this.readsInFlight });
    return dest;
  }

  /**
   * Stop-and-copy: chunks until pending_bytes reads 0. Each pending_bytes read after the first is sent
   * as soon as a chunk has arrived, before `onChunk` consumes it, and answered meanwhile: reading it has
   * no side effect (data_offset is what releases a chunk, and pending_bytes counts the chunk until then),
   * so it reads the same as after the callback. A trapped chunk is ours once it has arrived (it is in
   * one of our buffers), so the next one is asked for (data_offset, which releases this one, data_size,
   * then its data into the other buffer) before `onChunk` runs: the device produces and sends it while
   * the callback works. Stop-and-copy reads every chunk, so none asked for ahead goes unread. An mmapped
   * chunk is the device's memory until the next data_offset read, so after one the next waits for the
   * callback. The chunk after the last one has size 0 (it only releases the last chunk), so a second
   * empty chunk in a row while bytes are still pending means the device is stuck: an error, never an
   * endless loop. `onChunk` views are valid until it settles. A drain that fails (its callback, a read)
   * returns its error once the chunk asked for ahead has arrived or failed.
   */
  async drain(onChunk: (chunk: Uint8Array) => Promise<void> | void): Promise<{ chunks: number; bytes: number }> {
    let chunks = 0;
    let bytes = 0;
    let empty = 0;
    let buffer = 0;
    let ahead: Promise<{ chunk: Uint8Array; mapped: boolean }> | null = null;
    let pendingRead = this.pendingBytes();
    try {
      for (;;) {
        const pending = await pendingRead;
        // pending_bytes was read before the chunk ahead was asked for, so it still counted the last
        // chunk: never 0 with one ahead.
        if (pending === 0n && !ahead) return { chunks, bytes };
        const { chunk, mapped } = await (ahead ?? this.nextChunk(buffer));
        ahead = null;
        pendingRead = readAhead(this.pendingBytes());
        if (chunk.byteLength === 0) {
          if (++empty > 1) throw new VfioError(Errno.EIO, `device reports ${pending} pending bytes but produces none`);
          continue;
        }
        empty = 0;
        chunks++;
        bytes += chunk.byteLength;
        if (!mapped) {
          buffer ^= 1;
          ahead = readAhead(this.nextChunk(buffer));
        }
        await onChunk(chunk);
      }
    } catch (err) {
      // Nothing of a failed drain may still be landing in a chunk buffer once it has returned.
      await ahead?.catch(() => undefined);
      throw err;
    }
  }

  /**
   * Pre-copy: chunks while pending and within `budget` bytes; stops at the first empty chunk. `onChunk`
   * may get a view of mapped memory that is only valid until its promise settles (see nextChunk).
   * pending_bytes is asked for while the callback runs, as in drain().
   */
  async iterate(
    budget: number,
    onChunk: (chunk: Uint8Array) => Promise<void> | void,
  ): Promise<{ chunks: number; bytes: number }> {
    let chunks = 0;
    let bytes = 0;
    let pendingRead = bytes < budget ? this.pendingBytes() : null;
    while (pendingRead && (await pendingRead) > 0n) {
      const { chunk } = await this.nextChunk();
      if (chunk.byteLength === 0) break;
      chunks++;
      bytes += chunk.byteLength;
      pendingRead = bytes < budget ? readAhead(this.pendingBytes()) : null;
      await onChunk(chunk);
    }
    return { chunks, bytes };
  }

  /**
   * Resuming: writes `data` at data_offset and then data_size, splitting it into pieces that fit the room
   * at data_offset. Only the byte order matters to the device, not how the source chunked it.
   */
  async loadBuffer(data: Uint8Array): Promise<void> {
    let at = 0;
    while (at < data.byteLength) {
      const offset = Number(await this.readField('data_offset'));
      const room = this.port.size - offset;
      this.checkWindow(offset, Math.min(room, 1), 'data');
      const piece = data.subarray(at, at + Math.min(room, data.byteLength - at));
      await this.writeData(offset, piece);
      await this.writeField('data_size', BigInt(piece.byteLength));
      at += piece.byteLength;
    }
  }

  /**
   * Pulls the device's dirty bitmap for pfns [startPfn, startPfn + count) of `pageSize` bytes: writes the
   * three query fields, then reads copied_pfns until the counts cover the range (0 = the rest is clean,
   * all-ones = the rest is dirty), reading each chunk's bitmap at data_offset.
   */
  async dirtyBitmap(
    startPfn: bigint,
    pageSize: bigint,
    count: bigint,
    sink: DirtyBitmapSink,
  ): Promise<DirtyQueryResult> {
    await this.writeField('start_pfn', startPfn);
    await this.writeField('page_size', pageSize);
    await this.writeField('total_pfns', count);
    let pfn = startPfn;
    let remaining = count;
    let reads = 0;
    let dirtyPfns = 0n;
    while (remaining > 0n) {
      const n = await this.readField('copied_pfns');
      reads++;
      if (n === DIRTY_PFNS_NONE) break;
      if (n === DIRTY_PFNS_ALL) {
        sink(pfn, Number(remaining), 'all');
        dirtyPfns += remaining;
        break;
      }
      if (n > remaining) {
        throw new VfioError(Errno.EIO, `device copied ${n} pfns, more than the ${remaining} left in the range`);
      }
      const offset = Number(await this.readField('data_offset'));
      const bytes = Math.ceil(Number(n) / 8);
      this.checkWindow(offset, bytes, 'bitmap');
      const bitmap = await this.readData(offset, bytes);
      sink(pfn, Number(n), bitmap);
      dirtyPfns += BigInt(countBits(bitmap, Number(n)));
      pfn += n;
      remaining -= n;
    }
    return { reads, dirtyPfns };
  }

  private checkWindow(offset: number, size: number, what: string): void {
    if (offset <= 0 || offset + size > this.port.size) {
      throw new VfioError(
        Errno.EIO,
        `device put ${size} ${what} bytes at ${offset}, outside its ${this.port.size}-byte region`,
      );
    }
  }

  private async readData(offset: number, size: number): Promise<Uint8Array> {
    const view = this.port.mapped(offset, size);
    if (view) return view.slice();
    // One access: what the port returns is already ours (RegionPort.read results are never reused).
    if (size > 0 && size <= this.maxAccess) return this.port.read(offset, size);
    const out = new Uint8Array(size);
    for (let at = 0; at < size; at += this.maxAccess) {
      out.set(await this.port.read(offset + at, Math.min(this.maxAccess, size - at)), at);
    }
    return out;
  }

  private async writeData(offset: number, data: Uint8Array): Promise<void> {
    const view = this.port.mapped(offset, data.byteLength);
    if (view) {
      view.set(data);
      return;
    }
    for (let at = 0; at < data.byteLength; at += this.maxAccess) {
      await this.port.write(offset + at, data.subarray(at, at + this.maxAccess));
    }
  }
}

function countBits(bitmap: Uint8Array, n: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if ((bitmap[i >>> 3]! >>> (i & 7)) & 1) c++;
  return c;
}
