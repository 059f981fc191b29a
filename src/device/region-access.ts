// What the seed and the Linux 5.8 migration regions share: a register area of native-width header fields
// in front of a data section (libvfio-user's v1 lib/migration.c dispatches the same way: the register
// area to its field handlers, everything after it to the data callbacks). Bounds, the header/section
// split and field decoding live here once; each flavor supplies its field values and section rules.
//
// No sockets: a transport calls read()/write() with region offsets and turns a thrown VfioError into an
// error reply.

import { fieldAt, readField, type StructSpec, writeField } from '../abi/fields.ts';
import { einval } from '../errors.ts';
import type { RegionLayout } from './region-layout.ts';

export abstract class MigrationRegionAccess<F extends string> {
  readonly layout: RegionLayout;
  /** The data section's memory. Offsets in it are region offsets minus layout.sectionOffset. */
  readonly sectionMemory: Uint8Array;
  private readonly header: StructSpec<F>;

  /** `sectionMemory`, when given (e.g. an mmap of a memfd a client maps too), must cover the section. */
  protected constructor(layout: RegionLayout, header: StructSpec<F>, sectionMemory?: Uint8Array) {
    this.layout = layout;
    this.header = header;
    const sectionBytes = layout.size - layout.sectionOffset;
    if (sectionMemory && sectionMemory.byteLength !== sectionBytes) {
      throw new RangeError(`sectionMemory must be ${sectionBytes} bytes, got ${sectionMemory.byteLength}`);
    }
    this.sectionMemory = sectionMemory ?? new Uint8Array(sectionBytes);
  }

  read(offset: number, length: number): Uint8Array {
    this.checkBounds(offset, length);
    if (offset < this.layout.sectionOffset) return this.readHeader(offset, length);
    return this.section(offset, length, 'read').slice();
  }

  /**
   * read(offset, dest.byteLength), delivered into `dest` instead of a new buffer: the same checks, rules and
   * side effects, and one copy of the section's bytes (a transport reads straight into its reply).
   */
  readInto(offset: number, dest: Uint8Array): void {
    this.checkBounds(offset, dest.byteLength);
    if (offset < this.layout.sectionOffset) dest.set(this.readHeader(offset, dest.byteLength));
    else dest.set(this.section(offset, dest.byteLength, 'read'));
  }

  /**
   * read(offset, length) with no copy at all, when the range is device data the VMM is reading now: a view
   * of the data section that nothing changes before the region's next access (the device writes a chunk
   * only when an access moves on to the next one). A transport that finishes sending the view before it
   * serves the next access may send it by reference. Undefined where a read must copy (header fields,
   * anything outside the current chunk); the checks and rules of read() apply either way.
   */
  readView(offset: number, length: number): Uint8Array | undefined {
    this.checkBounds(offset, length);
    if (offset < this.layout.sectionOffset || length === 0 || !this.isStableChunk(offset, length)) return undefined;
    return this.section(offset, length, 'read');
  }

  write(offset: number, data: Uint8Array): void {
    this.checkBounds(offset, data.byteLength);
    if (offset < this.layout.sectionOffset) {
      this.writeValue(this.headerField(offset, data.byteLength), readField(data, 0, data.byteLength as 4 | 8));
      return;
    }
    this.section(offset, data.byteLength, 'write').set(data);
  }

  /** A header field's value as the device reports it (reads may have side effects, as in the kernel ABI). */
  protected abstract readValue(name: F): bigint;
  protected abstract writeValue(name: F, value: bigint): void;
  /** Throws when the data section may not be accessed this way now (the flavor's state rules). */
  protected abstract checkSection(offset: number, length: number, what: 'read' | 'write'): void;
  /** Whether [offset, offset + length) lies in the chunk handed out now, unchanged until the next access. */
  protected abstract isStableChunk(offset: number, length: number): boolean;

  private checkBounds(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw einval(`bad access offset ${offset} length ${length}`);
    }
    if (offset + length > this.layout.size) {
      throw einval(`access [${offset}, ${offset + length}) beyond the ${this.layout.size}-byte migration region`);
    }
  }

  private section(offset: number, length: number, what: 'read' | 'write'): Uint8Array {
    this.checkSection(offset, length, what);
    const start = offset - this.layout.sectionOffset;
    return this.sectionMemory.subarray(start, start + length);
  }

  /** Header accesses are one whole field at its native width and alignment; the rest of the area is a gap. */
  private headerField(offset: number, length: number): F {
    if (offset >= this.header.size) {
      throw einval(`offset ${offset} is in the gap between the header and the data section`);
    }
    const f = fieldAt(this.header, offset, length);
    if (!f) {
      throw einval(
        `header access at offset ${offset} width ${length} is not a field at its native width and alignment`,
      );
    }
    if (f.name === 'reserved') throw einval('the reserved field may not be accessed');
    return f.name;
  }

  private readHeader(offset: number, length: number): Uint8Array {
    const value = this.readValue(this.headerField(offset, length));
    const out = new Uint8Array(length);
    writeField(out, 0, length as 4 | 8, value);
    return out;
  }
}
