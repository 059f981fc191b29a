// Splits a byte stream into top-level JSON texts the way QEMU's streaming parser does: objects may be
// split across reads or several may share one; a parse error affects only the text it is in.

export class JsonSplitter {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escape = false;
  private start = -1;
  private scanned = 0;

  constructor(private readonly maxBytes: number) {}

  /** Adds text; returns complete top-level texts. Throws RangeError when one grows past the limit. */
  push(text: string): string[] {
    this.buf += text;
    const out: string[] = [];
    for (let i = this.scanned; i < this.buf.length; i++) {
      const ch = this.buf[i]!;
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (ch === '\\') this.escape = true;
        else if (ch === '"') this.inString = false;
        continue;
      }
      if (ch === '"') {
        this.inString = true;
        if (this.depth === 0) this.start = i;
      } else if (ch === '{' || ch === '[') {
        if (this.depth === 0) this.start = i;
        this.depth++;
      } else if (ch === '}' || ch === ']') {
        this.depth--;
        if (this.depth <= 0) {
          out.push(this.buf.slice(Math.max(0, this.start), i + 1));
          this.buf = this.buf.slice(i + 1);
          i = -1;
          this.depth = 0;
          this.start = -1;
        }
      } else if (this.depth === 0 && !/\s/.test(ch)) {
        // A bare scalar or garbage at the top level: hand it over up to the next whitespace or brace.
        let j = i;
        while (j < this.buf.length && !/[\s{[]/.test(this.buf[j]!)) j++;
        if (j === this.buf.length) {
          // Incomplete scalar: scan it again from its start when more text arrives.
          this.scanned = i;
          this.checkSize();
          return out;
        }
        out.push(this.buf.slice(i, j));
        this.buf = this.buf.slice(j);
        i = -1;
      }
    }
    this.scanned = this.buf.length;
    this.checkSize();
    return out;
  }

  private checkSize(): void {
    if (this.buf.length > this.maxBytes) {
      this.buf = '';
      this.scanned = 0;
      this.depth = 0;
      this.inString = false;
      throw new RangeError(`QMP message larger than ${this.maxBytes} bytes`);
    }
  }
}
