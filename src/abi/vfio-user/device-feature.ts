// DEVICE_FEATURE (cmd 16): `struct vfio_device_feature` {argsz u32, flags u32, data} carried as is.
// flags = feature id (bits 0-15) | GET | SET | PROBE. Request argsz = the largest reply payload accepted.
// Replies: SET and PROBE echo the request; GET returns the 8-byte header (argsz = reply length) + data.
// Feature data codecs live in feature-migration.ts and feature-dma-logging.ts; this file checks that the
// data of a known feature has the right size, so a server can hand `data` to them without more checks.

import { FEATURE_FLAGS_KNOWN, FeatureFlag, FeatureId, featureName } from '../migration-v2.ts';
import {
  DMA_LOGGING_REPORT_SIZE,
  decodeDmaLoggingControl,
  decodeDmaLoggingReportReply,
  decodeDmaLoggingReportRequest,
  dmaLoggingBitmapSize,
} from './feature-dma-logging.ts';
import { decodeMigrationData, decodeMigStateData, MIGRATION_DATA_SIZE } from './feature-migration.ts';
import { checkFlags, checkU32, fail, hex, Reader, Writer } from './wire.ts';

export const DEVICE_FEATURE_HEADER_SIZE = 8;

export interface DeviceFeature {
  argsz: number;
  /** Feature id, bits 0-15 of flags (FeatureId). */
  feature: number;
  get: boolean;
  set: boolean;
  probe: boolean;
  /** Feature data after the 8-byte header (a view into the input when decoded). */
  data: Uint8Array;
}

export type DeviceFeatureInit = Omit<DeviceFeature, 'argsz' | 'data' | 'get' | 'set' | 'probe'> & {
  argsz?: number;
  get?: boolean;
  set?: boolean;
  probe?: boolean;
  data?: Uint8Array;
};

const REQ = 'DEVICE_FEATURE request';
const REP = 'DEVICE_FEATURE reply';

/** GET/SET each feature allows (kernel uAPI). Unknown ids pass here; the server refuses what it lacks. */
const OPS: Record<number, number> = {
  [FeatureId.PCI_VF_TOKEN]: FeatureFlag.SET,
  [FeatureId.MIGRATION]: FeatureFlag.GET,
  [FeatureId.MIG_DEVICE_STATE]: FeatureFlag.GET | FeatureFlag.SET,
  [FeatureId.LOW_POWER_ENTRY]: FeatureFlag.SET,
  [FeatureId.LOW_POWER_ENTRY_WITH_WAKEUP]: FeatureFlag.SET,
  [FeatureId.LOW_POWER_EXIT]: FeatureFlag.SET,
  [FeatureId.DMA_LOGGING_START]: FeatureFlag.SET,
  [FeatureId.DMA_LOGGING_STOP]: FeatureFlag.SET,
  [FeatureId.DMA_LOGGING_REPORT]: FeatureFlag.GET,
  [FeatureId.MIG_DATA_SIZE]: FeatureFlag.GET,
};

export function featureFlags(m: Pick<DeviceFeature, 'feature' | 'get' | 'set' | 'probe'>): number {
  return (
    (m.feature | (m.get ? FeatureFlag.GET : 0) | (m.set ? FeatureFlag.SET : 0) | (m.probe ? FeatureFlag.PROBE : 0)) >>>
    0
  );
}

function readHeader(msg: string, payload: Uint8Array): { r: Reader; m: DeviceFeature } {
  const r = new Reader(msg, payload).atLeast(DEVICE_FEATURE_HEADER_SIZE);
  const flags = r.u32(4);
  checkFlags(msg, 'flags', flags, FEATURE_FLAGS_KNOWN);
  const m: DeviceFeature = {
    argsz: r.u32(0),
    feature: flags & FeatureFlag.MASK,
    get: (flags & FeatureFlag.GET) !== 0,
    set: (flags & FeatureFlag.SET) !== 0,
    probe: (flags & FeatureFlag.PROBE) !== 0,
    data: r.slice(DEVICE_FEATURE_HEADER_SIZE, r.length - DEVICE_FEATURE_HEADER_SIZE),
  };
  // Kernel rules: some operation; GET with SET only as a PROBE; argsz covers at least this payload
  // (SET and PROBE replies echo it).
  if (!m.get && !m.set && !m.probe) fail(msg, 'flags', `has none of GET, SET, PROBE (${hex(flags)})`);
  if (m.get && m.set && !m.probe) fail(msg, 'flags', 'has GET and SET without PROBE');
  if (m.argsz < r.length) fail(msg, 'argsz', `is ${m.argsz}, below the payload size ${r.length}`);
  const allowed = OPS[m.feature];
  if (allowed !== undefined) {
    const asked = flags & (FeatureFlag.GET | FeatureFlag.SET);
    if ((asked & ~allowed) !== 0) fail(msg, 'flags', `asks ${featureName(m.feature)} for an operation it lacks`);
  }
  return { r, m };
}

/** Input-side checks of the known migration features (GET requests may carry output space; it is ignored). */
function checkRequestData(msg: string, m: DeviceFeature): void {
  if (m.probe) return; // PROBE never touches data
  switch (m.feature) {
    case FeatureId.MIGRATION:
      if (m.argsz < DEVICE_FEATURE_HEADER_SIZE + MIGRATION_DATA_SIZE) fail(msg, 'argsz', `is ${m.argsz}, GET needs 16`);
      return;
    case FeatureId.MIG_DEVICE_STATE:
      if (m.set) decodeMigStateData(m.data);
      else if (m.argsz < 16) fail(msg, 'argsz', `is ${m.argsz}, GET needs 16`);
      return;
    case FeatureId.DMA_LOGGING_START:
      decodeDmaLoggingControl(m.data);
      return;
    case FeatureId.DMA_LOGGING_STOP:
      // STOP takes no data; what comes with it is ignored, as the kernel (vfio_check_feature with minsz 0)
      // and libvfio-user do. libvfio-user's sample client sends its START control struct again here.
      return;
    case FeatureId.DMA_LOGGING_REPORT: {
      if (m.data.byteLength < DMA_LOGGING_REPORT_SIZE) {
        fail(msg, 'data', `is ${m.data.byteLength} bytes, REPORT needs ${DMA_LOGGING_REPORT_SIZE}`);
      }
      const want = DEVICE_FEATURE_HEADER_SIZE + DMA_LOGGING_REPORT_SIZE;
      const bitmap = dmaLoggingBitmapSize(decodeDmaLoggingReportRequest(m.data.subarray(0, DMA_LOGGING_REPORT_SIZE)));
      if (m.argsz < want + bitmap) fail(msg, 'argsz', `is ${m.argsz}, the report needs ${want + bitmap}`);
      return;
    }
  }
}

function checkGetReplyData(m: DeviceFeature): void {
  switch (m.feature) {
    case FeatureId.MIGRATION:
      decodeMigrationData(m.data);
      return;
    case FeatureId.MIG_DEVICE_STATE:
      decodeMigStateData(m.data);
      return;
    case FeatureId.DMA_LOGGING_REPORT:
      decodeDmaLoggingReportReply(m.data);
      return;
  }
}

function encode(msg: string, m: DeviceFeatureInit): Uint8Array {
  const data = m.data ?? new Uint8Array(0);
  const len = DEVICE_FEATURE_HEADER_SIZE + data.byteLength;
  if (m.feature < 0 || m.feature > FeatureFlag.MASK || !Number.isInteger(m.feature)) {
    fail(msg, 'feature', `is ${m.feature}, must fit 16 bits`);
  }
  const argsz = m.argsz ?? len;
  checkU32(msg, 'argsz', argsz);
  const flags = featureFlags({ feature: m.feature, get: !!m.get, set: !!m.set, probe: !!m.probe });
  return new Writer(msg, len).u32(0, 'argsz', argsz).u32(4, 'flags', flags).bytes(DEVICE_FEATURE_HEADER_SIZE, data).out;
}

export function decodeDeviceFeatureRequest(payload: Uint8Array): DeviceFeature {
  const { m } = readHeader(REQ, payload);
  checkRequestData(REQ, m);
  return m;
}

/** argsz defaults to the payload size; a GET request should pass the reply size it accepts. */
export function encodeDeviceFeatureRequest(m: DeviceFeatureInit): Uint8Array {
  const out = encode(REQ, m);
  decodeDeviceFeatureRequest(out); // one set of rules for both directions
  return out;
}

/** A GET reply has argsz = its own length; SET and PROBE replies are echoes and are checked as requests. */
export function decodeDeviceFeatureReply(payload: Uint8Array): DeviceFeature {
  const { r, m } = readHeader(REP, payload);
  if (m.probe || !m.get) {
    checkRequestData(REP, m);
    return m;
  }
  if (m.argsz !== r.length) fail(REP, 'argsz', `is ${m.argsz}, a GET reply must be its own length ${r.length}`);
  checkGetReplyData(m);
  return m;
}

export function encodeDeviceFeatureReply(m: DeviceFeatureInit): Uint8Array {
  const out = encode(REP, m);
  decodeDeviceFeatureReply(out);
  return out;
}

/** The reply to a SET or PROBE request: the request itself. */
export function encodeDeviceFeatureEcho(request: Uint8Array): Uint8Array {
  const m = decodeDeviceFeatureRequest(request);
  if (m.get && !m.probe) fail(REP, 'flags', 'a GET is answered with data, not an echo');
  return request.slice();
}
