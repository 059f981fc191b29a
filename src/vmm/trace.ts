// Trace events with QEMU's names (hw/vfio/trace-events), enabled by glob patterns as with QEMU's
// `--trace PATTERN`: e.g. `vfio_*`, `vfio_save_*,vfio_load_state`. Disabled events cost one Set lookup.

export type TraceFields = Record<string, string | number | bigint | boolean>;
export type TraceSink = (line: string) => void;

export class Tracer {
  private readonly patterns: RegExp[];
  private readonly memo = new Map<string, boolean>();

  constructor(
    patterns: string | readonly string[] = [],
    private readonly sink: TraceSink = (line) => process.stderr.write(`${line}\n`),
  ) {
    const list = typeof patterns === 'string' ? patterns.split(',') : patterns;
    this.patterns = list
      .map((p) => p.trim())
      .filter(Boolean)
      .map(
        (p) =>
          new RegExp(
            `^${p
              .replace(/[.+^${}()|[\]\\]/g, '\\$&')
              .replace(/\*/g, '.*')
              .replace(/\?/g, '.')}$`,
          ),
      );
  }

  enabled(event: string): boolean {
    let on = this.memo.get(event);
    if (on === undefined) {
      on = this.patterns.some((re) => re.test(event));
      this.memo.set(event, on);
    }
    return on;
  }

  /** Emits `event` as one line: `<pid>@<seconds> event name=value ...`, if a pattern enables it. */
  event(event: string, fields: TraceFields = {}): void {
    if (!this.enabled(event)) return;
    const t = (performance.timeOrigin + performance.now()) / 1000;
    const args = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'bigint' ? `0x${v.toString(16)}` : String(v)}`)
      .join(' ');
    this.sink(`${process.pid}@${t.toFixed(6)} ${event}${args ? ` ${args}` : ''}`);
  }
}

/** A tracer that emits nothing. */
export const noTrace = new Tracer([]);
