// VFIO device section payloads (QEMU hw/vfio/migration.c; docs/stream.md, "VFIO").
// Tags are be64 0xFFFFFFFF_EF10_xxxx:
//
//   START   DEV_SETUP_STATE, END_OF_STATE
//   PART    DEV_DATA_STATE, be64 size, bytes  (any number of such blocks), END_OF_STATE
//           — or INIT_DATA_SENT in place of END_OF_STATE, once, when the initial data is all sent
//   END     [DEV_DATA_STATE blocks], END_OF_STATE
//   FULL    DEV_CONFIG_STATE, config blob, END_OF_STATE
//
// The config blob has no length of its own (in QEMU it is the PCI device's vmstate): it runs up to the
// END_OF_STATE that closes the payload, so a CONFIG block is always last. Device data is never copied:
// a DATA block is a 16-byte header piece plus the caller's view.

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

/** START: DEV_SETUP_STATE, END_OF_STATE (the spec's example: FF FF FF FF EF 10 00 03 | … 00 01). */
export function vfioSetupPayload(): Uint8Array[] {
  return [tag(VfioTag.DEV_SETUP_STATE), tag(VfioTag.END_OF_STATE)];
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
