// What the multifd channel threads and the migration's main thread say to each other (QEMU's
// MultiFDSendParams / MultiFDRecvParams, whose fields the threads share under a mutex; here, messages).
// Each channel is one worker_thread that maps guest RAM from its memfd (as a vCPU thread does) and owns
// its TCP connection, so page contents never pass through the main thread.

import { Worker } from 'node:worker_threads';

export interface SendWorkerConfig {
  role: 'send';
  /** Guest RAM's memfd, mapped read-only-in-practice by the channel. */
  fd: number;
  size: number;
  pieceSize: number;
  host: string;
  port: number;
  uuid: Uint8Array;
  id: number;
  /** No write progress for this long is a dead channel. */
  stallTimeoutMs: number;
}

export interface RecvWorkerConfig {
  role: 'recv';
  fd: number;
  size: number;
  pieceSize: number;
  /** The accepted connection's descriptor: the thread owns it (its net.Socket closes it). */
  socketFd: number;
  /** Channel uuid to insist on; null: none set (QEMU checks only when -uuid was given). */
  uuid: Uint8Array | null;
  /** Shared per-page maps (ram-handler.ts): received at least once; written with data or a fill. */
  received: Uint8Array;
  written: Uint8Array;
  /** The memory read as zero wherever nothing was written (a fresh destination). */
  fresh: boolean;
  /** Shared counter [0]: bumped per chunk read, so the main stream's stall check sees channel progress. */
  progress: Int32Array;
}

/** Main -> sending channel. */
export type ToSender =
  | { type: 'packet'; normal: Float64Array; zero: Float64Array; packetNum: number; sync: boolean }
  | { type: 'end' };

/** Sending channel -> main. */
export type FromSender =
  | { type: 'connected' }
  | { type: 'sent'; bytes: number; sync: boolean }
  | { type: 'closed' }
  | { type: 'error'; message: string; errno: string };

/** Main -> receiving channel. */
export type ToReceiver = { type: 'release' };

/** Receiving channel -> main. */
export type FromReceiver =
  | { type: 'hello'; id: number }
  /** A SYNC packet arrived; the channel waits for 'release'. packets: all received on this channel so far. */
  | { type: 'sync'; packetNum: number; packets: number }
  | { type: 'eof'; packets: number }
  | { type: 'error'; message: string; errno: string };

/**
 * The worker's entry: the built .js next to this file, or under tsx (a checkout) its loader first, which
 * workers do not inherit (as workload.ts does for the vCPUs).
 */
function bootstrap(): string {
  if (import.meta.url.endsWith('.js'))
    return `import(${JSON.stringify(new URL('./multifd-worker.js', import.meta.url).href)});`;
  const url = new URL('./multifd-worker.ts', import.meta.url).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  return `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
}

export function startChannelWorker(cfg: SendWorkerConfig | RecvWorkerConfig): Worker {
  return new Worker(bootstrap(), { eval: true, workerData: cfg });
}
