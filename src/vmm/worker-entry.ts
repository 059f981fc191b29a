// How a worker thread of the VMM starts (vCPUs, multifd channels): node:worker_threads
// code evaluated in the new isolate. Compiled (dist/, an installed package), the worker module is plain
// JavaScript next to its caller. From the TypeScript sources (a checkout) it needs tsx, whose loader
// workers do not inherit: the worker registers it first.

/** Code for `new Worker(code, { eval: true })` that runs `name` (no extension) beside the module at `from`. */
export function workerEntry(from: string, name: string): string {
  if (from.endsWith('.js')) return `import(${JSON.stringify(new URL(`./${name}.js`, from).href)});`;
  const url = new URL(`./${name}.ts`, from).href;
  const tsx = import.meta.resolve('tsx/esm/api');
  return `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
}
