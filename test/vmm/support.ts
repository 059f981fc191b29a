// Helpers for the VMM tests.
import { Worker } from 'node:worker_threads';

const tsxApi = import.meta.resolve('tsx/esm/api');

/** A worker thread running a TypeScript module (workers do not inherit the tsx loader: register it first). */
export function tsWorker(moduleUrl: URL, workerData: unknown): Worker {
  const code = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(moduleUrl.href)}); });`;
  return new Worker(code, { eval: true, workerData });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
