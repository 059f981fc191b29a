// RAM section payloads (QEMU's ram.c encoding): each record starts with be64 (offset | flags); a page
// record names its RAMBlock unless CONTINUE says "same block as the previous record"; a section's first
// page always names its block, so every section decodes on its own.

import { be8, be64, shortString } from './bytes.ts';
import { RAM_FLAG_MASK, RamFlag, TARGET_PAGE_SIZE } from './constants.ts';
import { StreamError } from './errors.ts';

export interface RamBlockInfo {
  name: string;
  usedLength: number;
}

export class RamPayloadBuilder {
  private pieces: Uint8Array[] = [];
  private length = 0;
  private lastBlock: string | null = null;
  private records = 0;

  get byteLength(): number {
    return this.length;
  }

  get isEmpty(): boolean {
    return this.records === 0;
  }

  private push(p: Uint8Array): void {
    this.pieces.push(p);
    this.length += p.byteLength;
  }

  memSize(total: number, blocks: readonly RamBlockInfo[]): void {
    this.push(be64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)));
    for (const b of blocks) {
      this.push(shortString(b.name));
      this.push(be64(BigInt(b.usedLength)));
    }
    this.records++;
  }

  private pageHeader(block: string, offset: number, flag: number): void {
    const cont = this.lastBlock === block;
    this.push(be64(BigInt(offset) | BigInt(flag | (cont ? RamFlag.CONTINUE : 0))));
    if (!cont) this.push(shortString(block));
    this.lastBlock = block;
    this.records++;
  }

  /** A page with its contents; `data` (4096 bytes) is referenced, not copied. */
  page(block: string, offset: number, data: Uint8Array): void {
    if (data.byteLength !== TARGET_PAGE_SIZE)
      throw new RangeError(`a RAM page is ${TARGET_PAGE_SIZE} bytes, got ${data.byteLength}`);
    this.pageHeader(block, offset, RamFlag.PAGE);
    this.push(data);
  }

  /** A page filled with one byte (a zero page: fill 0). */
  zero(block: string, offset: number, fill = 0): void {
    this.pageHeader(block, offset, RamFlag.ZERO);
    this.push(be8(fill));
  }

  eos(): void {
    this.push(be64(BigInt(RamFlag.EOS)));
    this.records++;
  }

  /** The pieces so far; the builder starts afresh (and names the block again on its next page). */
  take(): { pieces: Uint8Array[]; byteLength: number } {
    const out = { pieces: this.pieces, byteLength: this.length };
    this.pieces = [];
    this.length = 0;
    this.lastBlock = null;
    this.records = 0;
    return out;
  }
}

export type RamRecord =
  | { kind: 'mem-size'; total: bigint; blocks: { name: string; usedLength: bigint }[] }
  | { kind: 'page'; block: string; offset: bigint; data: Uint8Array }
  | { kind: 'zero'; block: string; offset: bigint; fill: number }
  | { kind: 'eos' };

export interface RamDecodeContext {
  /** Blocks this side has, by name, with their sizes in bytes. */
  blocks: Map<string, number>;
}

const KNOWN = RamFlag.ZERO | RamFlag.MEM_SIZE | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE;

/** Decodes one section's RAM payload; every record is checked before it is yielded. */
export function* decodeRamPayload(payload: Uint8Array, ctx: RamDecodeContext): Generator<RamRecord> {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let at = 0;
  let block: string | null = null;
  const fail = (msg: string): never => {
    throw new StreamError(`RAM: ${msg}`, at);
  };
  const need = (n: number, what: string) => {
    if (at + n > payload.byteLength) fail(`${what} runs past the end of the section`);
  };
  const name = (): string => {
    need(1, 'block name length');
    const len = payload[at]!;
    need(1 + len, 'block name');
    const s = new TextDecoder().decode(payload.subarray(at + 1, at + 1 + len));
    at += 1 + len;
    return s;
  };
  while (at < payload.byteLength) {
    need(8, 'record header');
    const v = dv.getBigUint64(at, false);
    const flags = Number(v & RAM_FLAG_MASK);
    const addr = v & ~RAM_FLAG_MASK;
    at += 8;
    if ((flags & ~KNOWN) !== 0) fail(`unsupported flags 0x${flags.toString(16)}`);
    const kind = flags & ~RamFlag.CONTINUE;
    if (kind === RamFlag.EOS) {
      if (flags !== RamFlag.EOS || addr !== 0n) fail('malformed EOS record');
      yield { kind: 'eos' };
      if (at !== payload.byteLength) fail('bytes after EOS');
      return;
    }
    if (kind === RamFlag.MEM_SIZE) {
      if (flags & RamFlag.CONTINUE) fail('MEM_SIZE with CONTINUE');
      const blocks: { name: string; usedLength: bigint }[] = [];
      let sum = 0n;
      while (sum < addr) {
        const n = name();
        need(8, 'block length');
        const used = dv.getBigUint64(at, false);
        at += 8;
        const mine = ctx.blocks.get(n);
        if (mine === undefined) fail(`unknown RAM block "${n}"`);
        if (BigInt(mine!) !== used) fail(`RAM block "${n}" is ${used} bytes at the source, ${mine} here`);
        blocks.push({ name: n, usedLength: used });
        sum += used;
      }
      if (sum !== addr) fail(`block lengths add up to ${sum}, MEM_SIZE says ${addr}`);
      yield { kind: 'mem-size', total: addr, blocks };
      continue;
    }
    if (kind !== RamFlag.PAGE && kind !== RamFlag.ZERO)
      fail(`record flags 0x${flags.toString(16)} name no record kind`);
    if (flags & RamFlag.CONTINUE) {
      if (block === null) fail('CONTINUE with no previous block in this section');
    } else {
      block = name();
    }
    const size = ctx.blocks.get(block!);
    if (size === undefined) fail(`unknown RAM block "${block}"`);
    if (addr + BigInt(TARGET_PAGE_SIZE) > BigInt(size!))
      fail(`page at ${addr} is outside block "${block}" (${size} bytes)`);
    if (kind === RamFlag.PAGE) {
      need(TARGET_PAGE_SIZE, 'page');
      const data = payload.subarray(at, at + TARGET_PAGE_SIZE);
      at += TARGET_PAGE_SIZE;
      yield { kind: 'page', block: block!, offset: addr, data };
    } else {
      need(1, 'fill byte');
      const fill = payload[at]!;
      at += 1;
      yield { kind: 'zero', block: block!, offset: addr, fill };
    }
  }
  fail('section ends without EOS');
}
