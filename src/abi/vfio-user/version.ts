// VERSION (cmd 1): major/minor + optional NUL-terminated JSON `{"capabilities":{...}}`, and the negotiation
// rules of both sides as pure functions. Wire names are snake_case; the typed form is camelCase.

import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_MAX_MSG_FDS,
  DEFAULT_PGSIZES,
  MAX_MSG_FDS_LIMIT,
  MIGRATION_PGSIZE,
} from './limits.ts';
import { fail, Reader, Writer } from './wire.ts';

/** The protocol version we speak: libvfio-user's 0.2 (twin socket era). */
export const VERSION_MAJOR = 0;
export const VERSION_MINOR = 2;

/** QEMU's client default for `migration.max_bitmap_size` (not in libvfio-user). */
export const DEFAULT_MAX_BITMAP_SIZE = 256 * 1024 * 1024;

/** Capabilities exactly as sent: an absent member is `undefined`, so "absent" and "default" stay distinct. */
export interface VersionCapabilities {
  maxMsgFds?: number;
  maxDataXferSize?: number;
  maxDmaMaps?: number;
  /** OR of supported DMA page sizes. */
  pgsizes?: number;
  migration?: { pgsize?: number; maxBitmapSize?: number };
  twinSocket?: { supported?: boolean; fdIndex?: number };
  writeMultiple?: boolean;
  /**
   * `x_split_messages`, our extension (not in the vfio-user spec): the server reads a message's body
   * however the socket splits it. libvfio-user reads a body with one recv and drops the connection when
   * that comes back short (its issue #306); it ignores capabilities it does not know, so it never grants
   * this, and a client that was not granted it keeps each message small enough to arrive whole.
   */
  splitMessages?: boolean;
}

export interface Version {
  major: number;
  minor: number;
  /** `undefined` = no JSON at all after major/minor. */
  capabilities?: VersionCapabilities;
}

/** Capabilities with the spec's defaults filled in: what a peer actually promised. */
export interface Capabilities {
  maxMsgFds: number;
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: number;
  /** `undefined` = the peer does not do (v1-era) migration. */
  migration: { pgsize: number; maxBitmapSize: number } | undefined;
  twinSocket: { supported: boolean; fdIndex: number };
  writeMultiple: boolean;
  splitMessages: boolean;
}

const REQ = 'VERSION';

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function num(v: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v))
    fail(REQ, field, `must be an integer, got ${JSON.stringify(v)}`);
  if (v < min || v > max) fail(REQ, field, `is ${v}, must be in ${min}..${max}`);
  return v;
}

function bool(v: unknown, field: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') fail(REQ, field, `must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function obj(v: unknown, field: string): Json | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) fail(REQ, field, `must be an object, got ${JSON.stringify(v)}`);
  return v;
}

/** Drops undefined members so decoded values compare equal to hand-written ones. */
function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

// Unknown members are ignored (as libvfio-user does) so newer peers can add capabilities.
function parseCapabilities(caps: Json): VersionCapabilities {
  const mig = obj(caps.migration, 'migration');
  const twin = obj(caps.twin_socket, 'twin_socket');
  return compact({
    maxMsgFds: num(caps.max_msg_fds, 'max_msg_fds', 0, MAX_MSG_FDS_LIMIT),
    maxDataXferSize: num(caps.max_data_xfer_size, 'max_data_xfer_size', 1),
    maxDmaMaps: num(caps.max_dma_maps, 'max_dma_maps', 1),
    pgsizes: num(caps.pgsizes, 'pgsizes', 1),
    migration:
      mig &&
      compact({
        pgsize: num(mig.pgsize, 'migration.pgsize', 1),
        maxBitmapSize: num(mig.max_bitmap_size, 'migration.max_bitmap_size', 1),
      }),
    twinSocket:
      twin &&
      compact({
        supported: bool(twin.supported, 'twin_socket.supported'),
        fdIndex: num(twin.fd_index, 'twin_socket.fd_index', 0, MAX_MSG_FDS_LIMIT - 1),
      }),
    writeMultiple: bool(caps.write_multiple, 'write_multiple'),
    splitMessages: bool(caps.x_split_messages, 'x_split_messages'),
  });
}

// Member order is fixed (libvfio-user's order, then the spec-0.9.2 additions, then ours) so encodings are
// reproducible.
function capabilitiesJson(c: VersionCapabilities): Json {
  return compact({
    max_msg_fds: c.maxMsgFds,
    max_data_xfer_size: c.maxDataXferSize,
    max_dma_maps: c.maxDmaMaps,
    pgsizes: c.pgsizes,
    migration: c.migration && compact({ pgsize: c.migration.pgsize, max_bitmap_size: c.migration.maxBitmapSize }),
    twin_socket: c.twinSocket && compact({ supported: c.twinSocket.supported, fd_index: c.twinSocket.fdIndex }),
    write_multiple: c.writeMultiple,
    x_split_messages: c.splitMessages,
  });
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Payload for a VERSION request or reply (same layout both ways). */
export function encodeVersion(v: Version): Uint8Array {
  // Round-trip through the parser so an encoder never emits what our own decoder would refuse.
  const caps = v.capabilities && parseCapabilities(capabilitiesJson(v.capabilities));
  const json = caps ? encoder.encode(JSON.stringify({ capabilities: capabilitiesJson(caps) })) : undefined;
  const w = new Writer(REQ, 4 + (json ? json.byteLength + 1 : 0));
  w.u16(0, 'major', v.major).u16(2, 'minor', v.minor);
  if (json) w.bytes(4, json); // the trailing NUL is already 0
  return w.out;
}

export function decodeVersion(payload: Uint8Array): Version {
  const r = new Reader(REQ, payload).atLeast(4);
  const v: Version = { major: r.u16(0), minor: r.u16(2) };
  if (r.length === 4) return v;
  const text = r.slice(4, r.length - 4);
  if (text[text.length - 1] !== 0) fail(REQ, 'JSON', 'is not NUL-terminated');
  const body = text.subarray(0, text.length - 1);
  if (body.includes(0)) fail(REQ, 'JSON', 'contains a NUL before its end');
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(body));
  } catch (err) {
    fail(REQ, 'JSON', `is malformed: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!isObject(parsed)) fail(REQ, 'JSON', 'is not an object');
  v.capabilities = parseCapabilities(obj(parsed.capabilities, 'capabilities') ?? {});
  return v;
}

export const encodeVersionRequest = encodeVersion;
export const decodeVersionRequest = decodeVersion;
export const encodeVersionReply = encodeVersion;
export const decodeVersionReply = decodeVersion;

/** The spec's defaults applied to what a peer sent. */
export function effectiveCapabilities(c: VersionCapabilities = {}): Capabilities {
  return {
    maxMsgFds: c.maxMsgFds ?? DEFAULT_MAX_MSG_FDS,
    maxDataXferSize: c.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE,
    maxDmaMaps: c.maxDmaMaps ?? DEFAULT_MAX_DMA_MAPS,
    pgsizes: c.pgsizes ?? DEFAULT_PGSIZES,
    migration: c.migration && {
      pgsize: c.migration.pgsize ?? MIGRATION_PGSIZE,
      maxBitmapSize: c.migration.maxBitmapSize ?? DEFAULT_MAX_BITMAP_SIZE,
    },
    twinSocket: { supported: c.twinSocket?.supported ?? false, fdIndex: c.twinSocket?.fdIndex ?? 0 },
    writeMultiple: c.writeMultiple ?? false,
    splitMessages: c.splitMessages ?? false,
  };
}

/** What a server is able and willing to offer. */
export interface ServerOffer {
  major: number;
  minor: number;
  maxMsgFds: number;
  maxDataXferSize: number;
  /** Dirty-logging page size if the device migrates (libvfio-user announces it whenever it does). */
  migrationPgsize?: number;
  /** The server can hand out a twin socket. */
  twinSocket: boolean;
  writeMultiple?: boolean;
  /** The server reads message bodies however the socket splits them (x_split_messages). */
  splitMessages?: boolean;
}

export interface Negotiated {
  reply: Version;
  /** The client's limits, defaults applied. */
  client: Capabilities;
  /** Attach the twin socket as fd 0 of the reply. */
  twinSocket: boolean;
}

/**
 * The server side, as libvfio-user does it: same major or EINVAL; reply minor = min(proposed, ours); the
 * server's own limits are always stated; twin_socket, write_multiple and x_split_messages only if the
 * client proposed them.
 */
export function negotiateVersion(proposal: Version, offer: ServerOffer): Negotiated {
  if (proposal.major !== offer.major) fail(REQ, 'major', `is ${proposal.major}, the server speaks ${offer.major}`);
  const client = effectiveCapabilities(proposal.capabilities);
  const proposedPgsize = proposal.capabilities?.migration?.pgsize;
  if (offer.migrationPgsize !== undefined && proposedPgsize !== undefined && proposedPgsize !== offer.migrationPgsize) {
    fail(REQ, 'migration.pgsize', `is ${proposedPgsize}, the server logs at ${offer.migrationPgsize}`);
  }
  // libvfio-user also needs the client to accept at least one fd before it grants a twin socket.
  const twinSocket = offer.twinSocket && client.twinSocket.supported && client.maxMsgFds > 0;
  const caps: VersionCapabilities = {
    maxMsgFds: offer.maxMsgFds,
    maxDataXferSize: offer.maxDataXferSize,
  };
  if (offer.migrationPgsize !== undefined) caps.migration = { pgsize: offer.migrationPgsize };
  if (twinSocket) caps.twinSocket = { supported: true, fdIndex: 0 };
  if (offer.writeMultiple && client.writeMultiple) caps.writeMultiple = true;
  if (offer.splitMessages && client.splitMessages) caps.splitMessages = true;
  return {
    reply: { major: offer.major, minor: Math.min(proposal.minor, offer.minor), capabilities: caps },
    client,
    twinSocket,
  };
}

/**
 * The client side: the reply must keep our major, not raise our minor, and grant no feature we did not
 * propose (reply capabilities ⊆ proposed). Limits are the server's own and may appear unasked; so may
 * `migration`, which libvfio-user announces whenever the device migrates — but then with our page size.
 */
export function checkVersionReply(proposal: Version, reply: Version): Capabilities {
  const R = 'VERSION reply';
  if (reply.major !== proposal.major) fail(R, 'major', `is ${reply.major}, proposed ${proposal.major}`);
  if (reply.minor > proposal.minor) fail(R, 'minor', `is ${reply.minor}, above the proposed ${proposal.minor}`);
  const asked = effectiveCapabilities(proposal.capabilities);
  const got = reply.capabilities ?? {};
  if (got.twinSocket?.supported && !asked.twinSocket.supported) fail(R, 'twin_socket', 'was granted but not proposed');
  if (got.twinSocket?.supported && got.twinSocket.fdIndex === undefined) fail(R, 'twin_socket.fd_index', 'is missing');
  if (got.writeMultiple && !asked.writeMultiple) fail(R, 'write_multiple', 'was granted but not proposed');
  if (got.splitMessages && !asked.splitMessages) fail(R, 'x_split_messages', 'was granted but not proposed');
  const askedPgsize = proposal.capabilities?.migration?.pgsize;
  const gotPgsize = got.migration?.pgsize;
  if (askedPgsize !== undefined && gotPgsize !== undefined && gotPgsize !== askedPgsize) {
    fail(R, 'migration.pgsize', `is ${gotPgsize}, proposed ${askedPgsize}`);
  }
  return effectiveCapabilities(got);
}
