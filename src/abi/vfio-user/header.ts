// The 16-byte header every vfio-user message starts with, and framing of header + payload.
// Convention for the whole directory: message codecs work on payloads (the bytes after this header);
// this file joins and splits header and payload. fds travel beside the bytes and are the transport's job.

import { Errno } from '../errno.ts';
import { commandName, HEADER_FLAGS_KNOWN, HeaderFlag, MessageType, type MessageTypeValue } from './commands.ts';
import { HEADER_SIZE, MAX_ERRNO, SERVER_MAX_MSG_SIZE } from './limits.ts';
import { checkFlags, fail, Reader, Writer } from './wire.ts';

export interface Header {
  /** Chosen by the sender, echoed in the reply. u16. */
  msgId: number;
  cmd: number;
  /** Whole message including these 16 bytes. */
  msgSize: number;
  type: MessageTypeValue;
  noReply: boolean;
  error: boolean;
  /** errno of an error reply; 0 everywhere else. */
  errorNo: number;
}

/** A header to send: msgSize is computed from the payload; type defaults to COMMAND. */
export interface HeaderInit {
  msgId: number;
  cmd: number;
  type?: MessageTypeValue;
  noReply?: boolean;
  error?: boolean;
  errorNo?: number;
}

export interface HeaderLimits {
  /** Largest acceptable msg_size. Default libvfio-user's 1 MiB + 32; a client that negotiated a bigger
   *  max_data_xfer_size for DMA_READ/WRITE passes that plus the access header. */
  maxMsgSize?: number;
}

const MSG = 'header';

function check(h: Header, maxMsgSize: number): void {
  if (h.type !== MessageType.COMMAND && h.type !== MessageType.REPLY) fail(MSG, 'flags.type', `is ${h.type}`);
  if (h.msgSize < HEADER_SIZE) fail(MSG, 'msg_size', `is ${h.msgSize}, below the header size ${HEADER_SIZE}`);
  if (h.msgSize > maxMsgSize) fail(MSG, 'msg_size', `is ${h.msgSize}, above the limit ${maxMsgSize}`);
  if (h.type === MessageType.COMMAND) {
    if (h.error) fail(MSG, 'flags', `has ERROR set on a command (${commandName(h.cmd)})`);
    if (h.errorNo !== 0) fail(MSG, 'error_no', `is ${h.errorNo} in a command, must be 0`);
  } else {
    if (h.noReply) fail(MSG, 'flags', `has NO_REPLY set on a reply (${commandName(h.cmd)})`);
    // An error reply may carry a payload: libvfio-user allocates the reply before its handler fails and
    // sends it with ERROR set (lib/libvfio-user.c, e.g. a refused REGION_READ). The receiver reads those
    // msg_size - 16 bytes (still within maxMsgSize) and discards them; only error_no is the answer.
    if (!h.error && h.errorNo !== 0) fail(MSG, 'error_no', `is ${h.errorNo} without ERROR, must be 0`);
  }
}

export function encodeHeader(h: Header, limits: HeaderLimits = {}): Uint8Array {
  check(h, limits.maxMsgSize ?? SERVER_MAX_MSG_SIZE);
  const flags = h.type | (h.noReply ? HeaderFlag.NO_REPLY : 0) | (h.error ? HeaderFlag.ERROR : 0);
  return new Writer(MSG, HEADER_SIZE)
    .u16(0, 'msg_id', h.msgId)
    .u16(2, 'cmd', h.cmd)
    .u32(4, 'msg_size', h.msgSize)
    .u32(8, 'flags', flags)
    .u32(12, 'error_no', h.errorNo).out;
}

/** Decodes the first 16 bytes of `bytes`. Unknown commands pass: the dispatcher answers them with EINVAL. */
export function decodeHeader(bytes: Uint8Array, limits: HeaderLimits = {}): Header {
  const r = new Reader(MSG, bytes).atLeast(HEADER_SIZE);
  const flags = r.u32(8);
  checkFlags(MSG, 'flags', flags, HEADER_FLAGS_KNOWN);
  const h: Header = {
    msgId: r.u16(0),
    cmd: r.u16(2),
    msgSize: r.u32(4),
    type: (flags & HeaderFlag.TYPE_MASK) as MessageTypeValue,
    noReply: (flags & HeaderFlag.NO_REPLY) !== 0,
    error: (flags & HeaderFlag.ERROR) !== 0,
    errorNo: r.u32(12),
  };
  check(h, limits.maxMsgSize ?? SERVER_MAX_MSG_SIZE);
  return h;
}

/** Header + payload in one buffer, ready for a single sendmsg. */
export function encodeMessage(init: HeaderInit, payload: Uint8Array = new Uint8Array(0), limits?: HeaderLimits) {
  return encodeMessageStart(init, payload, 0, limits);
}

/**
 * Header + the payload's first part, for a message whose last `tailSize` payload bytes the caller sends
 * right after this buffer (bulk data by reference, with no copy into a message buffer): msg_size counts them.
 */
export function encodeMessageStart(init: HeaderInit, payload: Uint8Array, tailSize: number, limits?: HeaderLimits) {
  if (!Number.isSafeInteger(tailSize) || tailSize < 0) fail(MSG, 'tail', `is ${tailSize} bytes`);
  const header: Header = {
    msgId: init.msgId,
    cmd: init.cmd,
    msgSize: HEADER_SIZE + payload.byteLength + tailSize,
    type: init.type ?? MessageType.COMMAND,
    noReply: init.noReply ?? false,
    error: init.error ?? false,
    errorNo: init.errorNo ?? 0,
  };
  const out = new Uint8Array(HEADER_SIZE + payload.byteLength);
  out.set(encodeHeader(header, limits), 0);
  out.set(payload, HEADER_SIZE);
  return out;
}

export interface Message {
  header: Header;
  /** A view into the input (no copy). */
  payload: Uint8Array;
}

/** Splits one complete message; `bytes` must be exactly msg_size long. */
export function decodeMessage(bytes: Uint8Array, limits?: HeaderLimits): Message {
  const header = decodeHeader(bytes, limits);
  if (bytes.byteLength !== header.msgSize) {
    fail(MSG, 'msg_size', `is ${header.msgSize} but the message is ${bytes.byteLength} bytes`);
  }
  return { header, payload: bytes.subarray(HEADER_SIZE) };
}

/** The header of the reply to `request`: same msg_id and cmd, type REPLY. */
export function replyTo(request: Pick<Header, 'msgId' | 'cmd'>): HeaderInit {
  return { msgId: request.msgId, cmd: request.cmd, type: MessageType.REPLY };
}

/** A header-only error reply to `request` carrying `errno` (what we send; peers may add a payload). */
export function encodeErrorReply(request: Pick<Header, 'msgId' | 'cmd'>, errno: number): Uint8Array {
  return encodeMessage({ ...replyTo(request), error: true, errorNo: errno });
}

/** The errno an error reply stands for: values outside 1..4096 become EINVAL, as libvfio-user's client does. */
export function replyErrno(h: Pick<Header, 'error' | 'errorNo'>): number {
  if (!h.error) return 0;
  return h.errorNo >= 1 && h.errorNo <= MAX_ERRNO ? h.errorNo : Errno.EINVAL;
}
