// `vfio-migrate probe`: what `lspci -vv` shows for a PCI device, for the device behind a vfio-user socket:
// the negotiated protocol, device info, every region with its caps, every IRQ index, and which migration
// flavor the device offers. `--json` prints the same as one JSON object.
import type { RegionFlavor } from '../abi/migration.ts';
import { MigrationFlag } from '../abi/migration-v2.ts';
import { DeviceInfoFlag } from '../abi/vfio-user/device-info.ts';
import { IrqInfoFlag } from '../abi/vfio-user/irq.ts';
import { type RegionCap, RegionInfoFlag } from '../abi/vfio-user/region-info.ts';
import type { Capabilities } from '../abi/vfio-user/version.ts';
import { native } from '../native/addon.ts';
import { VfioUserClient } from '../vfio-user/client.ts';
import { migrationFeatureFlags } from '../vfio-user/migration-discovery.ts';
import { migrationFlavorOf } from '../vfio-user/region-port.ts';
import { bytes } from './format.ts';
import { UsageError } from './option-types.ts';
import type { ProbeOptions } from './options/probe.ts';

const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'];
const IRQ_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];

export function regionName(index: number): string {
  return REGION_NAMES[index] ?? 'device-specific';
}

export function irqName(index: number): string {
  return IRQ_NAMES[index] ?? `IRQ index ${index}`;
}

function flagNames(flags: number, names: readonly [number, string][]): string[] {
  return names.filter(([bit]) => (flags & bit) !== 0).map(([, n]) => n);
}

const DEVICE_FLAGS: [number, string][] = [
  [DeviceInfoFlag.RESET, 'RESET'],
  [DeviceInfoFlag.PCI, 'PCI'],
];
const REGION_FLAGS: [number, string][] = [
  [RegionInfoFlag.READ, 'R'],
  [RegionInfoFlag.WRITE, 'W'],
  [RegionInfoFlag.MMAP, 'MMAP'],
  [RegionInfoFlag.CAPS, 'CAPS'],
];
const IRQ_FLAGS: [number, string][] = [
  [IrqInfoFlag.EVENTFD, 'EVENTFD'],
  [IrqInfoFlag.MASKABLE, 'MASKABLE'],
  [IrqInfoFlag.AUTOMASKED, 'AUTOMASKED'],
  [IrqInfoFlag.NORESIZE, 'NORESIZE'],
];

/** What a region TYPE cap means (the types a vfio-user migration region uses, and Linux's others). */
export function regionTypeName(type: number, subtype: number): string {
  const flavor = migrationFlavorOf({ type, subtype });
  if (flavor === 'seed') return 'migration region, seed flavor (2019 draft)';
  if (flavor === 'v1') return 'migration region, v1 flavor (Linux 5.8)';
  if ((type & 0x8000_0000) !== 0) return `PCI vendor 0x${(type & 0xffff).toString(16).padStart(4, '0')} region`;
  if (type === 1) return 'graphics region';
  return 'unknown type';
}

/** bigint as a JSON number when exact, else as a decimal string. */
function jsonInt(v: bigint): number | string {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
}

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

type CapReport =
  | { kind: 'sparse-mmap'; areas: { offset: number | string; size: number | string }[] }
  | { kind: 'type'; type: number; subtype: number; name: string }
  | { kind: 'raw'; id: number; version: number; bytes: number };

interface RegionReport {
  index: number;
  name: string;
  present: boolean;
  size: number | string;
  flags: number;
  flagNames: string[];
  /** mmap offset of the region within its fd. */
  offset: number | string;
  fd: boolean;
  caps: CapReport[];
  error?: string;
}

interface IrqReport {
  index: number;
  name: string;
  count: number;
  flags: number;
  flagNames: string[];
  error?: string;
}

export interface ProbeReport {
  socket: string;
  version: { major: number; minor: number };
  capabilities: { server: Record<string, unknown>; client: Record<string, unknown> };
  device: { flags: number; flagNames: string[]; numRegions: number; numIrqs: number };
  regions: RegionReport[];
  irqs: IrqReport[];
  /** Every migration interface the device offers (empty: none). */
  migration: MigrationOfferReport[];
}

export type MigrationOfferReport =
  | { flavor: RegionFlavor; region: number; type: number; subtype: number }
  | { flavor: 'v2'; flags: number; flagNames: string[] };

const V2_MIGRATION_FLAGS: readonly [number, string][] = [
  [Number(MigrationFlag.STOP_COPY), 'STOP_COPY'],
  [Number(MigrationFlag.P2P), 'P2P'],
  [Number(MigrationFlag.PRE_COPY), 'PRE_COPY'],
];

/** Capabilities under their wire names (defaults applied), as VERSION carries them. */
function wireCaps(c: Capabilities, withPeerOnly: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {
    max_msg_fds: c.maxMsgFds,
    max_data_xfer_size: c.maxDataXferSize,
    migration: c.migration ? { pgsize: c.migration.pgsize } : null,
  };
  if (withPeerOnly) {
    out.twin_socket = c.twinSocket.supported;
    out.write_multiple = c.writeMultiple;
    out.x_split_messages = c.splitMessages;
  }
  return out;
}

function capReport(c: RegionCap): CapReport {
  switch (c.kind) {
    case 'sparse-mmap':
      return { kind: 'sparse-mmap', areas: c.areas.map((a) => ({ offset: jsonInt(a.offset), size: jsonInt(a.size) })) };
    case 'type':
      return { kind: 'type', type: c.type, subtype: c.subtype, name: regionTypeName(c.type, c.subtype) };
    case 'raw':
      return { kind: 'raw', id: c.id, version: c.version, bytes: c.data.byteLength };
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Everything a probe learns, from a connected client. Region fds that come along are closed at once. */
export async function probeDevice(client: VfioUserClient): Promise<ProbeReport> {
  const dev = await client.deviceInfo();
  const regions: RegionReport[] = [];
  const migration: MigrationOfferReport[] = [];
  for (let index = 0; index < dev.numRegions; index++) {
    const base = { index, name: regionName(index) };
    try {
      const r = await client.regionInfo(index);
      if (r.fd !== undefined) native().close(r.fd);
      regions.push({
        ...base,
        present: r.size > 0n || r.flags !== 0,
        size: jsonInt(r.size),
        flags: r.flags,
        flagNames: flagNames(r.flags, REGION_FLAGS),
        offset: jsonInt(r.offset),
        fd: r.fd !== undefined,
        caps: r.caps.map(capReport),
      });
      const flavor = index >= REGION_NAMES.length ? migrationFlavorOf(r.type) : null;
      if (flavor && r.type && !migration.some((m) => m.flavor === flavor))
        migration.push({ flavor, region: index, ...r.type });
    } catch (err) {
      if (client.isClosed) throw err;
      regions.push({
        ...base,
        present: false,
        size: 0,
        flags: 0,
        flagNames: [],
        offset: 0,
        fd: false,
        caps: [],
        error: message(err),
      });
    }
  }
  const v2 = await migrationFeatureFlags(client).catch((err) => {
    if (client.isClosed) throw err;
    return null;
  });
  if (v2 !== null) {
    const flags = Number(v2);
    migration.push({ flavor: 'v2', flags, flagNames: flagNames(flags, V2_MIGRATION_FLAGS) });
  }
  const irqs: IrqReport[] = [];
  for (let index = 0; index < dev.numIrqs; index++) {
    try {
      const q = await client.irqInfo(index);
      irqs.push({
        index,
        name: irqName(index),
        count: q.count,
        flags: q.flags,
        flagNames: flagNames(q.flags, IRQ_FLAGS),
      });
    } catch (err) {
      if (client.isClosed) throw err;
      irqs.push({ index, name: irqName(index), count: 0, flags: 0, flagNames: [], error: message(err) });
    }
  }
  return {
    socket: client.path,
    version: client.version,
    capabilities: { server: wireCaps(client.server, true), client: wireCaps(client.proposed, false) },
    device: {
      flags: dev.flags,
      flagNames: flagNames(dev.flags, DEVICE_FLAGS),
      numRegions: dev.numRegions,
      numIrqs: dev.numIrqs,
    },
    regions,
    irqs,
    migration,
  };
}

function sizeText(size: number | string): string {
  return typeof size === 'number' ? `${bytes(size)} (${hex(size)})` : `${size} bytes`;
}

function capsText(c: Record<string, unknown>): string {
  return Object.entries(c)
    .map(([k, v]) => {
      if (v === null || v === false) return `${k}-`;
      if (v === true) return `${k}+`;
      if (typeof v === 'object') {
        return Object.entries(v as Record<string, unknown>)
          .map(([kk, vv]) => `${k}.${kk}=${vv}`)
          .join(' ');
      }
      return `${k}=${v}`;
    })
    .join(' ');
}

/** The report as `lspci -vv`-style text (tab-indented, one fact per line). */
export function formatProbe(p: ProbeReport): string {
  const out: string[] = [];
  out.push(`vfio-user device at ${p.socket}`);
  out.push(`\tProtocol: vfio-user ${p.version.major}.${p.version.minor}`);
  out.push(`\tServer capabilities: ${capsText(p.capabilities.server)}`);
  out.push(`\tClient capabilities: ${capsText(p.capabilities.client)}`);
  out.push(
    `\tDevice: flags=${hex(p.device.flags)} <${p.device.flagNames.join(',')}> regions=${p.device.numRegions} irqs=${p.device.numIrqs}`,
  );
  for (const r of p.regions) {
    const head = `\tRegion ${r.index}: ${r.name}`;
    if (r.error) {
      out.push(`${head} (no info: ${r.error})`);
      continue;
    }
    if (!r.present) {
      out.push(`${head} (not present)`);
      continue;
    }
    const fd = r.flagNames.includes('MMAP') ? ` mmap-offset=${hex(BigInt(r.offset))}` : '';
    out.push(`${head} size=${sizeText(r.size)} [${r.flagNames.join('/')}]${fd}`);
    r.caps.forEach((c, i) => {
      const capHead = `\t\tCapabilities: [${i}]`;
      switch (c.kind) {
        case 'type':
          out.push(`${capHead} type ${c.type} subtype ${c.subtype}: ${c.name}`);
          return;
        case 'sparse-mmap':
          out.push(`${capHead} sparse mmap, ${c.areas.length} area${c.areas.length === 1 ? '' : 's'}`);
          c.areas.forEach((a, j) => {
            out.push(`\t\t\tArea ${j}: offset=${hex(BigInt(a.offset))} size=${sizeText(a.size)}`);
          });
          return;
        case 'raw':
          out.push(`${capHead} id ${c.id} version ${c.version} (${c.bytes} bytes, not decoded)`);
      }
    });
  }
  for (const q of p.irqs) {
    const head = `\tIRQ ${q.index}: ${q.name}`;
    if (q.error) out.push(`${head} (no info: ${q.error})`);
    else out.push(`${head} count=${q.count} [${q.flagNames.join(',')}]`);
  }
  for (const m of p.migration) {
    if (m.flavor === 'v2') {
      out.push(`\tMigration: v2 flavor (DEVICE_FEATURE MIGRATION, flags ${hex(m.flags)} [${m.flagNames.join(',')}])`);
    } else {
      out.push(`\tMigration: ${m.flavor} flavor (region ${m.region}, type ${m.type} subtype ${m.subtype})`);
    }
  }
  if (p.migration.length === 0) {
    out.push('\tMigration: none (no region with a migration TYPE cap, no DEVICE_FEATURE MIGRATION)');
  }
  return out.join('\n');
}

export async function runProbe(o: ProbeOptions): Promise<number> {
  if (!o.socket) throw new UsageError("required option '--socket <path>' not specified");
  const client = await VfioUserClient.connect(o.socket, { timeoutMs: o.timeout });
  try {
    const report = await probeDevice(client);
    console.log(o.json ? JSON.stringify(report, null, 2) : formatProbe(report));
    return 0;
  } finally {
    client.close();
  }
}
