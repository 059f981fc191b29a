// Runs migrations for one VMM: `migrate` (source), `incoming` (destination), `cancel`, the parameters,
// and the numbers query-migrate reports. Its rule on the source side: any failure or cancel before the
// commit point puts everything back as it was: the devices' migration-state notifiers set them running,
// and a VM the migration stopped is started again, with its memory and device state intact.

import { Errno } from '../../abi/errno.ts';
import type { GuestDirtyBitmap } from '../guest/dirty-bitmap.ts';
import type { GuestMemory } from '../guest/guest-memory.ts';
import type { MigrationInfo } from '../qmp/commands.ts';
import type { RunState } from '../run-state.ts';
import type { VfioMigrationDriver } from '../vfio/driver.ts';
import {
  type CapabilityName,
  DEFAULT_CAPABILITIES,
  type MigrationCapabilities,
  withCapabilities,
} from './capabilities.ts';
import { SwitchoverEstimator } from './convergence.ts';
import { errnoOf, MigrationCancelled, MigrationError, reasonOf } from './errors.ts';
import type { MigrationHandler } from './handler.ts';
import { ERROR_LINGER_MS, fileConnection, IncomingListener, runIncoming } from './incoming.ts';
import type { MultifdIoCounts } from './multifd-channel.ts';
import { MultifdReceiver } from './multifd-recv.ts';
import { MultifdSender } from './multifd-send.ts';
import {
  DEFAULT_PARAMETERS,
  type MigrationParameters,
  type OutgoingProgress,
  runOutgoing,
  type SwitchoverPhases,
} from './outgoing.ts';
import type { RamHandler } from './ram-handler.ts';
import { type MigrationStatus, statusIsActive, statusTransitionAllowed } from './status.ts';
import { openOutgoing, parseMigrationUri } from './transport.ts';

export interface ControllerDeps {
  runState: RunState;
  ram: RamHandler;
  /** Guest RAM: multifd channel threads use its mapping. */
  memory: GuestMemory;
  dirty: GuestDirtyBitmap;
  ramSize: number;
  devices: readonly { driver: VfioMigrationDriver; handler: MigrationHandler }[];
  /** DMA ranges mapped into the devices (for their dirty-page queries). */
  dmaRanges: readonly { iova: bigint; size: bigint }[];
  emit: (event: string, data?: Record<string, unknown>) => void;
  log: (line: string) => void;
  stallTimeoutMs?: number;
  /** The VM's uuid (QEMU's -uuid): multifd channels carry it, and a destination with one checks it. */
  uuid?: Uint8Array;
}

/** query-migrate's answer, in QEMU's MigrationInfo shape (ordered and made integral by the QMP layer). */
export type { MigrationInfo };

export class MigrationController {
  status: MigrationStatus = 'none';
  readonly parameters: MigrationParameters = { ...DEFAULT_PARAMETERS };
  capabilities: MigrationCapabilities = { ...DEFAULT_CAPABILITIES };
  private abort: AbortController | null = null;
  private started = 0;
  private totalMs = 0;
  private setupMs = 0;
  private downtimeMs = 0;
  private phases: SwitchoverPhases | null = null;
  /** Switch-over costs measured here, kept from one migration to the next. */
  private readonly estimator = new SwitchoverEstimator();
  private errorDesc: string | undefined;
  private progress: OutgoingProgress | null = null;
  /** The outgoing migration passed its commit point (GO on its way): no cancel, no resume. */
  private committed = false;
  private syncs = 0;
  private lastSync = { at: 0, dirty: 0 };
  private dirtyRate = 0;
  /** RAM pages sent per second over the last sync period (QEMU's pages-per-second). */
  private pagesRate = 0;
  private lastSyncPages = 0;
  /** RAM bytes sent before the VM stopped for the switch-over (null: it has not stopped). */
  private precopyBytes: number | null = null;
  /** The current or last migration was this VMM's outgoing one (not an incoming one). */
  private outgoing = false;
  /** An incoming migration's view: payload bytes per kind, sections, first and last arrival (ms). */
  private received = { ram: 0, device: 0, sections: 0, first: -1, last: -1 };
  /** Multifd: the source's channels while they run, and the bytes they wrote (query-migrate's multifd-bytes). */
  private channelsOut: MultifdSender | null = null;
  private multifdBytes = 0;
  /** The receiving side's channels while an incoming multifd migration runs. */
  private channelsIn: MultifdReceiver | null = null;
  /** Packets the last multifd migration's channels moved each way (x-multifd-io), once it ended. */
  private multifdIo: MultifdIoCounts | null = null;
  /** The destination's listener while it waits for the source. */
  private listener: IncomingListener | null = null;
  /** Resolves when the current outgoing or incoming migration has finished, whatever the outcome. */
  done: Promise<void> = Promise.resolve();

  constructor(private readonly d: ControllerDeps) {
    // What was sent before the vCPUs stopped for the switch-over is pre-copy; the rest is downtime's.
    d.runState.onEvent((e) => {
      if (e.event === 'STOP' && statusIsActive(this.status)) this.precopyBytes = this.d.ram.stats.transferred;
    });
  }

  private setStatus(s: MigrationStatus): void {
    if (!statusTransitionAllowed(this.status, s))
      throw new Error(`migration status ${this.status} -> ${s} is not allowed`);
    this.status = s;
    this.d.emit('MIGRATION', { status: s });
  }

  setParameters(p: Partial<MigrationParameters>): void {
    // The channels are opened when a migration starts: changing their number or I/O under one is refused.
    if ((p.multifdChannels !== undefined || p.multifdIo !== undefined) && statusIsActive(this.status))
      throw new MigrationError(Errno.EBUSY, "There's a migration process in progress");
    Object.assign(this.parameters, p);
  }

  /**
   * migrate-set-capabilities: refused while a migration runs, as in QEMU, except on a destination still
   * waiting for its source (QEMU's -incoming: capabilities are set there before the source connects).
   */
  setCapabilities(changes: readonly { capability: CapabilityName; state: boolean }[]): void {
    if (statusIsActive(this.status) && !this.listener)
      throw new MigrationError(Errno.EBUSY, "There's a migration process in progress");
    this.capabilities = withCapabilities(this.capabilities, changes);
  }

  /** Every device's handler learns whether switchover-ack is on for the migration starting now. */
  private applySwitchoverAck(): boolean {
    const on = this.capabilities['switchover-ack'];
    for (const { handler } of this.d.devices) if ('switchoverAck' in handler) handler.switchoverAck = on;
    return on;
  }

  /** Starts an outgoing migration and returns at once (QMP's `migrate`); progress via query-migrate. */
  migrate(uriText: string): void {
    if (statusIsActive(this.status)) throw new MigrationError(Errno.EBUSY, "There's a migration process in progress");
    if (this.d.runState.state === 'inmigrate')
      throw new MigrationError(Errno.EBUSY, 'this VM is waiting for an incoming migration');
    const uri = parseMigrationUri(uriText);
    if (uri.kind === 'file' && this.capabilities['switchover-ack'])
      throw new MigrationError(Errno.EINVAL, 'switchover-ack needs a return path, which a file: migration has not');
    if (this.capabilities.multifd && uri.kind === 'file')
      throw new MigrationError(
        Errno.EINVAL,
        'multifd needs a tcp: migration; file: takes the one stream (turn multifd off)',
      );
    this.abort = new AbortController();
    this.started = performance.now();
    this.errorDesc = undefined;
    this.progress = null;
    this.outgoing = true;
    this.committed = false;
    this.syncs = 0;
    this.precopyBytes = null;
    this.pagesRate = 0;
    this.lastSyncPages = 0;
    this.downtimeMs = 0;
    this.phases = null;
    this.multifdBytes = 0;
    this.multifdIo = null;
    this.setStatus('setup');
    this.done = this.runSource(uri, this.abort.signal);
  }

  /** QMP's migrate_cancel: a no-op when nothing runs, and once the migration is committed. */
  cancel(): void {
    if (!statusIsActive(this.status) || this.status === 'cancelling' || this.committed) return;
    this.setStatus('cancelling');
    this.abort?.abort();
  }

  private async runSource(uri: ReturnType<typeof parseMigrationUri>, signal: AbortSignal): Promise<void> {
    const wasRunning = this.d.runState.running;
    const handlers: MigrationHandler[] = [this.d.ram, ...this.d.devices.map((x) => x.handler)];
    let transport: Awaited<ReturnType<typeof openOutgoing>> | null = null;
    let channels: MultifdSender | null = null;
    try {
      transport = await openOutgoing(uri, {
        stallTimeoutMs: this.d.stallTimeoutMs,
        maxBandwidth: () => this.parameters.maxBandwidth,
        signal,
      });
      if (signal.aborted) throw new MigrationCancelled();
      const switchoverAck = this.applySwitchoverAck();
      if (this.capabilities.multifd && uri.kind === 'tcp') {
        // The channels connect after the main stream, so the destination takes that one first.
        channels = await MultifdSender.open({
          memory: this.d.memory,
          host: uri.host,
          port: uri.port,
          channels: this.parameters.multifdChannels,
          io: this.parameters.multifdIo,
          uuid: this.d.uuid ?? new Uint8Array(16),
          stallTimeoutMs: this.d.stallTimeoutMs ?? 10_000,
        });
        this.d.ram.channelsOut = channels;
        this.channelsOut = channels;
      }
      const result = await runOutgoing({
        handlers,
        transport,
        switchoverAck,
        onAwaitingAck: () => this.d.log('switchover-ack: converged; pre-copy goes on until the destination acks'),
        onSwitchoverAck: () => this.d.log('switchover-ack: the destination approved the switch-over'),
        parameters: () => this.parameters,
        handshake: uri.kind === 'tcp',
        // A destination that does not answer READY within the stall timeout is as dead as a stalled link.
        handshakeTimeoutMs: this.d.stallTimeoutMs ?? 10_000,
        onCommit: () => {
          this.committed = true;
        },
        signal,
        estimator: this.estimator,
        onProgress: (p) => {
          this.progress = p;
          if (p.phase === 'active' && this.status === 'setup') this.setStatus('active');
        },
        onPass: (pass) => this.d.emit('MIGRATION_PASS', { pass }),
        logSync: () => this.logSync(),
        stopVm: async () => {
          if (this.status === 'setup') this.setStatus('active');
          this.setStatus('device');
          const errors = await this.d.runState.transition('finish-migrate', 'finish-migrate');
          if (errors.length > 0)
            throw new MigrationError(errnoOf(errors[0]), `stopping the VM failed: ${errors.map(reasonOf).join('; ')}`);
        },
      });
      this.setupMs = result.setupMs;
      this.downtimeMs = result.downtimeMs;
      this.phases = result.phases;
      this.totalMs = performance.now() - this.started;
      // Committed: the destination runs the VM (or the file holds it); this side never resumes it.
      await this.d.runState.transition('postmigrate', 'migration completed');
      this.setStatus('completed');
      if (result.afterCommitError) this.d.log(`migration committed, then: ${result.afterCommitError}`);
      const ph = result.phases;
      this.d.log(
        `migration completed: ${result.iterations} iterations, ${result.bytesSent} bytes, downtime ${result.downtimeMs.toFixed(1)} ms ` +
          `(expected ${ph.expectedMs?.toFixed(1) ?? '-'} ms; stop ${ph.stopMs.toFixed(1)}, sync ${ph.syncMs.toFixed(1)}, ` +
          `complete ${ph.completeMs.toFixed(1)}, state ${ph.stateMs.toFixed(1)}, finish ${ph.finishMs.toFixed(1)})`,
      );
    } catch (caught) {
      let err = caught;
      if (channels && transport) {
        // A channel the destination closed after refusing the stream: its ERROR on the main stream says
        // why (it goes out before the channels close; let the main socket's pending input be read).
        await new Promise((r) => setImmediate(r));
        err = transport.refusal?.() ?? err;
      }
      transport?.destroy();
      if (this.committed) {
        // Past the commit point the destination may be running the VM: never resume it here.
        this.errorDesc = (err as Error).message;
        this.totalMs = performance.now() - this.started;
        this.setStatus('failed');
        this.d.log(`migration failed after its commit point (the VM stays stopped here): ${this.errorDesc}`);
        return;
      }
      const cancelled = err instanceof MigrationCancelled || signal.aborted;
      this.errorDesc = cancelled ? undefined : (err as Error).message;
      const lost = this.d.devices.find((x) => x.driver.lost)?.driver;
      if (lost && !cancelled)
        this.errorDesc = `device ${lost.name} lost (its device server hung up) during the migration: ${this.errorDesc}`;
      this.totalMs = performance.now() - this.started;
      await this.recoverSource(wasRunning, cancelled ? 'cancelled' : 'failed');
      if (this.status === 'cancelling' || cancelled) {
        if (this.status !== 'cancelling') this.setStatus('cancelling');
        this.setStatus('cancelled');
      } else {
        this.setStatus('failed');
      }
      this.d.log(`migration ${this.status}${this.errorDesc ? `: ${this.errorDesc}` : ''}`);
    } finally {
      this.d.ram.channelsOut = null;
      await channels?.close();
      this.multifdBytes = channels?.bytes ?? 0;
      this.multifdIo = channels?.ioCounts ?? null;
      this.channelsOut = null;
      for (const h of handlers) {
        await h
          .saveCleanup?.()
          .catch((e: Error) => this.d.log(`${h.idstr}: cleanup after the migration: ${e.message}`));
      }
    }
  }

  /** The migration-state notifier for every device, then the VM back to how the migration found it. */
  private async recoverSource(wasRunning: boolean, status: 'cancelled' | 'failed'): Promise<void> {
    for (const { driver } of this.d.devices) {
      await driver
        .migrationStateNotifier(status)
        .catch((e: Error) => this.d.log(`${driver.name}: could not return to running: ${e.message}`));
    }
    const rs = this.d.runState;
    if (rs.state === 'finish-migrate') {
      const errors = await rs.transition(wasRunning ? 'running' : 'paused', `migration ${status}`);
      for (const e of errors) this.d.log(`resuming after the failed migration: ${e.message}`);
    }
    if (!rs.running) {
      // The notifier set the devices running; a VM that stays paused keeps them stopped.
      for (const { driver } of this.d.devices) {
        await driver
          .vmStateChange(false, 'paused')
          .catch((e: Error) => this.d.log(`${driver.name}: could not be stopped with the paused VM: ${e.message}`));
      }
    }
  }

  /** A log sync: device-dirtied pages merged into the RAM dirty log; dirty-rate bookkeeping. */
  private async logSync(): Promise<void> {
    for (const { driver } of this.d.devices) await driver.dirtySync(this.d.dmaRanges, this.d.dirty.sink);
    this.syncs++;
    const now = performance.now();
    const dirty = this.d.dirty.count();
    // After the first pass the log holds only pages dirtied since they were sent: that count over the
    // time since the last sync is the dirty rate (the first sync sees the bulk pass's all-dirty log).
    if (this.syncs > 2 && now > this.lastSync.at) this.dirtyRate = (dirty / (now - this.lastSync.at)) * 1000;
    const pages = this.d.ram.stats.normal + this.d.ram.stats.duplicate;
    if (this.syncs > 1 && now > this.lastSync.at)
      this.pagesRate = ((pages - this.lastSyncPages) / (now - this.lastSync.at)) * 1000;
    this.lastSyncPages = pages;
    this.lastSync = { at: now, dirty };
  }

  /**
   * Destination: load the incoming migration, then start the VM (after GO over TCP), or leave it paused
   * when `autostart` is false (QEMU's -S): `cont` then starts it.
   */
  async incoming(uriText: string, onListening?: (port: number) => void, autostart = true): Promise<void> {
    const uri = parseMigrationUri(uriText, true);
    const handlers: MigrationHandler[] = [this.d.ram, ...this.d.devices.map((x) => x.handler)];
    this.started = performance.now();
    this.outgoing = false;
    this.received = { ram: 0, device: 0, sections: 0, first: -1, last: -1 };
    if (this.capabilities.multifd && uri.kind === 'file')
      throw new MigrationError(
        Errno.EINVAL,
        'multifd needs a tcp: migration; file: takes the one stream (turn multifd off)',
      );
    this.setStatus('setup');
    let listener: IncomingListener | null = null;
    const channels =
      this.capabilities.multifd && uri.kind === 'tcp'
        ? new MultifdReceiver({
            memory: this.d.memory,
            channels: this.parameters.multifdChannels,
            io: this.parameters.multifdIo,
            uuid: this.d.uuid ?? null,
            maps: this.d.ram.sharedMaps,
            stallTimeoutMs: this.d.stallTimeoutMs ?? 10_000,
          })
        : null;
    this.d.ram.channelsIn = channels;
    this.channelsIn = channels;
    this.multifdIo = null;
    try {
      let connection: Awaited<ReturnType<IncomingListener['accept']>>;
      if (uri.kind === 'tcp') {
        listener = await IncomingListener.listen(uri.host, uri.port);
        this.listener = listener;
        onListening?.(listener.port);
        connection = await listener.accept(channels ? (s) => channels.adopt(s) : undefined);
      } else {
        connection = fileConnection(uri.path);
      }
      this.setStatus('active');
      this.listener = null;
      const switchoverAck = this.applySwitchoverAck();
      await runIncoming({
        handlers,
        connection,
        failure: channels?.failed,
        progress: channels ? () => channels.progress() : undefined,
        handshake: uri.kind === 'tcp',
        switchoverAck,
        onSwitchoverAck: () => this.d.log('switchover-ack: sent (every device that needs it has its initial data)'),
        stallTimeoutMs: uri.kind === 'tcp' ? (this.d.stallTimeoutMs ?? 10_000) : undefined,
        autostart,
        onSection: (idstr, bytes) => {
          const r = this.received;
          if (idstr === this.d.ram.idstr) r.ram += bytes;
          else r.device += bytes;
          r.sections++;
          r.last = performance.now() - this.started;
          if (r.first < 0) r.first = r.last;
        },
        startVm: async () => {
          const errors = await this.d.runState.transition('running', 'migration');
          for (const e of errors) this.d.log(`starting the VM: ${e.message}`);
        },
      });
      if (!autostart) await this.d.runState.transition('paused', 'migration loaded');
      this.setStatus('device');
      this.setStatus('completed');
      this.totalMs = performance.now() - this.started;
    } catch (err) {
      this.errorDesc = (err as Error).message;
      this.setStatus('failed');
      this.d.log(`incoming migration failed: ${this.errorDesc}`);
      throw err;
    } finally {
      listener?.close();
      this.listener = null;
      this.d.ram.channelsIn = null;
      await channels?.close(this.status === 'failed' ? ERROR_LINGER_MS : 0);
      this.multifdIo = channels?.ioCounts ?? null;
      this.channelsIn = null;
    }
  }

  /**
   * The VMM is going away: stop listening for a migration that has not come (it would keep the process
   * alive).
   */
  close(): void {
    this.listener?.close();
    this.listener = null;
  }

  info(): MigrationInfo {
    // Before the first migration QEMU answers {} (no status member).
    if (this.status === 'none') return {};
    const info: MigrationInfo = { status: this.status };
    const active = statusIsActive(this.status);
    info['total-time'] = Math.round(active ? performance.now() - this.started : this.totalMs);
    info['setup-time'] = Math.round(this.setupMs);
    const p = this.progress;
    // A source's estimate once the bandwidth was measured; before that the downtime limit, as QEMU
    // (migration.c sets expected_downtime to the limit when the migration starts). A destination has none.
    if (active && this.outgoing)
      info['expected-downtime'] = Math.round(p?.expectedDowntimeMs ?? this.parameters.downtimeLimit);
    if (this.status === 'completed') {
      info.downtime = Math.round(this.downtimeMs);
      if (this.phases) {
        const ph = this.phases;
        info['x-switchover'] = {
          ...(ph.expectedMs !== undefined ? { expected: round1(ph.expectedMs) } : {}),
          stop: round1(ph.stopMs),
          sync: round1(ph.syncMs),
          complete: round1(ph.completeMs),
          state: round1(ph.stateMs),
          finish: round1(ph.finishMs),
        };
      }
    }
    const s = this.d.ram.stats;
    info.ram = {
      transferred: s.transferred,
      remaining: this.d.dirty.count() * 4096,
      total: this.d.ramSize,
      duplicate: s.duplicate,
      normal: s.normal,
      'normal-bytes': s.normal * 4096,
      'dirty-pages-rate': Math.round(this.dirtyRate),
      // 0 until a full window was measured (never a partial window's guess).
      mbps: p ? (p.bandwidth * 1000 * 8) / 1e6 : 0,
      'dirty-sync-count': this.syncs,
      'page-size': 4096,
      'pages-per-second': Math.round(this.pagesRate),
      'precopy-bytes': this.precopyBytes ?? s.transferred,
      'downtime-bytes': this.precopyBytes === null ? 0 : s.transferred - this.precopyBytes,
      'multifd-bytes': this.channelsOut?.bytes ?? this.multifdBytes,
    };
    info.vfio = { transferred: this.d.devices.reduce((n, x) => n + x.driver.transferred, 0) };
    // The devices' pending bytes as the last pass counted them (save_live_pending), for progress displays.
    if (p && active) info.vfio['x-pending'] = p.pending.reduce((n, w) => (w.idstr === 'ram' ? n : n + w.bytes), 0);
    if (!this.outgoing) {
      const r = this.received;
      info['x-incoming'] = {
        'ram-bytes': r.ram,
        'device-bytes': r.device,
        sections: r.sections,
        ...(r.first >= 0 ? { 'first-section': round1(r.first), 'last-section': round1(r.last) } : {}),
      };
    }
    const io = (this.channelsOut ?? this.channelsIn)?.ioCounts ?? this.multifdIo;
    if (io) info['x-multifd-io'] = io;
    if (this.errorDesc) info['error-desc'] = this.errorDesc;
    return info;
  }
}

function round1(v: number): number {
  return Math.round(v * 10) / 10;
}
