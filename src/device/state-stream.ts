// The byte format our sample devices use for their saved state. To the VMM it is opaque; it exists so the
// devices can be split into chunks of any size on save and fed back in pieces of any size on resume.
//
// A stream is a sequence of records, each a 24-byte little-endian header and `length` payload bytes:
//   u16 kind | u16 reserved (0) | u32 length | u64 arg0 | u64 arg1
// BEGIN first (payload: JSON descriptor of the device model; a mismatch is rejected), END last (payload:
// a digest over the state as sent, so an incomplete or altered stream is refused before the device runs).

export const RECORD_HEADER_SIZE = 24;

export const RecordKind = {
  BEGIN: 1,
  REGS: 2,
  /** arg0 = offset in device memory; payload = the bytes */
  MEM: 3,
  /** arg0 = offset, arg1 = length of an all-zero span; no payload */
  ZERO: 4,
  /** payload = 32-byte digest; arg0 = number of records before END */
  END: 5,
} as const;

export type RecordKindValue = (typeof RecordKind)[keyof typeof RecordKind];

export interface RecordHeader {
  kind: RecordKindValue;
  length: number;
  arg0: bigint;
  arg1: bigint;
}

const KINDS = new Set<number>(Object.values(RecordKind));

export function encodeRecordHeader(h: RecordHeader): Uint8Array {
  const out = new Uint8Array(RECORD_HEADER_SIZE);
  writeRecordHeader(new DataView(out.buffer), h, h.length);
  return out;
}

/**
 * Writes a header with payload length `length` into the first RECORD_HEADER_SIZE bytes of `dv` (a writer
 * reuses one buffer; the length is separate so that no header object is built per record).
 */
export function writeRecordHeader(dv: DataView, h: Omit<RecordHeader, 'length'>, length: number): void {
  dv.setUint16(0, h.kind, true);
  dv.setUint16(2, 0, true);
  dv.setUint32(4, length, true);
  dv.setBigUint64(8, h.arg0, true);
  dv.setBigUint64(16, h.arg1, true);
}

/** Decodes a header; returns a reason string instead of throwing so callers can wrap it in their error type. */
export function decodeRecordHeader(bytes: Uint8Array): RecordHeader | string {
  if (bytes.byteLength < RECORD_HEADER_SIZE) return `record header needs ${RECORD_HEADER_SIZE} bytes`;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, RECORD_HEADER_SIZE);
  const kind = dv.getUint16(0, true);
  if (!KINDS.has(kind)) return `unknown record kind ${kind}`;
  if (dv.getUint16(2, true) !== 0) return 'reserved record header bits are set';
  return {
    kind: kind as RecordKindValue,
    length: dv.getUint32(4, true),
    arg0: dv.getBigUint64(8, true),
    arg1: dv.getBigUint64(16, true),
  };
}

export interface StateRecord {
  header: Omit<RecordHeader, 'length'>;
  payload?: Uint8Array;
  /**
   * The payload is a live view of device memory: whatever part of it does not fit in the chunk being
   * produced is copied at once, so bytes handed out later are the bytes as they were when pulled.
   */
  live?: boolean;
  /**
   * Called with the payload's CRC-32C once every byte of it has been copied out (or snapshotted): the
   * checksum of exactly the bytes sent, computed by the copy that sends them. Always before the next
   * record is pulled.
   */
  checksum?: (crc: number) => void;
}
