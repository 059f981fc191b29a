// What a conformance run reports: one result per rule, each naming the rule, whether the device kept it, and
// what was seen. The rules themselves live beside this file, one file per flavor; the wording of each rule
// is the one docs/conform.md lists.

export type Outcome = 'pass' | 'fail' | 'skip';

export interface RuleResult {
  /** Stable id, e.g. "seed.state.invalid-values". */
  id: string;
  /** The rule, in a sentence. */
  rule: string;
  outcome: Outcome;
  /** What was seen: the evidence for a pass, the difference for a fail, the reason for a skip. */
  detail: string;
}

export interface ConformReport {
  flavor: string;
  sockets: string[];
  results: RuleResult[];
  passed: number;
  failed: number;
  skipped: number;
}

/** A rule's verdict, thrown by the checks below and caught by the runner. */
export class RuleFailure extends Error {
  override readonly name = 'RuleFailure';
}

export class RuleSkipped extends Error {
  override readonly name = 'RuleSkipped';
}

export function summarize(flavor: string, sockets: string[], results: RuleResult[]): ConformReport {
  const count = (o: Outcome) => results.filter((r) => r.outcome === o).length;
  return { flavor, sockets, results, passed: count('pass'), failed: count('fail'), skipped: count('skip') };
}

export function formatReport(r: ConformReport): string {
  const width = Math.max(...r.results.map((x) => x.id.length));
  const lines = r.results.map(
    (x) =>
      `${x.outcome.toUpperCase().padEnd(4)} ${x.id.padEnd(width)}  ${x.rule}${x.detail ? `\n     ${' '.repeat(width)}  ${x.detail}` : ''}`,
  );
  lines.push(
    '',
    `${r.flavor} flavor, ${r.sockets.join(' and ')}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped`,
  );
  return lines.join('\n');
}
