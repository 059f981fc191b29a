// VFIO device section payloads (QEMU hw/vfio/migration.c; docs/stream.md, "VFIO").
// Tags are be64 0xFFFFFFFF_EF10_xxxx:
//
//   START   DEV_SETUP_STATE, END_OF_STATE
//   PART    DEV_DATA_STATE, be64 size, bytes  (any number of such blocks), END_OF_STATE
//           — or INIT_DATA_SENT in place of END_OF_STATE, once, when the initial data is all sent
//   END     [DEV_DATA_STATE blocks], END_OF_STATE
//   FULL    DEV_CONFIG_STATE, config blob, END_OF_STATE
//
// Ours, not QEMU's: a START for a device driven as Linux 5.8 "v1" or 5.18+ "v2" opens with X_DEV_FLAVOR +
// be64 code (1 = v1, 2 = v2) before DEV_SETUP_STATE, so a destination refuses another flavor's state by
// name before feeding it to its device (a kernel device would only fail on the opaque bytes). Seed
// streams carry no such record, byte for byte as before.
//
// The config blob has no length of its own (in QEMU it is the PCI device's vmstate): it runs up to the
// END_OF_STATE that closes the payload, so a CONFIG block is always last. Device data is never copied:
// a DATA block is a 16-byte header piece plus the caller's view.

import type { MigrationFlavor } from '../abi/migration.ts';
import { be64 } from './bytes.ts';
import { VfioTag } from './constants.ts';
import type { DecodedSection } from './decoder.ts';
import { StreamError } from './errors.ts';

function tag(t: bigint): Uint8Array {
  return be64(t);
}

/** DEV_DATA_STATE + be64 size as one piece, then the data itself (not copied). */
export function vfioDataBlock(chunk: Uint8Array): Uint8Array[] {
  const head = new Uint8Array(16);
  const dv = new DataView(head.buffer);
  dv.setBigUint64(0, VfioTag.DEV_DATA_STATE, false);
  dv.setBigUint64(8, BigInt(chunk.byteLength), false);
  return chunk.byteLength > 0 ? [head, chunk] : [head];
}

function dataBlocks(chunks: Uint8Array | readonly Uint8Array[]): Uint8Array[] {
  const list = chunks instanceof Uint8Array ? [chunks] : chunks;
  return list.flatMap(vfioDataBlock);
}

/** Our vendor tag naming the flavor whose device produced the state (outside QEMU's 0x0001-0x0006). */
export const X_DEV_FLAVOR = 0xffffffffef10f000n;
const FLAVOR_CODES: Record<Exclude<MigrationFlavor, 'seed'>, bigint> = { v1: 1n, v2: 2n };

/**
 * START: DEV_SETUP_STATE, END_OF_STATE (QEMU's: FF FF FF FF EF 10 00 03 | … 00 01); for a v1 or v2
 * device, X_DEV_FLAVOR + be64 code first.
 */
export function vfioSetupPayload(flavor: MigrationFlavor = 'seed'): Uint8Array[] {
  const setup = [tag(VfioTag.DEV_SETUP_STATE), tag(VfioTag.END_OF_STATE)];
  return flavor === 'seed' ? setup : [tag(X_DEV_FLAVOR), be64(FLAVOR_CODES[flavor]), ...setup];
}

/** PART: one DATA block per chunk, then END_OF_STATE. Chunks are referenced, not copied. */
export function vfioDataPayload(chunks: Uint8Array | readonly Uint8Array[]): Uint8Array[] {
  return [...dataBlocks(chunks), tag(VfioTag.END_OF_STATE)];
}

/** PART that reports the initial pre-copy data all sent (switchover-ack): DATA blocks, INIT_DATA_SENT. */
export function vfioInitDataSentPayload(chunks: Uint8Array | readonly Uint8Array[] = []): Uint8Array[] {
  return [...dataBlocks(chunks), tag(VfioTag.DEV_INIT_DATA_SENT)];
}

/** END: any last DATA blocks, then END_OF_STATE. */
export function vfioEndPayload(chunks: Uint8Array | readonly Uint8Array[] = []): Uint8Array[] {
  return [...dataBlocks(chunks), tag(VfioTag.END_OF_STATE)];
}

/** FULL: DEV_CONFIG_STATE, the config blob (not copied), END_OF_STATE. */
export function vfioConfigPayload(blob: Uint8Array): Uint8Array[] {
  return [tag(VfioTag.DEV_CONFIG_STATE), blob, tag(VfioTag.END_OF_STATE)];
}

export type VfioRecord =
  | { kind: 'setup' }
  /** X_DEV_FLAVOR: 'v1', 'v2', or `code N` for a code this build does not know. */
  | { kind: 'flavor'; flavor: string }
  | { kind: 'data'; data: Uint8Array }
  | { kind: 'config'; data: Uint8Array }
  | { kind: 'init-data-sent' }
  | { kind: 'end' };

export interface VfioDecodeContext {
  /** The section the payload came from: errors then name it and carry stream offsets. */
  section?: Pick<DecodedSection, 'idstr' | 'sectionId' | 'seq' | 'payloadOffset'>;
}

const TAG_NAMES = new Map<bigint, string>([
  [VfioTag.END_OF_STATE, 'END_OF_STATE'],
  [VfioTag.DEV_CONFIG_STATE, 'DEV_CONFIG_STATE'],
  [VfioTag.DEV_SETUP_STATE, 'DEV_SETUP_STATE'],
  [VfioTag.DEV_DATA_STATE, 'DEV_DATA_STATE'],
  [VfioTag.DEV_INIT_DATA_SENT, 'DEV_INIT_DATA_SENT'],
  [0xffffffffef100006n, 'DEV_CONFIG_LOAD_READY'],
  [X_DEV_FLAVOR, 'X_DEV_FLAVOR'],
]);

/** The tag's name, or its hex value. */
export function vfioTagName(t: bigint): string {
  return TAG_NAMES.get(t) ?? `0x${t.toString(16).padStart(16, '0')}`;
}

/**
 * Decodes a VFIO section payload: SETUP (followed by END_OF_STATE), DATA blocks, a CONFIG block (blob up
 * to the closing END_OF_STATE), and exactly one terminator — END_OF_STATE, or INIT_DATA_SENT — as the
 * last 8 bytes. The whole payload is checked before anything is returned; data are views of `payload`.
 * Refused (StreamError, code 'payload'): an unknown tag, SETUP not followed by END_OF_STATE, a DATA block
 * running past the end, no terminator, bytes after it.
 */
export function decodeVfioPayload(payload: Uint8Array, ctx: VfioDecodeContext = {}): VfioRecord[] {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const base = ctx.section?.payloadOffset ?? 0;
  const ref = ctx.section
    ? { idstr: ctx.section.idstr, sectionId: ctx.section.sectionId, seq: ctx.section.seq }
    : undefined;
  const out: VfioRecord[] = [];
  const end = payload.byteLength;
  let at = 0;
  let recordAt = 0;
  const fail = (msg: string): never => {
    throw new StreamError(`VFIO: ${msg}`, base + recordAt, ref, 'payload');
  };
  const readTag = (): bigint => {
    if (at + 8 > end) fail(`${end - at} stray bytes where a tag belongs`);
    const t = dv.getBigUint64(at, false);
    at += 8;
    return t;
  };
  const terminator = (name: string) => {
    if (at !== end) {
      recordAt = at;
      fail(`${end - at} bytes after ${name}`);
    }
  };
  while (at < end) {
    recordAt = at;
    const t = readTag();
    switch (t) {
      case VfioTag.END_OF_STATE:
        out.push({ kind: 'end' });
        terminator('END_OF_STATE');
        return out;
      case VfioTag.DEV_INIT_DATA_SENT:
        out.push({ kind: 'init-data-sent' });
        terminator('DEV_INIT_DATA_SENT');
        return out;
      case VfioTag.DEV_SETUP_STATE:
        if (at + 8 > end || dv.getBigUint64(at, false) !== VfioTag.END_OF_STATE)
          fail('DEV_SETUP_STATE is not followed by END_OF_STATE');
        out.push({ kind: 'setup' });
        break;
      case X_DEV_FLAVOR: {
        if (at + 8 > end) fail('X_DEV_FLAVOR code runs past the end of the payload');
        const code = dv.getBigUint64(at, false);
        at += 8;
        const name = Object.entries(FLAVOR_CODES).find(([, c]) => c === code)?.[0];
        out.push({ kind: 'flavor', flavor: name ?? `code ${code}` });
        break;
      }
      case VfioTag.DEV_DATA_STATE: {
        if (at + 8 > end) fail('DEV_DATA_STATE size runs past the end of the payload');
        const size = dv.getBigUint64(at, false);
        at += 8;
        if (size > BigInt(end - at)) fail(`DEV_DATA_STATE block of ${size} bytes runs past the end of the payload`);
        out.push({ kind: 'data', data: payload.subarray(at, at + Number(size)) });
        at += Number(size);
        break;
      }
      case VfioTag.DEV_CONFIG_STATE: {
        if (end - at < 8 || dv.getBigUint64(end - 8, false) !== VfioTag.END_OF_STATE)
          fail('DEV_CONFIG_STATE blob is not closed by END_OF_STATE at the end of the payload');
        out.push({ kind: 'config', data: payload.subarray(at, end - 8) });
        at = end - 8;
        break;
      }
      default:
        fail(
          TAG_NAMES.has(t)
            ? `tag ${vfioTagName(t)} is not supported`
            : `unknown tag 0x${t.toString(16).padStart(16, '0')}`,
        );
    }
  }
  recordAt = at;
  return fail('payload ends without END_OF_STATE');
}
