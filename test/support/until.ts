// Waiting for something a test made happen: polls a condition until it holds. The deadline is a safety
// net against a hang, never what is tested: generous, because a loaded machine may take seconds to do
// what a quiet one does in milliseconds (threads run late, processes start slowly).

export interface UntilOptions {
  /** The safety net (default 60 s). */
  ms?: number;
  /** Added to the timeout's message: a process's output, the last log lines. */
  context?: () => string;
  /** Between two looks at the condition (default 10 ms). */
  everyMs?: number;
}

/** Resolves once `cond` holds; rejects, naming `what` (and the context), once `ms` have passed without. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, o: UntilOptions = {}): Promise<void> {
  const ms = o.ms ?? 60_000;
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end)
      throw new Error(`timed out after ${ms} ms waiting for ${what}${o.context ? `\n${o.context()}` : ''}`);
    await new Promise((r) => setTimeout(r, o.everyMs ?? 10));
  }
}
