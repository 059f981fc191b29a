// REGION_WRITE_MULTI (cmd 15, spec 0.9.2; libvfio-user does not implement it and replies EINVAL):
// a batch of small region writes, offered by the server through the `write_multiple` capability.
// Request: wr_cnt u64, then wr_cnt × {offset u64, region u32, count u32, data[8]} (24 bytes each).
// Reply: wr_cnt u64.

import { WRITE_MULTI_MAX_DATA } from './limits.ts';
import { fail, Reader, Writer } from './wire.ts';

export const WRITE_MULTI_HEADER_SIZE = 8;
export const WRITE_MULTI_ENTRY_SIZE = 24;
/** QEMU's batch limit (not a protocol rule). */
export const QEMU_WRITE_MULTI_MAX = 200;

export interface MultiWrite {
  offset: bigint;
  region: number;
  /** 0..8 bytes; count = data.byteLength (a view into the input when decoded). */
  data: Uint8Array;
}

const REQ = 'REGION_WRITE_MULTI request';
const REP = 'REGION_WRITE_MULTI reply';

export function encodeWriteMultiRequest(m: { writes: MultiWrite[] }): Uint8Array {
  const w = new Writer(REQ, WRITE_MULTI_HEADER_SIZE + WRITE_MULTI_ENTRY_SIZE * m.writes.length);
  w.u64(0, 'wr_cnt', BigInt(m.writes.length));
  m.writes.forEach((e, i) => {
    const at = WRITE_MULTI_HEADER_SIZE + WRITE_MULTI_ENTRY_SIZE * i;
    const n = e.data.byteLength;
    if (n > WRITE_MULTI_MAX_DATA) fail(REQ, `writes[${i}].count`, `is ${n}, at most ${WRITE_MULTI_MAX_DATA}`);
    w.u64(at, `writes[${i}].offset`, e.offset).u32(at + 8, `writes[${i}].region`, e.region);
    w.u32(at + 12, `writes[${i}].count`, n).bytes(at + 16, e.data);
  });
  return w.out;
}

// Bytes of data[8] beyond count are padding and are not read.
export function decodeWriteMultiRequest(payload: Uint8Array): { writes: MultiWrite[] } {
  const r = new Reader(REQ, payload).atLeast(WRITE_MULTI_HEADER_SIZE);
  const count = r.u64(0);
  const room = BigInt(Math.floor((r.length - WRITE_MULTI_HEADER_SIZE) / WRITE_MULTI_ENTRY_SIZE));
  if (count !== room) r.fail('wr_cnt', `is ${count}, the payload holds ${room}`);
  r.exactly(WRITE_MULTI_HEADER_SIZE + WRITE_MULTI_ENTRY_SIZE * Number(count));
  const writes: MultiWrite[] = [];
  for (let i = 0; i < Number(count); i++) {
    const at = WRITE_MULTI_HEADER_SIZE + WRITE_MULTI_ENTRY_SIZE * i;
    const n = r.u32(at + 12);
    if (n > WRITE_MULTI_MAX_DATA) r.fail(`writes[${i}].count`, `is ${n}, at most ${WRITE_MULTI_MAX_DATA}`);
    writes.push({ offset: r.u64(at), region: r.u32(at + 8), data: r.slice(at + 16, n) });
  }
  return { writes };
}

export function encodeWriteMultiReply(m: { wrCnt: bigint }): Uint8Array {
  return new Writer(REP, WRITE_MULTI_HEADER_SIZE).u64(0, 'wr_cnt', m.wrCnt).out;
}

export function decodeWriteMultiReply(payload: Uint8Array): { wrCnt: bigint } {
  const r = new Reader(REP, payload).exactly(WRITE_MULTI_HEADER_SIZE);
  return { wrCnt: r.u64(0) };
}
