// Human-readable sizes, rates and a one-line progress bar for the command-line tools.

export function bytes(n: number | bigint): string {
  let v = Number(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

export function rate(bytesMoved: number, ms: number): string {
  if (ms <= 0) return 'n/a';
  return `${bytes((bytesMoved / ms) * 1000)}/s`;
}

export function ms(v: number): string {
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(1)} ms`;
}

/** Parses sizes like 256M, 1G, 4096, 64k (binary units). */
export function parseSize(text: string): number {
  const m = /^(\d+)([kKmMgG]?)(i?[bB])?$/.exec(text.trim());
  if (!m) throw new RangeError(`not a size: "${text}" (examples: 4096, 64K, 256M, 1G)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase()]!;
  return Number(m[1]) * mult;
}

/** A progress line that redraws in place on a terminal and prints at most every `everyMs` otherwise. */
export class ProgressLine {
  private last = 0;
  private drawn = false;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly everyMs = 1000,
  ) {}

  update(fraction: number, text: string): void {
    const now = performance.now();
    if (this.out.isTTY) {
      const width = 24;
      const done = Math.max(0, Math.min(width, Math.round(fraction * width)));
      this.out.write(`\r[${'#'.repeat(done)}${'-'.repeat(width - done)}] ${text}\x1b[K`);
      this.drawn = true;
    } else if (now - this.last >= this.everyMs) {
      this.out.write(`${text}\n`);
      this.last = now;
    }
  }

  done(): void {
    if (this.drawn) this.out.write('\n');
    this.drawn = false;
  }
}
