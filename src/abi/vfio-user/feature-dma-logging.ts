// Feature data of DEVICE_FEATURE DMA_LOGGING_START (id 6), and DMA_LOGGING_REPORT (id 8), with the kernel's
// user pointers replaced by inline data as vfio-user does. (DMA_LOGGING_STOP, id 7, has no data.)
// START: page_size u64, num_ranges u32, reserved u32, then num_ranges × {iova u64, length u64} from 16.
// REPORT request: iova, length, page_size (24 bytes); reply: the same 24 bytes + the bitmap from 24.

import { dirtyBitmapSize, isPowerOfTwo } from './bitmap.ts';
import { SERVER_MAX_DATA_XFER_SIZE } from './limits.ts';
import { checkRange, fail, Reader, Writer } from './wire.ts';

export const DMA_LOGGING_CONTROL_SIZE = 16;
export const DMA_LOGGING_RANGE_SIZE = 16;
export const DMA_LOGGING_REPORT_SIZE = 24;

export interface DmaLoggingRange {
  iova: bigint;
  length: bigint;
}

export interface DmaLoggingControl {
  pageSize: bigint;
  /** Empty = log everything (vfio-user; the kernel refuses 0 ranges). libvfio-user ignores the ranges. */
  ranges: DmaLoggingRange[];
}

export interface DmaLoggingReportRequest {
  iova: bigint;
  length: bigint;
  pageSize: bigint;
}

export interface DmaLoggingReportReply extends DmaLoggingReportRequest {
  /** One bit per page (little-endian u64 words), a view into the input when decoded. */
  bitmap: Uint8Array;
}

const START = 'DEVICE_FEATURE DMA_LOGGING_START data';
const REPORT = 'DEVICE_FEATURE DMA_LOGGING_REPORT data';

function checkPageSize(msg: string, pageSize: bigint): void {
  if (!isPowerOfTwo(pageSize)) fail(msg, 'page_size', `is ${pageSize}, must be a power of two`);
}

export function encodeDmaLoggingControl(m: DmaLoggingControl): Uint8Array {
  checkPageSize(START, m.pageSize);
  const w = new Writer(START, DMA_LOGGING_CONTROL_SIZE + DMA_LOGGING_RANGE_SIZE * m.ranges.length)
    .u64(0, 'page_size', m.pageSize)
    .u32(8, 'num_ranges', m.ranges.length);
  m.ranges.forEach((range, i) => {
    const at = DMA_LOGGING_CONTROL_SIZE + DMA_LOGGING_RANGE_SIZE * i;
    checkRange(START, `ranges[${i}]`, range.iova, range.length);
    w.u64(at, `ranges[${i}].iova`, range.iova).u64(at + 8, `ranges[${i}].length`, range.length);
  });
  return w.out;
}

/** `reserved` is not interpreted (written as 0). */
export function decodeDmaLoggingControl(data: Uint8Array): DmaLoggingControl {
  const r = new Reader(START, data).atLeast(DMA_LOGGING_CONTROL_SIZE);
  const pageSize = r.u64(0);
  checkPageSize(START, pageSize);
  const n = r.u32(8);
  if ((r.length - DMA_LOGGING_CONTROL_SIZE) / DMA_LOGGING_RANGE_SIZE !== n) {
    r.fail('num_ranges', `is ${n}, but ${r.length - DMA_LOGGING_CONTROL_SIZE} bytes of ranges follow`);
  }
  const ranges: DmaLoggingRange[] = [];
  for (let i = 0; i < n; i++) {
    const at = DMA_LOGGING_CONTROL_SIZE + DMA_LOGGING_RANGE_SIZE * i;
    const range = { iova: r.u64(at), length: r.u64(at + 8) };
    checkRange(START, `ranges[${i}]`, range.iova, range.length);
    ranges.push(range);
  }
  return { pageSize, ranges };
}

/** Bitmap bytes a REPORT of this range produces: ceil(pages / 64) * 8. */
export function dmaLoggingBitmapSize(m: DmaLoggingReportRequest): number {
  checkPageSize(REPORT, m.pageSize);
  checkRange(REPORT, 'iova', m.iova, m.length);
  const bytes = dirtyBitmapSize(REPORT, m.length, m.pageSize);
  if (bytes > BigInt(SERVER_MAX_DATA_XFER_SIZE)) fail(REPORT, 'length', `needs a ${bytes}-byte bitmap, too large`);
  return Number(bytes);
}

function writeReport(w: Writer, m: DmaLoggingReportRequest): Writer {
  return w.u64(0, 'iova', m.iova).u64(8, 'length', m.length).u64(16, 'page_size', m.pageSize);
}

export function encodeDmaLoggingReportRequest(m: DmaLoggingReportRequest): Uint8Array {
  dmaLoggingBitmapSize(m);
  return writeReport(new Writer(REPORT, DMA_LOGGING_REPORT_SIZE), m).out;
}

/** Exactly 24 bytes (a caller holding a GET request with output space passes only the input part). */
export function decodeDmaLoggingReportRequest(data: Uint8Array): DmaLoggingReportRequest {
  const r = new Reader(REPORT, data).exactly(DMA_LOGGING_REPORT_SIZE);
  const m = { iova: r.u64(0), length: r.u64(8), pageSize: r.u64(16) };
  dmaLoggingBitmapSize(m);
  return m;
}

export function encodeDmaLoggingReportReply(m: DmaLoggingReportReply): Uint8Array {
  const bytes = dmaLoggingBitmapSize(m);
  if (m.bitmap.byteLength !== bytes) fail(REPORT, 'bitmap', `is ${m.bitmap.byteLength} bytes, must be ${bytes}`);
  return writeReport(new Writer(REPORT, DMA_LOGGING_REPORT_SIZE + bytes), m).bytes(DMA_LOGGING_REPORT_SIZE, m.bitmap)
    .out;
}

export function decodeDmaLoggingReportReply(data: Uint8Array): DmaLoggingReportReply {
  const r = new Reader(REPORT, data).atLeast(DMA_LOGGING_REPORT_SIZE);
  const m = { iova: r.u64(0), length: r.u64(8), pageSize: r.u64(16) };
  const bytes = dmaLoggingBitmapSize(m);
  r.exactly(DMA_LOGGING_REPORT_SIZE + bytes);
  return { ...m, bitmap: r.slice(DMA_LOGGING_REPORT_SIZE, bytes) };
}
